//! The op on CUDA storage (feature `cuda`): candle's device buffers handed to `dma::cuda`, whose
//! kernels run on candle's own stream, so no synchronisation is needed around them.
//!
//! candle tensors are contiguous here (the op makes them so before it reaches this module), and
//! the kernels read them in place (views of candle's buffers), k and v as the two halves of the
//! stacked kv. The backward's dk and dv are copied into one dkv.

use crate::Error;
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, CudaDevice};
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Layout, Result, Storage, Tensor};
use dma::cuda::{BackwardInputs, CudaElement, Selection};
use dma::{Params, Shape};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

mod decode;
mod layers;
mod optim;
pub(crate) use decode::decode_step;
pub(crate) use layers::{
    cross_entropy_backward, cross_entropy_forward, rms_norm_backward, rms_norm_forward, rope,
    scale_add_backward, scale_add_forward, scatter_add_rows, silu_mul_backward, silu_mul_forward,
};
pub(crate) use optim::{adamw_moment, adamw_update};

/// What the forward keeps for its backward on CUDA: the lse, and the selection when the general
/// forward made one (the decode path does not; the backward then selects again).
pub(crate) struct Saved {
    pub lse: Tensor,
    pub selection: Option<Selection>,
}

/// The `dma::cuda` device of a candle device: one per candle device for the whole process, so
/// the compiled kernels are loaded once.
pub(crate) fn device(dev: &CudaDevice) -> Result<Arc<dma::cuda::Device>> {
    static DEVICES: OnceLock<
        Mutex<HashMap<candle_core::cuda_backend::DeviceId, Arc<dma::cuda::Device>>>,
    > = OnceLock::new();
    let mut map = DEVICES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(d) = map.get(&dev.id()) {
        return Ok(d.clone());
    }
    let d = Arc::new(dma::cuda::Device::from_stream(dev.cuda_stream()).map_err(Error::from)?);
    map.insert(dev.id(), d.clone());
    Ok(d)
}

pub(crate) fn driver(e: impl std::fmt::Display) -> candle_core::Error {
    Error::Cuda(e.to_string()).into()
}

/// The elements of a contiguous storage: the slice itself when the layout covers all of it, a
/// copy of the covered range otherwise (a narrowed tensor).
pub(crate) fn contiguous<'a, T: CudaDType + DeviceRepr>(
    name: &'static str,
    s: &'a CudaStorage,
    l: &Layout,
) -> Result<Cow<'a, CudaSlice<T>>>
where
    CudaSlice<T>: Clone,
{
    let slice = s.as_cuda_slice::<T>()?;
    let (start, end) = l.contiguous_offsets().ok_or(Error::NotContiguous(name))?;
    if start == 0 && end == slice.len() {
        return Ok(Cow::Borrowed(slice));
    }
    let copy = s
        .device()
        .cuda_stream()
        .clone_dtod(&slice.slice(start..end))
        .map_err(driver)?;
    Ok(Cow::Owned(copy))
}

/// The elements of a contiguous tensor's storage in place, as a view.
pub(crate) fn view<'a, T: CudaDType>(
    name: &'static str,
    s: &'a CudaStorage,
    l: &Layout,
) -> Result<CudaView<'a, T>> {
    let slice = s.as_cuda_slice::<T>()?;
    let (start, end) = l.contiguous_offsets().ok_or(Error::NotContiguous(name))?;
    Ok(slice.slice(start..end))
}

/// The k and v halves of a contiguous stacked kv `[2, B, Nk, Hkv, D]`, as views (no copy).
fn split_kv<'a, T: CudaDType>(
    s: &'a CudaStorage,
    l: &Layout,
) -> Result<(CudaView<'a, T>, CudaView<'a, T>)> {
    let slice = s.as_cuda_slice::<T>()?;
    let (start, end) = l.contiguous_offsets().ok_or(Error::NotContiguous("kv"))?;
    let half = (end - start) / 2;
    Ok((
        slice.slice(start..start + half),
        slice.slice(start + half..end),
    ))
}

