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

#[derive(Args)]
pub struct ModelArgs {
    /// A model directory: config.json and model.safetensors (transformers' DogeForCausalLM
    /// layout), and for `generate` optionally tokenizer.json.
    #[arg(long)]
    pub model: PathBuf,
    /// Run the weights as dma, or as sliding-window or dense attention for comparisons.
    #[arg(long, value_enum, default_value_t = Kind::Dma)]
    pub kind: Kind,
}

impl ModelArgs {
    pub fn load(&self) -> anyhow::Result<DogeForCausalLM> {
        let kind = match self.kind {
            Kind::Dma => AttentionKind::Dma,
            Kind::Swa => AttentionKind::Swa,
            Kind::Mha => AttentionKind::Mha,
        };
        let options = ModelOptions {
            kind,
            ..Default::default()
        };
        Ok(DogeForCausalLM::load(
            &self.model,
            options,
            &candle_core::Device::Cpu,
        )?)
    }
}
