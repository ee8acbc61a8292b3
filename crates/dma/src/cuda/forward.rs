//! The forward on device buffers: selection, then the gather-and-attend kernel
//! (kernels/forward.cu).

use super::buffers::{self, alloc_uninit, DeviceInput};
use super::compile::KernelSpec;
use super::device::{Arch, Device};
use super::error;
use super::launch::{self, Args, Ready};
use super::plan::{Plan, BLOCK_M, BLOCK_N};
use super::select::{self, DevicePlan, Selection};
use crate::{cpu, DmaError, Element, Params, Problem, Result, Shape};
use cudarc::driver::{
    CudaFunction, CudaSlice, DeviceRepr, DeviceSlice, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use half::{bf16, f16};

// Both forward kernels take the softmax pieces of attend.cu.
const SOURCE: &str = concat!(
    include_str!("kernels/attend.cu"),
    include_str!("kernels/forward.cu")
);
const HOPPER_SOURCE: &str = concat!(
    include_str!("kernels/attend.cu"),
    include_str!("kernels/hopper.cu"),
    include_str!("kernels/forward_hopper.cu")
);
/// Threads of a forward.cu or backward CTA (8 warps x 16 rows).
pub(crate) const THREADS: u32 = (BLOCK_M * 2) as u32;

/// Head dims with a kernel (forward, backward, decode).
pub const HEAD_DIMS: &[usize] = &[32, 64, 96, 128, 256];
const HEAD_DIMS_TEXT: &str = "32, 64, 96, 128, 256";

/// An element type the CUDA kernels take: bf16 or f16.
pub trait CudaElement: Element + DeviceRepr + ValidAsZeroBits {
    /// The CUDA C++ type.
    const C_TYPE: &'static str;
    /// Short name in kernel symbols.
    const SHORT: &'static str;
}

impl CudaElement for bf16 {
    const C_TYPE: &'static str = "__nv_bfloat16";
    const SHORT: &'static str = "bf16";
}

impl CudaElement for f16 {
    const C_TYPE: &'static str = "__half";
    const SHORT: &'static str = "f16";
}

/// A template argument: its short name (in the kernel's symbol) and its C++ text.
pub(crate) type TemplateArg = (&'static str, &'static str);

/// The template arguments (short, C++) for a head dim and masking, or the typed error for a
/// head dim without a kernel.
pub(crate) fn spec_args(head_dim: usize, causal: bool) -> Result<(TemplateArg, TemplateArg)> {
    let d = match head_dim {
        32 => ("d32", "32"),
        64 => ("d64", "64"),
        96 => ("d96", "96"),
        128 => ("d128", "128"),
        256 => ("d256", "256"),
        _ => {
            return Err(DmaError::NoKernelForHeadDim {
                head_dim,
                supported: HEAD_DIMS_TEXT,
            })
        }
    };
    Ok((d, causal_arg(causal)))
}

/// A key-tile template argument (`BN` of the forward and backward kernels): a divisor of
/// `BLOCK_N`, the padding of the candidate lists.
pub(crate) fn tile_arg(keys: usize) -> TemplateArg {
    match keys {
        16 => ("n16", "16"),
        32 => ("n32", "32"),
        _ => ("n64", "64"),
    }
}

/// Keys per shared-memory tile of the forward: `BLOCK_N`, except 32 at D = 256, where a tile of
/// 64 scores beside O's 128 f32 accumulators would spill registers.
pub(crate) fn tile_n(head_dim: usize) -> usize {
    if head_dim > 128 {
        32
    } else {
        BLOCK_N
    }
}

/// The masking template argument of every kernel that takes one.
pub(crate) fn causal_arg(causal: bool) -> TemplateArg {
    if causal {
        ("causal", "true")
    } else {
        ("full", "false")
    }
}

/// The forward kernel for one element type, head dim and masking.
pub(crate) fn spec<T: CudaElement>(head_dim: usize, causal: bool) -> Result<KernelSpec> {
    let (d, c) = spec_args(head_dim, causal)?;
    Ok(KernelSpec::new(
        SOURCE,
        "DMA_FORWARD_KERNEL",
        "dma_forward",
        &[(T::SHORT, T::C_TYPE), d, c, tile_arg(tile_n(head_dim))],
    ))
}

/// Key-tile stages of the Hopper forward (`HOP_STAGES` in kernels/forward_hopper.cu).
const HOPPER_STAGES: usize = 4;
/// Threads of a Hopper forward or backward CTA: two consumer warpgroups and a producer.
pub(crate) const HOPPER_THREADS: u32 = 384;

/// Whether the Hopper forward has a kernel for the head dim: D = 64 and 128.
pub(crate) fn hopper_has_head_dim(head_dim: usize) -> bool {
    matches!(head_dim, 64 | 128)
}

/// The Hopper forward (warpgroup MMAs, kernels/forward_hopper.cu) for one element type, head
/// dim and masking, where it exists ([`hopper_has_head_dim`]).
pub(crate) fn hopper_spec<T: CudaElement>(head_dim: usize, causal: bool) -> Option<KernelSpec> {
    if !hopper_has_head_dim(head_dim) {
        return None;
    }
    let (d, c) = spec_args(head_dim, causal).ok()?;
    Some(KernelSpec::new(
        HOPPER_SOURCE,
        "DMA_FORWARD_HOPPER_KERNEL",
        "dma_forward_hopper",
        &[(T::SHORT, T::C_TYPE), d, c],
    ))
}

/// Dynamic shared memory of the Hopper forward (`HopSmem::BYTES`): unpadded swizzled tiles,
/// 2 * stages tiles of ranks, two mbarriers and a bias tile per stage.
pub(crate) fn hopper_smem_bytes(head_dim: usize) -> usize {
    let stages = HOPPER_STAGES;
    (BLOCK_M * head_dim + 2 * stages * BLOCK_N * head_dim) * 2
        + 2 * stages * BLOCK_N * 8
        + 2 * stages * 8
        + stages * BLOCK_N * 4
}

/// The kernel, shared memory and threads of a forward launch: the Hopper forward on sm_90 where
/// it has the head dim and no split-K is asked for, unless `DMA_CUDA_NO_WGMMA` is set (an A/B
/// switch for benchmarks and tests); forward.cu otherwise.
fn attend_kernel<T: CudaElement>(
    dev: &Device,
    head_dim: usize,
    causal: bool,
    splits: usize,
) -> Result<(KernelSpec, usize, u32)> {
    match hopper_spec::<T>(head_dim, causal) {
        Some(spec) if hopper_wanted(dev, splits) => {
            Ok((spec, hopper_smem_bytes(head_dim), HOPPER_THREADS))
        }
        _ => Ok((spec::<T>(head_dim, causal)?, smem_bytes(head_dim), THREADS)),
    }
}

/// Whether a launch of `splits` CTAs per block may take the Hopper forward or backward (if it has
/// the head dim): sm_90, no split-K, and `DMA_CUDA_NO_WGMMA` unset.
pub(crate) fn hopper_wanted(dev: &Device, splits: usize) -> bool {
    splits == 1 && dev.arch() == Arch::SM90 && std::env::var_os("DMA_CUDA_NO_WGMMA").is_none()
}

/// Whether the forward skips the keep test on the keys every row of a block keeps (its list's
/// "sure" keys, docs/cuda-notes.md): where the Hopper forward runs, unless
/// `DMA_CUDA_NO_SURE_KEYS` is set (an A/B switch).
fn sure_keys_wanted(dev: &Device, head_dim: usize) -> bool {
    std::env::var_os("DMA_CUDA_NO_SURE_KEYS").is_none()
        && hopper_wanted(dev, 1)
        && hopper_has_head_dim(head_dim)
}

/// The sure-key counts a launch (forward or backward) takes from `sel`: `None` where the sure keys
/// are off ([`sure_keys_wanted`]).
pub(crate) fn launch_sure_counts<'a>(
    dev: &Device,
    head_dim: usize,
    sel: &'a Selection,
) -> Option<&'a CudaSlice<u32>> {
    sure_keys_wanted(dev, head_dim).then_some(&sel.sure)
}

