//! Examples stacked into tensors: the token ids `[B, N]`, the flat indices of the answer
//! positions and their targets.

use super::data::{Example, IGNORE};
use anyhow::Result;
use candle_core::{Device, Tensor};

/// One batch on a device.
pub struct Batch {
    /// `[B, N]` u32.
    pub inputs: Tensor,
    /// `[M]` u32: b * N + n of each answer position.
    pub answers: Tensor,
    /// `[M]` u32: the value expected at each answer position.
    pub targets: Tensor,
}

impl Batch {
    /// The examples `ids` of `examples`.
    pub fn new(examples: &[Example], ids: &[usize], device: &Device) -> Result<Self> {
        let n = ids.first().map_or(0, |&i| examples[i].inputs.len());
        let mut inputs = Vec::with_capacity(ids.len() * n);
        let mut answers = Vec::new();
        let mut targets = Vec::new();
        for (b, &i) in ids.iter().enumerate() {
            let e = &examples[i];
            inputs.extend_from_slice(&e.inputs);
            for (p, &l) in e.labels.iter().enumerate() {
                if l != IGNORE {
                    answers.push((b * n + p) as u32);
                    targets.push(l as u32);
                }
            }
        }
        let m = answers.len();
        Ok(Batch {
            inputs: Tensor::from_vec(inputs, (ids.len(), n), device)?,
            answers: Tensor::from_vec(answers, m, device)?,
            targets: Tensor::from_vec(targets, m, device)?,
        })
    }

    /// Answer positions in the batch.
    pub fn answer_count(&self) -> Result<usize> {
        Ok(self.answers.dim(0)?)
    }
}
