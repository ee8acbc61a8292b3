//! The attention layer of Doge (transformers' `DogeAttention`), with the kernel call replaced by
//! [`dma_attention`] and a switch to run the same layer as sliding-window or dense attention.

use crate::norm::RmsNorm;
use crate::rope::Rope;
use crate::{dma_attention, dma_decode_step, DecodeState, Error};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{linear_b, Linear, VarBuilder};
use dma::Params;

/// Which attention the layer computes. All three run through the same op, so comparisons
/// between them measure the selection, not different kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionKind {
    /// Dynamic Mask Attention: each query keeps the `window` best keys by the learned bias.
    #[default]
    Dma,
    /// Sliding window of width `window`: a constant bias (DMA then keeps the latest keys).
    Swa,
    /// Dense causal attention: a constant bias and a window that covers every key.
    Mha,
}

/// How the per-key bias comes from `z = dt_proj(v)` (SPEC.md, "Where the bias comes from").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BiasFn {
    /// `exp(A * softplus(z))`: the paper and transformers' Doge.
    #[default]
    ExpSoftplus,
    /// `A * softplus(z)`: the later reference kernels.
    Softplus,
}

/// Geometry and options of a [`DmaAttention`]; field names follow transformers' `DogeConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct DmaAttentionConfig {
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// Hb: `num_key_value_heads` (as in Doge) or `num_attention_heads`.
    pub num_bias_heads: usize,
    /// The window w of [`AttentionKind::Dma`] and [`AttentionKind::Swa`].
    pub keep_window_size: usize,
    /// Whether q/k/v/o_proj and dt_proj have biases.
    pub attention_bias: bool,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub kind: AttentionKind,
    pub bias_fn: BiasFn,
    /// The dtype q, k and v are cast to for the op (its output is cast back). `None`: the
    /// input's dtype, except f32 on CUDA, which attends in bf16 (the kernels have no f32 path).
    pub attention_dtype: Option<DType>,
}

impl DmaAttentionConfig {
    /// Doge's defaults for the given sizes: head dim `hidden / heads`, one bias head per kv head,
    /// no projection biases, eps 1e-6, RoPE theta 10000, DMA with `exp(A·softplus(z))`.
    pub fn new(
        hidden_size: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
        keep_window_size: usize,
    ) -> Self {
        DmaAttentionConfig {
            hidden_size,
            num_attention_heads,
            num_key_value_heads,
            head_dim: hidden_size / num_attention_heads.max(1),
            num_bias_heads: num_key_value_heads,
            keep_window_size,
            attention_bias: false,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            kind: AttentionKind::Dma,
            bias_fn: BiasFn::ExpSoftplus,
            attention_dtype: None,
        }
    }

    fn validate(&self) -> std::result::Result<(), Error> {
        let bad = |reason: String| Err(Error::Config(reason));
        let (hq, hkv, hb) = (
            self.num_attention_heads,
            self.num_key_value_heads,
            self.num_bias_heads,
        );
        if self.hidden_size == 0 || hq == 0 || hkv == 0 {
            return bad("hidden_size and the head counts must be at least 1".into());
        }
        if hq % hkv != 0 {
            return bad(format!(
                "num_attention_heads ({hq}) must be a multiple of num_key_value_heads ({hkv})"
            ));
        }
        if hb != hq && hb != hkv {
            return bad(format!(
                "num_bias_heads ({hb}) must equal num_attention_heads ({hq}) or num_key_value_heads ({hkv})"
            ));
        }
        if self.head_dim == 0 || self.head_dim % 2 != 0 || self.head_dim > dma::MAX_HEAD_DIM {
            return bad(format!(
                "head_dim ({}) must be even and between 2 and {}",
                self.head_dim,
                dma::MAX_HEAD_DIM
            ));
        }
        if self.keep_window_size == 0 {
            return bad("keep_window_size must be at least 1".into());
        }
        if !(self.rope_theta > 0.0 && self.rms_norm_eps >= 0.0) {
            return bad("rope_theta must be positive and rms_norm_eps not negative".into());
        }
        Ok(())
    }
}