/// Dynamic shared memory of the forward kernel (`FwdSmem::BYTES`).
pub(crate) fn smem_bytes(head_dim: usize) -> usize {
    let stride = head_dim + 8;
    let bn = tile_n(head_dim);
    (BLOCK_M * stride + 4 * bn * stride) * 2 + 3 * bn * 8 + 2 * bn * 4
}

/// Out and lse of a forward, on the device: out like q, lse `[B, Hq, Nq]` or `[Hq, total_q]`.
#[derive(Debug)]
pub struct DeviceForward<T> {
    pub out: CudaSlice<T>,
    pub lse: CudaSlice<f32>,
}

/// The buffer checks of [`forward_into`] and [`decode_into`](super::decode_into).
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_buffers<T>(
    problem: &Problem,
    q: &impl DeviceSlice<T>,
    k: &impl DeviceSlice<T>,
    v: &impl DeviceSlice<T>,
    bias: &impl DeviceSlice<f32>,
    out: &CudaSlice<T>,
    lse: &CudaSlice<f32>,
) -> Result<()> {
    problem.check_rows("q", "q", q.len())?;
    problem.check_rows("k", "k", k.len())?;
    problem.check_rows("v", "k", v.len())?;
    problem.check_len("bias", problem.bias_len(), bias.len())?;
    problem.check_rows("out", "q", out.len())?;
    problem.check_len("lse", problem.lse_len(), lse.len())
}

