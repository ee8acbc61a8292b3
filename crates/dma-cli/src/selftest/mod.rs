//! `dma selftest --device cuda`: a compact version of the GPU correctness suite
//! (crates/dma/tests/cuda.rs): forward, backward and decode against the CPU backend on fresh
//! random inputs, relative Frobenius error <= 1e-2, outputs poisoned with NaN by the host entry
//! points; then the dma-candle op on CUDA tensors and a Doge model on the GPU against the CPU
//! (candle.rs). Prints one line per check, then PASS or FAIL.

#[cfg(not(feature = "cuda"))]
pub fn run(_seed: Option<u64>) -> anyhow::Result<()> {
    anyhow::bail!("the cuda device is not built in this binary (only cpu is)")
}

#[cfg(feature = "cuda")]
pub use imp::run;

#[cfg(feature = "cuda")]
mod candle;

#[cfg(feature = "cuda")]
mod imp {
    use anyhow::{bail, Result};
    use dma::cuda::{self, CudaElement, Device};
    use dma::{cpu, Element, Heads, Params, Shape};
    use half::{bf16, f16};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    pub(super) const LIMIT: f64 = 1e-2;

    /// One configuration: shape, window, masking, whether the biases tie.
    pub(super) struct Case {
        pub(super) shape: Shape,
        pub(super) params: Params,
        ties: bool,
        label: String,
    }

    fn varlen(lq: &[i32], lk: &[i32], heads: Heads, d: usize) -> Shape {
        let cu = |l: &[i32]| {
            let mut c = vec![0];
            for x in l {
                c.push(c.last().copied().unwrap_or(0) + x);
            }
            c
        };
        Shape::varlen(cu(lq), cu(lk), heads, d)
    }

    /// Forward and backward configurations: head dims, masking, GQA, both bias-head layouts,
    /// dense and varlen (an empty sequence, Nq < Nk and Nq > Nk).
    fn attention_cases() -> Vec<Case> {
        let mut out = Vec::new();
        let mut i = 0usize;
        for d in [64, 128] {
            for causal in [true, false] {
                for (hq, hkv) in [(8, 2), (4, 4)] {
                    i += 1;
                    let hb = if i % 2 == 0 { hq } else { hkv };
                    let heads = Heads::new(hq, hkv).with_bias(hb);
                    let window = [64, 200, 512][i % 3];
                    let (shape, layout) = if i % 2 == 0 {
                        (
                            Shape::dense(2, 700, 900, heads, d),
                            "dense B=2 Nq=700 Nk=900".to_string(),
                        )
                    } else {
                        (
                            varlen(&[600, 0, 130, 300], &[600, 0, 500, 40], heads, d),
                            "varlen q=[600,0,130,300] k=[600,0,500,40]".to_string(),
                        )
                    };
                    out.push(Case {
                        shape,
                        params: Params::new(window).causal(causal),
                        ties: i % 4 == 3,
                        label: format!(
                            "D={d} {} Hq={hq} Hkv={hkv} Hb={hb} w={window} {layout}",
                            if causal { "causal" } else { "full" }
                        ),
                    });
                }
            }
        }
        out
    }

    /// Decode configurations: Nq in {1, 4}, Nk around the window and long.
    fn decode_cases() -> Vec<Case> {
        let w = 512;
        let mut out = Vec::new();
        for nq in [1, 4] {
            for nk in [1, w - 1, w, w + 1, 5000, 40000] {
                let heads = Heads::new(8, 2);
                out.push(Case {
                    shape: Shape::dense(1, nq, nk, heads, 128),
                    params: Params::new(w),
                    ties: nk == 5000,
                    label: format!("D=128 causal Hq=8 Hkv=2 Hb=2 w={w} Nq={nq} Nk={nk}"),
                });
            }
        }
        out
    }

    struct Inputs<T> {
        q: Vec<T>,
        k: Vec<T>,
        v: Vec<T>,
        bias: Vec<f32>,
        dout: Vec<T>,
    }

