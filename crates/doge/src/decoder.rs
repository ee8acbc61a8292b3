//! One Doge block (transformers' DogeDecoderLayer): RMSNorm, DMA self-attention, a learned
//! per-channel scale on the residual; RMSNorm, MLP, another residual scale.

use crate::mlp::Mlp;
use crate::{DogeConfig, KvCache, ModelOptions};
use candle_core::{Result, Tensor};
use candle_nn::{Init, VarBuilder};
use dma_candle::{scale_add, RmsNorm};
use dma_candle::{DmaAttention, DmaAttentionConfig};

#[derive(Debug, Clone)]
pub(crate) struct DecoderLayer {
    pub(crate) input_layernorm: RmsNorm,
    pub(crate) self_attn: DmaAttention,
    input_residual: Tensor,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
    post_attention_residual: Tensor,
    index: usize,
}

impl DecoderLayer {
    pub(crate) fn new(
        c: &DogeConfig,
        options: &ModelOptions,
        index: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let h = c.hidden_size;
        Ok(DecoderLayer {
            input_layernorm: RmsNorm::new(h, c.rms_norm_eps, vb.pp("input_layernorm"))?,
            self_attn: DmaAttention::new(
                DmaAttentionConfig {
                    attention_dtype: options.attention_dtype,
                    ..c.attention(options.kind, options.bias_fn)
                },
                vb.pp("self_attn"),
            )?,
            input_residual: vb.get_with_hints(h, "input_residual", Init::Const(1.0))?,
            post_attention_layernorm: RmsNorm::new(
                h,
                c.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: Mlp::new(
                h,
                c.intermediate_size,
                c.mlp_bias,
                c.hidden_act,
                vb.pp("mlp"),
            )?,
            post_attention_residual: vb.get_with_hints(
                h,
                "post_attention_residual",
                Init::Const(1.0),
            )?,
            index,
        })
    }

    /// `x` `[B, N, hidden]` at positions `offset..offset + N`. With a cache, the new keys join
    /// the cached ones and the queries attend to all of them.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        offset: usize,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let attn = &self.self_attn;
        let (q, k, v) = attn.project(&self.input_layernorm.forward(x)?, offset)?;
        let bias = attn.key_bias(&v)?;
        let attended = match cache {
            // The cache keeps k and v in the attention's dtype, so a step casts only its own.
            Some(cache) => {
                let dtype = attn.attention_dtype(q.device(), q.dtype());
                let (k, v) = (k.to_dtype(dtype)?, v.to_dtype(dtype)?);
                let (k, v, bias, state) = cache.append(self.index, k, v, bias)?;
                match q.dim(1)? {
                    1 => attn.attend_step(&q, &k, &v, &bias, state)?,
                    _ => attn.attend(&q, &k, &v, &bias)?,
                }
            }
            None => attn.attend(&q, &k, &v, &bias)?,
        };
        let x = scale_add(x, &self.input_residual, &attended)?;
        let mlp = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&x)?)?;
        scale_add(&x, &self.post_attention_residual, &mlp)
    }
}