/// Forward of q and the packed kv with an f32 bias: out (like q) and what the backward needs.
pub(crate) fn forward(
    params: &Params,
    shape: &Shape,
    (q, lq): (&CudaStorage, &Layout),
    (kv, lkv): (&CudaStorage, &Layout),
    (bias, lb): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Saved)> {
    match (q.dtype(), kv.dtype()) {
        (DType::BF16, DType::BF16) => {
            typed_forward::<half::bf16>(params, shape, (q, lq), (kv, lkv), (bias, lb))
        }
        (DType::F16, DType::F16) => {
            typed_forward::<half::f16>(params, shape, (q, lq), (kv, lkv), (bias, lb))
        }
        (q, kv) => Err(dtype_error(q, kv).into()),
    }
}

fn typed_forward<T: CudaDType + CudaElement>(
    params: &Params,
    shape: &Shape,
    (q, lq): (&CudaStorage, &Layout),
    (kv, lkv): (&CudaStorage, &Layout),
    (bias, lb): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Saved)>
where
    CudaSlice<T>: Clone,
{
    let cdev = q.device().clone();
    let dev = device(&cdev)?;
    let problem = shape.problem().map_err(Error::from)?;
    let qs = view::<T>("q", q, lq)?;
    let (k, v) = split_kv::<T>(kv, lkv)?;
    let bias = view::<f32>("bias", bias, lb)?;
    // SAFETY: the forward writes every element of out and lse.
    let (mut out, mut lse) = unsafe { alloc_out_lse::<T>(&cdev, &problem)? };
    let few_queries = problem
        .sequences
        .iter()
        .all(|s| s.nq <= dma::cuda::DECODE_MAX_Q);
    let selection = if few_queries {
        dma::cuda::decode_into(&dev, params, shape, &qs, &k, &v, &bias, &mut out, &mut lse)
            .map_err(Error::from)?;
        None
    } else {
        let sel = dma::cuda::forward_into_with_selection(
            &dev, params, shape, &qs, &k, &v, &bias, &mut out, &mut lse,
        )
        .map_err(Error::from)?;
        Some(sel)
    };
    let lse = tensor(lse, lse_dims(lq.dims()), &cdev);
    let out = CudaStorage::wrap_cuda_slice(out, cdev);
    Ok((out, Saved { lse, selection }))
}

/// Uninitialised out (like q) and lse buffers of a call.
///
/// # Safety
/// The caller writes every element before anything reads it.
pub(crate) unsafe fn alloc_out_lse<T: CudaDType + DeviceRepr>(
    cdev: &CudaDevice,
    problem: &dma::Problem,
) -> Result<(CudaSlice<T>, CudaSlice<f32>)> {
    let stream = cdev.cuda_stream();
    Ok((
        stream.alloc::<T>(problem.q_len().max(1)).map_err(driver)?,
        stream
            .alloc::<f32>(problem.lse_len().max(1))
            .map_err(driver)?,
    ))
}

/// `[B, Hq, Nq]` of q `[B, Nq, Hq, D]`.
fn lse_dims(q: &[usize]) -> (usize, usize, usize) {
    (q[0], q[2], q[1])
}

/// A candle tensor of shape `dims` over a device buffer (which may be longer: buffers are
/// allocated with at least one element).
fn tensor<T: CudaDType, S: Into<candle_core::Shape>>(
    slice: CudaSlice<T>,
    dims: S,
    dev: &CudaDevice,
) -> Tensor {
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, dev.clone()));
    Tensor::from_storage(storage, dims, BackpropOp::none(), false)
}

