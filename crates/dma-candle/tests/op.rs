//! The op through candle's autograd against `dma::cpu` (the same kernels: equal bit for bit)
//! and against the f64 reference that follows SPEC.md (within the dtype's tolerance).

#[path = "../../dma/tests/common/mod.rs"]
mod common;

use candle_core::{DType, Device, Tensor, Var, WithDType};
use common::{as_f64, reference, rel_err, tol, BiasKind, Case, CaseSpec};
use dma::Element;
use dma_candle::{dma_attention, dma_attention_with_lse};
use half::{bf16, f16};
use proptest::prelude::*;

const CPU: Device = Device::Cpu;

/// A tensor of `T` holding `xs` (already representable in `T`).
fn tensor<T: Element + WithDType>(xs: &[f64], dims: &[usize]) -> Tensor {
    Tensor::from_vec(Case::to::<T>(xs), dims, &CPU).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    // A fresh layout first: candle 0.11 panics converting an empty view at an offset.
    t.force_contiguous()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn f32s_as_f64(xs: &[f32]) -> Vec<f64> {
    xs.iter().map(|&x| x as f64).collect()
}

/// Dims of q, k (and v), bias and lse of a dense case.
fn dims(case: &Case) -> [Vec<usize>; 4] {
    let (b, (nq, nk)) = (case.seqs.len(), case.seqs[0]);
    [
        vec![b, nq, case.hq, case.d],
        vec![b, nk, case.hkv, case.d],
        vec![b, case.hb, nk],
        vec![b, case.hq, nq],
    ]
}

/// The result of the op and of candle's backward of `sum(out * dout)`.
struct Run {
    out: Vec<f64>,
    lse: Vec<f64>,
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
    dbias: Vec<f64>,
}

/// The op on contiguous variables of `T`.
fn run<T: Element + WithDType>(case: &Case) -> candle_core::Result<Run> {
    let [dq, dk, db, _] = dims(case);
    let q = Var::from_tensor(&tensor::<T>(&case.q, &dq))?;
    let k = Var::from_tensor(&tensor::<T>(&case.k, &dk))?;
    let v = Var::from_tensor(&tensor::<T>(&case.v, &dk))?;
    let bias = Var::from_tensor(&Tensor::from_vec(case.bias.clone(), db, &CPU)?)?;
    let (out, lse) = dma_attention_with_lse(&q, &k, &v, &bias, &case.params())?;
    let dout = tensor::<T>(&case.dout, &dq);
    let grads = (out.to_dtype(DType::F32)? * dout.to_dtype(DType::F32)?)?
        .sum_all()?
        .backward()?;
    let grad = |x: &Var| values(grads.get(x).expect("a gradient"));
    Ok(Run {
        out: values(&out),
        lse: values(&lse),
        dq: grad(&q),
        dk: grad(&k),
        dv: grad(&v),
        dbias: grad(&bias),
    })
}

/// Whether the gradients can be held to the reference at the tolerance of the dtype.
///
/// The backward reads Delta = <dO, out> from out rounded to the dtype (as FlashAttention does),
/// and dS = P (dP - Delta) cancels (dbias sums to zero over the kept keys of every row; with a
/// window of 1, dS is rounding noise). With few kept keys, few queries or a head dim below 8,
/// the gradients of `dma::cpu` then miss the f64 reference by up to ~3 % in bf16 in about 1 case
/// in 300, and by 1.1 to 2 times the 1e-5 tolerance in f32 in about 1 in 4000. Measured over
/// 8000 to 10000 random cases with D >= 8, Nq >= 8, Nk >= 16, w >= 8, the worst errors are
/// 1.0e-6 (f32) and 4.5e-3 (bf16). Every case is still compared with `dma::cpu` bit for bit.
fn well_conditioned(case: &Case) -> bool {
    let (nq, nk) = case.seqs[0];
    case.d >= 8 && nq >= 8 && nk >= 16 && case.window >= 8
}

/// Equal to `dma::cpu` bit for bit, and to the f64 reference within the tolerance of `T` (the
/// gradients where [`well_conditioned`]).
fn check<T: Element + WithDType>(case: &Case, ours: &Run) -> Result<(), TestCaseError> {
    let (fwd, g) = case.backward::<T>();
    prop_assert_eq!(&ours.out, &as_f64(&fwd.out), "out differs from dma::cpu");
    prop_assert_eq!(
        &ours.lse,
        &f32s_as_f64(&fwd.lse),
        "lse differs from dma::cpu"
    );
    prop_assert_eq!(&ours.dq, &as_f64(&g.dq), "dq differs from dma::cpu");
    prop_assert_eq!(&ours.dk, &as_f64(&g.dk), "dk differs from dma::cpu");
    prop_assert_eq!(&ours.dv, &as_f64(&g.dv), "dv differs from dma::cpu");
    prop_assert_eq!(&ours.dbias, &f32s_as_f64(&g.dbias), "dbias differs");

    let want = reference::forward(case);
    let grads = reference::backward(case);
    let mut errs = vec![
        ("out", rel_err(&ours.out, &want.out)),
        ("lse", rel_err(&ours.lse, &want.lse)),
    ];
    if well_conditioned(case) {
        errs.push(("dv", rel_err(&ours.dv, &grads.dv)));
        errs.push(("dq", rel_err(&ours.dq, &grads.dq)));
        errs.push(("dk", rel_err(&ours.dk, &grads.dk)));
        errs.push(("dbias", rel_err(&ours.dbias, &grads.dbias)));
    }
    for (name, e) in errs {
        prop_assert!(e <= tol::<T>(), "{name}: err {e:.2e} for {case:?}");
    }
    Ok(())
}

/// Dense geometries: MHA, GQA and MQA, Hb = Hq or Hkv, Nq above and below Nk, windows below
/// and above the key count, causal or not, every bias kind; head dims from `head_dims`.
fn dense_spec(head_dims: &[usize]) -> impl Strategy<Value = CaseSpec> {
    (
        (
            1usize..4,
            prop::sample::select(vec![1usize, 2, 4]),
            any::<bool>(),
        ),
        prop::sample::select(head_dims.to_vec()),
        (1usize..3, 1usize..40, 0usize..50),
        1usize..40,
        any::<bool>(),
        prop::sample::select(vec![BiasKind::Random, BiasKind::Ties, BiasKind::Constant]),
    )
        .prop_map(
            |((hkv, group, per_q), d, (b, nq, nk), window, causal, bias)| {
                let hq = hkv * group;
                CaseSpec {
                    hb: if per_q { hq } else { hkv },
                    causal,
                    bias,
                    ..CaseSpec::dense(b, nq, nk, hq, hkv, d, window)
                }
            },
        )
}

const ALL_DIMS: &[usize] = &[1, 5, 8, 16, 32];

/// Geometries where every gradient is compared with the reference ([`well_conditioned`]).
fn well_conditioned_spec() -> impl Strategy<Value = CaseSpec> {
    (
        dense_spec(&[8, 16, 32]),
        8usize..40,
        16usize..50,
        8usize..40,
    )
        .prop_map(|(spec, nq, nk, window)| CaseSpec {
            seqs: vec![(nq, nk); spec.seqs.len()],
            window,
            ..spec
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn f32_matches_cpu_and_reference(spec in dense_spec(ALL_DIMS), seed in any::<u64>()) {
        let case = spec.build::<f32>(seed);
        check::<f32>(&case, &run::<f32>(&case).unwrap())?;
    }

    #[test]
    fn bf16_matches_cpu_and_reference(spec in dense_spec(ALL_DIMS), seed in any::<u64>()) {
        let case = spec.build::<bf16>(seed);
        check::<bf16>(&case, &run::<bf16>(&case).unwrap())?;
    }

    #[test]
    fn f16_matches_cpu_and_reference(spec in dense_spec(ALL_DIMS), seed in any::<u64>()) {
        let case = spec.build::<f16>(seed);
        check::<f16>(&case, &run::<f16>(&case).unwrap())?;
    }

    #[test]
    fn f32_gradients_match_reference(spec in well_conditioned_spec(), seed in any::<u64>()) {
        let case = spec.build::<f32>(seed);
        prop_assert!(well_conditioned(&case));
        check::<f32>(&case, &run::<f32>(&case).unwrap())?;
    }

    #[test]
    fn bf16_gradients_match_reference(spec in well_conditioned_spec(), seed in any::<u64>()) {
        let case = spec.build::<bf16>(seed);
        prop_assert!(well_conditioned(&case));
        check::<bf16>(&case, &run::<bf16>(&case).unwrap())?;
    }

    #[test]
    fn f16_gradients_match_reference(spec in well_conditioned_spec(), seed in any::<u64>()) {
        let case = spec.build::<f16>(seed);
        prop_assert!(well_conditioned(&case));
        check::<f16>(&case, &run::<f16>(&case).unwrap())?;
    }
}

/// The op on non-contiguous views (transposed, narrowed, permuted) of variables of `T`, with
/// the gradients read back through the views' own backward.
fn run_strided<T: Element + WithDType>(case: &Case) -> candle_core::Result<Run> {
    let [dq, dk, db, _] = dims(case);
    let (b, nk, hkv, d) = (dk[0], dk[1], dk[2], dk[3]);
    // q: stored [B, Hq, Nq, D], seen through a transpose.
    let q_store = Var::from_tensor(&tensor::<T>(&case.q, &dq).transpose(1, 2)?.contiguous()?)?;
    let q = q_store.transpose(1, 2)?;
    // k: the first D of D + 3 columns of a wider tensor, at an offset.
    let pad = Tensor::ones((b, nk, hkv, 3), <T as WithDType>::DTYPE, &CPU)?;
    let k_store = Var::from_tensor(&Tensor::cat(&[&pad, &tensor::<T>(&case.k, &dk)], 3)?)?;
    let k = k_store.narrow(3, 3, d)?;
    // v: stored [B, Nk, D, Hkv]; bias: stored [B, Nk, Hb].
    let v_store = Var::from_tensor(&tensor::<T>(&case.v, &dk).transpose(2, 3)?.contiguous()?)?;
    let v = v_store.transpose(2, 3)?;
    let bias_data = Tensor::from_vec(case.bias.clone(), db, &CPU)?;
    let bias_store = Var::from_tensor(&bias_data.transpose(1, 2)?.contiguous()?)?;
    let bias = bias_store.transpose(1, 2)?;
    // dout: also a transposed view.
    let dout = tensor::<T>(&case.dout, &dq)
        .transpose(1, 2)?
        .contiguous()?
        .transpose(1, 2)?;
    let (out, lse) = dma_attention_with_lse(&q, &k, &v, &bias, &case.params())?;
    let grads = (out.to_dtype(DType::F32)? * dout.to_dtype(DType::F32)?)?
        .sum_all()?
        .backward()?;
    let grad = |x: &Var| grads.get(x).expect("a gradient").clone();
    let dk_store = grad(&k_store);
    assert_eq!(
        values(&dk_store.narrow(3, 0, 3)?),
        vec![0.0; b * nk * hkv * 3]
    );
    Ok(Run {
        out: values(&out),
        lse: values(&lse),
        dq: values(&grad(&q_store).transpose(1, 2)?),
        dk: values(&dk_store.narrow(3, 3, d)?),
        dv: values(&grad(&v_store).transpose(2, 3)?),
        dbias: values(&grad(&bias_store).transpose(1, 2)?),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn non_contiguous_inputs(spec in dense_spec(ALL_DIMS), seed in any::<u64>(), half in any::<bool>()) {
        if half {
            let case = spec.build::<bf16>(seed);
            check::<bf16>(&case, &run_strided::<bf16>(&case).unwrap())?;
        } else {
            let case = spec.build::<f32>(seed);
            check::<f32>(&case, &run_strided::<f32>(&case).unwrap())?;
        }
    }
}

fn random_case(seed: u64) -> Case {
    CaseSpec {
        hb: 4,
        ..CaseSpec::dense(2, 20, 24, 4, 2, 16, 7)
    }
    .build::<f32>(seed)
}

/// k and v are one tensor: the packed kv's gradient must split back into dk + dv.
#[test]
fn kv_packing_splits_the_gradient() {
    let case = random_case(rand::random());
    let [dq, dk, db, _] = dims(&case);
    let q = tensor::<f32>(&case.q, &dq);
    let x = Var::from_tensor(&tensor::<f32>(&case.k, &dk)).unwrap();
    let bias = Tensor::from_vec(case.bias.clone(), db, &CPU).unwrap();
    let out = dma_attention(&q, &x, &x, &bias, &case.params()).unwrap();
    let dout = tensor::<f32>(&case.dout, &dq);
    let grads = (out * dout).unwrap().sum_all().unwrap().backward().unwrap();
    let got: Vec<f32> = grads
        .get(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();

    let same = Case {
        v: case.k.clone(),
        ..case
    };
    let (_, g) = same.backward::<f32>();
    let want: Vec<f32> = g.dk.iter().zip(&g.dv).map(|(a, b)| a + b).collect();
    assert_eq!(got, want);
    assert!(
        g.dk != g.dv,
        "dk and dv must differ for the test to mean something"
    );
}

/// The lse stays with the op: a second backward through the same forward is as right as the
/// first.
#[test]
fn two_backwards_through_one_forward() {
    let case = random_case(rand::random());
    let [dq, dk, db, _] = dims(&case);
    let q = Var::from_tensor(&tensor::<f32>(&case.q, &dq)).unwrap();
    let k = tensor::<f32>(&case.k, &dk);
    let v = tensor::<f32>(&case.v, &dk);
    let bias = Tensor::from_vec(case.bias.clone(), db, &CPU).unwrap();
    let out = dma_attention(&q, &k, &v, &bias, &case.params()).unwrap();
    for scale in [1.0, -2.5] {
        let dout = (tensor::<f32>(&case.dout, &dq) * scale).unwrap();
        let grads = (&out * &dout)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let scaled = Case {
            dout: case.dout.iter().map(|x| x * scale).collect(),
            ..case.clone()
        };
        let (_, g) = scaled.backward::<f32>();
        assert_eq!(values(grads.get(&q).unwrap()), as_f64(&g.dq));
    }
}

/// Every malformed call is an error that names the problem.
#[test]
fn bad_inputs_are_errors() {
    let t = |dims: &[usize], dtype: DType| Tensor::zeros(dims, dtype, &CPU).unwrap();
    let f = DType::F32;
    let (q, k, bias) = (t(&[1, 5, 4, 8], f), t(&[1, 6, 2, 8], f), t(&[1, 2, 6], f));
    let p = dma::Params::new(3);
    let mut nan_bias = vec![0f32; 12];
    nan_bias[7] = f32::NAN;
    let nan_bias = Tensor::from_vec(nan_bias, (1, 2, 6), &CPU).unwrap();
    let cases: Vec<(&str, candle_core::Result<Tensor>)> = vec![
        (
            "`q` must have shape [B, Nq, Hq, D], got [5, 4, 8]",
            dma_attention(&t(&[5, 4, 8], f), &k, &k, &bias, &p),
        ),
        (
            "`k` must have shape [B, Nk, Hkv, D]",
            dma_attention(&q, &t(&[6, 2, 8], f), &k, &bias, &p),
        ),
        (
            "`v` has shape [1, 6, 2, 4] but must have the shape of `k`",
            dma_attention(&q, &k, &t(&[1, 6, 2, 4], f), &bias, &p),
        ),
        (
            "`k` has batch 2 but 1 is needed",
            dma_attention(&q, &t(&[2, 6, 2, 8], f), &t(&[2, 6, 2, 8], f), &bias, &p),
        ),
        (
            "`k` has head dim 4 but 8 is needed",
            dma_attention(&q, &t(&[1, 6, 2, 4], f), &t(&[1, 6, 2, 4], f), &bias, &p),
        ),
        (
            "`bias` has key count 5 but 6 is needed",
            dma_attention(&q, &k, &k, &t(&[1, 2, 5], f), &p),
        ),
        (
            "`bias` must have shape [B, Hb, Nk]",
            dma_attention(&q, &k, &k, &t(&[2, 6], f), &p),
        ),
        (
            "`bias` has dtype BF16, expected f32",
            dma_attention(&q, &k, &k, &t(&[1, 2, 6], DType::BF16), &p),
        ),
        (
            "`k` has dtype BF16, expected F32 like q",
            dma_attention(&q, &t(&[1, 6, 2, 8], DType::BF16), &k, &bias, &p),
        ),
        (
            "`q` has dtype F64, expected F32, BF16 or F16",
            dma_attention(
                &t(&[1, 5, 4, 8], DType::F64),
                &t(&[1, 6, 2, 8], DType::F64),
                &t(&[1, 6, 2, 8], DType::F64),
                &bias,
                &p,
            ),
        ),
        (
            "query heads (3) must be a multiple of kv heads (2)",
            dma_attention(&t(&[1, 5, 3, 8], f), &k, &k, &bias, &p),
        ),
        (
            "bias heads (3) must equal the query heads (4) or the kv heads (2)",
            dma_attention(&q, &k, &k, &t(&[1, 3, 6], f), &p),
        ),
        (
            "window must be at least 1",
            dma_attention(&q, &k, &k, &bias, &dma::Params::new(0)),
        ),
        (
            "head dim 0 is not supported",
            dma_attention(
                &t(&[1, 5, 4, 0], f),
                &t(&[1, 6, 2, 0], f),
                &t(&[1, 6, 2, 0], f),
                &bias,
                &p,
            ),
        ),
        (
            "bias is not finite (NaN) at sequence 0, bias head 1, key 1",
            dma_attention(&q, &k, &k, &nan_bias, &p),
        ),
    ];
    for (want, got) in cases {
        let err = got.expect_err(want).to_string();
        assert!(err.contains(want), "expected {want:?}, got {err:?}");
    }
}
