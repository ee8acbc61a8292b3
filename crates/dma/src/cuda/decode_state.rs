//! Generation steps over a running kept set. SPEC.md: ranks of cached keys never change and a key
//! that drops out of the top w never comes back, so the w best of a cache that grew by one key
//! are the w best of (the previous w best, the new key). A [`DecodeState`] keeps, for each
//! sequence and bias head, the ranks of its kept keys on the device; a step inserts the new keys
//! and attends to the set in one launch (kernels/decode_fused.cu, `decode_step_body`), reading
//! the set, its w K/V rows and the new keys' biases instead of every cached bias: its cost does
//! not grow with the context (an H100 at 128K cached keys, Hq = 32, Hkv = 8, D = 128, w = 2048:
//! 0.023-0.029 ms a step against 0.043-0.046 ms for [`decode_into`], docs/benchmarks.md).
//!
//! The result is [`decode_into`]'s, the same kept keys; like it, the same bits on every run.
//! The state is rebuilt from the whole cache (the decode selection) on its first step and
//! whenever it cannot be carried: another stream, the batch, heads, head dim or window changed,
//! a cache is shorter than what the state has seen (a new cache) or grew by more than
//! [`STEP_MAX_NEW`] keys, or the last step failed. Calls the kept set does not serve (a sequence
//! without exactly one query, a GPU older than sm_90, a window too large for shared memory,
//! `DMA_CUDA_NO_DECODE_STATE` set) run [`decode_into`] instead.
//!
//! [`decode_into`]: super::decode_into

use super::buffers::{self, DeviceInput};
use super::compile::KernelSpec;
use super::decode::{self, run_slots, slot_ints, LAUNCH_SEQS};
use super::device::Device;
use super::error;
use super::forward::{self, CudaElement};
use super::plan::{self, BLOCK_N, SEQ_INFO_INTS};
use super::select::DevicePlan;
use crate::{Params, Problem, Result, Shape};
use cudarc::driver::{CudaSlice, CudaView, PushKernelArg};
use std::sync::Arc;

/// The most new keys a step inserts one by one (`DEC_STEP_MAX_NEW` in kernels/decode_fused.cu);
/// a cache that grew by more is selected again from scratch (each insertion past w costs a
/// minimum over the set).
pub const STEP_MAX_NEW: usize = 64;

/// The step kernel for an element type and head dim.
pub(crate) fn step_spec<T: CudaElement>(head_dim: usize) -> Result<KernelSpec> {
    let (d, _) = forward::spec_args(head_dim, false)?;
    let split = SPLIT.to_string();
    Ok(KernelSpec::new(
        decode::FUSED_SOURCE,
        "DMA_DECODE_STEP_KERNEL",
        "dma_decode_step",
        &[(T::SHORT, T::C_TYPE), d, (&format!("s{split}"), &split)],
    ))
}

/// CTAs per (sequence, bias head) of a step (`S` of the step kernel).
const SPLIT: usize = 16;

/// Each sequence's kept keys for its next generation step, carried on the device between steps.
/// One state per batch of caches (per layer of a model); see the module docs for when it is
/// rebuilt. The caller keeps the cache's contract (SPEC.md): keys are only appended, and a
/// cached key's bias never changes.
///
/// ```no_run
/// # use dma::{cuda, Heads, Params, Shape};
/// # fn main() -> dma::Result<()> {
/// # let dev = cuda::Device::new(0)?;
/// # let (q, k, v, bias) = todo!();
/// # let (mut out, mut lse) = todo!();
/// let params = Params::new(2048);
/// let mut state = cuda::DecodeState::new();
/// for len in 4096..4100 {
///     // One query per sequence, over a cache of `len` keys (k, v, bias of that length).
///     let shape = Shape::dense(1, 1, len, Heads::new(32, 8), 128);
///     state.step_into::<half::bf16>(&dev, &params, &shape, &q, &k, &v, &bias, &mut out, &mut lse)?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Default)]
pub struct DecodeState {
    sets: Option<KeptSets>,
}

/// The kept sets of a batch: per (sequence, bias head) a list of ranks (`cap` apart) and a count;
/// and the step kernel's workspace: per slot SPLIT partials of each of its query heads, and a
/// counter of the CTAs done (zero between steps).
#[derive(Debug)]
struct KeptSets {
    window: usize,
    /// Query, kv and bias heads, and the head dim, the workspace was sized for.
    geometry: (usize, usize, usize, usize),
    cap: usize,
    /// Keys of each sequence the sets have seen.
    seen: Vec<usize>,
    ranks: CudaSlice<u64>,
    count: CudaSlice<u32>,
    parts: CudaSlice<f32>,
    arrivals: CudaSlice<u32>,
}

impl DecodeState {
    /// An empty state: its first step selects over the whole cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the kept sets (the next step selects over the whole cache), e.g. before the state
    /// serves another batch of caches of the same lengths.
    pub fn reset(&mut self) {
        self.sets = None;
    }

