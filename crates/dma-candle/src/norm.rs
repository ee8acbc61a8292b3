//! RMSNorm over the last dim, computed in f32 and scaled in the input's dtype (as transformers'
//! DogeRMSNorm does).

use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;

/// `weight * x / sqrt(mean(x²) + eps)` over the last dim; `weight` is `[size]`, initialised to 1.
#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub(crate) fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?;
        Ok(RmsNorm { weight, eps })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x32 = x.to_dtype(DType::F32)?;
        let inv_rms = x32
            .sqr()?
            .mean_keepdim(D::Minus1)?
            .affine(1.0, self.eps)?
            .sqrt()?
            .recip()?;
        x32.broadcast_mul(&inv_rms)?
            .to_dtype(x.dtype())?
            .broadcast_mul(&self.weight)
    }
}
