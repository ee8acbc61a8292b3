//! `dma train` end to end: a byte-level Doge trains on a text file, writes checkpoints, resumes
//! from them, and a checkpoint is a model directory that `dma generate` runs; `--a-std` draws
//! a fresh model's A.

mod common;

use common::{dir, dma, s};
use std::path::Path;
use std::process::Output;

const CONFIG: &str = r#"{"vocab_size": 256, "hidden_size": 32, "intermediate_size": 64,
  "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
  "keep_window_size": 8, "max_position_embeddings": 64}"#;

/// `dma train` on `data` from `init` into `out`, batches of 2 windows of 16 tokens, one warmup
/// step, and `extra` flags.
fn tiny_train(data: &Path, init: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--data",
        s(data),
        "--init",
        s(init),
        "--out",
        s(out),
        "--batch",
        "2",
        "--seq-len",
        "16",
        "--warmup",
        "1",
    ];
    args.extend_from_slice(extra);
    dma(&args)
}

#[test]
fn trains_checkpoints_resumes_and_generates() {
    let d = dir("train-run");
    std::fs::write(d.join("config.json"), CONFIG).unwrap();
    std::fs::write(
        d.join("corpus.txt"),
        "the quick brown fox jumps over the lazy dog. ".repeat(40),
    )
    .unwrap();
    let out = d.join("ckpt");
    let train = |steps: &str| {
        let o = tiny_train(
            &d.join("corpus.txt"),
            &d.join("config.json"),
            &out,
            &[
                "--steps",
                steps,
                "--eval-every",
                "3",
                "--save-every",
                "3",
                "--lr",
                "3e-3",
            ],
        );
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{err}");
        err
    };
    let err = train("6");
    assert!(err.contains("perplexity"), "{err}");
    assert!(out.join("step-00000003/model.safetensors").exists());
    assert_eq!(
        std::fs::read_to_string(out.join("latest")).unwrap(),
        "step-00000006"
    );
    let err = train("8");
    assert!(
        err.contains("resuming from") && err.contains("step-00000006"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("latest")).unwrap(),
        "step-00000008"
    );
    let o = dma(&[
        "generate",
        "--model",
        s(&out.join("step-00000008")),
        "--prompt",
        "the ",
        "--max-new-tokens",
        "5",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn empty_corpus_is_an_error() {
    let d = dir("train-empty");
    std::fs::write(d.join("config.json"), CONFIG).unwrap();
    std::fs::write(d.join("corpus.txt"), "").unwrap();
    let o = dma(&[
        "train",
        "--data",
        s(&d.join("corpus.txt")),
        "--init",
        s(&d.join("config.json")),
        "--out",
        s(&d.join("ckpt")),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("corpus is empty"));
}

#[test]
fn trains_a_bpe_from_the_corpus() {
    let d = dir("train-bpe");
    std::fs::write(
        d.join("config.json"),
        CONFIG.replace("\"vocab_size\": 256", "\"vocab_size\": 300"),
    )
    .unwrap();
    std::fs::write(
        d.join("corpus.txt"),
        "the quick brown fox jumps over the lazy dog.\n".repeat(60),
    )
    .unwrap();
    let out = d.join("ckpt");
    let o = dma(&[
        "train",
        "--data",
        s(&d.join("corpus.txt")),
        "--init",
        s(&d.join("config.json")),
        "--out",
        s(&out),
        "--steps",
        "2",
        "--batch",
        "1",
        "--seq-len",
        "8",
        "--warmup",
        "1",
        "--train-tokenizer",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("byte-level BPE of 300"), "{err}");
    let tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer.json")).unwrap())
            .unwrap();
    assert_eq!(tok["model"]["type"], "BPE");
    assert!(tok["model"]["vocab"].as_object().unwrap().len() > 257);
    assert!(out.join("step-00000002/tokenizer.json").exists());
    let o = dma(&[
        "generate",
        "--model",
        s(&out.join("step-00000002")),
        "--prompt",
        "the quick",
        "--max-new-tokens",
        "3",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("the quick"));
}

#[test]
fn held_out_files_and_the_step_log() {
    let d = dir("train-log");
    std::fs::write(d.join("config.json"), CONFIG).unwrap();
    std::fs::write(d.join("train.txt"), "abcabcabd ".repeat(30)).unwrap();
    std::fs::write(d.join("valid.txt"), "xyzxyz ".repeat(10)).unwrap();
    let log = d.join("log.jsonl");
    let o = tiny_train(
        &d.join("train.txt"),
        &d.join("config.json"),
        &d.join("ckpt"),
        &[
            "--eval-data",
            s(&d.join("valid.txt")),
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--eval-batches",
            "2",
            "--log",
            s(&log),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    // Every byte of the validation file is a token; none of the training file is held out.
    assert!(err.contains("300 training tokens, 70 held out"), "{err}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    for (i, line) in lines.iter().enumerate() {
        let step = i + 1;
        assert_eq!(line["step"], step);
        assert!(line["loss"].as_f64().unwrap().is_finite());
        assert_eq!(line["eval_loss"].is_f64(), step % 2 == 0, "{line}");
    }
}

/// The largest |A| over the layers of a checkpoint's model.
fn largest_a(model: &Path) -> f32 {
    let tensors =
        candle_core::safetensors::load(model.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let a: Vec<f32> = tensors
        .iter()
        .filter(|(name, _)| name.ends_with(".A"))
        .flat_map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect();
    assert!(!a.is_empty(), "no A in the checkpoint");
    a.iter().fold(0.0, |m, x| m.max(x.abs()))
}

#[test]
fn a_std_draws_a_fresh_models_a_and_bad_values_are_errors() {
    let d = dir("train-a-std");
    std::fs::write(d.join("config.json"), CONFIG).unwrap();
    std::fs::write(d.join("corpus.txt"), "abcdefgh ".repeat(40)).unwrap();
    let train = |out: &str, a_std: &str, init: &Path| {
        tiny_train(
            &d.join("corpus.txt"),
            init,
            &d.join(out),
            &[
                "--steps",
                "1",
                "--save-every",
                "1",
                "--lr",
                "1e-6",
                "--a-std",
                a_std,
            ],
        )
    };
    // One step at lr 1e-6 leaves A where it started: 0 for Doge's init, ~N(0, 1) drawn.
    let config = d.join("config.json");
    for (out, a_std) in [("zero", "0"), ("drawn", "1")] {
        let _ = std::fs::remove_dir_all(d.join(out));
        let o = train(out, a_std, &config);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert!(largest_a(&d.join("zero/step-00000001")) < 1e-3);
    assert!(largest_a(&d.join("drawn/step-00000001")) > 0.1);

    for bad in ["-1", "NaN"] {
        let o = train("bad", bad, &config);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("--a-std"), "{err}");
    }
    let o = train("bad", "1", &d.join("drawn/step-00000001"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("fresh model"), "{err}");
}
