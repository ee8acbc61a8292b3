//! The CUDA backend against the CPU backend, on fresh random inputs.
//!
//! Without a GPU (CI) the device tests print why and pass, but only when the failure is "no
//! driver" or "no device"; compiling every kernel needs only NVRTC and the CUDA headers
//! (scripts/cuda-env.sh). `cargo test -p dma --features cuda --release -- --ignored bench` times
//! the forward (see docs/cuda-notes.md).
#![cfg(feature = "cuda")]

use cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT;
use cudarc::driver::CudaSlice;
use dma::cuda::{self, Device};
use dma::selection::{rank, KeySelection};
use dma::{cpu, DmaError, Element, Heads, Params, Shape};
use half::{bf16, f16};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The device, or `None` (after saying why) when this machine has no GPU.
fn device() -> Option<Device> {
    match Device::new(0) {
        Ok(d) => Some(d),
        Err(e) if e.is_no_gpu() => {
            eprintln!("skipping CUDA device tests: {e}");
            None
        }
        Err(e) => panic!("CUDA device present but unusable: {e}"),
    }
}

fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    std::env::var("DMA_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(t)
}

/// Every kernel specialisation compiles with NVRTC for sm_90a (no GPU needed; NVRTC every time,
/// not the disk cache). With `DMA_PTX_DIR` set, the PTX files are written there (for `ptxas -v`).
#[test]
fn every_kernel_compiles() {
    let dir = std::env::var_os("DMA_PTX_DIR").map(std::path::PathBuf::from);
    for spec in cuda::all_kernels() {
        match cuda::compile::compile(&spec, cuda::Arch::SM90) {
            Ok(ptx) => {
                if let Some(dir) = &dir {
                    std::fs::create_dir_all(dir).unwrap();
                    std::fs::write(dir.join(format!("{}.ptx", spec.name())), ptx.as_bytes())
                        .unwrap();
                }
            }
            Err(e @ (DmaError::NvrtcNotFound(_) | DmaError::CudaHeadersNotFound { .. })) => {
                // CI installs NVRTC and sets DMA_REQUIRE_NVRTC, so there a skip is a failure.
                if std::env::var_os("DMA_REQUIRE_NVRTC").is_some() {
                    panic!("DMA_REQUIRE_NVRTC is set but: {e}");
                }
                eprintln!("skipping kernel compilation: {e}");
                return;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// One test configuration.
#[derive(Debug, Clone)]
struct Case {
    d: usize,
    causal: bool,
    hq: usize,
    hkv: usize,
    hb_is_q: bool,
    /// `None`: dense; `Some((q lens, k lens))`: varlen.
    varlen: Option<(Vec<i32>, Vec<i32>)>,
    /// Dense only: the keys in a cache of this many rows per sequence (`Shape::padded`).
    capacity: Option<usize>,
    batch: usize,
    nq: usize,
    nk: usize,
    window: usize,
    /// Biases drawn from a few values (ties, -0.0 and 0.0 among them) instead of a continuum.
    ties: bool,
}

impl Case {
    fn shape(&self) -> Shape {
        let heads =
            Heads::new(self.hq, self.hkv).with_bias(if self.hb_is_q { self.hq } else { self.hkv });
        match (&self.varlen, self.capacity) {
            (None, None) => Shape::dense(self.batch, self.nq, self.nk, heads, self.d),
            (None, Some(cap)) => Shape::padded(self.batch, self.nq, self.nk, cap, heads, self.d),
            (Some((lq, lk)), _) => {
                let cu = |l: &[i32]| {
                    let mut c = vec![0];
                    for x in l {
                        c.push(c.last().unwrap() + x);
                    }
                    c
                };
                Shape::varlen(cu(lq), cu(lk), heads, self.d)
            }
        }
    }

    fn params(&self) -> Params {
        Params::new(self.window).causal(self.causal)
    }

    fn label(&self) -> String {
        let layout = match (&self.varlen, self.capacity) {
            (None, None) => format!("dense B={} Nq={} Nk={}", self.batch, self.nq, self.nk),
            (None, Some(cap)) => format!(
                "padded B={} Nq={} Nk={} of {cap}",
                self.batch, self.nq, self.nk
            ),
            (Some((q, k)), _) => format!("varlen q={q:?} k={k:?}"),
        };
        format!(
            "D={} {} Hq={} Hkv={} Hb={} w={} {}{}",
            self.d,
            if self.causal { "causal" } else { "full" },
            self.hq,
            self.hkv,
            if self.hb_is_q { "Hq" } else { "Hkv" },
            self.window,
            layout,
            if self.ties { " ties" } else { "" }
        )
    }
}

/// The configurations: D = 64 and 128 with every masking, head layout and bias-head choice,
/// dense and varlen (with an empty sequence and a sequence with more queries than keys), Nq < Nk;
/// then D = 32, 96 and 256 (cuda::HEAD_DIMS) with 8 configurations each: causal and not, each
/// with dense and varlen, both bias-head choices and all three head layouts among them.
fn cases(small: bool) -> Vec<Case> {
    let mut out = Vec::new();
    let heads = [(16, 16), (16, 4), (8, 1)];
    // (head layout, Hb = Hq, varlen), in the order of the first grid (D = 64, 128).
    let full: Vec<(usize, bool, bool)> = (0..12).map(|x| (x / 4, x % 4 >= 2, x % 2 == 1)).collect();
    let reduced: Vec<(usize, bool, bool)> = (0..4).map(|x| (x % 3, x >= 2, x % 2 == 1)).collect();
    let mut i = 0usize;
    for d in [64, 128, 32, 96, 256] {
        let grid = if d == 64 || d == 128 { &full } else { &reduced };
        for causal in [true, false] {
            for &(layout, hb_is_q, varlen) in grid {
                let (hq, hkv) = heads[layout];
                i += 1;
                let window = [64, 200, 512][i % 3];
                let (batch, nq, nk) = match (i / 2) % 4 {
                    0 => (1, 3000, 3000),
                    1 => (2, 1000, 1000),
                    2 => (1, 700, 1900),
                    _ => (2, 1500, 1500),
                };
                let varlen = varlen.then(|| {
                    if small {
                        (vec![70, 0, 130, 50], vec![70, 0, 200, 20])
                    } else {
                        // The last: 300 queries on 100 keys, whose first block of 128 rows
                        // precedes every key while the rest of its list does not.
                        (vec![1500, 0, 300, 1033, 300], vec![1500, 0, 900, 1033, 100])
                    }
                });
                let (nq, nk) = if small { (nq / 10, nk / 10) } else { (nq, nk) };
                // A quarter of the dense cases (all of batch 2) keep their keys in a larger
                // cache, whose spare rows the kernels must not read.
                let capacity = (varlen.is_none() && i % 4 == 3).then_some(nk + 37);
                out.push(Case {
                    d,
                    causal,
                    hq: if small { hq / 4 } else { hq }.max(hkv.min(2)),
                    hkv: if small { hkv.min(2) } else { hkv },
                    hb_is_q,
                    varlen,
                    capacity,
                    batch,
                    nq,
                    nk,
                    window: if small { window / 4 } else { window },
                    ties: i % 5 == 0,
                });
            }
        }
    }
    // DMA_CUDA_EVERY=n keeps every n-th configuration (for the sanitizers).
    let every = std::env::var("DMA_CUDA_EVERY")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    out.into_iter().step_by(every).collect()
}

/// `n` values uniform in [-1, 1).
fn random_values<T: Element>(rng: &mut StdRng, n: usize) -> Vec<T> {
    (0..n)
        .map(|_| T::from_f32(rng.random_range(-1.0f32..1.0)))
        .collect()
}

/// `n` biases uniform in [-4, 4).
fn random_bias(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-4.0f32..4.0)).collect()
}

fn random_inputs<T: Element>(
    rng: &mut StdRng,
    shape: &Shape,
    ties: bool,
) -> (Vec<T>, Vec<T>, Vec<T>, Vec<f32>) {
    let p = shape.problem().unwrap();
    let q = random_values(rng, p.q_len());
    let k = random_values(rng, p.k_len());
    let v = random_values(rng, p.k_len());
    let mut bias = if ties {
        let levels = [0.0f32, -0.0, 1.0, -1.0, 2.5];
        (0..p.bias_len())
            .map(|_| levels[rng.random_range(0..levels.len())])
            .collect()
    } else {
        random_bias(rng, p.bias_len())
    };
    // NaN where no key is (a padded layout's spare rows): a kernel that read it would report
    // a non-finite bias.
    let mut is_key = vec![false; bias.len()];
    for seq in &p.sequences {
        for h in 0..p.heads.bias {
            is_key[p.bias_range(seq, h)].fill(true);
        }
    }
    for (b, _) in bias.iter_mut().zip(&is_key).filter(|(_, &key)| !key) {
        *b = f32::NAN;
    }
    (q, k, v, bias)
}

/// ||a - b|| / ||b|| over the entries where b is finite; entries where b is -inf must be -inf
/// in a, and a must hold no NaN.
fn rel_err(a: &[f32], b: &[f32]) -> Result<f64, String> {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        if x.is_nan() {
            return Err(format!("NaN at {i} (unwritten or broken), expected {y}"));
        }
        if y.is_finite() {
            num += f64::from(x - y).powi(2);
            den += f64::from(y).powi(2);
        } else if x != y {
            return Err(format!("element {i}: {x}, expected {y}"));
        }
    }
    Ok(if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    })
}

fn to_f32<T: Element>(x: &[T]) -> Vec<f32> {
    x.iter().map(|y| y.to_f32()).collect()
}

/// q, k, v and the bias uploaded to the device, in that order.
fn upload_inputs<T: cuda::CudaElement>(
    dev: &Device,
    inputs: &cpu::Inputs<'_, T>,
) -> (CudaSlice<T>, CudaSlice<T>, CudaSlice<T>, CudaSlice<f32>) {
    let s = dev.stream();
    let up = |x: &[T]| s.clone_htod(x).unwrap();
    let bias = s.clone_htod(inputs.bias).unwrap();
    (up(inputs.q), up(inputs.k), up(inputs.v), bias)
}

