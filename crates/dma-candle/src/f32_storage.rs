//! CPU storage of the fused f32 ops (`RmsNorm`, RoPE, `silu_mul`, `scale_add`) as slices.

use crate::Error;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result};

/// The f32 storages of a fused op, or an error naming the first that is not f32.
pub(crate) fn f32_slices<'a, const N: usize>(
    names: [&'static str; N],
    storages: [(&'a CpuStorage, &Layout); N],
) -> Result<[&'a [f32]; N]> {
    let mut out = [&[][..]; N];
    for ((name, (s, l)), slot) in names.into_iter().zip(storages).zip(&mut out) {
        let CpuStorage::F32(values) = s else {
            return Err(Error::DType {
                name,
                actual: s.dtype(),
                expected: "f32".into(),
            }
            .into());
        };
        let (start, end) = l.contiguous_offsets().ok_or(Error::NotContiguous(name))?;
        *slot = &values[start..end];
    }
    Ok(out)
}
