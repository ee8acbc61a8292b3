//! RMSNorm over the last dim as transformers' DogeRMSNorm: normalised in f32, then scaled by
//! `weight` in the input's dtype.

use candle_core::{DType, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub(crate) fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(size, "weight", Init::Const(1.0))?;
        Ok(RmsNorm { weight, eps })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x32 = x.to_dtype(DType::F32)?;
        let ms = x32.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x32.broadcast_div(&(ms + self.eps)?.sqrt()?)?;
        normed.to_dtype(x.dtype())?.broadcast_mul(&self.weight)
    }
}
