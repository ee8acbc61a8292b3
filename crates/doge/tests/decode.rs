//! Incremental decoding through the KV cache (prefill, then one token at a time, queries
//! aligned to the end of the keys) gives the logits of a full forward over the same tokens, for
//! every attention kind, with a window smaller than the sequence; generation repeats under a
//! seed.

mod common;

use candle_core::{IndexOp, Tensor};
use common::*;
use doge::{
    generate, AttentionKind, DogeForCausalLM, Error, GenerateParams, ModelOptions, SamplingParams,
};

fn decode_in_steps(model: &DogeForCausalLM, ids: &Tensor, steps: &[usize]) -> Tensor {
    let mut cache = model.new_cache();
    let mut parts = Vec::new();
    let mut at = 0;
    for &len in steps {
        parts.push(
            model
                .forward_cached(&ids.narrow(1, at, len).unwrap(), &mut cache)
                .unwrap(),
        );
        at += len;
        assert_eq!(cache.len(), at);
    }
    Tensor::cat(&parts, 1).unwrap()
}

#[test]
fn incremental_decoding_equals_full_forward() {
    for kind in [AttentionKind::Dma, AttentionKind::Swa, AttentionKind::Mha] {
        let config = small_config(); // keep_window_size 5
        let model = random_model(
            config.clone(),
            ModelOptions {
                kind,
                ..Default::default()
            },
        );
        let n = 24;
        let ids = random_ids(2, n, config.vocab_size);
        let full = model.forward(&ids).unwrap();
        // Prefill 7, then one token at a time.
        let mut steps = vec![7];
        steps.extend(std::iter::repeat_n(1, n - 7));
        let stepwise = decode_in_steps(&model, &ids, &steps);
        let err = rel_err(&stepwise, &full);
        eprintln!("{kind:?}: one at a time: {err}");
        assert!(err < 1e-5, "{kind:?}: one at a time: {err}");
        // Uneven chunks.
        let chunks = decode_in_steps(&model, &ids, &[1, 4, 6, 2, 11]);
        let err = rel_err(&chunks, &full);
        eprintln!("{kind:?}: chunks: {err}");
        assert!(err < 1e-5, "{kind:?}: chunks: {err}");
    }
}

#[test]
fn forward_at_gives_the_full_forwards_rows() {
    let config = small_config();
    let model = random_model(config.clone(), ModelOptions::default());
    let (b, n) = (3, 16);
    let ids = random_ids(b, n, config.vocab_size);
    let full = model.forward(&ids).unwrap();
    let full = full.reshape((b * n, config.vocab_size)).unwrap();
    // Unsorted, repeated, first and last positions.
    let picks: Vec<u32> = vec![47, 0, 5, 16, 5, 33];
    let positions = Tensor::new(picks.as_slice(), &candle_core::Device::Cpu).unwrap();
    let at = model.forward_at(&ids, &positions).unwrap();
    assert_eq!(at.dims(), &[picks.len(), config.vocab_size]);
    let want = full.index_select(&positions, 0).unwrap();
    let err = rel_err(&at, &want);
    assert!(err < 1e-6, "forward_at vs forward rows: {err}");
    // A position past B * N is an error, not a panic.
    let past = Tensor::new(&[(b * n) as u32], &candle_core::Device::Cpu).unwrap();
    assert!(model.forward_at(&ids, &past).is_err());
}

#[test]
fn the_window_matters() {
    // With w < N, dma, swa and mha give different logits on the same weights.
    let config = small_config();
    let dma = random_model(config.clone(), ModelOptions::default());
    let dir = tempfile::tempdir().unwrap();
    dma.save(dir.path()).unwrap();
    let ids = random_ids(1, 20, config.vocab_size);
    let logits = |kind| {
        let m = DogeForCausalLM::load(
            dir.path(),
            ModelOptions {
                kind,
                ..Default::default()
            },
            &CPU,
        )
        .unwrap();
        m.forward(&ids).unwrap()
    };
    let (a, s, m) = (
        logits(AttentionKind::Dma),
        logits(AttentionKind::Swa),
        logits(AttentionKind::Mha),
    );
    assert!(rel_err(&a, &s) > 1e-3 && rel_err(&a, &m) > 1e-3 && rel_err(&s, &m) > 1e-3);
    // Within the window swa and mha agree (dma differs there too: it adds the bias).
    let head = |t: &Tensor| t.i((.., ..5, ..)).unwrap();
    assert!(rel_err(&head(&s), &head(&m)) < 1e-5);
}

