//! Kernel launches through `cuLaunchKernelEx`, which can let a kernel start before the one ahead
//! of it in the stream has ended (programmatic dependent launch, sm_90): a forward's dependent
//! selection lists start as anchor CTAs leave their SMs, and its attention as selection CTAs
//! leave theirs, each waiting only for the lists it reads (kernels/common.cu says how they are
//! handed over). cudarc's launch builder takes no launch attributes.

use super::device::Device;
use super::error;
use crate::Result;
use cudarc::driver::{
    sys, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, SyncOnDrop,
};
use std::ffi::c_void;
use std::sync::Arc;

/// A kernel's arguments in order, each in an 8-byte slot: the driver copies each parameter's
/// size from the start of its slot, which holds the value's low bytes (CUDA hosts are
/// little-endian).
pub(crate) struct Args<'a> {
    stream: &'a CudaStream,
    slots: Vec<u64>,
    /// cudarc's bookkeeping of the buffers' use (events, when it tracks them), recorded when
    /// these drop: after the launch is enqueued.
    guards: Vec<SyncOnDrop<'a>>,
}

impl<'a> Args<'a> {
    pub fn new(dev: &'a Device) -> Self {
        Args {
            stream: dev.stream(),
            slots: Vec::with_capacity(24),
            guards: Vec::with_capacity(16),
        }
    }

    /// A buffer the kernel reads.
    pub fn input<T>(&mut self, buf: &'a impl DevicePtr<T>) -> &mut Self {
        let (ptr, guard) = buf.device_ptr(self.stream);
        self.guards.push(guard);
        self.ptr(ptr)
    }

    /// A buffer the kernel writes.
    pub fn output<T>(&mut self, buf: &'a mut impl DevicePtrMut<T>) -> &mut Self {
        let (ptr, guard) = buf.device_ptr_mut(self.stream);
        self.guards.push(guard);
        self.ptr(ptr)
    }

    /// A raw device address (0: a null pointer).
    pub fn ptr(&mut self, address: u64) -> &mut Self {
        self.slots.push(address);
        self
    }

    pub fn int(&mut self, x: i32) -> &mut Self {
        self.ptr(u64::from(x as u32))
    }

    pub fn uint(&mut self, x: u32) -> &mut Self {
        self.ptr(u64::from(x))
    }

    pub fn float(&mut self, x: f32) -> &mut Self {
        self.ptr(u64::from(x.to_bits()))
    }

    /// The ready flags and epoch of an overlapped launch (null and 0: none; kernels/common.cu).
    pub fn ready(&mut self, ready: Option<&'a Ready>) -> &mut Self {
        match ready {
            Some(r) => self.input(&*r.flags).uint(r.epoch),
            None => self.ptr(0).uint(0),
        }
    }

    /// Enqueues `f` on the stream; `overlap`: it may start before the kernel ahead of it has
    /// ended (once each of that kernel's CTAs has run `dma_allow_next_kernel` or exited), so it
    /// must wait for what it reads from that kernel itself. Only on sm_90 and newer.
    ///
    /// # Safety
    /// The arguments match `f`'s parameters in order and type, and the buffers hold what the
    /// kernel indexes.
    pub unsafe fn launch(
        mut self,
        f: &CudaFunction,
        cfg: LaunchConfig,
        overlap: bool,
    ) -> Result<()> {
        self.stream
            .context()
            .bind_to_thread()
            .map_err(error::driver)?;
        let mut params: Vec<*mut c_void> = self
            .slots
            .iter_mut()
            .map(|slot| (slot as *mut u64).cast())
            .collect();
        // SAFETY: a plain C struct and union, all-zero a valid value.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: u32::from(overlap),
        };
        // SAFETY: the caller's contract; `params` points at one slot per parameter, alive
        // until the call returns (the driver copies them).
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                f.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .map_err(error::driver)?;
        drop(self.guards);
        Ok(())
    }
}

/// Per-list ready flags for one overlapped forward: the device's flag buffer and this call's
/// epoch, the value a list's flag takes when the list is done.
#[derive(Debug, Clone)]
pub(crate) struct Ready {
    pub flags: Arc<CudaSlice<u32>>,
    pub epoch: u32,
}

/// Whether a forward's selection and attention launch overlapped ([`Args::launch`]): on sm_90
/// and newer, unless `DMA_CUDA_NO_OVERLAP` is set (an A/B switch).
pub(crate) fn overlap_wanted(dev: &Device) -> bool {
    dev.arch().major >= 9 && std::env::var_os("DMA_CUDA_NO_OVERLAP").is_none()
}
