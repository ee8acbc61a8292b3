//! `dma mqar`: multi-query associative recall (Zoology, Arora et al. 2023). Trains a small Doge
//! with dma, swa or mha attention on examples generated from a seed and reports the fraction of
//! answer positions it predicts right on a test set generated from another seed.

// `dma needle` reuses the batches, the model and the training loop.
pub(crate) mod batch;
pub(crate) mod data;
pub(crate) mod model;
mod report;
pub(crate) mod train;

use crate::model_args::Kind;
use anyhow::{bail, Result};
use clap::Args;
use data::TaskSpec;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct MqarArgs {
    /// Attention of every layer (dma and swa keep --window keys per query).
    #[arg(long, value_enum, default_value_t = Kind::Dma)]
    pub attention: Kind,
    #[arg(long, default_value_t = 64)]
    pub seq_len: usize,
    /// Key-value pairs per example (each key queried once); seq_len >= 4 * kv_pairs.
    #[arg(long, default_value_t = 4)]
    pub kv_pairs: usize,
    #[arg(long, default_value_t = 64)]
    pub d_model: usize,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    #[arg(long, default_value_t = 2)]
    pub heads: usize,
    /// Keys kept per query by dma and swa (ignored by mha).
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Vocabulary: keys from 1..vocab/2, values from vocab/2..vocab (Zoology uses 8192).
    #[arg(long, default_value_t = 64)]
    pub vocab: usize,
    /// Gap exponent of the query positions (weight g^(a-1); 1 is uniform).
    #[arg(long, default_value_t = 0.01)]
    pub power_a: f64,
    #[arg(long, default_value_t = 8_000)]
    pub train_examples: usize,
    #[arg(long, default_value_t = 1_000)]
    pub test_examples: usize,
    /// Optimiser steps (default: --epochs passes over the training examples).
    #[arg(long, conflicts_with = "epochs")]
    pub steps: Option<usize>,
    /// Passes over the training examples (used when --steps is not given).
    #[arg(long, default_value_t = 4)]
    pub epochs: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Seeds the training examples, the weights and the batch order; the test examples come
    /// from a seed derived from it.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = crate::Device::Cpu)]
    pub device: crate::Device,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// Independent seeds for the parts of a run, derived from `--seed` (splitmix64).
pub(crate) fn derive(seed: u64, part: u64) -> u64 {
    let mut z = seed
        .wrapping_add(part.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn check(a: &MqarArgs) -> Result<()> {
    for (flag, x) in [
        ("--d-model", a.d_model),
        ("--layers", a.layers),
        ("--heads", a.heads),
        ("--window", a.window),
        ("--train-examples", a.train_examples),
        ("--test-examples", a.test_examples),
        ("--batch", a.batch),
        ("--epochs", a.epochs),
    ] {
        if x == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    if a.steps == Some(0) {
        bail!("--steps must be at least 1");
    }
    if a.d_model % a.heads != 0 || (a.d_model / a.heads) % 2 != 0 {
        bail!(
            "--heads {} must divide --d-model {} into an even head size",
            a.heads,
            a.d_model
        );
    }
    for (flag, x) in [("--lr", a.lr), ("--weight-decay", a.weight_decay)] {
        if !(x.is_finite() && x >= 0.0) {
            bail!("{flag} must be a finite number >= 0, got {x}");
        }
    }
    if a.clip.is_nan() || a.clip <= 0.0 {
        bail!("--clip must be positive, got {}", a.clip);
    }
    Ok(())
}

pub fn run(a: &MqarArgs) -> Result<()> {
    check(a)?;
    let task = TaskSpec {
        vocab: a.vocab,
        seq_len: a.seq_len,
        kv_pairs: a.kv_pairs,
        power_a: a.power_a,
    };
    task.validate()?;
    let device = a.device.candle()?;
    let train_set = task.generate(a.train_examples, derive(a.seed, 0))?;
    let test_set = task.generate(a.test_examples, derive(a.seed, 1))?;
    let spec = model::ModelSpec {
        kind: a.attention.attention(),
        vocab: a.vocab,
        seq_len: a.seq_len,
        d_model: a.d_model,
        layers: a.layers,
        heads: a.heads,
        window: a.window,
    };
    let net = model::build(&spec, derive(a.seed, 2), &device)?;
    let steps = a
        .steps
        .unwrap_or_else(|| (a.epochs * a.train_examples).div_ceil(a.batch));
    let schedule = train::Schedule {
        steps,
        batch: a.batch,
        lr: a.lr,
        weight_decay: a.weight_decay,
        clip: a.clip,
        seed: derive(a.seed, 3),
    };
    eprintln!(
        "mqar: {} train and {} test examples, {steps} steps of {}",
        a.train_examples, a.test_examples, a.batch
    );
    let clock = Instant::now();
    let summary = train::train(&net, &train_set, &schedule, &device)?;
    let train_seconds = clock.elapsed().as_secs_f64();
    let accuracy = train::accuracy(&net, &test_set, a.batch, &device)?;
    let result = report::Report {
        args: a,
        steps,
        train_loss: summary.loss,
        train_accuracy: summary.accuracy,
        accuracy,
        train_seconds,
    };
    println!("{}", result.line());
    if let Some(path) = &a.output {
        result.write_json(path)?;
    }
    Ok(())
}
