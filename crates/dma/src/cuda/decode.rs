//! Decoding (few queries per sequence, long cache). Cost is nearly flat in the context length:
//! the bias (4 bytes a key) is the only thing read for every key.
//!
//! - A decode step (at most one query per sequence) on sm_90 runs as one launch
//!   (kernels/decode_fused.cu): a thread-block cluster per (sequence, bias head) selects the
//!   top-w keys over the cached biases and attends to them, the CTAs trading histograms, kept
//!   keys and partial outputs through distributed shared memory.
//! - Otherwise (up to [`DECODE_MAX_Q`] queries, other GPUs, a context too long for the fused
//!   kernel's shared memory, or `DMA_CUDA_NO_FUSED_DECODE` set): the top-w selection over the
//!   cached biases runs over many CTAs (kernels/decode_select.cu), then the forward kernel reads
//!   only the kept K/V rows, each (sequence, query head) split over several CTAs whose partials
//!   are combined (split-K).
//!
//! Generation loops can carry each sequence's kept keys from one step to the next instead
//! (decode_state.rs, [`DecodeState`](super::DecodeState)): a step then reads only the new keys'
//! biases and the kept rows.

use super::buffers::{alloc_uninit, DeviceInput};
use super::compile::KernelSpec;
use super::device::Device;
use super::error;
use super::forward::{self, causal_arg, CudaElement};
use super::plan::{self, Plan, BLOCK_M, BLOCK_N, LIST_BLOCKS, SEQ_INFO_INTS};
use super::select::{self, DevicePlan, Selection};
use crate::{cpu, DmaError, Params, Problem, Result, Shape};
use cudarc::driver::sys::CUdevice_attribute_enum as DevAttr;
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

const SOURCE: &str = include_str!("kernels/decode_select.cu");
pub(super) const FUSED_SOURCE: &str = include_str!("kernels/decode_fused.cu");
/// Keys per CTA of the decode selection (`DSEL_CHUNK`).
const CHUNK: usize = 4096;
const THREADS: u32 = 256;
/// u64 words of one slot's `DecodeState` (kernels/decode_select.cu).
const STATE_WORDS: usize = 5;

/// The most query rows a sequence may have for the decode path; longer ones take the general
/// forward (same result).
pub const DECODE_MAX_Q: usize = BLOCK_M;

/// The decode-selection kernels (one radix pass, the gather) for a masking.
pub(crate) fn specs(causal: bool) -> [KernelSpec; 2] {
    let c = causal_arg(causal);
    [
        KernelSpec::new(SOURCE, "DMA_DECODE_PASS_KERNEL", "dma_decode_pass", &[c]),
        KernelSpec::new(
            SOURCE,
            "DMA_DECODE_GATHER_KERNEL",
            "dma_decode_gather",
            &[c],
        ),
    ]
}

/// CTAs per cluster of the fused decode (`C` of kernels/decode_fused.cu; at most
/// `DEC_MAX_CLUSTER`). 16 is above the portable 8, so the kernel opts in.
pub(super) const CLUSTER: usize = 16;
/// Warps of a fused-decode CTA and query heads per attention pass (`DEC_WARPS`, `DEC_HEADS`).
pub(super) const FUSED_WARPS: usize = 8;
pub(super) const FUSED_HEADS: usize = 4;
/// Static shared memory of the fused decode (`DecodeShared`), rounded up.
pub(super) const FUSED_STATIC_SMEM: usize = 10496;

/// The fused decode kernel for an element type and head dim.
pub(crate) fn fused_spec<T: CudaElement>(head_dim: usize) -> Result<KernelSpec> {
    let (d, _) = forward::spec_args(head_dim, false)?;
    Ok(KernelSpec::new(
        FUSED_SOURCE,
        "DMA_DECODE_FUSED_KERNEL",
        "dma_decode_fused",
        &[(T::SHORT, T::C_TYPE), d, ("c16", "16")],
    ))
}

/// The fused decode's shared-memory layout (kernels/decode_fused.cu, in 4-byte words): each CTA's
/// chunk of keys, its kept list (at most min(chunk, w)), its share of the cluster's kept keys,
/// the warps' partials and the CTA's partial per query head of a slot.
struct FusedLayout {
    /// The window clamped to the longest sequence with a query (fits in i32 when that does).
    window: usize,
    chunk: usize,
    kept_cap: usize,
    share_cap: usize,
    smem: usize,
}

