//! Selection on the GPU: for every list (causal: a run of query rows, `plan::causal_lists`, which
//! up to four blocks of the forward read; or a whole sequence) and bias head, the candidate keys
//! and each query row's threshold rank (kernels/select.cu).

use super::buffers::{self, alloc_uninit, DeviceInput};
use super::compile::KernelSpec;
use super::device::Device;
use super::error;
use super::forward::causal_arg;
use super::launch::{Args, Ready};
use super::mapped::LentWord;
use super::plan::{Plan, BLOCK_COUNTS, LIST_BLOCKS};
use crate::{DmaError, Params, Problem, Result};
use cudarc::driver::{CudaSlice, CudaView, LaunchConfig};

const SOURCE: &str = include_str!("kernels/select.cu");
/// Threads of a dependent list's CTA (`THREADS` of its kernel in select.cu).
const THREADS: u32 = 256;

/// Threads of an anchor's CTA (and of a non-causal list's). There are few anchors (at 32K, 16
/// per bias head) and each selects over up to N keys, so at 256 threads they filled a third of
/// the H100 for ~0.28 ms (ncu); with 1024 the forward at 32K took ~0.1 ms less
/// (docs/benchmarks.md, "Stop 18").
const ANCHOR_THREADS: u32 = 1024;

/// Threads of a selection CTA: of an anchor list, or of the lists after their anchors.
fn select_threads(from_anchor: bool) -> u32 {
    match from_anchor {
        true => THREADS,
        false => ANCHOR_THREADS,
    }
}

/// The selection kernel for causal or non-causal masking, for anchor lists (from all earlier
/// keys) or the lists after them (from their anchor's list).
pub(crate) fn spec(causal: bool, from_anchor: bool) -> KernelSpec {
    let c = causal_arg(causal);
    let a = if from_anchor {
        ("dependent", "true")
    } else {
        ("anchor", "false")
    };
    let threads = select_threads(from_anchor).to_string();
    KernelSpec::new(
        SOURCE,
        "DMA_SELECT_KERNEL",
        "dma_select",
        &[c, a, (&format!("t{threads}"), &threads)],
    )
}

/// The kept-key structure of one call, on the device. O(N·w / LIST_M) memory, no Nq x Nk.
#[derive(Debug)]
pub struct Selection {
    /// `[lists, Hb, cap]` the candidate keys as ranks (`dma::selection::rank`: the key's index
    /// within its sequence in the low 32 bits, order-preserving bias bits above).
    pub(crate) cand: CudaSlice<u64>,
    /// `[lists, Hb]` number of keys of each list.
    pub(crate) count: CudaSlice<u32>,
    /// `[lists, Hb, LIST_BLOCKS, BLOCK_COUNTS]` the counts of each block of `plan::BLOCK_M` rows
    /// of each list (`DMA_BLOCK_COUNTS` in kernels/common.cu): how many of the list's keys its
    /// rows can see (causal: a block before the list's last stops before the next blocks' own
    /// keys), and the run of keys before the list's first row that neither its rows nor later
    /// ones keep (head, skip). Written by select.cu; the decode selection's gathered lists leave
    /// it unwritten, and nothing reads it there (their keys all precede their rows).
    pub(crate) block_counts: CudaSlice<u32>,
    /// `[Hb, total_q]` threshold rank of each query row (see `dma::selection::rank`); a row keeps
    /// key j iff rank_j >= threshold (and j <= its position when causal).
    pub(crate) thr: CudaSlice<u64>,
    /// One u64 the selection kernels set when they read a non-finite bias: 0, or the complement
    /// of `(sequence * Hb + bias head) << 32 | key` of the first one in the CPU backend's order
    /// (`dma_check_bias` in kernels/common.cu). Mapped host memory: the call reads it without a
    /// copy once its kernels have finished.
    pub(crate) bad_bias: LentWord,
    /// `[lists, Hb, LIST_BLOCKS]` how many keys at the front of each list every row of each of
    /// its blocks that keeps anything keeps (the block's "sure" keys: select.cu orders a causal
    /// list so that each block's are a prefix; every key of a non-causal list). Written by
    /// select.cu, not by the decode selection.
    pub(crate) sure: CudaSlice<u32>,
    pub(crate) cap: usize,
    /// What it was made for: (window, causal, lists, Hb, total_q), checked on reuse.
    made_for: (usize, bool, usize, usize, usize),
}

/// What a selection holds, copied to the host (for tests and inspection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSelection {
    /// Candidate ranks; `rank as u32` is the key index.
    pub cand: Vec<u64>,
    pub count: Vec<u32>,
    /// `[lists, Hb, LIST_BLOCKS, BLOCK_COUNTS]` for each block of [`BLOCK_M`](super::BLOCK_M)
    /// rows of each causal list: how many of the list's keys its rows can see, and `head`,
    /// `skip`: the list's keys `[head, head + skip)` precede its first row and are kept by none of
    /// the block's rows nor of the list's later rows.
    pub block_counts: Vec<u32>,
    pub thr: Vec<u64>,
    /// Capacity of each list in `cand`.
    pub cap: usize,
}

