//! The DmaAttention layer against an f64 transcription of transformers' `DogeAttention` (eager
//! attention with the dynamic mask), its gradients against finite differences, the three
//! attention kinds against each other, and its errors.

#[path = "../../dma/tests/common/mod.rs"]
mod common;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use common::{reference::kept_keys, rel_err};
use dma_candle::{AttentionKind, BiasFn, DmaAttention, DmaAttentionConfig};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

const CPU: Device = Device::Cpu;

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn uniform(rng: &mut StdRng, dims: &[usize], lo: f64, hi: f64) -> Tensor {
    let n = dims.iter().product();
    let xs: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi) as f32).collect();
    Tensor::from_vec(xs, dims, &CPU).unwrap()
}

/// A layer whose weights (in `varmap`) are drawn from `rng`: projections ~ U(±1/sqrt(in)),
/// norm weights near 1, A of either sign away from zero.
fn layer(config: &DmaAttentionConfig, rng: &mut StdRng) -> (VarMap, DmaAttention) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
    let layer = DmaAttention::new(config.clone(), vb).unwrap();
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let value = if name == "A" {
            let sign = uniform(rng, &dims, -1.0, 1.0).sign().unwrap();
            (uniform(rng, &dims, 0.3, 1.0) * sign).unwrap()
        } else if name.ends_with("norm.weight") {
            uniform(rng, &dims, 0.8, 1.2)
        } else {
            let bound = 1.0 / (*dims.last().unwrap() as f64).sqrt();
            uniform(rng, &dims, -bound, bound)
        };
        var.set(&value).unwrap();
    }
    drop(data);
    (varmap, layer)
}

fn var(varmap: &VarMap, name: &str) -> Var {
    varmap.data().lock().unwrap()[name].clone()
}

/// transformers' `DogeAttention` with eager attention, in f64, from the weights in `varmap`:
/// Linear, RMSNorm per head, rotate-half RoPE at positions `offset..`, the dynamic mask
/// (bias of the kept keys, -inf elsewhere) added to the scores, softmax, o_proj.
fn doge_reference(
    varmap: &VarMap,
    c: &DmaAttentionConfig,
    x: &Tensor,
    offset: usize,
) -> candle_core::Result<Tensor> {
    let weights: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().to_dtype(DType::F64).unwrap()))
        .collect();
    let linear = |x: &Tensor, name: &str| -> candle_core::Result<Tensor> {
        let y = x.broadcast_matmul(&weights[&format!("{name}.weight")].t()?)?;
        match weights.get(&format!("{name}.bias")) {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    };
    let (hq, hkv, hb, d) = (
        c.num_attention_heads,
        c.num_key_value_heads,
        c.num_bias_heads,
        c.head_dim,
    );
    let x = x.to_dtype(DType::F64)?;
    let (b, n, _) = x.dims3()?;
    let rms = |t: Tensor, name: &str| -> candle_core::Result<Tensor> {
        let ms = t.sqr()?.mean_keepdim(D::Minus1)?;
        t.broadcast_div(&(ms + c.rms_norm_eps)?.sqrt()?)?
            .broadcast_mul(&weights[&format!("{name}.weight")])
    };
    // RoPE: pair (x_i, x_{i + D/2}) turns by position * theta^(-2i/D).
    let half = d / 2;
    let angle = |p: usize, i: usize| p as f64 * c.rope_theta.powf(-2.0 * i as f64 / d as f64);
    let table = |f: fn(f64) -> f64| {
        let t: Vec<f64> = (0..n)
            .flat_map(|p| (0..half).map(move |i| f(angle(p + offset, i))))
            .collect();
        Tensor::from_vec(t, (1, n, 1, half), &CPU)
    };
    let (cos, sin) = (table(f64::cos)?, table(f64::sin)?);
    let rope = |t: Tensor| -> candle_core::Result<Tensor> {
        let (x1, x2) = (t.narrow(3, 0, half)?, t.narrow(3, half, half)?);
        let y1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
        let y2 = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
        Tensor::cat(&[y1, y2], 3)
    };
    let q = rope(rms(
        linear(&x, "q_proj")?.reshape((b, n, hq, d))?,
        "q_norm",
    )?)?;
    let k = rope(rms(
        linear(&x, "k_proj")?.reshape((b, n, hkv, d))?,
        "k_norm",
    )?)?;
    let v = linear(&x, "v_proj")?.reshape((b, n, hkv, d))?;

    // The bias [B, Hb, N] and the keys each (batch, bias head, query) keeps.
    let bias: Vec<f64> = match c.kind {
        AttentionKind::Dma => {
            let z = linear(&v.reshape((b, n, hkv * d))?, "dt_proj")?.transpose(1, 2)?;
            let a = values(&weights["A"]);
            values(&z)
                .iter()
                .enumerate()
                .map(|(idx, &z)| {
                    let s = a[(idx / n) % hb] * z.exp().ln_1p();
                    match c.bias_fn {
                        BiasFn::ExpSoftplus => s.exp(),
                        BiasFn::Softplus => s,
                    }
                })
                .collect()
        }
        AttentionKind::Swa | AttentionKind::Mha => vec![0.0; b * hb * n],
    };
    let kept = |bi: usize, h: usize, i: usize| -> Vec<usize> {
        let w = c.keep_window_size;
        match c.kind {
            AttentionKind::Dma => {
                let row = &bias[(bi * hb + h) * n..(bi * hb + h + 1) * n];
                let row: Vec<f32> = row.iter().map(|&x| x as f32).collect();
                kept_keys(&row, i as i64, w, true)
            }
            AttentionKind::Swa => ((i + 1).saturating_sub(w)..=i).collect(),
            AttentionKind::Mha => (0..=i).collect(),
        }
    };
    // The additive mask [B, Hq, N, N]: the key's bias where kept, -inf elsewhere.
    let mut mask = vec![f64::NEG_INFINITY; b * hq * n * n];
    for bi in 0..b {
        for h in 0..hq {
            let hb_of = h / (hq / hb);
            for i in 0..n {
                for j in kept(bi, hb_of, i) {
                    mask[((bi * hq + h) * n + i) * n + j] = bias[(bi * hb + hb_of) * n + j];
                }
            }
        }
    }
    let mask = Tensor::from_vec(mask, (b, hq, n, n), &CPU)?;
    // repeat_kv, then eager attention.
    let repeat = |t: Tensor| -> candle_core::Result<Tensor> {
        t.transpose(1, 2)?
            .unsqueeze(2)?
            .expand((b, hkv, hq / hkv, n, d))?
            .reshape((b, hq, n, d))
    };
    let (k, v) = (repeat(k)?, repeat(v)?);
    let q = q.transpose(1, 2)?.contiguous()?;
    let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?.add(&mask)?;
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
    let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, n, hq * d))?;
    linear(&out, "o_proj")
}

