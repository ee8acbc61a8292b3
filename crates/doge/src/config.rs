//! `DogeConfig`: transformers' config.json of a Doge model, read with its field names and
//! defaults, validated, and written back in the current transformers form.

use crate::fields::Fields;
use crate::{Activation, Error, Result};
use dma_candle::{AttentionKind, BiasFn, DmaAttentionConfig};
use serde_json::{json, Map, Value};
use std::path::Path;

/// The fields this crate reads; every other field of a config.json is kept as it was and
/// written back unchanged (token ids, dtype, transformers' version, ...).
const KNOWN: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_parameters",
    "rope_scaling",
    "keep_window_size",
    "attention_bias",
    "mlp_bias",
    "tie_word_embeddings",
    "is_moe",
    "sliding_window",
    "initializer_range",
    "model_type",
    "architectures",
];

/// A Doge model's configuration.
///
/// Required: `vocab_size`, `hidden_size`, `intermediate_size`, `num_hidden_layers`,
/// `num_attention_heads` (they fix the weights' shapes, so no default could be right). Every other
/// field has transformers' default. Only the dense MLP (`is_moe: false`), the default RoPE and no
/// `sliding_window` are supported; anything else is an error naming the field.
#[derive(Debug, Clone, PartialEq)]
pub struct DogeConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Defaults to `num_attention_heads`.
    pub num_key_value_heads: usize,
    /// `head_dim` when the config sets it; otherwise `hidden_size / num_attention_heads`.
    pub head_dim: Option<usize>,
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// w: keys kept per query.
    pub keep_window_size: usize,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub tie_word_embeddings: bool,
    pub initializer_range: f64,
    /// Every other field of the config.json, kept for writing it back.
    pub extra: Map<String, Value>,
}

impl DogeConfig {
    /// A config with transformers' defaults for everything but the given sizes.
    pub fn new(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
    ) -> Self {
        DogeConfig {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim: None,
            hidden_act: Activation::Silu,
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            keep_window_size: 2048,
            attention_bias: false,
            mlp_bias: false,
            tie_word_embeddings: false,
            initializer_range: 0.02,
            extra: Map::new(),
        }
    }

