//! Run-time compilation of the CUDA C++ kernels with NVRTC, for the GPU in hand.
//!
//! Each kernel file defines a template body and a macro that instantiates it as an
//! `extern "C"` kernel; a [`KernelSpec`] names the macro and its template arguments, and the
//! compiled PTX is cached per process by (kernel name, target), the name spelling out every
//! template argument.

use super::device::Arch;
use super::{kernel_cache, libs};
use crate::{DmaError, Result};
use cudarc::nvrtc::{CompileError, CompileOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

const COMMON: &str = include_str!("kernels/common.cu");

/// One specialisation of one kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSpec {
    source: &'static str,
    instantiate: &'static str,
    args: Vec<String>,
    name: String,
}

impl KernelSpec {
    /// The kernel made by `instantiate(NAME, args...)` in `source`, named `prefix_arg_arg..`.
    pub fn new(
        source: &'static str,
        instantiate: &'static str,
        prefix: &str,
        args: &[(&str, &str)],
    ) -> Self {
        let mut name = prefix.to_string();
        for (short, _) in args {
            name.push('_');
            name.push_str(short);
        }
        KernelSpec {
            source,
            instantiate,
            args: args.iter().map(|(_, full)| full.to_string()).collect(),
            name,
        }
    }

    /// The kernel's symbol, unique per specialisation.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The whole program handed to NVRTC.
    pub fn program(&self) -> String {
        format!(
            "{COMMON}\n{}\n{}({}, {})\n",
            self.source,
            self.instantiate,
            self.name,
            self.args.join(", ")
        )
    }
}

/// PTX of `spec` for `arch`, compiled at most once per process, and read from the on-disk
/// cache (`kernel_cache`) when an earlier process compiled it.
pub fn ptx(spec: &KernelSpec, arch: Arch) -> Result<Arc<String>> {
    type Cache = Mutex<HashMap<(String, String), Arc<String>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let key = (spec.name().to_string(), arch.target());
    let cache = CACHE.get_or_init(Default::default);
    if let Some(p) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Ok(p);
    }
    let ptx = Arc::new(cached_or_compiled(spec, arch)?);
    if let Ok(mut c) = cache.lock() {
        c.insert(key, ptx.clone());
    }
    Ok(ptx)
}

/// The PTX from the disk cache, or compiled (and then stored there).
fn cached_or_compiled(spec: &KernelSpec, arch: Arch) -> Result<String> {
    let Some(dir) = kernel_cache::dir() else {
        return compile(spec, arch);
    };
    let include = cuda_include_dir()?;
    let file = kernel_cache::file_name(spec.name(), &arch.target(), &spec.program(), &include);
    if let Some(ptx) = kernel_cache::load(&dir, &file, spec.name()) {
        return Ok(ptx);
    }
    let ptx = compile(spec, arch)?;
    kernel_cache::store(&dir, &file, &ptx);
    Ok(ptx)
}

/// PTX of `spec` for `arch` from NVRTC, every time (no cache).
pub fn compile(spec: &KernelSpec, arch: Arch) -> Result<String> {
    libs::nvrtc()?;
    let include = cuda_include_dir()?;
    let opts = CompileOptions {
        include_paths: vec![include.display().to_string()],
        options: vec![
            format!("--gpu-architecture={}", arch.target()),
            "--std=c++17".into(),
            "-lineinfo".into(),
        ],
        name: Some(format!("{}.cu", spec.name())),
        ..Default::default()
    };
    let program = spec.program();
    let result = libs::guarded(
        || Ok(cudarc::nvrtc::compile_ptx_with_opts(&program, opts)),
        DmaError::NvrtcNotFound,
    )?;
    match result {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(CompileError::CompileError { log, .. }) => Err(DmaError::KernelCompile {
            kernel: spec.name().to_string(),
            log: log.to_string_lossy().into_owned(),
        }),
        Err(e) => Err(DmaError::Cuda(format!("NVRTC: {e:?}"))),
    }
}

/// The places searched for the CUDA headers, in order.
pub fn include_candidates() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(v) = std::env::var_os(var) {
            dirs.push(PathBuf::from(v).join("include"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/include"));
    if let Ok(entries) = std::fs::read_dir("/usr/local") {
        let mut versioned: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("cuda-"))
            .map(|e| e.path().join("include"))
            .collect();
        versioned.sort();
        versioned.reverse(); // newest first
        dirs.extend(versioned);
    }
    if dirs.iter().all(|d| !d.starts_with("/usr/local/cuda-")) {
        dirs.push(PathBuf::from("/usr/local/cuda-*/include"));
    }
    let wheel = Path::new(".cuda/nvidia/cu13/include");
    if let Ok(cwd) = std::env::current_dir() {
        dirs.push(cwd.join(wheel));
    }
    // The repository this crate was built from (scripts/cuda-env.sh installs the wheels there).
    dirs.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(wheel),
    );
    dirs
}

/// The first candidate directory that holds `cuda_bf16.h`.
pub fn cuda_include_dir() -> Result<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        include_candidates()
            .into_iter()
            .find(|d| d.join("cuda_bf16.h").is_file())
    });
    found.clone().ok_or_else(|| DmaError::CudaHeadersNotFound {
        searched: include_candidates()
            .iter()
            .map(|d| d.display().to_string())
            .collect(),
    })
}
