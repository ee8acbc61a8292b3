//! AdamW in place (`kernels/adamw.cu`, f32): three kernels per variable (the two moments and the
//! update) where the same step in candle's element-wise ops takes about sixteen launches and as
//! many new buffers. A training step of a small model has dozens of variables, so those
//! launches, not the arithmetic, are what the optimiser costs.

use super::compile::KernelSpec;
use super::device::Device;
use super::error;
use super::layers::{check_len, grid_stride, F32, THREADS};
use crate::Result;
use cudarc::driver::{CudaSlice, CudaViewMut, PushKernelArg};

/// The two kernels.
pub(crate) fn specs() -> Vec<KernelSpec> {
    vec![spec(false), spec(true)]
}

fn spec(update: bool) -> KernelSpec {
    let source = include_str!("kernels/adamw.cu");
    match update {
        false => KernelSpec::new(source, "ADAMW_MOMENT", "adamw_moment", F32),
        true => KernelSpec::new(source, "ADAMW_UPDATE", "adamw_update", F32),
    }
}

/// A moment's step: `x <- beta * x + (1 - beta) * (grad_scale * g)^p`, p = 2 when `square`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWMoment {
    pub beta: f32,
    pub grad_scale: f32,
    pub square: bool,
}

/// The weights' step: `theta <- keep * theta - lr * (m / c1) / (sqrt(v / c2) + eps)`, with
/// `keep = 1 - lr * weight_decay` (1: no decay) and the bias corrections `c1 = 1 - beta1^t`,
/// `c2 = 1 - beta2^t`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWUpdate {
    pub keep: f32,
    pub lr: f32,
    pub c1: f32,
    pub c2: f32,
    pub eps: f32,
}

/// One AdamW moment in place: `x` (first or second moment) from the gradient `g` (same
/// length), on the device's stream.
pub fn adamw_moment(
    dev: &Device,
    x: &mut CudaViewMut<'_, f32>,
    g: &CudaSlice<f32>,
    step: &AdamWMoment,
) -> Result<()> {
    let n = x.len();
    check_len("grad", g.len(), n, &format!("[{n}], like the moment"))?;
    if n == 0 {
        return Ok(());
    }
    let f = dev.function(&spec(false))?;
    let (n, b, square) = (n as u64, 1.0 - step.beta, i32::from(step.square));
    let mut launch = dev.stream().launch_builder(&f);
    launch
        .arg(x)
        .arg(g)
        .arg(&n)
        .arg(&step.beta)
        .arg(&b)
        .arg(&step.grad_scale)
        .arg(&square);
    // SAFETY: the arguments match the kernel's signature; x and g hold n elements.
    unsafe { launch.launch(grid_stride(n, u64::from(THREADS), 0)) }.map_err(error::driver)?;
    Ok(())
}

/// The AdamW update of the weights `theta` in place from the moments `m` and `v` (same
/// length), on the device's stream.
pub fn adamw_update(
    dev: &Device,
    theta: &mut CudaViewMut<'_, f32>,
    m: &CudaSlice<f32>,
    v: &CudaSlice<f32>,
    step: &AdamWUpdate,
) -> Result<()> {
    let n = theta.len();
    let shape = format!("[{n}], like the weights");
    check_len("m", m.len(), n, &shape)?;
    check_len("v", v.len(), n, &shape)?;
    if n == 0 {
        return Ok(());
    }
    let f = dev.function(&spec(true))?;
    let n = n as u64;
    let mut launch = dev.stream().launch_builder(&f);
    launch
        .arg(theta)
        .arg(m)
        .arg(v)
        .arg(&n)
        .arg(&step.keep)
        .arg(&step.lr)
        .arg(&step.c1)
        .arg(&step.c2)
        .arg(&step.eps);
    // SAFETY: the arguments match the kernel's signature; theta, m and v hold n elements.
    unsafe { launch.launch(grid_stride(n, u64::from(THREADS), 0)) }.map_err(error::driver)?;
    Ok(())
}
