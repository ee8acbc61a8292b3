//! Page-locked host memory that kernels write directly (mapped into the device's address space):
//! a call reads what its kernels reported once the stream has synchronised, without a
//! device-to-host copy (an 8-byte copy costs ~8 us on an H100, a synchronisation ~1 us).

use super::error;
use crate::Result;
use cudarc::driver::{result, sys, CudaContext, CudaStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// `len` u64 words of mapped host memory.
#[derive(Debug)]
pub(crate) struct MappedWords {
    ctx: Arc<CudaContext>,
    host: *mut u64,
    device: sys::CUdeviceptr,
    len: usize,
}

// SAFETY: the pointers are to memory owned by this value; the device owning it serialises its
// use (a Mutex in `Device`, or one `LentWord` owner at a time).
unsafe impl Send for MappedWords {}
// SAFETY: `&self` only reads the words (volatile reads); writes take `&mut self`.
unsafe impl Sync for MappedWords {}

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

    /// Sets every word to zero (no kernel may be writing them).
    pub fn clear(&mut self) {
        // SAFETY: `len` words, owned by this value.
        unsafe { std::ptr::write_bytes(self.host, 0, self.len) };
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

/// Mapped words a device lends out one at a time ([`LentWord`]), kept for reuse.
pub(crate) type WordPool = Arc<Mutex<Vec<MappedWords>>>;

/// One mapped word, zero when lent, that the kernels enqueued after it was lent may write (a
/// selection's non-finite-bias report); given back to its device's pool when dropped. Reading it
/// waits for the stream; no copy to the host is enqueued.
#[derive(Debug)]
pub(crate) struct LentWord {
    word: Option<MappedWords>,
    pool: WordPool,
    stream: Arc<CudaStream>,
    /// Whether the stream was synchronised since the word was lent (then no kernel that may
    /// write it is still running: only kernels enqueued by the word's owner write it).
    synced: AtomicBool,
}

impl LentWord {
    /// A zeroed word from `pool` (or a new one) that kernels on `stream` may write.
    pub fn lend(pool: &WordPool, stream: &Arc<CudaStream>) -> Result<LentWord> {
        let spare = error::lock(pool, "mapped word pool")?.pop();
        let mut word = match spare {
            Some(word) => word,
            None => MappedWords::new(stream.context(), 1)?,
        };
        word.clear();
        Ok(LentWord {
            word: Some(word),
            pool: pool.clone(),
            stream: stream.clone(),
            synced: AtomicBool::new(false),
        })
    }

    /// The address kernels write to.
    pub fn device_ptr(&self) -> u64 {
        self.word.as_ref().map_or(0, MappedWords::device_ptr)
    }

    /// Zero again, for kernels enqueued from now on (waits for the stream first unless it was
    /// synchronised since the word was lent: a kernel still running could write it).
    pub fn clear(&mut self) -> Result<()> {
        if !self.synced.load(Ordering::Acquire) {
            self.stream.synchronize().map_err(error::driver)?;
        }
        self.synced.store(false, Ordering::Release);
        if let Some(word) = self.word.as_mut() {
            word.clear();
        }
        Ok(())
    }

    /// The word, once the stream has finished what was enqueued so far.
    pub fn read_synced(&self) -> Result<u64> {
        self.stream.synchronize().map_err(error::driver)?;
        self.synced.store(true, Ordering::Release);
        Ok(self.word.as_ref().map_or(0, |w| w.read(0)))
    }
}

impl Drop for LentWord {
    fn drop(&mut self) {
        let Some(word) = self.word.take() else { return };
        // A kernel still running could write the word after the next lend zeroed it: wait for
        // the stream first (a word whose wait fails is freed instead of reused).
        let idle = self.synced.load(Ordering::Acquire) || self.stream.synchronize().is_ok();
        if idle {
            if let Ok(mut pool) = self.pool.lock() {
                pool.push(word);
            }
        }
    }
}
