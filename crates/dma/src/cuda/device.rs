//! The GPU a call runs on: its context and stream, its architecture, and the kernels loaded
//! into it.

use super::compile::{self, KernelSpec};
use super::launch::Ready;
use super::mapped::{LentWord, MappedWords, WordPool};
use super::plan_cache::{PlanCache, Planned};
use super::select::Selection;
use super::{error, libs};
use crate::{DmaError, Params, Problem, Result};
use cudarc::driver::result::{device, mem_pool};
use cudarc::driver::sys::CUfunction_attribute as FuncAttr;
use cudarc::driver::{sys, CudaContext, CudaFunction, CudaStream};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A compute capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Arch {
    pub major: u32,
    pub minor: u32,
}

impl Arch {
    /// The H100 / H200.
    pub const SM90: Arch = Arch { major: 9, minor: 0 };

    /// The NVRTC target: `sm_90a` on Hopper (its arch-specific instructions), `sm_XY` elsewhere.
    pub fn target(&self) -> String {
        let suffix = if self.major == 9 && self.minor == 0 {
            "a"
        } else {
            ""
        };
        format!("sm_{}{}{suffix}", self.major, self.minor)
    }

    /// Whether the kernels run on it (mma.sync with bf16 and cp.async need sm_80).
    pub fn supported(&self) -> bool {
        self.major >= 8
    }
}

/// A CUDA device and the stream the operator's kernels are launched on.
#[derive(Debug)]
pub struct Device {
    stream: Arc<CudaStream>,
    arch: Arch,
    /// The most shared memory a CTA may opt in to, in bytes (queried once: decode calls check
    /// their layouts against it).
    max_shared_memory: usize,
    /// Kernels loaded into this context, by kernel name, with the attributes set on them.
    functions: Mutex<HashMap<String, Loaded>>,
    /// Mapped host words the fused decode's kernels report to (grown on demand).
    mapped: Mutex<Option<MappedWords>>,
    /// Mapped words lent to selections for their non-finite-bias reports.
    words: WordPool,
    /// The ready flags of overlapped forwards (grown on demand) and the last epoch given out.
    ready: Mutex<Option<Ready>>,
    /// The plans of recent calls, their tables on the device.
    plans: PlanCache,
    /// Selection buffers a call no longer needs, for the next call of the same geometry.
    spare_selection: Mutex<Option<Selection>>,
}

impl Device {
    /// Opens device `ordinal` and uses its default stream.
    ///
    /// The device's default memory pool, where the operator's buffers come from, then keeps the
    /// memory freed in it for later allocations instead of giving it back to the driver at each
    /// synchronisation ([`Device::keep_freed_memory`]; PyTorch's caching allocator does the
    /// same). A backward at 32K allocates 0.5 GB of scratch per call, and mapping it again each
    /// call cost ~0.5 ms of its ~6 ms on an H100. [`Device::trim_pool`] gives the memory back.
    pub fn new(ordinal: usize) -> Result<Device> {
        libs::driver()?;
        let ctx = libs::guarded(
            || {
                let count = CudaContext::device_count().map_err(error::driver)?;
                if ordinal >= count.max(0) as usize {
                    return Err(DmaError::NoCudaDevice(format!(
                        "device {ordinal} requested, {count} present"
                    )));
                }
                CudaContext::new(ordinal).map_err(error::driver)
            },
            DmaError::CudaDriverNotFound,
        )?;
        let dev = Device::from_stream(ctx.default_stream())?;
        dev.keep_freed_memory()?;
        Ok(dev)
    }

