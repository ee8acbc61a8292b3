//! Kernels for the layers around the attention in a model trained with this crate (f32):
//! - [`scatter_add_rows`] (`kernels/scatter_add_rows.cu`): `out[ids[i]] += src[i]`, the backward
//!   of an embedding lookup. candle's own kernel for it (`index_add`) gives one thread to each
//!   column and walks every id in it, which made the lookup's gradient a third of a small
//!   model's training step; this one gives each element its own thread.
//! - [`rms_norm_forward`] and [`rms_norm_backward`] (`kernels/rms_norm.cu`): RMSNorm in one
//!   kernel each, where candle's composite takes about seven forward and fifteen backward
//!   element-wise kernels.
//! - [`rope`] (`kernels/rope.cu`): the rotary embedding and its inverse (the backward), which
//!   candle has no backward for.
//! - [`silu_mul_forward`] and [`silu_mul_backward`] (`kernels/silu_mul.cu`): the gated MLP's
//!   `silu(a) * u`.
//! - [`scale_add_forward`] and [`scale_add_backward`] (`kernels/scale_add.cu`): a residual with
//!   a learned per-column scale, `x * s + r`.

use super::device::Device;
use super::{compile::KernelSpec, error};
use crate::{DmaError, Result};
use cudarc::driver::{CudaSlice, CudaViewMut, LaunchConfig, PushKernelArg};

pub(crate) const THREADS: u32 = 256;
/// Enough blocks to fill any GPU many times over; the kernels stride over the rest.
const MAX_BLOCKS: u64 = 1 << 16;
/// The widest row of RMSNorm and of the scale-add: their backwards keep one f32 per column in
/// shared memory (48 KB).
pub const MAX_ROW_WIDTH: usize = 12 * 1024;

pub(crate) const F32: &[(&str, &str)] = &[("f32", "float")];

/// Every kernel of this module.
pub(crate) fn specs() -> Vec<KernelSpec> {
    vec![
        scatter_spec(),
        rms_norm_spec(false),
        rms_norm_spec(true),
        rope_spec(),
        silu_mul_spec(false),
        silu_mul_spec(true),
        scale_add_spec(false),
        scale_add_spec(true),
    ]
}

fn scatter_spec() -> KernelSpec {
    let source = include_str!("kernels/scatter_add_rows.cu");
    KernelSpec::new(source, "SCATTER_ADD_ROWS", "scatter_add_rows", F32)
}

fn rms_norm_spec(backward: bool) -> KernelSpec {
    let source = include_str!("kernels/rms_norm.cu");
    match backward {
        false => KernelSpec::new(source, "RMS_NORM_FORWARD", "rms_norm_forward", F32),
        true => KernelSpec::new(source, "RMS_NORM_BACKWARD", "rms_norm_backward", F32),
    }
}

fn silu_mul_spec(backward: bool) -> KernelSpec {
    let source = include_str!("kernels/silu_mul.cu");
    match backward {
        false => KernelSpec::new(source, "SILU_MUL_FORWARD", "silu_mul_forward", F32),
        true => KernelSpec::new(source, "SILU_MUL_BACKWARD", "silu_mul_backward", F32),
    }
}

fn scale_add_spec(backward: bool) -> KernelSpec {
    let source = include_str!("kernels/scale_add.cu");
    match backward {
        false => KernelSpec::new(source, "SCALE_ADD_FORWARD", "scale_add_forward", F32),
        true => KernelSpec::new(source, "SCALE_ADD_BACKWARD", "scale_add_backward", F32),
    }
}

fn rope_spec() -> KernelSpec {
    KernelSpec::new(include_str!("kernels/rope.cu"), "ROPE", "rope", F32)
}

/// One block per `THREADS / per_block` work items, at most [`MAX_BLOCKS`].
pub(crate) fn grid_stride(items: u64, per_block: u64, shared_mem_bytes: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (items.div_ceil(per_block).clamp(1, MAX_BLOCKS) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes,
    }
}

/// `buffer` must hold at least `expected` elements (rows of `width`, described by `shape`).
pub(crate) fn check_len(
    name: &'static str,
    len: usize,
    expected: usize,
    shape: &str,
) -> Result<()> {
    if len < expected {
        return Err(DmaError::ShapeMismatch {
            name,
            expected,
            actual: len,
            shape: shape.to_string(),
        });
    }
    Ok(())
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
    let shape = format!("{n} rows of {width}");
    check_len("src", src.len(), total, &shape)?;
    if width == 0 || total == 0 {
        return Ok(());
    }
    if out.len() % width != 0 {
        return Err(DmaError::ShapeMismatch {
            name: "out",
            expected: out.len().next_multiple_of(width),
            actual: out.len(),
            shape,
        });
    }
    let f = dev.function(&scatter_spec())?;
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
    unsafe { launch.launch(grid_stride(total as u64, u64::from(THREADS), 0)) }
        .map_err(error::driver)?;
    Ok(())
}