/// A host forward entry point of the CUDA backend (`forward_host`, `decode_host`).
type HostForward<T> =
    fn(&Device, &Params, &Shape, &cpu::Inputs<'_, T>) -> dma::Result<cpu::Forward<T>>;

/// Out and lse errors of a host forward entry point against the CPU forward. The entry points
/// poison out and lse with NaN before the kernels run.
fn check_host_forward<T: cuda::CudaElement>(
    dev: &Device,
    case: &Case,
    seed: u64,
    host_forward: HostForward<T>,
) -> [f64; 2] {
    let mut rng = StdRng::seed_from_u64(seed);
    let shape = case.shape();
    let (q, k, v, bias) = random_inputs::<T>(&mut rng, &shape, case.ties);
    let inputs = cpu::Inputs {
        q: &q,
        k: &k,
        v: &v,
        bias: &bias,
    };
    let params = case.params();
    let want = cpu::forward(&params, &shape, &inputs).unwrap();
    let got = host_forward(dev, &params, &shape, &inputs)
        .unwrap_or_else(|e| panic!("{}: {e}", case.label()));
    let eo = rel_err(&to_f32(&got.out), &to_f32(&want.out))
        .unwrap_or_else(|e| panic!("{} ({}): out: {e}", case.label(), T::DTYPE));
    let el = rel_err(&got.lse, &want.lse)
        .unwrap_or_else(|e| panic!("{} ({}): lse: {e}", case.label(), T::DTYPE));
    [eo, el]
}

fn check_forward<T: cuda::CudaElement>(dev: &Device, case: &Case, seed: u64) -> [f64; 2] {
    check_host_forward::<T>(dev, case, seed, cuda::forward_host)
}

/// Runs the checks on every case, in bf16 and f16 (seeds `seed + i`, and that `^ 0x9e37` for
/// f16), prints each case's errors under `names`, asserts each is at most 1e-2, and prints the
/// worst (followed by `worst_suffix`).
fn run_cases<const N: usize>(
    worst_suffix: &str,
    names: [&str; N],
    check_bf16: fn(&Device, &Case, u64) -> [f64; N],
    check_f16: fn(&Device, &Case, u64) -> [f64; N],
) {
    let Some(dev) = device() else { return };
    let small = std::env::var_os("DMA_CUDA_SMALL").is_some();
    let seed = fresh_seed();
    eprintln!("seed {seed} (DMA_SEED reproduces)");
    let mut worst = 0.0f64;
    for (i, case) in cases(small).iter().enumerate() {
        let s = seed.wrapping_add(i as u64);
        let b = check_bf16(&dev, case, s);
        let h = check_f16(&dev, case, s ^ 0x9e37);
        let line = |e: &[f64; N]| {
            names
                .iter()
                .zip(e)
                .map(|(n, e)| format!(" {n} {e:.2e}"))
                .collect::<String>()
        };
        eprintln!("{:<80} bf16{} | f16{}", case.label(), line(&b), line(&h));
        for e in b.iter().chain(&h) {
            worst = worst.max(*e);
        }
        assert!(
            b.iter().chain(&h).all(|&e| e <= 1e-2),
            "{}: error above 1e-2",
            case.label()
        );
    }
    eprintln!("worst relative error {worst:.2e}{worst_suffix}");
}

/// Forward out and lse against the CPU backend, bf16 and f16, every configuration.
#[test]
fn forward_matches_cpu() {
    run_cases(
        "",
        ["out", "lse"],
        check_forward::<bf16>,
        check_forward::<f16>,
    );
}

fn check_backward<T: cuda::CudaElement>(dev: &Device, case: &Case, seed: u64) -> [f64; 4] {
    let mut rng = StdRng::seed_from_u64(seed);
    let shape = case.shape();
    let (q, k, v, bias) = random_inputs::<T>(&mut rng, &shape, case.ties);
    let dout: Vec<T> = random_values(&mut rng, q.len());
    let inputs = cpu::Inputs {
        q: &q,
        k: &k,
        v: &v,
        bias: &bias,
    };
    let params = case.params();
    // Both backends get the same out and lse (the CPU forward's).
    let fwd = cpu::forward(&params, &shape, &inputs).unwrap();
    let want = cpu::backward(&params, &shape, &inputs, &fwd.out, &fwd.lse, &dout).unwrap();
    // backward_host poisons every gradient with NaN before the kernels run.
    let got = cuda::backward_host(dev, &params, &shape, &inputs, &fwd.out, &fwd.lse, &dout)
        .unwrap_or_else(|e| panic!("{}: {e}", case.label()));
    // The same backward over the device forward's selection (causal lists partitioned, sure keys
    // first: the Hopper backward skips their keep test), on the same out and lse.
    let reused = backward_over_forward_selection(dev, &params, &shape, &inputs, &fwd, &dout)
        .unwrap_or_else(|e| panic!("{}: {e}", case.label()));
    let err = |name: &str, a: Vec<f32>, b: &[f32]| {
        rel_err(&a, b).unwrap_or_else(|e| panic!("{} ({}): {name}: {e}", case.label(), T::DTYPE))
    };
    let errs = |g: &cpu::Gradients<T>| {
        [
            err("dq", to_f32(&g.dq), &to_f32(&want.dq)),
            err("dk", to_f32(&g.dk), &to_f32(&want.dk)),
            err("dv", to_f32(&g.dv), &to_f32(&want.dv)),
            err("dbias", g.dbias.clone(), &want.dbias),
        ]
    };
    let (a, b) = (errs(&got), errs(&reused));
    std::array::from_fn(|i| a[i].max(b[i]))
}

/// The device backward with the selection of a device forward on the same inputs, given out and
/// lse (`fwd`), gradients poisoned with NaN first.
fn backward_over_forward_selection<T: cuda::CudaElement>(
    dev: &Device,
    params: &Params,
    shape: &Shape,
    inputs: &cpu::Inputs<'_, T>,
    fwd: &cpu::Forward<T>,
    dout: &[T],
) -> dma::Result<cpu::Gradients<T>> {
    let s = dev.stream();
    let up = |x: &[T]| s.clone_htod(x).unwrap();
    let (q, k, v, o, d) = (
        up(inputs.q),
        up(inputs.k),
        up(inputs.v),
        up(&fwd.out),
        up(dout),
    );
    let bias = s.clone_htod(inputs.bias).unwrap();
    let lse = s.clone_htod(&fwd.lse).unwrap();
    let mut out = s.alloc_zeros::<T>(q.len().max(1)).unwrap();
    let mut lse_dev = s.alloc_zeros::<f32>(fwd.lse.len().max(1)).unwrap();
    let sel = cuda::forward_into_with_selection(
        dev,
        params,
        shape,
        &q,
        &k,
        &v,
        &bias,
        &mut out,
        &mut lse_dev,
    )?;
    let nan = T::from_f32(f32::NAN);
    let mut grads = cuda::DeviceGradients {
        dq: s.clone_htod(&vec![nan; q.len()]).unwrap(),
        dk: s.clone_htod(&vec![nan; k.len()]).unwrap(),
        dv: s.clone_htod(&vec![nan; k.len()]).unwrap(),
        dbias: s.clone_htod(&vec![f32::NAN; bias.len()]).unwrap(),
    };
    let x = cuda::BackwardInputs {
        q: &q,
        k: &k,
        v: &v,
        bias: &bias,
        out: &o,
        lse: &lse,
        dout: &d,
    };
    cuda::backward_into(dev, params, shape, &x, Some(&sel), &mut grads)?;
    Ok(cpu::Gradients {
        dq: s.clone_dtoh(&grads.dq).unwrap(),
        dk: s.clone_dtoh(&grads.dk).unwrap(),
        dv: s.clone_dtoh(&grads.dv).unwrap(),
        dbias: s.clone_dtoh(&grads.dbias).unwrap(),
    })
}

/// Backward dq, dk, dv, dbias against the CPU backend, bf16 and f16, every configuration: the
/// host entry point (which selects again) and the device one over the forward's selection
/// (partitioned lists); the worse of the two errors is reported.
#[test]
fn backward_matches_cpu() {
    run_cases(
        " (backward)",
        ["dq", "dk", "dv", "dbias"],
        check_backward::<bf16>,
        check_backward::<f16>,
    );
}

/// The backward over the forward's own selection equals the backward that selects again, and a
/// selection made for another call is refused with a typed error.
#[test]
fn backward_reuses_forward_selection() {
    let Some(dev) = device() else { return };
    let mut rng = StdRng::seed_from_u64(fresh_seed());
    let case = &cases(true)[5];
    let shape = case.shape();
    let (q, k, v, bias) = random_inputs::<bf16>(&mut rng, &shape, case.ties);
    let params = case.params();
    let s = dev.stream();
    let (q, k, v, bias) = (
        s.clone_htod(&q).unwrap(),
        s.clone_htod(&k).unwrap(),
        s.clone_htod(&v).unwrap(),
        s.clone_htod(&bias).unwrap(),
    );
    let mut out = s.alloc_zeros::<bf16>(q.len()).unwrap();
    let mut lse = s
        .alloc_zeros::<f32>(shape.problem().unwrap().lse_len())
        .unwrap();
    let sel = cuda::forward_into_with_selection(
        &dev, &params, &shape, &q, &k, &v, &bias, &mut out, &mut lse,
    )
    .unwrap();
    let x = cuda::BackwardInputs {
        q: &q,
        k: &k,
        v: &v,
        bias: &bias,
        out: &out,
        lse: &lse,
        dout: &out,
    };
    let a = cuda::backward(&dev, &params, &shape, &x, Some(&sel)).unwrap();
    let b = cuda::backward(&dev, &params, &shape, &x, None).unwrap();
    let host = |g: &cuda::DeviceGradients<bf16>| {
        (
            s.clone_dtoh(&g.dq).unwrap(),
            s.clone_dtoh(&g.dk).unwrap(),
            s.clone_dtoh(&g.dbias).unwrap(),
        )
    };
    let (ha, hb) = (host(&a), host(&b));
    assert_eq!(ha.0, hb.0, "dq");
    assert!(
        rel_err(&to_f32(&ha.1), &to_f32(&hb.1)).unwrap() < 1e-3,
        "dk"
    );
    assert!(rel_err(&ha.2, &hb.2).unwrap() < 1e-4, "dbias");
    let other = Params::new(case.window + 1).causal(case.causal);
    let err = cuda::backward(&dev, &other, &shape, &x, Some(&sel)).unwrap_err();
    assert!(matches!(err, DmaError::SelectionMismatch(_)), "{err}");
}

/// Decoding (few queries, long cache) against the CPU forward: Nq in {1, 4}, Nk around the
/// window and long, causal (and not), GQA, both bias-head layouts, ties, a varlen batch, every
/// head dim; then decode steps (Nq = 1, the fused kernel on sm_90) with MQA (16 query heads per
/// bias head: several attention passes), batches (one of 40 sequences: two launches), a query
/// without keys, and ties at long contexts (biases from a few
/// values: many keys share the w-th best bias, and the latest of them win).
#[test]
fn decode_matches_cpu() {
    let Some(dev) = device() else { return };
    let seed = fresh_seed();
    eprintln!("seed {seed} (DMA_SEED reproduces)");
    let small = std::env::var_os("DMA_CUDA_SMALL").is_some();
    let w = 512usize;
    let lengths: &[usize] = if small {
        &[1, 511, 512, 513, 5000]
    } else {
        &[1, 511, 512, 513, 5000, 40000]
    };
    let mut cases = Vec::new();
    let mut i = 0u64;
    for &nq in &[1usize, 4] {
        for &nk in lengths {
            i += 1;
            let d = cuda::HEAD_DIMS[i as usize % cuda::HEAD_DIMS.len()];
            let (hq, hkv) = if i % 3 == 0 { (8, 8) } else { (8, 2) };
            cases.push(Case {
                d,
                causal: i % 7 != 3,
                hq,
                hkv,
                hb_is_q: i % 2 == 1,
                varlen: (i % 5 == 4).then(|| {
                    let n = nk as i32;
                    (vec![nq as i32, 0, nq as i32], vec![n, 7, n / 2 + 1])
                }),
                capacity: (i % 5 == 2).then_some(nk + 100),
                batch: 1,
                nq,
                nk,
                window: w,
                ties: i % 4 == 2,
            });
        }
    }
    let step = |d, hq, hkv, batch, nk, ties| Case {
        d,
        causal: true,
        hq,
        hkv,
        hb_is_q: false,
        varlen: None,
        capacity: None,
        batch,
        nq: 1,
        nk,
        window: w,
        ties,
    };
    cases.push(step(128, 16, 1, 2, 3000, false));
    // Two sequences in a cache with room to grow (a batched generation step).
    cases.push(Case {
        capacity: Some(4096),
        ..step(128, 16, 1, 2, 3000, false)
    });
    cases.push(step(64, 8, 2, 1, 20000, true));
    cases.push(step(128, 8, 8, 3, 9000, true));
    // More sequences than one fused launch takes (32).
    cases.push(step(64, 4, 2, 40, 700, false));
    // A query with no keys at all (out 0, lse -inf), a long sequence and a one-key one.
    cases.push(Case {
        varlen: Some((vec![1, 1, 1], vec![0, 3000, 1])),
        ..step(128, 8, 2, 1, 0, false)
    });
    let mut worst = 0.0f64;
    for (i, case) in (1u64..).zip(&cases) {
        for dtype in 0..2 {
            let s = seed.wrapping_add(i * 2 + dtype);
            let [eo, el] = if dtype == 0 {
                check_host_forward::<bf16>(&dev, case, s, cuda::decode_host)
            } else {
                check_host_forward::<f16>(&dev, case, s, cuda::decode_host)
            };
            eprintln!(
                "decode {:<80} {} out {eo:.2e} lse {el:.2e}",
                case.label(),
                ["bf16", "f16"][dtype as usize]
            );
            worst = worst.max(eo).max(el);
            assert!(
                eo <= 1e-2 && el <= 1e-2,
                "{}: error above 1e-2",
                case.label()
            );
        }
    }
    eprintln!("worst relative error {worst:.2e} (decode)");
}

/// How the biases of a generation test's caches are drawn.
#[derive(Debug, Clone, Copy)]
enum StepBias {
    Random,
    /// A few values (ties, -0.0 and 0.0 among them).
    Ties,
    /// Rising with the key: every new key evicts the worst kept one.
    Rising,
    /// One value: sliding-window attention, every new key evicts the oldest.
    Constant,
}

/// One generation test: head dim, heads (Hq, Hkv, Hb = Hq?), each sequence's cache length at the
/// first step, the biases.
struct StepCase {
    d: usize,
    heads: (usize, usize, bool),
    starts: Vec<usize>,
    bias: StepBias,
}

/// Keys each step appends to every cache: single keys, a few at once, and more than
/// `STEP_MAX_NEW` (the state is selected again from the whole cache).
const STEP_GROWTH: [usize; 11] = [0, 1, 1, 1, 1, 3, 1, 100, 1, 1, 1];

/// `cuda::DecodeState` over generation steps (caches growing between calls, one query per
/// sequence): each step's out and lse against the CPU forward of that step, and the state's kept
/// sets against the top w of each cache ranked on the host. Windows are crossed on the way (a
/// cache of 511 keys at w = 512), a sequence starts with no key at all, a batch of 40
/// sequences takes two launches, and every other step reads views of longer buffers.
#[test]
fn decode_state_matches_cpu() {
    let Some(dev) = device() else { return };
    let seed = fresh_seed();
    eprintln!("seed {seed} (DMA_SEED reproduces)");
    let cases = [
        StepCase {
            d: 128,
            heads: (8, 2, false),
            starts: vec![5000, 300, 0, 511],
            bias: StepBias::Random,
        },
        StepCase {
            d: 64,
            heads: (16, 1, false),
            starts: vec![3000, 509],
            bias: StepBias::Ties,
        },
        StepCase {
            d: 128,
            heads: (4, 4, true),
            starts: vec![2000, 700],
            bias: StepBias::Rising,
        },
        StepCase {
            d: 64,
            heads: (8, 2, false),
            starts: vec![1500],
            bias: StepBias::Constant,
        },
        // More sequences than one launch takes (32): the second launch's slots.
        StepCase {
            d: 64,
            heads: (4, 2, false),
            starts: (0..40).map(|i| 480 + 7 * i).collect(),
            bias: StepBias::Random,
        },
    ];
    let mut worst = 0.0f64;
    for (i, case) in (0u64..).zip(&cases) {
        let s = seed.wrapping_add(i);
        let e = if i % 2 == 0 {
            check_decode_state::<bf16>(&dev, case, s)
        } else {
            check_decode_state::<f16>(&dev, case, s)
        };
        worst = worst.max(e);
    }
    eprintln!("worst relative error {worst:.2e} (decode state)");
}

/// One `StepCase` over the STEP_GROWTH steps (window 512); returns the worst out or lse error.
fn check_decode_state<T: cuda::CudaElement>(dev: &Device, case: &StepCase, seed: u64) -> f64 {
    let mut rng = StdRng::seed_from_u64(seed);
    let (hq, hkv, hb_is_q) = case.heads;
    let hb = if hb_is_q { hq } else { hkv };
    let heads = Heads::new(hq, hkv).with_bias(hb);
    let (d, w, row) = (case.d, 512usize, hkv * case.d);
    let grown: usize = STEP_GROWTH.iter().sum();
    // Each sequence's whole cache: k and v rows, and per bias head its biases.
    let mut k_all = Vec::new();
    let mut v_all = Vec::new();
    let mut b_all = Vec::new();
    for &start in &case.starts {
        let len = start + grown;
        k_all.push(random_values::<T>(&mut rng, len * row));
        v_all.push(random_values::<T>(&mut rng, len * row));
        let heads_bias: Vec<Vec<f32>> = (0..hb)
            .map(|_| match case.bias {
                StepBias::Random => random_bias(&mut rng, len),
                StepBias::Ties => {
                    let levels = [0.0f32, -0.0, 1.0, -1.0, 2.5];
                    (0..len).map(|_| levels[rng.random_range(0..5)]).collect()
                }
                StepBias::Rising => (0..len).map(|j| j as f32 * 1e-3 - 1.0).collect(),
                StepBias::Constant => vec![0.5; len],
            })
            .collect();
        b_all.push(heads_bias);
    }
    let params = Params::new(w);
    let mut state = cuda::DecodeState::new();
    let mut lens = case.starts.clone();
    let mut worst = 0.0f64;
    let st = dev.stream();
    for (step, &add) in STEP_GROWTH.iter().enumerate() {
        lens.iter_mut().for_each(|l| *l += add);
        let batch = lens.len();
        let mut cu_k = vec![0i32];
        for &l in &lens {
            cu_k.push(cu_k.last().unwrap() + l as i32);
        }
        let shape = Shape::varlen((0..=batch as i32).collect(), cu_k, heads, d);
        let q = random_values::<T>(&mut rng, batch * hq * d);
        let cat = |all: &[Vec<T>]| -> Vec<T> {
            all.iter()
                .zip(&lens)
                .flat_map(|(x, &l)| x[..l * row].iter().copied())
                .collect()
        };
        let (k, v) = (cat(&k_all), cat(&v_all));
        let bias: Vec<f32> = (0..hb)
            .flat_map(|h| {
                b_all
                    .iter()
                    .zip(&lens)
                    .flat_map(move |(b, &l)| b[h][..l].iter().copied())
            })
            .collect();
        let inputs = cpu::Inputs {
            q: &q,
            k: &k,
            v: &v,
            bias: &bias,
        };
        let want = cpu::forward(&params, &shape, &inputs).unwrap();
        let (dq, dk, dv, dbias) = upload_inputs(dev, &inputs);
        let mut out = st
            .clone_htod(&vec![T::from_f32(f32::NAN); q.len()])
            .unwrap();
        let mut lse = st.clone_htod(&vec![f32::NAN; want.lse.len()]).unwrap();
        let label = format!(
            "D={d} heads {:?} {:?} step {step} lens {lens:?}",
            case.heads, case.bias
        );
        // Every other step reads views of buffers with room to spare (NaN there: any read past
        // the view would be reported as a non-finite bias or spoil out).
        let result = if step % 2 == 1 {
            let spare = |x: &[T]| {
                let mut x = x.to_vec();
                x.extend(std::iter::repeat_n(T::from_f32(f32::NAN), 3 * row));
                st.clone_htod(&x).unwrap()
            };
            let (pk, pv) = (spare(&k), spare(&v));
            let mut b = bias.clone();
            b.extend([f32::NAN; 5]);
            let pb = st.clone_htod(&b).unwrap();
            state.step_into(
                dev,
                &params,
                &shape,
                &dq.as_view(),
                &pk.slice(..k.len()),
                &pv.slice(..v.len()),
                &pb.slice(..bias.len()),
                &mut out,
                &mut lse,
            )
        } else {
            state.step_into(
                dev, &params, &shape, &dq, &dk, &dv, &dbias, &mut out, &mut lse,
            )
        };
        result.unwrap_or_else(|e| panic!("{label}: {e}"));
        let got_out: Vec<T> = st.clone_dtoh(&out).unwrap();
        let got_lse: Vec<f32> = st.clone_dtoh(&lse).unwrap();
        let eo = rel_err(&to_f32(&got_out), &to_f32(&want.out))
            .unwrap_or_else(|e| panic!("{label}: out: {e}"));
        let el = rel_err(&got_lse, &want.lse).unwrap_or_else(|e| panic!("{label}: lse: {e}"));
        assert!(
            eo <= 1e-2 && el <= 1e-2,
            "{label}: out {eo:.2e} lse {el:.2e}"
        );
        worst = worst.max(eo).max(el);
        // The kept sets: the top w of each cache by (bias, index), ranked here.
        let kept = state.kept_keys().unwrap().expect("a step ran");
        for (s, &l) in lens.iter().enumerate() {
            for h in 0..hb {
                let mut ranks: Vec<u64> = (0..l).map(|j| rank(b_all[s][h][j], j)).collect();
                ranks.sort_unstable_by(|a, b| b.cmp(a));
                let mut top: Vec<u32> = ranks.iter().take(w).map(|&r| r as u32).collect();
                top.sort_unstable();
                assert!(
                    kept[s * hb + h] == top,
                    "{label}: sequence {s} head {h}: kept set"
                );
            }
        }
    }
    eprintln!(
        "decode state D={d} heads {:?} starts {:?} {:?} {}: worst {worst:.2e}",
        case.heads,
        case.starts,
        case.bias,
        T::DTYPE
    );
    worst
}

/// A non-finite bias among the keys a decode-state step inserts is the typed error naming it; the
/// state then selects again from the whole cache, and a call the kept set does not serve (two
/// queries in a sequence) is decode_into's.
#[test]
fn decode_state_errors_and_fallbacks() {
    let Some(dev) = device() else { return };
    let st = dev.stream();
    let mut rng = StdRng::seed_from_u64(fresh_seed());
    let heads = Heads::new(4, 2).with_bias(4);
    let params = Params::new(64);
    let mut state = cuda::DecodeState::new();
    // Caches of 700 and 300 keys, then 701 and 301 (the step inserts keys 700 and 300).
    for (step, lens) in [[700i32, 300], [701, 301], [701, 301], [702, 302]]
        .iter()
        .enumerate()
    {
        let nq = if step == 3 { 2 } else { 1 };
        let shape = Shape::varlen(
            vec![0, 1, 1 + nq],
            vec![0, lens[0], lens[0] + lens[1]],
            heads,
            64,
        );
        let (q, k, v, mut bias) = random_inputs::<bf16>(&mut rng, &shape, false);
        let problem = shape.problem().unwrap();
        let at = problem.bias_range(&problem.sequences[1], 3).start + 300;
        if step == 1 {
            bias[at] = f32::NAN;
        }
        let inputs = cpu::Inputs {
            q: &q,
            k: &k,
            v: &v,
            bias: &bias,
        };
        let (dq, dk, dv, dbias) = upload_inputs(&dev, &inputs);
        let mut out = st.clone_htod(&vec![bf16::NAN; q.len()]).unwrap();
        let mut lse = st.clone_htod(&vec![f32::NAN; problem.lse_len()]).unwrap();
        // The fallback to decode_into (step 3) is given views.
        let got = match step {
            3 => state.step_into(
                &dev,
                &params,
                &shape,
                &dq.as_view(),
                &dk.slice(..),
                &dv.slice(..),
                &dbias.slice(..),
                &mut out,
                &mut lse,
            ),
            _ => state.step_into(
                &dev, &params, &shape, &dq, &dk, &dv, &dbias, &mut out, &mut lse,
            ),
        };
        if step == 1 {
            match got {
                Err(DmaError::NonFiniteBias {
                    sequence: 1,
                    head: 3,
                    key: 300,
                    value,
                }) if value.is_nan() => {}
                other => {
                    panic!("step 1: expected the NaN at sequence 1, head 3, key 300: {other:?}")
                }
            }
            assert!(
                state.kept_keys().unwrap().is_none(),
                "a failed step drops the sets"
            );
            continue;
        }
        got.unwrap_or_else(|e| panic!("step {step}: {e}"));
        let want = cpu::forward(&params, &shape, &inputs).unwrap();
        let eo = rel_err(&to_f32(&st.clone_dtoh(&out).unwrap()), &to_f32(&want.out)).unwrap();
        let el = rel_err(&st.clone_dtoh(&lse).unwrap(), &want.lse).unwrap();
        assert!(
            eo <= 1e-2 && el <= 1e-2,
            "step {step}: out {eo:.2e} lse {el:.2e}"
        );
        assert_eq!(
            state.kept_keys().unwrap().is_some(),
            step != 3,
            "step {step}: the kept sets serve one query per sequence only"
        );
    }
}

/// Two runs of a decode call give the same bits: the multi-launch decode (four queries per
/// sequence) and a `DecodeState`'s first step, whose kept sets come from the decode selection's
/// CTAs in whatever order they finish (its gather lists the keys in key order all the same).
#[test]
fn decode_is_deterministic() {
    let Some(dev) = device() else { return };
    let st = dev.stream();
    let mut rng = StdRng::seed_from_u64(fresh_seed());
    let heads = Heads::new(8, 2);
    let params = Params::new(512);
    for nq in [4i32, 1] {
        let shape = Shape::varlen(vec![0, nq, 2 * nq], vec![0, 30000, 39000], heads, 128);
        let (q, k, v, bias) = random_inputs::<bf16>(&mut rng, &shape, false);
        let problem = shape.problem().unwrap();
        let inputs = cpu::Inputs {
            q: &q,
            k: &k,
            v: &v,
            bias: &bias,
        };
        let (dq, dk, dv, dbias) = upload_inputs(&dev, &inputs);
        let run = || {
            let mut out = st.alloc_zeros::<bf16>(q.len()).unwrap();
            let mut lse = st.alloc_zeros::<f32>(problem.lse_len()).unwrap();
            if nq == 1 {
                cuda::DecodeState::new()
                    .step_into(
                        &dev, &params, &shape, &dq, &dk, &dv, &dbias, &mut out, &mut lse,
                    )
                    .unwrap();
            } else {
                cuda::decode_into(
                    &dev, &params, &shape, &dq, &dk, &dv, &dbias, &mut out, &mut lse,
                )
                .unwrap();
            }
            let out: Vec<u16> = st
                .clone_dtoh(&out)
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            let lse: Vec<u32> = st
                .clone_dtoh(&lse)
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            (out, lse)
        };
        let first = run();
        for _ in 0..3 {
            assert!(run() == first, "Nq={nq}: two runs differ");
        }
    }
}

/// Calls `check` on every third case, from case `first`, with fresh random biases (on the host
/// and on the device): the selection tests.
fn with_random_biases(
    dev: &Device,
    first: usize,
    mut check: impl FnMut(&Case, &Shape, &[f32], &CudaSlice<f32>),
) {
    let seed = fresh_seed();
    let small = std::env::var_os("DMA_CUDA_SMALL").is_some();
    for (i, case) in cases(small)
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 == first)
    {
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(i as u64));
        let shape = case.shape();
        let (_, _, _, bias) = random_inputs::<bf16>(&mut rng, &shape, case.ties);
        let dbias = dev.stream().clone_htod(&bias).unwrap();
        check(case, &shape, &bias, &dbias);
    }
}

