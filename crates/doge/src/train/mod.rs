//! Training a Doge: next-token cross-entropy, AdamW with a warmup-stable-decay schedule and
//! gradient clipping, and checkpoints written atomically and resumed exactly.

mod adamw;
mod checkpoint;
mod data;
mod schedule;

pub use adamw::{grad_norm, AdamW, AdamWParams};
pub use checkpoint::{latest_checkpoint, LATEST_FILE};
pub use data::TokenBatches;
pub use schedule::WsdSchedule;

use crate::{DogeForCausalLM, Result};
use candle_core::{Tensor, D};

/// How a model is trained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    pub schedule: WsdSchedule,
    pub adamw: AdamWParams,
    /// Gradients are scaled down when their global norm exceeds this.
    pub clip_norm: f64,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    pub loss: f64,
    /// The gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
}

/// A model and its optimiser.
pub struct Trainer {
    model: DogeForCausalLM,
    opt: AdamW,
    config: TrainConfig,
}

/// Mean next-token cross-entropy of `batch` `[B, N + 1]`: the first N tokens in, the last N as
/// targets.
pub fn lm_loss(model: &DogeForCausalLM, batch: &Tensor) -> Result<Tensor> {
    let n = batch.dim(1)?.saturating_sub(1);
    let logits = model.forward(&batch.narrow(1, 0, n)?)?;
    let vocab = logits.dim(D::Minus1)?;
    let targets = batch.narrow(1, 1, n)?.flatten_all()?;
    Ok(dma_candle::cross_entropy(
        &logits.reshape(((), vocab))?,
        &targets,
    )?)
}

impl Trainer {
    pub fn new(model: DogeForCausalLM, config: TrainConfig) -> Result<Self> {
        let vars = model.named_vars();
        let opt = AdamW::new(vars, config.adamw)?;
        Ok(Trainer { model, opt, config })
    }

    pub fn model(&self) -> &DogeForCausalLM {
        &self.model
    }

    /// Steps taken so far.
    pub fn step(&self) -> usize {
        self.opt.step
    }

    /// One optimiser step on `batch` `[B, N + 1]`.
    pub fn train_step(&mut self, batch: &Tensor) -> Result<StepStats> {
        let lr = self.config.schedule.lr(self.opt.step);
        let loss = lm_loss(&self.model, batch)?;
        let grads = loss.backward()?;
        let norm = grad_norm(&grads, &self.model.named_vars())?;
        let scale = match norm > self.config.clip_norm && norm.is_finite() {
            true => self.config.clip_norm / norm,
            false => 1.0,
        };
        self.opt.step(&grads, lr, scale)?;
        Ok(StepStats {
            loss: loss.to_dtype(candle_core::DType::F64)?.to_scalar()?,
            grad_norm: norm,
            lr,
        })
    }

    /// The loss of `batch` without training.
    pub fn eval_loss(&self, batch: &Tensor) -> Result<f64> {
        let loss = lm_loss(&self.model, batch)?.detach();
        Ok(loss.to_dtype(candle_core::DType::F64)?.to_scalar()?)
    }
}
