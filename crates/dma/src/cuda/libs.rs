//! Whether libcuda and libnvrtc can be loaded, checked before cudarc loads them (cudarc's dynamic
//! loading panics when a library is missing; the operator returns a typed error instead).

use crate::{DmaError, Result};
use std::sync::OnceLock;

const DRIVER: &[&str] = &["libcuda.so.1", "libcuda.so"];
const NVRTC: &[&str] = &[
    "libnvrtc.so",
    "libnvrtc.so.13",
    "libnvrtc.so.12",
    "libnvrtc.so.11.2",
];

/// Opens the first of `names` that loads and keeps it open for the life of the process (cudarc
/// opens it again anyway; closing it between the two is one suspect of a crash seen under
/// compute-sanitizer's racecheck, docs/cuda-notes.md).
fn loadable(names: &[&str]) -> bool {
    names.iter().any(|name| {
        // SAFETY: loading a CUDA library runs its initialisers, which have no preconditions.
        match unsafe { libloading::Library::new(*name) } {
            Ok(lib) => {
                std::mem::forget(lib);
                true
            }
            Err(_) => false,
        }
    })
}

/// `Ok` when the CUDA driver library can be loaded.
pub(crate) fn driver() -> Result<()> {
    static FOUND: OnceLock<bool> = OnceLock::new();
    if *FOUND.get_or_init(|| loadable(DRIVER)) {
        Ok(())
    } else {
        Err(DmaError::CudaDriverNotFound(DRIVER.join(" or ")))
    }
}

/// `Ok` when NVRTC can be loaded.
pub(crate) fn nvrtc() -> Result<()> {
    static FOUND: OnceLock<bool> = OnceLock::new();
    if *FOUND.get_or_init(|| loadable(NVRTC)) {
        Ok(())
    } else {
        Err(DmaError::NvrtcNotFound(NVRTC.join(", ")))
    }
}

/// Runs a first call into a cudarc library, turning a panic (a library that our check found but
/// cudarc could not load) into `err`.
pub(crate) fn guarded<R>(
    f: impl FnOnce() -> Result<R>,
    err: impl FnOnce(String) -> DmaError,
) -> Result<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "cudarc panicked".into());
        Err(err(msg))
    })
}