fn fused_layout(params: &Params, problem: &Problem) -> FusedLayout {
    let longest = problem
        .sequences
        .iter()
        .filter(|s| s.nq > 0)
        .map(|s| s.nk)
        .max()
        .unwrap_or(0);
    let window = params.window.min(longest).max(1);
    let chunk = longest.div_ceil(CLUSTER).max(1);
    let kept_cap = chunk.min(window);
    let share_cap = window.div_ceil(CLUSTER);
    let row = problem.head_dim + 2;
    let group = problem.heads.q / problem.heads.bias;
    let words = chunk + kept_cap + share_cap + (FUSED_WARPS * FUSED_HEADS + group) * row;
    FusedLayout {
        window,
        chunk,
        kept_cap,
        share_cap,
        smem: 4 * words,
    }
}

/// The fused layout when the fused decode runs this call: every sequence has at most one
/// query, the GPU has clusters (sm_90 and newer), the chunks fit in shared memory, and
/// `DMA_CUDA_NO_FUSED_DECODE` is unset.
fn fused_plan(dev: &Device, params: &Params, problem: &Problem) -> Option<FusedLayout> {
    if dev.arch().major < 9
        || problem.sequences.iter().any(|s| s.nq > 1)
        || std::env::var_os("DMA_CUDA_NO_FUSED_DECODE").is_some()
    {
        return None;
    }
    let layout = fused_layout(params, problem);
    (layout.smem + FUSED_STATIC_SMEM <= dev.max_shared_memory()).then_some(layout)
}

/// The fused decode step (kernels/decode_fused.cu): one launch per LAUNCH_SEQS sequences, then
/// the bias check (a synchronisation, then the mapped words the CTAs wrote).
#[allow(clippy::too_many_arguments)]
fn decode_fused<T: CudaElement>(
    dev: &Device,
    params: &Params,
    problem: &Problem,
    layout: &FusedLayout,
    (q, k, v): (
        &impl DeviceInput<T>,
        &impl DeviceInput<T>,
        &impl DeviceInput<T>,
    ),
    bias: &impl DeviceInput<f32>,
    out: &mut CudaSlice<T>,
    lse: &mut CudaSlice<f32>,
) -> Result<()> {
    let (q, k, v, bias) = (&q.view(), &k.view(), &v.view(), &bias.view());
    let f = dev.function_with(&fused_spec::<T>(problem.head_dim)?, layout.smem, true)?;
    let mut ints = slot_ints(problem)?.to_vec();
    for x in [
        layout.window,
        layout.chunk,
        layout.kept_cap,
        layout.share_cap,
    ] {
        ints.push(int(x)?);
    }
    let scale_log2 = params.scale_for(problem.head_dim) * std::f32::consts::LOG2_E;
    let rows = plan::seq_table(problem)?;
    run_slots(
        dev,
        problem,
        bias,
        (CLUSTER, layout.smem),
        |cfg, first, flag_ptr| {
            let seqs = &rows[first..rows.len().min(first + LAUNCH_SEQS)];
            let mut table = LaunchSeqs([[0; SEQ_INFO_INTS]; LAUNCH_SEQS]);
            table.0[..seqs.len()].copy_from_slice(seqs);
            let seq_base = int(first)?;
            let mut l = dev.stream().launch_builder(&f);
            l.arg(q)
                .arg(k)
                .arg(v)
                .arg(bias)
                .arg(&table)
                .arg(&seq_base)
                .arg(&mut *out)
                .arg(&mut *lse)
                .arg(&flag_ptr);
            for x in &ints {
                l.arg(x);
            }
            l.arg(&scale_log2);
            // SAFETY: matches kernels/decode_fused.cu's signature; the buffers were checked against
            // the geometry (forward::check_buffers), the shared memory holds `layout` (chunks of the
            // longest sequence with a query), every sequence has at most one query, and the flag
            // words cover every CTA of the launch (run_slots).
            unsafe { l.launch(cfg) }.map_err(error::driver)?;
            Ok(())
        },
    )
}

pub(super) fn int(x: usize) -> Result<i32> {
    i32::try_from(x).map_err(|_| DmaError::TooLong(x))
}