fn config_strategy() -> impl Strategy<Value = DmaAttentionConfig> {
    (
        (
            1usize..3,
            prop::sample::select(vec![1usize, 2, 4]),
            any::<bool>(),
        ),
        prop::sample::select(vec![4usize, 8, 16]),
        prop::sample::select(vec![16usize, 24]),
        1usize..12,
        any::<bool>(),
        prop::sample::select(vec![
            AttentionKind::Dma,
            AttentionKind::Swa,
            AttentionKind::Mha,
        ]),
        prop::sample::select(vec![BiasFn::ExpSoftplus, BiasFn::Softplus]),
    )
        .prop_map(
            |((hkv, group, per_q), head_dim, hidden, window, attention_bias, kind, bias_fn)| {
                let hq = hkv * group;
                DmaAttentionConfig {
                    head_dim,
                    num_bias_heads: if per_q { hq } else { hkv },
                    attention_bias,
                    kind,
                    bias_fn,
                    ..DmaAttentionConfig::new(hidden, hq, hkv, window)
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Every kind, GQA, Hb both ways, both bias functions, with and without projection biases,
    /// windows below and above the length, at a position offset: the layer equals the f64
    /// transcription of transformers (so mha is the plain dense causal softmax attention).
    #[test]
    fn matches_doge_reference(
        config in config_strategy(),
        (b, n, offset) in (1usize..3, 1usize..24, 0usize..50),
        seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let (varmap, layer) = layer(&config, &mut rng);
        let x = uniform(&mut rng, &[b, n, config.hidden_size], -1.0, 1.0);
        let ours = values(&layer.forward(&x, offset).unwrap());
        let want = values(&doge_reference(&varmap, &config, &x, offset).unwrap());
        let e = rel_err(&ours, &want);
        prop_assert!(e <= 1e-4, "err {e:.2e} for {config:?}, b={b} n={n} offset={offset}");
    }
}

/// The scalar loss `sum(layer(x) * dout)`.
fn loss(layer: &DmaAttention, x: &Tensor, dout: &Tensor, offset: usize) -> Tensor {
    (layer.forward(x, offset).unwrap() * dout)
        .unwrap()
        .sum_all()
        .unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar().unwrap()
}

/// The keys every query keeps, for every (batch, bias head): what the selection decides.
fn kept_sets(layer: &DmaAttention, x: &Tensor) -> Vec<Vec<usize>> {
    let (_, _, v) = layer.project(x, 0).unwrap();
    let bias = layer.key_bias(&v).unwrap();
    let (b, hb, n) = bias.dims3().unwrap();
    let bias: Vec<f32> = bias.flatten_all().unwrap().to_vec1().unwrap();
    let w = layer.config().keep_window_size;
    let mut sets = Vec::new();
    for row in bias.chunks(n).take(b * hb) {
        for i in 0..n {
            let mut kept = kept_keys(row, i as i64, w, true);
            kept.sort();
            sets.push(kept);
        }
    }
    sets
}

/// Central differences of the loss in the entries `indices` of `var`, or None when a step
/// changed which keys are kept (the loss is then not differentiable there).
fn finite_differences(
    layer: &DmaAttention,
    var: &Var,
    indices: &[usize],
    (x, dout, offset): (&Tensor, &Tensor, usize),
) -> Option<Vec<f64>> {
    let eps = 1e-2;
    let original = var.as_tensor().copy().unwrap();
    let base: Vec<f32> = original.flatten_all().unwrap().to_vec1().unwrap();
    let kept = kept_sets(layer, x);
    let mut out = Vec::new();
    for &i in indices {
        let at = |delta: f64| -> Option<f64> {
            let mut moved = base.clone();
            moved[i] += delta as f32;
            var.set(&Tensor::from_vec(moved, original.dims(), &CPU).unwrap())
                .unwrap();
            let same = kept_sets(layer, x) == kept;
            let l = scalar(&loss(layer, x, dout, offset));
            var.set(&original).unwrap();
            same.then_some(l)
        };
        out.push((at(eps)? - at(-eps)?) / (2.0 * eps));
    }
    Some(out)
}

/// The gradients of A and dt_proj (and samples of every other weight) through the op equal
/// central differences of the layer's loss, and those of A and dt_proj are not zero.
#[test]
fn gradients_match_finite_differences() {
    for bias_fn in [BiasFn::ExpSoftplus, BiasFn::Softplus] {
        let config = DmaAttentionConfig {
            head_dim: 8,
            num_bias_heads: 2,
            attention_bias: true,
            bias_fn,
            ..DmaAttentionConfig::new(16, 2, 1, 4)
        };
        let base_seed: u64 = rand::random();
        let checked = (0..50).any(|attempt| {
            let mut rng = StdRng::seed_from_u64(base_seed.wrapping_add(attempt));
            let (varmap, layer) = layer(&config, &mut rng);
            // A wide spread of z keeps the ranks apart, so that small steps rarely flip them.
            let dt = var(&varmap, "dt_proj.weight");
            dt.set(&(dt.as_tensor() * 4.0).unwrap()).unwrap();
            let x = uniform(&mut rng, &[2, 12, 16], -1.0, 1.0);
            let dout = uniform(&mut rng, &[2, 12, 16], -1.0, 1.0);
            let grads = loss(&layer, &x, &dout, 3).backward().unwrap();
            let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
            names.sort();
            for name in &names {
                let var = var(&varmap, name);
                let analytic = values(grads.get(&var).unwrap());
                let all = name == "A" || name.starts_with("dt_proj");
                let indices: Vec<usize> = if all {
                    (0..analytic.len()).collect()
                } else {
                    (0..3)
                        .map(|_| rng.random_range(0..analytic.len()))
                        .collect()
                };
                let Some(fd) = finite_differences(&layer, &var, &indices, (&x, &dout, 3)) else {
                    return false; // a step changed the kept keys: try other data
                };
                let picked: Vec<f64> = indices.iter().map(|&i| analytic[i]).collect();
                // 1e-2 relative, over a floor for the rounding of the f32 loss (its ulp, about
                // 5e-7, over 2 eps is 2.5e-5 per entry).
                let norm = |xs: &[f64]| xs.iter().map(|x| x * x).sum::<f64>().sqrt();
                let diff: Vec<f64> = picked.iter().zip(&fd).map(|(a, b)| a - b).collect();
                let (diff, size) = (norm(&diff), norm(&fd));
                assert!(
                    diff <= 1e-2 * size + 1e-4,
                    "{bias_fn:?} {name}: |analytic - fd| = {diff:.2e}, |fd| = {size:.2e}\n{picked:?}\n{fd:?}"
                );
                if all {
                    assert!(size > 1e-3, "{bias_fn:?} {name}: no gradient");
                }
            }
            true
        });
        assert!(checked, "every attempt flipped the selection");
    }
}

/// With A = 0 the bias is constant (exp(0) = 1, or 0), so DMA keeps the latest w keys: the
/// same as swa on the same weights.
#[test]
fn swa_equals_dma_with_a_constant_bias() {
    let mut rng = StdRng::seed_from_u64(rand::random());
    for bias_fn in [BiasFn::ExpSoftplus, BiasFn::Softplus] {
        let dma_config = DmaAttentionConfig {
            bias_fn,
            ..DmaAttentionConfig::new(32, 4, 2, 5)
        };
        let (varmap, dma_layer) = layer(&dma_config, &mut rng);
        var(&varmap, "A")
            .set(&Tensor::zeros(2, DType::F32, &CPU).unwrap())
            .unwrap();
        let swa_config = DmaAttentionConfig {
            kind: AttentionKind::Swa,
            ..dma_config.clone()
        };
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &CPU);
        let swa_layer = DmaAttention::new(swa_config, vb).unwrap();
        let x = uniform(&mut rng, &[2, 17, 32], -1.0, 1.0);
        let (a, b) = (
            dma_layer.forward(&x, 0).unwrap(),
            swa_layer.forward(&x, 0).unwrap(),
        );
        let e = rel_err(&values(&a), &values(&b));
        let tol = if bias_fn == BiasFn::Softplus {
            0.0
        } else {
            1e-6
        };
        assert!(e <= tol, "{bias_fn:?}: err {e:.2e}");
    }
}

/// Without a cache, RoPE makes attention depend only on relative positions.
#[test]
fn offset_only_rotates() {
    let mut rng = StdRng::seed_from_u64(rand::random());
    let config = DmaAttentionConfig::new(32, 4, 2, 6);
    let (_, layer) = layer(&config, &mut rng);
    let x = uniform(&mut rng, &[1, 20, 32], -1.0, 1.0);
    let a = values(&layer.forward(&x, 0).unwrap());
    let b = values(&layer.forward(&x, 41).unwrap());
    let e = rel_err(&a, &b);
    assert!(e <= 1e-5 && e > 0.0, "err {e:.2e}");
}

/// A few AdamW steps through the op lower a regression loss, in every kind, and A learns.
#[test]
fn trains() {
    let mut rng = StdRng::seed_from_u64(rand::random());
    for kind in [AttentionKind::Dma, AttentionKind::Swa, AttentionKind::Mha] {
        let config = DmaAttentionConfig {
            kind,
            ..DmaAttentionConfig::new(16, 2, 1, 3)
        };
        let (varmap, layer) = layer(&config, &mut rng);
        let x = uniform(&mut rng, &[2, 10, 16], -1.0, 1.0);
        let target = uniform(&mut rng, &[2, 10, 16], -0.5, 0.5);
        let a_before = (kind == AttentionKind::Dma).then(|| values(var(&varmap, "A").as_tensor()));
        let mse = || candle_nn::loss::mse(&layer.forward(&x, 0).unwrap(), &target).unwrap();
        let params = candle_nn::ParamsAdamW {
            lr: 0.02,
            weight_decay: 0.0,
            ..Default::default()
        };
        let mut opt = candle_nn::AdamW::new(varmap.all_vars(), params).unwrap();
        let first = scalar(&mse());
        for _ in 0..40 {
            opt.backward_step(&mse()).unwrap();
        }
        let last = scalar(&mse());
        assert!(last < 0.5 * first, "{kind:?}: loss {first} -> {last}");
        if let Some(before) = a_before {
            assert_ne!(
                before,
                values(var(&varmap, "A").as_tensor()),
                "A did not move"
            );
        }
    }
}

/// A bf16 layer runs forward and backward through the op.
#[test]
fn bf16_layer_trains_through_the_op() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::BF16, &CPU);
    let layer = DmaAttention::new(DmaAttentionConfig::new(32, 4, 2, 4), vb).unwrap();
    var(&varmap, "A")
        .set(
            &Tensor::new(&[0.5f32, -0.7], &CPU)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        )
        .unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 9, 32), &CPU)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    let y = layer.forward(&x, 0).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    let grads = y
        .to_dtype(DType::F32)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for name in ["A", "dt_proj.weight", "q_proj.weight", "k_norm.weight"] {
        let g = values(grads.get(&var(&varmap, name)).unwrap());
        assert!(
            g.iter().all(|x| x.is_finite()) && g.iter().any(|&x| x != 0.0),
            "{name}"
        );
    }
}

