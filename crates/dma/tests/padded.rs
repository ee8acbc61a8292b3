//! The padded layout (`Shape::padded`: a KV cache with room to grow, read in place): the CPU
//! forward and backward on dense cases laid out in a larger cache whose spare rows hold NaN,
//! against the f64 reference of the dense case; gradients of the spare rows are zero.

mod common;

use common::reference;
use common::{any_spec, as_f64, rel_err, tol, Case};
use dma::{DmaError, Heads, Shape};
use half::bf16;
use proptest::prelude::*;

/// `x`, `runs` runs of `rows` values (a sequence's k or v rows, or the keys of one of its bias
/// heads), each spread to `cap` values, the spare ones `fill`.
fn spread<T: Copy>(x: &[T], runs: usize, rows: usize, cap: usize, fill: T) -> Vec<T> {
    let mut out = vec![fill; runs * cap];
    for run in 0..runs {
        out[run * cap..run * cap + rows].copy_from_slice(&x[run * rows..(run + 1) * rows]);
    }
    out
}

/// The rows of `x` (as spread) that hold keys, in the dense layout again.
fn gather<T: Copy>(x: &[T], rows: usize, cap: usize) -> Vec<T> {
    x.chunks(cap.max(1))
        .flat_map(|run| run[..rows].to_vec())
        .collect()
}

/// The spare rows of `x` (as spread).
fn spare<T: Copy>(x: &[T], rows: usize, cap: usize) -> Vec<T> {
    x.chunks(cap.max(1))
        .flat_map(|run| run[rows..].to_vec())
        .collect()
}

fn check<T: dma::Element>(case: &Case, extra: usize) -> Result<(), TestCaseError> {
    let (b, (nq, nk)) = (case.seqs.len(), case.seqs[0]);
    let cap = nk + extra;
    let row = case.hkv * case.d;
    let to = Case::to::<T>;
    let nan = T::from_f32(f32::NAN);
    let (q, dout) = (to(&case.q), to(&case.dout));
    let spread_kv = |x: &[f64]| spread(&to(x), b, nk * row, cap * row, nan);
    let (k, v) = (spread_kv(&case.k), spread_kv(&case.v));
    let bias = spread(&case.bias, b * case.hb, nk, cap, f32::NAN);
    let shape = Shape::padded(
        b,
        nq,
        nk,
        cap,
        Heads::new(case.hq, case.hkv).with_bias(case.hb),
        case.d,
    );
    let inputs = dma::cpu::Inputs {
        q: &q,
        k: &k,
        v: &v,
        bias: &bias,
    };
    let params = case.params();
    let fwd = dma::cpu::forward(&params, &shape, &inputs)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let want = reference::forward(case);
    let lse: Vec<f64> = fwd.lse.iter().map(|&x| x as f64).collect();
    let (e_out, e_lse) = (
        rel_err(&as_f64(&fwd.out), &want.out),
        rel_err(&lse, &want.lse),
    );
    prop_assert!(
        e_out <= tol::<T>() && e_lse <= tol::<T>(),
        "out {e_out:.2e} lse {e_lse:.2e}"
    );

    let grads = dma::cpu::backward(&params, &shape, &inputs, &fwd.out, &fwd.lse, &dout)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let want = reference::backward(case);
    let dk = as_f64(&grads.dk);
    let dv = as_f64(&grads.dv);
    let dbias: Vec<f64> = grads.dbias.iter().map(|&x| x as f64).collect();
    let errs = [
        ("dq", rel_err(&as_f64(&grads.dq), &want.dq)),
        ("dk", rel_err(&gather(&dk, nk * row, cap * row), &want.dk)),
        ("dv", rel_err(&gather(&dv, nk * row, cap * row), &want.dv)),
        ("dbias", rel_err(&gather(&dbias, nk, cap), &want.dbias)),
    ];
    for (name, e) in errs {
        prop_assert!(e <= tol::<T>(), "{name} err {e:.2e}");
    }
    for (name, x, rows, width) in [
        ("dk", &dk, nk, row),
        ("dv", &dv, nk, row),
        ("dbias", &dbias, nk, 1),
    ] {
        prop_assert!(
            spare(x, rows * width, cap * width)
                .iter()
                .all(|&g| g == 0.0),
            "{name} is not zero in the spare rows"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn padded_matches_reference(
        spec in any_spec().prop_filter("dense", |s| !s.varlen),
        extra in 0usize..40,
        seed in any::<u64>(),
    ) {
        check::<f32>(&spec.clone().build::<f32>(seed), extra)?;
        check::<bf16>(&spec.build::<bf16>(seed), extra)?;
    }
}

#[test]
fn keys_past_capacity_are_an_error() {
    let shape = Shape::padded(2, 1, 300, 256, Heads::new(4, 2), 64);
    assert_eq!(
        shape.problem().unwrap_err(),
        DmaError::KeysPastCapacity {
            seqlen_k: 300,
            capacity_k: 256
        }
    );
}

#[test]
fn padded_tensors_have_the_capacity_rows() {
    let p = Shape::padded(3, 2, 10, 16, Heads::new(4, 2), 8)
        .problem()
        .unwrap();
    assert_eq!(p.k_len(), 3 * 16 * 2 * 8);
    assert_eq!(p.bias_len(), 3 * 16 * 2);
    assert_eq!(p.q_len(), 3 * 2 * 4 * 8);
    assert_eq!(
        p.sequences
            .iter()
            .map(|s| (s.k_start, s.nk, s.bias_offset))
            .collect::<Vec<_>>(),
        vec![(0, 10, 0), (16, 10, 32), (32, 10, 64)]
    );
}
