//! `doge::inspect` on a small random model: every query keeps min(w, visible) keys, its weights
//! over them sum to 1, and with swa the kept keys are the latest w.

mod common;

use common::{random_ids, random_model, small_config};
use doge::inspect::{attention_inputs, head_maps, window};
use doge::{AttentionKind, ModelOptions};

fn check(kind: AttentionKind) {
    let config = small_config();
    let (layers, heads, w) = (
        config.num_hidden_layers,
        config.num_attention_heads,
        config.keep_window_size,
    );
    let model = random_model(
        config,
        ModelOptions {
            kind,
            ..Default::default()
        },
    );
    let n = 17;
    let ids: Vec<u32> = random_ids(1, n, 61)
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let inputs = attention_inputs(&model, &ids).unwrap();
    assert_eq!(inputs.len(), layers);
    let window = window(&model, n);
    assert_eq!(window, if kind == AttentionKind::Mha { n } else { w });
    for layer in &inputs {
        assert_eq!(layer.q.dims(), &[n, heads, 8]);
        let maps = head_maps(layer, window).unwrap();
        assert_eq!(maps.len(), heads);
        for m in &maps {
            for i in 0..n {
                let kept: Vec<usize> = (0..n).filter(|&j| m.kept(i, j)).collect();
                assert_eq!(kept.len(), window.min(i + 1), "row {i}: {kept:?}");
                assert!(kept.iter().all(|&j| j <= i), "row {i} keeps a future key");
                if kind == AttentionKind::Swa {
                    assert_eq!(kept, ((i + 1).saturating_sub(w)..=i).collect::<Vec<_>>());
                }
                let sum: f64 = (0..n).map(|j| m.weight(i, j) as f64).sum();
                assert!((sum - 1.0).abs() < 1e-5, "row {i} sums to {sum}");
                for j in 0..n {
                    assert_eq!(m.weight(i, j) > 0.0, m.kept(i, j), "({i}, {j})");
                }
            }
        }
    }
}

#[test]
fn dma_rows_keep_min_w_visible_and_weights_sum_to_one() {
    check(AttentionKind::Dma);
}

#[test]
fn swa_keeps_the_latest_keys() {
    check(AttentionKind::Swa);
}

#[test]
fn mha_keeps_every_visible_key() {
    check(AttentionKind::Mha);
}

#[test]
fn too_long_and_bad_ids_are_errors() {
    let model = random_model(small_config(), ModelOptions::default());
    let long = vec![1u32; 41];
    assert!(attention_inputs(&model, &long)
        .unwrap_err()
        .to_string()
        .contains("max_position_embeddings"));
    assert!(attention_inputs(&model, &[3, 61])
        .unwrap_err()
        .to_string()
        .contains("vocabulary"));
    assert!(attention_inputs(&model, &[]).is_err());
}
