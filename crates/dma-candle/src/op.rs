//! DMA as a candle custom op with backward.
//!
//! candle's custom ops take at most three tensors and their backward sees only the inputs, the
//! result and its gradient. So k and v travel stacked as one `kv` input `[2, B, Nk, Hkv, D]`
//! (`Tensor::stack`, whose backward splits the gradient again; k and v stay contiguous halves,
//! so the kernels read them in place), and the op keeps the forward's log-sum-exp for its
//! backward instead of recomputing the forward.

#[cfg(feature = "cuda")]
use crate::cuda;
use crate::{cpu, shape, Error};
use candle_core::{CpuStorage, CudaStorage, Device, Layout, Result, Shape, Tensor};
use dma::Params;
use std::sync::{Arc, Mutex, MutexGuard};

/// Dynamic Mask Attention of q `[B, Nq, Hq, D]` over k, v `[B, Nk, Hkv, D]` with the per-key
/// bias `[B, Hb, Nk]` (f32): out `[B, Nq, Hq, D]`, differentiable in q, k, v and bias.
///
/// q, k and v are f32, bf16 or f16 (all the same); any layout is accepted. `params` gives the
/// window, causality and scale (see SPEC.md for the exact function).
pub fn dma_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    params: &Params,
) -> Result<Tensor> {
    Ok(run(q, k, v, bias, params)?.0)
}

/// [`dma_attention`] that also returns the log-sum-exp of every row, `[B, Hq, Nq]` in f32
/// (`-inf` for a row that keeps no key). The lse carries no gradient.
pub fn dma_attention_with_lse(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    params: &Params,
) -> Result<(Tensor, Tensor)> {
    let (out, saved_forward) = run(q, k, v, bias, params)?;
    let lse = saved(&saved_forward)?
        .as_ref()
        .ok_or(Error::NoSavedForward)?
        .lse()
        .clone();
    Ok((out, lse))
}

fn run(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    params: &Params,
) -> Result<(Tensor, Arc<Mutex<Option<SavedForward>>>)> {
    check_inputs(q, k, v, bias)?;
    // candle 0.11's `cat` panics on an empty view that starts past the end of its storage (a
    // narrowed empty tensor); a fresh layout avoids that.
    let fresh = |t: &Tensor| match t.elem_count() {
        0 => t.force_contiguous(),
        _ => Ok(t.clone()),
    };
    let kv = Tensor::stack(&[fresh(k)?, fresh(v)?], 0)?;
    // The CUDA kernels read dense buffers; the CPU path gathers strided views itself.
    let (q, bias) = match q.device() {
        Device::Cpu => (q.clone(), bias.clone()),
        _ => (q.contiguous()?, bias.contiguous()?),
    };
    let saved_forward = Arc::new(Mutex::new(None));
    let op = DmaOp {
        params: *params,
        saved: saved_forward.clone(),
    };
    Ok((q.apply_op3(&kv, &bias, op)?, saved_forward))
}

/// The dense geometry of the op's inputs, checked: shapes (v like k) and dtypes (k and v like q).
pub(crate) fn check_inputs(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
) -> Result<dma::Shape> {
    let geometry = shape::dense(q.dims(), k.dims(), bias.dims())?;
    if v.dims() != k.dims() {
        return Err(Error::NotLike {
            name: "v",
            actual: v.dims().to_vec(),
            like: "k",
            expected: k.dims().to_vec(),
        }
        .into());
    }
    if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        let (name, actual) = if k.dtype() != q.dtype() {
            ("k", k.dtype())
        } else {
            ("v", v.dtype())
        };
        return Err(Error::DType {
            name,
            actual,
            expected: format!("{:?} like q", q.dtype()),
        }
        .into());
    }
    Ok(geometry)
}

/// The tensors the backward reads, in the op's layouts: q `[B, Nq, Hq, D]`, kv
/// `[2, B, Nk, Hkv, D]`, bias `[B, Hb, Nk]` (f32), out and dout like q.
pub(crate) struct Tensors<'a> {
    pub q: &'a Tensor,
    pub kv: &'a Tensor,
    pub bias: &'a Tensor,
    pub out: &'a Tensor,
    pub dout: &'a Tensor,
}

/// What a forward keeps for its backward.
enum SavedForward {
    /// The log-sum-exp `[B, Hq, Nq]` (f32).
    Cpu(Tensor),
    /// The lse and the selection (boxed: the device buffers are large next to a tensor handle).
    #[cfg(feature = "cuda")]
    Cuda(Box<cuda::Saved>),
}

impl SavedForward {
    fn lse(&self) -> &Tensor {
        match self {
            SavedForward::Cpu(lse) => lse,
            #[cfg(feature = "cuda")]
            SavedForward::Cuda(saved) => &saved.lse,
        }
    }
}

/// One application of the op: its parameters, and what its forward saved for its backward.
struct DmaOp {
    params: Params,
    saved: Arc<Mutex<Option<SavedForward>>>,
}

fn saved(s: &Mutex<Option<SavedForward>>) -> Result<MutexGuard<'_, Option<SavedForward>>> {
    // A panic elsewhere while the lock was held leaves the saved state intact.
    Ok(s.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

impl candle_core::CustomOp3 for DmaOp {
    fn name(&self) -> &'static str {
        "dma-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        lq: &Layout,
        kv: &CpuStorage,
        lkv: &Layout,
        bias: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let geometry = shape::dense(lq.dims(), shape::unpack_kv(lkv.dims())?, lb.dims())?;
        let (out, lse) = cpu::forward(&self.params, &geometry, (q, lq), (kv, lkv), (bias, lb))?;
        let dims = lq.dims(); // [B, Nq, Hq, D], as checked above
        let lse = Tensor::from_vec(lse, (dims[0], dims[2], dims[1]), &Device::Cpu)?;
        *saved(&self.saved)? = Some(SavedForward::Cpu(lse));
        Ok((out, lq.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        lq: &Layout,
        kv: &CudaStorage,
        lkv: &Layout,
        bias: &CudaStorage,
        lb: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let geometry = shape::dense(lq.dims(), shape::unpack_kv(lkv.dims())?, lb.dims())?;
        let (out, s) = cuda::forward(&self.params, &geometry, (q, lq), (kv, lkv), (bias, lb))?;
        *saved(&self.saved)? = Some(SavedForward::Cuda(Box::new(s)));
        Ok((out, lq.shape().clone()))
    }

    #[cfg(not(feature = "cuda"))]
    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        Err(Error::CudaNotEnabled.into())
    }

    fn bwd(
        &self,
        q: &Tensor,
        kv: &Tensor,
        bias: &Tensor,
        out: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let geometry = shape::dense(q.dims(), shape::unpack_kv(kv.dims())?, bias.dims())?;
        let tensors = Tensors {
            q,
            kv,
            bias,
            out,
            dout,
        };
        let guard = saved(&self.saved)?;
        let (dq, dkv, dbias) = match guard.as_ref().ok_or(Error::NoSavedForward)? {
            SavedForward::Cpu(lse) => cpu::backward(&self.params, &geometry, &tensors, lse)?,
            #[cfg(feature = "cuda")]
            SavedForward::Cuda(s) => cuda::backward(&self.params, &geometry, &tensors, s)?,
        };
        Ok((Some(dq), Some(dkv), Some(dbias)))
    }
}