    impl<T> Inputs<T> {
        /// What the CPU backend and the host entry points take.
        fn cpu(&self) -> cpu::Inputs<'_, T> {
            cpu::Inputs {
                q: &self.q,
                k: &self.k,
                v: &self.v,
                bias: &self.bias,
            }
        }
    }

    fn random<T: Element>(rng: &mut StdRng, case: &Case) -> Result<Inputs<T>> {
        let p = case.shape.problem()?;
        let mut v = |n: usize| -> Vec<T> {
            (0..n)
                .map(|_| T::from_f32(rng.random_range(-1.0f32..1.0)))
                .collect()
        };
        let (q, k, vv, dout) = (v(p.q_len()), v(p.k_len()), v(p.k_len()), v(p.q_len()));
        let levels = [0.0f32, -0.0, 1.0, -1.0, 2.5];
        let bias = (0..p.bias_len())
            .map(|_| {
                if case.ties {
                    levels[rng.random_range(0..levels.len())]
                } else {
                    rng.random_range(-4.0f32..4.0)
                }
            })
            .collect();
        Ok(Inputs {
            q,
            k,
            v: vv,
            bias,
            dout,
        })
    }

    /// ||a - b|| / ||b|| over entries where b is finite; where b is infinite a must equal it;
    /// a NaN anywhere in a (an unwritten element) is infinite error.
    pub(super) fn rel_err(a: &[f32], b: &[f32]) -> f64 {
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for (&x, &y) in a.iter().zip(b) {
            if x.is_nan() || (!y.is_finite() && x != y) {
                return f64::INFINITY;
            }
            if y.is_finite() {
                num += f64::from(x - y).powi(2);
                den += f64::from(y).powi(2);
            }
        }
        if a.len() != b.len() {
            return f64::INFINITY;
        }
        if den == 0.0 {
            num.sqrt()
        } else {
            (num / den).sqrt()
        }
    }

    fn f32s<T: Element>(x: &[T]) -> Vec<f32> {
        x.iter().map(|y| y.to_f32()).collect()
    }

    /// One relative error of a check and the most it may be.
    pub(super) struct Measured {
        pub(super) name: &'static str,
        pub(super) error: f64,
        pub(super) limit: f64,
    }

    /// The errors of one check.
    pub(super) type Errors = Vec<Measured>;

    /// Errors held to the op-level limit (`LIMIT`).
    pub(super) fn at_limit(errors: impl IntoIterator<Item = (&'static str, f64)>) -> Errors {
        errors
            .into_iter()
            .map(|(name, error)| Measured {
                name,
                error,
                limit: LIMIT,
            })
            .collect()
    }

    /// A host forward entry point of the CUDA backend (`forward_host`, `decode_host`).
    type HostForward<T> =
        fn(&Device, &Params, &Shape, &cpu::Inputs<'_, T>) -> dma::Result<cpu::Forward<T>>;

    /// Out and lse of a host forward entry point against the CPU forward.
    fn check_host_forward<T: CudaElement>(
        dev: &Device,
        case: &Case,
        seed: u64,
        host_forward: HostForward<T>,
    ) -> Result<Errors> {
        let x = random::<T>(&mut StdRng::seed_from_u64(seed), case)?;
        let inputs = x.cpu();
        let want = cpu::forward(&case.params, &case.shape, &inputs)?;
        let got = host_forward(dev, &case.params, &case.shape, &inputs)?;
        Ok(at_limit([
            ("out", rel_err(&f32s(&got.out), &f32s(&want.out))),
            ("lse", rel_err(&got.lse, &want.lse)),
        ]))
    }

    fn forward<T: CudaElement>(dev: &Device, case: &Case, seed: u64) -> Result<Errors> {
        check_host_forward::<T>(dev, case, seed, cuda::forward_host)
    }

    fn decode<T: CudaElement>(dev: &Device, case: &Case, seed: u64) -> Result<Errors> {
        check_host_forward::<T>(dev, case, seed, cuda::decode_host)
    }

    fn backward<T: CudaElement>(dev: &Device, case: &Case, seed: u64) -> Result<Errors> {
        let x = random::<T>(&mut StdRng::seed_from_u64(seed), case)?;
        let inputs = x.cpu();
        let (p, s) = (&case.params, &case.shape);
        let fwd = cpu::forward(p, s, &inputs)?;
        let want = cpu::backward(p, s, &inputs, &fwd.out, &fwd.lse, &x.dout)?;
        let got = cuda::backward_host(dev, p, s, &inputs, &fwd.out, &fwd.lse, &x.dout)?;
        Ok(at_limit([
            ("dq", rel_err(&f32s(&got.dq), &f32s(&want.dq))),
            ("dk", rel_err(&f32s(&got.dk), &f32s(&want.dk))),
            ("dv", rel_err(&f32s(&got.dv), &f32s(&want.dv))),
            ("dbias", rel_err(&got.dbias, &want.dbias)),
        ]))
    }

    type Check = fn(&Device, &Case, u64) -> Result<Errors>;

    pub fn run(seed: Option<u64>) -> Result<()> {
        let seed = seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
        });
        let dev = Device::new(0)?;
        println!("dma selftest --device cuda, seed {seed} (--seed reproduces), limit {LIMIT:.0e}");
        println!(
            "{:<9} {:<5} {:<62} {:<44} result",
            "kind", "dtype", "configuration", "relative errors"
        );
        let attention = attention_cases();
        let decoding = decode_cases();
        let mut plan: Vec<(&str, &str, &Case, Check)> = Vec::new();
        for case in &attention {
            plan.push(("forward", "bf16", case, forward::<bf16>));
            plan.push(("forward", "f16", case, forward::<f16>));
            plan.push(("backward", "bf16", case, backward::<bf16>));
            plan.push(("backward", "f16", case, backward::<f16>));
        }
        for case in &decoding {
            plan.push(("decode", "bf16", case, decode::<bf16>));
        }
        // dma-candle on CUDA tensors (dense only), and a Doge model on the GPU.
        let dense = |c: &&Case| matches!(c.shape.layout, dma::Layout::Dense { .. });
        for case in attention.iter().filter(dense).chain(
            decoding
                .iter()
                .filter(|c| matches!(c.shape.layout, dma::Layout::Dense { seqlen_k: 5000, .. })),
        ) {
            plan.push(("candle", "bf16", case, super::candle::op));
        }
        // Generation steps through dma-candle: the decode cases' shapes, and a batch of two
        // (whose narrowed caches are read in place as a padded layout) with a bias head per
        // query head.
        let batched_steps = Case {
            shape: Shape::dense(2, 1, 3000, Heads::new(8, 2).with_bias(8), 64),
            params: Params::new(512),
            ties: false,
            label: "D=64 causal Hq=8 Hkv=2 Hb=8 w=512 B=2 Nq=1 Nk=3000".into(),
        };
        for case in decoding
            .iter()
            .filter(|c| matches!(c.shape.layout, dma::Layout::Dense { seqlen_k: 5000, .. }))
            .chain([&batched_steps])
        {
            plan.push(("step", "bf16", case, super::candle::decode_steps));
        }
        let doge_case = Case {
            shape: Shape::dense(1, 700, 700, Heads::new(4, 2), 64),
            params: Params::new(200),
            ties: false,
            label: "Doge 2 layers, hidden 256, Hq=4 Hkv=2, w=200, N=700".into(),
        };
        plan.push(("doge", "f32", &doge_case, super::candle::doge));
        let rows_case = Case {
            shape: doge_case.shape.clone(),
            params: doge_case.params,
            ties: false,
            label: "gather_rows: table [8192, 128], 65536 ids, gradient".into(),
        };
        plan.push(("candle", "f32", &rows_case, super::candle::rows));
        let layers_case = Case {
            shape: doge_case.shape.clone(),
            params: doge_case.params,
            ties: false,
            label: "f32 RMSNorm, silu_mul, scale_add, AdamW, cross-entropy on [65536, 128]; q/k projections; grads"
                .into(),
        };
        plan.push(("candle", "f32", &layers_case, super::candle::layers));
        let (mut failed, mut worst) = (0usize, 0.0f64);
        for (i, (kind, dtype, case, check)) in plan.iter().enumerate() {
            let (errors, ok) = match check(&dev, case, seed.wrapping_add(i as u64)) {
                Ok(errs) => {
                    let ok = errs.iter().all(|m| m.error <= m.limit);
                    let text = errs
                        .iter()
                        .map(|m| match m.limit == LIMIT {
                            true => format!("{} {:.1e}", m.name, m.error),
                            false => format!("{} {:.1e} (limit {:.1e})", m.name, m.error, m.limit),
                        })
                        .collect::<Vec<_>>()
                        .join(" ");
                    for m in errs.iter().filter(|m| m.limit == LIMIT) {
                        worst = worst.max(m.error);
                    }
                    (text, ok)
                }
                Err(e) => (format!("error: {e:#}"), false),
            };
            if !ok {
                failed += 1;
            }
            println!(
                "{kind:<9} {dtype:<5} {:<62} {errors:<44} {}",
                case.label,
                if ok { "ok" } else { "FAIL" }
            );
        }
        println!(
            "worst relative error {worst:.2e} over {} checks (of those held to {LIMIT:.0e})",
            plan.len()
        );
        if failed > 0 {
            println!("FAIL");
            bail!("{failed} of {} checks failed", plan.len());
        }
        println!("PASS");
        Ok(())
    }
}
