//! The CPU forward against the f64 reference, on fresh random inputs.

mod common;

use common::reference;
use common::{any_spec, as_f64, rel_err, tol, BiasKind, Case, CaseSpec};
use half::{bf16, f16};
use proptest::prelude::*;

/// Ours (as `T`) against the f64 reference on out and lse.
fn check<T: dma::Element>(case: &Case) -> Result<(), TestCaseError> {
    let ours = case.forward::<T>();
    let want = reference::forward(case);
    let (e_out, e_lse) = (
        rel_err(&as_f64(&ours.out), &want.out),
        rel_err(
            &ours.lse.iter().map(|&x| x as f64).collect::<Vec<_>>(),
            &want.lse,
        ),
    );
    prop_assert!(
        e_out <= tol::<T>() && e_lse <= tol::<T>(),
        "{}: out err {e_out:.2e}, lse err {e_lse:.2e} for {case:?}",
        T::DTYPE
    );
    prop_assert!(ours.out.iter().all(|x| !x.to_f32().is_nan()), "NaN in out");
    Ok(())
}

fn check_all_dtypes(spec: impl Fn() -> CaseSpec, seed: u64) -> Result<(), TestCaseError> {
    check::<f32>(&spec().build::<f32>(seed))?;
    check::<bf16>(&spec().build::<bf16>(seed))?;
    check::<f16>(&spec().build::<f16>(seed))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

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
    fn fewer_keys_than_window(seed in any::<u64>()) {
        check_all_dtypes(|| CaseSpec::dense(2, 20, 20, 4, 2, 16, 32), seed)?;
    }

    #[test]
    fn keys_equal_window(seed in any::<u64>()) {
        check_all_dtypes(|| CaseSpec::dense(1, 32, 32, 2, 2, 16, 32), seed)?;
    }

    #[test]
    fn keys_one_more_than_window(seed in any::<u64>()) {
        check_all_dtypes(|| CaseSpec::dense(1, 33, 33, 2, 1, 16, 32), seed)?;
    }

    #[test]
    fn single_query_over_long_cache(seed in any::<u64>()) {
        check_all_dtypes(|| CaseSpec::dense(2, 1, 300, 8, 2, 32, 40), seed)?;
    }

    #[test]
    fn fewer_queries_than_keys(seed in any::<u64>()) {
        check_all_dtypes(|| CaseSpec::dense(1, 70, 200, 4, 4, 16, 24), seed)?;
    }

    #[test]
    fn gqa_group_sizes(seed in any::<u64>(), group in prop::sample::select(vec![1usize, 2, 8]),
                       per_query_head in any::<bool>()) {
        check_all_dtypes(|| {
            let mut s = CaseSpec::dense(1, 130, 130, 2 * group, 2, 16, 20);
            s.hb = if per_query_head { s.hq } else { s.hkv };
            s
        }, seed)?;
    }

    #[test]
    fn not_causal(seed in any::<u64>(), nq in 1usize..100) {
        check_all_dtypes(|| CaseSpec { causal: false, ..CaseSpec::dense(2, nq, 90, 4, 2, 16, 30) }, seed)?;
    }

    #[test]
    fn varlen_with_empty_sequences(seed in any::<u64>(), causal in any::<bool>()) {
        check_all_dtypes(|| CaseSpec {
            seqs: vec![(40, 90), (0, 0), (70, 70), (0, 12), (1, 1)],
            varlen: true,
            causal,
            ..CaseSpec::dense(1, 0, 0, 4, 2, 16, 25)
        }, seed)?;
    }

    #[test]
    fn ties_are_broken_by_index(seed in any::<u64>(), causal in any::<bool>()) {
        check_all_dtypes(|| CaseSpec {
            bias: BiasKind::Ties,
            causal,
            ..CaseSpec::dense(1, 100, 100, 2, 2, 8, 10)
        }, seed)?;
    }

    /// With a constant bias DMA is sliding-window attention of width w, checked against a
    /// formulation that never ranks anything.
    #[test]
    fn constant_bias_is_sliding_window(seed in any::<u64>(), causal in any::<bool>(),
                                       window in 1usize..80, nq in 1usize..150) {
        let case = CaseSpec {
            bias: BiasKind::Constant,
            causal,
            ..CaseSpec::dense(2, nq, 150, 4, 2, 16, window)
        }.build::<f32>(seed);
        let ours = case.forward::<f32>();
        let want = reference::sliding_window(&case);
        prop_assert!(rel_err(&as_f64(&ours.out), &want.out) <= 1e-5);
        let lse: Vec<f64> = ours.lse.iter().map(|&x| x as f64).collect();
        prop_assert!(rel_err(&lse, &want.lse) <= 1e-5);
    }

    /// Causal rows before the first key (Nq > Nk) keep nothing: out 0, lse -inf, no NaN.
    #[test]
    fn rows_that_keep_nothing(seed in any::<u64>()) {
        let case = CaseSpec::dense(1, 30, 10, 2, 1, 8, 4).build::<f32>(seed);
        let ours = case.forward::<f32>();
        for h in 0..2 {
            for i in 0..30 {
                let lse = ours.lse[case.lse_index(0, h, i)];
                let row = &ours.out[(i * 2 + h) * 8..][..8];
                if i < 20 {
                    prop_assert!(lse == f32::NEG_INFINITY && row.iter().all(|&x| x == 0.0));
                } else {
                    prop_assert!(lse.is_finite() && row.iter().all(|x| x.is_finite()));
                }
            }
        }
        check::<f32>(&case)?;
    }
}
