//! `dma needle`: needle in a haystack (passkey retrieval, Mohtashami & Jaggi 2023). Trains a
//! small Doge with dma, swa or mha attention at one length (or several) on needles at random
//! depths, then
//! measures the exact-match accuracy of the pass key for every (length, depth) of a grid,
//! lengths past the training length included. Training, batches and the model are `dma mqar`'s.

pub mod data;
pub mod heatmap;
mod report;

use crate::model_args::Kind;
use crate::mqar::setup::{check_counts, NetArgs, TrainArgs};
use crate::mqar::{derive, train};
use anyhow::{bail, Result};
use clap::Args;
use data::{Depth, KEY_DIGITS};
use std::path::PathBuf;
use std::time::Instant;

/// Head sizes the CUDA attention kernels are built for.
const CUDA_HEAD_DIMS: &[usize] = &[32, 64, 96, 128, 256];

#[derive(Args)]
// --epochs defaults to 2 here; the shared TrainArgs's default, 4, is `dma mqar`'s.
#[command(mut_arg("epochs", |a| a.default_value("2")))]
pub struct NeedleArgs {
    /// Attention of every layer (dma and swa keep --window keys per query).
    #[arg(long, value_enum, default_value_t = Kind::Dma)]
    pub attention: Kind,
    /// The training length L (tokens = characters; at least 102: the needle and the question).
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Train on examples of each of these lengths instead, in equal numbers, mixed in batches
    /// (each example padded at its end, which a causal model does not see) [default: L].
    #[arg(long, value_delimiter = ',')]
    pub train_lengths: Vec<usize>,
    /// Lengths to evaluate [default: L/2, L, 2L, 4L, leaving out those under 102].
    #[arg(long, value_delimiter = ',')]
    pub eval_lengths: Vec<usize>,
    /// Relative needle depths to evaluate (0: the start of the text, 1: right before the
    /// question).
    #[arg(long, value_delimiter = ',', default_value = "0,0.25,0.5,0.75,1")]
    pub depths: Vec<f64>,
    /// Examples per (length, depth) cell.
    #[arg(long, default_value_t = 32)]
    pub eval_examples: usize,
    #[command(flatten)]
    pub net: NetArgs,
    /// Training examples (length L, depths uniform in [0, 1], random 5-digit keys).
    #[arg(long, default_value_t = 4_000)]
    pub train_examples: usize,
    #[command(flatten)]
    pub train: TrainArgs,
    /// Write every cell, the arguments and the seed to this file as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw the accuracy grid (depth by length) as a PNG.
    #[arg(long, value_name = "FILE.png")]
    pub heatmap: Option<PathBuf>,
}

/// The accuracy of one (length, depth) cell.
#[derive(Debug, Clone, Copy)]
pub struct Cell {
    pub length: usize,
    pub depth: f64,
    pub examples: usize,
    /// Examples with all five digits right.
    pub exact: usize,
    /// Digits right, over all examples.
    pub digits: usize,
}

impl Cell {
    pub fn accuracy(&self) -> f64 {
        self.exact as f64 / self.examples.max(1) as f64
    }

    pub fn digit_accuracy(&self) -> f64 {
        self.digits as f64 / (KEY_DIGITS * self.examples).max(1) as f64
    }
}

/// The training lengths: `--train-lengths`, or L.
pub fn train_lengths(a: &NeedleArgs) -> Vec<usize> {
    match a.train_lengths.is_empty() {
        true => vec![a.seq_len],
        false => a.train_lengths.clone(),
    }
}

/// The longest training length, past which an evaluation length counts as unseen.
pub fn trained_up_to(a: &NeedleArgs) -> usize {
    train_lengths(a).into_iter().max().unwrap_or(a.seq_len)
}

/// The training set: `--train-examples` split evenly over the training lengths (the first
/// lengths take the remainder), each length from its own seed.
fn training_set(a: &NeedleArgs) -> Result<Vec<crate::mqar::data::Example>> {
    let lengths = train_lengths(a);
    let mut set = Vec::with_capacity(a.train_examples);
    for (k, &length) in lengths.iter().enumerate() {
        let count =
            a.train_examples / lengths.len() + usize::from(k < a.train_examples % lengths.len());
        // The first length keeps the seed a single-length run has always used.
        let seed = match k {
            0 => derive(a.train.seed, 0),
            k => derive(derive(a.train.seed, 0), k as u64),
        };
        set.extend(
            data::generate(length, Depth::Uniform, count, seed)?
                .into_iter()
                .map(|h| h.example),
        );
    }
    Ok(set)
}

