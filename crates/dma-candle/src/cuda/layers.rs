//! The CUDA side of the f32 layers around the attention (`gather_rows`' backward, `RmsNorm`,
//! RoPE, `silu_mul`, `scale_add`, `cross_entropy`): `dma::cuda`'s kernels on candle's stream,
//! on contiguous f32 storage.

use super::{contiguous, device, driver};
use crate::Error;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::{CudaStorage, Layout, Result};

/// A new f32 buffer of `len` elements on `like`'s device (uninitialised: the kernel writes all).
fn alloc(like: &CudaStorage, len: usize) -> Result<CudaSlice<f32>> {
    // SAFETY: every caller hands the buffer to a kernel that writes each element.
    unsafe { like.device().cuda_stream().alloc::<f32>(len.max(1)) }.map_err(driver)
}

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

/// RMSNorm of the rows of width `width` of contiguous f32 `x`, scaled by `w` `[width]`.
pub(crate) fn rms_norm_forward(
    x: &CudaStorage,
    lx: &Layout,
    w: &CudaStorage,
    lw: &Layout,
    width: usize,
    eps: f32,
) -> Result<CudaStorage> {
    let dev = device(x.device())?;
    let (x_, w) = (
        contiguous::<f32>("x", x, lx)?,
        contiguous::<f32>("w", w, lw)?,
    );
    let mut y = alloc(x, x_.len())?;
    dma::cuda::rms_norm_forward(&dev, &x_, &w, &mut y, width, eps).map_err(Error::from)?;
    Ok(CudaStorage::wrap_cuda_slice(y, x.device().clone()))
}

/// The backward of [`rms_norm_forward`] for the output gradient `g`: `[rows + 1, width]`, the
/// rows of dx and then dw.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rms_norm_backward(
    x: &CudaStorage,
    lx: &Layout,
    w: &CudaStorage,
    lw: &Layout,
    g: &CudaStorage,
    lg: &Layout,
    width: usize,
    eps: f32,
) -> Result<CudaStorage> {
    let dev = device(x.device())?;
    let x_ = contiguous::<f32>("x", x, lx)?;
    let (w, g) = (
        contiguous::<f32>("w", w, lw)?,
        contiguous::<f32>("g", g, lg)?,
    );
    let mut out = alloc(x, x_.len() + width)?;
    let (mut dx, mut dw) = out.split_at_mut(x_.len());
    dma::cuda::rms_norm_backward(&dev, &x_, &w, &g, &mut dx, &mut dw, width, eps)
        .map_err(Error::from)?;
    Ok(CudaStorage::wrap_cuda_slice(out, x.device().clone()))
}

/// The rotary embedding of contiguous f32 `x` `[B, n, heads, 2 * half]` with `cos`, `sin`
/// `[n, half]`; `inverse` for the backward.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rope(
    x: &CudaStorage,
    lx: &Layout,
    cos: &CudaStorage,
    lc: &Layout,
    sin: &CudaStorage,
    ls: &Layout,
    inverse: bool,
) -> Result<CudaStorage> {
    let dev = device(x.device())?;
    let [_, n, heads, d] = lx.dims() else {
        return Err(Error::Rank {
            name: "x",
            expected: "[B, N, H, D]",
            actual: lx.dims().to_vec(),
        }
        .into());
    };
    let x_ = contiguous::<f32>("x", x, lx)?;
    let (cos, sin) = (
        contiguous::<f32>("cos", cos, lc)?,
        contiguous::<f32>("sin", sin, ls)?,
    );
    let mut y = alloc(x, x_.len())?;
    dma::cuda::rope(&dev, &x_, &cos, &sin, &mut y, *n, *heads, d / 2, inverse)
        .map_err(Error::from)?;
    Ok(CudaStorage::wrap_cuda_slice(y, x.device().clone()))
}

/// `silu(a) * u` of contiguous f32 `a` and `u` of one shape.
pub(crate) fn silu_mul_forward(
    a: &CudaStorage,
    la: &Layout,
    u: &CudaStorage,
    lu: &Layout,
) -> Result<CudaStorage> {
    let dev = device(a.device())?;
    let (a_, u) = (
        contiguous::<f32>("a", a, la)?,
        contiguous::<f32>("u", u, lu)?,
    );
    let mut h = alloc(a, a_.len())?;
    dma::cuda::silu_mul_forward(&dev, &a_, &u, &mut h).map_err(Error::from)?;
    Ok(CudaStorage::wrap_cuda_slice(h, a.device().clone()))
}

