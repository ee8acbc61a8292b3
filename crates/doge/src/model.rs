//! `DogeForCausalLM`: token embedding, Doge blocks, final RMSNorm and the LM head, with
//! transformers' weight names, so a model saved by `save_pretrained` loads here and back.

use crate::decoder::DecoderLayer;
use crate::embedding::Embedding;
use crate::{weights, DogeConfig, Error, KvCache, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder, VarMap};
use dma_candle::RmsNorm;
use dma_candle::{AttentionKind, BiasFn};
use std::path::Path;

/// Choices that are not part of config.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelOptions {
    /// dma (the model as trained), or the same weights run as sliding-window or dense attention.
    pub kind: AttentionKind,
    /// How the bias follows from `dt_proj(v)`; transformers' Doge uses the default.
    pub bias_fn: BiasFn,
    /// The dtype the attention op runs in (`None`: f32, or bf16 on CUDA; see
    /// `dma_candle::DmaAttentionConfig::attention_dtype`).
    pub attention_dtype: Option<DType>,
}

/// The file names of a model directory.
pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// A Doge causal language model in f32, its weights held as candle variables (so it trains).
pub struct DogeForCausalLM {
    config: DogeConfig,
    options: ModelOptions,
    vars: VarMap,
    pub(crate) embed_tokens: Embedding,
    pub(crate) layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    device: Device,
}

