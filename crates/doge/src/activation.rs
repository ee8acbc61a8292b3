//! The MLP activations that transformers' `ACT2FN` names and Doge configs use.

use crate::{Error, Result};
use candle_core::Tensor;

/// `hidden_act` of a config.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu` (or `swish`): `x * sigmoid(x)`, Doge's default.
    Silu,
    /// `gelu`: the exact, erf-based GELU.
    Gelu,
    /// `gelu_pytorch_tanh` (or `gelu_new`): the tanh approximation.
    GeluTanh,
    Relu,
}

impl Activation {
    pub(crate) fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "silu" | "swish" => Activation::Silu,
            "gelu" => Activation::Gelu,
            "gelu_pytorch_tanh" | "gelu_new" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => {
                return Err(Error::InvalidField {
                    field: "hidden_act",
                    reason: format!(
                        "`{other}` is not supported (silu, swish, gelu, gelu_pytorch_tanh, gelu_new, relu)"
                    ),
                })
            }
        })
    }

    /// The name written back to config.json.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_pytorch_tanh",
            Activation::Relu => "relu",
        }
    }

    /// `act(a) * u`, the gated MLP's product; SiLU's is one fused op (`dma_candle::silu_mul`).
    pub(crate) fn gate(self, a: &Tensor, u: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Silu => dma_candle::silu_mul(a, u),
            _ => self.apply(a)? * u,
        }
    }

    pub(crate) fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Silu => x.silu(),
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::Relu => x.relu(),
        }
    }
}
