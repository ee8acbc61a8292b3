//! Softmax cross-entropy (`kernels/cross_entropy.cu`, f32): the loss of each row of logits and
//! its gradient in one kernel each. The same loss from candle's element-wise ops (max, subtract,
//! exp, sum, log, subtract, gather) reads and writes the whole `[rows, classes]` logits about a
//! dozen times forward and backward, each pass also paying candle's autograd a zero tensor and an
//! add, where these kernels read them once each way (the backward takes each row's
//! log-sum-exp back from the forward's loss).

use super::compile::KernelSpec;
use super::device::Device;
use super::error;
use super::layers::{check_len, grid_stride, F32, THREADS};
use crate::{DmaError, Result};
use cudarc::driver::{CudaSlice, CudaView, PushKernelArg};

/// The two kernels.
pub(crate) fn specs() -> Vec<KernelSpec> {
    vec![spec(false), spec(true)]
}

fn spec(backward: bool) -> KernelSpec {
    let source = include_str!("kernels/cross_entropy.cu");
    match backward {
        false => KernelSpec::new(
            source,
            "CROSS_ENTROPY_FORWARD",
            "cross_entropy_forward",
            F32,
        ),
        true => KernelSpec::new(
            source,
            "CROSS_ENTROPY_BACKWARD",
            "cross_entropy_backward",
            F32,
        ),
    }
}

/// The rows of `logits` (rows of `classes`), after checking the targets' count.
fn rows_of(logits: &CudaSlice<f32>, targets: &CudaSlice<u32>, classes: usize) -> Result<usize> {
    if classes == 0 || classes > u32::MAX as usize || logits.len() % classes != 0 {
        return Err(DmaError::ShapeMismatch {
            name: "logits",
            expected: logits.len().next_multiple_of(classes.max(1)),
            actual: logits.len(),
            shape: format!("rows of {classes} classes (1 to 2^32 - 1)"),
        });
    }
    let rows = logits.len() / classes;
    check_len("targets", targets.len(), rows, "[rows], one class per row")?;
    Ok(rows)
}

/// `loss[r] = log(sum_c exp(logits[r, c])) - logits[r, targets[r]]` for every row of `logits`
/// (rows of `classes`), on the device's stream. A target that is not below `classes` gives NaN.
pub fn cross_entropy_forward(
    dev: &Device,
    logits: &CudaSlice<f32>,
    targets: &CudaSlice<u32>,
    loss: &mut CudaSlice<f32>,
    classes: usize,
) -> Result<()> {
    let rows = rows_of(logits, targets, classes)?;
    check_len("loss", loss.len(), rows, "[rows]")?;
    if rows == 0 {
        return Ok(());
    }
    let f = dev.function(&spec(false))?;
    let (rows, classes) = (rows as u64, classes as u32);
    let mut launch = dev.stream().launch_builder(&f);
    launch
        .arg(logits)
        .arg(targets)
        .arg(loss)
        .arg(&rows)
        .arg(&classes);
    // SAFETY: the arguments match the kernel's signature; logits hold rows * classes elements,
    // targets and loss rows, and the kernel reads logits[r, t] only for t < classes.
    unsafe { launch.launch(grid_stride(rows, u64::from(THREADS / 32), 0)) }
        .map_err(error::driver)?;
    Ok(())
}

/// The gradient of `sum_r g[r] * loss[r]` in the logits, for the `loss` that
/// [`cross_entropy_forward`] gave: `dx[r, c] = g[r] * (softmax(logits[r])[c] - [c == targets[r]])`,
/// written to `dx` (the shape of `logits`). Views, so that `loss` and `g` can lie in one buffer
/// (candle's custom ops take three inputs).
pub fn cross_entropy_backward(
    dev: &Device,
    logits: &CudaSlice<f32>,
    targets: &CudaSlice<u32>,
    loss: &CudaView<'_, f32>,
    g: &CudaView<'_, f32>,
    dx: &mut CudaSlice<f32>,
    classes: usize,
) -> Result<()> {
    let rows = rows_of(logits, targets, classes)?;
    check_len("loss", loss.len(), rows, "[rows]")?;
    check_len("g", g.len(), rows, "[rows]")?;
    check_len("dx", dx.len(), logits.len(), "the shape of logits")?;
    if rows == 0 {
        return Ok(());
    }
    let f = dev.function(&spec(true))?;
    let (rows, classes) = (rows as u64, classes as u32);
    let mut launch = dev.stream().launch_builder(&f);
    launch
        .arg(logits)
        .arg(targets)
        .arg(loss)
        .arg(g)
        .arg(dx)
        .arg(&rows)
        .arg(&classes);
    // SAFETY: the arguments match the kernel's signature; logits and dx hold rows * classes
    // elements, targets, loss and g rows.
    unsafe { launch.launch(grid_stride(rows, u64::from(THREADS / 32), 0)) }
        .map_err(error::driver)?;
    Ok(())
}
