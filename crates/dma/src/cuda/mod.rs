//! The CUDA backend (feature `cuda`): DMA on cudarc device buffers.
//!
//! Kernels are CUDA C++ (`kernels/*.cu`) compiled at run time by NVRTC for the GPU in hand
//! (sm_90a on H100, sm_80 and newer generally), specialised by element type, head dim and
//! masking, and cached per process and on disk (`DMA_KERNEL_CACHE`: a directory, or `off`;
//! by default `$XDG_CACHE_HOME/dma/kernels` or `~/.cache/dma/kernels`), so later processes skip
//! NVRTC. libcuda and libnvrtc are loaded at run time, so the crate builds on machines without
//! CUDA; a missing driver or device is a typed error.
//!
//! A call runs these kernels on the device's stream:
//! 1. selection (`kernels/select.cu`): for each list of [`LIST_M`] = 512 query rows (causal: four
//!    blocks of 128 rows share one; `DMA_CUDA_LIST_ROWS=128` or `256` make shorter lists, see
//!    [`list_rows`]) and bias head, the candidate keys (at most w + 512: the w best before the
//!    list's first row and those of the list's own keys some row keeps) and each row's threshold
//!    rank (two launches when causal: the anchor lists, then the lists that start from them);
//!    and, when causal, each block's "sure" keys (kept by every row of the block that keeps
//!    anything) at the list's front, so that the Hopper forward skips their keep test
//!    (`DMA_CUDA_NO_SURE_KEYS` turns the skipping off);
//! 2. forward: gathers the candidates' K/V rows into shared memory, runs QK^T and PV on the
//!    tensor cores with an online softmax that applies each row's keep test. On sm_90 at head
//!    dims 64 and 128 this is `kernels/forward_hopper.cu` (warpgroup MMAs, a producer warpgroup
//!    gathering for two consumer warpgroups); elsewhere `kernels/forward.cu` (mma.sync). The
//!    environment variable `DMA_CUDA_NO_WGMMA` forces the second (for A/B comparisons).
//!
//! On sm_90 a forward's kernels overlap (programmatic dependent launch, `launch.rs`): the lists
//! after their anchors start as anchor CTAs finish, and the forward as selection CTAs finish,
//! each CTA waiting for the one list it reads (`DMA_CUDA_NO_OVERLAP` launches them one after
//! another).
//!
//! Decoding ([`decode_into`]): a decode step (at most one query per sequence) on sm_90 is one
//! launch of `kernels/decode_fused.cu`, a thread-block cluster per (sequence, bias head) that
//! selects the top-w cached keys and attends to them; other calls run the selection over many CTAs
//! (`kernels/decode_select.cu`) and a split-K forward (`DMA_CUDA_NO_FUSED_DECODE` forces this).
//!
//! The backward ([`backward()`]) runs over the forward's selection: dq, dk, dv and dbias, dk and
//! dv through f32 scratch buffers (many blocks add into one key). On sm_90 at head dims 64 and
//! 128 it is `kernels/backward_hopper.cu` (the Hopper forward's structure, with dV = P^T dO and
//! dK = dS^T Q as warpgroup MMAs); elsewhere, and with `DMA_CUDA_NO_WGMMA`, `kernels/backward.cu`.
//!
//! The device entry points of the attention ([`forward_into`], [`decode_into`],
//! [`DecodeState::step_into`], [`backward_into`] and their allocating forms) read their inputs
//! as [`DeviceInput`]s: whole `CudaSlice`s or `CudaView`s of part of one (k and v as two halves
//! of one buffer, the filled prefix of a cache with room to grow), in place.
//!
//! Besides the attention, a few f32 kernels serve the layers around it in a model trained with
//! the op (dma-candle's `gather_rows`, `RmsNorm`, RoPE, `silu_mul` and `scale_add`):
//! [`scatter_add_rows`] (the backward of an embedding lookup), [`rms_norm_forward`] and
//! [`rms_norm_backward`], [`rope`], [`silu_mul_forward`] and [`silu_mul_backward`],
//! [`scale_add_forward`] and [`scale_add_backward`]; the loss's [`cross_entropy_forward`] and
//! [`cross_entropy_backward`]; and the optimiser's [`adamw_moment`] and [`adamw_update`].
//!
//! ```no_run
//! use dma::{cuda, Heads, Params, Shape};
//! use half::bf16;
//! # fn main() -> dma::Result<()> {
//! let dev = cuda::Device::new(0)?;
//! let shape = Shape::dense(1, 1024, 1024, Heads::new(16, 4), 128);
//! let q = vec![bf16::from_f32(0.1); 1024 * 16 * 128];
//! let kv = vec![bf16::from_f32(0.2); 1024 * 4 * 128];
//! let bias = vec![0.0f32; 4 * 1024];
//! let inputs = dma::cpu::Inputs { q: &q, k: &kv, v: &kv, bias: &bias };
//! let fwd = cuda::forward_host(&dev, &Params::new(256), &shape, &inputs)?;
//! assert_eq!(fwd.lse.len(), 16 * 1024);
//! # Ok(()) }
//! ```