/// The GPU selection keeps exactly the CPU selection's keys, row by row.
#[test]
fn selection_matches_cpu() {
    let Some(dev) = device() else { return };
    with_random_biases(&dev, 0, |case, shape, bias, dbias| {
        let problem = shape.problem().unwrap();
        let params = case.params();
        let sel = cuda::select(&dev, &params, shape, dbias)
            .and_then(|s| s.to_host(&dev))
            .unwrap_or_else(|e| panic!("{}: {e}", case.label()));
        let hb = problem.heads.bias;
        // Query rows of the longest causal lists (four blocks of the forward by default).
        let rows = cuda::list_rows().unwrap();
        let mut list_base = 0usize;
        for (si, seq) in problem.sequences.iter().enumerate() {
            let lists: Vec<_> = cuda::causal_lists(seq.nq, rows).collect();
            for h in 0..hb {
                let keys = &bias[problem.bias_range(seq, h)];
                let cpu_sel = KeySelection::new(keys, seq.nq, case.window, case.causal, rows);
                for r in 0..seq.nq {
                    let list = if case.causal {
                        list_base + lists.iter().position(|l| (l.0..l.1).contains(&r)).unwrap()
                    } else {
                        si
                    };
                    let slot = list * hb + h;
                    let n = sel.count[slot] as usize;
                    let cand = &sel.cand[slot * sel.cap..slot * sel.cap + n];
                    let p = seq.query_offset() + r as i64;
                    let thr = sel.thr[h * problem.total_q + seq.q_start + r];
                    let kept: Vec<usize> = cand
                        .iter()
                        .map(|&c| {
                            let j = (c & 0xffff_ffff) as usize;
                            assert_eq!(c, rank(keys[j], j), "candidate rank");
                            j
                        })
                        .filter(|&j| (!case.causal || j as i64 <= p) && rank(keys[j], j) >= thr)
                        .collect();
                    let visible = if case.causal {
                        (p + 1).clamp(0, seq.nk as i64) as usize
                    } else {
                        seq.nk
                    };
                    let want = visible.min(case.window);
                    assert_eq!(
                        kept.len(),
                        want,
                        "{} seq {si} head {h} row {r}",
                        case.label()
                    );
                    for &j in &kept {
                        assert!(
                            cpu_sel.keeps(p, j),
                            "{} seq {si} head {h} row {r}: key {j}",
                            case.label()
                        );
                    }
                }
            }
            if case.causal {
                list_base += lists.len();
            }
        }
    });
}

