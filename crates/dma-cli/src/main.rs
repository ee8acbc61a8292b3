//! The `dma` command: Dynamic Mask Attention on safetensors files (`dma op`), a CPU scaling
//! benchmark (`dma bench`), and (feature `cuda`) the GPU against the CPU (`dma selftest`).

mod bench;
mod generate;
mod gpu;
mod heatmap;
mod layout;
mod logits;
mod model_args;
mod mqar;
mod needle;
mod op;
mod plot;
mod selftest;
mod tensors;
mod train;
mod train_bench;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "dma",
    version,
    about = "Dynamic Mask Attention: run the operator, benchmark it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator on q, k, v, bias (and dout for the backward) from a safetensors file.
    Op(OpArgs),
    /// Time the operator on random inputs at several lengths and show how it scales; with
    /// --json, also write the results as records for `dma plot`.
    Bench(BenchArgs),
    /// Render benchmark records (JSON lines from `dma bench --json`, or from GPU scripts) as
    /// PNG charts: time vs N and speedup vs N for every kind, decode latency vs context.
    ///
    /// Records: one JSON object per line (or one JSON array of them), e.g.
    /// {"kind":"forward","impl":"sdpa-flash","n":4096,"time_ms":1.25}. Required: kind (forward,
    /// forward_backward, decode or any name), impl (any name: dma-cpu, dma-cuda, sdpa-cudnn,
    /// ...), n (the sequence length, queries = keys; for decode the number of cached keys) and
    /// time_ms (the median time of one call, in ms). Optional and descriptive: device, dtype,
    /// batch, heads, head_dim, window, reps, note; other fields are ignored.
    ///
    /// Writes, for every kind K in the records, OUT_DIR/time-K.png (time vs N, log-log, one line
    /// per impl; for K = decode, latency vs context) and, where K has two or more impls,
    /// OUT_DIR/speedup-K.png (baseline time / impl time vs N). Every chart is a 960x640 PNG.
    ///
    /// With --curves, draws training curves from `dma train --log` files (JSON lines of step,
    /// loss, eval_loss, ...; each run named by its file stem) into OUT_DIR/loss.png: the
    /// held-out loss at the eval steps (lines with markers) and the training loss as a moving
    /// mean over --smooth steps (thinner lines), one colour per run.
    Plot(PlotArgs),
    /// Draw a Doge model's per-head kept keys and attention weights of one layer for a short
    /// input (at most 512 tokens) as a PNG.
    Heatmap(heatmap::HeatmapArgs),
    /// Check a device's kernels against the CPU backend (forward, backward, decode) on fresh
    /// random inputs; prints a table and PASS or FAIL (exit code 1 on failure).
    Selftest(SelftestArgs),
    /// Logits of a Doge model (config.json + model.safetensors) for int32 `input_ids` [B, N]
    /// from a safetensors file, written as f32 `logits` [B, N, vocab].
    Logits(logits::LogitsArgs),
    /// Continue a prompt with a Doge model, streaming the text.
    Generate(generate::GenerateArgs),
    /// Train a Doge model on text files, with checkpoints that a second run resumes from.
    Train(train::TrainArgs),
    /// Multi-query associative recall (Zoology): train a small model with dma, swa or mha
    /// attention on generated examples and report its test accuracy.
    Mqar(mqar::MqarArgs),
    /// Needle in a haystack (passkey retrieval): train a small model with dma, swa or mha
    /// attention at one length, then report the accuracy of the pass key by needle depth and
    /// context length (longer lengths included) as a table, JSON and a PNG heat map.
    Needle(needle::NeedleArgs),
    /// Training throughput of one Doge with each attention kind side by side (tokens/s), and
    /// the attention op alone at the model's shape.
    TrainBench(train_bench::TrainBenchArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Device {
    Cpu,
    Cuda,
}

impl Device {
    fn require_cpu(self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda if gpu::BUILT => bail!("this command runs on the cpu device only"),
            Device::Cuda => bail!("the cuda device is not built in this binary (only cpu is)"),
        }
    }

    /// The CPU, or the GPU when this binary has it (feature `cuda`).
    fn require_built(self) -> Result<()> {
        match self {
            Device::Cuda if !gpu::BUILT => {
                bail!("the cuda device is not built in this binary (only cpu is)")
            }
            _ => Ok(()),
        }
    }
}