/// Gradients of q, kv (dk stacked over dv) and bias, as CUDA tensors.
pub(crate) fn backward(
    params: &Params,
    shape: &Shape,
    t: &crate::op::Tensors,
    saved: &Saved,
) -> Result<(Tensor, Tensor, Tensor)> {
    match t.q.dtype() {
        DType::BF16 => typed_backward::<half::bf16>(params, shape, t, saved),
        DType::F16 => typed_backward::<half::f16>(params, shape, t, saved),
        other => Err(dtype_error(other, t.kv.dtype()).into()),
    }
}

fn typed_backward<T: CudaDType + CudaElement>(
    params: &Params,
    shape: &Shape,
    t: &crate::op::Tensors,
    saved: &Saved,
) -> Result<(Tensor, Tensor, Tensor)>
where
    CudaSlice<T>: Clone,
{
    let cdev = match t.q.device() {
        candle_core::Device::Cuda(d) => d.clone(),
        _ => return Err(Error::MixedDevices.into()),
    };
    let dev = device(&cdev)?;
    let problem = shape.problem().map_err(Error::from)?;
    // Gradients arriving from candle may be views (a transpose, a broadcast): make them dense.
    let [q, kv, bias, out, dout, lse] =
        [t.q, t.kv, t.bias, t.out, t.dout, &saved.lse].map(|x| x.contiguous());
    let (q, kv, bias, out, dout, lse) = (q?, kv?, bias?, out?, dout?, lse?);
    let (qs, lq) = q.storage_and_layout();
    let (kvs, lkv) = kv.storage_and_layout();
    let (bs, lb) = bias.storage_and_layout();
    let (os, lo) = out.storage_and_layout();
    let (ds, ld) = dout.storage_and_layout();
    let (ls, ll) = lse.storage_and_layout();
    let (qs, kvs, bs, os, ds, ls) = (
        cuda(&qs)?,
        cuda(&kvs)?,
        cuda(&bs)?,
        cuda(&os)?,
        cuda(&ds)?,
        cuda(&ls)?,
    );
    let qv = view::<T>("q", qs, lq)?;
    let (k, v) = split_kv::<T>(kvs, lkv)?;
    let bias_v = view::<f32>("bias", bs, lb)?;
    let out_v = view::<T>("out", os, lo)?;
    let dout_v = view::<T>("dout", ds, ld)?;
    let lse_v = view::<f32>("lse", ls, ll)?;
    let inputs = BackwardInputs {
        q: &qv,
        k: &k,
        v: &v,
        bias: &bias_v,
        out: &out_v,
        lse: &lse_v,
        dout: &dout_v,
    };
    let g = dma::cuda::backward(&dev, params, shape, &inputs, saved.selection.as_ref())
        .map_err(Error::from)?;
    let stream = cdev.cuda_stream();
    let k_len = problem.k_len();
    // SAFETY: both halves are written by the copies below before the tensor is read.
    let mut dkv = unsafe { stream.alloc::<T>((2 * k_len).max(1)).map_err(driver)? };
    if k_len > 0 {
        let (mut dk_half, mut dv_half) = dkv.split_at_mut(k_len);
        stream
            .memcpy_dtod(&g.dk.slice(..k_len), &mut dk_half)
            .map_err(driver)?;
        stream
            .memcpy_dtod(&g.dv.slice(..k_len), &mut dv_half)
            .map_err(driver)?;
    }
    Ok((
        tensor(g.dq, t.q.dims(), &cdev),
        tensor(dkv, t.kv.dims(), &cdev),
        tensor(g.dbias, t.bias.dims(), &cdev),
    ))
}

fn cuda(storage: &Storage) -> std::result::Result<&CudaStorage, Error> {
    match storage {
        Storage::Cuda(s) => Ok(s),
        _ => Err(Error::MixedDevices),
    }
}

/// Why q and kv are not one dtype the CUDA kernels take.
fn dtype_error(q: DType, kv: DType) -> Error {
    Error::dtypes(
        q,
        kv,
        &[DType::BF16, DType::F16],
        "BF16 or F16 on CUDA (the CUDA kernels have no f32 path; cast first)",
    )
}