impl Selection {
    /// Checks that this selection was made for `params` and `problem` (their geometry: the
    /// bias values themselves cannot be checked and must be the same).
    pub(crate) fn check(&self, params: &Params, problem: &Problem, plan: &Plan) -> Result<()> {
        if self.fits(params, problem, plan) {
            Ok(())
        } else {
            Err(DmaError::SelectionMismatch(format!(
                "made for (window, causal, lists, bias heads, total_q) = {:?}, this call needs {:?}",
                self.made_for,
                made_for(params, problem, plan)
            )))
        }
    }

    /// Whether this selection's buffers have the geometry of a call's (so a new selection for
    /// it may be made in them).
    fn fits(&self, params: &Params, problem: &Problem, plan: &Plan) -> bool {
        self.made_for == made_for(params, problem, plan) && self.cap == plan.cap
    }

    /// The CPU backend's error for a non-finite bias, if the selection kernels read one
    /// ([`DmaError::NonFiniteBias`], the first in the order sequence, bias head, key).
    ///
    /// Waits for everything enqueued on the stream so far, then reads the kernels' report from
    /// mapped host memory (no copy is enqueued: an 8-byte copy cost ~8 us). The device entry
    /// points call it last, after their kernels are enqueued, so the GPU never idles between
    /// them, but the calls no longer return before the GPU has finished (the host's work for
    /// the next call cannot overlap this call's kernels; for decode, whose host work is a large
    /// part of a call, that is measurable). The value itself is copied only when there is an
    /// error. Keys of a sequence without queries are never read by the kernels
    /// and so not checked here (the host entry points check every value).
    pub(crate) fn check_bias(
        &self,
        dev: &Device,
        problem: &Problem,
        bias: &impl DeviceInput<f32>,
    ) -> Result<()> {
        let flag = self.bad_bias.read_synced()?;
        report_bad_bias(dev, problem, bias, flag)
    }

    /// Copies the selection to the host.
    pub fn to_host(&self, dev: &Device) -> Result<HostSelection> {
        Ok(HostSelection {
            cand: buffers::download(dev, &self.cand)?,
            count: buffers::download(dev, &self.count)?,
            block_counts: buffers::download(dev, &self.block_counts)?,
            thr: buffers::download(dev, &self.thr)?,
            cap: self.cap,
        })
    }
}

/// The error for the non-finite bias a kernel reported in `flag`, the value of its flag word
/// (`dma_check_bias` in kernels/common.cu; zero: none). Reads the value itself from `bias`.
pub(crate) fn report_bad_bias(
    dev: &Device,
    problem: &Problem,
    bias: &impl DeviceInput<f32>,
    flag: u64,
) -> Result<()> {
    if flag == 0 {
        return Ok(());
    }
    let code = !flag;
    let hb = problem.heads.bias;
    let (slot, key) = ((code >> 32) as usize, (code & 0xffff_ffff) as usize);
    let (sequence, head) = (slot / hb, slot % hb);
    let seq = problem.sequences.get(sequence).ok_or_else(|| {
        DmaError::Cuda(format!(
            "bias check: bad flag {code:#x} (sequence {sequence})"
        ))
    })?;
    let at = problem.bias_range(seq, head).start + key;
    let value = dev
        .stream()
        .clone_dtoh(&bias.view().slice(at..at + 1))
        .map_err(error::driver)?
        .first()
        .copied()
        .unwrap_or(f32::NAN);
    Err(DmaError::NonFiniteBias {
        sequence,
        head,
        key,
        value,
    })
}

/// Device copies of a plan's tables, in one buffer so that a call uploads them with one copy
/// (decode is bound by the host's calls into the driver).
pub(crate) struct DevicePlan {
    buf: CudaSlice<i32>,
    /// Where each table starts in `buf` (seqs, lists, anchors, dependents, blocks), and the end.
    at: [usize; 6],
}

/// Table starts are multiples of 64 i32 (256 bytes), the alignment of a buffer of its own.
const TABLE_ALIGN: usize = 64;

impl DevicePlan {
    pub fn upload(dev: &Device, plan: &Plan) -> Result<DevicePlan> {
        let tables = [
            &plan.seqs,
            &plan.lists,
            &plan.anchors,
            &plan.dependents,
            &plan.blocks,
        ];
        let mut host = Vec::new();
        let mut at = [0; 6];
        for (i, table) in tables.into_iter().enumerate() {
            host.resize(host.len().next_multiple_of(TABLE_ALIGN), 0);
            at[i] = host.len();
            host.extend_from_slice(table);
        }
        at[5] = host.len();
        // Never empty: a zero-length copy is an error.
        host.push(0);
        let buf = dev
            .stream()
            .clone_htod(&host)
            .map_err(error::alloc("plan tables", host.len() * 4))?;
        Ok(DevicePlan { buf, at })
    }

