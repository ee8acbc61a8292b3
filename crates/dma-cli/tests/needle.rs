//! `dma needle`: the generator's invariants (src/needle/data.rs compiled here on its own, with
//! the mqar file it takes `Example` from), and a tiny run through the binary that writes its
//! table, JSON and PNG heat map (and `dma plot --needle` draws the same PNG from the JSON).
//! Accuracy values and timings are not checked.

#[path = "../src/mqar"]
mod mqar {
    #[allow(dead_code)]
    #[path = "data.rs"]
    pub mod data;
}

#[allow(dead_code)]
#[path = "../src/needle/data.rs"]
mod needle_data;

mod common;

use common::{dir, error, ok};
use mqar::data::IGNORE;
use needle_data::*;

fn check(h: &Haystack, len: usize) {
    let e = &h.example;
    assert_eq!(e.inputs.len(), len, "length");
    assert_eq!(e.labels.len(), len);
    assert!(e.inputs.iter().all(|&t| (t as usize) < vocab()));
    let text = decode(&e.inputs);
    assert_eq!(encode(&text), e.inputs);
    assert!(text.ends_with(&question(&h.key)), "{text}");
    assert!(text[h.needle_at..].starts_with(&needle(&h.key)), "{text}");
    assert_eq!(text.matches(&needle(&h.key)).count(), 1, "{text}");
    // At the requested depth within one sentence, at a sentence boundary.
    let target = h.depth * h.filler_len as f64;
    assert!(
        (h.needle_at as f64 - target).abs() <= max_sentence() as f64,
        "needle at {} for depth {} of {} filler characters",
        h.needle_at,
        h.depth,
        h.filler_len
    );
    assert!(
        // (the end of the filler, cut anywhere, counts as a boundary: depth 1 is right before
        // the question)
        h.needle_at == 0 || h.needle_at == h.filler_len || text[..h.needle_at].ends_with(". "),
        "{text}"
    );
    assert_eq!(h.filler_len + min_len(), len);
    // Labels only on the positions that predict the five answer digits.
    let labelled: Vec<usize> = (0..len).filter(|&p| e.labels[p] != IGNORE).collect();
    assert_eq!(labelled, (len - 6..len - 1).collect::<Vec<_>>());
    for p in labelled {
        assert_eq!(e.labels[p], i64::from(e.inputs[p + 1]));
    }
    assert_eq!(decode(&e.inputs[len - 5..]), h.key);
    assert_eq!(h.key.len(), 5);
    assert!(h.key.chars().all(|c| c.is_ascii_digit()));
    assert!(h.key.parse::<u32>().unwrap() >= 10_000, "{}", h.key);
}

#[test]
fn examples_keep_the_invariants() {
    let seed: u64 = rand::random();
    for len in [min_len(), min_len() + 1, 128, 201, 1000] {
        for d in [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0] {
            for h in generate(len, Depth::At(d), 5, seed).unwrap() {
                assert_eq!(h.depth, d);
                check(&h, len);
            }
        }
        for h in generate(len, Depth::Uniform, 50, seed).unwrap() {
            check(&h, len);
        }
    }
}

#[test]
fn depths_zero_and_one_are_the_ends_and_the_middle_is_the_middle() {
    let h = haystack(400, 0.0, 71432).unwrap();
    assert_eq!(h.needle_at, 0);
    assert!(decode(&h.example.inputs).starts_with("The pass key is 71432. Remember it. "));
    let h = haystack(400, 1.0, 71432).unwrap();
    assert_eq!(h.needle_at, h.filler_len);
    assert!(decode(&h.example.inputs).ends_with(
        "The pass key is 71432. Remember it. 71432 is the pass key. \
         What is the pass key? The pass key is 71432"
    ));
    let h = haystack(1102, 0.5, 71432).unwrap();
    assert!((h.needle_at as i64 - 500).abs() <= 11, "{}", h.needle_at);
    let h = haystack(400, 0.5, 7).unwrap();
    assert_eq!(h.key, "00007");
}

#[test]
fn a_seed_fixes_the_examples_and_seeds_differ() {
    let a = generate(300, Depth::Uniform, 20, 7).unwrap();
    assert_eq!(a, generate(300, Depth::Uniform, 20, 7).unwrap());
    assert_ne!(a, generate(300, Depth::Uniform, 20, 8).unwrap());
    let depths: Vec<f64> = a.iter().map(|h| h.depth).collect();
    assert!(depths.iter().any(|&d| d < 0.5) && depths.iter().any(|&d| d > 0.5));
}

#[test]
fn short_lengths_and_bad_depths_are_errors() {
    assert_eq!(min_len(), 102);
    assert_eq!(
        haystack(101, 0.5, 1),
        Err(NeedleError::TooShort { len: 101, min: 102 })
    );
    assert_eq!(haystack(200, 1.5, 1), Err(NeedleError::Depth(1.5)));
    assert!(haystack(200, f64::NAN, 1).is_err());
    assert_eq!(vocab(), 68);
}

const TINY: &[&str] = &[
    "needle",
    "--seq-len",
    "110",
    "--eval-lengths",
    "104,110,220",
    "--depths",
    "0,0.5,1",
    "--eval-examples",
    "3",
    "--d-model",
    "16",
    "--heads",
    "2",
    "--window",
    "8",
    "--train-examples",
    "8",
    "--steps",
    "2",
    "--batch",
    "4",
    "--seed",
    "5",
];

