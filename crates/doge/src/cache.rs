//! The KV cache of incremental decoding: per layer, the rotated keys, the values and each key's
//! bias (the bias of a key depends on its own value only, so it is computed once, when the key
//! arrives). Nothing is evicted: every new query ranks all cached keys (SPEC.md, "Decoding with
//! a cache").
//!
//! Each layer's tensors are allocated with room to grow (a power of two, doubling when full) and
//! new keys are written in place, so a step copies only its own keys, not the whole cache; the
//! attention reads the filled prefix (on CUDA in place, for any batch: `dma_decode_step` takes
//! the narrowed k, v and bias as a padded layout). Each layer also carries the attention's
//! [`DecodeState`] (on CUDA, its kept keys), which the same cache's steps continue.

use candle_core::{Result, Tensor};
use dma_candle::DecodeState;

/// The fewest positions a layer's cache is allocated with. Capacities are powers of two: a
/// prefill gets room to decode after it, and a full cache doubles (so up to 2x the memory of
/// its keys, for appends that copy each key O(1) times).
const FIRST_CAPACITY: usize = 256;

/// One layer's keys `[B, capacity, Hkv, D]`, values `[B, capacity, Hkv, D]` and biases
/// `[B, Hb, capacity]`, of which the first `len` positions are filled.
#[derive(Debug)]
struct LayerCache {
    k: Tensor,
    v: Tensor,
    bias: Tensor,
    len: usize,
    state: DecodeState,
}

impl LayerCache {
    /// A cache of `capacity` positions holding `k`, `v`, `bias` (the shapes of one append).
    fn with_capacity(k: &Tensor, v: &Tensor, bias: &Tensor, capacity: usize) -> Result<Self> {
        let (b, _, hkv, d) = k.dims4()?;
        let hb = bias.dim(1)?;
        let mut cache = LayerCache {
            k: Tensor::zeros((b, capacity, hkv, d), k.dtype(), k.device())?,
            v: Tensor::zeros((b, capacity, hkv, d), v.dtype(), v.device())?,
            bias: Tensor::zeros((b, hb, capacity), bias.dtype(), bias.device())?,
            len: 0,
            state: DecodeState::new(),
        };
        cache.write(k, v, bias)?;
        Ok(cache)
    }

    fn capacity(&self) -> usize {
        self.k.dims()[1]
    }

    /// Writes new keys at the end (the caller made room).
    fn write(&mut self, k: &Tensor, v: &Tensor, bias: &Tensor) -> Result<()> {
        self.k.slice_set(&k.contiguous()?, 1, self.len)?;
        self.v.slice_set(&v.contiguous()?, 1, self.len)?;
        self.bias.slice_set(&bias.contiguous()?, 2, self.len)?;
        self.len += k.dim(1)?;
        Ok(())
    }

    /// The filled keys, values and biases.
    fn filled(&self) -> Result<(Tensor, Tensor, Tensor)> {
        Ok((
            self.k.narrow(1, 0, self.len)?,
            self.v.narrow(1, 0, self.len)?,
            self.bias.narrow(2, 0, self.len)?,
        ))
    }

    /// A copy with its own storage (in-place writes to one do not reach the other) and a fresh
    /// attention state (it selects again at its first step).
    fn deep_copy(&self) -> Result<Self> {
        Ok(LayerCache {
            k: self.k.copy()?,
            v: self.v.copy()?,
            bias: self.bias.copy()?,
            len: self.len,
            state: DecodeState::new(),
        })
    }
}

/// The cache of every layer of a model, all at the same length.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
}

