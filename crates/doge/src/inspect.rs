//! A look inside the attention of a model for one short input: every layer's q and k (after
//! the q/k RMSNorm and RoPE) and per-key bias, and from them, per query head, which keys each
//! query keeps (the top-w selection of SPEC.md) and its attention weights over them.
//!
//! This is for visualising short inputs (the dense `Nq x Nk` maps are built on the CPU in f64);
//! the model itself never builds them.

use crate::{DogeForCausalLM, Error, Result};
use candle_core::{DType, Tensor};
use dma::selection::KeySelection;
use dma_candle::AttentionKind;

/// One layer's attention inputs for one sequence of N tokens, as the kernel receives them.
#[derive(Debug, Clone)]
pub struct LayerInputs {
    /// `[N, Hq, D]`, f32, normalised and rotated.
    pub q: Tensor,
    /// `[N, Hkv, D]`, f32, normalised and rotated.
    pub k: Tensor,
    /// `[Hb, N]`, f32: one value per key (zero for swa and mha).
    pub bias: Tensor,
}

/// The attention inputs of every layer for the token ids `ids` (one sequence, positions from 0).
pub fn attention_inputs(model: &DogeForCausalLM, ids: &[u32]) -> Result<Vec<LayerInputs>> {
    let config = model.config();
    if ids.is_empty() {
        return Err(Error::Input {
            name: "input_ids",
            reason: "is empty".into(),
        });
    }
    if ids.len() > config.max_position_embeddings {
        return Err(Error::TooLong {
            len: ids.len(),
            max: config.max_position_embeddings,
        });
    }
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= config.vocab_size) {
        return Err(Error::TokenId {
            id: id.into(),
            vocab_size: config.vocab_size,
        });
    }
    let ids = Tensor::from_slice(ids, (1, ids.len()), model.device())?;
    let mut x = model.embed_tokens.forward(&ids)?;
    let mut out = Vec::with_capacity(model.layers.len());
    for layer in &model.layers {
        let attn = &layer.self_attn;
        let (q, k, v) = attn.project(&layer.input_layernorm.forward(&x)?, 0)?;
        let bias = attn.key_bias(&v)?;
        out.push(LayerInputs {
            q: q.squeeze(0)?.to_dtype(DType::F32)?,
            k: k.squeeze(0)?.to_dtype(DType::F32)?,
            bias: bias.squeeze(0)?.to_dtype(DType::F32)?,
        });
        x = layer.forward(&x, 0, None)?;
    }
    Ok(out)
}

/// The window the model's attention runs with over `nk` keys: keep_window_size for dma and swa,
/// every key for mha.
pub fn window(model: &DogeForCausalLM, nk: usize) -> usize {
    match model.options().kind {
        AttentionKind::Dma | AttentionKind::Swa => model.config().keep_window_size,
        AttentionKind::Mha => nk.max(1),
    }
}

/// One query head's dense maps over a causal sequence, row-major `[Nq, Nk]` (query rows, key
/// columns; Nq = Nk = N).
#[derive(Debug, Clone, PartialEq)]
pub struct HeadMaps {
    pub n: usize,
    /// Whether query i keeps key j.
    pub keep: Vec<bool>,
    /// softmax over the kept keys of `scale * <q_i, k_j> + bias_j`; 0 where not kept.
    pub weights: Vec<f32>,
}

impl HeadMaps {
    pub fn kept(&self, i: usize, j: usize) -> bool {
        self.keep[i * self.n + j]
    }

    pub fn weight(&self, i: usize, j: usize) -> f32 {
        self.weights[i * self.n + j]
    }
}

/// Per query head (`Hq` of them), the kept keys and attention weights of a causal self-attention
/// with window `window` and scale 1/sqrt(D), as SPEC.md defines them. Query head h reads kv head
/// `h / (Hq/Hkv)` and bias head `h / (Hq/Hb)`.
pub fn head_maps(layer: &LayerInputs, window: usize) -> Result<Vec<HeadMaps>> {
    let (n, hq, d) = layer.q.dims3()?;
    let (nk, hkv, dk) = layer.k.dims3()?;
    let (hb, nb) = layer.bias.dims2()?;
    if nk != n || nb != n || dk != d || hkv == 0 || hb == 0 || hq % hkv != 0 || hq % hb != 0 {
        return Err(Error::Input {
            name: "layer inputs",
            reason: format!(
                "q {:?}, k {:?} and bias {:?} do not fit together",
                layer.q.dims(),
                layer.k.dims(),
                layer.bias.dims()
            ),
        });
    }
    let q: Vec<f32> = layer.q.flatten_all()?.to_vec1()?;
    let k: Vec<f32> = layer.k.flatten_all()?.to_vec1()?;
    let bias: Vec<f32> = layer.bias.flatten_all()?.to_vec1()?;
    if let Some(b) = bias.iter().find(|b| b.is_nan()) {
        return Err(Error::Input {
            name: "bias",
            reason: format!("holds {b}"),
        });
    }
    let scale = 1.0 / (d as f64).sqrt();
    let selections: Vec<KeySelection> = (0..hb)
        .map(|b| KeySelection::new(&bias[b * n..(b + 1) * n], n, window, true, 64))
        .collect();
    let mut maps = Vec::with_capacity(hq);
    for h in 0..hq {
        let (kv, b) = (h / (hq / hkv), h / (hq / hb));
        let sel = &selections[b];
        let head_bias = &bias[b * n..(b + 1) * n];
        let mut keep = vec![false; n * n];
        let mut weights = vec![0f32; n * n];
        let mut scores = vec![f64::NEG_INFINITY; n];
        for i in 0..n {
            let qi = &q[(i * hq + h) * d..][..d];
            let mut max = f64::NEG_INFINITY;
            for j in 0..=i {
                scores[j] = f64::NEG_INFINITY;
                if !sel.keeps(i as i64, j) {
                    continue;
                }
                keep[i * n + j] = true;
                let kj = &k[(j * hkv + kv) * d..][..d];
                let dot: f64 = qi.iter().zip(kj).map(|(&a, &b)| a as f64 * b as f64).sum();
                scores[j] = scale * dot + head_bias[j] as f64;
                max = max.max(scores[j]);
            }
            let total: f64 = scores[..=i]
                .iter()
                .filter(|s| s.is_finite())
                .map(|s| (s - max).exp())
                .sum();
            for j in 0..=i {
                if scores[j].is_finite() {
                    weights[i * n + j] = ((scores[j] - max).exp() / total) as f32;
                }
            }
        }
        maps.push(HeadMaps { n, keep, weights });
    }
    Ok(maps)
}
