//! Weights on disk: reading a safetensors file into the model's variables (every variable must
//! be there with its exact shape; extra tensors are ignored), writing them back, and atomic
//! file writes.

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use std::collections::HashMap;
use std::path::Path;

/// The tensors of a safetensors file, on `device`, in their stored dtypes.
pub(crate) fn read(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Sets every variable of `vars` from the tensor of the same name in `tensors`, converted to
/// the variable's dtype. Variables are visited in name order, so the error for several missing
/// tensors is always the same one.
pub(crate) fn assign(vars: &VarMap, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let data = vars.data().lock().unwrap_or_else(|p| p.into_inner());
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let tensor = tensors
            .get(name)
            .ok_or_else(|| Error::MissingTensor { name: name.clone() })?;
        if tensor.dims() != var.dims() {
            return Err(Error::TensorShape {
                name: name.clone(),
                actual: tensor.dims().to_vec(),
                expected: var.dims().to_vec(),
            });
        }
        var.set(&tensor.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// Writes every variable of `vars` to a safetensors file at `path` (atomically), in `dtype`.
pub(crate) fn write(vars: &VarMap, path: &Path, dtype: DType) -> Result<()> {
    let tensors: HashMap<String, Tensor> = {
        let data = vars.data().lock().unwrap_or_else(|p| p.into_inner());
        data.iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().to_dtype(dtype)?)))
            .collect::<candle_core::Result<_>>()?
    };
    // transformers' loaders (before 4.48.2) insist on `format: pt`, as save_pretrained writes.
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let mut named: Vec<(&String, &Tensor)> = tensors.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    let bytes = safetensors_candle::tensor::serialize(named, Some(metadata)).map_err(|e| {
        Error::Safetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    })?;
    write_atomically(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// reader never sees half a file.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    std::fs::write(&tmp, bytes).map_err(|source| Error::Io {
        action: "write",
        path: tmp.clone(),
        source,
    })?;
    rename(&tmp, path)
}

fn temp_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|source| Error::Io {
        action: "rename into place",
        path: to.to_path_buf(),
        source,
    })
}