/// DMA forward on device buffers, allocating out and lse.
///
/// A non-finite bias gives [`DmaError::NonFiniteBias`] like the CPU backend: the selection
/// kernels flag it and the call reads the flag back at its end, so it waits for its kernels
/// (out and lse then hold unspecified values; nothing out of bounds is ever accessed). Unlike
/// the CPU and host entry points, a NaN among the keys of a sequence without queries is not
/// reported (those keys are never read).
#[allow(clippy::too_many_arguments)]
pub fn forward<T: CudaElement>(
    dev: &Device,
    params: &Params,
    shape: &Shape,
    q: &impl DeviceInput<T>,
    k: &impl DeviceInput<T>,
    v: &impl DeviceInput<T>,
    bias: &impl DeviceInput<f32>,
) -> Result<DeviceForward<T>> {
    let n = q.len().max(1);
    let lse_len = shape.problem()?.lse_len().max(1);
    // SAFETY: forward_into writes every element of out and lse.
    let (mut out, mut lse) = unsafe {
        (
            alloc_uninit::<T>(dev, "out", n)?,
            alloc_uninit::<f32>(dev, "lse", lse_len)?,
        )
    };
    forward_into(dev, params, shape, q, k, v, bias, &mut out, &mut lse)?;
    Ok(DeviceForward { out, lse })
}

/// DMA forward on device buffers into caller-provided out (like q) and lse buffers.
#[allow(clippy::too_many_arguments)]
pub fn forward_into<T: CudaElement>(
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
    let sel = forward_into_with_selection(dev, params, shape, q, k, v, bias, out, lse)?;
    dev.keep_spare_selection(sel)
}

/// [`forward_into`] that also returns its selection, for the backward of the same call
/// ([`backward`](super::backward())), so that the backward does not select again.
#[allow(clippy::too_many_arguments)]
pub fn forward_into_with_selection<T: CudaElement>(
    dev: &Device,
    params: &Params,
    shape: &Shape,
    q: &impl DeviceInput<T>,
    k: &impl DeviceInput<T>,
    v: &impl DeviceInput<T>,
    bias: &impl DeviceInput<f32>,
    out: &mut CudaSlice<T>,
    lse: &mut CudaSlice<f32>,
) -> Result<Selection> {
    params.validate()?;
    let problem = shape.problem()?;
    check_buffers(&problem, q, k, v, bias, out, lse)?;
    spec::<T>(problem.head_dim, params.causal)?;
    let planned = dev.planned(params, &problem)?;
    let (plan, tables) = (&planned.plan, &planned.tables);
    let ready = launch::overlap_wanted(dev)
        .then(|| dev.ready_flags(plan.num_lists() * problem.heads.bias))
        .transpose()?;
    let sel = select::run(dev, params, &problem, plan, tables, bias, ready.as_ref())?;
    if plan.num_blocks() == 0 {
        return Ok(sel);
    }
    let sure = launch_sure_counts(dev, problem.head_dim, &sel);
    attend(
        dev,
        params,
        &problem,
        plan,
        tables,
        &sel,
        sure,
        (q, k, v),
        out,
        lse,
        None,
        ready.as_ref(),
    )?;
    // Last, so the GPU runs selection and attend back to back (Selection::check_bias: this waits
    // for the call's kernels).
    sel.check_bias(dev, &problem, bias)?;
    Ok(sel)
}