    /// Reads and validates `path` (a config.json).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Parses and validates the text of a config.json.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| Error::ConfigJson(e.to_string()))?;
        let map = value
            .as_object()
            .ok_or_else(|| Error::ConfigJson("the top level must be an object".into()))?;
        Self::from_map(map)
    }

    fn from_map(map: &Map<String, Value>) -> Result<Self> {
        let f = Fields(map);
        if f.bool_or("is_moe", false)? {
            return Err(Error::InvalidField {
                field: "is_moe",
                reason: "the mixture of experts (DogeCDMoE) is not supported, only the dense MLP"
                    .into(),
            });
        }
        if f.is_set("sliding_window") {
            return Err(Error::InvalidField {
                field: "sliding_window",
                reason: "a sliding window on top of the dynamic mask is not supported; use null"
                    .into(),
            });
        }
        let num_attention_heads = f.positive("num_attention_heads")?;
        let extra = map
            .iter()
            .filter(|(k, _)| !KNOWN.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let config = DogeConfig {
            vocab_size: f.positive("vocab_size")?,
            hidden_size: f.positive("hidden_size")?,
            intermediate_size: f.positive("intermediate_size")?,
            num_hidden_layers: f.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: f.positive_or("num_key_value_heads", num_attention_heads)?,
            head_dim: f.opt_usize("head_dim")?,
            hidden_act: Activation::parse(f.str_or("hidden_act", "silu")?)?,
            max_position_embeddings: f.positive_or("max_position_embeddings", 2048)?,
            rms_norm_eps: f.f64_or("rms_norm_eps", 1e-6)?,
            rope_theta: rope_theta(&f)?,
            keep_window_size: f.positive_or("keep_window_size", 2048)?,
            attention_bias: f.bool_or("attention_bias", false)?,
            mlp_bias: f.bool_or("mlp_bias", false)?,
            tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
            initializer_range: f.f64_or("initializer_range", 0.02)?,
            extra,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the relations between fields.
    pub fn validate(&self) -> Result<()> {
        let invalid = |field, reason: String| Err(Error::InvalidField { field, reason });
        let (hq, hkv) = (self.num_attention_heads, self.num_key_value_heads);
        for (field, x) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", hq),
            ("num_key_value_heads", hkv),
            ("max_position_embeddings", self.max_position_embeddings),
            ("keep_window_size", self.keep_window_size),
        ] {
            if x == 0 {
                return invalid(field, "must be at least 1".into());
            }
        }
        if hq % hkv != 0 {
            return invalid(
                "num_key_value_heads",
                format!("{hkv} does not divide num_attention_heads ({hq})"),
            );
        }
        if self.head_dim.is_none() && self.hidden_size % hq != 0 {
            return invalid(
                "num_attention_heads",
                format!(
                    "{hq} does not divide hidden_size ({}) and head_dim is not set",
                    self.hidden_size
                ),
            );
        }
        let d = self.head_dim();
        if d == 0 || d % 2 != 0 || d > dma::MAX_HEAD_DIM {
            return invalid(
                "head_dim",
                format!("{d} must be even and between 2 and {}", dma::MAX_HEAD_DIM),
            );
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps < 0.0 {
            return invalid("rms_norm_eps", "must not be negative".into());
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return invalid("rope_theta", "must be positive".into());
        }
        Ok(())
    }

    /// D: `head_dim`, or `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The attention layer's config, for the given attention kind and bias function.
    pub fn attention(&self, kind: AttentionKind, bias_fn: BiasFn) -> DmaAttentionConfig {
        let mut c = DmaAttentionConfig::new(
            self.hidden_size,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.keep_window_size,
        );
        c.head_dim = self.head_dim();
        c.attention_bias = self.attention_bias;
        c.rms_norm_eps = self.rms_norm_eps;
        c.rope_theta = self.rope_theta;
        c.kind = kind;
        c.bias_fn = bias_fn;
        c
    }

    /// The end-of-sequence ids (`eos_token_id`, one id or a list), if the config has them.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        let id = |v: &Value| v.as_u64().and_then(|x| u32::try_from(x).ok());
        match self.extra.get("eos_token_id") {
            Some(Value::Array(ids)) => ids.iter().filter_map(id).collect(),
            Some(v) => id(v).into_iter().collect(),
            None => Vec::new(),
        }
    }

    /// The config.json object, in transformers' current form (`rope_parameters`).
    pub fn to_json(&self) -> Value {
        let mut map = self.extra.clone();
        let known = json!({
            "model_type": "doge",
            "architectures": ["DogeForCausalLM"],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "hidden_act": self.hidden_act.name(),
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "keep_window_size": self.keep_window_size,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "is_moe": false,
            "sliding_window": null,
        });
        if let Value::Object(known) = known {
            map.extend(known);
        }
        if let Some(d) = self.head_dim {
            map.insert("head_dim".into(), d.into());
        }
        Value::Object(map)
    }

    /// Writes config.json to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.to_json())
            .map_err(|e| Error::ConfigJson(e.to_string()))?;
        crate::weights::write_atomically(path, text.as_bytes())
    }
}

/// RoPE's theta from `rope_parameters: {rope_type, rope_theta}` (transformers 5) or the older
/// `rope_theta` (with `rope_scaling`); only the default RoPE is supported.
fn rope_theta(f: &Fields) -> Result<f64> {
    let unsupported = |field, kind: &str| Error::InvalidField {
        field,
        reason: format!("rope type `{kind}` is not supported, only `default`"),
    };
    if let Some(params) = f.object("rope_parameters")? {
        let kind = params.str_or("rope_type", "default")?;
        if kind != "default" {
            return Err(unsupported("rope_parameters", kind));
        }
        if params.is_set("rope_theta") {
            return params.f64_or("rope_theta", 10_000.0);
        }
    }
    if let Some(scaling) = f.object("rope_scaling")? {
        let kind = match scaling.str_or("rope_type", "")? {
            "" => scaling.str_or("type", "default")?,
            kind => kind,
        };
        if kind != "default" {
            return Err(unsupported("rope_scaling", kind));
        }
    }
    f.f64_or("rope_theta", 10_000.0)
}