/// The sure keys the Hopper forward takes: the selection orders each causal list so that each of
/// its blocks' sure keys are a prefix, the block's sure count exactly the number of the list's
/// keys ranked at least the largest threshold of the block's rows that keep anything (so each is
/// kept by every such row), all of them before the list's first row; the list's own keys that
/// some row keeps come last, ascending, and no others; each block's seen count is what its rows
/// see, and the keys it skips are kept by none of its rows or later ones. Two calls agree. A
/// non-causal list's keys are all sure.
#[test]
fn partition_puts_the_sure_keys_first() {
    let Some(dev) = device() else { return };
    let (mut partitioned, mut skipped) = (0, 0);
    with_random_biases(&dev, 1, |case, shape, bias, dbias| {
        let problem = shape.problem().unwrap();
        let params = case.params();
        let label = case.label();
        let again = cuda::select(&dev, &params, shape, dbias)
            .and_then(|s| s.to_host(&dev))
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let (sel, sure) = cuda::select_partitioned(&dev, &params, shape, dbias)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let sel = sel.to_host(&dev).unwrap();
        assert_eq!(
            (&sel.count, &sel.thr),
            (&again.count, &again.thr),
            "{label}: two calls"
        );
        for (slot, &n) in sel.count.iter().enumerate() {
            let keys = |s: &cuda::HostSelection| s.cand[slot * s.cap..][..n as usize].to_vec();
            assert_eq!(keys(&sel), keys(&again), "{label}: two calls' list {slot}");
        }
        if !case.causal {
            for (slot, &n) in sel.count.iter().enumerate() {
                let blocks = &sure[slot * cuda::LIST_BLOCKS..][..cuda::LIST_BLOCKS];
                assert!(
                    blocks.iter().all(|&s| s == n),
                    "{label}: a non-causal list is all sure"
                );
            }
            return;
        }
        let hb = problem.heads.bias;
        let rows = cuda::list_rows().unwrap();
        let mut list = 0usize;
        for seq in &problem.sequences {
            for (first, end) in cuda::causal_lists(seq.nq, rows) {
                let clamp = |r: usize| (seq.query_offset() + r as i64).clamp(0, seq.nk as i64);
                let (p0, e0) = (clamp(first) as usize, clamp(end) as usize);
                for h in 0..hb {
                    let slot = list * hb + h;
                    let n = sel.count[slot] as usize;
                    let keys = &sel.cand[slot * sel.cap..slot * sel.cap + n];
                    let index = |r: &u64| *r as u32 as usize;
                    let thr = &sel.thr[h * problem.total_q + seq.q_start..][first..end];
                    // The own keys some row keeps (the row at the key's position, whose
                    // threshold is the lowest of the rows that see it), ascending, last.
                    let bias = &bias[problem.bias_range(seq, h)];
                    let kept_own: Vec<usize> = (p0..e0)
                        .filter(|&j| {
                            let r = (j as i64 - seq.query_offset()) as usize - first;
                            rank(bias[j], j) >= thr[r]
                        })
                        .collect();
                    let own = n - kept_own.len();
                    let own_keys: Vec<usize> = keys[own..].iter().map(index).collect();
                    assert_eq!(own_keys, kept_own, "{label}: own keys");
                    assert!(
                        keys[..own].iter().all(|r| index(r) < p0),
                        "{label}: keys before"
                    );
                    // Each block of the list: its rows see the keys up to its last row's
                    // position, and its sure keys (those every row of it that keeps anything
                    // keeps, t* the largest threshold of those rows) are a prefix of the keys
                    // before the list's first row.
                    for (place, b0) in (first..end).step_by(cuda::BLOCK_M).enumerate() {
                        let b1 = (b0 + cuda::BLOCK_M).min(end);
                        let part = slot * cuda::LIST_BLOCKS + place;
                        let last = seq.query_offset() + b1 as i64 - 1;
                        let seen = keys.iter().filter(|r| index(r) as i64 <= last).count();
                        let counts = &sel.block_counts[part * cuda::BLOCK_COUNTS..][..3];
                        assert_eq!(counts[0] as usize, seen, "{label}: seen by block {place}");
                        // The keys before the list that no row from the block's on keeps are
                        // the run [head, head + skip), which ends where the own keys start.
                        let (head, skip) = (counts[1] as usize, counts[2] as usize);
                        assert_eq!(head + skip, own, "{label}: skipped run of block {place}");
                        let later = thr[b0 - first..].iter().copied().filter(|&t| t != u64::MAX);
                        let t_least = later.min().unwrap_or(u64::MAX);
                        assert!(
                            keys[head..own].iter().all(|&r| r < t_least),
                            "{label}: a key kept from block {place} on is skipped"
                        );
                        // And the run is not empty when it must not be: with a whole window
                        // before the list, an own key kept at or before the block's first row
                        // pushes the least of them out of the w best of every row from there on.
                        let start = seq.query_offset() + b0 as i64;
                        if own == params.window && kept_own.iter().any(|&j| (j as i64) <= start) {
                            assert!(skip > 0, "{label}: block {place} skips nothing");
                            skipped += 1;
                        }
                        let live = thr[b0 - first..b1 - first]
                            .iter()
                            .copied()
                            .filter(|&t| t != u64::MAX);
                        let t_star = live.max().unwrap_or(0);
                        let s = sure[part] as usize;
                        if t_star == 0 {
                            assert_eq!(s, 0, "{label}: sure keys of a row-less block");
                            continue;
                        }
                        assert!(s <= own, "{label}: sure count past the keys before");
                        assert!(
                            keys[..s].iter().all(|&r| r >= t_star),
                            "{label}: a sure key of block {place}"
                        );
                        assert!(
                            keys[s..own].iter().all(|&r| r < t_star),
                            "{label}: sure count of block {place}"
                        );
                        partitioned += usize::from(s > 0);
                    }
                }
                list += 1;
            }
        }
    });
    assert!(
        partitioned > 0,
        "no list had sure keys: the test checked nothing"
    );
    let small = std::env::var_os("DMA_CUDA_SMALL").is_some();
    assert!(
        skipped > 0 || small,
        "no block had to skip a key: the test checked little"
    );
}

