//! The CUDA side of `gather_rows`' backward: `dma::cuda::scatter_add_rows` on candle's stream.

use super::{contiguous, device, driver};
use crate::Error;
use candle_core::backend::BackendStorage;
use candle_core::{CudaStorage, Layout, Result};

/// A zero f32 table of `rows` rows of `width` with `src`'s rows (contiguous f32 `[n, width]`)
/// added at `ids` (u32 `[n]`).
pub(crate) fn scatter_add_rows(
    src: &CudaStorage,
    ls: &Layout,
    ids: &CudaStorage,
    li: &Layout,
    rows: usize,
    width: usize,
) -> Result<CudaStorage> {
    let cdev = src.device().clone();
    let dev = device(&cdev)?;
    let values = contiguous::<f32>("src", src, ls)?;
    let ids = contiguous::<u32>("ids", ids, li)?;
    let mut out = cdev
        .cuda_stream()
        .alloc_zeros::<f32>((rows * width).max(1))
        .map_err(driver)?;
    if rows * width > 0 {
        dma::cuda::scatter_add_rows(&dev, &values, &ids, &mut out, width).map_err(Error::from)?;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, cdev))
}
