//! # Dynamic Mask Attention in candle
//!
//! [`dma_attention`] runs the operator of the `dma` crate as a candle custom op with a
//! backward, so `loss.backward()` trains q, k, v and the per-key bias through it.
//! [`DmaAttention`] is Doge's attention layer around it (transformers' `DogeAttention`: q/k/v/o
//! projections, RMSNorm of every q and k head, RoPE, and the bias `exp(A·softplus(dt_proj(v)))`),
//! which can also run as sliding-window or dense causal attention through the same op.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use dma_candle::{dma_attention, DmaAttention, DmaAttentionConfig};
//!
//! # fn main() -> candle_core::Result<()> {
//! let dev = Device::Cpu;
//!
//! // The op: q [B, Nq, Hq, D], k and v [B, Nk, Hkv, D], bias [B, Hb, Nk] (f32).
//! let q = Tensor::randn(0f32, 1.0, (1, 8, 4, 16), &dev)?;
//! let k = Tensor::randn(0f32, 1.0, (1, 8, 2, 16), &dev)?;
//! let v = Tensor::randn(0f32, 1.0, (1, 8, 2, 16), &dev)?;
//! let bias = Tensor::randn(0f32, 1.0, (1, 2, 8), &dev)?;
//! let out = dma_attention(&q, &k, &v, &bias, &dma::Params::new(3))?;
//! assert_eq!(out.dims(), q.dims());
//!
//! // The layer, with fresh weights, trained through the op.
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
//! let layer = DmaAttention::new(DmaAttentionConfig::new(64, 4, 2, 4), vb)?;
//! let x = Tensor::randn(0f32, 1.0, (2, 10, 64), &dev)?;
//! let y = layer.forward(&x, 0)?;
//! assert_eq!(y.dims(), &[2, 10, 64]);
//! let grads = y.sqr()?.sum_all()?.backward()?;
//! let a = varmap.data().lock().unwrap()["A"].as_tensor().clone();
//! assert!(grads.get(&a).is_some());
//!
//! // Bad shapes are errors, not panics.
//! let err = dma_attention(&q, &k, &v.narrow(1, 0, 7)?, &bias, &dma::Params::new(3));
//! assert!(err.unwrap_err().to_string().contains("must have the shape of `k`"));
//! # Ok(())
//! # }
//! ```
//!
//! With the feature `cuda` the op also runs on CUDA tensors (bf16 or f16) through the kernels
//! of `dma::cuda`, on candle's stream; without it, CUDA tensors get an error saying so.
//!
//! For generation, [`dma_decode_step`] with a [`DecodeState`] per layer is the op without a
//! gradient that carries each sequence's kept keys from step to step on CUDA and reads a KV
//! cache's filled prefix in place (Doge's cache uses it).
//!
//! For training the layers around the attention, a few f32 ops take one kernel each way on CUDA
//! where candle's composites take many: [`rms_norm`] (and the [`RmsNorm`] layer),
//! [`silu_mul()`] (the gated MLP), [`scale_add()`] (a residual with a per-column scale) and
//! [`gather_rows`] (an embedding lookup whose backward scatters in parallel), and
//! [`cross_entropy()`] (the loss over the logits); RoPE inside [`DmaAttention`] likewise. Other
//! dtypes fall back to candle's own ops.

mod adamw;
mod cpu;
mod cross_entropy;
#[cfg(feature = "cuda")]
mod cuda;
mod decode;
mod error;
mod fused;
mod layer;
mod norm;
mod op;
mod rope;
mod rows;
mod scale_add;
mod shape;
mod silu_mul;

pub use adamw::{adamw_step, AdamWStep};
pub use cross_entropy::cross_entropy;
pub use decode::{dma_decode_step, DecodeState};
pub use error::Error;
pub use layer::{AttentionKind, BiasFn, DmaAttention, DmaAttentionConfig};
pub use norm::{rms_norm, RmsNorm};
pub use op::{dma_attention, dma_attention_with_lse};
pub use rows::gather_rows;
pub use scale_add::scale_add;
pub use silu_mul::silu_mul;