/// The head counts and strides both decode-step kernels take after their buffers: Hq, Hkv, Hb,
/// the bias's and lse's head strides.
pub(super) fn slot_ints(problem: &Problem) -> Result<[i32; 5]> {
    let h = &problem.heads;
    Ok([
        int(h.q)?,
        int(h.kv)?,
        int(h.bias)?,
        int(problem.bias_head_stride)?,
        int(problem.lse_head_stride)?,
    ])
}

/// Runs a decode-step kernel over every sequence: `launch(cfg, first, flags)` launches it for
/// sequences [first, first + LAUNCH_SEQS) (`ctas_per_slot` CTAs per sequence and bias head,
/// `flags` the device address of a mapped word per CTA); then waits for the GPU and reports the
/// first non-finite bias the CTAs wrote there.
pub(super) fn run_slots(
    dev: &Device,
    problem: &Problem,
    bias: &impl DeviceInput<f32>,
    (ctas_per_slot, smem): (usize, usize),
    mut launch: impl FnMut(LaunchConfig, usize, u64) -> Result<()>,
) -> Result<()> {
    let seqs = problem.sequences.len();
    let ctas_per_seq = ctas_per_slot * problem.heads.bias;
    dev.with_mapped_words(seqs * ctas_per_seq, |flags| {
        for first in (0..seqs).step_by(LAUNCH_SEQS) {
            let ctas = LAUNCH_SEQS.min(seqs - first) * ctas_per_seq;
            let cfg = LaunchConfig {
                grid_dim: (
                    u32::try_from(ctas).map_err(|_| DmaError::TooLong(ctas))?,
                    1,
                    1,
                ),
                block_dim: (FUSED_WARPS as u32 * 32, 1, 1),
                shared_mem_bytes: smem as u32,
            };
            launch(
                cfg,
                first,
                flags.device_ptr() + 8 * (first * ctas_per_seq) as u64,
            )?;
        }
        dev.stream().synchronize().map_err(error::driver)?;
        let flag = (0..seqs * ctas_per_seq)
            .map(|i| flags.read(i))
            .max()
            .unwrap_or(0);
        select::report_bad_bias(dev, problem, bias, flag)
    })
}

/// Sequences per fused-decode launch (`DEC_SEQS` in kernels/decode_fused.cu).
pub(super) const LAUNCH_SEQS: usize = 32;

/// The sequence table of one fused-decode launch, passed by value (`DecodeSeqs`).
#[repr(C)]
#[derive(Clone, Copy)]
struct LaunchSeqs([[i32; SEQ_INFO_INTS]; LAUNCH_SEQS]);

// SAFETY: plain i32s, laid out as the kernel's `DecodeSeqs`.
unsafe impl cudarc::driver::DeviceRepr for LaunchSeqs {}

/// The tables of a decode call: per sequence, causal: an anchor list (the w best keys before the
/// first query, rows [0, 0)) and the real list after it (rows [0, nq)); not causal: one list.
/// `Plan` is reused, so the forward and select.cu's dependent kernel read it unchanged.
pub(super) struct DecodePlan {
    pub(super) plan: Plan,
    /// The lists the decode selection fills (anchors when causal), one per sequence.
    targets: Vec<i32>,
    /// The largest number of keys before a sequence's first query.
    max_before: usize,
}

pub(super) fn decode_plan(params: &Params, problem: &Problem) -> Result<DecodePlan> {
    let mut plan = Plan::new(params, problem)?;
    let (mut lists, mut blocks, mut targets, mut dependents) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut max_before = 0;
    for (i, s) in problem.sequences.iter().enumerate() {
        let before = if params.causal {
            s.nk.saturating_sub(s.nq)
        } else {
            s.nk
        };
        max_before = max_before.max(before);
        let first = int(lists.len() / 4)?;
        targets.push(first);
        if params.causal {
            lists.extend([int(i)?, 0, 0, -1]);
            dependents.push(first + 1);
            lists.extend([int(i)?, 0, int(s.nq)?, first]);
        } else {
            lists.extend([int(i)?, 0, int(s.nq)?, -1]);
        }
        if s.nq > 0 {
            // The block of the sequence's rows names its list at place 0 (plan.rs).
            let list = *dependents.last().unwrap_or(&first) as usize;
            blocks.extend([int(i)?, 0, int(s.nq)?, int(list * LIST_BLOCKS)?]);
        }
    }
    plan.lists = lists;
    plan.blocks = blocks;
    plan.anchors = targets.clone();
    plan.dependents = dependents;
    Ok(DecodePlan {
        plan,
        targets,
        max_before,
    })
}