/// Bad configs, inputs and weights are errors that say what is wrong.
#[test]
fn bad_configs_inputs_and_weights_are_errors() {
    let new = |c: DmaAttentionConfig| {
        let varmap = VarMap::new();
        DmaAttention::new(c, VarBuilder::from_varmap(&varmap, DType::F32, &CPU))
    };
    let base = DmaAttentionConfig::new(32, 4, 2, 8);
    let cases = [
        (
            DmaAttentionConfig {
                num_bias_heads: 3,
                ..base.clone()
            },
            "num_bias_heads (3) must equal num_attention_heads (4) or num_key_value_heads (2)",
        ),
        (
            DmaAttentionConfig {
                num_key_value_heads: 3,
                num_bias_heads: 3,
                ..base.clone()
            },
            "must be a multiple of num_key_value_heads (3)",
        ),
        (
            DmaAttentionConfig {
                head_dim: 7,
                ..base.clone()
            },
            "head_dim (7) must be even",
        ),
        (
            DmaAttentionConfig {
                keep_window_size: 0,
                ..base.clone()
            },
            "keep_window_size must be at least 1",
        ),
        (DmaAttentionConfig::new(0, 4, 2, 8), "must be at least 1"),
    ];
    for (config, want) in cases {
        let err = new(config).expect_err(want).to_string();
        assert!(err.contains(want), "expected {want:?}, got {err:?}");
    }

    let layer = new(base.clone()).unwrap();
    assert!(layer
        .forward(&Tensor::zeros((4, 32), DType::F32, &CPU).unwrap(), 0)
        .is_err());
    assert!(layer
        .forward(&Tensor::zeros((1, 4, 31), DType::F32, &CPU).unwrap(), 0)
        .is_err());

    // Weights from a file: a missing tensor and a misshapen one are named.
    let empty = VarBuilder::from_tensors(HashMap::new(), DType::F32, &CPU);
    let err = DmaAttention::new(base.clone(), empty)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot find tensor"), "{err}");
    let varmap = VarMap::new();
    new_from(&varmap, &base);
    let mut tensors: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    tensors.insert(
        "q_proj.weight".into(),
        Tensor::zeros((32, 31), DType::F32, &CPU).unwrap(),
    );
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &CPU);
    let err = DmaAttention::new(base, vb).unwrap_err().to_string();
    assert!(err.contains("q_proj.weight"), "{err}");
}

