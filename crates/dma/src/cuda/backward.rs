//! The backward on device buffers (kernels/backward.cu; backward_hopper.cu on sm_90): dq, dk, dv
//! in the input type and dbias in f32, from q, k, v, bias, out, lse and dout, over the forward's
//! selection (passed in, or recomputed: the selection alone, never the forward).

use super::buffers::{self, alloc_uninit, DeviceInput};
use super::compile::KernelSpec;
use super::device::Device;
use super::error;
use super::forward::{self, CudaElement};
use super::plan::{Plan, BLOCK_M, BLOCK_N};
use super::select::{self, DevicePlan, Selection};
use crate::{cpu, Params, Problem, Result, Shape};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

// backward.cu takes attend.cu's row store.
const SOURCE: &str = concat!(
    include_str!("kernels/attend.cu"),
    include_str!("kernels/backward.cu")
);
const HOPPER_SOURCE: &str = concat!(
    include_str!("kernels/attend.cu"),
    include_str!("kernels/hopper.cu"),
    include_str!("kernels/backward_hopper.cu")
);

/// The backward kernel for one element type, head dim and masking.
pub(crate) fn spec<T: CudaElement>(head_dim: usize, causal: bool) -> Result<KernelSpec> {
    let (d, c) = forward::spec_args(head_dim, causal)?;
    Ok(KernelSpec::new(
        SOURCE,
        "DMA_BACKWARD_KERNEL",
        "dma_backward",
        &[
            (T::SHORT, T::C_TYPE),
            d,
            c,
            forward::tile_arg(tile_n(head_dim)),
        ],
    ))
}

/// The Hopper backward (warpgroup MMAs, kernels/backward_hopper.cu) for one element type, head
/// dim and masking, where it exists (D = 64 and 128, like the Hopper forward).
pub(crate) fn hopper_spec<T: CudaElement>(head_dim: usize, causal: bool) -> Option<KernelSpec> {
    if !forward::hopper_has_head_dim(head_dim) {
        return None;
    }
    let (d, c) = forward::spec_args(head_dim, causal).ok()?;
    Some(KernelSpec::new(
        HOPPER_SOURCE,
        "DMA_BACKWARD_HOPPER_KERNEL",
        "dma_backward_hopper",
        &[(T::SHORT, T::C_TYPE), d, c],
    ))
}

/// Key-tile stages of the Hopper backward (`HOPB_STAGES` in kernels/backward_hopper.cu): 2 at
/// D = 128, where the double-buffered P and dS tiles take the room of a third; 4 at D = 64.
fn hopper_stages(head_dim: usize) -> usize {
    if head_dim == 128 {
        2
    } else {
        4
    }
}

/// Dynamic shared memory of the Hopper backward (`HopBwdSmem::BYTES`): Q and dO tiles, the K/V
/// stages, two P and two dS tiles, the ranks' ring, two mbarriers and a bias tile per stage,
/// two buffers of the 8 consumer warps' dS column sums, and each consumer warp's staging buffer
/// for its reductions (16 rows of 36 f32).
fn hopper_smem_bytes(head_dim: usize) -> usize {
    let stages = hopper_stages(head_dim);
    (2 * BLOCK_M * head_dim + 2 * stages * BLOCK_N * head_dim + 4 * BLOCK_M * BLOCK_N) * 2
        + 2 * stages * BLOCK_N * 8
        + 2 * stages * 8
        + stages * BLOCK_N * 4
        + 2 * 8 * BLOCK_N * 4
        + 8 * 16 * 36 * 4
}

/// The kernel, shared memory and threads of a backward launch: the Hopper backward where the
/// Hopper forward would run (sm_90, the head dim, `DMA_CUDA_NO_WGMMA` unset), backward.cu
/// otherwise.
fn backward_kernel<T: CudaElement>(
    dev: &Device,
    head_dim: usize,
    causal: bool,
) -> Result<(KernelSpec, usize, u32)> {
    match hopper_spec::<T>(head_dim, causal) {
        Some(spec) if forward::hopper_wanted(dev, 1) => {
            Ok((spec, hopper_smem_bytes(head_dim), forward::HOPPER_THREADS))
        }
        _ => Ok((
            spec::<T>(head_dim, causal)?,
            smem_bytes(head_dim),
            forward::THREADS,
        )),
    }
}

