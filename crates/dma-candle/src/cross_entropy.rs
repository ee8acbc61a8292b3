//! [`cross_entropy`]: the mean softmax cross-entropy of rows of logits against target classes,
//! for f32 one op with its own backward (one kernel each way on CUDA). candle's composite makes
//! about a dozen passes over the `[rows, classes]` logits, each one more zero tensor and add in
//! candle's autograd; at a language model's vocabulary those passes are a large part of a small
//! model's step.

use crate::Error;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// The mean over rows of `-log softmax(logits[r])[targets[r]]`, for `logits` `[rows, classes]`
/// and integer `targets` `[rows]` (u32, u8 or i64), with the gradient to the logits. f32 takes
/// the fused op; other dtypes candle_nn's `cross_entropy`.
///
/// A target that is not a class is an error on the CPU. On CUDA it makes the loss NaN instead
/// (an error would need the targets read back, which waits for the GPU).
///
/// ```
/// use candle_core::{Device, Tensor};
///
/// # fn main() -> candle_core::Result<()> {
/// let logits = Tensor::new(&[[0f32, 0.], [2., 0.]], &Device::Cpu)?;
/// let targets = Tensor::new(&[0u32, 0], &Device::Cpu)?;
/// let loss = dma_candle::cross_entropy(&logits, &targets)?.to_scalar::<f32>()?;
/// let want = (2f32.ln() + (1. + (-2f32).exp()).ln()) / 2.;
/// assert!((loss - want).abs() < 1e-6);
/// # Ok(())
/// # }
/// ```
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (rows, classes) = match logits.dims() {
        &[rows, classes] if rows > 0 && classes > 0 => (rows, classes),
        other => {
            return Err(Error::Rank {
                name: "logits",
                expected: "[rows, classes], neither 0",
                actual: other.to_vec(),
            }
            .into())
        }
    };
    if targets.dims() != [rows] {
        return Err(Error::NotLike {
            name: "targets",
            actual: targets.dims().to_vec(),
            like: "logits' rows",
            expected: vec![rows],
        }
        .into());
    }
    let targets = match targets.dtype() {
        DType::U32 => targets.clone(),
        DType::U8 | DType::I64 => targets.to_dtype(DType::U32)?,
        other => {
            return Err(Error::DType {
                name: "targets",
                actual: other,
                expected: "u32, u8 or i64".into(),
            }
            .into())
        }
    };
    if logits.dtype() != DType::F32 {
        return candle_nn::loss::cross_entropy(logits, &targets);
    }
    let op = CrossEntropy { classes };
    logits
        .contiguous()?
        .apply_op2(&targets.contiguous()?, op)?
        .mean_all()
}

/// log(sum exp(row)), from the row's maximum.
fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + row
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
}

/// The f32 logits and u32 targets of a CPU call, with every target checked.
fn cpu_inputs<'a>(
    logits: (&'a CpuStorage, &Layout),
    targets: (&'a CpuStorage, &Layout),
    classes: usize,
) -> Result<(&'a [f32], &'a [u32])> {
    let [x] = crate::fused::f32_slices(["logits"], [logits])?;
    let (CpuStorage::U32(t), lt) = targets else {
        return Err(Error::DType {
            name: "targets",
            actual: targets.0.dtype(),
            expected: "u32".into(),
        }
        .into());
    };
    let (start, end) = lt
        .contiguous_offsets()
        .ok_or(Error::NotContiguous("targets"))?;
    let t = &t[start..end];
    if let Some((row, &class)) = t.iter().enumerate().find(|(_, &c)| c as usize >= classes) {
        return Err(Error::TargetClass {
            row,
            class,
            classes,
        }
        .into());
    }
    Ok((x, t))
}

/// The loss of each row: `[rows]`.
struct CrossEntropy {
    classes: usize,
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        t: &CpuStorage,
        lt: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, t) = cpu_inputs((x, lx), (t, lt), self.classes)?;
        let loss = x
            .chunks(self.classes)
            .zip(t)
            .map(|(row, &t)| (log_sum_exp(row) - row[t as usize] as f64) as f32)
            .collect::<Vec<_>>();
        let rows = loss.len();
        Ok((CpuStorage::F32(loss), Shape::from(rows)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        t: &candle_core::CudaStorage,
        lt: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let loss = crate::cuda::cross_entropy_forward(x, lx, t, lt, self.classes)?;
        Ok((loss, Shape::from(lx.shape().elem_count() / self.classes)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        t: &Tensor,
        loss: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = CrossEntropyBackward {
            classes: self.classes,
        };
        // The rows' loss rides with their gradient: a custom op takes three inputs.
        let loss_and_g = Tensor::stack(&[loss, g], 0)?;
        Ok((Some(x.apply_op3_no_bwd(t, &loss_and_g, &op)?), None))
    }
}

/// The gradient of the logits, `g[r] * (softmax(row r) - onehot(targets[r]))`, from the rows'
/// loss and gradient stacked as `[2, rows]`: each row's log-sum-exp is its loss plus its
/// target's logit, so the logits are read once.
struct CrossEntropyBackward {
    classes: usize,
}

impl CustomOp3 for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        "cross-entropy-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        t: &CpuStorage,
        lt: &Layout,
        lg: &CpuStorage,
        llg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, t) = cpu_inputs((x, lx), (t, lt), self.classes)?;
        let [lg] = crate::fused::f32_slices(["loss and grad"], [(lg, llg)])?;
        let (loss, g) = lg.split_at(t.len());
        let mut dx = Vec::with_capacity(x.len());
        for (((row, &t), &loss), &g) in x.chunks(self.classes).zip(t).zip(loss).zip(g) {
            let lse = loss as f64 + row[t as usize] as f64;
            dx.extend(row.iter().enumerate().map(|(c, &x)| {
                let p = (x as f64 - lse).exp() - if c == t as usize { 1.0 } else { 0.0 };
                (g as f64 * p) as f32
            }));
        }
        Ok((CpuStorage::F32(dx), lx.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        t: &candle_core::CudaStorage,
        lt: &Layout,
        lg: &candle_core::CudaStorage,
        llg: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let dx = crate::cuda::cross_entropy_backward(x, lx, t, lt, lg, llg, self.classes)?;
        Ok((dx, lx.shape().clone()))
    }
}
