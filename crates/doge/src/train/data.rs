//! Training batches from one token stream: `batch` windows of `seq_len + 1` tokens at offsets
//! drawn from a generator seeded by (seed, step), so step `s` always sees the same batch and a
//! resumed run needs no saved random state.

use crate::{Error, Result};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub struct TokenBatches {
    tokens: Vec<u32>,
    seq_len: usize,
    batch: usize,
    seed: u64,
}

impl TokenBatches {
    pub fn new(tokens: Vec<u32>, seq_len: usize, batch: usize, seed: u64) -> Result<Self> {
        if seq_len == 0 || batch == 0 {
            return Err(Error::Input {
                name: "batch",
                reason: "seq_len and batch must be at least 1".into(),
            });
        }
        if tokens.len() < seq_len + 1 {
            return Err(Error::Input {
                name: "corpus",
                reason: format!(
                    "{} tokens, but one training window needs seq_len + 1 = {}",
                    tokens.len(),
                    seq_len + 1
                ),
            });
        }
        Ok(TokenBatches {
            tokens,
            seq_len,
            batch,
            seed,
        })
    }

    /// The batch of step `step`: `[batch, seq_len + 1]` u32 (inputs and shifted targets).
    pub fn get(&self, step: usize, device: &Device) -> Result<Tensor> {
        let mut rng =
            StdRng::seed_from_u64(self.seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let last_start = self.tokens.len() - (self.seq_len + 1);
        let mut ids = Vec::with_capacity(self.batch * (self.seq_len + 1));
        for _ in 0..self.batch {
            let start = rng.random_range(0..=last_start);
            ids.extend_from_slice(&self.tokens[start..start + self.seq_len + 1]);
        }
        Ok(Tensor::from_vec(
            ids,
            (self.batch, self.seq_len + 1),
            device,
        )?)
    }
}