/// DMA forward for decoding on device buffers, into caller-provided out and lse: the same result
/// as [`forward_into`](super::forward_into), faster when every sequence has few queries
/// (at most [`DECODE_MAX_Q`]; otherwise it runs the general forward). A generation step, at most
/// one query per sequence, is one kernel launch on sm_90 (an H100 at 128K cached keys, Hq = 32,
/// Hkv = 8, D = 128, w = 2048: ~0.045 ms a call, docs/benchmarks.md).
///
/// Returns after the GPU has finished (it synchronises the stream to report a non-finite bias as
/// [`DmaError::NonFiniteBias`]). A generation loop is faster
/// with a [`DecodeState`](super::DecodeState), which carries the kept keys between steps.
#[allow(clippy::too_many_arguments)]
pub fn decode_into<T: CudaElement>(
    dev: &Device,
    params: &Params,
    shape: &Shape,
    q: &impl DeviceInput<T>,
    k: &impl DeviceInput<T>,
    v: &impl DeviceInput<T>,
    bias: &impl DeviceInput<f32>,
    out: &mut CudaSlice<T>,
    lse: &mut CudaSlice<f32>,
) -> Result<()> {
    params.validate()?;
    let problem = shape.problem()?;
    if problem.sequences.iter().any(|s| s.nq > DECODE_MAX_Q) {
        return super::forward_into(dev, params, shape, q, k, v, bias, out, lse);
    }
    forward::check_buffers(&problem, q, k, v, bias, out, lse)?;
    forward::spec::<T>(problem.head_dim, params.causal)?;
    if let Some(layout) = fused_plan(dev, params, &problem) {
        return decode_fused(dev, params, &problem, &layout, (q, k, v), bias, out, lse);
    }
    let dp = decode_plan(params, &problem)?;
    if dp.plan.num_blocks() == 0 {
        return Ok(());
    }
    let tables = DevicePlan::upload(dev, &dp.plan)?;
    let sel = select_decode(dev, params, &problem, &dp, &tables, bias)?;
    let splits = splits_for(dev, &dp.plan, &problem)?;
    let mut part = if splits > 1 {
        let n = forward::split_part_len(&problem, splits);
        // SAFETY: the forward writes every partial the combine reads (each split, row and head).
        Some(unsafe { alloc_uninit::<f32>(dev, "split-K partials", n)? })
    } else {
        None
    };
    forward::attend(
        dev,
        params,
        &problem,
        &dp.plan,
        &tables,
        &sel,
        None,
        (q, k, v),
        out,
        lse,
        part.as_mut().map(|part| (splits, part)),
        None,
    )?;
    // Last, so the GPU runs selection and attend back to back (Selection::check_bias: this waits
    // for the call's kernels).
    sel.check_bias(dev, &problem, bias)
}

