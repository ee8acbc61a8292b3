//! Turning cudarc's errors into [`DmaError`]s.

use crate::{DmaError, Result};
use cudarc::driver::{sys::cudaError_enum as E, DriverError};
use std::sync::{Mutex, MutexGuard};

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

/// Locks one of the backend's shared states; a lock poisoned by a panic is an error naming `what`.
pub(crate) fn lock<'a, T>(state: &'a Mutex<T>, what: &str) -> Result<MutexGuard<'a, T>> {
    state
        .lock()
        .map_err(|_| DmaError::Cuda(format!("{what} lock poisoned")))
}
