//! Rotary position embedding in the "rotate half" form of transformers' Llama and Doge: the
//! head dim is split into halves `(x1, x2)` and pair `i` turns by `position * theta^(-2i/D)`.
//! For f32 activations it is one op whose backward is the inverse rotation (candle's own rope
//! has no backward); other dtypes take candle's element-wise ops.

use crate::fused::f32_slices;
use crate::Error;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};

/// The frequencies of one head dim.
#[derive(Debug, Clone)]
pub(crate) struct Rope {
    /// `[D / 2]`, f32.
    inv_freq: Tensor,
}

/// cos and sin of the positions of one call, `[N, D / 2]` in f32.
pub(crate) struct RopeAt {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    pub(crate) fn new(head_dim: usize, theta: f64, device: &Device) -> Result<Self> {
        let inv_freq: Vec<f32> = (0..head_dim / 2)
            .map(|i| (1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)) as f32)
            .collect();
        Ok(Rope {
            inv_freq: Tensor::new(inv_freq, device)?,
        })
    }

    /// The rotation of positions `offset .. offset + n`.
    pub(crate) fn at(&self, offset: usize, n: usize) -> Result<RopeAt> {
        let positions: Vec<f32> = (offset..offset + n).map(|p| p as f32).collect();
        let positions = Tensor::from_vec(positions, (n, 1), self.inv_freq.device())?;
        let angles = positions.broadcast_mul(&self.inv_freq.unsqueeze(0)?)?;
        Ok(RopeAt {
            cos: angles.cos()?,
            sin: angles.sin()?,
        })
    }
}

impl RopeAt {
    /// Rotates `x` `[B, N, H, D]`.
    pub(crate) fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let (_, n, _, d) = x.dims4()?;
        if self.cos.dims() != [n, d / 2] {
            return Err(Error::NotLike {
                name: "x",
                actual: x.dims().to_vec(),
                like: "the rotation's positions and head dim",
                expected: vec![n, 2 * self.cos.dim(1)?],
            }
            .into());
        }
        if x.dtype() == DType::F32 && x.elem_count() > 0 {
            return x
                .contiguous()?
                .apply_op3(&self.cos, &self.sin, FusedRope { inverse: false });
        }
        // cos and sin of every element, [1, N, 1, D], in x's dtype (as transformers rounds them).
        let full = |t: &Tensor| {
            Tensor::cat(&[t, t], 1)?
                .reshape((1, n, 1, d))?
                .to_dtype(x.dtype())
        };
        let half = d / 2;
        let rotated = Tensor::cat(
            &[&x.narrow(3, half, half)?.neg()?, &x.narrow(3, 0, half)?],
            3,
        )?;
        x.broadcast_mul(&full(&self.cos)?)? + rotated.broadcast_mul(&full(&self.sin)?)?
    }
}

/// The f32 rotation of x `[B, N, H, D]` by cos and sin `[N, D / 2]`; `inverse` turns the other
/// way, which is the backward.
struct FusedRope {
    inverse: bool,
}

