//! What the fused f32 ops (`RmsNorm`, RoPE, `silu_mul`, `scale_add`, `adamw_step`) share: their
//! CPU storage as slices, and the one-tensor form of a backward with two results.

use crate::Error;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};

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

/// A custom op returns one tensor, so a backward whose results are the gradient of rows
/// `[..., width]` and of a vector `[width]` (RMSNorm's dx and dw, scale_add's dx and ds) returns
/// them stacked as `[rows + 1, width]`: this shape, for rows laid out as `rows`.
pub(crate) fn rows_and_vector(rows: &Layout, width: usize) -> Shape {
    Shape::from((rows.shape().elem_count() / width.max(1) + 1, width))
}

/// The two results of a [`rows_and_vector`] tensor, shaped like `rows_like` and `vector_like`
/// (views, no copy).
pub(crate) fn split_rows_and_vector(
    packed: &Tensor,
    rows_like: &Tensor,
    vector_like: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let rows = packed.dim(0)? - 1;
    Ok((
        packed.narrow(0, 0, rows)?.reshape(rows_like.shape())?,
        packed.narrow(0, rows, 1)?.reshape(vector_like.shape())?,
    ))
}