/// The rows of width `width` in `x`, after checking that `width` is one the row kernels take.
fn rows_of(x: &CudaSlice<f32>, width: usize) -> Result<usize> {
    if width == 0 || width > MAX_ROW_WIDTH {
        return Err(DmaError::ShapeMismatch {
            name: "x",
            expected: MAX_ROW_WIDTH,
            actual: width,
            shape: format!("rows of 1 to {MAX_ROW_WIDTH} elements"),
        });
    }
    if x.len() % width != 0 {
        return Err(DmaError::ShapeMismatch {
            name: "x",
            expected: x.len().next_multiple_of(width),
            actual: x.len(),
            shape: format!("rows of {width}"),
        });
    }
    Ok(x.len() / width)
}

/// RMSNorm of every row of `x` (rows of `width`): `y = x * w / sqrt(mean(x²) + eps)`, `w`
/// `[width]`, on the device's stream.
pub fn rms_norm_forward(
    dev: &Device,
    x: &CudaSlice<f32>,
    w: &CudaSlice<f32>,
    y: &mut CudaSlice<f32>,
    width: usize,
    eps: f32,
) -> Result<()> {
    let rows = rows_of(x, width)?;
    check_len("w", w.len(), width, "[width]")?;
    check_len("y", y.len(), x.len(), "the shape of x")?;
    if rows == 0 {
        return Ok(());
    }
    let f = dev.function(&rms_norm_spec(false))?;
    let (rows, width) = (rows as u64, width as u32);
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(x).arg(w).arg(y).arg(&rows).arg(&width).arg(&eps);
    // SAFETY: the arguments match the kernel's signature; x and y hold rows * width elements,
    // w width.
    unsafe { launch.launch(grid_stride(rows, u64::from(THREADS / 32), 0)) }
        .map_err(error::driver)?;
    Ok(())
}

/// The backward of [`rms_norm_forward`] for the output gradient `g`: `dx` (the shape of `x`) and
/// `dw` (`[width]`), both overwritten. Views, so that both can lie in one buffer (candle's
/// custom ops return one tensor).
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_backward(
    dev: &Device,
    x: &CudaSlice<f32>,
    w: &CudaSlice<f32>,
    g: &CudaSlice<f32>,
    dx: &mut CudaViewMut<'_, f32>,
    dw: &mut CudaViewMut<'_, f32>,
    width: usize,
    eps: f32,
) -> Result<()> {
    let rows = rows_of(x, width)?;
    check_len("w", w.len(), width, "[width]")?;
    check_len("g", g.len(), x.len(), "the shape of x")?;
    check_len("dx", dx.len(), x.len(), "the shape of x")?;
    check_len("dw", dw.len(), width, "[width]")?;
    dev.stream().memset_zeros(dw).map_err(error::driver)?;
    if rows == 0 {
        return Ok(());
    }
    let f = dev.function(&rms_norm_spec(true))?;
    let (rows, width) = (rows as u64, width as u32);
    let shared = width * 4;
    let mut launch = dev.stream().launch_builder(&f);
    launch
        .arg(x)
        .arg(w)
        .arg(g)
        .arg(dx)
        .arg(dw)
        .arg(&rows)
        .arg(&width)
        .arg(&eps);
    // SAFETY: the arguments match the kernel's signature; x, g and dx hold rows * width
    // elements, w and dw width; the shared memory holds width floats (at most 48 KB).
    unsafe { launch.launch(grid_stride(rows, u64::from(THREADS / 32), shared)) }
        .map_err(error::driver)?;
    Ok(())
}

/// The rotary embedding of `x` `[rows, heads, 2 * half]` into `y`, row `t` at position `t % n`,
/// with `cos` and `sin` `[n, half]` (the "rotate half" form); `inverse` turns the other way,
/// which is the backward.
#[allow(clippy::too_many_arguments)]
pub fn rope(
    dev: &Device,
    x: &CudaSlice<f32>,
    cos: &CudaSlice<f32>,
    sin: &CudaSlice<f32>,
    y: &mut CudaSlice<f32>,
    n: usize,
    heads: usize,
    half: usize,
    inverse: bool,
) -> Result<()> {
    let row = heads * 2 * half;
    if row == 0 || n == 0 || x.len() % (row * n) != 0 {
        return Err(DmaError::ShapeMismatch {
            name: "x",
            expected: x.len().next_multiple_of((row * n).max(1)),
            actual: x.len(),
            shape: format!("[batch, {n}, {heads}, {}]", 2 * half),
        });
    }
    let table = format!("[{n}, {half}]");
    check_len("cos", cos.len(), n * half, &table)?;
    check_len("sin", sin.len(), n * half, &table)?;
    check_len("y", y.len(), x.len(), "the shape of x")?;
    let pairs = (x.len() / 2) as u64;
    if pairs == 0 {
        return Ok(());
    }
    let f = dev.function(&rope_spec())?;
    let (n, heads, half) = (n as u32, heads as u32, half as u32);
    let sign = if inverse { -1f32 } else { 1f32 };
    let mut launch = dev.stream().launch_builder(&f);
    launch
        .arg(x)
        .arg(cos)
        .arg(sin)
        .arg(y)
        .arg(&pairs)
        .arg(&n)
        .arg(&heads)
        .arg(&half)
        .arg(&sign);
    // SAFETY: the arguments match the kernel's signature; x and y hold 2 * pairs elements, cos
    // and sin n * half.
    unsafe { launch.launch(grid_stride(pairs, u64::from(THREADS), 0)) }.map_err(error::driver)?;
    Ok(())
}

