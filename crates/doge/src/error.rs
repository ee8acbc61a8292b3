//! The errors of this crate: every failure that user input can cause has its own variant, and
//! each names what is at fault (the config field, the tensor, the file).

use std::path::PathBuf;

/// What went wrong loading, running or saving a Doge model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config field `{field}` is missing")]
    MissingField { field: &'static str },
    #[error("config field `{field}` is invalid: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("config.json is not valid JSON: {0}")]
    ConfigJson(String),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("tensor `{name}` is missing from the weights")]
    MissingTensor { name: String },
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        actual: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("input `{name}`: {reason}")]
    Input { name: &'static str, reason: String },
    #[error("the sequence would be {len} tokens long, more than max_position_embeddings ({max})")]
    TooLong { len: usize, max: usize },
    #[error("token id {id} is outside the vocabulary (vocab_size {vocab_size})")]
    TokenId { id: i64, vocab_size: usize },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("sampling: {0}")]
    Sampling(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// This crate's results.
pub type Result<T> = std::result::Result<T, Error>;
