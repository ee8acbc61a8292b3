//! The cuda device of `dma op` (feature `cuda`): the host entry points of `dma::cuda`. Without
//! the feature, the same functions say that the device is not built in.

use anyhow::Result;
use dma::{cpu, Params, Shape};

/// Whether this binary has the cuda device.
pub const BUILT: bool = cfg!(feature = "cuda");

#[cfg(feature = "cuda")]
pub fn forward<T: dma::cuda::CudaElement>(
    params: &Params,
    shape: &Shape,
    inputs: &cpu::Inputs<'_, T>,
) -> Result<cpu::Forward<T>> {
    let dev = dma::cuda::Device::new(0)?;
    Ok(dma::cuda::forward_host(&dev, params, shape, inputs)?)
}

#[cfg(feature = "cuda")]
pub fn backward<T: dma::cuda::CudaElement>(
    params: &Params,
    shape: &Shape,
    inputs: &cpu::Inputs<'_, T>,
    fwd: &cpu::Forward<T>,
    dout: &[T],
) -> Result<cpu::Gradients<T>> {
    let dev = dma::cuda::Device::new(0)?;
    Ok(dma::cuda::backward_host(
        &dev, params, shape, inputs, &fwd.out, &fwd.lse, dout,
    )?)
}

#[cfg(not(feature = "cuda"))]
pub fn forward<T: dma::Element>(
    _: &Params,
    _: &Shape,
    _: &cpu::Inputs<'_, T>,
) -> Result<cpu::Forward<T>> {
    anyhow::bail!("the cuda device is not built in this binary (only cpu is)")
}

#[cfg(not(feature = "cuda"))]
pub fn backward<T: dma::Element>(
    _: &Params,
    _: &Shape,
    _: &cpu::Inputs<'_, T>,
    _: &cpu::Forward<T>,
    _: &[T],
) -> Result<cpu::Gradients<T>> {
    anyhow::bail!("the cuda device is not built in this binary (only cpu is)")
}

impl crate::Device {
    /// The candle device of a model subcommand: the CPU, or GPU 0 (with TF32 matmuls for f32
    /// models; their attention runs in bf16, see `dma_candle::DmaAttention`).
    pub fn candle(self) -> Result<candle_core::Device> {
        match self {
            crate::Device::Cpu => Ok(candle_core::Device::Cpu),
            crate::Device::Cuda if BUILT => {
                candle_core::cuda::set_gemm_reduced_precision_f32(true);
                Ok(candle_core::Device::new_cuda(0)?)
            }
            crate::Device::Cuda => {
                anyhow::bail!("the cuda device is not built in this binary (only cpu is)")
            }
        }
    }
}