/// `scatter_add_rows` against a direct f64 sum on fresh random rows, with ids that repeat many
/// times (an embedding's gradient: atomics on one row) and ids past the table (skipped); a
/// short `src` is a typed error.
#[test]
fn scatter_add_rows_matches_cpu() {
    let Some(dev) = device() else { return };
    let seed = fresh_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for (rows, width, n) in [(8192, 128, 65536), (37, 5, 1000), (3, 64, 7)] {
        let src: Vec<f32> = (0..n * width)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        // A tenth of the ids fall on row 0, a few past the end.
        let ids: Vec<u32> = (0..n)
            .map(|i| match i % 10 {
                0 => 0,
                9 if i % 100 == 99 => (rows + i) as u32,
                _ => rng.random_range(0..rows as u32),
            })
            .collect();
        let start: Vec<f32> = (0..rows * width)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let mut want: Vec<f64> = start.iter().map(|&x| x as f64).collect();
        for (i, &id) in ids.iter().enumerate() {
            if (id as usize) < rows {
                for c in 0..width {
                    want[id as usize * width + c] += src[i * width + c] as f64;
                }
            }
        }
        let s = dev.stream();
        let (d_src, mut d_out) = (s.clone_htod(&src).unwrap(), s.clone_htod(&start).unwrap());
        let d_ids = s.clone_htod(&ids).unwrap();
        cuda::scatter_add_rows(&dev, &d_src, &d_ids, &mut d_out, width).unwrap();
        let got = s.clone_dtoh(&d_out).unwrap();
        let scale = want.iter().fold(1.0f64, |m, x| m.max(x.abs()));
        let err = got
            .iter()
            .zip(&want)
            .map(|(&g, &w)| (g as f64 - w).abs() / scale)
            .fold(0.0, f64::max);
        eprintln!(
            "scatter_add_rows rows={rows} width={width} n={n}: max error {err:.1e} (seed {seed})"
        );
        assert!(err < 1e-5, "seed {seed}: max error {err}");
    }
    let s = dev.stream();
    let (src, ids) = (
        s.clone_htod(&[0f32; 5]).unwrap(),
        s.clone_htod(&[0u32; 3]).unwrap(),
    );
    let mut out = s.clone_htod(&[0f32; 4]).unwrap();
    let err = cuda::scatter_add_rows(&dev, &src, &ids, &mut out, 2).unwrap_err();
    assert!(
        matches!(err, DmaError::ShapeMismatch { name: "src", .. }),
        "{err}"
    );
}

/// Largest |got - want| over the largest |want| (at least 1).
fn max_scaled_err(got: &[f32], want: &[f64]) -> f64 {
    max_err_over(got, want, want.iter().fold(1.0f64, |m, x| m.max(x.abs())))
}

/// The largest error of column sums over many rows, relative to the largest sum of the terms'
/// magnitudes (`abs_sums`): that, not the sum itself, bounds f32 rounding when terms cancel
/// (600 000 rows of random signs sum to a few hundred out of a magnitude sum of ~10^5).
fn max_sum_err(got: &[f32], want: &[f64], abs_sums: &[f64]) -> f64 {
    max_err_over(got, want, abs_sums.iter().fold(1.0f64, |m, x| m.max(*x)))
}

fn max_err_over(got: &[f32], want: &[f64], scale: f64) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs() / scale)
        .fold(0.0, f64::max)
}

/// The RMSNorm kernels against f64 (the output from the definition, dx and dw from the closed
/// form of the derivative, summed over rows in f64), including rows of width not a multiple of
/// 32, one row, and more rows than the grid has warps.
#[test]
fn rms_norm_matches_f64() {
    let Some(dev) = device() else { return };
    let seed = fresh_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let eps = 1e-6f32;
    for (rows, width) in [(65536, 128), (600_000, 4), (1, 3000), (77, 37)] {
        let mut random =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-2.0..2.0)).collect() };
        let (x, w, g) = (random(rows * width), random(width), random(rows * width));
        let (mut y_want, mut dx_want, mut dw_want) =
            (vec![0f64; x.len()], vec![0f64; x.len()], vec![0f64; width]);
        let mut dw_abs = vec![0f64; width];
        for r in 0..rows {
            let at = r * width..(r + 1) * width;
            let (xr, gr) = (&x[at.clone()], &g[at.clone()]);
            let ms = xr.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / width as f64;
            let inv = 1.0 / (ms + eps as f64).sqrt();
            let dot: f64 = (0..width)
                .map(|c| xr[c] as f64 * gr[c] as f64 * w[c] as f64)
                .sum();
            for c in 0..width {
                let (xc, gc, wc) = (xr[c] as f64, gr[c] as f64, w[c] as f64);
                y_want[r * width + c] = xc * inv * wc;
                dx_want[r * width + c] = inv * (gc * wc - xc * inv * inv * dot / width as f64);
                dw_want[c] += gc * xc * inv;
                dw_abs[c] += (gc * xc * inv).abs();
            }
        }
        let s = dev.stream();
        let (dx_, dw_, dg) = (
            s.clone_htod(&x).unwrap(),
            s.clone_htod(&w).unwrap(),
            s.clone_htod(&g).unwrap(),
        );
        let mut y = s.clone_htod(&vec![f32::NAN; x.len()]).unwrap();
        cuda::rms_norm_forward(&dev, &dx_, &dw_, &mut y, width, eps).unwrap();
        let mut grads = s.clone_htod(&vec![f32::NAN; x.len() + width]).unwrap();
        let (mut gx, mut gw) = grads.split_at_mut(x.len());
        cuda::rms_norm_backward(&dev, &dx_, &dw_, &dg, &mut gx, &mut gw, width, eps).unwrap();
        let grads = s.clone_dtoh(&grads).unwrap();
        let errs = [
            max_scaled_err(&s.clone_dtoh(&y).unwrap(), &y_want),
            max_scaled_err(&grads[..x.len()], &dx_want),
            max_sum_err(&grads[x.len()..], &dw_want, &dw_abs),
        ];
        eprintln!("rms_norm rows={rows} width={width}: y, dx, dw errors {errs:?} (seed {seed})");
        assert!(errs.iter().all(|&e| e < 1e-5), "seed {seed}: {errs:?}");
    }
    let s = dev.stream();
    let (x, w) = (
        s.clone_htod(&[0f32; 10]).unwrap(),
        s.clone_htod(&[0f32; 4]).unwrap(),
    );
    let mut y = s.clone_htod(&[0f32; 10]).unwrap();
    let err = cuda::rms_norm_forward(&dev, &x, &w, &mut y, 4, eps).unwrap_err();
    assert!(
        matches!(err, DmaError::ShapeMismatch { name: "x", .. }),
        "{err}"
    );
}

/// The RoPE kernel and its inverse against f64, on tables of random angles.
#[test]
fn rope_matches_f64() {
    let Some(dev) = device() else { return };
    let seed = fresh_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for (batch, n, heads, d) in [(64, 1024, 2, 64), (3, 5, 4, 128), (2, 1, 1, 2)] {
        let half = d / 2;
        let x: Vec<f32> = (0..batch * n * heads * d)
            .map(|_| rng.random_range(-2.0..2.0))
            .collect();
        let angles: Vec<f32> = (0..n * half).map(|_| rng.random_range(-4.0..4.0)).collect();
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        let s = dev.stream();
        let (dx, dc, ds) = (
            s.clone_htod(&x).unwrap(),
            s.clone_htod(&cos).unwrap(),
            s.clone_htod(&sin).unwrap(),
        );
        for inverse in [false, true] {
            let sign = if inverse { -1.0 } else { 1.0 };
            let mut want = vec![0f64; x.len()];
            for (row, (xr, yr)) in x.chunks(d).zip(want.chunks_mut(d)).enumerate() {
                let t = (row / heads) % n;
                for i in 0..half {
                    let (c, sn) = (cos[t * half + i] as f64, sign * sin[t * half + i] as f64);
                    let (x1, x2) = (xr[i] as f64, xr[i + half] as f64);
                    yr[i] = x1 * c - x2 * sn;
                    yr[i + half] = x1 * sn + x2 * c;
                }
            }
            let mut y = s.clone_htod(&vec![f32::NAN; x.len()]).unwrap();
            cuda::rope(&dev, &dx, &dc, &ds, &mut y, n, heads, half, inverse).unwrap();
            let err = max_scaled_err(&s.clone_dtoh(&y).unwrap(), &want);
            eprintln!(
                "rope {batch}x{n}x{heads}x{d} inverse={inverse}: error {err:.1e} (seed {seed})"
            );
            assert!(err < 1e-6, "seed {seed}: {err}");
        }
    }
}