    /// Uses an existing stream (for example a framework's). The device's memory pool is left as
    /// the framework set it; [`Device::keep_freed_memory`] changes it.
    pub fn from_stream(stream: Arc<CudaStream>) -> Result<Device> {
        let (major, minor) = stream
            .context()
            .compute_capability()
            .map_err(error::driver)?;
        let arch = Arch {
            major: major as u32,
            minor: minor as u32,
        };
        if !arch.supported() {
            return Err(DmaError::UnsupportedArch {
                major: arch.major,
                minor: arch.minor,
            });
        }
        let max_shared_memory = stream
            .context()
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(error::driver)? as usize;
        Ok(Device {
            stream,
            arch,
            max_shared_memory,
            functions: Mutex::new(HashMap::new()),
            mapped: Mutex::new(None),
            words: WordPool::default(),
            ready: Mutex::new(None),
            plans: PlanCache::default(),
            spare_selection: Mutex::new(None),
        })
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        self.stream.context()
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The most shared memory (static and dynamic) one CTA may opt in to, in bytes.
    pub(crate) fn max_shared_memory(&self) -> usize {
        self.max_shared_memory
    }

    /// Makes the device's default memory pool keep the memory freed in it for later
    /// allocations (its release threshold set to the maximum) instead of giving it back to the
    /// driver at each synchronisation. The pool is the device's, shared by every user of it on
    /// this process. Nothing to do where the device has no memory pools.
    pub fn keep_freed_memory(&self) -> Result<()> {
        let Some(pool) = self.default_pool()? else {
            return Ok(());
        };
        let mut keep = u64::MAX;
        let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
        // SAFETY: the pool is the device's default pool; the attribute is a u64.
        unsafe { mem_pool::set_attribute(pool, attr, (&mut keep as *mut u64).cast()) }
            .map_err(error::driver)
    }

    /// Gives the memory that the device's default memory pool holds unused back to the driver,
    /// down to `keep_bytes` (memory in use is never released). Nothing to do where the device
    /// has no memory pools.
    pub fn trim_pool(&self, keep_bytes: usize) -> Result<()> {
        let Some(pool) = self.default_pool()? else {
            return Ok(());
        };
        self.stream.synchronize().map_err(error::driver)?;
        // SAFETY: the pool is the device's default pool.
        unsafe { mem_pool::trim_to(pool, keep_bytes) }.map_err(error::driver)
    }

    /// The device's default memory pool, where it has memory pools.
    fn default_pool(&self) -> Result<Option<sys::CUmemoryPool>> {
        let ctx = self.context();
        if !ctx.has_async_alloc() {
            return Ok(None);
        }
        ctx.bind_to_thread().map_err(error::driver)?;
        // SAFETY: the device is the context's.
        unsafe { device::get_default_mem_pool(ctx.cu_device()) }
            .map(Some)
            .map_err(error::driver)
    }

    /// Runs `f` with at least `len` mapped host words (one set per device, reused across calls:
    /// `f` must synchronise the stream before it returns, so the next call finds them free).
    pub(crate) fn with_mapped_words<R>(
        &self,
        len: usize,
        f: impl FnOnce(&MappedWords) -> Result<R>,
    ) -> Result<R> {
        let mut mapped = error::lock(&self.mapped, "mapped words")?;
        let words = match mapped.take() {
            Some(words) if words.len() >= len => words,
            // Too small (or none yet): the old set is freed before the new one is taken.
            old => {
                drop(old);
                MappedWords::new(self.context(), len.next_power_of_two())?
            }
        };
        f(mapped.insert(words))
    }

    /// A zeroed mapped word the kernels enqueued from now on may write, read back without a copy.
    pub(crate) fn lend_word(&self) -> Result<LentWord> {
        LentWord::lend(&self.words, &self.stream)
    }

    /// Ready flags for `lists` lists and a new epoch, for one overlapped forward (launch.rs). The
    /// flags outlive the calls: a flag holds the epoch of the call that last published its list,
    /// so no call clears them. A new buffer (grown, or after 2^30 calls, before the kernels'
    /// comparison of epochs could wrap) starts at zero and its epochs at 1.
    pub(crate) fn ready_flags(&self, lists: usize) -> Result<Ready> {
        let mut ready = error::lock(&self.ready, "ready flags")?;
        let (flags, last) = match ready.take() {
            Some(r) if r.flags.len() >= lists && r.epoch < 1 << 30 => (r.flags, r.epoch),
            old => {
                let n = lists.max(old.map_or(0, |r| r.flags.len())).max(1);
                let flags = self
                    .stream
                    .alloc_zeros::<u32>(n)
                    .map_err(error::alloc("list ready flags", n * 4))?;
                (Arc::new(flags), 0)
            }
        };
        let next = Ready {
            flags,
            epoch: last + 1,
        };
        *ready = Some(next.clone());
        Ok(next)
    }

    /// The plan of a call on this device with its tables uploaded, shared with recent calls of
    /// the same geometry (plan_cache.rs).
    pub(crate) fn planned(&self, params: &Params, problem: &Problem) -> Result<Arc<Planned>> {
        self.plans.planned(self, params, problem)
    }

    /// Keeps the buffers of a selection its call no longer needs, so that the next selection of
    /// the same geometry is made in them (select::run) instead of allocating and freeing five
    /// buffers each call (~11 us before a forward's first kernel and ~5 us after its last at 32K,
    /// docs/benchmarks.md "Stop 25"). One selection is kept, the last.
    pub(crate) fn keep_spare_selection(&self, sel: Selection) -> Result<()> {
        *error::lock(&self.spare_selection, "spare selection")? = Some(sel);
        Ok(())
    }

    /// The kept selection (keep_spare_selection), if any.
    pub(crate) fn take_spare_selection(&self) -> Result<Option<Selection>> {
        Ok(error::lock(&self.spare_selection, "spare selection")?.take())
    }

    /// The kernel `spec`, compiled (once per process) and loaded (once per device).
    pub fn function(&self, spec: &KernelSpec) -> Result<CudaFunction> {
        self.function_with(spec, 0, false)
    }

    /// [`function`](Self::function), allowed `smem` bytes of dynamic shared memory and, with
    /// `clusters`, clusters above the portable 8 CTAs. The attributes are set only when they
    /// grow, not at every call.
    pub(crate) fn function_with(
        &self,
        spec: &KernelSpec,
        smem: usize,
        clusters: bool,
    ) -> Result<CudaFunction> {
        let mut loaded = error::lock(&self.functions, "kernel cache")?;
        if !loaded.contains_key(spec.name()) {
            let ptx = compile::ptx(spec, self.arch)?;
            let module = self
                .context()
                .load_module(cudarc::nvrtc::Ptx::from_src(ptx.as_str()))
                .map_err(error::driver)?;
            let f = module.load_function(spec.name()).map_err(error::driver)?;
            let unset = Loaded {
                f,
                smem: 0,
                clusters: false,
            };
            loaded.insert(spec.name().to_string(), unset);
        }
        let entry = loaded
            .get_mut(spec.name())
            .expect("inserted just above when missing");
        if smem > entry.smem {
            let bytes = i32::try_from(smem).map_err(|_| DmaError::TooLong(smem))?;
            entry
                .f
                .set_attribute(
                    FuncAttr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes,
                )
                .map_err(error::driver)?;
            entry.smem = smem;
        }
        if clusters && !entry.clusters {
            entry
                .f
                .set_attribute(
                    FuncAttr::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED,
                    1,
                )
                .map_err(error::driver)?;
            entry.clusters = true;
        }
        Ok(entry.f.clone())
    }
}

/// A kernel loaded into a device's context and the attributes set on it.
#[derive(Debug)]
struct Loaded {
    f: CudaFunction,
    /// The dynamic shared memory it is allowed, in bytes.
    smem: usize,
    /// Whether clusters above the portable size are allowed.
    clusters: bool,
}