fn run_generate(model: &DogeForCausalLM, sampling: SamplingParams, n: usize) -> Vec<u32> {
    let params = GenerateParams {
        max_new_tokens: n,
        sampling,
        stop_tokens: vec![],
    };
    let mut streamed = Vec::new();
    let out = generate(model, &[3, 1, 4, 1, 5], &params, |t| {
        streamed.push(t);
        Ok(())
    })
    .unwrap();
    assert_eq!(out, streamed);
    out
}

#[test]
fn generation_is_deterministic_under_a_seed() {
    let model = random_model(small_config(), ModelOptions::default());
    let sampling = |seed| SamplingParams {
        temperature: 1.5,
        top_p: 0.9,
        seed,
    };
    let a = run_generate(&model, sampling(7), 20);
    assert_eq!(a.len(), 20);
    assert_eq!(a, run_generate(&model, sampling(7), 20));
    let others: Vec<Vec<u32>> = (8..12)
        .map(|s| run_generate(&model, sampling(s), 20))
        .collect();
    assert!(others.iter().any(|o| *o != a), "seeds make no difference");
}

#[test]
fn greedy_generation_follows_the_full_forward_argmax() {
    let model = random_model(small_config(), ModelOptions::default());
    let out = run_generate(&model, SamplingParams::default(), 12);
    let mut seq = vec![3u32, 1, 4, 1, 5];
    for &t in &out {
        let ids = Tensor::new(seq.as_slice(), &CPU)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = model.forward(&ids).unwrap();
        let last = logits.i((0, seq.len() - 1)).unwrap();
        let best = last.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        assert_eq!(t, best);
        seq.push(t);
    }
}

#[test]
fn generation_stops_at_stop_tokens_and_the_position_limit() {
    let model = random_model(small_config(), ModelOptions::default());
    let first = run_generate(&model, SamplingParams::default(), 1)[0];
    let params = GenerateParams {
        max_new_tokens: 10,
        sampling: SamplingParams::default(),
        stop_tokens: vec![first],
    };
    let out = generate(&model, &[3, 1, 4, 1, 5], &params, |_| Ok(())).unwrap();
    assert_eq!(out, vec![first]);
    // max_position_embeddings is 40: after a 5-token prompt, 35 more fit as inputs, and the
    // logits at the last position give one token more.
    let long = run_generate(&model, SamplingParams::default(), 100);
    assert_eq!(long.len(), 36);
    // A prompt longer than the limit, an empty one, bad sampling parameters: errors.
    let params = GenerateParams {
        max_new_tokens: 1,
        sampling: SamplingParams::default(),
        stop_tokens: vec![],
    };
    let prompt: Vec<u32> = (0..41).collect();
    let err = generate(&model, &prompt, &params, |_| Ok(())).unwrap_err();
    assert!(matches!(err, Error::TooLong { len: 41, max: 40 }), "{err}");
    assert!(matches!(
        generate(&model, &[], &params, |_| Ok(())),
        Err(Error::Input { .. })
    ));
    for (temperature, top_p) in [(-1.0, 1.0), (f64::NAN, 1.0), (1.0, 0.0), (1.0, 1.5)] {
        let params = GenerateParams {
            sampling: SamplingParams {
                temperature,
                top_p,
                seed: 0,
            },
            ..params.clone()
        };
        let err = generate(&model, &[1], &params, |_| Ok(())).unwrap_err();
        assert!(matches!(err, Error::Sampling(_)), "{err}");
    }
}