/// The gated MLP's `silu(a) * u` and its backward against f64 (the derivative's closed form),
/// including large |a|, where the sigmoid saturates.
#[test]
fn silu_mul_matches_f64() {
    let Some(dev) = device() else { return };
    let seed = fresh_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for n in [65536 * 256, 1000, 1] {
        let mut random = |r: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(-r..r)).collect() };
        let (a, u, g) = (random(30.0), random(2.0), random(2.0));
        let (mut h_want, mut dadu_want) = (vec![0f64; n], vec![0f64; 2 * n]);
        for i in 0..n {
            let (x, ui, gi) = (a[i] as f64, u[i] as f64, g[i] as f64);
            let sig = 1.0 / (1.0 + (-x).exp());
            h_want[i] = x * sig * ui;
            dadu_want[i] = gi * ui * sig * (1.0 + x * (1.0 - sig));
            dadu_want[n + i] = gi * x * sig;
        }
        let s = dev.stream();
        let (da, du, dg) = (
            s.clone_htod(&a).unwrap(),
            s.clone_htod(&u).unwrap(),
            s.clone_htod(&g).unwrap(),
        );
        let mut h = s.clone_htod(&vec![f32::NAN; n]).unwrap();
        cuda::silu_mul_forward(&dev, &da, &du, &mut h).unwrap();
        let mut dadu = s.clone_htod(&vec![f32::NAN; 2 * n]).unwrap();
        cuda::silu_mul_backward(&dev, &da, &du, &dg, &mut dadu).unwrap();
        let errs = [
            max_scaled_err(&s.clone_dtoh(&h).unwrap(), &h_want),
            max_scaled_err(&s.clone_dtoh(&dadu).unwrap(), &dadu_want),
        ];
        eprintln!("silu_mul n={n}: h, da|du errors {errs:?} (seed {seed})");
        assert!(errs.iter().all(|&e| e < 1e-5), "seed {seed}: {errs:?}");
    }
}

/// The residual `x * s + r` and its backward (dx, and ds summed over rows) against f64.
#[test]
fn scale_add_matches_f64() {
    let Some(dev) = device() else { return };
    let seed = fresh_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for (rows, width) in [(65536, 128), (600_000, 4), (1, 3000), (77, 37)] {
        let mut random =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-2.0..2.0)).collect() };
        let (x, sc, r, g) = (
            random(rows * width),
            random(width),
            random(rows * width),
            random(rows * width),
        );
        let (mut y_want, mut dx_want, mut ds_want) =
            (vec![0f64; x.len()], vec![0f64; x.len()], vec![0f64; width]);
        let mut ds_abs = vec![0f64; width];
        for e in 0..x.len() {
            let c = e % width;
            y_want[e] = x[e] as f64 * sc[c] as f64 + r[e] as f64;
            dx_want[e] = g[e] as f64 * sc[c] as f64;
            ds_want[c] += g[e] as f64 * x[e] as f64;
            ds_abs[c] += (g[e] as f64 * x[e] as f64).abs();
        }
        let s = dev.stream();
        let (dx_, ds_, dr, dg) = (
            s.clone_htod(&x).unwrap(),
            s.clone_htod(&sc).unwrap(),
            s.clone_htod(&r).unwrap(),
            s.clone_htod(&g).unwrap(),
        );
        let mut y = s.clone_htod(&vec![f32::NAN; x.len()]).unwrap();
        cuda::scale_add_forward(&dev, &dx_, &ds_, &dr, &mut y, width).unwrap();
        let mut grads = s.clone_htod(&vec![f32::NAN; x.len() + width]).unwrap();
        let (mut gx, mut gs) = grads.split_at_mut(x.len());
        cuda::scale_add_backward(&dev, &dx_, &ds_, &dg, &mut gx, &mut gs, width).unwrap();
        let grads = s.clone_dtoh(&grads).unwrap();
        let errs = [
            max_scaled_err(&s.clone_dtoh(&y).unwrap(), &y_want),
            max_scaled_err(&grads[..x.len()], &dx_want),
            max_sum_err(&grads[x.len()..], &ds_want, &ds_abs),
        ];
        eprintln!("scale_add rows={rows} width={width}: y, dx, ds errors {errs:?} (seed {seed})");
        assert!(errs.iter().all(|&e| e < 1e-5), "seed {seed}: {errs:?}");
    }
}

