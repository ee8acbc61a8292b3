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