/// The gather-and-attend launch over a selection. `sure`, `[lists, Hb]`: how many keys at the
/// front of each list every row of its block keeps (the Hopper forward skips their keep test;
/// forward.cu ignores it); `None`: none known. With `split = Some((splits, part))` each
/// (block, head) runs as `splits` CTAs over slices of its list, writing unnormalised partials to
/// `part` (see [`split_part_len`]), and the combine kernel writes out and lse. With `ready` (the
/// selection was just launched overlapped, launch.rs) the kernel starts as selection CTAs leave
/// their SMs, each CTA waiting for its list's flag.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend<T: CudaElement>(
    dev: &Device,
    params: &Params,
    problem: &Problem,
    plan: &Plan,
    tables: &DevicePlan,
    sel: &Selection,
    sure: Option<&CudaSlice<u32>>,
    (q, k, v): (
        &impl DeviceInput<T>,
        &impl DeviceInput<T>,
        &impl DeviceInput<T>,
    ),
    out: &mut CudaSlice<T>,
    lse: &mut CudaSlice<f32>,
    split: Option<(usize, &mut CudaSlice<f32>)>,
    ready: Option<&Ready>,
) -> Result<()> {
    let (q, k, v) = (q.view(), k.view(), v.view());
    let splits = split.as_ref().map_or(1, |(n, _)| *n);
    let (spec, smem, threads) = attend_kernel::<T>(dev, problem.head_dim, params.causal, splits)?;
    let (f, cfg, ints) = block_launch(dev, &spec, smem, threads, problem, plan, splits)?;
    let scale_log2 = params.scale_for(problem.head_dim) * std::f32::consts::LOG2_E;
    let part: Option<&CudaSlice<f32>> = split.map(|(_, p)| &*p);
    if part.is_some_and(|p| p.len() < split_part_len(problem, splits)) {
        return Err(DmaError::Cuda("split-K scratch too small".into()));
    }
    let (seqs, blocks) = (tables.seqs(), tables.blocks());
    let mut args = Args::new(dev);
    args.input(&q)
        .input(&k)
        .input(&v)
        .input(&seqs)
        .input(&blocks)
        .input(&sel.cand)
        .input(&sel.count)
        .input(&sel.block_counts);
    match sure {
        Some(s) => args.input(s),
        None => args.ptr(0),
    };
    args.input(&sel.thr).output(out).output(lse);
    match part {
        Some(p) => args.input(p),
        None => args.ptr(0),
    };
    for &x in &ints {
        args.int(x);
    }
    args.float(scale_log2).ready(ready);
    // SAFETY: the arguments match the kernel's signature (kernels/forward.cu), the buffers were
    // checked against the geometry, and the selection was made for this plan. The null partial
    // buffer is only read when gridDim.z > 1, a null `sure` is read as no sure keys, null ready
    // flags as a selection that has ended.
    unsafe { args.launch(&f, cfg, ready.is_some()) }?;
    if let Some(part) = part {
        combine::<T>(dev, problem, tables, part, splits, out, lse)?;
    }
    Ok(())
}

/// The setup the forward and backward launches share, one CTA of `threads` per (query block,
/// query head, split): the kernel with its dynamic shared memory set, the launch config, and the
/// geometry both kernels take (Hq, Hkv, Hb, bias head stride, lse head stride, total_q, cap).
#[allow(clippy::too_many_arguments)]
pub(crate) fn block_launch(
    dev: &Device,
    spec: &KernelSpec,
    smem: usize,
    threads: u32,
    problem: &Problem,
    plan: &Plan,
    splits: usize,
) -> Result<(CudaFunction, LaunchConfig, [i32; 7])> {
    let f = dev.function_with(spec, smem, false)?;
    let h = &problem.heads;
    let ints = [
        h.q as i32,
        h.kv as i32,
        h.bias as i32,
        problem.bias_head_stride as i32,
        problem.lse_head_stride as i32,
        problem.total_q as i32,
        plan.cap as i32,
    ];
    let cfg = LaunchConfig {
        grid_dim: (plan.num_blocks() as u32, h.q as u32, splits as u32),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem as u32,
    };
    Ok((f, cfg, ints))
}

/// f32 elements of the split-K scratch: `splits` partial outputs plus their (m, l) pairs.
pub(crate) fn split_part_len(problem: &Problem, splits: usize) -> usize {
    splits * problem.total_q * problem.heads.q * (problem.head_dim + 2)
}

/// The split-K combine kernel for one element type and head dim.
pub(crate) fn combine_spec<T: CudaElement>(head_dim: usize) -> Result<KernelSpec> {
    let (d, _) = spec_args(head_dim, false)?;
    Ok(KernelSpec::new(
        SOURCE,
        "DMA_COMBINE_KERNEL",
        "dma_combine",
        &[(T::SHORT, T::C_TYPE), d],
    ))
}

