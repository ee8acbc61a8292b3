//! A scatter-add of rows (`out[ids[i]] += src[i]`, f32): the backward of an embedding lookup
//! for models trained with this crate's attention. candle's own kernel for it (`index_add`)
//! gives one thread to each column and walks every id in it, which made the lookup's gradient
//! a third of a small model's training step; this one gives each element its own thread.

use super::device::Device;
use super::{compile::KernelSpec, error};
use crate::{DmaError, Result};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

const SOURCE: &str = include_str!("kernels/scatter_add_rows.cu");
const THREADS: u32 = 256;
/// Enough blocks to fill any GPU many times over; the kernel strides over the rest.
const MAX_BLOCKS: u64 = 1 << 16;

/// The kernel (f32).
pub(crate) fn spec() -> KernelSpec {
    KernelSpec::new(
        SOURCE,
        "SCATTER_ADD_ROWS",
        "scatter_add_rows",
        &[("f32", "float")],
    )
}

/// Adds row `i` of `src` (`ids.len()` rows of `width`) to row `ids[i]` of `out` (rows of
/// `width`), on the device's stream. Ids that are not rows of `out` are skipped.
pub fn scatter_add_rows(
    dev: &Device,
    src: &CudaSlice<f32>,
    ids: &CudaSlice<u32>,
    out: &mut CudaSlice<f32>,
    width: usize,
) -> Result<()> {
    let n = ids.len();
    let total = n * width;
    let mismatch = |name, expected, actual| DmaError::ShapeMismatch {
        name,
        expected,
        actual,
        shape: format!("{n} rows of {width}"),
    };
    if src.len() < total {
        return Err(mismatch("src", total, src.len()));
    }
    if width == 0 || total == 0 {
        return Ok(());
    }
    if out.len() % width != 0 {
        return Err(mismatch(
            "out",
            out.len().next_multiple_of(width),
            out.len(),
        ));
    }
    let f = dev.function(&spec())?;
    let blocks = (total as u64).div_ceil(u64::from(THREADS)).min(MAX_BLOCKS) as u32;
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let rows = (out.len() / width) as u64;
    let (n, width) = (n as u64, width as u64);
    let mut launch = dev.stream().launch_builder(&f);
    launch
        .arg(src)
        .arg(ids)
        .arg(out)
        .arg(&n)
        .arg(&width)
        .arg(&rows);
    // SAFETY: the arguments match the kernel's signature; src holds at least n * width elements,
    // ids n, out rows * width, and the kernel skips ids >= rows.
    unsafe { launch.launch(cfg) }.map_err(error::driver)?;
    Ok(())
}