/// CTAs per (sequence, query head): one wave (the forward kernel runs one CTA per SM), at most
/// one per tile of the list (docs/cuda-notes.md, decode).
fn splits_for(dev: &Device, plan: &Plan, problem: &Problem) -> Result<usize> {
    let sms = dev
        .context()
        .attribute(DevAttr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(error::driver)?
        .max(1) as usize;
    let ctas = plan.num_blocks() * problem.heads.q;
    let tiles = plan.cap / BLOCK_N;
    Ok((sms / ctas.max(1)).clamp(1, tiles.max(1)))
}

/// The decode selection: the radix passes over all cached keys, the gather, and (causal) the
/// dependent lists of select.cu.
pub(super) fn select_decode(
    dev: &Device,
    params: &Params,
    problem: &Problem,
    dp: &DecodePlan,
    tables: &DevicePlan,
    bias: &impl DeviceInput<f32>,
) -> Result<Selection> {
    let bias = &bias.view();
    let plan = &dp.plan;
    let hb = problem.heads.bias;
    let mut sel = select::alloc_selection(dev, params, problem, plan)?;
    let s = dev.stream();
    let seqs = dp.targets.len();
    let slots = seqs * hb;
    let chunks = dp.max_before.div_ceil(CHUNK).max(1);
    // State (STATE_WORDS u64), histogram (256 u32), arrival count (u32) and each chunk's kept
    // count (u32) per slot.
    let words = slots * STATE_WORDS + (slots * (257 + chunks)).div_ceil(2);
    let mut ws = s
        .alloc_zeros::<u64>(words)
        .map_err(error::alloc("decode selection workspace", words * 8))?;
    let [pass_k, gather_k] = specs(params.causal).map(|sp| dev.function(&sp));
    let (pass_k, gather_k) = (pass_k?, gather_k?);
    let grid = (chunks as u32, seqs as u32, hb as u32);
    let (window, cap, heads, stride, total_q) = (
        plan.window,
        plan.cap as i32,
        hb as i32,
        problem.bias_head_stride as i32,
        problem.total_q as i32,
    );
    // The digits of a rank: 4 of the bias, then those of the index that can be non-zero.
    let max_nk = problem.sequences.iter().map(|s| s.nk).max().unwrap_or(0);
    let index_bits = usize::BITS - max_nk.saturating_sub(1).max(1).leading_zeros();
    let low = index_bits.div_ceil(8) as i32;
    let shifts: Vec<i32> = [56, 48, 40, 32]
        .into_iter()
        .chain((0..low).rev().map(|d| 8 * d))
        .collect();
    let cfg = LaunchConfig {
        grid_dim: grid,
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let seqs = tables.seqs();
    if dp.max_before > window as usize {
        for (pass, &shift) in shifts.iter().enumerate() {
            let (first, last) = (i32::from(pass == 0), i32::from(pass + 1 == shifts.len()));
            let mut l = s.launch_builder(&pass_k);
            l.arg(bias)
                .arg(&seqs)
                .arg(&window)
                .arg(&heads)
                .arg(&stride)
                .arg(&mut ws)
                .arg(&shift)
                .arg(&first)
                .arg(&last);
            // SAFETY: matches kernels/decode_select.cu's pass kernel; the workspace holds every
            // slot's state, histogram and arrival count (grid.y sequences x Hb slots).
            unsafe { l.launch(cfg) }.map_err(error::driver)?;
        }
    }
    let bad_bias = sel.bad_bias.device_ptr();
    let mut l = s.launch_builder(&gather_k);
    l.arg(bias)
        .arg(&seqs)
        .arg(&window)
        .arg(&cap)
        .arg(&heads)
        .arg(&stride)
        .arg(&total_q)
        .arg(&mut ws)
        .arg(&mut sel.cand)
        .arg(&mut sel.count)
        .arg(&mut sel.thr)
        .arg(&bad_bias);
    // SAFETY: matches the gather kernel; each slot writes at most min(P, w) <= cap keys into its
    // own list (tau is the w-th best rank, ranks are distinct).
    unsafe { l.launch(cfg) }.map_err(error::driver)?;
    if params.causal {
        select::launch_lists(
            dev, params, problem, plan, tables, bias, &mut sel, true, None,
        )?;
    }
    Ok(sel)
}

/// Decoding from host slices, like [`forward_host`](super::forward_host): uploads, runs
/// [`decode_into`] on outputs poisoned with NaN, and copies out and lse back.
pub fn decode_host<T: CudaElement>(
    dev: &Device,
    params: &Params,
    shape: &Shape,
    inputs: &cpu::Inputs<'_, T>,
) -> Result<cpu::Forward<T>> {
    forward::run_host(dev, params, shape, inputs, decode_into::<T>)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Heads;

    /// The fused decode's clusters run in one wave only when two CTAs fit on an SM (228 KiB of
    /// shared memory, 1 KiB of it reserved per CTA): at one CTA per SM not every GPC holds a
    /// 16-CTA cluster (docs/cuda-notes.md, stop 16). The benchmark's shape must stay within that.
    #[test]
    fn fused_decode_fits_two_ctas_per_sm_at_128k() {
        const PER_CTA: usize = 228 * 1024 / 2 - 1024;
        for (hq, hkv, d) in [(32, 8, 128), (32, 8, 64), (16, 16, 128)] {
            let problem = Shape::dense(1, 1, 131072, Heads::new(hq, hkv), d)
                .problem()
                .unwrap();
            let layout = fused_layout(&Params::new(2048), &problem);
            let bytes = layout.smem + FUSED_STATIC_SMEM;
            assert!(
                bytes <= PER_CTA,
                "Hq={hq} Hkv={hkv} D={d}: {bytes} bytes a CTA"
            );
        }
    }
}
