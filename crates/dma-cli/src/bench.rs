//! `dma bench`: time the CPU operator on random inputs at several lengths and show how the time
//! scales with N (DMA should be O(N·w), i.e. linear in N at a fixed window). `--decode` also times
//! one new query over a context of N cached keys; `--json FILE` writes the medians as records
//! for `dma plot` (see `plot::records`).

use crate::plot::records::{self, Record};
use anyhow::{bail, Result};
use dma::{cpu, Heads, Params, Shape};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The benchmark configuration: B = 1, Hq = Hkv = Hb = `heads`, causal, f32.
pub struct Config {
    pub sizes: Vec<usize>,
    pub window: usize,
    pub head_dim: usize,
    pub heads: usize,
    pub reps: usize,
    pub backward: bool,
    /// Also time decoding: one query over N cached keys.
    pub decode: bool,
    /// Where to write the results as JSON lines.
    pub json: Option<PathBuf>,
}

/// The implementation name of this benchmark's records.
pub const IMPL: &str = "dma-cpu";

/// Median times of one length.
struct Row {
    n: usize,
    forward: Duration,
    /// Forward plus backward, when measured.
    both: Option<Duration>,
    /// One query over N cached keys, when measured.
    decode: Option<Duration>,
}

pub fn run(cfg: &Config) -> Result<()> {
    if cfg.sizes.is_empty() || cfg.sizes.contains(&0) {
        bail!("--sizes needs at least one length, all at least 1");
    }
    if cfg.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "dma bench: cpu, f32, B=1, Hq=Hkv=Hb={}, D={}, w={}, causal, median of {} interleaved reps after 1 warm-up round, {threads} threads",
        cfg.heads, cfg.head_dim, cfg.window, cfg.reps
    );

    let bar = ProgressBar::new((cfg.sizes.len() * (cfg.reps + 1)) as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>8} [{bar:30}] {pos}/{len} runs, {elapsed}")?
            .progress_chars("=> "),
    );
    // Sizes are interleaved within each repetition, so a change in machine load hits every
    // size alike instead of skewing the ratios.
    let cases: Vec<Case> = cfg.sizes.iter().map(|&n| Case::random(cfg, n)).collect();
    let mut times = vec![(Vec::new(), Vec::new(), Vec::new()); cases.len()];
    for rep in 0..=cfg.reps {
        for (case, (forward, both, decode)) in cases.iter().zip(&mut times) {
            bar.set_message(format!("N={}", case.n));
            let (t_fwd, t_both) = case.time(cfg)?;
            let t_decode = case.time_decode(cfg)?;
            if rep > 0 {
                forward.push(t_fwd);
                both.extend(t_both);
                decode.extend(t_decode);
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let rows: Vec<Row> = cases
        .iter()
        .zip(times)
        .map(|(case, (forward, both, decode))| Row {
            n: case.n,
            forward: median(forward),
            both: cfg.backward.then(|| median(both)),
            decode: cfg.decode.then(|| median(decode)),
        })
        .collect();
    print_table(cfg, &rows);
    if let Some(path) = &cfg.json {
        records::write(path, &to_records(cfg, &rows))?;
        println!(
            "wrote {} records to {}",
            count_records(&rows),
            path.display()
        );
    }
    Ok(())
}

/// The medians as records for `dma plot`: `forward`, and `forward_backward` and `decode` when
/// measured.
fn to_records(cfg: &Config, rows: &[Row]) -> Vec<Record> {
    let record = |kind: &str, n: usize, t: Duration| Record {
        device: Some("cpu".into()),
        dtype: Some("f32".into()),
        batch: Some(1),
        heads: Some(cfg.heads),
        head_dim: Some(cfg.head_dim),
        window: Some(cfg.window),
        reps: Some(cfg.reps),
        // Nanoseconds are plenty.
        ..Record::new(kind, IMPL, n, (ms(t) * 1e6).round() / 1e6)
    };
    let mut out = Vec::new();
    for r in rows {
        out.push(record("forward", r.n, r.forward));
        out.extend(r.both.map(|t| record("forward_backward", r.n, t)));
        out.extend(r.decode.map(|t| record("decode", r.n, t)));
    }
    out
}

fn count_records(rows: &[Row]) -> usize {
    rows.iter()
        .map(|r| 1 + r.both.is_some() as usize + r.decode.is_some() as usize)
        .sum()
}

/// Random inputs of one length (fixed seed; a random bias, so the selection is not a plain
/// sliding window).
struct Case {
    n: usize,
    shape: Shape,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    bias: Vec<f32>,
    dout: Vec<f32>,
    /// The query of a decode step (one row), when decoding is timed.
    q_decode: Vec<f32>,
}

impl Case {
    fn random(cfg: &Config, n: usize) -> Self {
        let h = cfg.heads;
        let mut rng = StdRng::seed_from_u64(0x0d4a + n as u64);
        let mut random = |len: usize, lo: f32, hi: f32| -> Vec<f32> {
            (0..len).map(|_| rng.random_range(lo..hi)).collect()
        };
        let len = n * h * cfg.head_dim;
        Case {
            n,
            shape: Shape::dense(1, n, n, Heads::new(h, h).with_bias(h), cfg.head_dim),
            q: random(len, -1.0, 1.0),
            k: random(len, -1.0, 1.0),
            v: random(len, -1.0, 1.0),
            bias: random(n * h, -2.0, 2.0),
            dout: if cfg.backward {
                random(len, -1.0, 1.0)
            } else {
                Vec::new()
            },
            q_decode: if cfg.decode {
                random(h * cfg.head_dim, -1.0, 1.0)
            } else {
                Vec::new()
            },
        }
    }

    /// Times one forward and, when asked, one backward; returns (forward, forward + backward).
    fn time(&self, cfg: &Config) -> Result<(Duration, Option<Duration>)> {
        let params = Params::new(cfg.window);
        let inputs = cpu::Inputs {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            bias: &self.bias,
        };
        let start = Instant::now();
        let fwd = black_box(cpu::forward(&params, &self.shape, &inputs)?);
        let t_fwd = start.elapsed();
        if !cfg.backward {
            return Ok((t_fwd, None));
        }
        let start = Instant::now();
        black_box(cpu::backward(
            &params,
            &self.shape,
            &inputs,
            &fwd.out,
            &fwd.lse,
            &self.dout,
        )?);
        Ok((t_fwd, Some(t_fwd + start.elapsed())))
    }

    /// Times one decode step (one query at position N - 1 over the N keys), when asked.
    fn time_decode(&self, cfg: &Config) -> Result<Option<Duration>> {
        if !cfg.decode {
            return Ok(None);
        }
        let h = cfg.heads;
        let shape = Shape::dense(1, 1, self.n, Heads::new(h, h).with_bias(h), cfg.head_dim);
        let inputs = cpu::Inputs {
            q: &self.q_decode,
            k: &self.k,
            v: &self.v,
            bias: &self.bias,
        };
        let start = Instant::now();
        black_box(cpu::forward(&Params::new(cfg.window), &shape, &inputs)?);
        Ok(Some(start.elapsed()))
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Query-key pairs a causal query set of length `n` keeps: sum over rows of min(p + 1, w), times heads.
fn kept_pairs(n: usize, window: usize, heads: usize) -> f64 {
    let per_head: u64 = (0..n as u64).map(|p| (p + 1).min(window as u64)).sum();
    per_head as f64 * heads as f64
}

fn ms(t: Duration) -> f64 {
    t.as_secs_f64() * 1e3
}

fn ratio(t: Duration, prev: Option<Duration>) -> String {
    prev.map_or("-".into(), |p| {
        format!("{:.2}", t.as_secs_f64() / p.as_secs_f64())
    })
}

fn print_table(cfg: &Config, rows: &[Row]) {
    let mut head = "| N | forward ms | ratio to previous N | kept pairs/s |".to_string();
    let mut rule = "|---:|---:|---:|---:|".to_string();
    if cfg.backward {
        head += " fwd+bwd ms | fwd+bwd ratio |";
        rule += "---:|---:|";
    }
    if cfg.decode {
        head += " decode ms (1 query, N keys) |";
        rule += "---:|";
    }
    println!();
    println!("{head}");
    println!("{rule}");
    let mut prev: Option<&Row> = None;
    for r in rows {
        let pairs = kept_pairs(r.n, cfg.window, cfg.heads) / r.forward.as_secs_f64();
        let mut line = format!(
            "| {} | {:.1} | {} | {:.3e} |",
            r.n,
            ms(r.forward),
            ratio(r.forward, prev.map(|p| p.forward)),
            pairs
        );
        if let Some(both) = r.both {
            line += &format!(
                " {:.1} | {} |",
                ms(both),
                ratio(both, prev.and_then(|p| p.both))
            );
        }
        if let Some(decode) = r.decode {
            line += &format!(" {:.3} |", ms(decode));
        }
        println!("{line}");
        prev = Some(r);
    }
    println!();
    let lo = rows.iter().min_by_key(|r| r.n).expect("at least one size");
    let hi = rows.iter().max_by_key(|r| r.n).expect("at least one size");
    let linear = hi.n as f64 / lo.n as f64;
    let scaling = |label: &str, a: Duration, b: Duration| {
        println!(
            "{label}time({}) / time({}) = {:.2} (linear would be {linear:.2})",
            hi.n,
            lo.n,
            a.as_secs_f64() / b.as_secs_f64()
        );
    };
    scaling("", hi.forward, lo.forward);
    if let (Some(a), Some(b)) = (hi.both, lo.both) {
        scaling("forward+backward: ", a, b);
    }
}
