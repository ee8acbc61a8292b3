//! The GPU a call runs on: its context and stream, its architecture, and the kernels loaded
//! into it.

use super::compile::{self, KernelSpec};
use super::{error, libs};
use crate::{DmaError, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaStream};
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
    /// Kernels loaded into this context, by kernel name.
    functions: Mutex<HashMap<String, CudaFunction>>,
}

impl Device {
    /// Opens device `ordinal` and uses its default stream.
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
        Device::from_stream(ctx.default_stream())
    }

    /// Uses an existing stream (for example a framework's).
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
        Ok(Device {
            stream,
            arch,
            functions: Mutex::new(HashMap::new()),
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

    /// The kernel `spec`, compiled (once per process) and loaded (once per device).
    pub fn function(&self, spec: &KernelSpec) -> Result<CudaFunction> {
        let mut loaded = self
            .functions
            .lock()
            .map_err(|_| DmaError::Cuda("kernel cache lock poisoned".into()))?;
        if let Some(f) = loaded.get(spec.name()) {
            return Ok(f.clone());
        }
        let ptx = compile::ptx(spec, self.arch)?;
        let module = self
            .context()
            .load_module(cudarc::nvrtc::Ptx::from_src(ptx.as_str()))
            .map_err(error::driver)?;
        let f = module.load_function(spec.name()).map_err(error::driver)?;
        loaded.insert(spec.name().to_string(), f.clone());
        Ok(f)
    }
}
