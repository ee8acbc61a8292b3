//! The options shared by the model subcommands (`dma logits`, `dma generate`): the model
//! directory and the attention kind to run its weights with.

use clap::{Args, ValueEnum};
use doge::{AttentionKind, DogeForCausalLM, ModelOptions};
use std::path::PathBuf;

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Kind {
    /// Dynamic Mask Attention (the model as trained).
    Dma,
    /// Sliding window of keep_window_size keys.
    Swa,
    /// Dense causal attention.
    Mha,
}

impl Kind {
    pub fn attention(self) -> AttentionKind {
        match self {
            Kind::Dma => AttentionKind::Dma,
            Kind::Swa => AttentionKind::Swa,
            Kind::Mha => AttentionKind::Mha,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Dma => "dma",
            Kind::Swa => "swa",
            Kind::Mha => "mha",
        }
    }
}

#[derive(Args)]
pub struct ModelArgs {
    /// A model directory: config.json and model.safetensors (transformers' DogeForCausalLM
    /// layout), and for `generate` optionally tokenizer.json.
    #[arg(long)]
    pub model: PathBuf,
    /// Run the weights as dma, or as sliding-window or dense attention for comparisons.
    #[arg(long, value_enum, default_value_t = Kind::Dma)]
    pub kind: Kind,
    /// Where the model runs.
    #[arg(long, value_enum, default_value_t = crate::Device::Cpu)]
    pub device: crate::Device,
}

impl ModelArgs {
    pub fn load(&self) -> anyhow::Result<DogeForCausalLM> {
        let options = ModelOptions {
            kind: self.kind.attention(),
            ..Default::default()
        };
        Ok(DogeForCausalLM::load(
            &self.model,
            options,
            &self.device.candle()?,
        )?)
    }
}
