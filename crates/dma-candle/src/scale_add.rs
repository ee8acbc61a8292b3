//! [`scale_add`]: a residual with a learned per-column scale, `x * s + r` (Doge's
//! `input_residual` and `post_attention_residual`), for f32 one op with its own backward.

use crate::fused::{f32_slices, rows_and_vector, split_rows_and_vector};
use crate::Error;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// `x * s + r`, `s` `[x.dim(-1)]` scaling every row of `x`, `r` of `x`'s shape, with gradients
/// to all three. f32 takes the fused op; other dtypes candle's `broadcast_mul` and `+`.
///
/// ```
/// use candle_core::{Device, Tensor};
///
/// # fn main() -> candle_core::Result<()> {
/// let x = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu)?;
/// let s = Tensor::new(&[10f32, -1.], &Device::Cpu)?;
/// let r = Tensor::new(&[[0.5f32, 0.5], [0., 1.]], &Device::Cpu)?;
/// let y = dma_candle::scale_add(&x, &s, &r)?;
/// assert_eq!(y.to_vec2::<f32>()?, [[10.5, -1.5], [30., -3.]]);
/// # Ok(())
/// # }
/// ```
pub fn scale_add(x: &Tensor, s: &Tensor, r: &Tensor) -> Result<Tensor> {
    let width = x.dims().last().copied().unwrap_or(0);
    if x.rank() == 0 || s.dims() != [width] {
        return Err(Error::NotLike {
            name: "s",
            actual: s.dims().to_vec(),
            like: "x's last dim",
            expected: vec![width],
        }
        .into());
    }
    if r.dims() != x.dims() {
        return Err(Error::NotLike {
            name: "r",
            actual: r.dims().to_vec(),
            like: "x",
            expected: x.dims().to_vec(),
        }
        .into());
    }
    let all_f32 = [x, s, r].iter().all(|t| t.dtype() == DType::F32);
    if all_f32 && x.elem_count() > 0 {
        return x
            .contiguous()?
            .apply_op3(&s.contiguous()?, &r.contiguous()?, ScaleAdd);
    }
    x.broadcast_mul(s)? + r
}

struct ScaleAdd;

impl CustomOp3 for ScaleAdd {
    fn name(&self) -> &'static str {
        "scale-add"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        s: &CpuStorage,
        ls: &Layout,
        r: &CpuStorage,
        lr: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let [x, s, r] = f32_slices(["x", "s", "r"], [(x, lx), (s, ls), (r, lr)])?;
        let y = x
            .chunks(s.len())
            .zip(r.chunks(s.len()))
            .flat_map(|(xr, rr)| xr.iter().zip(s).zip(rr).map(|((x, s), r)| x * s + r))
            .collect();
        Ok((CpuStorage::F32(y), lx.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        s: &candle_core::CudaStorage,
        ls: &Layout,
        r: &candle_core::CudaStorage,
        lr: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let width = ls.shape().elem_count();
        let y = crate::cuda::scale_add_forward(x, lx, s, ls, r, lr, width)?;
        Ok((y, lx.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        s: &Tensor,
        _r: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(s, &g.contiguous()?, &ScaleAddBackward)?;
        let (dx, ds) = split_rows_and_vector(&packed, x, s)?;
        Ok((Some(dx), Some(ds), Some(g.clone())))
    }
}

/// dx and ds of [`ScaleAdd`] for the output gradient g, as one tensor (`rows_and_vector`).
struct ScaleAddBackward;

impl CustomOp3 for ScaleAddBackward {
    fn name(&self) -> &'static str {
        "scale-add-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        s: &CpuStorage,
        ls: &Layout,
        g: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let [x, s, g] = f32_slices(["x", "s", "grad"], [(x, lx), (s, ls), (g, lg)])?;
        let width = s.len();
        let mut out = vec![0f32; x.len() + width];
        let (dx, ds) = out.split_at_mut(x.len());
        for ((xr, gr), dxr) in x
            .chunks(width)
            .zip(g.chunks(width))
            .zip(dx.chunks_mut(width))
        {
            for c in 0..width {
                dxr[c] = gr[c] * s[c];
                ds[c] += gr[c] * xr[c];
            }
        }
        Ok((CpuStorage::F32(out), rows_and_vector(lx, width)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        s: &candle_core::CudaStorage,
        ls: &Layout,
        g: &candle_core::CudaStorage,
        lg: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let width = ls.shape().elem_count();
        let out = crate::cuda::scale_add_backward(x, lx, s, ls, g, lg, width)?;
        Ok((out, rows_and_vector(lx, width)))
    }
}
