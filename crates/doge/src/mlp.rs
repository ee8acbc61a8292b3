//! Doge's dense MLP (transformers' DogeMLP): `down(act(gate(x)) * up(x))`.

use crate::Activation;
use candle_core::{Module, Result, Tensor};
use candle_nn::{linear_b, Linear, VarBuilder};

#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl Mlp {
    pub(crate) fn new(
        hidden: usize,
        intermediate: usize,
        bias: bool,
        act: Activation,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Mlp {
            gate_proj: linear_b(hidden, intermediate, bias, vb.pp("gate_proj"))?,
            up_proj: linear_b(hidden, intermediate, bias, vb.pp("up_proj"))?,
            down_proj: linear_b(intermediate, hidden, bias, vb.pp("down_proj"))?,
            act,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gated = self
            .act
            .gate(&self.gate_proj.forward(x)?, &self.up_proj.forward(x)?)?;
        self.down_proj.forward(&gated)
    }
}