/// The f32 -> T conversion of the dk and dv scratch buffers.
pub(crate) fn convert_spec<T: CudaElement>() -> KernelSpec {
    KernelSpec::new(
        SOURCE,
        "DMA_CONVERT_KERNEL",
        "dma_convert",
        &[(T::SHORT, T::C_TYPE)],
    )
}

/// Keys per shared-memory tile of the backward: `BLOCK_N`, except 32 at D = 256, where tiles of
/// 64 would need 300 KiB of shared memory (Q and dO tiles alone take 132 KiB there).
pub(crate) fn tile_n(head_dim: usize) -> usize {
    if head_dim > 128 {
        32
    } else {
        BLOCK_N
    }
}

/// Dynamic shared memory of the backward kernel (`BwdSmem::BYTES`).
pub(crate) fn smem_bytes(head_dim: usize) -> usize {
    let stride = head_dim + 8;
    let bn = tile_n(head_dim);
    let pstride = bn + 8;
    let warps = BLOCK_M * 2 / 32;
    (2 * BLOCK_M * stride + 4 * bn * stride + 2 * BLOCK_M * pstride) * 2
        + 3 * bn * 8
        + (2 * bn + warps * bn + BLOCK_M) * 4
}

/// What the backward reads, on the device: the forward's inputs, its out and lse, and dout
/// (the gradient of out, like q). Each is a whole slice or a view ([`DeviceInput`]).
#[derive(Clone, Copy)]
pub struct BackwardInputs<'a, T> {
    pub q: &'a dyn DeviceInput<T>,
    pub k: &'a dyn DeviceInput<T>,
    pub v: &'a dyn DeviceInput<T>,
    pub bias: &'a dyn DeviceInput<f32>,
    pub out: &'a dyn DeviceInput<T>,
    pub lse: &'a dyn DeviceInput<f32>,
    pub dout: &'a dyn DeviceInput<T>,
}

/// Gradients on the device: dq like q, dk and dv like k, dbias like the bias (f32).
#[derive(Debug)]
pub struct DeviceGradients<T> {
    pub dq: CudaSlice<T>,
    pub dk: CudaSlice<T>,
    pub dv: CudaSlice<T>,
    pub dbias: CudaSlice<f32>,
}

fn check_inputs<T>(problem: &Problem, x: &BackwardInputs<'_, T>) -> Result<()> {
    problem.check_rows("q", "q", x.q.len())?;
    problem.check_rows("k", "k", x.k.len())?;
    problem.check_rows("v", "k", x.v.len())?;
    problem.check_len("bias", problem.bias_len(), x.bias.len())?;
    problem.check_rows("out", "q", x.out.len())?;
    problem.check_rows("dout", "q", x.dout.len())?;
    problem.check_len("lse", problem.lse_len(), x.lse.len())
}

/// DMA backward on device buffers, allocating the gradients. `selection` is the forward's
/// (from [`forward_into_with_selection`](super::forward_into_with_selection)) for the same
/// params, shape and bias; `None` recomputes the selection (not the forward).
pub fn backward<T: CudaElement>(
    dev: &Device,
    params: &Params,
    shape: &Shape,
    inputs: &BackwardInputs<'_, T>,
    selection: Option<&Selection>,
) -> Result<DeviceGradients<T>> {
    let problem = shape.problem()?;
    // SAFETY: the backward writes every element of each gradient before it is read.
    let mut grads = unsafe {
        DeviceGradients {
            dq: alloc_uninit(dev, "dq", problem.q_len())?,
            dk: alloc_uninit(dev, "dk", problem.k_len())?,
            dv: alloc_uninit(dev, "dv", problem.k_len())?,
            dbias: alloc_uninit(dev, "dbias", problem.bias_len())?,
        }
    };
    backward_into(dev, params, shape, inputs, selection, &mut grads)?;
    Ok(grads)
}