impl CustomOp3 for FusedRope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        cos: &CpuStorage,
        lc: &Layout,
        sin: &CpuStorage,
        ls: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let [x, cos, sin] = f32_slices(["x", "cos", "sin"], [(x, lx), (cos, lc), (sin, ls)])?;
        let (_, n, heads, d) = lx.shape().dims4()?;
        let half = d / 2;
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let mut y = vec![0f32; x.len()];
        // Rows of one head at one position: position t = (row / heads) % n.
        for (row, (xr, yr)) in x.chunks(d).zip(y.chunks_mut(d)).enumerate() {
            let t = (row / heads) % n;
            for i in 0..half {
                let (c, s) = (cos[t * half + i], sign * sin[t * half + i]);
                let (x1, x2) = (xr[i], xr[i + half]);
                yr[i] = x1 * c - x2 * s;
                yr[i + half] = x1 * s + x2 * c;
            }
        }
        Ok((CpuStorage::F32(y), lx.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        cos: &candle_core::CudaStorage,
        lc: &Layout,
        sin: &candle_core::CudaStorage,
        ls: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let y = crate::cuda::rope(x, lx, cos, lc, sin, ls, self.inverse)?;
        Ok((y, lx.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let inverse = FusedRope {
            inverse: !self.inverse,
        };
        let dx = grad.contiguous()?.apply_op3_no_bwd(cos, sin, &inverse)?;
        Ok((Some(dx), None, None))
    }
}

#[cfg(test)]
mod tests {
    //! The rotation against f64 angles from the definition, and its gradient against the
    //! transpose of each pair's 2x2 rotation, on random inputs.
    use super::*;
    use candle_core::Var;

    /// Per element: y = R x with R = [[c, -s], [s, c]] on (x[i], x[i + D/2]), angle
    /// `(offset + t) * theta^(-2i/D)`; with `transpose`, R^T instead.
    fn rotate_f64(
        x: &[f32],
        dims: (usize, usize, usize, usize),
        offset: usize,
        transpose: bool,
    ) -> Vec<f64> {
        let (_, n, heads, d) = dims;
        let half = d / 2;
        let mut y = vec![0f64; x.len()];
        for (row, (xr, yr)) in x.chunks(d).zip(y.chunks_mut(d)).enumerate() {
            let t = (offset + (row / heads) % n) as f64;
            for i in 0..half {
                let angle = t / 10_000f64.powf(2.0 * i as f64 / d as f64);
                let (c, mut s) = (angle.cos(), angle.sin());
                if transpose {
                    s = -s;
                }
                let (x1, x2) = (xr[i] as f64, xr[i + half] as f64);
                yr[i] = x1 * c - x2 * s;
                yr[i + half] = x1 * s + x2 * c;
            }
        }
        y
    }

    fn max_err(got: &Tensor, want: &[f64]) -> f64 {
        let got: Vec<f32> = got
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        got.iter()
            .zip(want)
            .map(|(&g, w)| (g as f64 - w).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn rotation_and_gradient_match_f64() {
        let dev = Device::Cpu;
        for (dims, offset) in [((2, 5, 3, 8), 0), ((1, 7, 1, 64), 40), ((3, 1, 2, 2), 9)] {
            let rope = Rope::new(dims.3, 10_000.0, &dev).unwrap();
            let at = rope.at(offset, dims.1).unwrap();
            let x = Tensor::randn(0f32, 1.0, dims, &dev).unwrap();
            let xv = Var::from_tensor(&x).unwrap();
            let y = at.apply(&xv).unwrap();
            let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let err = max_err(&y, &rotate_f64(&xs, dims, offset, false));
            assert!(err < 2e-5, "{dims:?}: output error {err}");

            let g = Tensor::randn(0f32, 1.0, dims, &dev).unwrap();
            let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let gs: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
            let err = max_err(
                grads.get(&xv).unwrap(),
                &rotate_f64(&gs, dims, offset, true),
            );
            assert!(err < 2e-5, "{dims:?}: gradient error {err}");

            // bf16 takes candle's element-wise ops: the same rotation at bf16's precision.
            let y16 = at.apply(&x.to_dtype(DType::BF16).unwrap()).unwrap();
            assert_eq!(y16.dtype(), DType::BF16);
            let err = max_err(&y16, &rotate_f64(&xs, dims, offset, false));
            assert!(err < 5e-2, "{dims:?}: bf16 output error {err}");
        }
    }

    #[test]
    fn positions_that_do_not_match_are_an_error() {
        let dev = Device::Cpu;
        let at = Rope::new(8, 10_000.0, &dev).unwrap().at(0, 4).unwrap();
        let x = Tensor::zeros((1, 5, 2, 8), DType::F32, &dev).unwrap();
        let err = at.apply(&x).unwrap_err();
        assert!(err.to_string().contains("`x`"), "{err}");
    }
}
