//! `dma logits` and `dma generate` end to end on a small random Doge written to a temp dir.

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;

mod common;

use common::{dir, dma, random_model, s};

const CPU: Device = Device::Cpu;

#[test]
fn logits_match_the_library() {
    let d = dir("doge-logits");
    let m = random_model(&d, 50, 64);
    let ids: Vec<i32> = (0..2 * 12).map(|i| (i * 7 + 3) % 50).collect();
    let input = d.join("ids.safetensors");
    let t = Tensor::from_vec(ids.clone(), (2, 12), &CPU).unwrap();
    candle_core::safetensors::save(&HashMap::from([("input_ids", t)]), &input).unwrap();
    let output = d.join("logits.safetensors");
    let out = dma(&[
        "logits",
        "--model",
        s(&d),
        "--input",
        s(&input),
        "--output",
        s(&output),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = candle_core::safetensors::load(&output, &CPU).unwrap()["logits"].clone();
    assert_eq!(
        (got.dims(), got.dtype()),
        (&[2usize, 12, 50][..], DType::F32)
    );
    let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
    let want = m
        .forward(&Tensor::from_vec(ids, (2, 12), &CPU).unwrap())
        .unwrap();
    let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn logits_errors_are_one_clear_line() {
    let d = dir("doge-logits-errors");
    random_model(&d, 50, 64);
    let input = d.join("ids.safetensors");
    let output = d.join("out.safetensors");
    let run = |t: Tensor, name: &str| {
        candle_core::safetensors::save(&HashMap::from([(name, t)]), &input).unwrap();
        let out = dma(&[
            "logits",
            "--model",
            s(&d),
            "--input",
            s(&input),
            "--output",
            s(&output),
        ]);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let ids = |v: Vec<i32>, n| Tensor::from_vec(v, (1, n), &CPU).unwrap();
    assert!(run(ids(vec![1, 50], 2), "input_ids").contains("token id 50"));
    assert!(run(ids(vec![1; 65], 65), "input_ids").contains("max_position_embeddings"));
    assert!(run(ids(vec![1, 2], 2), "tokens").contains("missing tensor `input_ids`"));
    let floats = Tensor::new(&[[1f32, 2.0]], &CPU).unwrap();
    assert!(run(floats, "input_ids").contains("dtype"));
    std::fs::write(d.join("model.safetensors"), b"garbage").unwrap();
    let err = run(ids(vec![1, 2], 2), "input_ids");
    assert!(err.contains("not a valid safetensors file"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn generate_streams_bytes_and_repeats_under_a_seed() {
    let d = dir("doge-generate");
    random_model(&d, 260, 64);
    let run = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            s(&d),
            "--prompt",
            "hello",
            "--max-new-tokens",
            "8",
        ];
        args.extend_from_slice(extra);
        let out = dma(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (a, err) = run(&["--temperature", "1.0", "--top-p", "0.9", "--seed", "3"]);
    assert!(a.starts_with(b"hello"));
    assert!(
        err.contains("UTF-8 bytes") && err.contains("8 generated"),
        "{err}"
    );
    assert_eq!(
        a,
        run(&["--temperature", "1.0", "--top-p", "0.9", "--seed", "3"]).0
    );
    let long = "x".repeat(65);
    let out = dma(&["generate", "--model", s(&d), "--prompt", &long]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_position_embeddings (64)"));
}

/// A word-level tokenizer.json: ids 0..=3 for "[UNK]", "a", "b", "c", split on whitespace.
const TOKENIZER: &str = r#"{
  "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
  "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
  "decoder": null,
  "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "a": 1, "b": 2, "c": 3},
            "unk_token": "[UNK]"}
}"#;

#[test]
fn generate_uses_tokenizer_json() {
    let d = dir("doge-tokenizer");
    random_model(&d, 50, 64);
    std::fs::write(d.join("tokenizer.json"), TOKENIZER).unwrap();
    let out = dma(&[
        "generate",
        "--model",
        s(&d),
        "--prompt",
        "a b c",
        "--max-new-tokens",
        "5",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("3 prompt tokens, 5 generated"), "{err}");
    std::fs::write(d.join("tokenizer.json"), "{ broken").unwrap();
    let out = dma(&["generate", "--model", s(&d), "--prompt", "a"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokenizer"));
}