/// The lengths to evaluate: the flag's, or L/2, L, 2L, 4L that fit a needle.
fn eval_lengths(a: &NeedleArgs) -> Vec<usize> {
    match a.eval_lengths.is_empty() {
        false => a.eval_lengths.clone(),
        true => [a.seq_len / 2, a.seq_len, 2 * a.seq_len, 4 * a.seq_len]
            .into_iter()
            .filter(|&n| n >= data::min_len())
            .collect(),
    }
}

fn check(a: &NeedleArgs, lengths: &[usize]) -> Result<()> {
    let examples = [
        ("--train-examples", a.train_examples),
        ("--eval-examples", a.eval_examples),
    ];
    check_counts(&a.net, examples, &a.train)?;
    let min = data::min_len();
    if a.seq_len < min {
        bail!(
            "--seq-len {} is too short: the needle and the question alone take {min} tokens",
            a.seq_len
        );
    }
    if let Some(&n) = a.train_lengths.iter().find(|&&n| n < min) {
        bail!(
            "--train-lengths {n} is too short: the needle and the question alone take {min} tokens"
        );
    }
    if a.train_examples < a.train_lengths.len() {
        bail!(
            "--train-examples {} is fewer than the {} --train-lengths: each length needs an example",
            a.train_examples,
            a.train_lengths.len()
        );
    }
    if let Some(&n) = lengths.iter().find(|&&n| n < min) {
        bail!(
            "--eval-lengths {n} is too short: the needle and the question alone take {min} tokens"
        );
    }
    if a.depths.is_empty() {
        bail!("--depths needs at least one depth");
    }
    if let Some(d) = a.depths.iter().find(|d| !(0.0..=1.0).contains(*d)) {
        bail!("--depths {d}: a depth must be in [0, 1]");
    }
    a.net.check_heads()?;
    let head = a.net.d_model / a.net.heads;
    if a.train.device == crate::Device::Cuda && !CUDA_HEAD_DIMS.contains(&head) {
        bail!(
            "--device cuda needs a head size d_model / heads of 32, 64, 96, 128 or 256, got {} / {} = {head}",
            a.net.d_model,
            a.net.heads
        );
    }
    a.train.check_rates()
}

pub fn run(a: &NeedleArgs) -> Result<()> {
    let lengths = eval_lengths(a);
    check(a, &lengths)?;
    let device = a.train.device.candle()?;
    let train_set = training_set(a)?;
    let longest = lengths
        .iter()
        .copied()
        .chain(train_lengths(a))
        .max()
        .unwrap_or(a.seq_len);
    // RoPE has no learned positions: the length only has to allow the longest evaluation.
    let net = a
        .net
        .build(a.attention, data::vocab(), longest, a.train.seed, &device)?;
    let trained = a.train.train(&net, &train_set, &device, |steps| {
        let lengths: Vec<String> = train_lengths(a).iter().map(|n| n.to_string()).collect();
        format!(
            "needle: {} training examples of length {}, {steps} steps of {}",
            a.train_examples,
            lengths.join(", "),
            a.train.batch
        )
    })?;
    let clock = Instant::now();
    let eval_seed = derive(a.train.seed, 1);
    let mut cells = Vec::new();
    for (i, &length) in lengths.iter().enumerate() {
        for (j, &depth) in a.depths.iter().enumerate() {
            let seed = derive(eval_seed, (i * a.depths.len() + j) as u64);
            let examples: Vec<_> = data::generate(length, Depth::At(depth), a.eval_examples, seed)?
                .into_iter()
                .map(|h| h.example)
                .collect();
            // Teacher-forced: the argmax at each labelled position, the true digits before it.
            let hits = train::hits(&net, &examples, a.train.batch, &device)?;
            let exact = hits
                .chunks(KEY_DIGITS)
                .filter(|c| c.iter().all(|&h| h))
                .count();
            let digits = hits.iter().filter(|&&h| h).count();
            cells.push(Cell {
                length,
                depth,
                examples: examples.len(),
                exact,
                digits,
            });
        }
    }
    let result = report::Report {
        args: a,
        lengths: &lengths,
        steps: trained.steps,
        train_loss: trained.summary.loss,
        train_accuracy: trained.summary.accuracy,
        train_seconds: trained.seconds,
        eval_seconds: clock.elapsed().as_secs_f64(),
        cells: &cells,
    };
    print!("{}", result.table());
    if let Some(path) = &a.json {
        result.write_json(path)?;
    }
    if let Some(path) = &a.heatmap {
        heatmap::draw(&heatmap::Grid::from_json(result.json())?, path)?;
    }
    Ok(())
}