    fn table(&self, i: usize) -> CudaView<'_, i32> {
        self.buf.slice(self.at[i]..self.at[i + 1])
    }

    pub fn seqs(&self) -> CudaView<'_, i32> {
        self.table(0)
    }

    pub fn lists(&self) -> CudaView<'_, i32> {
        self.table(1)
    }

    pub fn anchors(&self) -> CudaView<'_, i32> {
        self.table(2)
    }

    pub fn dependents(&self) -> CudaView<'_, i32> {
        self.table(3)
    }

    pub fn blocks(&self) -> CudaView<'_, i32> {
        self.table(4)
    }
}

fn alloc<T: cudarc::driver::DeviceRepr>(
    dev: &Device,
    what: &'static str,
    n: usize,
) -> Result<CudaSlice<T>> {
    // SAFETY: every element the kernels read is written by the selection kernel first.
    unsafe { alloc_uninit(dev, what, n.max(1)) }
}

fn made_for(params: &Params, problem: &Problem, plan: &Plan) -> (usize, bool, usize, usize, usize) {
    (
        params.window,
        params.causal,
        plan.num_lists(),
        problem.heads.bias,
        problem.total_q,
    )
}

/// The selection buffers of a plan (filled by the kernels).
pub(crate) fn alloc_selection(
    dev: &Device,
    params: &Params,
    problem: &Problem,
    plan: &Plan,
) -> Result<Selection> {
    let hb = problem.heads.bias;
    let lists = plan.num_lists();
    Ok(Selection {
        cand: alloc(dev, "candidate lists", lists * hb * plan.cap)?,
        count: alloc(dev, "candidate counts", lists * hb)?,
        block_counts: alloc(
            dev,
            "per-block counts",
            lists * hb * LIST_BLOCKS * BLOCK_COUNTS,
        )?,
        thr: alloc(dev, "row thresholds", hb * problem.total_q)?,
        bad_bias: dev.lend_word()?,
        cap: plan.cap,
        sure: alloc(dev, "sure-key counts", lists * hb * LIST_BLOCKS)?,
        made_for: made_for(params, problem, plan),
    })
}

/// Runs the selection kernels, into the device's spare selection buffers when they fit (see
/// [`Device::keep_spare_selection`]). A non-finite bias is recorded in `bad_bias`, for
/// [`Selection::check_bias`] once the caller has enqueued its other kernels. With `ready` (an
/// overlapped forward, launch.rs) the lists after their anchors start as anchor CTAs finish,
/// and every list's flag is set to the epoch when it is done.
pub(crate) fn run(
    dev: &Device,
    params: &Params,
    problem: &Problem,
    plan: &Plan,
    tables: &DevicePlan,
    bias: &impl DeviceInput<f32>,
    ready: Option<&Ready>,
) -> Result<Selection> {
    let mut sel = match dev.take_spare_selection()? {
        Some(mut spare) if spare.fits(params, problem, plan) => {
            spare.bad_bias.clear()?;
            spare
        }
        _ => alloc_selection(dev, params, problem, plan)?,
    };
    // Anchors first, then the lists that read their anchor's list (stream order, or each
    // waiting for its anchor's flag).
    launch_lists(
        dev, params, problem, plan, tables, bias, &mut sel, false, ready,
    )?;
    launch_lists(
        dev, params, problem, plan, tables, bias, &mut sel, true, ready,
    )?;
    Ok(sel)
}

/// Launches the selection of the anchor lists, or (`from_anchor`) of the lists after their
/// anchors: after the anchors' kernel has ended, or with `ready` as soon as its CTAs allow
/// (launch.rs), each list then waiting for its anchor's.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_lists(
    dev: &Device,
    params: &Params,
    problem: &Problem,
    plan: &Plan,
    tables: &DevicePlan,
    bias: &impl DeviceInput<f32>,
    sel: &mut Selection,
    from_anchor: bool,
    ready: Option<&Ready>,
) -> Result<()> {
    let bias = &bias.view();
    let hb = problem.heads.bias;
    let (ids, count) = if from_anchor {
        (tables.dependents(), plan.dependents.len())
    } else {
        (tables.anchors(), plan.anchors.len())
    };
    if count == 0 {
        return Ok(());
    }
    let f = dev.function(&spec(params.causal, from_anchor))?;
    let cfg = LaunchConfig {
        grid_dim: (
            u32::try_from(count * hb).map_err(|_| DmaError::TooLong(count * hb))?,
            1,
            1,
        ),
        block_dim: (select_threads(from_anchor), 1, 1),
        shared_mem_bytes: 0,
    };
    let (seqs, lists) = (tables.seqs(), tables.lists());
    let mut args = Args::new(dev);
    args.input(bias)
        .input(&seqs)
        .input(&lists)
        .input(&ids)
        .int(plan.window)
        .int(plan.cap as i32)
        .int(hb as i32)
        .int(problem.bias_head_stride as i32)
        .int(problem.total_q as i32)
        .output(&mut sel.cand)
        .output(&mut sel.count)
        .output(&mut sel.block_counts)
        .output(&mut sel.thr)
        .output(&mut sel.sure)
        .ptr(sel.bad_bias.device_ptr())
        .ready(ready);
    // SAFETY: the arguments match the kernel's signature (kernels/select.cu) and every
    // buffer holds what the plan's geometry indexes.
    unsafe { args.launch(&f, cfg, from_anchor && ready.is_some()) }
}
