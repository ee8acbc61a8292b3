//! Page-locked host memory that kernels write directly (mapped into the device's address space):
//! a call reads what its kernels reported once the stream has synchronised, without a
//! device-to-host copy (an 8-byte copy costs ~8 us on an H100, a synchronisation ~1 us).

use super::error;
use crate::Result;
use cudarc::driver::{result, sys, CudaContext};
use std::sync::Arc;

/// `len` u64 words of mapped host memory.
#[derive(Debug)]
pub(crate) struct MappedWords {
    ctx: Arc<CudaContext>,
    host: *mut u64,
    device: sys::CUdeviceptr,
    len: usize,
}

// SAFETY: the pointers are to memory owned by this value; the device owning it serialises its
// use (a Mutex in `Device`).
unsafe impl Send for MappedWords {}

impl MappedWords {
    pub fn new(ctx: &Arc<CudaContext>, len: usize) -> Result<MappedWords> {
        let bytes = len.max(1) * 8;
        ctx.bind_to_thread().map_err(error::driver)?;
        // SAFETY: a plain allocation of `bytes`, freed in Drop; zeroed below before any read.
        let host = unsafe { result::malloc_host(bytes, sys::CU_MEMHOSTALLOC_DEVICEMAP) }
            .map_err(error::alloc("mapped host words", bytes))?
            .cast::<u64>();
        let mut device: sys::CUdeviceptr = 0;
        // SAFETY: `host` was allocated with DEVICEMAP just above.
        let got = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut device, host.cast(), 0) };
        let words = MappedWords {
            ctx: ctx.clone(),
            host,
            device,
            len: len.max(1),
        };
        got.result().map_err(error::driver)?;
        // SAFETY: `len` words were just allocated.
        unsafe { std::ptr::write_bytes(words.host, 0, words.len) };
        Ok(words)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The address kernels write to.
    pub fn device_ptr(&self) -> u64 {
        self.device
    }

    /// Word `i`, as the last finished kernel left it (the caller has synchronised the stream).
    pub fn read(&self, i: usize) -> u64 {
        assert!(i < self.len, "mapped word {i} of {}", self.len);
        // SAFETY: in bounds; volatile because the GPU wrote it.
        unsafe { std::ptr::read_volatile(self.host.add(i)) }
    }
}

impl Drop for MappedWords {
    fn drop(&mut self) {
        // Nothing to report to from a destructor; a failure leaks the page-locked memory.
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: allocated by malloc_host in `new`, freed once.
            let _ = unsafe { result::free_host(self.host.cast()) };
        }
    }
}