impl DogeForCausalLM {
    /// A model with fresh weights: linear and embedding weights ~ N(0, initializer_range), norm
    /// weights and residual scales 1, `A` and biases 0 (as transformers initialises Doge).
    pub fn new(config: DogeConfig, options: ModelOptions, device: &Device) -> Result<Self> {
        config.validate()?;
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, device);
        let c = &config;
        let std = c.initializer_range;
        let embed = vb.pp("model.embed_tokens").get_with_hints(
            (c.vocab_size, c.hidden_size),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: std,
            },
        )?;
        let layers = (0..c.num_hidden_layers)
            .map(|i| DecoderLayer::new(c, &options, i, vb.pp(format!("model.layers.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norm = RmsNorm::new(c.hidden_size, c.rms_norm_eps, vb.pp("model.norm"))?;
        let head = match c.tie_word_embeddings {
            true => embed.clone(),
            false => vb.pp("lm_head").get_with_hints(
                (c.vocab_size, c.hidden_size),
                "weight",
                Init::Randn {
                    mean: 0.0,
                    stdev: std,
                },
            )?,
        };
        let model = DogeForCausalLM {
            embed_tokens: Embedding::new(embed),
            layers,
            norm,
            lm_head: Linear::new(head, None),
            device: device.clone(),
            options,
            config,
            vars,
        };
        model.reinit_linears()?;
        Ok(model)
    }

    /// Loads `dir/config.json` and `dir/model.safetensors`.
    pub fn load(dir: &Path, options: ModelOptions, device: &Device) -> Result<Self> {
        let config = DogeConfig::from_file(&dir.join(CONFIG_FILE))?;
        let tensors = weights::read(&dir.join(WEIGHTS_FILE), device)?;
        let model = Self::new(config, options, device)?;
        weights::assign(&model.vars, &tensors)?;
        Ok(model)
    }

    /// Writes `dir/config.json` and `dir/model.safetensors` (f32), creating `dir` if needed.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            action: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        weights::write(&self.vars, &dir.join(WEIGHTS_FILE), DType::F32)?;
        self.config.save(&dir.join(CONFIG_FILE))
    }

    pub fn config(&self) -> &DogeConfig {
        &self.config
    }

    pub fn options(&self) -> ModelOptions {
        self.options
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The trainable variables, by transformers' names.
    pub fn vars(&self) -> &VarMap {
        &self.vars
    }

    /// The trainable variables as (name, variable) pairs, for an optimiser.
    pub fn named_vars(&self) -> Vec<(String, candle_core::Var)> {
        let data = self.vars.data().lock().unwrap_or_else(|p| p.into_inner());
        data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// An empty cache for incremental decoding.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Logits `[B, N, vocab]` (f32) of token ids `[B, N]` (u32 or i64), every query seeing the
    /// tokens before it in its own row.
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.run(input_ids, 0, None)
    }

    /// Logits `[B, N, vocab]` of `input_ids` `[B, N]` that follow the tokens in `cache`, which
    /// then holds them too. A prefill is the first call on an empty cache; decoding passes one
    /// token at a time.
    pub fn forward_cached(&self, input_ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let offset = cache.len();
        self.run(input_ids, offset, Some(cache))
    }

    /// Logits `[M, vocab]` at `positions` `[M]` (u32 flat indices b * N + n) of `input_ids`
    /// `[B, N]`, the other positions never reaching the head: training on a few labelled
    /// positions (MQAR's answers) then skips the `[B, N, vocab]` logits.
    pub fn forward_at(&self, input_ids: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let x = self.hidden(input_ids, 0, None)?;
        let width = x.dim(D::Minus1)?;
        let rows = x.elem_count() / width.max(1);
        let positions = self.check_positions(positions, rows)?;
        let picked = dma_candle::gather_rows(&x.reshape((rows, width))?, &positions)?;
        Ok(self.lm_head.forward(&self.norm.forward(&picked)?)?)
    }

    fn run(
        &self,
        input_ids: &Tensor,
        offset: usize,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let x = self.hidden(input_ids, offset, cache)?;
        Ok(self.lm_head.forward(&self.norm.forward(&x)?)?)
    }

    /// The last decoder layer's output `[B, N, hidden]`.
    fn hidden(
        &self,
        input_ids: &Tensor,
        offset: usize,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let ids = self.check_ids(input_ids, offset)?;
        let mut x = self.embed_tokens.forward(&ids)?;
        for layer in &self.layers {
            x = layer.forward(&x, offset, cache.as_deref_mut())?;
        }
        Ok(x)
    }

    /// The ids as u32 after checking rank, range and length.
    fn check_ids(&self, input_ids: &Tensor, offset: usize) -> Result<Tensor> {
        let input = |reason: String| Error::Input {
            name: "input_ids",
            reason,
        };
        let (_, n) = input_ids
            .dims2()
            .map_err(|_| input(format!("must be [B, N], got {:?}", input_ids.dims())))?;
        if n == 0 || input_ids.elem_count() == 0 {
            return Err(input("is empty".into()));
        }
        let max = self.config.max_position_embeddings;
        if offset + n > max {
            return Err(Error::TooLong {
                len: offset + n,
                max,
            });
        }
        let ids = match input_ids.dtype() {
            DType::U32 | DType::I64 | DType::U8 => input_ids.to_dtype(DType::I64)?,
            other => return Err(input(format!("must hold integers, got {other:?}"))),
        };
        let vocab = self.config.vocab_size;
        for &id in ids.flatten_all()?.to_vec1::<i64>()?.iter() {
            if id < 0 || id as usize >= vocab {
                return Err(Error::TokenId {
                    id,
                    vocab_size: vocab,
                });
            }
        }
        Ok(ids.to_dtype(DType::U32)?.to_device(&self.device)?)
    }

    /// `positions` as u32 on the model's device, after checking that they are a vector of
    /// integers below `rows` (B * N).
    fn check_positions(&self, positions: &Tensor, rows: usize) -> Result<Tensor> {
        let input = |reason: String| Error::Input {
            name: "positions",
            reason,
        };
        if positions.rank() != 1 {
            return Err(input(format!("must be [M], got {:?}", positions.dims())));
        }
        let positions = match positions.dtype() {
            DType::U32 | DType::I64 | DType::U8 => positions.to_dtype(DType::I64)?,
            other => return Err(input(format!("must hold integers, got {other:?}"))),
        };
        if let Some(&bad) = positions
            .to_vec1::<i64>()?
            .iter()
            .find(|&&p| p < 0 || p as usize >= rows)
        {
            return Err(input(format!(
                "holds {bad}, outside the {rows} positions of input_ids"
            )));
        }
        Ok(positions.to_dtype(DType::U32)?.to_device(&self.device)?)
    }

    /// Linear weights (not norms, residual scales, `A`, biases) ~ N(0, initializer_range).
    fn reinit_linears(&self) -> Result<()> {
        let data = self.vars.data().lock().unwrap_or_else(|p| p.into_inner());
        let std = self.config.initializer_range;
        for (name, var) in data.iter() {
            let linear = name.ends_with("proj.weight") && var.rank() == 2;
            if linear {
                var.set(&Tensor::randn(0f32, std as f32, var.shape(), &self.device)?)?;
            } else if name.ends_with("proj.bias") {
                var.set(&var.zeros_like()?)?;
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for DogeForCausalLM {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DogeForCausalLM")
            .field("config", &self.config)
            .field("options", &self.options)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}