/// DMA backward on device buffers into caller-provided gradients (every element is written).
/// With `selection = None` a non-finite bias gives [`DmaError::NonFiniteBias`](crate::DmaError::NonFiniteBias) (as in
/// [`forward`](super::forward()), the call then waits for its kernels); a selection passed in was
/// checked by the forward that made it.
pub fn backward_into<T: CudaElement>(
    dev: &Device,
    params: &Params,
    shape: &Shape,
    inputs: &BackwardInputs<'_, T>,
    selection: Option<&Selection>,
    grads: &mut DeviceGradients<T>,
) -> Result<()> {
    params.validate()?;
    let problem = shape.problem()?;
    check_inputs(&problem, inputs)?;
    problem.check_rows("dq", "q", grads.dq.len())?;
    problem.check_rows("dk", "k", grads.dk.len())?;
    problem.check_rows("dv", "k", grads.dv.len())?;
    problem.check_len("dbias", problem.bias_len(), grads.dbias.len())?;
    let (spec, smem, threads) = backward_kernel::<T>(dev, problem.head_dim, params.causal)?;
    let planned = dev.planned(params, &problem)?;
    let (plan, tables) = (&planned.plan, &planned.tables);
    let s = dev.stream();
    // dq rows of empty blocks do not exist; dk, dv and dbias of keys no query keeps are zero.
    s.memset_zeros(&mut grads.dbias).map_err(error::driver)?;
    let mut dk_acc = s
        .alloc_zeros::<f32>(problem.k_len().max(1))
        .map_err(error::alloc("dk scratch (f32)", problem.k_len() * 4))?;
    let mut dv_acc = s
        .alloc_zeros::<f32>(problem.k_len().max(1))
        .map_err(error::alloc("dv scratch (f32)", problem.k_len() * 4))?;
    // The selection made here (selection = None), whose bias flag is read at the end.
    let mut owned = None;
    if plan.num_blocks() > 0 {
        let sel = match selection {
            Some(sel) => {
                sel.check(params, &problem, plan)?;
                sel
            }
            None => &*owned.insert(select::run(
                dev,
                params,
                &problem,
                plan,
                tables,
                &inputs.bias.view(),
                None,
            )?),
        };
        launch(
            dev,
            params,
            &problem,
            plan,
            tables,
            sel,
            (&spec, smem, threads),
            inputs,
            grads,
            (&mut dk_acc, &mut dv_acc),
        )?;
    }
    convert::<T>(dev, (&dk_acc, &dv_acc), grads, problem.k_len())?;
    // Last, so the GPU runs every kernel back to back (Selection::check_bias: this waits for
    // them). A selection passed in was checked by the forward that made it.
    match owned {
        Some(sel) => {
            sel.check_bias(dev, &problem, &inputs.bias.view())?;
            dev.keep_spare_selection(sel)
        }
        None => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
fn launch<T: CudaElement>(
    dev: &Device,
    params: &Params,
    problem: &Problem,
    plan: &Plan,
    tables: &DevicePlan,
    sel: &Selection,
    (spec, smem, threads): (&KernelSpec, usize, u32),
    x: &BackwardInputs<'_, T>,
    grads: &mut DeviceGradients<T>,
    (dk_acc, dv_acc): (&mut CudaSlice<f32>, &mut CudaSlice<f32>),
) -> Result<()> {
    let (f, cfg, ints) = forward::block_launch(dev, spec, smem, threads, problem, plan, 1)?;
    let scale = params.scale_for(problem.head_dim);
    let scale_log2 = scale * std::f32::consts::LOG2_E;
    let (seqs, blocks) = (tables.seqs(), tables.blocks());
    let [q, k, v, out, dout] = [x.q, x.k, x.v, x.out, x.dout].map(|t| t.view());
    let lse = x.lse.view();
    let mut l = dev.stream().launch_builder(&f);
    l.arg(&q)
        .arg(&k)
        .arg(&v)
        .arg(&out)
        .arg(&dout)
        .arg(&lse)
        .arg(&seqs)
        .arg(&blocks)
        .arg(&sel.cand)
        .arg(&sel.count)
        .arg(&sel.block_counts);
    // The Hopper backward skips the keep test of each list's sure keys, like the forward
    // (backward.cu ignores them).
    let null = 0u64;
    match forward::launch_sure_counts(dev, problem.head_dim, sel) {
        Some(sure) => l.arg(sure),
        None => l.arg(&null),
    };
    l.arg(&sel.thr)
        .arg(&mut grads.dq)
        .arg(dk_acc)
        .arg(dv_acc)
        .arg(&mut grads.dbias);
    for x in &ints {
        l.arg(x);
    }
    l.arg(&scale).arg(&scale_log2);
    // SAFETY: the arguments match the kernel's signature (kernels/backward.cu and
    // backward_hopper.cu), the buffers were checked against the geometry, and the selection was
    // made for this plan; a null `sure` is read as no sure keys.
    unsafe { l.launch(cfg) }.map_err(error::driver)?;
    Ok(())
}

/// dk and dv (`T`) from their f32 scratch buffers: the first `n` elements of each, a multiple
/// of 4 (the kernel converts four at a time; `n` is a multiple of the head dim).
fn convert<T: CudaElement>(
    dev: &Device,
    (dk_acc, dv_acc): (&CudaSlice<f32>, &CudaSlice<f32>),
    grads: &mut DeviceGradients<T>,
    n: usize,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    debug_assert_eq!(n % 4, 0, "every head dim is a multiple of 4");
    let f = dev.function(&convert_spec::<T>())?;
    let blocks = (2 * n / 4).div_ceil(256).min(132 * 8) as u32;
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let n = n as i64;
    let mut l = dev.stream().launch_builder(&f);
    l.arg(dk_acc)
        .arg(dv_acc)
        .arg(&mut grads.dk)
        .arg(&mut grads.dv)
        .arg(&n);
    // SAFETY: the four buffers hold at least n elements (checked by the caller), n is a multiple
    // of 4, and the buffers are allocations (aligned for the kernel's 16- and 8-byte accesses).
    unsafe { l.launch(cfg) }.map_err(error::driver)?;
    Ok(())
}

/// DMA backward from host slices, like [`cpu::backward`]: uploads, runs [`backward_into`] on
/// gradients poisoned with NaN, and copies them back. Checks the bias on the host.
pub fn backward_host<T: CudaElement>(
    dev: &Device,
    params: &Params,
    shape: &Shape,
    inputs: &cpu::Inputs<'_, T>,
    out: &[T],
    lse: &[f32],
    dout: &[T],
) -> Result<cpu::Gradients<T>> {
    params.validate()?;
    let problem = shape.problem()?;
    inputs.check(&problem)?;
    problem.check_rows("out", "q", out.len())?;
    problem.check_rows("dout", "q", dout.len())?;
    problem.check_len("lse", problem.lse_len(), lse.len())?;
    let up = |x: &[T], what| buffers::upload(dev, x, what);
    let (q, k, v) = (up(inputs.q, "q")?, up(inputs.k, "k")?, up(inputs.v, "v")?);
    let (o, d) = (up(out, "out")?, up(dout, "dout")?);
    let bias = buffers::upload(dev, inputs.bias, "bias")?;
    let l = buffers::upload(dev, lse, "lse")?;
    let nan = T::from_f32(f32::NAN);
    let mut grads = DeviceGradients {
        dq: buffers::filled(dev, nan, q.len(), "dq")?,
        dk: buffers::filled(dev, nan, k.len(), "dk")?,
        dv: buffers::filled(dev, nan, k.len(), "dv")?,
        dbias: buffers::filled(dev, f32::NAN, bias.len(), "dbias")?,
    };
    let x = BackwardInputs {
        q: &q,
        k: &k,
        v: &v,
        bias: &bias,
        out: &o,
        lse: &l,
        dout: &d,
    };
    backward_into(dev, params, shape, &x, None, &mut grads)?;
    Ok(cpu::Gradients {
        dq: buffers::download(dev, &grads.dq)?,
        dk: buffers::download(dev, &grads.dk)?,
        dv: buffers::download(dev, &grads.dv)?,
        dbias: buffers::download(dev, &grads.dbias)?,
    })
}