impl KvCache {
    /// An empty cache for a model of `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        KvCache {
            layers: (0..num_layers).map(|_| None).collect(),
        }
    }

    /// Tokens cached so far (the position of the next token).
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some(c)) => c.len,
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

    /// A copy that continues on its own (a fork of a generation): its tensors are copied.
    pub fn try_clone(&self) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|l| l.as_ref().map(LayerCache::deep_copy).transpose())
            .collect::<Result<_>>()?;
        Ok(KvCache { layers })
    }

    /// Appends layer `layer`'s new keys, values and biases; returns all of them (views of the
    /// cache) and the layer's attention state.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor,
        v: Tensor,
        bias: Tensor,
    ) -> Result<(Tensor, Tensor, Tensor, &mut DecodeState)> {
        let slot = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| candle_core::Error::Msg(format!("no layer {layer} in the cache")))?;
        let new = k.dim(1)?;
        let cache = match slot.take() {
            None => {
                let capacity = new.next_power_of_two().max(FIRST_CAPACITY);
                LayerCache::with_capacity(&k, &v, &bias, capacity)?
            }
            Some(mut old) if old.len + new <= old.capacity() => {
                old.write(&k, &v, &bias)?;
                old
            }
            Some(old) => {
                let capacity = (old.len + new).max(2 * old.capacity());
                let (ok, ov, ob) = old.filled()?;
                let mut grown = LayerCache::with_capacity(&ok, &ov, &ob, capacity)?;
                grown.state = old.state;
                grown.write(&k, &v, &bias)?;
                grown
            }
        };
        let cache = slot.insert(cache);
        let (k, v, bias) = cache.filled()?;
        Ok((k, v, bias, &mut cache.state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn rows(n: usize, start: f32) -> Result<(Tensor, Tensor, Tensor)> {
        let dev = Device::Cpu;
        let k = Tensor::arange(start, start + (n * 4) as f32, &dev)?.reshape((1, n, 2, 2))?;
        let bias = Tensor::arange(start, start + (n * 3) as f32, &dev)?.reshape((1, 3, n))?;
        Ok((k.clone(), (k * 2.0)?, bias))
    }

    /// Appends past the first capacity and through a doubling give what concatenation gives, and
    /// a fork does not see the appends of the cache it came from.
    #[test]
    fn appends_match_concatenation() -> Result<()> {
        let mut cache = KvCache::new(1);
        let (mut ks, mut vs, mut bs) = (Vec::new(), Vec::new(), Vec::new());
        let mut fork = None;
        for (i, n) in [300usize, 1, 1, 250, 1, 700].into_iter().enumerate() {
            let (k, v, b) = rows(n, (i * 10_000) as f32)?;
            let (ck, cv, cb, _) = cache.append(0, k.clone(), v.clone(), b.clone())?;
            ks.push(k);
            vs.push(v);
            bs.push(b);
            let want = [
                Tensor::cat(&ks, 1)?,
                Tensor::cat(&vs, 1)?,
                Tensor::cat(&bs, 2)?,
            ];
            for (got, want) in [ck, cv, cb].iter().zip(&want) {
                assert_eq!(got.dims(), want.dims());
                let diff = (got - want)?.abs()?.sum_all()?.to_dtype(DType::F64)?;
                assert_eq!(diff.to_scalar::<f64>()?, 0.0, "append {i}");
            }
            assert_eq!(
                cache.len(),
                ks.iter().map(|k| k.dim(1).unwrap()).sum::<usize>()
            );
            if i == 1 {
                fork = Some((cache.try_clone()?, want));
            }
        }
        let (mut fork, want) = fork.expect("forked");
        assert_eq!(fork.len(), 301);
        let (k, v, b) = rows(1, -5.0)?;
        let (fk, _, _, _) = fork.append(0, k.clone(), v, b.clone())?;
        let expect = Tensor::cat(&[&want[0], &k], 1)?;
        let diff = (fk - expect)?.abs()?.sum_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        // The fork's write at position 301 did not reach the original.
        let (ok, _, _, _) = cache.append(
            0,
            k.narrow(1, 0, 0)?,
            k.narrow(1, 0, 0)?,
            b.narrow(2, 0, 0)?,
        )?;
        let diff = (ok - Tensor::cat(&ks, 1)?)?
            .abs()?
            .sum_all()?
            .to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        Ok(())
    }
}
