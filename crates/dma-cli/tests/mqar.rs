//! `dma mqar` through the binary: a tiny run prints its result line and JSON, and sizes or
//! flags that cannot work are one-line errors. (The generator's invariants are unit tests in
//! src/mqar/data.rs.)

mod common;

use common::{dir, error, ok};

const TINY: &[&str] = &[
    "mqar",
    "--seq-len",
    "16",
    "--kv-pairs",
    "2",
    "--d-model",
    "16",
    "--heads",
    "2",
    "--vocab",
    "32",
    "--window",
    "4",
    "--train-examples",
    "16",
    "--test-examples",
    "8",
    "--steps",
    "3",
    "--batch",
    "4",
];

#[test]
fn a_tiny_run_prints_its_result_and_writes_json() {
    let dir = dir("mqar");
    for kind in ["dma", "swa", "mha"] {
        let json = dir.join(format!("{kind}.json"));
        let mut args = TINY.to_vec();
        args.extend(["--attention", kind, "--output", json.to_str().unwrap()]);
        let out = String::from_utf8(ok(&args).stdout).unwrap();
        let line = out.lines().last().unwrap();
        let prefix = format!("mqar attention={kind} seq_len=16 kv_pairs=2 d_model=16 accuracy=");
        assert!(line.starts_with(&prefix), "{line}");
        let acc: f64 = line[prefix.len()..].parse().unwrap();
        assert!((0.0..=1.0).contains(&acc));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(v["attention"], kind);
        assert_eq!(v["steps"], 3);
        assert_eq!(v["window"], 4);
        let a = v["accuracy"].as_f64().unwrap();
        assert!((a - acc).abs() < 1e-3);
    }
}

#[test]
fn sizes_that_do_not_fit_are_one_line_errors() {
    let e = error(&["mqar", "--seq-len", "16", "--kv-pairs", "5"]);
    assert!(e.contains("--kv-pairs 5 does not fit --seq-len 16"), "{e}");
    let e = error(&["mqar", "--vocab", "9", "--kv-pairs", "4"]);
    assert!(e.contains("--kv-pairs 4 does not fit --vocab 9"), "{e}");
    let e = error(&["mqar", "--kv-pairs", "0"]);
    assert!(e.contains("--kv-pairs must be at least 1"), "{e}");
    let e = error(&["mqar", "--heads", "3"]);
    assert!(e.contains("--heads 3"), "{e}");
    let e = error(&["mqar", "--batch", "0"]);
    assert!(e.contains("--batch must be at least 1"), "{e}");
    let e = error(&["mqar", "--power-a", "2"]);
    assert!(e.contains("--power-a"), "{e}");
    // The tests run the binary built without the `cuda` feature.
    let e = error(&["mqar", "--device", "cuda"]);
    assert!(
        e.contains("the cuda device is not built in this binary"),
        "{e}"
    );
}
