//! Generation steps: the op without a gradient, carrying each sequence's kept keys from one step
//! to the next on CUDA, and reading a cache's keys and values where they lie.

use crate::op::{check_inputs, dma_attention};
use candle_core::{Result, Tensor};
use dma::Params;

/// What a generation loop carries between the steps of one layer: on CUDA, each sequence's kept
/// keys (`dma::cuda::DecodeState`: a step then reads the new keys' biases and the kept keys'
/// rows, not the whole cache); elsewhere nothing. The caller keeps the contract of a KV cache:
/// keys are only appended, and a cached key's bias never changes. A state that cannot be
/// carried to a step (another cache, batch or window) is rebuilt by that step.
#[derive(Debug, Default)]
pub struct DecodeState {
    #[cfg(feature = "cuda")]
    inner: dma::cuda::DecodeState,
}

impl DecodeState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the kept keys: the next step selects over its whole cache (call it when the
    /// cache starts again).
    pub fn reset(&mut self) {
        #[cfg(feature = "cuda")]
        self.inner.reset();
    }
}

/// One generation step of [`dma_attention`]: q `[B, Nq, Hq, D]` (usually
/// Nq = 1) over the cache's k, v `[B, Nk, Hkv, D]` and bias `[B, Hb, Nk]`; the same result,
/// without a gradient.
///
/// On CUDA tensors (bf16 or f16) it runs `dma::cuda::DecodeState::step_into`. k, v and the bias
/// are read in place when they are the filled prefix of a cache with room to grow (each a
/// `narrow` of the keys' dimension of row-major tensors of one capacity: a padded layout,
/// `dma::Shape::padded`) or dense; otherwise they are copied first. Elsewhere it is
/// `dma_attention`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use dma_candle::{dma_decode_step, DecodeState};
///
/// # fn main() -> candle_core::Result<()> {
/// let dev = Device::Cpu;
/// let params = dma::Params::new(4);
/// let mut state = DecodeState::new();
/// let k = Tensor::randn(0f32, 1.0, (1, 9, 2, 16), &dev)?;
/// let v = Tensor::randn(0f32, 1.0, (1, 9, 2, 16), &dev)?;
/// let bias = Tensor::randn(0f32, 1.0, (1, 2, 9), &dev)?;
/// for len in 7..=9 {
///     let q = Tensor::randn(0f32, 1.0, (1, 1, 4, 16), &dev)?;
///     let (k, v, bias) = (k.narrow(1, 0, len)?, v.narrow(1, 0, len)?, bias.narrow(2, 0, len)?);
///     let out = dma_decode_step(&q, &k, &v, &bias, &params, &mut state)?;
///     assert_eq!(out.dims(), q.dims());
/// }
/// # Ok(())
/// # }
/// ```
pub fn dma_decode_step(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    params: &Params,
    state: &mut DecodeState,
) -> Result<Tensor> {
    let shape = check_inputs(q, k, v, bias)?;
    #[cfg(feature = "cuda")]
    if let (candle_core::Device::Cuda(_), candle_core::DType::BF16 | candle_core::DType::F16) =
        (q.device(), q.dtype())
    {
        return crate::cuda::decode_step(&mut state.inner, params, &shape, (q, k, v, bias));
    }
    #[cfg(not(feature = "cuda"))]
    let _ = (shape, state);
    Ok(dma_attention(q, k, v, bias, params)?.detach())
}