/// The backward of [`silu_mul_forward`] for the output gradient `g`: da then du, one buffer.
pub(crate) fn silu_mul_backward(
    a: &CudaStorage,
    la: &Layout,
    u: &CudaStorage,
    lu: &Layout,
    g: &CudaStorage,
    lg: &Layout,
) -> Result<CudaStorage> {
    let dev = device(a.device())?;
    let a_ = contiguous::<f32>("a", a, la)?;
    let (u, g) = (
        contiguous::<f32>("u", u, lu)?,
        contiguous::<f32>("g", g, lg)?,
    );
    let mut out = alloc(a, 2 * a_.len())?;
    dma::cuda::silu_mul_backward(&dev, &a_, &u, &g, &mut out).map_err(Error::from)?;
    Ok(CudaStorage::wrap_cuda_slice(out, a.device().clone()))
}

/// `x * s + r` over the rows of width `width` of contiguous f32 `x` and `r`, `s` `[width]`.
pub(crate) fn scale_add_forward(
    x: &CudaStorage,
    lx: &Layout,
    s: &CudaStorage,
    ls: &Layout,
    r: &CudaStorage,
    lr: &Layout,
    width: usize,
) -> Result<CudaStorage> {
    let dev = device(x.device())?;
    let x_ = contiguous::<f32>("x", x, lx)?;
    let (s, r) = (
        contiguous::<f32>("s", s, ls)?,
        contiguous::<f32>("r", r, lr)?,
    );
    let mut y = alloc(x, x_.len())?;
    dma::cuda::scale_add_forward(&dev, &x_, &s, &r, &mut y, width).map_err(Error::from)?;
    Ok(CudaStorage::wrap_cuda_slice(y, x.device().clone()))
}

/// The backward of [`scale_add_forward`] for the output gradient `g`: `[rows + 1, width]`, the
/// rows of dx and then ds.
pub(crate) fn scale_add_backward(
    x: &CudaStorage,
    lx: &Layout,
    s: &CudaStorage,
    ls: &Layout,
    g: &CudaStorage,
    lg: &Layout,
    width: usize,
) -> Result<CudaStorage> {
    let dev = device(x.device())?;
    let x_ = contiguous::<f32>("x", x, lx)?;
    let (s, g) = (
        contiguous::<f32>("s", s, ls)?,
        contiguous::<f32>("g", g, lg)?,
    );
    let mut out = alloc(x, x_.len() + width)?;
    let (mut dx, mut ds) = out.split_at_mut(x_.len());
    dma::cuda::scale_add_backward(&dev, &x_, &s, &g, &mut dx, &mut ds, width)
        .map_err(Error::from)?;
    Ok(CudaStorage::wrap_cuda_slice(out, x.device().clone()))
}

/// The softmax cross-entropy of each row of contiguous f32 `logits` (rows of `classes`) against
/// u32 `targets`: `[rows]`.
pub(crate) fn cross_entropy_forward(
    logits: &CudaStorage,
    ll: &Layout,
    targets: &CudaStorage,
    lt: &Layout,
    classes: usize,
) -> Result<CudaStorage> {
    let dev = device(logits.device())?;
    let x = contiguous::<f32>("logits", logits, ll)?;
    let t = contiguous::<u32>("targets", targets, lt)?;
    let mut loss = alloc(logits, x.len() / classes.max(1))?;
    dma::cuda::cross_entropy_forward(&dev, &x, &t, &mut loss, classes).map_err(Error::from)?;
    Ok(CudaStorage::wrap_cuda_slice(loss, logits.device().clone()))
}

/// The backward of [`cross_entropy_forward`] for the rows' loss and gradient stacked as
/// `[2, rows]`: the gradient of the logits.
pub(crate) fn cross_entropy_backward(
    logits: &CudaStorage,
    ll: &Layout,
    targets: &CudaStorage,
    lt: &Layout,
    loss_and_g: &CudaStorage,
    llg: &Layout,
    classes: usize,
) -> Result<CudaStorage> {
    let dev = device(logits.device())?;
    let x = contiguous::<f32>("logits", logits, ll)?;
    let t = contiguous::<u32>("targets", targets, lt)?;
    let lg = contiguous::<f32>("loss and grad", loss_and_g, llg)?;
    let rows = t.len();
    let (loss, g) = (lg.slice(..rows), lg.slice(rows..));
    let mut dx = alloc(logits, x.len())?;
    dma::cuda::cross_entropy_backward(&dev, &x, &t, &loss, &g, &mut dx, classes)
        .map_err(Error::from)?;
    Ok(CudaStorage::wrap_cuda_slice(dx, logits.device().clone()))
}
