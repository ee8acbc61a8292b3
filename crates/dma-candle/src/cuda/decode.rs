//! A generation step on CUDA tensors: `dma::cuda::DecodeState::step_into` on candle's buffers,
//! k, v and the bias read in place (views of their storage) instead of stacked and copied like
//! the op's: a KV cache's filled prefix, a narrow of tensors with room to grow, as a padded
//! layout (`dma::Shape::padded`).

use super::{alloc_out_lse, cuda, device, dtype_error, tensor, view};
use crate::Error;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
use candle_core::cuda_backend::{CudaDType, CudaDevice};
use candle_core::{CudaStorage, DType, Layout, Result, Tensor};
use dma::cuda::{CudaElement, DecodeState};
use dma::{Params, Shape};

/// `dma_attention(q, k, v, bias)` as one step of `state` (inputs checked by the caller).
pub(crate) fn decode_step(
    state: &mut DecodeState,
    params: &Params,
    shape: &Shape,
    (q, k, v, bias): (&Tensor, &Tensor, &Tensor, &Tensor),
) -> Result<Tensor> {
    match q.dtype() {
        DType::BF16 => typed::<half::bf16>(state, params, shape, (q, k, v, bias)),
        DType::F16 => typed::<half::f16>(state, params, shape, (q, k, v, bias)),
        other => Err(dtype_error(other, k.dtype()).into()),
    }
}

fn typed<T: CudaDType + CudaElement>(
    state: &mut DecodeState,
    params: &Params,
    shape: &Shape,
    (q, k, v, bias): (&Tensor, &Tensor, &Tensor, &Tensor),
) -> Result<Tensor>
where
    CudaSlice<T>: Clone,
{
    let cdev = match q.device() {
        candle_core::Device::Cuda(d) => d.clone(),
        _ => return Err(Error::MixedDevices.into()),
    };
    let dev = device(&cdev)?;
    let q = q.contiguous()?;
    let (qs, lq) = q.storage_and_layout();
    let qv = view::<T>("q", cuda(&qs)?, lq)?;
    let (ks, lk) = k.storage_and_layout();
    let (vs, lv) = v.storage_and_layout();
    let (bs, lb) = bias.storage_and_layout();
    // A cache's filled prefix (keys along dim 1 of k and v, dim 2 of the bias), read in place as
    // a padded layout when k, v and the bias are narrows of one capacity.
    let in_place = match (
        cache_view::<T>(cuda(&ks)?, lk, 1)?,
        cache_view::<T>(cuda(&vs)?, lv, 1)?,
        cache_view::<f32>(cuda(&bs)?, lb, 2)?,
    ) {
        (Some((k, ck)), Some((v, cv)), Some((bias, cb))) if ck == cv && cv == cb => {
            Some((k, v, bias, ck))
        }
        _ => None,
    };
    let out = match in_place {
        Some((k, v, bias, capacity)) => {
            let padded = Shape::padded(
                q.dim(0)?,
                q.dim(1)?,
                lk.dims()[1],
                capacity,
                shape.heads,
                shape.head_dim,
            );
            step(state, &dev, &cdev, params, &padded, (&qv, &k, &v, &bias))?
        }
        None => {
            // Copies of whatever is not dense (which read the storages: release them first),
            // read as dense tensors: `contiguous` leaves a one-sequence prefix as it is, whose
            // strides still span the whole capacity.
            drop((ks, vs, bs));
            let [k, v, bias] = [k, v, bias].map(|x| x.contiguous());
            let (k, v, bias) = (k?, v?, bias?);
            let (ks, lk) = k.storage_and_layout();
            let (vs, lv) = v.storage_and_layout();
            let (bs, lb) = bias.storage_and_layout();
            let k = view::<T>("k", cuda(&ks)?, lk)?;
            let v = view::<T>("v", cuda(&vs)?, lv)?;
            let bias = view::<f32>("bias", cuda(&bs)?, lb)?;
            step(state, &dev, &cdev, params, shape, (&qv, &k, &v, &bias))?
        }
    };
    Ok(tensor(out, q.dims(), &cdev))
}

/// One step of `state` on views: its out (lse is not kept).
fn step<T: CudaDType + CudaElement>(
    state: &mut DecodeState,
    dev: &dma::cuda::Device,
    cdev: &CudaDevice,
    params: &Params,
    shape: &Shape,
    (q, k, v, bias): (&CudaView<T>, &CudaView<T>, &CudaView<T>, &CudaView<f32>),
) -> Result<CudaSlice<T>> {
    let problem = shape.problem().map_err(Error::from)?;
    // SAFETY: the step writes every element of out and lse.
    let (mut out, mut lse) = unsafe { alloc_out_lse::<T>(cdev, &problem)? };
    state
        .step_into(dev, params, shape, q, k, v, bias, &mut out, &mut lse)
        .map_err(Error::from)?;
    Ok(out)
}

/// `x` as the first n of `capacity` entries along `dim` (its keys) of a row-major tensor, the
/// layout of a cache's filled prefix (`narrow(dim, 0, n)` of `[.., capacity, ..]`): a view of
/// the whole capacity of each of its leading entries, and the capacity. None for any other
/// layout (which the caller copies).
fn cache_view<'a, T: CudaDType>(
    s: &'a CudaStorage,
    l: &Layout,
    dim: usize,
) -> Result<Option<(CudaView<'a, T>, usize)>> {
    let (dims, stride) = (l.dims(), l.stride());
    if dim == 0 || dim >= dims.len() {
        return Ok(None);
    }
    // Row-major from `dim` on.
    let mut expect = 1;
    for i in (dim..dims.len()).rev() {
        if stride[i] != expect {
            return Ok(None);
        }
        expect *= dims[i];
    }
    let row = stride[dim];
    if row == 0 || stride[dim - 1] % row != 0 || stride[dim - 1] / row < dims[dim] {
        return Ok(None);
    }
    let capacity = stride[dim - 1] / row;
    // Row-major before it, with `capacity` in place of the keys.
    for i in 0..dim - 1 {
        if stride[i] != stride[i + 1] * dims[i + 1] {
            return Ok(None);
        }
    }
    let len = dims[0] * stride[0];
    let slice = s.as_cuda_slice::<T>()?;
    let start = l.start_offset();
    if start + len > slice.len() {
        return Ok(None);
    }
    Ok(Some((slice.slice(start..start + len), capacity)))
}
