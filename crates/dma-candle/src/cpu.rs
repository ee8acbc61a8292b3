//! The op on CPU storage: candle storages and layouts in, [`dma::cpu`] on dense slices, candle
//! storages and tensors out.

use crate::op::Tensors;
use crate::Error;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Device, Layout, Result, Storage, Tensor, WithDType};
use dma::{Element, Params, Shape};
use std::borrow::Cow;

/// Forward of q and the packed kv (k stacked over v) with an f32 bias: out (like q) and lse.
pub(crate) fn forward(
    params: &Params,
    shape: &Shape,
    (q, lq): (&CpuStorage, &Layout),
    (kv, lkv): (&CpuStorage, &Layout),
    (bias, lb): (&CpuStorage, &Layout),
) -> Result<(CpuStorage, Vec<f32>)> {
    let bias = dense(f32_slice("bias", bias)?, lb);
    match (q, kv) {
        (CpuStorage::F32(q), CpuStorage::F32(kv)) => {
            typed_forward(params, shape, q, lq, kv, lkv, &bias)
        }
        (CpuStorage::BF16(q), CpuStorage::BF16(kv)) => {
            typed_forward(params, shape, q, lq, kv, lkv, &bias)
        }
        (CpuStorage::F16(q), CpuStorage::F16(kv)) => {
            typed_forward(params, shape, q, lq, kv, lkv, &bias)
        }
        (q, kv) => Err(dtype_error(q.dtype(), kv.dtype()).into()),
    }
}

/// Gradients of q, kv (dk stacked over dv) and bias, as CPU tensors.
pub(crate) fn backward(
    params: &Params,
    shape: &Shape,
    t: &Tensors,
    lse: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (q, lq) = t.q.storage_and_layout();
    let (kv, lkv) = t.kv.storage_and_layout();
    let (bias, lb) = t.bias.storage_and_layout();
    let (out, lo) = t.out.storage_and_layout();
    let (dout, ldo) = t.dout.storage_and_layout();
    let (lse, ll) = lse.storage_and_layout();
    let bias = dense(f32_slice("bias", cpu(&bias)?)?, lb);
    let lse = dense(f32_slice("lse", cpu(&lse)?)?, ll);
    let (dims_q, dims_kv) = (t.q.dims(), t.kv.dims());
    macro_rules! typed {
        ($t:ty) => {
            typed_backward::<$t>(
                params,
                shape,
                [
                    (cpu(&q)?, lq),
                    (cpu(&kv)?, lkv),
                    (cpu(&out)?, lo),
                    (cpu(&dout)?, ldo),
                ],
                &bias,
                &lse,
                (dims_q, dims_kv, t.bias.dims()),
            )
        };
    }
    match t.q.dtype() {
        DType::F32 => typed!(f32),
        DType::BF16 => typed!(half::bf16),
        DType::F16 => typed!(half::f16),
        other => Err(dtype_error(other, t.kv.dtype()).into()),
    }
}

fn typed_forward<T: Element + WithDType>(
    params: &Params,
    shape: &Shape,
    q: &[T],
    lq: &Layout,
    kv: &[T],
    lkv: &Layout,
    bias: &[f32],
) -> Result<(CpuStorage, Vec<f32>)> {
    let (q, kv) = (dense(q, lq), dense(kv, lkv));
    let (k, v) = kv.split_at(kv.len() / 2);
    let inputs = dma::cpu::Inputs { q: &q, k, v, bias };
    let fwd = dma::cpu::forward(params, shape, &inputs).map_err(Error::from)?;
    Ok((T::to_cpu_storage_owned(fwd.out), fwd.lse))
}

fn typed_backward<T: Element + WithDType>(
    params: &Params,
    shape: &Shape,
    [q, kv, out, dout]: [(&CpuStorage, &Layout); 4],
    bias: &[f32],
    lse: &[f32],
    (dims_q, dims_kv, dims_bias): (&[usize], &[usize], &[usize]),
) -> Result<(Tensor, Tensor, Tensor)> {
    let (q, kv, out, dout) = (
        typed::<T>(q)?,
        typed::<T>(kv)?,
        typed::<T>(out)?,
        typed::<T>(dout)?,
    );
    let (k, v) = kv.split_at(kv.len() / 2);
    let inputs = dma::cpu::Inputs { q: &q, k, v, bias };
    let g = dma::cpu::backward(params, shape, &inputs, &out, lse, &dout).map_err(Error::from)?;
    let mut dkv = g.dk;
    dkv.extend_from_slice(&g.dv);
    Ok((
        Tensor::from_vec(g.dq, dims_q, &Device::Cpu)?,
        Tensor::from_vec(dkv, dims_kv, &Device::Cpu)?,
        Tensor::from_vec(g.dbias, dims_bias, &Device::Cpu)?,
    ))
}

/// The elements of a storage of `T`, row-major.
fn typed<'a, T: WithDType>((s, l): (&'a CpuStorage, &Layout)) -> Result<Cow<'a, [T]>> {
    Ok(dense(s.as_slice::<T>()?, l))
}

/// The CPU storage behind a tensor, or the error for the device it lives on.
fn cpu(storage: &Storage) -> std::result::Result<&CpuStorage, Error> {
    match storage {
        Storage::Cpu(s) => Ok(s),
        Storage::Cuda(_) => Err(Error::MixedDevices),
        Storage::Metal(_) => Err(Error::UnsupportedDevice("metal")),
    }
}

fn f32_slice<'a>(name: &'static str, s: &'a CpuStorage) -> std::result::Result<&'a [f32], Error> {
    match s {
        CpuStorage::F32(x) => Ok(x),
        other => Err(Error::DType {
            name,
            actual: other.dtype(),
            expected: "f32".into(),
        }),
    }
}

/// Why q and kv are not one supported dtype.
fn dtype_error(q: DType, kv: DType) -> Error {
    Error::dtypes(
        q,
        kv,
        &[DType::F32, DType::BF16, DType::F16],
        "F32, BF16 or F16",
    )
}

/// The elements of a tensor in row-major order: borrowed when its layout is contiguous,
/// gathered through the strides otherwise.
fn dense<'a, T: Copy>(data: &'a [T], layout: &Layout) -> Cow<'a, [T]> {
    let count = layout.shape().elem_count();
    if count == 0 {
        // An empty view may start past the end of its (empty) storage.
        return Cow::Borrowed(&[]);
    }
    if let Some((start, end)) = layout.contiguous_offsets() {
        return Cow::Borrowed(&data[start..end]);
    }
    let (dims, stride) = (layout.dims(), layout.stride());
    let mut out = Vec::with_capacity(count);
    let mut index = vec![0usize; dims.len()];
    loop {
        let offset: usize = index.iter().zip(stride).map(|(i, s)| i * s).sum();
        out.push(data[layout.start_offset() + offset]);
        // Advance the multi-index, last dim fastest.
        let mut d = dims.len();
        loop {
            if d == 0 {
                return Cow::Owned(out);
            }
            d -= 1;
            index[d] += 1;
            if index[d] < dims[d] {
                break;
            }
            index[d] = 0;
        }
    }
}
