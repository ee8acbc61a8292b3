//! What `dma mqar` and `dma needle` share: the flags of the model and of its training, their
//! checks, building the model and training it.

use super::data::Example;
use super::{derive, model, train};
use crate::model_args::Kind;
use anyhow::{bail, Result};
use candle_core::Device;
use clap::Args;
use doge::DogeForCausalLM;
use std::time::Instant;

/// The shape of the model.
#[derive(Args)]
pub struct NetArgs {
    /// Model width. With --device cuda the head size d_model / heads must be 32, 64, 96, 128
    /// or 256 (the CUDA kernels, which run the attention in bf16), e.g. --d-model 128 --heads 2.
    #[arg(long, default_value_t = 64)]
    pub d_model: usize,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    #[arg(long, default_value_t = 2)]
    pub heads: usize,
    /// Keys kept per query by dma and swa (ignored by mha).
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Standard deviation of each attention layer's initial `A`. Doge starts `A` at 0, which
    /// makes every key's bias equal, so DMA starts as sliding-window attention; above 0, `A` is
    /// drawn from N(0, a_std) (from the run's seed) and the selection starts from the values.
    #[arg(long, default_value_t = 0.0)]
    pub a_std: f64,
}

/// How long, how and where the model is trained. The default of --epochs is `dma mqar`'s; a
/// subcommand with another sets it with `#[command(mut_arg("epochs", ...))]`.
#[derive(Args)]
pub struct TrainArgs {
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
    /// Seeds the training examples, the weights, the batch order and (derived) the evaluation
    /// examples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where the model runs (cuda: see --d-model for the head sizes).
    #[arg(long, value_enum, default_value_t = crate::Device::Cpu)]
    pub device: crate::Device,
}

/// Fails on the first of the model's sizes, the subcommand's example `counts`, --batch and
/// --epochs that is 0, or on --steps 0.
pub fn check_counts(net: &NetArgs, counts: [(&str, usize); 2], train: &TrainArgs) -> Result<()> {
    let flags = [
        ("--d-model", net.d_model),
        ("--layers", net.layers),
        ("--heads", net.heads),
        ("--window", net.window),
        counts[0],
        counts[1],
        ("--batch", train.batch),
        ("--epochs", train.epochs),
    ];
    if let Some((flag, _)) = flags.iter().find(|(_, x)| *x == 0) {
        bail!("{flag} must be at least 1");
    }
    if train.steps == Some(0) {
        bail!("--steps must be at least 1");
    }
    Ok(())
}

impl NetArgs {
    /// Fails unless --heads divides --d-model into an even head size and --a-std is a
    /// standard deviation.
    pub fn check_heads(&self) -> Result<()> {
        if !(self.a_std.is_finite() && self.a_std >= 0.0) {
            bail!("--a-std must be a finite number >= 0, got {}", self.a_std);
        }
        if self.d_model % self.heads != 0 || (self.d_model / self.heads) % 2 != 0 {
            bail!(
                "--heads {} must divide --d-model {} into an even head size",
                self.heads,
                self.d_model
            );
        }
        Ok(())
    }

    /// A model with `kind` attention over `vocab` tokens for sequences of up to `seq_len`,
    /// its weights drawn from the run's `seed`.
    pub fn build(
        &self,
        kind: Kind,
        vocab: usize,
        seq_len: usize,
        seed: u64,
        device: &Device,
    ) -> Result<DogeForCausalLM> {
        let spec = model::ModelSpec {
            kind: kind.attention(),
            vocab,
            seq_len,
            d_model: self.d_model,
            layers: self.layers,
            heads: self.heads,
            window: self.window,
            a_std: self.a_std,
        };
        model::build(&spec, derive(seed, 2), device)
    }
}

/// How training went.
pub struct Trained {
    pub steps: usize,
    pub summary: train::TrainSummary,
    pub seconds: f64,
}

impl TrainArgs {
    /// Fails unless --lr and --weight-decay are finite and >= 0 and --clip is positive.
    pub fn check_rates(&self) -> Result<()> {
        for (flag, x) in [("--lr", self.lr), ("--weight-decay", self.weight_decay)] {
            if !(x.is_finite() && x >= 0.0) {
                bail!("{flag} must be a finite number >= 0, got {x}");
            }
        }
        if self.clip.is_nan() || self.clip <= 0.0 {
            bail!("--clip must be positive, got {}", self.clip);
        }
        Ok(())
    }

    /// Trains `net` on `examples`, the batch order drawn from --seed, after announcing the run
    /// on stderr with `what(steps)`.
    pub fn train(
        &self,
        net: &DogeForCausalLM,
        examples: &[Example],
        device: &Device,
        what: impl FnOnce(usize) -> String,
    ) -> Result<Trained> {
        let steps = self
            .steps
            .unwrap_or_else(|| (self.epochs * examples.len()).div_ceil(self.batch));
        let schedule = train::Schedule {
            steps,
            batch: self.batch,
            lr: self.lr,
            weight_decay: self.weight_decay,
            clip: self.clip,
            seed: derive(self.seed, 3),
        };
        eprintln!("{}", what(steps));
        let clock = Instant::now();
        let summary = train::train(net, examples, &schedule, device)?;
        Ok(Trained {
            steps,
            summary,
            seconds: clock.elapsed().as_secs_f64(),
        })
    }
}