/// The learned bias: `dt_proj` (Hkv·D -> Hb) and `A` (Hb).
#[derive(Debug, Clone)]
struct DynamicBias {
    dt_proj: Linear,
    a: Tensor,
    bias_fn: BiasFn,
}

/// Doge's attention layer: q/k/v/o projections, RMSNorm of every q and k head, RoPE, and DMA
/// with the bias computed from the value states. Weight names are those of transformers'
/// `DogeAttention` (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `dt_proj`, `A`, `q_norm`,
/// `k_norm`); `dt_proj` and `A` exist only for [`AttentionKind::Dma`].
///
/// On CUDA an f32 layer runs the attention itself in bf16 (the kernels have no f32 path) and
/// everything else in f32; [`DmaAttentionConfig::attention_dtype`] chooses otherwise.
#[derive(Debug, Clone)]
pub struct DmaAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    rope: Rope,
    dynamic: Option<DynamicBias>,
    config: DmaAttentionConfig,
}

impl DmaAttention {
    /// Loads (or, from a `VarMap`, creates) the weights under `vb`. `A` starts at zero, as in
    /// transformers, so a fresh layer's bias is constant and DMA starts as sliding window.
    pub fn new(config: DmaAttentionConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let c = &config;
        let (q_dim, kv_dim) = (
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        let linear = |i, o, name| linear_b(i, o, c.attention_bias, vb.pp(name));
        let dynamic = match c.kind {
            AttentionKind::Dma => Some(DynamicBias {
                dt_proj: linear(kv_dim, c.num_bias_heads, "dt_proj")?,
                a: vb.get_with_hints(c.num_bias_heads, "A", candle_nn::Init::Const(0.0))?,
                bias_fn: c.bias_fn,
            }),
            AttentionKind::Swa | AttentionKind::Mha => None,
        };
        Ok(DmaAttention {
            q_proj: linear(c.hidden_size, q_dim, "q_proj")?,
            k_proj: linear(c.hidden_size, kv_dim, "k_proj")?,
            v_proj: linear(c.hidden_size, kv_dim, "v_proj")?,
            o_proj: linear(q_dim, c.hidden_size, "o_proj")?,
            q_norm: RmsNorm::new(c.head_dim, c.rms_norm_eps, vb.pp("q_norm"))?,
            k_norm: RmsNorm::new(c.head_dim, c.rms_norm_eps, vb.pp("k_norm"))?,
            rope: Rope::new(c.head_dim, c.rope_theta, vb.device())?,
            dynamic,
            config,
        })
    }

    pub fn config(&self) -> &DmaAttentionConfig {
        &self.config
    }

    /// Self-attention of `x` `[B, N, hidden]` whose first token sits at position `offset`:
    /// `[B, N, hidden]`. Without a cache the queries see only these N keys.
    pub fn forward(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let (q, k, v) = self.project(x, offset)?;
        let bias = self.key_bias(&v)?;
        self.attend(&q, &k, &v, &bias)
    }

    /// The attention inputs of `x` `[B, N, hidden]` at positions `offset..offset + N`: q
    /// `[B, N, Hq, D]` and k `[B, N, Hkv, D]` normalised and rotated, v `[B, N, Hkv, D]`.
    /// A KV cache appends k, v and [`Self::key_bias`] of v, then calls [`Self::attend`].
    pub fn project(&self, x: &Tensor, offset: usize) -> Result<(Tensor, Tensor, Tensor)> {
        let c = &self.config;
        let (b, n, _) = x.dims3()?;
        let heads = |t: Tensor, h: usize| t.reshape((b, n, h, c.head_dim));
        let q = heads(self.q_proj.forward(x)?, c.num_attention_heads)?;
        let k = heads(self.k_proj.forward(x)?, c.num_key_value_heads)?;
        let v = heads(self.v_proj.forward(x)?, c.num_key_value_heads)?;
        let rope = self.rope.at(offset, n)?;
        let q = rope.apply(&self.q_norm.forward(&q)?)?;
        let k = rope.apply(&self.k_norm.forward(&k)?)?;
        Ok((q, k, v))
    }

    /// The bias of keys with value states `v` `[B, Nk, Hkv, D]`: `[B, Hb, Nk]` in f32. Every
    /// key's bias depends on its own value only, so a cache can keep it with the key.
    pub fn key_bias(&self, v: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (b, nk, hkv, d) = v.dims4()?;
        let Some(dynamic) = &self.dynamic else {
            return Tensor::zeros((b, c.num_bias_heads, nk), DType::F32, v.device());
        };
        let z = dynamic
            .dt_proj
            .forward(&v.reshape((b, nk, hkv * d))?)?
            .to_dtype(DType::F32)?;
        let scaled = softplus(&z)?.broadcast_mul(&dynamic.a.to_dtype(DType::F32)?)?;
        let bias = match dynamic.bias_fn {
            BiasFn::ExpSoftplus => scaled.exp()?,
            BiasFn::Softplus => scaled,
        };
        bias.transpose(1, 2)
    }

    /// Attention of q `[B, Nq, Hq, D]` over k, v `[B, Nk, Hkv, D]` with `bias` `[B, Hb, Nk]`
    /// (queries aligned to the last keys), then `o_proj`: `[B, Nq, hidden]`.
    pub fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor) -> Result<Tensor> {
        self.attend_with(q, k, v, |q, k, v, params| {
            dma_attention(q, k, v, bias, params)
        })
    }

