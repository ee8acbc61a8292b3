//! [`silu_mul`]: the gated MLP's `silu(a) * u` (Doge's and Llama's), for f32 one op with its
//! own backward (one kernel each way on CUDA, where candle's composite takes about eight
//! element-wise kernels over the MLP's widest activations).

use crate::fused::f32_slices;
use crate::Error;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// `silu(a) * u` for `a` and `u` of one shape, with gradients to both. f32 takes the fused op;
/// other dtypes candle's `silu` and `*`.
///
/// ```
/// use candle_core::{Device, Tensor};
///
/// # fn main() -> candle_core::Result<()> {
/// let a = Tensor::new(&[0f32, 1., -2.], &Device::Cpu)?;
/// let u = Tensor::new(&[5f32, 2., 1.], &Device::Cpu)?;
/// let h = dma_candle::silu_mul(&a, &u)?.to_vec1::<f32>()?;
/// let want = [0.0, 2.0 / (1.0 + (-1f32).exp()), -2.0 / (1.0 + 2f32.exp())];
/// assert!(h.iter().zip(want).all(|(h, w)| (h - w).abs() < 1e-6));
/// # Ok(())
/// # }
/// ```
pub fn silu_mul(a: &Tensor, u: &Tensor) -> Result<Tensor> {
    if a.dims() != u.dims() {
        return Err(Error::NotLike {
            name: "u",
            actual: u.dims().to_vec(),
            like: "a",
            expected: a.dims().to_vec(),
        }
        .into());
    }
    if a.dtype() == DType::F32 && u.dtype() == DType::F32 && a.elem_count() > 0 {
        return a.contiguous()?.apply_op2(&u.contiguous()?, SiluMul);
    }
    a.silu()? * u
}

fn sigmoid(a: f32) -> f32 {
    1.0 / (1.0 + (-a).exp())
}

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        la: &Layout,
        u: &CpuStorage,
        lu: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let [a, u] = f32_slices(["a", "u"], [(a, la), (u, lu)])?;
        let h = a.iter().zip(u).map(|(&a, &u)| a * sigmoid(a) * u).collect();
        Ok((CpuStorage::F32(h), la.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        a: &candle_core::CudaStorage,
        la: &Layout,
        u: &candle_core::CudaStorage,
        lu: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let h = crate::cuda::silu_mul_forward(a, la, u, lu)?;
        Ok((h, la.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        u: &Tensor,
        _h: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = a.apply_op3_no_bwd(u, &g.contiguous()?, &SiluMulBackward)?;
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

/// da and du of [`SiluMul`] for the output gradient g, stacked: `[2, ...a's shape]`.
struct SiluMulBackward;

impl CustomOp3 for SiluMulBackward {
    fn name(&self) -> &'static str {
        "silu-mul-backward"
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        la: &Layout,
        u: &CpuStorage,
        lu: &Layout,
        g: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let [a, u, g] = f32_slices(["a", "u", "grad"], [(a, la), (u, lu), (g, lg)])?;
        let mut out = vec![0f32; 2 * a.len()];
        let (da, du) = out.split_at_mut(a.len());
        for i in 0..a.len() {
            let s = sigmoid(a[i]);
            da[i] = g[i] * u[i] * s * (1.0 + a[i] * (1.0 - s));
            du[i] = g[i] * a[i] * s;
        }
        Ok((CpuStorage::F32(out), stacked(la)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        a: &candle_core::CudaStorage,
        la: &Layout,
        u: &candle_core::CudaStorage,
        lu: &Layout,
        g: &candle_core::CudaStorage,
        lg: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let out = crate::cuda::silu_mul_backward(a, la, u, lu, g, lg)?;
        Ok((out, stacked(la)))
    }
}

/// `[2, ...dims of l]`.
fn stacked(l: &Layout) -> Shape {
    let mut dims = vec![2];
    dims.extend_from_slice(l.dims());
    Shape::from(dims)
}