mod backward;
mod buffers;
pub mod compile;
mod decode;
mod decode_state;
mod device;
mod error;
mod forward;
mod kernel_cache;
mod launch;
mod layers;
mod libs;
mod loss;
mod mapped;
mod optim;
mod plan;
mod plan_cache;
mod select;

pub use backward::{backward, backward_host, backward_into, BackwardInputs, DeviceGradients};
pub use buffers::DeviceInput;
pub use decode::{decode_host, decode_into, DECODE_MAX_Q};
pub use decode_state::{DecodeState, STEP_MAX_NEW};
pub use device::{Arch, Device};
pub use forward::{
    forward, forward_host, forward_into, forward_into_with_selection, select, select_partitioned,
    CudaElement, DeviceForward, HEAD_DIMS,
};
pub use layers::{
    rms_norm_backward, rms_norm_forward, rope, scale_add_backward, scale_add_forward,
    scatter_add_rows, silu_mul_backward, silu_mul_forward, MAX_ROW_WIDTH,
};
pub use loss::{cross_entropy_backward, cross_entropy_forward};
pub use optim::{adamw_moment, adamw_update, AdamWMoment, AdamWUpdate};
pub use plan::{causal_lists, list_rows, BLOCK_COUNTS, BLOCK_M, LIST_BLOCKS, LIST_M};
pub use select::{HostSelection, Selection};

/// Every kernel specialisation the backend may launch, for compiling ahead (tests, CI).
pub fn all_kernels() -> Vec<compile::KernelSpec> {
    let mut specs = Vec::new();
    for causal in [false, true] {
        specs.push(select::spec(causal, false));
        if causal {
            specs.push(select::spec(causal, true));
        }
        for &d in HEAD_DIMS {
            for spec in [
                forward::spec::<half::bf16>(d, causal),
                forward::spec::<half::f16>(d, causal),
                backward::spec::<half::bf16>(d, causal),
                backward::spec::<half::f16>(d, causal),
            ]
            .into_iter()
            .flatten()
            .chain(forward::hopper_spec::<half::bf16>(d, causal))
            .chain(forward::hopper_spec::<half::f16>(d, causal))
            .chain(backward::hopper_spec::<half::bf16>(d, causal))
            .chain(backward::hopper_spec::<half::f16>(d, causal))
            {
                specs.push(spec);
            }
        }
    }
    specs.extend(decode::specs(false));
    specs.extend(decode::specs(true));
    for &d in HEAD_DIMS {
        specs.extend(decode::fused_spec::<half::bf16>(d));
        specs.extend(decode::fused_spec::<half::f16>(d));
        specs.extend(decode_state::step_spec::<half::bf16>(d));
        specs.extend(decode_state::step_spec::<half::f16>(d));
    }
    for &d in HEAD_DIMS {
        for spec in [
            forward::combine_spec::<half::bf16>(d),
            forward::combine_spec::<half::f16>(d),
        ]
        .into_iter()
        .flatten()
        {
            specs.push(spec);
        }
    }
    specs.push(backward::convert_spec::<half::bf16>());
    specs.push(backward::convert_spec::<half::f16>());
    specs.extend(layers::specs());
    specs.extend(optim::specs());
    specs.extend(loss::specs());
    specs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every forward and backward kernel fits the 227 KiB of dynamic shared memory a CTA may opt
    /// into on sm_90 (the kernels static_assert the same bound on their own layout).
    #[test]
    fn shared_memory_fits_hopper() {
        const MAX_SMEM: usize = 227 * 1024;
        for &d in HEAD_DIMS {
            let (f, b) = (forward::smem_bytes(d), backward::smem_bytes(d));
            assert!(f <= MAX_SMEM, "forward D={d}: {f} bytes");
            assert!(b <= MAX_SMEM, "backward D={d}: {b} bytes");
        }
        for d in [64, 128] {
            let h = forward::hopper_smem_bytes(d);
            assert!(h <= MAX_SMEM, "Hopper forward D={d}: {h} bytes");
        }
    }
}