#[test]
fn a_tiny_run_writes_its_table_json_and_heat_map() {
    let dir = dir("needle");
    for kind in ["dma", "swa", "mha"] {
        let json = dir.join(format!("{kind}.json"));
        let png = dir.join(format!("{kind}.png"));
        let _ = std::fs::remove_file(&json);
        let _ = std::fs::remove_file(&png);
        let mut args = TINY.to_vec();
        args.extend([
            "--attention",
            kind,
            "--json",
            json.to_str().unwrap(),
            "--heatmap",
            png.to_str().unwrap(),
        ]);
        let out = String::from_utf8(ok(&args).stdout).unwrap();
        assert!(out.contains(&format!("needle: {kind}")), "{out}");
        assert_eq!(
            out.lines().filter(|l| l.contains("0.50 ")).count(),
            1,
            "{out}"
        );

        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(v["task"], "needle");
        assert_eq!(v["attention"], kind);
        assert_eq!(v["seq_len"], 110);
        assert_eq!(v["seed"], 5);
        assert_eq!(v["window"], 8);
        assert_eq!(v["steps"], 2);
        assert_eq!(v["eval_lengths"], serde_json::json!([104, 110, 220]));
        assert_eq!(v["depths"], serde_json::json!([0.0, 0.5, 1.0]));
        let cells = v["cells"].as_array().unwrap();
        assert_eq!(cells.len(), 9);
        let mut seen = Vec::new();
        for c in cells {
            let (n, d) = (c["length"].as_u64().unwrap(), c["depth"].as_f64().unwrap());
            seen.push((n, (d * 100.0) as u64));
            assert_eq!(c["examples"], 3);
            let exact = c["exact"].as_u64().unwrap();
            assert!(exact <= 3);
            let acc = c["accuracy"].as_f64().unwrap();
            assert!((acc - exact as f64 / 3.0).abs() < 1e-9);
            let digits = c["digit_accuracy"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&digits) && digits >= acc);
        }
        seen.sort();
        let want: Vec<(u64, u64)> = [104, 110, 220]
            .iter()
            .flat_map(|&n| [(n, 0), (n, 50), (n, 100)])
            .collect();
        assert_eq!(seen, want);

        let img = image::open(&png).unwrap().to_rgb8();
        assert!(img.width() >= 640 && img.height() >= 480);
        let distinct: std::collections::HashSet<_> = img.pixels().map(|p| p.0).collect();
        assert!(distinct.len() > 10, "the picture is nearly blank");

        // `dma plot --needle` draws the same picture again from the JSON alone.
        let again = dir.join("again");
        ok(&[
            "plot",
            "--needle",
            json.to_str().unwrap(),
            "--out-dir",
            again.to_str().unwrap(),
        ]);
        let redrawn = std::fs::read(again.join(format!("{kind}.png"))).unwrap();
        assert!(
            redrawn == std::fs::read(&png).unwrap(),
            "{kind}: the redrawn heat map differs"
        );
    }
}

#[test]
fn plot_needle_names_a_file_that_is_not_a_needle_result() {
    let dir = dir("needle-plot");
    let bad = dir.join("mqar.json");
    std::fs::write(&bad, r#"{"task": "mqar", "accuracy": 0.5}"#).unwrap();
    let e = error(&[
        "plot",
        "--needle",
        bad.to_str().unwrap(),
        "--out-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(e.contains("mqar.json") && e.contains("dma needle"), "{e}");
}

#[test]
fn settings_that_cannot_work_are_one_line_errors() {
    let e = error(&["needle", "--seq-len", "100"]);
    assert!(e.contains("--seq-len 100 is too short"), "{e}");
    let e = error(&["needle", "--eval-lengths", "64,128"]);
    assert!(e.contains("--eval-lengths 64 is too short"), "{e}");
    let e = error(&["needle", "--depths", "0,1.5"]);
    assert!(e.contains("--depths 1.5"), "{e}");
    let e = error(&["needle", "--heads", "3"]);
    assert!(e.contains("--heads 3"), "{e}");
    let e = error(&["needle", "--eval-examples", "0"]);
    assert!(e.contains("--eval-examples must be at least 1"), "{e}");
    // The tests run the binary built without the `cuda` feature; the head size is checked first.
    let e = error(&[
        "needle",
        "--device",
        "cuda",
        "--d-model",
        "64",
        "--heads",
        "4",
    ]);
    assert!(e.contains("head size"), "{e}");
}

#[test]
fn epochs_default_to_two_here_and_four_in_mqar() {
    for (sub, default) in [("needle", "2"), ("mqar", "4")] {
        let help = String::from_utf8(ok(&[sub, "--help"]).stdout).unwrap();
        let epochs = &help[help.find("--epochs").unwrap()..];
        let line = epochs.lines().find(|l| l.contains("[default:")).unwrap();
        assert!(
            line.contains(&format!("[default: {default}]")),
            "{sub}: {line}"
        );
    }
}

/// `--train-lengths` trains on several lengths in mixed batches; the JSON and the table say so,
/// and lengths under the needle's minimum are refused.
#[test]
fn mixed_training_lengths_run_and_are_recorded() {
    let dir = dir("needle-mixed");
    let json = dir.join("mixed.json");
    let _ = std::fs::remove_file(&json);
    let mut args = TINY.to_vec();
    args.extend([
        "--train-lengths",
        "104,130",
        "--json",
        json.to_str().unwrap(),
    ]);
    let out = String::from_utf8(ok(&args).stdout).unwrap();
    assert!(out.contains("trained at lengths 104, 130"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["train_lengths"], serde_json::json!([104, 130]));
    let mut short = TINY.to_vec();
    short.extend(["--train-lengths", "110,90"]);
    assert!(error(&short).contains("--train-lengths 90 is too short"));
}
