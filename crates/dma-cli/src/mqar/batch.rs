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
    /// The examples `ids` of `examples`. Shorter examples are padded at their end to the
    /// longest (token 0, no label): the model is causal, so tokens after an example's last one
    /// change none of its logits, and examples of several lengths can share a batch.
    pub fn new(examples: &[Example], ids: &[usize], device: &Device) -> Result<Self> {
        let n = ids
            .iter()
            .map(|&i| examples[i].inputs.len())
            .max()
            .unwrap_or(0);
        let mut inputs = Vec::with_capacity(ids.len() * n);
        let mut answers = Vec::new();
        let mut targets = Vec::new();
        for (b, &i) in ids.iter().enumerate() {
            let e = &examples[i];
            inputs.extend_from_slice(&e.inputs);
            inputs.resize((b + 1) * n, 0);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqar::model::{build, ModelSpec};
    use doge::AttentionKind;
    use rand::{Rng, SeedableRng};

    /// An example of `len` random tokens with labels on its last three positions.
    fn example(len: usize, rng: &mut rand::rngs::StdRng) -> Example {
        let inputs: Vec<u32> = (0..len).map(|_| rng.random_range(0..32)).collect();
        let labels = (0..len)
            .map(|p| match p + 3 >= len {
                true => i64::from(inputs[(p + 1) % len]),
                false => IGNORE,
            })
            .collect();
        Example { inputs, labels }
    }

    /// An example's answer logits are the same alone and padded in a batch with a longer one,
    /// for every attention kind (the window is shorter than the examples, so DMA selects).
    #[test]
    fn padding_at_the_end_changes_no_answer_logit() {
        let dev = Device::Cpu;
        let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
        let examples = [example(11, &mut rng), example(24, &mut rng)];
        for kind in [AttentionKind::Dma, AttentionKind::Swa, AttentionKind::Mha] {
            let spec = ModelSpec {
                kind,
                vocab: 32,
                seq_len: 24,
                d_model: 32,
                layers: 2,
                heads: 2,
                window: 4,
                a_std: 1.0,
            };
            let model = build(&spec, 3, &dev).unwrap();
            let logits = |ids: &[usize]| {
                let b = Batch::new(&examples, ids, &dev).unwrap();
                let l = model.forward_at(&b.inputs, &b.answers).unwrap();
                l.to_vec2::<f32>().unwrap()
            };
            let alone = logits(&[0]);
            let padded = logits(&[0, 1]);
            assert_eq!(padded.len(), 6, "three answers from each example");
            for (a, p) in alone.iter().flatten().zip(padded[..3].iter().flatten()) {
                assert!((a - p).abs() < 1e-5, "{kind:?}: {a} alone, {p} padded");
            }
        }
    }
}
