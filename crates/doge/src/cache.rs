//! The KV cache of incremental decoding: per layer, the rotated keys, the values and each key's
//! bias (the bias of a key depends on its own value only, so it is computed once, when the key
//! arrives). Nothing is evicted: every new query ranks all cached keys (SPEC.md, "Decoding with
//! a cache").

use candle_core::{Result, Tensor};

/// One layer's cached keys `[B, Nk, Hkv, D]`, values `[B, Nk, Hkv, D]` and biases `[B, Hb, Nk]`.
#[derive(Debug, Clone)]
struct LayerCache {
    k: Tensor,
    v: Tensor,
    bias: Tensor,
}

/// The cache of every layer of a model, all at the same length.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
}

impl KvCache {
    /// An empty cache for a model of `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        KvCache {
            layers: vec![None; num_layers],
        }
    }

    /// Tokens cached so far (the position of the next token).
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some(c)) => c.k.dim(1).unwrap_or(0),
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every cached token.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
    }

    /// Appends layer `layer`'s new keys, values and biases and returns all of them.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor,
        v: Tensor,
        bias: Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let slot = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| candle_core::Error::Msg(format!("no layer {layer} in the cache")))?;
        let next = match slot.take() {
            None => LayerCache { k, v, bias },
            Some(old) => LayerCache {
                k: Tensor::cat(&[&old.k, &k], 1)?,
                v: Tensor::cat(&[&old.v, &v], 1)?,
                bias: Tensor::cat(&[&old.bias, &bias], 2)?,
            },
        };
        let out = (next.k.clone(), next.v.clone(), next.bias.clone());
        *slot = Some(next);
        Ok(out)
    }
}
