//! [`adamw_step`]: one AdamW step in place on f32 tensors (weights, both moments), three kernels
//! on CUDA (`dma::cuda::adamw_moment` twice, `adamw_update`) where candle's element-wise ops take
//! about sixteen launches and as many new buffers per variable.

use crate::Error;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor};

/// One AdamW step's scalars, in candle's f64 (the kernels compute in f32).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// This step's learning rate.
    pub lr: f64,
    /// Decoupled weight decay of these weights (0: none).
    pub weight_decay: f64,
    /// The factor the gradient is scaled by first (gradient clipping; 1: none).
    pub grad_scale: f64,
    /// The step number t, from 1, for the bias corrections `1 - beta^t`.
    pub t: i32,
}

/// One AdamW step in place: the moments `m` and `v` move towards the scaled gradient `grad` and
/// its square, then `theta <- theta * (1 - lr * weight_decay) - lr * m̂ / (sqrt(v̂) + eps)` with
/// the bias-corrected moments m̂ and v̂. All four tensors f32, contiguous, of one shape; `theta`
/// is typically a `Var`'s tensor.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use dma_candle::{adamw_step, AdamWStep};
///
/// # fn main() -> candle_core::Result<()> {
/// let theta = Var::new(&[1f32, -1.], &Device::Cpu)?;
/// let (m, v) = (theta.zeros_like()?, theta.zeros_like()?);
/// let grad = Tensor::new(&[0.5f32, -2.], &Device::Cpu)?;
/// let step = AdamWStep { beta1: 0.9, beta2: 0.95, eps: 1e-8, lr: 0.1, weight_decay: 0.0,
///     grad_scale: 1.0, t: 1 };
/// adamw_step(&theta, &m, &v, &grad, &step)?;
/// // The first step moves each weight by lr against its gradient's sign.
/// let got = theta.to_vec1::<f32>()?;
/// assert!((got[0] - 0.9).abs() < 1e-6 && (got[1] + 0.9).abs() < 1e-6);
/// # Ok(())
/// # }
/// ```
pub fn adamw_step(
    theta: &Tensor,
    m: &Tensor,
    v: &Tensor,
    grad: &Tensor,
    step: &AdamWStep,
) -> Result<()> {
    for (name, t) in [("theta", theta), ("m", m), ("v", v), ("grad", grad)] {
        if t.dtype() != DType::F32 {
            return Err(Error::DType {
                name,
                actual: t.dtype(),
                expected: "f32".into(),
            }
            .into());
        }
        if t.dims() != theta.dims() {
            return Err(Error::NotLike {
                name,
                actual: t.dims().to_vec(),
                like: "theta",
                expected: theta.dims().to_vec(),
            }
            .into());
        }
        if !t.is_contiguous() {
            return Err(Error::NotContiguous(name).into());
        }
    }
    let moment = |beta: f64, square| Moment {
        beta: beta as f32,
        grad_scale: step.grad_scale as f32,
        square,
    };
    m.inplace_op2(grad, &moment(step.beta1, false))?;
    v.inplace_op2(grad, &moment(step.beta2, true))?;
    let update = Update {
        keep: (1.0 - step.lr * step.weight_decay) as f32,
        lr: step.lr as f32,
        c1: (1.0 - step.beta1.powi(step.t)) as f32,
        c2: (1.0 - step.beta2.powi(step.t)) as f32,
        eps: step.eps as f32,
    };
    theta.inplace_op3(m, v, &update)
}

/// The f32 elements of a CPU storage under a contiguous layout.
fn cpu_f32<'a>(name: &'static str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let [slice] = crate::fused::f32_slices([name], [(s, l)])?;
    Ok(slice)
}

fn cpu_f32_mut<'a>(name: &'static str, s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    let dtype = s.dtype();
    let CpuStorage::F32(values) = s else {
        return Err(Error::DType {
            name,
            actual: dtype,
            expected: "f32".into(),
        }
        .into());
    };
    let (start, end) = l.contiguous_offsets().ok_or(Error::NotContiguous(name))?;
    Ok(&mut values[start..end])
}

/// `x <- beta * x + (1 - beta) * (grad_scale * g)^p`, p = 2 when `square` (the fields of
/// `dma::cuda::AdamWMoment`, which exists only with `cuda`).
#[derive(Debug, Clone, Copy)]
struct Moment {
    beta: f32,
    grad_scale: f32,
    square: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }

    fn cpu_fwd(&self, x: &mut CpuStorage, lx: &Layout, g: &CpuStorage, lg: &Layout) -> Result<()> {
        let (x, g) = (cpu_f32_mut("moment", x, lx)?, cpu_f32("grad", g, lg)?);
        let Moment {
            beta,
            grad_scale,
            square,
        } = *self;
        for (x, &g) in x.iter_mut().zip(g) {
            let g = grad_scale * g;
            *x = beta * *x + (1.0 - beta) * if square { g * g } else { g };
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &mut candle_core::CudaStorage,
        lx: &Layout,
        g: &candle_core::CudaStorage,
        lg: &Layout,
    ) -> Result<()> {
        let step = dma::cuda::AdamWMoment {
            beta: self.beta,
            grad_scale: self.grad_scale,
            square: self.square,
        };
        crate::cuda::adamw_moment(x, lx, g, lg, &step)
    }
}

/// `theta <- keep * theta - lr * (m / c1) / (sqrt(v / c2) + eps)` (the fields of
/// `dma::cuda::AdamWUpdate`).
#[derive(Debug, Clone, Copy)]
struct Update {
    keep: f32,
    lr: f32,
    c1: f32,
    c2: f32,
    eps: f32,
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(
        &self,
        theta: &mut CpuStorage,
        lt: &Layout,
        m: &CpuStorage,
        lm: &Layout,
        v: &CpuStorage,
        lv: &Layout,
    ) -> Result<()> {
        let theta = cpu_f32_mut("theta", theta, lt)?;
        let (m, v) = (cpu_f32("m", m, lm)?, cpu_f32("v", v, lv)?);
        let Update {
            keep,
            lr,
            c1,
            c2,
            eps,
        } = *self;
        for ((t, &m), &v) in theta.iter_mut().zip(m).zip(v) {
            *t = *t * keep - lr * ((m / c1) / ((v / c2).sqrt() + eps));
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        theta: &mut candle_core::CudaStorage,
        lt: &Layout,
        m: &candle_core::CudaStorage,
        lm: &Layout,
        v: &candle_core::CudaStorage,
        lv: &Layout,
    ) -> Result<()> {
        let step = dma::cuda::AdamWUpdate {
            keep: self.keep,
            lr: self.lr,
            c1: self.c1,
            c2: self.c2,
            eps: self.eps,
        };
        crate::cuda::adamw_update(theta, lt, m, lm, v, lv, &step)
    }
}
