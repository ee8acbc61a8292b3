//! AdamW with its state in the open (step count, first and second moments by variable name),
//! so a checkpoint can save it and a resumed run continues exactly; and global gradient-norm
//! clipping.

use crate::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use dma_candle::{adamw_step, AdamWStep};
use std::collections::HashMap;

/// AdamW's hyper-parameters (the learning rate comes per step, from the schedule).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices only (not norms, residual scales, `A`,
    /// biases).
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        AdamWParams {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

/// AdamW over named variables.
pub struct AdamW {
    vars: Vec<(String, Var)>,
    params: AdamWParams,
    /// Steps taken so far.
    pub(crate) step: usize,
    m: HashMap<String, Tensor>,
    v: HashMap<String, Tensor>,
}

impl AdamW {
    /// An optimiser of `vars` (name, variable), moments at zero.
    pub fn new(mut vars: Vec<(String, Var)>, params: AdamWParams) -> Result<Self> {
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut m = HashMap::new();
        let mut v = HashMap::new();
        for (name, var) in &vars {
            m.insert(name.clone(), var.zeros_like()?);
            v.insert(name.clone(), var.zeros_like()?);
        }
        Ok(AdamW {
            vars,
            params,
            step: 0,
            m,
            v,
        })
    }

    /// One update with learning rate `lr` from `grads`, scaled by `grad_scale` (clipping).
    /// Variables without a gradient are left alone. f32 variables (every Doge trained here)
    /// take `dma_candle::adamw_step`, in place; others candle's element-wise ops.
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let p = self.params;
        let t = self.step as i32;
        for (name, var) in &self.vars {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let (m, v) = (&self.m[name], &self.v[name]);
            let weight_decay = match var.rank() >= 2 {
                true => p.weight_decay,
                false => 0.0,
            };
            if var.dtype() == DType::F32 && g.dtype() == DType::F32 {
                let step = AdamWStep {
                    beta1: p.beta1,
                    beta2: p.beta2,
                    eps: p.eps,
                    lr,
                    weight_decay,
                    grad_scale,
                    t,
                };
                adamw_step(var.as_tensor(), m, v, &g.contiguous()?, &step)?;
                continue;
            }
            let (c1, c2) = (1.0 - p.beta1.powi(t), 1.0 - p.beta2.powi(t));
            let g = (g.detach() * grad_scale)?;
            let m = ((m * p.beta1)? + (&g * (1.0 - p.beta1))?)?;
            let v = ((v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let update = ((&m / c1)? / ((&v / c2)?.sqrt()? + p.eps)?)?;
            let decayed = (var.as_tensor().detach() * (1.0 - lr * weight_decay))?;
            var.set(&(decayed - (update * lr)?)?)?;
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        Ok(())
    }

    /// The moments as named tensors (`m.NAME`, `v.NAME`), for a checkpoint.
    pub(crate) fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (name, _) in &self.vars {
            out.insert(format!("m.{name}"), self.m[name].clone());
            out.insert(format!("v.{name}"), self.v[name].clone());
        }
        out
    }

    /// Restores the moments saved by [`Self::state`] and the step count.
    pub(crate) fn restore(&mut self, step: usize, state: &HashMap<String, Tensor>) -> Result<()> {
        for (name, var) in &self.vars {
            for (prefix, map) in [("m", &mut self.m), ("v", &mut self.v)] {
                let key = format!("{prefix}.{name}");
                let t = state
                    .get(&key)
                    .ok_or_else(|| Error::MissingTensor { name: key.clone() })?;
                if t.dims() != var.dims() {
                    return Err(Error::TensorShape {
                        name: key,
                        actual: t.dims().to_vec(),
                        expected: var.dims().to_vec(),
                    });
                }
                // A copy of its own: the step updates the moments in place.
                map.insert(name.clone(), t.to_dtype(DType::F32)?.copy()?);
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The global L2 norm of the gradients of `vars`. Each gradient's sum of squares is taken on
/// the device, the sums are stacked and added in f64, and the total is read back once (one
/// synchronisation per step, not one per variable, and few launches).
pub fn grad_norm(grads: &GradStore, vars: &[(String, Var)]) -> Result<f64> {
    // In name order, so that the sum (and the clipping) does not depend on the map's order.
    let mut sorted: Vec<&(String, Var)> = vars.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut sums = Vec::new();
    for (_, var) in sorted {
        if let Some(g) = grads.get(var) {
            sums.push(g.sqr()?.sum_all()?.to_dtype(DType::F64)?);
        }
    }
    if sums.is_empty() {
        return Ok(0.0);
    }
    let total = Tensor::stack(&sums, 0)?.sum_all()?;
    Ok(total.to_scalar::<f64>()?.sqrt())
}
