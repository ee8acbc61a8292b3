//! # Dynamic Mask Attention
//!
//! DMA (Shi et al., "Trainable Dynamic Mask Sparse Attention", arXiv 2508.02124) gives every
//! key a bias computed from its value vector. Each query keeps only the `w` best-ranked keys it
//! can see, ranked by `(bias, index)`, and attends to them with the bias added to its scores, so
//! attention costs O(N·w) instead of O(N²) while the whole KV cache stays available.
//!
//! This crate is the operator, free of any tensor framework: [`Params`] and [`Shape`] describe
//! a call, [`selection`] decides which keys each query keeps, and [`cpu`] computes the forward
//! (out and log-sum-exp) and the backward (dq, dk, dv, dbias). The exact function is the
//! project's SPEC.md.
//!
//! ```
//! use dma::{cpu, Heads, Params, Shape};
//!
//! // One sequence of 6 tokens, 2 query heads sharing 1 kv head, head dim 4, window 3.
//! let shape = Shape::dense(1, 6, 6, Heads::new(2, 1), 4);
//! let q = vec![0.1f32; 6 * 2 * 4];
//! let k = vec![0.2f32; 6 * 4];
//! let v: Vec<f32> = (0..6 * 4).map(|i| i as f32).collect();
//! let bias = vec![0.0f32, 3.0, 0.0, 0.0, 2.0, 0.0]; // [B, Hb, Nk]
//! let inputs = cpu::Inputs { q: &q, k: &k, v: &v, bias: &bias };
//! let params = Params::new(3);
//!
//! let fwd = cpu::forward(&params, &shape, &inputs)?;
//! assert_eq!(fwd.out.len(), q.len());
//! assert_eq!(fwd.lse.len(), 2 * 6); // [B, Hq, Nq]
//!
//! let dout = vec![1.0f32; q.len()];
//! let grads = cpu::backward(&params, &shape, &inputs, &fwd.out, &fwd.lse, &dout)?;
//! assert_eq!(grads.dbias.len(), bias.len());
//!
//! // Bad input is an error that names the problem, never a panic.
//! let err = cpu::forward(&Params::new(0), &shape, &inputs).unwrap_err();
//! assert_eq!(err.to_string(), "window must be at least 1 (got 0)");
//! # Ok::<(), dma::DmaError>(())
//! ```
//!
//! Decoding with a KV cache is the same call with fewer queries than keys: queries are aligned
//! to the end of the keys, so one new token is `Shape::dense(b, 1, cache_len, ..)`.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod element;
mod error;
mod params;
pub mod selection;
mod shape;

pub use element::{DType, Element};
pub use error::{DmaError, Result};
pub use params::Params;
pub use shape::{Heads, Layout, Problem, Sequence, Shape, MAX_HEAD_DIM};

/// Compiles the README's Rust example as a doctest, so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