    /// A copy of the state, on its device and stream: a generation forked in two (beam search,
    /// speculative branches) carries one state each.
    pub fn try_clone(&self) -> Result<Self> {
        let Some(sets) = &self.sets else {
            return Ok(Self::new());
        };
        let s = sets.ranks.stream();
        Ok(DecodeState {
            sets: Some(KeptSets {
                ranks: s.clone_dtod(&sets.ranks).map_err(error::driver)?,
                count: s.clone_dtod(&sets.count).map_err(error::driver)?,
                parts: s.clone_dtod(&sets.parts).map_err(error::driver)?,
                arrivals: s.clone_dtod(&sets.arrivals).map_err(error::driver)?,
                seen: sets.seen.clone(),
                ..*sets
            }),
        })
    }

    /// The kept keys of each (sequence, bias head), ascending, `sequence * Hb + head`: the keys
    /// the last step attended to. None before a step (or after a failed one), and while steps
    /// run [`decode_into`](super::decode_into) instead (module docs). Waits for the GPU.
    pub fn kept_keys(&self) -> Result<Option<Vec<Vec<u32>>>> {
        let Some(sets) = &self.sets else {
            return Ok(None);
        };
        let s = sets.ranks.stream();
        let ranks = s.clone_dtoh(&sets.ranks).map_err(error::driver)?;
        let count = s.clone_dtoh(&sets.count).map_err(error::driver)?;
        let keys = count
            .iter()
            .enumerate()
            .map(|(slot, &n)| {
                let at = slot * sets.cap;
                let mut keys: Vec<u32> = ranks[at..at + n as usize]
                    .iter()
                    .map(|&r| r as u32)
                    .collect();
                keys.sort_unstable();
                keys
            })
            .collect();
        Ok(Some(keys))
    }

