//! Turning cudarc's errors into [`DmaError`]s.

use crate::DmaError;
use cudarc::driver::{sys::cudaError_enum as E, DriverError};

/// A driver error from any call.
pub(crate) fn driver(e: DriverError) -> DmaError {
    match e.0 {
        E::CUDA_ERROR_NO_DEVICE | E::CUDA_ERROR_INVALID_DEVICE => {
            DmaError::NoCudaDevice(format!("{e:?}"))
        }
        E::CUDA_ERROR_OUT_OF_MEMORY => DmaError::OutOfMemory {
            what: "a CUDA call",
            bytes: 0,
        },
        _ => DmaError::Cuda(format!("{e:?}")),
    }
}

/// A driver error from allocating `bytes` bytes for `what`.
pub(crate) fn alloc(what: &'static str, bytes: usize) -> impl Fn(DriverError) -> DmaError {
    move |e| match e.0 {
        E::CUDA_ERROR_OUT_OF_MEMORY => DmaError::OutOfMemory { what, bytes },
        _ => driver(e),
    }
}