/// `h = silu(a) * u` elementwise (`a`, `u` and `h` of one length), on the device's stream.
pub fn silu_mul_forward(
    dev: &Device,
    a: &CudaSlice<f32>,
    u: &CudaSlice<f32>,
    h: &mut CudaSlice<f32>,
) -> Result<()> {
    check_len("u", u.len(), a.len(), "the shape of a")?;
    check_len("h", h.len(), a.len(), "the shape of a")?;
    if a.is_empty() {
        return Ok(());
    }
    let f = dev.function(&silu_mul_spec(false))?;
    let n = a.len() as u64;
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(a).arg(u).arg(h).arg(&n);
    // SAFETY: the arguments match the kernel's signature; a, u and h hold n elements.
    unsafe { launch.launch(grid_stride(n, u64::from(THREADS), 0)) }.map_err(error::driver)?;
    Ok(())
}

/// The backward of [`silu_mul_forward`] for the output gradient `g`: `da` then `du` in `da_du`
/// (twice the length of `a`).
pub fn silu_mul_backward(
    dev: &Device,
    a: &CudaSlice<f32>,
    u: &CudaSlice<f32>,
    g: &CudaSlice<f32>,
    da_du: &mut CudaSlice<f32>,
) -> Result<()> {
    check_len("u", u.len(), a.len(), "the shape of a")?;
    check_len("g", g.len(), a.len(), "the shape of a")?;
    check_len("da_du", da_du.len(), 2 * a.len(), "twice the shape of a")?;
    if a.is_empty() {
        return Ok(());
    }
    let f = dev.function(&silu_mul_spec(true))?;
    let n = a.len() as u64;
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(a).arg(u).arg(g).arg(da_du).arg(&n);
    // SAFETY: the arguments match the kernel's signature; a, u and g hold n elements, da_du 2n.
    unsafe { launch.launch(grid_stride(n, u64::from(THREADS), 0)) }.map_err(error::driver)?;
    Ok(())
}

/// `y = x * s + r` over the rows of width `width` of `x` (`r` and `y` the same shape, `s`
/// `[width]`), on the device's stream.
pub fn scale_add_forward(
    dev: &Device,
    x: &CudaSlice<f32>,
    s: &CudaSlice<f32>,
    r: &CudaSlice<f32>,
    y: &mut CudaSlice<f32>,
    width: usize,
) -> Result<()> {
    let rows = rows_of(x, width)?;
    check_len("s", s.len(), width, "[width]")?;
    check_len("r", r.len(), x.len(), "the shape of x")?;
    check_len("y", y.len(), x.len(), "the shape of x")?;
    if rows == 0 {
        return Ok(());
    }
    let f = dev.function(&scale_add_spec(false))?;
    let (n, width) = (x.len() as u64, width as u32);
    let mut launch = dev.stream().launch_builder(&f);
    launch.arg(x).arg(s).arg(r).arg(y).arg(&n).arg(&width);
    // SAFETY: the arguments match the kernel's signature; x, r and y hold n elements, s width.
    unsafe { launch.launch(grid_stride(n, u64::from(THREADS), 0)) }.map_err(error::driver)?;
    Ok(())
}

/// The backward of [`scale_add_forward`] for the output gradient `g`: `dx` (the shape of `x`)
/// and `ds` (`[width]`), both overwritten; `r`'s gradient is `g` itself.
#[allow(clippy::too_many_arguments)]
pub fn scale_add_backward(
    dev: &Device,
    x: &CudaSlice<f32>,
    s: &CudaSlice<f32>,
    g: &CudaSlice<f32>,
    dx: &mut CudaViewMut<'_, f32>,
    ds: &mut CudaViewMut<'_, f32>,
    width: usize,
) -> Result<()> {
    let rows = rows_of(x, width)?;
    check_len("s", s.len(), width, "[width]")?;
    check_len("g", g.len(), x.len(), "the shape of x")?;
    check_len("dx", dx.len(), x.len(), "the shape of x")?;
    check_len("ds", ds.len(), width, "[width]")?;
    dev.stream().memset_zeros(ds).map_err(error::driver)?;
    if rows == 0 {
        return Ok(());
    }
    let f = dev.function(&scale_add_spec(true))?;
    let (rows, width) = (rows as u64, width as u32);
    let mut launch = dev.stream().launch_builder(&f);
    launch
        .arg(x)
        .arg(s)
        .arg(g)
        .arg(dx)
        .arg(ds)
        .arg(&rows)
        .arg(&width);
    // SAFETY: the arguments match the kernel's signature; x, g and dx hold rows * width
    // elements, s and ds width; the shared memory holds width floats (at most 48 KB).
    unsafe { launch.launch(grid_stride(rows, u64::from(THREADS / 32), width * 4)) }
        .map_err(error::driver)?;
    Ok(())
}
