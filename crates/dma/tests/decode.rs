//! Decoding with a growing KV cache equals the full forward over the same tokens.

mod common;

use common::CaseSpec;
use dma::{cpu, Heads, Params, Shape};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Token t decoded alone against keys 0..=t (Nq = 1 over a cache of t + 1 keys) gives row t
    /// of the full causal forward, for every t, and a prefill of any length followed by
    /// one-token steps gives the same rows.
    #[test]
    fn one_token_at_a_time_equals_full_forward(
        seed in any::<u64>(),
        n in 1usize..140,
        window in 1usize..40,
        group in prop::sample::select(vec![1usize, 2, 8]),
        per_query_head in any::<bool>(),
        prefill in 0usize..140,
    ) {
        let (hkv, d) = (2, 16);
        let hq = hkv * group;
        let hb = if per_query_head { hq } else { hkv };
        let mut spec = CaseSpec::dense(1, n, n, hq, hkv, d, window);
        spec.hb = hb;
        let case = spec.build::<f32>(seed);
        let full = case.forward::<f32>();
        let params = Params::new(window);
        let heads = Heads::new(hq, hkv).with_bias(hb);

        // Bias [1, Hb, N] cut down to the first `len` keys of every head.
        let bias_prefix = |len: usize| -> Vec<f32> {
            (0..hb).flat_map(|h| case.bias[h * n..h * n + len].to_vec()).collect()
        };
        let q: Vec<f32> = case.q.iter().map(|&x| x as f32).collect();
        let k: Vec<f32> = case.k.iter().map(|&x| x as f32).collect();
        let v: Vec<f32> = case.v.iter().map(|&x| x as f32).collect();
        let (q_row, k_row) = (hq * d, hkv * d);

        // A prefill of the first `prefill` queries at once, then one token at a time.
        let prefill = prefill.min(n);
        let mut first = 0;
        while first < n {
            let len = if first == 0 && prefill > 0 { prefill } else { 1 };
            let end = first + len;
            let bias = bias_prefix(end);
            let inputs = cpu::Inputs {
                q: &q[first * q_row..end * q_row],
                k: &k[..end * k_row],
                v: &v[..end * k_row],
                bias: &bias,
            };
            let step = cpu::forward(&params, &Shape::dense(1, len, end, heads, d), &inputs)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            for (x, y) in step.out.iter().zip(&full.out[first * q_row..end * q_row]) {
                prop_assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "out of step at {first}: {x} vs {y}");
            }
            for h in 0..hq {
                for i in 0..len {
                    let (x, y) = (step.lse[h * len + i], full.lse[h * n + first + i]);
                    prop_assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "lse at {first}+{i}: {x} vs {y}");
                }
            }
            first = end;
        }
    }
}