/// The cross-entropy kernels against f64: each row's loss from the definition and the logits'
/// gradient `g * (softmax - onehot)` (from the forward's loss, as in training), at a vocabulary's width, with more rows than the grid has
/// warps, with one class, and with a target that is not a class (NaN, not a read past the row).
#[test]
fn cross_entropy_matches_f64() {
    let Some(dev) = device() else { return };
    let seed = fresh_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for (rows, classes) in [(4096, 8192), (300_000, 5), (3, 100_000), (7, 1)] {
        let x: Vec<f32> = (0..rows * classes)
            .map(|_| rng.random_range(-20.0..20.0))
            .collect();
        let mut t: Vec<u32> = (0..rows)
            .map(|_| rng.random_range(0..classes as u32))
            .collect();
        t[rows - 1] = classes as u32;
        let g: Vec<f32> = (0..rows).map(|_| rng.random_range(-2.0..2.0)).collect();
        let (mut loss_want, mut dx_want) = (vec![0f64; rows], vec![0f64; x.len()]);
        for r in 0..rows {
            let row = &x[r * classes..(r + 1) * classes];
            let max = row.iter().fold(f64::MIN, |m, &v| m.max(v as f64));
            let lse = max
                + row
                    .iter()
                    .map(|&v| (v as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            let t = t[r] as usize;
            loss_want[r] = if t < classes {
                lse - row[t] as f64
            } else {
                f64::NAN
            };
            for (c, &v) in row.iter().enumerate() {
                let onehot = if c == t { 1.0 } else { 0.0 };
                dx_want[r * classes + c] = g[r] as f64 * ((v as f64 - lse).exp() - onehot);
            }
        }
        let s = dev.stream();
        let (dx_, dt, dg) = (
            s.clone_htod(&x).unwrap(),
            s.clone_htod(&t).unwrap(),
            s.clone_htod(&g).unwrap(),
        );
        let mut loss = s.clone_htod(&vec![f32::NAN; rows]).unwrap();
        cuda::cross_entropy_forward(&dev, &dx_, &dt, &mut loss, classes).unwrap();
        let mut dx = s.clone_htod(&vec![f32::NAN; x.len()]).unwrap();
        let (lv, gv) = (loss.as_view(), dg.as_view());
        cuda::cross_entropy_backward(&dev, &dx_, &dt, &lv, &gv, &mut dx, classes).unwrap();
        let (loss, dx) = (s.clone_dtoh(&loss).unwrap(), s.clone_dtoh(&dx).unwrap());
        // The last row's target is not a class: NaN there, and only there.
        let last = (rows - 1) * classes;
        assert!(
            loss[rows - 1].is_nan() && dx[last..].iter().all(|v| v.is_nan()),
            "seed {seed}"
        );
        let errs = [
            max_scaled_err(&loss[..rows - 1], &loss_want[..rows - 1]),
            max_scaled_err(&dx[..last], &dx_want[..last]),
        ];
        eprintln!(
            "cross_entropy rows={rows} classes={classes}: loss, dx errors {errs:?} (seed {seed})"
        );
        assert!(errs.iter().all(|&e| e < 1e-5), "seed {seed}: {errs:?}");
    }
    let s = dev.stream();
    let (x, t) = (
        s.clone_htod(&[0f32; 10]).unwrap(),
        s.clone_htod(&[0u32; 2]).unwrap(),
    );
    let mut loss = s.clone_htod(&[0f32; 2]).unwrap();
    let err = cuda::cross_entropy_forward(&dev, &x, &t, &mut loss, 3).unwrap_err();
    assert!(err.to_string().contains("logits"), "{err}");
}

/// Three AdamW steps in place (both moments, then the weights) against f64, with weight decay
/// and a gradient scale, on more elements than the grid has threads.
#[test]
fn adamw_matches_f64() {
    let Some(dev) = device() else { return };
    let seed = fresh_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let n = 20_000_000;
    let theta: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
    let (beta1, beta2, eps, lr, wd, scale) = (0.9f32, 0.95f32, 1e-8f32, 1e-2f32, 0.1f32, 0.5f32);
    let s = dev.stream();
    let mut d_theta = s.clone_htod(&theta).unwrap();
    let mut d_m = s.alloc_zeros::<f32>(n).unwrap();
    let mut d_v = s.alloc_zeros::<f32>(n).unwrap();
    let mut want: Vec<f64> = theta.iter().map(|&x| x as f64).collect();
    let (mut m, mut v) = (vec![0f64; n], vec![0f64; n]);
    for t in 1..=3 {
        let g: Vec<f32> = (0..n).map(|_| rng.random_range(-3.0..3.0)).collect();
        let d_g = s.clone_htod(&g).unwrap();
        let (c1, c2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
        for (beta, square, x) in [(beta1, false, &mut d_m), (beta2, true, &mut d_v)] {
            let step = cuda::AdamWMoment {
                beta,
                grad_scale: scale,
                square,
            };
            cuda::adamw_moment(&dev, &mut x.slice_mut(..), &d_g, &step).unwrap();
        }
        let step = cuda::AdamWUpdate {
            keep: 1.0 - lr * wd,
            lr,
            c1,
            c2,
            eps,
        };
        cuda::adamw_update(&dev, &mut d_theta.slice_mut(..), &d_m, &d_v, &step).unwrap();
        for i in 0..n {
            let gi = g[i] as f64 * scale as f64;
            m[i] = beta1 as f64 * m[i] + (1.0 - beta1 as f64) * gi;
            v[i] = beta2 as f64 * v[i] + (1.0 - beta2 as f64) * gi * gi;
            let (mh, vh) = (m[i] / c1 as f64, v[i] / c2 as f64);
            want[i] -= (lr * wd) as f64 * want[i] + lr as f64 * mh / (vh.sqrt() + eps as f64);
        }
    }
    let got = s.clone_dtoh(&d_theta).unwrap();
    // Relative to lr, the most a step moves a weight.
    let err = got
        .iter()
        .zip(&want)
        .map(|(&g, w)| (g as f64 - w).abs())
        .fold(0.0, f64::max)
        / lr as f64;
    eprintln!("adamw n={n}, 3 steps: max error {err:.1e} x lr (seed {seed})");
    assert!(err < 1e-3, "seed {seed}: {err}");
}

/// Typed errors for what the backend cannot do.
/// Device::new leaves the default memory pool keeping freed memory (release threshold at the
/// maximum), and trim_pool gives it back without error.
#[test]
fn device_pool_keeps_freed_memory() {
    use cudarc::driver::sys;
    let Some(dev) = device() else { return };
    if !dev.context().has_async_alloc() {
        return;
    }
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold: u64 = 0;
    // SAFETY: plain driver calls on the current context's device; the attribute is a u64.
    unsafe {
        assert_eq!(
            sys::cuDeviceGetDefaultMemPool(&mut pool, dev.context().cu_device()),
            sys::CUresult::CUDA_SUCCESS
        );
        let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
        sys::cuMemPoolGetAttribute(pool, attr, (&mut threshold as *mut u64).cast());
    }
    assert_eq!(threshold, u64::MAX);
    let buf = dev.stream().alloc_zeros::<f32>(1 << 20).unwrap();
    drop(buf);
    dev.trim_pool(0).unwrap();
}

#[test]
fn errors_are_typed() {
    let Some(dev) = device() else { return };
    let shape = Shape::dense(1, 8, 8, Heads::new(2, 1), 48);
    let x = vec![bf16::from_f32(0.5); 8 * 2 * 48];
    let kv = vec![bf16::from_f32(0.5); 8 * 48];
    let bias = vec![0.0f32; 8];
    let inputs = cpu::Inputs {
        q: &x,
        k: &kv,
        v: &kv,
        bias: &bias,
    };
    let err = cuda::forward_host(&dev, &Params::new(4), &shape, &inputs).unwrap_err();
    assert!(
        matches!(err, DmaError::NoKernelForHeadDim { head_dim: 48, .. }),
        "{err}"
    );
    let lse = vec![0.0f32; 2 * 8];
    let err =
        cuda::backward_host(&dev, &Params::new(4), &shape, &inputs, &x, &lse, &x).unwrap_err();
    assert!(
        matches!(err, DmaError::NoKernelForHeadDim { head_dim: 48, .. }),
        "{err}"
    );
    let err =
        cuda::backward_host(&dev, &Params::new(4), &shape, &inputs, &x, &lse[1..], &x).unwrap_err();
    assert!(
        matches!(err, DmaError::ShapeMismatch { name: "lse", .. }),
        "{err}"
    );
    let err = cuda::decode_host(&dev, &Params::new(4), &shape, &inputs).unwrap_err();
    assert!(
        matches!(err, DmaError::NoKernelForHeadDim { head_dim: 48, .. }),
        "{err}"
    );
    let mut nan_bias = vec![0.0f32; 8];
    nan_bias[3] = f32::NAN;
    let shape = Shape::dense(1, 8, 8, Heads::new(2, 1), 64);
    let x = vec![bf16::from_f32(0.5); 8 * 2 * 64];
    let kv = vec![bf16::from_f32(0.5); 8 * 64];
    let inputs = cpu::Inputs {
        q: &x,
        k: &kv,
        v: &kv,
        bias: &nan_bias,
    };
    let err = cuda::forward_host(&dev, &Params::new(4), &shape, &inputs).unwrap_err();
    assert!(
        matches!(err, DmaError::NonFiniteBias { key: 3, .. }),
        "{err}"
    );
}

/// A non-finite bias through the device-buffer entry points (forward_into, decode_into,
/// backward with and without a selection, select) gives the CPU backend's error: the same
/// variant, sequence, bias head and key (the first in the CPU's order), and value.
#[test]
fn nonfinite_bias_on_device_is_typed() {
    let Some(dev) = device() else { return };
    // Three sequences, every one with queries (keys of a sequence without queries are never
    // read on the device); GQA with Hb = Hq so that the bias head is not the kv head. Then the
    // same keys with one query per sequence (a decode step: decode_into's fused kernel).
    for cu_q in [vec![0, 5, 45, 145], vec![0, 1, 2, 3]] {
        let shape = Shape::varlen(
            cu_q,
            vec![0, 10, 50, 250],
            Heads::new(4, 2).with_bias(4),
            64,
        );
        nonfinite_bias_errors(&dev, &shape);
    }
}

/// `nonfinite_bias_on_device_is_typed` on one shape.
fn nonfinite_bias_errors(dev: &Device, shape: &Shape) {
    let s = dev.stream();
    let problem = shape.problem().unwrap();
    let mut rng = StdRng::seed_from_u64(fresh_seed());
    let (q, k, v, clean) = random_inputs::<bf16>(&mut rng, shape, false);
    let at = |seq: usize, head: usize, key: usize| {
        problem.bias_range(&problem.sequences[seq], head).start + key
    };
    // (what is poisoned, the error's (sequence, head, key, value))
    // (sequence, bias head, key, value) of the error.
    type Want = (usize, usize, usize, f32);
    let scenarios: Vec<(Vec<(usize, f32)>, Want)> = vec![
        // two bad values: the first in (sequence, head, key) order is reported, not the first
        // in memory (varlen biases are head-major)
        (
            vec![(at(2, 0, 150), f32::INFINITY), (at(1, 3, 7), f32::NAN)],
            (1, 3, 7, f32::NAN),
        ),
        (
            vec![(at(2, 1, 199), f32::NEG_INFINITY)],
            (2, 1, 199, f32::NEG_INFINITY),
        ),
        (vec![(at(0, 0, 0), f32::NAN)], (0, 0, 0, f32::NAN)),
    ];
    let check = |what: &str, err: DmaError, want: Want| match err {
        DmaError::NonFiniteBias {
            sequence,
            head,
            key,
            value,
        } => {
            assert_eq!((sequence, head, key), (want.0, want.1, want.2), "{what}");
            assert!(
                value == want.3 || (value.is_nan() && want.3.is_nan()),
                "{what}: value {value}"
            );
        }
        e => panic!("{what}: expected NonFiniteBias, got {e}"),
    };
    for causal in [true, false] {
        let params = Params::new(8).causal(causal);
        for (poison, want) in &scenarios {
            let mut bias = clean.clone();
            for &(i, x) in poison {
                bias[i] = x;
            }
            // The CPU backend agrees on the error.
            let inputs = cpu::Inputs {
                q: &q,
                k: &k,
                v: &v,
                bias: &bias,
            };
            check(
                "cpu",
                cpu::forward(&params, shape, &inputs).unwrap_err(),
                *want,
            );
            let (dq, dk, dv, db) = (
                s.clone_htod(&q).unwrap(),
                s.clone_htod(&k).unwrap(),
                s.clone_htod(&v).unwrap(),
                s.clone_htod(&bias).unwrap(),
            );
            let mut out = s.alloc_zeros::<bf16>(q.len()).unwrap();
            let mut lse = s.alloc_zeros::<f32>(problem.lse_len()).unwrap();
            let label = |x: &str| format!("{x} causal={causal} {want:?}");
            let err =
                cuda::forward_into(dev, &params, shape, &dq, &dk, &dv, &db, &mut out, &mut lse)
                    .unwrap_err();
            check(&label("forward_into"), err, *want);
            let err = cuda::forward(dev, &params, shape, &dq, &dk, &dv, &db).unwrap_err();
            check(&label("forward"), err, *want);
            let err =
                cuda::decode_into(dev, &params, shape, &dq, &dk, &dv, &db, &mut out, &mut lse)
                    .unwrap_err();
            check(&label("decode_into"), err, *want);
            let err = cuda::select(dev, &params, shape, &db).unwrap_err();
            check(&label("select"), err, *want);
            let x = cuda::BackwardInputs {
                q: &dq,
                k: &dk,
                v: &dv,
                bias: &db,
                out: &out,
                lse: &lse,
                dout: &out,
            };
            let err = cuda::backward(dev, &params, shape, &x, None).unwrap_err();
            check(&label("backward"), err, *want);
        }
        // The clean bias passes every entry point, and the flag is per call.
        let db = s.clone_htod(&clean).unwrap();
        let (dq, dk, dv) = (
            s.clone_htod(&q).unwrap(),
            s.clone_htod(&k).unwrap(),
            s.clone_htod(&v).unwrap(),
        );
        let fwd = cuda::forward(dev, &params, shape, &dq, &dk, &dv, &db).unwrap();
        let x = cuda::BackwardInputs {
            q: &dq,
            k: &dk,
            v: &dv,
            bias: &db,
            out: &fwd.out,
            lse: &fwd.lse,
            dout: &fwd.out,
        };
        cuda::backward(dev, &params, shape, &x, None).unwrap();
        cuda::select(dev, &params, shape, &db).unwrap();
        let (mut out, mut lse) = (fwd.out, fwd.lse);
        cuda::decode_into(dev, &params, shape, &dq, &dk, &dv, &db, &mut out, &mut lse).unwrap();
        // Calls of one geometry make their selections in the buffers the call before left
        // (Device's spare selection): each starts with a clear flag, and a bad bias after clean
        // calls is still reported.
        let (poison, want) = &scenarios[1];
        let mut bias = clean.clone();
        for &(i, x) in poison {
            bias[i] = x;
        }
        let bad = s.clone_htod(&bias).unwrap();
        let mut forward_into = |bias: &CudaSlice<f32>| {
            cuda::forward_into(dev, &params, shape, &dq, &dk, &dv, bias, &mut out, &mut lse)
        };
        forward_into(&db).unwrap();
        forward_into(&db).unwrap();
        let err = forward_into(&bad).unwrap_err();
        check(
            &format!("forward_into after clean calls, causal={causal}"),
            err,
            *want,
        );
        forward_into(&db).unwrap();
    }
}

/// The sizes in the environment variable `var` (comma-separated), or `default`.
fn bench_sizes(var: &str, default: &str) -> Vec<usize> {
    std::env::var(var)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// The environment variable `var` as a number, or `default`.
fn bench_knob(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Hkv of the forward and backward benchmarks: DMA_BENCH_HKV, or `default`.
fn bench_hkv(default: usize) -> usize {
    bench_knob("DMA_BENCH_HKV", default)
}

/// Query heads of the forward and backward benchmarks: DMA_BENCH_HQ, or 16.
fn bench_hq() -> usize {
    bench_knob("DMA_BENCH_HQ", 16)
}

/// The decode benchmark's head dim: DMA_BENCH_D, or 128.
fn bench_head_dim() -> usize {
    bench_knob("DMA_BENCH_D", 128)
}

/// The most device memory in use (bytes, stream-ordered allocations of the device's default
/// pool, which cudarc allocates from) while `f` runs, counting what was allocated before it.
/// `None` where the device has no memory pools.
fn peak_pool_bytes(dev: &Device, f: &mut dyn FnMut()) -> Option<u64> {
    use cudarc::driver::sys;
    if !dev.context().has_async_alloc() {
        return None;
    }
    let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    dev.stream().synchronize().ok()?;
    // SAFETY: plain driver calls on the current context's device; the attribute is a u64.
    unsafe {
        if sys::cuDeviceGetDefaultMemPool(&mut pool, dev.context().cu_device())
            != sys::CUresult::CUDA_SUCCESS
        {
            return None;
        }
        let mut reset: u64 = 0; // resets the high-water mark to the memory in use now
        sys::cuMemPoolSetAttribute(pool, attr, (&mut reset as *mut u64).cast());
    }
    f();
    dev.stream().synchronize().ok()?;
    let mut high: u64 = 0;
    // SAFETY: as above.
    let ok = unsafe { sys::cuMemPoolGetAttribute(pool, attr, (&mut high as *mut u64).cast()) };
    (ok == sys::CUresult::CUDA_SUCCESS).then_some(high)
}

/// Median of `reps` CUDA-event times of `f` on `dev`'s stream, after `warmup` untimed runs.
fn median_ms(dev: &Device, warmup: usize, reps: usize, f: &mut dyn FnMut()) -> f64 {
    median_ms_prepared(dev, warmup, reps, &mut || (), &mut |()| f())
}

/// `median_ms` of `f(prepare())`, `prepare` enqueued and run before each timing starts.
fn median_ms_prepared<S>(
    dev: &Device,
    warmup: usize,
    reps: usize,
    prepare: &mut dyn FnMut() -> S,
    f: &mut dyn FnMut(S),
) -> f64 {
    let (ctx, s) = (dev.context(), dev.stream());
    for _ in 0..warmup {
        f(prepare());
    }
    let mut ms = Vec::new();
    for _ in 0..reps {
        let a = ctx.new_event(Some(CU_EVENT_DEFAULT)).unwrap();
        let b = ctx.new_event(Some(CU_EVENT_DEFAULT)).unwrap();
        let x = prepare();
        a.record(s).unwrap();
        f(x);
        b.record(s).unwrap();
        b.synchronize().unwrap();
        ms.push(a.elapsed_ms(&b).unwrap() as f64);
    }
    ms.sort_by(|x, y| x.total_cmp(y));
    ms[ms.len() / 2]
}

fn mib(bytes: Option<u64>) -> String {
    match bytes {
        Some(b) => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        None => "n/a".into(),
    }
}

/// Device buffers of a benchmark: random bf16 q, k, v and f32 bias, zeroed out and lse.
struct BenchBuffers {
    q: CudaSlice<bf16>,
    k: CudaSlice<bf16>,
    v: CudaSlice<bf16>,
    bias: CudaSlice<f32>,
    out: CudaSlice<bf16>,
    lse: CudaSlice<f32>,
}

fn bench_buffers(dev: &Device, rng: &mut StdRng, shape: &Shape) -> BenchBuffers {
    let p = shape.problem().unwrap();
    let s = dev.stream();
    let mut up = |n: usize| s.clone_htod(&random_values::<bf16>(rng, n)).unwrap();
    let (q, k, v) = (up(p.q_len()), up(p.k_len()), up(p.k_len()));
    BenchBuffers {
        q,
        k,
        v,
        bias: s.clone_htod(&random_bias(rng, p.bias_len())).unwrap(),
        out: s.alloc_zeros::<bf16>(p.q_len()).unwrap(),
        lse: s.alloc_zeros::<f32>(p.lse_len()).unwrap(),
    }
}

/// Forward timing: B=1, Hq=DMA_BENCH_HQ (default 16), Hkv=DMA_BENCH_HKV (default Hq), Hb=Hkv,
/// D=128, bf16, w=2048, causal, N in DMA_BENCH_N (default 16384,32768); medians of CUDA-event
/// times over the whole call (selection and host-side planning included) and over the selection
/// alone; the peak device memory of one call.
#[test]
#[ignore = "timing, run on the GPU with --ignored"]
fn bench_forward() {
    let Some(dev) = device() else { return };
    let sizes = bench_sizes("DMA_BENCH_N", "16384,32768");
    let (h, d, w) = (bench_hq(), 128usize, 2048usize);
    let hkv = bench_hkv(h);
    let mut rng = StdRng::seed_from_u64(fresh_seed());
    for n in sizes {
        let shape = Shape::dense(1, n, n, Heads::new(h, hkv), d);
        let params = Params::new(w);
        let mut b = bench_buffers(&dev, &mut rng, &shape);
        let peak = peak_pool_bytes(&dev, &mut || {
            cuda::forward_into(
                &dev, &params, &shape, &b.q, &b.k, &b.v, &b.bias, &mut b.out, &mut b.lse,
            )
            .unwrap()
        });
        let time = |f: &mut dyn FnMut()| median_ms(&dev, 3, 20, f);
        let t_all = time(&mut || {
            cuda::forward_into(
                &dev, &params, &shape, &b.q, &b.k, &b.v, &b.bias, &mut b.out, &mut b.lse,
            )
            .unwrap()
        });
        let t_sel = time(&mut || {
            cuda::select(&dev, &params, &shape, &b.bias).unwrap();
        });
        let pairs: f64 = (0..n).map(|p| (p + 1).min(w) as f64).sum::<f64>() * h as f64;
        let tflops = 4.0 * pairs * d as f64 / (t_all * 1e-3) / 1e12;
        println!(
            "BENCH dma forward N={n} Hq={h} Hkv={hkv} D={d} w={w} bf16 causal: {t_all:.3} ms \
             (selection {t_sel:.3} ms, attend ~{:.3} ms), effective {tflops:.0} TFLOP/s, \
             peak device memory {} (inputs and outputs included)",
            t_all - t_sel,
            mib(peak)
        );
    }
}

/// Forward + backward timing: like `bench_forward` (B=1, Hq=DMA_BENCH_HQ, Hkv=DMA_BENCH_HKV,
/// Hb=Hkv, D=128, bf16, w=2048, causal, N in DMA_BENCH_N), the forward keeping its selection and
/// the backward
/// reusing it; medians of CUDA-event times over the whole calls (planning, allocations, scratch
/// zeroing and dk/dv conversion included), and over the backward alone.
#[test]
#[ignore = "timing, run on the GPU with --ignored"]
fn bench_backward() {
    let Some(dev) = device() else { return };
    let sizes = bench_sizes("DMA_BENCH_N", "16384,32768");
    let (h, d, w) = (bench_hq(), 128usize, 2048usize);
    let hkv = bench_hkv(h);
    let mut rng = StdRng::seed_from_u64(fresh_seed());
    let s = dev.stream().clone();
    for n in sizes {
        let shape = Shape::dense(1, n, n, Heads::new(h, hkv), d);
        let params = Params::new(w);
        let mut rnd = |len: usize| -> Vec<bf16> { random_values(&mut rng, len) };
        let (q, k, v, dout) = (
            rnd(n * h * d),
            rnd(n * hkv * d),
            rnd(n * hkv * d),
            rnd(n * h * d),
        );
        let bias = random_bias(&mut rng, hkv * n);
        let up = |x: &Vec<bf16>| s.clone_htod(x).unwrap();
        let (q, k, v, dout) = (up(&q), up(&k), up(&v), up(&dout));
        let bias = s.clone_htod(&bias).unwrap();
        let mut out = s.alloc_zeros::<bf16>(n * h * d).unwrap();
        let mut lse = s.alloc_zeros::<f32>(n * h).unwrap();
        let mut grads = cuda::DeviceGradients {
            dq: s.alloc_zeros::<bf16>(n * h * d).unwrap(),
            dk: s.alloc_zeros::<bf16>(n * hkv * d).unwrap(),
            dv: s.alloc_zeros::<bf16>(n * hkv * d).unwrap(),
            dbias: s.alloc_zeros::<f32>(n * hkv).unwrap(),
        };
        let time = |f: &mut dyn FnMut()| median_ms(&dev, 3, 15, f);
        let sel = cuda::forward_into_with_selection(
            &dev, &params, &shape, &q, &k, &v, &bias, &mut out, &mut lse,
        )
        .unwrap();
        let t_bwd = time(&mut || {
            let x = cuda::BackwardInputs {
                q: &q,
                k: &k,
                v: &v,
                bias: &bias,
                out: &out,
                lse: &lse,
                dout: &dout,
            };
            cuda::backward_into(&dev, &params, &shape, &x, Some(&sel), &mut grads).unwrap()
        });
        let mut step = || {
            let sel = cuda::forward_into_with_selection(
                &dev, &params, &shape, &q, &k, &v, &bias, &mut out, &mut lse,
            )
            .unwrap();
            let x = cuda::BackwardInputs {
                q: &q,
                k: &k,
                v: &v,
                bias: &bias,
                out: &out,
                lse: &lse,
                dout: &dout,
            };
            cuda::backward_into(&dev, &params, &shape, &x, Some(&sel), &mut grads).unwrap()
        };
        let t_all = time(&mut step);
        let peak = peak_pool_bytes(&dev, &mut step);
        println!(
            "BENCH dma fwd+bwd N={n} Hq={h} Hkv={hkv} D={d} w={w} bf16 causal: {t_all:.3} ms \
             (backward alone {t_bwd:.3} ms), peak device memory {} (inputs, outputs and \
             gradients included)",
            mib(peak)
        );
    }
}

/// Decode timing: B=1, one query, Hq=32, Hkv=8, Hb=Hkv, D=DMA_BENCH_D (default 128), bf16,
/// w=2048, causal, context in DMA_BENCH_CTX (default 8192,32768,131072); medians of CUDA-event times over the whole
/// `decode_into` call (planning, selection, split-K attend and combine), of a
/// `cuda::DecodeState` step (the kept set carried from the step before), and the general
/// forward on the same inputs for comparison.
#[test]
#[ignore = "timing, run on the GPU with --ignored"]
fn bench_decode() {
    let Some(dev) = device() else { return };
    let sizes = bench_sizes("DMA_BENCH_CTX", "8192,32768,131072");
    let (hq, hkv, w, nq) = (32usize, 8usize, 2048usize, 1usize);
    let d = bench_head_dim();
    let mut rng = StdRng::seed_from_u64(fresh_seed());
    let s = dev.stream().clone();
    for n in sizes {
        let shape = Shape::dense(1, nq, n, Heads::new(hq, hkv), d);
        let params = Params::new(w);
        let mut b = bench_buffers(&dev, &mut rng, &shape);
        let time = |f: &mut dyn FnMut()| median_ms(&dev, 5, 50, f);
        let t_dec = time(&mut || {
            cuda::decode_into(
                &dev, &params, &shape, &b.q, &b.k, &b.v, &b.bias, &mut b.out, &mut b.lse,
            )
            .unwrap()
        });
        let t_fwd = time(&mut || {
            cuda::forward_into(
                &dev, &params, &shape, &b.q, &b.k, &b.v, &b.bias, &mut b.out, &mut b.lse,
            )
            .unwrap()
        });
        let t_step = time_state_step(&dev, &params, &shape, &mut b);
        // Host time to enqueue one decode (planning, uploads, allocations, launches), no sync.
        let mut host = Vec::new();
        for _ in 0..50 {
            s.synchronize().unwrap();
            let t = std::time::Instant::now();
            cuda::decode_into(
                &dev, &params, &shape, &b.q, &b.k, &b.v, &b.bias, &mut b.out, &mut b.lse,
            )
            .unwrap();
            host.push(t.elapsed().as_secs_f64() * 1e3);
        }
        host.sort_by(|x, y| x.total_cmp(y));
        println!(
            "BENCH dma decode ctx={n} Hq={hq} Hkv={hkv} D={d} w={w} bf16 Nq={nq}: {t_dec:.4} ms \
             (host enqueue {:.4} ms; general forward path {t_fwd:.4} ms)",
            host[host.len() / 2]
        );
        println!(
            "BENCH dma-state decode ctx={n} Hq={hq} Hkv={hkv} D={d} w={w} bf16 Nq={nq}: \
             {t_step:.4} ms (a generation step over the kept set carried from the step before)"
        );
    }
}

/// A `cuda::DecodeState` step that appends the last key of the cache of `shape` (one sequence,
/// dense): the state is carried to the cache without that key first, and each timed step runs
/// on a fresh copy of it (the copy is not timed).
fn time_state_step(dev: &Device, params: &Params, shape: &Shape, b: &mut BenchBuffers) -> f64 {
    let s = dev.stream();
    let p = shape.problem().unwrap();
    let (n, heads, d) = (p.sequences[0].nk, p.heads, p.head_dim);
    let prev = Shape::dense(1, 1, n - 1, heads, d);
    let rows = (n - 1) * heads.kv * d;
    let kp = s.clone_dtod(&b.k.slice(..rows)).unwrap();
    let vp = s.clone_dtod(&b.v.slice(..rows)).unwrap();
    let bias: Vec<f32> = s.clone_dtoh(&b.bias).unwrap();
    let bp: Vec<f32> = bias
        .chunks(n)
        .flat_map(|h| h[..n - 1].iter().copied())
        .collect();
    let bp = s.clone_htod(&bp).unwrap();
    let mut base = cuda::DecodeState::new();
    base.step_into(
        dev, params, &prev, &b.q, &kp, &vp, &bp, &mut b.out, &mut b.lse,
    )
    .unwrap();
    // The copies are freed after the timings (a free would be timed with the step).
    let mut used = Vec::new();
    median_ms_prepared(
        dev,
        5,
        50,
        &mut || base.try_clone().unwrap(),
        &mut |mut state| {
            state
                .step_into(
                    dev, params, shape, &b.q, &b.k, &b.v, &b.bias, &mut b.out, &mut b.lse,
                )
                .unwrap();
            used.push(state);
        },
    )
}
