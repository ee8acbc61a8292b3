//! PTX on disk, so that a process does not pay NVRTC again for kernels an earlier one compiled
//! (a few seconds for the attention kernels of one configuration; most of a short `dma op`).
//!
//! The directory is `DMA_KERNEL_CACHE` when set (`off` turns the cache off), else
//! `$XDG_CACHE_HOME/dma/kernels`, else `$HOME/.cache/dma/kernels`. A file is named after the
//! kernel, the target and a hash of everything the PTX depends on: the whole program text, the
//! target, and the CUDA headers used (their directory, and the size and modification time of
//! `cuda_bf16.h`, which change with the toolkit). The cache is best-effort: a file that cannot be
//! read, or does not look like this kernel's PTX, is compiled again; a failed write is ignored.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

/// The cache directory, or `None` when the cache is off or no directory can be named.
pub(crate) fn dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DMA_KERNEL_CACHE") {
        return match dir.to_str() {
            Some("off") | Some("") => None,
            _ => Some(PathBuf::from(dir)),
        };
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("dma").join("kernels"))
}

/// The file name of a kernel's PTX: `name-target-hash.ptx`.
pub(crate) fn file_name(name: &str, target: &str, program: &str, include_dir: &Path) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (program, target, include_dir).hash(&mut h);
    if let Ok(meta) = std::fs::metadata(include_dir.join("cuda_bf16.h")) {
        meta.len().hash(&mut h);
        meta.modified().ok().hash(&mut h);
    }
    format!("{name}-{target}-{:016x}.ptx", h.finish())
}

/// The PTX in `dir/file`, if it is there and declares the kernel `name`.
pub(crate) fn load(dir: &Path, file: &str, name: &str) -> Option<String> {
    let ptx = std::fs::read_to_string(dir.join(file)).ok()?;
    let declares = ptx.contains(".version") && ptx.contains(&format!(".entry {name}("));
    declares.then_some(ptx)
}

/// Writes `ptx` to `dir/file` through a temporary file and a rename, so that a concurrent
/// reader sees the whole file or none.
pub(crate) fn store(dir: &Path, file: &str, ptx: &str) {
    let tmp = dir.join(format!(".{file}.{}", std::process::id()));
    let written = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&tmp, ptx))
        .and_then(|_| std::fs::rename(&tmp, dir.join(file)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_ptx_loads_and_other_files_do_not() {
        let dir =
            std::env::temp_dir().join(format!("dma-kernel-cache-test-{}", std::process::id()));
        let include = Path::new("/nonexistent/include");
        let file = file_name("k_f32", "sm_90a", "program text", include);
        assert!(
            load(&dir, &file, "k_f32").is_none(),
            "an empty cache has nothing"
        );
        let ptx = ".version 8.5\n.target sm_90a\n.visible .entry k_f32(\n)\n{\n}\n";
        store(&dir, &file, ptx);
        assert_eq!(load(&dir, &file, "k_f32").as_deref(), Some(ptx));
        // Another kernel's name, another program or target: another file.
        assert!(load(&dir, &file, "other").is_none());
        assert_ne!(
            file,
            file_name("k_f32", "sm_90a", "program text 2", include)
        );
        assert_ne!(file, file_name("k_f32", "sm_80", "program text", include));
        // A truncated file is not used.
        std::fs::write(dir.join(&file), ".version 8.5\n").unwrap();
        assert!(load(&dir, &file, "k_f32").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