#[derive(Args)]
struct SelftestArgs {
    /// The device to check against the CPU backend.
    #[arg(long, value_enum, default_value_t = Device::Cuda)]
    device: Device,
    /// Random seed (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Args)]
struct OpArgs {
    /// Safetensors file with q, k, v, bias and optionally dout, cu_seqlens_q, cu_seqlens_k.
    #[arg(long)]
    input: PathBuf,
    /// Safetensors file to write out, lse (and dq, dk, dv, dbias when dout is given).
    #[arg(long)]
    output: PathBuf,
    /// Keys kept per query (w).
    #[arg(long)]
    window: usize,
    /// Causal masking (the default).
    #[arg(long, overrides_with = "no_causal")]
    causal: bool,
    /// Every query sees every key of its sequence.
    #[arg(long, overrides_with = "causal")]
    no_causal: bool,
    /// Softmax scale (default 1/sqrt(head dim)).
    #[arg(long)]
    scale: Option<f32>,
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
}

#[derive(Args)]
struct BenchArgs {
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// Sequence lengths N (queries = keys).
    #[arg(long, value_delimiter = ',', default_value = "4096,8192,16384")]
    sizes: Vec<usize>,
    #[arg(long, default_value_t = 256)]
    window: usize,
    #[arg(long, default_value_t = 64)]
    head_dim: usize,
    /// Query, kv and bias heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Timed repetitions per length (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Also time forward + backward.
    #[arg(long)]
    backward: bool,
    /// Also time decoding: one new query over N cached keys.
    #[arg(long)]
    decode: bool,
    /// Write the medians to this file as JSON lines, one record per (kind, N), for `dma plot`.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct PlotArgs {
    /// Record files (JSON lines or a JSON array); give several to put CPU and GPU runs together.
    #[arg(long, required_unless_present_any = ["curves", "mqar", "needle"], value_name = "FILE")]
    input: Vec<PathBuf>,
    /// Training logs of `dma train --log` to draw as OUT_DIR/loss.png, one run per file.
    #[arg(long, num_args = 1.., value_name = "FILE")]
    curves: Vec<PathBuf>,
    /// The training loss of --curves is a moving mean over this many steps.
    #[arg(long, default_value_t = 20, value_name = "STEPS")]
    smooth: usize,
    /// Results of `dma mqar --output` to draw as OUT_DIR/mqar-grid.png: test accuracy vs
    /// sequence length, one panel per (kv_pairs, d_model), one line per attention kind.
    #[arg(long, num_args = 1.., value_name = "FILE")]
    mqar: Vec<PathBuf>,
    /// Results of `dma needle --json` to draw again as heat maps, OUT_DIR/NAME.png for each
    /// NAME.json.
    #[arg(long, num_args = 1.., value_name = "FILE")]
    needle: Vec<PathBuf>,
    /// Folder for the PNG files (created if needed).
    #[arg(long, value_name = "DIR")]
    out_dir: PathBuf,
    /// The impl the speedup charts divide by (default: each kind's first impl in the records).
    #[arg(long, value_name = "IMPL")]
    baseline: Option<String>,
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Op(a) => {
            a.device.require_built()?;
            let mut params = dma::Params::new(a.window).causal(!a.no_causal);
            if let Some(s) = a.scale {
                params = params.scale(s);
            }
            op::run(a.device, &params, &a.input, &a.output)
        }
        Command::Bench(a) => {
            a.device.require_cpu()?;
            bench::run(&bench::Config {
                sizes: a.sizes,
                window: a.window,
                head_dim: a.head_dim,
                heads: a.heads,
                reps: a.reps,
                backward: a.backward,
                decode: a.decode,
                json: a.json,
            })
        }
        Command::Plot(a) => {
            let mut records = Vec::new();
            for path in &a.input {
                records.extend(plot::records::read(path)?);
            }
            if !records.is_empty() {
                for path in plot::render(&records, &a.out_dir, a.baseline.as_deref())? {
                    println!("wrote {}", path.display());
                }
            }
            if !a.curves.is_empty() {
                let runs = a
                    .curves
                    .iter()
                    .map(|p| plot::curves::read(p))
                    .collect::<Result<Vec<_>>>()?;
                let path = plot::curves::render(&runs, &a.out_dir, a.smooth)?;
                println!("wrote {}", path.display());
            }
            if !a.mqar.is_empty() {
                let mut runs = Vec::new();
                for path in &a.mqar {
                    runs.extend(plot::mqar::read(path)?);
                }
                let path = plot::mqar::render(&runs, &a.out_dir)?;
                println!("wrote {}", path.display());
            }
            for path in &a.needle {
                let grid = needle::heatmap::Grid::read(path)?;
                std::fs::create_dir_all(&a.out_dir)
                    .with_context(|| format!("cannot create {}", a.out_dir.display()))?;
                let stem = path
                    .file_stem()
                    .unwrap_or(path.as_os_str())
                    .to_string_lossy();
                let png = a.out_dir.join(format!("{stem}.png"));
                needle::heatmap::draw(&grid, &png)?;
                println!("wrote {}", png.display());
            }
            Ok(())
        }
        Command::Heatmap(a) => heatmap::run(&a),
        Command::Selftest(a) => {
            a.device.require_built()?;
            if a.device == Device::Cpu {
                bail!("selftest checks a device against the cpu backend: use --device cuda");
            }
            selftest::run(a.seed)
        }
        Command::Logits(a) => logits::run(&a),
        Command::Generate(a) => generate::run(&a),
        Command::Train(a) => train::run(&a),
        Command::Mqar(a) => mqar::run(&a),
        Command::Needle(a) => needle::run(&a),
        Command::TrainBench(a) => train_bench::run(&a),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