    /// [`Self::attend`] for one generation step over a KV cache, through [`dma_decode_step`]
    /// (no gradient): `state` carries the layer's kept keys from step to step. A cache that
    /// keeps k and v in [`Self::attention_dtype`] is read in place on CUDA.
    pub fn attend_step(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: &Tensor,
        state: &mut DecodeState,
    ) -> Result<Tensor> {
        self.attend_with(q, k, v, |q, k, v, params| {
            dma_decode_step(q, k, v, bias, params, state)
        })
    }

    /// The dtype the attention runs in for q of `dtype` on `device`: the config's
    /// `attention_dtype`, else bf16 for f32 on CUDA (the kernels have no f32 path), else `dtype`.
    pub fn attention_dtype(&self, device: &candle_core::Device, dtype: DType) -> DType {
        match (self.config.attention_dtype, device, dtype) {
            (Some(dtype), _, _) => dtype,
            (None, candle_core::Device::Cuda(_), DType::F32) => DType::BF16,
            (None, _, dtype) => dtype,
        }
    }

    /// `attention` of q, k and v cast to the attention dtype, with the layer's params; its
    /// output cast back to q's dtype and projected by `o_proj`.
    fn attend_with(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        attention: impl FnOnce(&Tensor, &Tensor, &Tensor, &Params) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, nq, hq, d) = q.dims4()?;
        let window = match c.kind {
            AttentionKind::Dma | AttentionKind::Swa => c.keep_window_size,
            AttentionKind::Mha => k.dim(1)?.max(1),
        };
        // Causal, scale 1/sqrt(D) as in Doge.
        let params = Params::new(window);
        let dtype = self.attention_dtype(q.device(), q.dtype());
        // A no-op for a tensor already in `dtype`.
        let cast = |t: &Tensor| t.to_dtype(dtype);
        let out = attention(&cast(q)?, &cast(k)?, &cast(v)?, &params)?.to_dtype(q.dtype())?;
        self.o_proj.forward(&out.reshape((b, nq, hq * d))?)
    }
}

/// `log(1 + exp(z))`, stable for large `|z|`: `max(z, 0) + log(1 + exp(-|z|))`.
fn softplus(z: &Tensor) -> Result<Tensor> {
    z.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?
}
