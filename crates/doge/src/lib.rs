//! # Doge on candle with Dynamic Mask Attention
//!
//! [`DogeForCausalLM`] is transformers' `DogeForCausalLM` (dense MLP) with its attention run by
//! the `dma` operator through `dma-candle`: it reads and writes a model directory as transformers
//! does (config.json with [`DogeConfig`]'s fields, model.safetensors with the same tensor names
//! and shapes), computes logits, decodes incrementally with a [`KvCache`] that keeps each key's
//! bias, generates with greedy or top-p [`Sampler`]s, and trains through candle's autograd.

mod activation;
mod bpe;
mod cache;
mod config;
mod decoder;
mod embedding;
mod error;
mod fields;
mod generate;
pub mod inspect;
mod mlp;
mod model;
mod sampling;
mod tokenizer;
pub mod train;
mod weights;

pub use activation::Activation;
pub use bpe::{train_bpe, END_OF_TEXT};
pub use cache::KvCache;
pub use config::DogeConfig;
pub use dma_candle::{AttentionKind, BiasFn};
pub use error::{Error, Result};
pub use generate::{generate, GenerateParams};
pub use model::{DogeForCausalLM, ModelOptions, CONFIG_FILE, WEIGHTS_FILE};
pub use sampling::{Sampler, SamplingParams};
pub use tokenizer::{TextStream, Tokenizer, TOKENIZER_FILE};
/// The `tokenizers` crate, for callers that build a [`Tokenizer::HuggingFace`].
pub use tokenizers;
