//! A generation step on CUDA tensors: `dma::cuda::DecodeState::step_into` on candle's buffers,
//! k and v read in place (views of their storage) instead of stacked and copied like the op's.

use super::{alloc_out_lse, cuda, device, dtype_error, tensor, view};
use crate::Error;
use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::cuda_backend::CudaDType;
use candle_core::{DType, Result, Tensor};
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
    let problem = shape.problem().map_err(Error::from)?;
    // No copy where a tensor is already dense, as the filled prefix of a cache of one sequence
    // is; the bias of such a cache (`[1, Hb, capacity]` narrowed) is copied, Hb floats per key.
    let [q, k, v, bias] = [q, k, v, bias].map(|x| x.contiguous());
    let (q, k, v, bias) = (q?, k?, v?, bias?);
    let (qs, lq) = q.storage_and_layout();
    let (ks, lk) = k.storage_and_layout();
    let (vs, lv) = v.storage_and_layout();
    let (bs, lb) = bias.storage_and_layout();
    let qv = view::<T>("q", cuda(&qs)?, lq)?;
    let kv = view::<T>("k", cuda(&ks)?, lk)?;
    let vv = view::<T>("v", cuda(&vs)?, lv)?;
    let bv = view::<f32>("bias", cuda(&bs)?, lb)?;
    // SAFETY: the step writes every element of out and lse.
    let (mut out, mut lse) = unsafe { alloc_out_lse::<T>(&cdev, &problem)? };
    state
        .step_into(&dev, params, shape, &qv, &kv, &vv, &bv, &mut out, &mut lse)
        .map_err(Error::from)?;
    Ok(tensor(out, q.dims(), &cdev))
}
