//! The CUDA side of [`adamw_step`](crate::adamw_step): `dma::cuda`'s AdamW kernels on candle's
//! stream, in place on contiguous f32 storage.

use super::{contiguous, device};
use crate::Error;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaViewMut};
use candle_core::{CudaStorage, Layout, Result};
use dma::cuda::{AdamWMoment, AdamWUpdate};

/// The elements of `s` that `l` covers, writable.
fn view_mut<'a>(s: &'a mut CudaStorage, l: &Layout) -> Result<CudaViewMut<'a, f32>> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or(Error::NotContiguous("the weights"))?;
    let slice: &mut CudaSlice<f32> = s.as_cuda_slice_mut::<f32>()?;
    Ok(slice.slice_mut(start..end))
}

/// `x <- beta * x + (1 - beta) * (s * g)^p` in place.
pub(crate) fn adamw_moment(
    x: &mut CudaStorage,
    lx: &Layout,
    g: &CudaStorage,
    lg: &Layout,
    step: &AdamWMoment,
) -> Result<()> {
    let dev = device(x.device())?;
    let g = contiguous::<f32>("grad", g, lg)?;
    let mut x = view_mut(x, lx)?;
    dma::cuda::adamw_moment(&dev, &mut x, &g, step).map_err(|e| Error::from(e).into())
}

/// The weights' AdamW update in place from the moments.
#[allow(clippy::too_many_arguments)]
pub(crate) fn adamw_update(
    theta: &mut CudaStorage,
    lt: &Layout,
    m: &CudaStorage,
    lm: &Layout,
    v: &CudaStorage,
    lv: &Layout,
    step: &AdamWUpdate,
) -> Result<()> {
    let dev = device(theta.device())?;
    let (m, v) = (
        contiguous::<f32>("m", m, lm)?,
        contiguous::<f32>("v", v, lv)?,
    );
    let mut theta = view_mut(theta, lt)?;
    dma::cuda::adamw_update(&dev, &mut theta, &m, &v, step).map_err(|e| Error::from(e).into())
}
