//! The selection module against the literal top-w of SPEC.md.

mod common;

use common::reference::kept_keys;
use dma::selection::KeySelection;
use proptest::prelude::*;
use std::collections::BTreeSet;

/// Biases with ties (0.0 and -0.0 among them) or continuous values.
fn biases() -> impl Strategy<Value = Vec<f32>> {
    prop_oneof![
        prop::collection::vec(-3.0f32..3.0, 0..200),
        prop::collection::vec(
            prop::sample::select(vec![0.0f32, -0.0, 1.0, -1.0, 2.5]),
            0..200
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Every query keeps exactly SPEC.md's kept set; each key's keeping rows form the interval
    /// `rows_keeping` reports; each block's candidates hold every key its rows keep, no key that
    /// none keeps, and at most w + block_rows keys.
    #[test]
    fn kept_sets_match_spec(
        bias in biases(),
        nq in 0usize..220,
        window in 1usize..50,
        causal in any::<bool>(),
        block_rows in 1usize..70,
    ) {
        let nk = bias.len();
        let sel = KeySelection::new(&bias, nq, window, causal, block_rows);
        let offset = nk as i64 - nq as i64;
        let kept: Vec<BTreeSet<usize>> = (0..nq)
            .map(|i| kept_keys(&bias, offset + i as i64, window, causal).into_iter().collect())
            .collect();
        for (i, set) in kept.iter().enumerate() {
            let p = offset + i as i64;
            let ours: BTreeSet<usize> = (0..nk).filter(|&j| sel.keeps(p, j)).collect();
            prop_assert_eq!(&ours, set, "row {}", i);
        }
        for j in 0..nk {
            let rows: Vec<usize> = (0..nq).filter(|&i| kept[i].contains(&j)).collect();
            let interval: Vec<usize> = sel.rows_keeping(j).collect();
            prop_assert_eq!(rows, interval, "key {}", j);
        }
        for b in 0..nq.div_ceil(block_rows) {
            let rows = b * block_rows..((b + 1) * block_rows).min(nq);
            let want: BTreeSet<usize> = rows.clone().flat_map(|i| kept[i].iter().copied()).collect();
            let got: Vec<usize> = sel.candidates(b).iter().map(|&j| j as usize).collect();
            prop_assert!(got.windows(2).all(|w| w[0] < w[1]), "candidates not ascending");
            prop_assert_eq!(got.iter().copied().collect::<BTreeSet<_>>(), want, "block {}", b);
            prop_assert!(got.len() <= window + block_rows);
        }
    }
}