fn new_from(varmap: &VarMap, config: &DmaAttentionConfig) -> DmaAttention {
    DmaAttention::new(
        config.clone(),
        VarBuilder::from_varmap(varmap, DType::F32, &CPU),
    )
    .unwrap()
}

/// The layer's weights have transformers' names and shapes.
#[test]
fn weight_names_and_shapes_follow_doge() {
    let varmap = VarMap::new();
    let config = DmaAttentionConfig {
        head_dim: 8,
        attention_bias: true,
        ..DmaAttentionConfig::new(32, 4, 2, 8)
    };
    new_from(&varmap, &config);
    let mut got: Vec<(String, Vec<usize>)> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    got.sort();
    let want = [
        ("A", vec![2]),
        ("dt_proj.bias", vec![2]),
        ("dt_proj.weight", vec![2, 16]),
        ("k_norm.weight", vec![8]),
        ("k_proj.bias", vec![16]),
        ("k_proj.weight", vec![16, 32]),
        ("o_proj.bias", vec![32]),
        ("o_proj.weight", vec![32, 32]),
        ("q_norm.weight", vec![8]),
        ("q_proj.bias", vec![32]),
        ("q_proj.weight", vec![32, 32]),
        ("v_proj.bias", vec![16]),
        ("v_proj.weight", vec![16, 32]),
    ];
    let want: Vec<(String, Vec<usize>)> = want
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    assert_eq!(got, want);
    // A starts at zero (a constant bias: sliding window), the norms at one.
    assert_eq!(values(var(&varmap, "A").as_tensor()), vec![0.0, 0.0]);
    assert_eq!(
        values(var(&varmap, "q_norm.weight").as_tensor()),
        vec![1.0; 8]
    );
}
