//! RMSNorm over the last dim, as transformers' DogeRMSNorm: normalised in f32, then scaled by
//! the weight in the input's dtype. For f32 inputs it is one op with its own backward (one
//! kernel each way on CUDA, where candle's composite took about twenty element-wise kernels).

use crate::fused::{f32_slices, rows_and_vector, split_rows_and_vector};
use crate::Error;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use candle_nn::{Init, VarBuilder};

/// RMSNorm with a learned `weight` `[size]` (initialised to 1).
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
///
/// # fn main() -> candle_core::Result<()> {
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
/// let norm = dma_candle::RmsNorm::new(4, 1e-6, vb.pp("norm"))?;
/// let x = Tensor::new(&[[3f32, 3., 3., 3.], [1., -1., 1., -1.]], &Device::Cpu)?;
/// let y = norm.forward(&x)?.to_vec2::<f32>()?;
/// assert!((y[0][0] - 1.0).abs() < 1e-5 && (y[1][1] + 1.0).abs() < 1e-5);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Loads (or, from a `VarMap`, creates) `weight` under `vb`.
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(size, "weight", Init::Const(1.0))?;
        Ok(RmsNorm { weight, eps })
    }

    /// [`rms_norm`] of `x` with this layer's weight.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        rms_norm(x, &self.weight, self.eps)
    }
}

/// `weight * x / sqrt(mean(x²) + eps)` over the last dim of `x`; `weight` is `[x.dim(-1)]`.
/// f32 `x` and `weight` take the fused op; other dtypes normalise in f32 and scale in `x`'s
/// dtype, as transformers does.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let width = x.dims().last().copied().unwrap_or(0);
    if x.rank() == 0 || weight.dims() != [width] {
        return Err(Error::NotLike {
            name: "weight",
            actual: weight.dims().to_vec(),
            like: "x's last dim",
            expected: vec![width],
        }
        .into());
    }
    if x.dtype() == DType::F32 && weight.dtype() == DType::F32 && x.elem_count() > 0 {
        let op = FusedRmsNorm { eps: eps as f32 };
        return x.contiguous()?.apply_op2(&weight.contiguous()?, op);
    }
    let x32 = x.to_dtype(DType::F32)?;
    let ms = x32.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x32.broadcast_div(&(ms + eps)?.sqrt()?)?;
    normed.to_dtype(x.dtype())?.broadcast_mul(weight)
}

/// `1 / sqrt(mean(row²) + eps)`, in f32 as the CUDA kernel computes it.
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let squares: f32 = row.iter().map(|v| v * v).sum();
    1.0 / (squares / row.len() as f32 + eps).sqrt()
}

/// The f32 RMSNorm with its backward.
struct FusedRmsNorm {
    eps: f32,
}

impl CustomOp2 for FusedRmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let [x, w] = f32_slices(["x", "weight"], [(x, lx), (w, lw)])?;
        let mut y = vec![0f32; x.len()];
        for (xr, yr) in x.chunks(w.len()).zip(y.chunks_mut(w.len())) {
            let r = inv_rms(xr, self.eps);
            for ((y, x), w) in yr.iter_mut().zip(xr).zip(w) {
                *y = x * r * w;
            }
        }
        Ok((CpuStorage::F32(y), lx.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        w: &candle_core::CudaStorage,
        lw: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let width = lw.shape().elem_count();
        let y = crate::cuda::rms_norm_forward(x, lx, w, lw, width, self.eps)?;
        Ok((y, lx.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let packed =
            x.apply_op3_no_bwd(w, &g.contiguous()?, &FusedRmsNormBackward { eps: self.eps })?;
        let (dx, dw) = split_rows_and_vector(&packed, x, w)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// dx and dw of [`FusedRmsNorm`] for the output gradient g, as one tensor (`rows_and_vector`).
struct FusedRmsNormBackward {
    eps: f32,
}

impl CustomOp3 for FusedRmsNormBackward {
    fn name(&self) -> &'static str {
        "rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
        g: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let [x, w, g] = f32_slices(["x", "weight", "grad"], [(x, lx), (w, lw), (g, lg)])?;
        let width = w.len();
        let mut out = vec![0f32; x.len() + width];
        let (dx, dw) = out.split_at_mut(x.len());
        for ((xr, gr), dxr) in x
            .chunks(width)
            .zip(g.chunks(width))
            .zip(dx.chunks_mut(width))
        {
            let r = inv_rms(xr, self.eps);
            let dot: f32 = xr.iter().zip(gr).zip(w).map(|((x, g), w)| x * g * w).sum();
            let k = r * r * dot / width as f32;
            for c in 0..width {
                dxr[c] = r * (gr[c] * w[c] - xr[c] * k);
                dw[c] += gr[c] * xr[c] * r;
            }
        }
        Ok((CpuStorage::F32(out), rows_and_vector(lx, width)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        w: &candle_core::CudaStorage,
        lw: &Layout,
        g: &candle_core::CudaStorage,
        lg: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let width = lw.shape().elem_count();
        let out = crate::cuda::rms_norm_backward(x, lx, w, lw, g, lg, width, self.eps)?;
        Ok((out, rows_and_vector(lx, width)))
    }
}