    /// One decode call, into caller-provided out and lse: the result of
    /// [`decode_into`](super::decode_into) for the same arguments, carrying the kept sets from
    /// the previous step where it can (module docs). Returns after the GPU has finished, like
    /// `decode_into`; on an error the sets are rebuilt at the next step.
    ///
    /// q, k, v and bias are whole slices or views ([`DeviceInput`]): a cache allocated with room
    /// to grow passes views of its filled prefix, read in place.
    #[allow(clippy::too_many_arguments)]
    pub fn step_into<T: CudaElement>(
        &mut self,
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
        let Some(smem) = step_smem(dev, params, &problem)? else {
            self.sets = None;
            return decode::decode_into(dev, params, shape, q, k, v, bias, out, lse);
        };
        let (q, k, v, bias) = (q.view(), k.view(), v.view(), bias.view());
        forward::check_buffers(&problem, &q, &k, &v, &bias, out, lse)?;
        let result = self.step(dev, params, &problem, smem, (&q, &k, &v), &bias, out, lse);
        if result.is_err() {
            self.sets = None;
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn step<T: CudaElement>(
        &mut self,
        dev: &Device,
        params: &Params,
        problem: &Problem,
        smem: usize,
        (q, k, v): (&CudaView<T>, &CudaView<T>, &CudaView<T>),
        bias: &CudaView<f32>,
        out: &mut CudaSlice<T>,
        lse: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let f = dev.function_with(&step_spec::<T>(problem.head_dim)?, smem, false)?;
        let sets = match self.sets.take() {
            Some(sets) if sets.carries(dev, params, problem) => sets,
            _ => KeptSets::select(dev, params, problem, bias)?,
        };
        let sets = self.sets.insert(sets);
        let mut ints = slot_ints(problem)?.to_vec();
        for x in [params.window, sets.cap, params.window.div_ceil(SPLIT)] {
            ints.push(decode::int(x)?);
        }
        let scale_log2 = params.scale_for(problem.head_dim) * std::f32::consts::LOG2_E;
        let rows = plan::seq_table(problem)?;
        let (ranks, count, seen) = (&mut sets.ranks, &mut sets.count, &sets.seen);
        let (parts, arrivals) = (&mut sets.parts, &mut sets.arrivals);
        run_slots(dev, problem, bias, (SPLIT, smem), |cfg, first, flag_ptr| {
            let last = rows.len().min(first + LAUNCH_SEQS);
            let mut table = StepSeqs {
                seqs: [[0; SEQ_INFO_INTS]; LAUNCH_SEQS],
                from: [0; LAUNCH_SEQS],
            };
            table.seqs[..last - first].copy_from_slice(&rows[first..last]);
            for (from, &seen) in table.from.iter_mut().zip(&seen[first..last]) {
                *from = seen as i32; // at most the sequence's nk, an i32 (seq_table)
            }
            let seq_base = first as i32; // a sequence count, below the grid's limit
            let mut l = dev.stream().launch_builder(&f);
            l.arg(q)
                .arg(k)
                .arg(v)
                .arg(bias)
                .arg(&table)
                .arg(&seq_base)
                .arg(&mut *ranks)
                .arg(&mut *count)
                .arg(&mut *parts)
                .arg(&mut *arrivals)
                .arg(&mut *out)
                .arg(&mut *lse)
                .arg(&flag_ptr);
            for x in &ints {
                l.arg(x);
            }
            l.arg(&scale_log2);
            // SAFETY: matches kernels/decode_fused.cu's step kernel; the buffers were checked
            // against the geometry, every sequence has one query, the sets hold `cap` ranks per
            // slot for every sequence and bias head (carries / select), at most `window` of them,
            // the workspace was sized for these heads and head dim with its counters at zero,
            // and the flag words cover every CTA of the launch (run_slots).
            unsafe { l.launch(cfg) }.map_err(error::driver)?;
            Ok(())
        })?;
        sets.seen = problem.sequences.iter().map(|s| s.nk).collect();
        Ok(())
    }
}

impl KeptSets {
    /// Whether these sets can be carried to `problem` on `dev`: the same stream (the sets' buffers
    /// are ordered on it), window, heads, head dim and batch, and each cache grew by at most
    /// STEP_MAX_NEW keys since.
    fn carries(&self, dev: &Device, params: &Params, problem: &Problem) -> bool {
        Arc::ptr_eq(self.ranks.stream(), dev.stream())
            && self.window == params.window
            && self.geometry == geometry(problem)
            && self.seen.len() == problem.sequences.len()
            && problem
                .sequences
                .iter()
                .zip(&self.seen)
                .all(|(s, &seen)| s.nk >= seen && s.nk - seen <= STEP_MAX_NEW)
    }

    /// The kept sets of every sequence's whole cache (the decode selection, not causal: a
    /// sequence's one query sees every key), reporting a non-finite bias.
    fn select(
        dev: &Device,
        params: &Params,
        problem: &Problem,
        bias: &CudaView<f32>,
    ) -> Result<KeptSets> {
        let all = params.causal(false);
        let mut dp = decode::decode_plan(&all, problem)?;
        // Room for w ranks in every list: the sets grow to w as keys arrive.
        dp.plan.cap = params.window.next_multiple_of(BLOCK_N);
        let tables = DevicePlan::upload(dev, &dp.plan)?;
        let sel = decode::select_decode(dev, &all, problem, &dp, &tables, bias)?;
        sel.check_bias(dev, problem, bias)?;
        let slots = problem.sequences.len() * problem.heads.bias;
        let group = problem.heads.q / problem.heads.bias;
        let n = slots * SPLIT * group * (problem.head_dim + 2);
        let s = dev.stream();
        Ok(KeptSets {
            window: params.window,
            geometry: geometry(problem),
            cap: dp.plan.cap,
            seen: problem.sequences.iter().map(|s| s.nk).collect(),
            ranks: sel.cand,
            count: sel.count,
            // SAFETY: each step's CTAs write the partials the last of them reads.
            parts: unsafe { buffers::alloc_uninit(dev, "decode step partials", n)? },
            arrivals: s
                .alloc_zeros(slots)
                .map_err(error::alloc("decode step counters", slots * 4))?,
        })
    }
}

fn geometry(problem: &Problem) -> (usize, usize, usize, usize) {
    let h = &problem.heads;
    (h.q, h.kv, h.bias, problem.head_dim)
}

/// The step kernel's dynamic shared memory (kernels/decode_fused.cu, `decode_step_body`): the
/// set (w ranks, rounded up to a pair), the warps' minima, the new keys' biases, the CTA's share
/// of the set, the warps' and the CTA's partials. None where the kept set does not serve this call (module docs).
fn step_smem(dev: &Device, params: &Params, problem: &Problem) -> Result<Option<usize>> {
    if dev.arch().major < 9
        || problem.sequences.iter().any(|s| s.nq != 1)
        || std::env::var_os("DMA_CUDA_NO_DECODE_STATE").is_some()
    {
        return Ok(None);
    }
    forward::spec_args(problem.head_dim, false)?;
    let row = problem.head_dim + 2;
    let group = problem.heads.q / problem.heads.bias;
    let bytes = 8 * (params.window.next_multiple_of(2) + decode::FUSED_WARPS)
        + 4 * (STEP_MAX_NEW
            + params.window.div_ceil(SPLIT)
            + (decode::FUSED_WARPS * decode::FUSED_HEADS + group) * row);
    // The step kernel's static shared memory is a few bytes, below the fused kernel's.
    Ok((bytes + decode::FUSED_STATIC_SMEM <= dev.max_shared_memory()).then_some(bytes))
}

/// The sequence table of one step launch, passed by value (`StepSeqs`): the `SeqInfo` rows, then
/// each sequence's first key the state has not seen.
#[repr(C)]
#[derive(Clone, Copy)]
struct StepSeqs {
    seqs: [[i32; SEQ_INFO_INTS]; LAUNCH_SEQS],
    from: [i32; LAUNCH_SEQS],
}

// SAFETY: plain i32s, laid out as the kernel's `StepSeqs`.
unsafe impl cudarc::driver::DeviceRepr for StepSeqs {}