fn combine<T: CudaElement>(
    dev: &Device,
    problem: &Problem,
    tables: &DevicePlan,
    part: &CudaSlice<f32>,
    splits: usize,
    out: &mut CudaSlice<T>,
    lse: &mut CudaSlice<f32>,
) -> Result<()> {
    let items = problem.total_q * problem.heads.q;
    if items == 0 {
        return Ok(());
    }
    let f = dev.function(&combine_spec::<T>(problem.head_dim)?)?;
    let cfg = LaunchConfig {
        grid_dim: (items.div_ceil(8) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let ints = [
        problem.sequences.len() as i32,
        problem.heads.q as i32,
        problem.lse_head_stride as i32,
        problem.total_q as i32,
        splits as i32,
    ];
    let seqs = tables.seqs();
    let mut l = dev.stream().launch_builder(&f);
    l.arg(part)
        .arg(&seqs)
        .arg(&ints[0])
        .arg(out)
        .arg(lse)
        .arg(&ints[1])
        .arg(&ints[2])
        .arg(&ints[3])
        .arg(&ints[4]);
    // SAFETY: the arguments match kernels/forward.cu's combine kernel; `part` holds the partials
    // of `splits` CTAs per (row, head) written by the forward launch just before.
    unsafe { l.launch(cfg) }.map_err(error::driver)?;
    Ok(())
}

/// DMA forward from host slices: uploads, runs [`forward_into`] on outputs poisoned with NaN,
/// and copies out and lse back. Checks the bias on the host like the CPU backend.
pub fn forward_host<T: CudaElement>(
    dev: &Device,
    params: &Params,
    shape: &Shape,
    inputs: &cpu::Inputs<'_, T>,
) -> Result<cpu::Forward<T>> {
    run_host(dev, params, shape, inputs, forward_into::<T>)
}

/// The signature of [`forward_into`] and [`decode_into`](super::decode_into).
pub(crate) type ForwardInto<T> = fn(
    &Device,
    &Params,
    &Shape,
    &CudaSlice<T>,
    &CudaSlice<T>,
    &CudaSlice<T>,
    &CudaSlice<f32>,
    &mut CudaSlice<T>,
    &mut CudaSlice<f32>,
) -> Result<()>;

/// A host entry point on top of a device one (`forward_into` or `decode_into`): checks the
/// inputs (bias included) like the CPU backend, uploads, runs `into` on outputs poisoned with
/// NaN, and copies out and lse back.
pub(crate) fn run_host<T: CudaElement>(
    dev: &Device,
    params: &Params,
    shape: &Shape,
    inputs: &cpu::Inputs<'_, T>,
    into: ForwardInto<T>,
) -> Result<cpu::Forward<T>> {
    params.validate()?;
    let problem = shape.problem()?;
    inputs.check(&problem)?;
    let (q, k, v) = (
        buffers::upload(dev, inputs.q, "q")?,
        buffers::upload(dev, inputs.k, "k")?,
        buffers::upload(dev, inputs.v, "v")?,
    );
    let bias = buffers::upload(dev, inputs.bias, "bias")?;
    let nan = T::from_f32(f32::NAN);
    let mut out = buffers::filled(dev, nan, inputs.q.len(), "out")?;
    let mut lse = buffers::filled(dev, f32::NAN, problem.lse_len(), "lse")?;
    into(dev, params, shape, &q, &k, &v, &bias, &mut out, &mut lse)?;
    Ok(cpu::Forward {
        out: buffers::download(dev, &out)?,
        lse: buffers::download(dev, &lse)?,
    })
}

/// The selection of a call alone, on the device (shared by the forward; for tests). Each causal
/// list holds its sure keys (kept by every row of its block that keeps anything) first.
pub fn select(
    dev: &Device,
    params: &Params,
    shape: &Shape,
    bias: &impl DeviceInput<f32>,
) -> Result<Selection> {
    params.validate()?;
    let problem = shape.problem()?;
    problem.check_len("bias", problem.bias_len(), bias.len())?;
    let planned = dev.planned(params, &problem)?;
    let sel = select::run(
        dev,
        params,
        &problem,
        &planned.plan,
        &planned.tables,
        bias,
        None,
    )?;
    sel.check_bias(dev, &problem, bias)?;
    Ok(sel)
}

/// [`select()`] and the number of sure keys at the front of each list for each of its blocks,
/// `[lists, Hb, LIST_BLOCKS]` (every key of a non-causal list). For tests and inspection.
pub fn select_partitioned(
    dev: &Device,
    params: &Params,
    shape: &Shape,
    bias: &impl DeviceInput<f32>,
) -> Result<(Selection, Vec<u32>)> {
    let sel = select(dev, params, shape, bias)?;
    let sure = buffers::download(dev, &sel.sure)?;
    Ok((sel, sure))
}
