//! The CPU backward against the f64 reference, and the reference against finite differences.

mod common;

use common::reference;
use common::{any_spec, as_f64, rel_err, tol, Case, CaseSpec};
use half::{bf16, f16};
use proptest::prelude::*;

/// Ours (as `T`) against the reference on dq, dk, dv and dbias.
fn check<T: dma::Element>(case: &Case) -> Result<(), TestCaseError> {
    let (_, ours) = case.backward::<T>();
    let want = reference::backward(case);
    let errs = [
        ("dq", rel_err(&as_f64(&ours.dq), &want.dq)),
        ("dk", rel_err(&as_f64(&ours.dk), &want.dk)),
        ("dv", rel_err(&as_f64(&ours.dv), &want.dv)),
        (
            "dbias",
            rel_err(
                &ours.dbias.iter().map(|&x| x as f64).collect::<Vec<_>>(),
                &want.dbias,
            ),
        ),
    ];
    for (name, e) in errs {
        prop_assert!(
            e <= tol::<T>(),
            "{}: {name} err {e:.2e} for {case:?}",
            T::DTYPE
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn matches_reference_f32(spec in any_spec(), seed in any::<u64>()) {
        check::<f32>(&spec.build::<f32>(seed))?;
    }

    #[test]
    fn matches_reference_bf16(spec in any_spec(), seed in any::<u64>()) {
        check::<bf16>(&spec.build::<bf16>(seed))?;
    }

    #[test]
    fn matches_reference_f16(spec in any_spec(), seed in any::<u64>()) {
        check::<f16>(&spec.build::<f16>(seed))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    #[test]
    fn decode_shapes_and_window_edges(seed in any::<u64>(), nk in prop::sample::select(vec![15usize, 16, 17, 200])) {
        check::<f32>(&CaseSpec::dense(2, 1, nk, 8, 2, 16, 16).build::<f32>(seed))?;
        check::<f32>(&CaseSpec::dense(1, nk.min(70), nk, 4, 4, 16, 16).build::<f32>(seed))?;
    }

    #[test]
    fn varlen_with_empty_sequences(seed in any::<u64>(), causal in any::<bool>()) {
        let spec = || CaseSpec {
            seqs: vec![(0, 0), (65, 80), (0, 9), (30, 30)],
            varlen: true,
            causal,
            ..CaseSpec::dense(1, 0, 0, 4, 2, 16, 20)
        };
        check::<f32>(&spec().build::<f32>(seed))?;
        check::<bf16>(&spec().build::<bf16>(seed))?;
    }

    /// Rows that keep nothing contribute nothing and produce no NaN.
    #[test]
    fn rows_that_keep_nothing(seed in any::<u64>()) {
        let case = CaseSpec::dense(1, 30, 10, 2, 1, 8, 4).build::<f32>(seed);
        let (_, g) = case.backward::<f32>();
        prop_assert!(g.dq[..20 * 2 * 8].iter().all(|&x| x == 0.0));
        prop_assert!(g.dk.iter().chain(&g.dv).chain(&g.dbias).all(|x| x.is_finite()));
        check::<f32>(&case)?;
    }
}

/// Loss `sum(out * dout)` of the f64 reference.
fn loss(case: &Case) -> f64 {
    let out = reference::forward(case).out;
    out.iter().zip(&case.dout).map(|(o, g)| o * g).sum()
}

/// Central finite differences of the loss along every element of one f64 input.
fn finite_differences(case: &Case, field: fn(&mut Case) -> &mut Vec<f64>) -> Vec<f64> {
    const H: f64 = 1e-5;
    (0..field(&mut case.clone()).len())
        .map(|i| {
            let (mut plus, mut minus) = (case.clone(), case.clone());
            field(&mut plus)[i] += H;
            field(&mut minus)[i] -= H;
            (loss(&plus) - loss(&minus)) / (2.0 * H)
        })
        .collect()
}

/// The same along the f32 bias, dividing by the step f32 can actually represent.
fn finite_differences_bias(case: &Case) -> Vec<f64> {
    (0..case.bias.len())
        .map(|i| {
            let (mut plus, mut minus) = (case.clone(), case.clone());
            plus.bias[i] = (case.bias[i] as f64 + 1e-4) as f32;
            minus.bias[i] = (case.bias[i] as f64 - 1e-4) as f32;
            let step = plus.bias[i] as f64 - minus.bias[i] as f64;
            (loss(&plus) - loss(&minus)) / step
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    /// The reference's analytic gradients equal central finite differences of its forward, and
    /// ours equal both. Biases are well separated so that no step changes the selection.
    #[test]
    fn gradients_match_finite_differences(seed in any::<u64>(), causal in any::<bool>(),
                                          per_query_head in any::<bool>()) {
        let mut spec = CaseSpec::dense(1, 5, 7, 4, 2, 3, 3);
        spec.causal = causal;
        spec.hb = if per_query_head { 4 } else { 2 };
        let mut case = spec.build::<f32>(seed);
        // Distinct biases, at least 0.1 apart: a 1e-5 step never changes a rank.
        let n = case.bias.len();
        for (i, b) in case.bias.iter_mut().enumerate() {
            *b = ((i * 7919 + seed as usize % 13) % n) as f32 * 0.1 - 1.0;
        }
        let analytic = reference::backward(&case);
        let (_, ours) = case.backward::<f32>();
        let fd_q = finite_differences(&case, |c| &mut c.q);
        let fd_k = finite_differences(&case, |c| &mut c.k);
        let fd_v = finite_differences(&case, |c| &mut c.v);
        let fd_b = finite_differences_bias(&case);
        for (name, fd, exact, mine) in [
            ("dq", &fd_q, &analytic.dq, as_f64(&ours.dq)),
            ("dk", &fd_k, &analytic.dk, as_f64(&ours.dk)),
            ("dv", &fd_v, &analytic.dv, as_f64(&ours.dv)),
            ("dbias", &fd_b, &analytic.dbias, ours.dbias.iter().map(|&x| x as f64).collect()),
        ] {
            prop_assert!(rel_err(exact, fd) <= 1e-6, "{name}: reference vs finite differences {:.2e}", rel_err(exact, fd));
            prop_assert!(rel_err(&mine, fd) <= 1e-5, "{name}: ours vs finite differences {:.2e}", rel_err(&mine, fd));
        }
    }
}
