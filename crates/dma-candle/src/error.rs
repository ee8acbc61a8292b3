//! The errors of this crate. They reach callers as `candle_core::Error` (candle's functions and
//! traits return it), with these messages.

use candle_core::DType;

/// What went wrong in the op or the layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("`{name}` must have shape {expected}, got {actual:?}")]
    Rank {
        name: &'static str,
        expected: &'static str,
        actual: Vec<usize>,
    },
    #[error("`{name}` has shape {actual:?} but must have the shape of `{like}`, {expected:?}")]
    NotLike {
        name: &'static str,
        actual: Vec<usize>,
        like: &'static str,
        expected: Vec<usize>,
    },
    #[error("`{name}` has {what} {actual} but {expected} is needed ({reason})")]
    Mismatch {
        name: &'static str,
        what: &'static str,
        actual: usize,
        expected: usize,
        reason: &'static str,
    },
    #[error("`{name}` has dtype {actual:?}, expected {expected}")]
    DType {
        name: &'static str,
        actual: DType,
        expected: String,
    },
    #[error("`targets` holds class {class} in row {row}, but the logits have {classes} classes")]
    TargetClass {
        row: usize,
        class: u32,
        classes: usize,
    },
    #[error("dma-candle was built without its `cuda` feature: build with `--features cuda` to run the op on CUDA tensors")]
    CudaNotEnabled,
    #[error("dma-candle supports cpu and cuda storage, not {0}")]
    UnsupportedDevice(&'static str),
    #[error("the op's tensors must all be on one device")]
    MixedDevices,
    #[error("`{0}` must be contiguous on CUDA")]
    NotContiguous(&'static str),
    #[error("CUDA: {0}")]
    Cuda(String),
    #[error("invalid DmaAttention config: {0}")]
    Config(String),
    #[error("internal error: backward ran before its forward saved the log-sum-exp")]
    NoSavedForward,
    #[error(transparent)]
    Op(#[from] dma::DmaError),
}

impl Error {
    /// Why q and kv are not one dtype of `supported` (`expected` lists them for the message):
    /// a q of a supported dtype names k as the odd one out.
    pub(crate) fn dtypes(q: DType, kv: DType, supported: &[DType], expected: &str) -> Error {
        if supported.contains(&q) {
            Error::DType {
                name: "k",
                actual: kv,
                expected: format!("{q:?} like q"),
            }
        } else {
            Error::DType {
                name: "q",
                actual: q,
                expected: expected.into(),
            }
        }
    }
}

impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        candle_core::Error::wrap(e)
    }
}
