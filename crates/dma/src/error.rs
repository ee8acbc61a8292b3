//! The one error type of the operator: every bad input maps to a variant that names it.

use crate::DType;

/// What went wrong with a call into the operator. Library code never panics on user input;
/// it returns one of these.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DmaError {
    #[error("window must be at least 1 (got 0)")]
    ZeroWindow,
    #[error("scale must be a finite number (got {0})")]
    InvalidScale(f32),
    #[error("empty batch: at least one sequence is required")]
    EmptyBatch,
    #[error("head dim {0} is not supported: it must be between 1 and 256")]
    UnsupportedHeadDim(usize),
    #[error("{which} heads must be at least 1")]
    ZeroHeads { which: &'static str },
    #[error("query heads ({q}) must be a multiple of kv heads ({kv})")]
    HeadsNotGrouped { q: usize, kv: usize },
    #[error("bias heads ({bias}) must equal the query heads ({q}) or the kv heads ({kv})")]
    BiasHeads { bias: usize, q: usize, kv: usize },
    #[error("tensor `{name}` has {actual} elements, expected {expected} for shape {shape}")]
    ShapeMismatch {
        name: &'static str,
        expected: usize,
        actual: usize,
        shape: String,
    },
    #[error("tensor `{name}` has dtype {actual}, expected {expected}")]
    DTypeMismatch {
        name: String,
        expected: DType,
        actual: DType,
    },
    #[error("bias is not finite ({value}) at sequence {sequence}, bias head {head}, key {key}")]
    NonFiniteBias {
        sequence: usize,
        head: usize,
        key: usize,
        value: f32,
    },
    #[error("cu_seqlens_{which}: {reason}")]
    BadCuSeqlens { which: &'static str, reason: String },
    #[error("sequence too long: {0} keys or queries exceed the supported 2^31 - 1")]
    TooLong(usize),
    #[error("{seqlen_k} keys do not fit a key capacity of {capacity_k} (padded layout)")]
    KeysPastCapacity { seqlen_k: usize, capacity_k: usize },
    #[error("backend unavailable: {0}")]
    Backend(String),
    // The CUDA backend (feature `cuda`). Plain data, so the enum is the same in every build.
    #[error("CUDA driver not found: could not load {0} (is an NVIDIA driver installed?)")]
    CudaDriverNotFound(String),
    #[error("no CUDA device: {0}")]
    NoCudaDevice(String),
    #[error(
        "GPU architecture sm_{major}{minor} is not supported: the CUDA kernels need sm_80 or newer"
    )]
    UnsupportedArch { major: u32, minor: u32 },
    #[error("NVRTC not found: could not load {0} (install CUDA or the nvidia-cuda-nvrtc wheel and put it on LD_LIBRARY_PATH)")]
    NvrtcNotFound(String),
    #[error("CUDA headers (cuda_bf16.h) not found; searched: {}", searched.join(", "))]
    CudaHeadersNotFound { searched: Vec<String> },
    #[error("NVRTC failed to compile kernel `{kernel}`:\n{log}")]
    KernelCompile { kernel: String, log: String },
    #[error("out of GPU memory allocating {bytes} bytes for {what}")]
    OutOfMemory { what: &'static str, bytes: usize },
    #[error("head dim {head_dim} has no CUDA kernel (supported: {supported})")]
    NoKernelForHeadDim {
        head_dim: usize,
        supported: &'static str,
    },
    #[error("the selection passed in was made for another call: {0}")]
    SelectionMismatch(String),
    #[error("CUDA error: {0}")]
    Cuda(String),
}

impl DmaError {
    /// Whether this error only says that no usable GPU is present (no driver, no device), as
    /// opposed to a failure of the backend itself.
    pub fn is_no_gpu(&self) -> bool {
        matches!(
            self,
            DmaError::CudaDriverNotFound(_) | DmaError::NoCudaDevice(_)
        )
    }
}

/// Result of every fallible operator call.
pub type Result<T> = std::result::Result<T, DmaError>;
