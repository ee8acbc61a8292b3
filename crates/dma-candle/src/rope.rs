//! Rotary position embedding in the "rotate half" form of transformers' Llama and Doge: the
//! head dim is split into halves `(x1, x2)` and pair `i` turns by `position * theta^(-2i/D)`.

use candle_core::{DType, Device, Result, Tensor};

/// The frequencies of one head dim.
#[derive(Debug, Clone)]
pub(crate) struct Rope {
    /// `[D / 2]`, f32.
    inv_freq: Tensor,
}

/// cos and sin of the positions of one call, `[1, N, 1, D]` in the activations' dtype.
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

    /// The rotation of positions `offset .. offset + n`, for activations of `dtype`.
    pub(crate) fn at(&self, offset: usize, n: usize, dtype: DType) -> Result<RopeAt> {
        let positions: Vec<f32> = (offset..offset + n).map(|p| p as f32).collect();
        let positions = Tensor::from_vec(positions, (n, 1), self.inv_freq.device())?;
        let freqs = positions.broadcast_mul(&self.inv_freq.unsqueeze(0)?)?;
        let angles = Tensor::cat(&[&freqs, &freqs], 1)?
            .unsqueeze(0)?
            .unsqueeze(2)?;
        Ok(RopeAt {
            cos: angles.cos()?.to_dtype(dtype)?,
            sin: angles.sin()?.to_dtype(dtype)?,
        })
    }
}

impl RopeAt {
    /// Rotates `x` `[B, N, H, D]`.
    pub(crate) fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let half = x.dim(3)? / 2;
        let rotated = Tensor::cat(
            &[&x.narrow(3, half, half)?.neg()?, &x.narrow(3, 0, half)?],
            3,
        )?;
        x.broadcast_mul(&self.cos)? + rotated.broadcast_mul(&self.sin)?
    }
}
