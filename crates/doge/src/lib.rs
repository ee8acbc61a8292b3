//! # Doge on candle with Dynamic Mask Attention
//!
//! [`DogeForCausalLM`] is transformers' `DogeForCausalLM` (dense MLP) with its attention run by
//! the `dma` operator through `dma-candle`: it reads and writes a model directory as transformers
//! does (config.json with [`DogeConfig`]'s fields, model.safetensors with the same tensor names
//! and shapes), computes logits, decodes incrementally with a [`KvCache`] that keeps each key's
//! bias, generates with greedy or top-p [`Sampler`]s, and trains through candle's autograd.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use doge::train::{AdamWParams, TokenBatches, TrainConfig, Trainer, WsdSchedule};
//! use doge::{generate, DogeConfig, DogeForCausalLM, GenerateParams, ModelOptions};
//!
//! # fn main() -> doge::Result<()> {
//! let dev = Device::Cpu;
//! // A tiny byte-level model: vocab 256, hidden 32, 1 layer of 4 query and 2 kv heads, and
//! // each query keeping its 8 best keys.
//! let mut config = DogeConfig::new(256, 32, 64, 1, 4, 2);
//! config.keep_window_size = 8;
//! config.max_position_embeddings = 64;
//! let model = DogeForCausalLM::new(config, ModelOptions::default(), &dev)?;
//!
//! // Logits [B, N, vocab].
//! let ids = Tensor::new(&[[104u32, 101, 108, 108, 111]], &dev)?;
//! assert_eq!(model.forward(&ids)?.dims(), &[1, 5, 256]);
//!
//! // A few training steps on batches of 2 windows of 16 tokens (inputs and shifted targets).
//! let text: Vec<u32> = "abcdefgh".repeat(20).bytes().map(u32::from).collect();
//! let batches = TokenBatches::new(text, 16, 2, 0)?;
//! let schedule = WsdSchedule {
//!     peak_lr: 3e-3,
//!     min_lr: 3e-4,
//!     warmup_steps: 1,
//!     decay_steps: 1,
//!     total_steps: 3,
//! };
//! let config = TrainConfig { schedule, adamw: AdamWParams::default(), clip_norm: 1.0 };
//! let mut trainer = Trainer::new(model, config)?;
//! for step in 0..3 {
//!     let stats = trainer.train_step(&batches.get(step, &dev)?)?;
//!     assert!(stats.loss.is_finite());
//! }
//!
//! // Greedy generation with the KV cache (which keeps each key's bias).
//! let params = GenerateParams {
//!     max_new_tokens: 4,
//!     sampling: Default::default(),
//!     stop_tokens: vec![],
//! };
//! let new = generate(trainer.model(), &[97, 98, 99], &params, |_| Ok(()))?;
//! assert_eq!(new.len(), 4);
//! # Ok(())
//! # }
//! ```

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
