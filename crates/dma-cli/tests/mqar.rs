//! `dma mqar` through the binary: a tiny run prints its result line and JSON, and sizes or
//! flags that cannot work are one-line errors. (The generator's invariants are unit tests in
//! src/mqar/data.rs.)

use std::path::PathBuf;
use std::process::{Command, Output};

fn dma(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dma"))
        .arg("mqar")
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The error a run fails with: exit code 1 and one `error:` line.
fn error(args: &[&str]) -> String {
    let o = dma(args);
    assert!(!o.status.success(), "{args:?} should fail");
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got {err}");
    assert!(lines[0].starts_with("error:"), "{err}");
    err
}

const TINY: &[&str] = &[
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
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dma-cli-mqar");
    std::fs::create_dir_all(&dir).unwrap();
    for kind in ["dma", "swa", "mha"] {
        let json = dir.join(format!("{kind}.json"));
        let mut args = TINY.to_vec();
        args.extend(["--attention", kind, "--output", json.to_str().unwrap()]);
        let o = dma(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = String::from_utf8(o.stdout).unwrap();
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
    let e = error(&["--seq-len", "16", "--kv-pairs", "5"]);
    assert!(e.contains("--kv-pairs 5 does not fit --seq-len 16"), "{e}");
    let e = error(&["--vocab", "9", "--kv-pairs", "4"]);
    assert!(e.contains("--kv-pairs 4 does not fit --vocab 9"), "{e}");
    let e = error(&["--kv-pairs", "0"]);
    assert!(e.contains("--kv-pairs must be at least 1"), "{e}");
    let e = error(&["--heads", "3"]);
    assert!(e.contains("--heads 3"), "{e}");
    let e = error(&["--batch", "0"]);
    assert!(e.contains("--batch must be at least 1"), "{e}");
    let e = error(&["--power-a", "2"]);
    assert!(e.contains("--power-a"), "{e}");
    // The tests run the binary built without the `cuda` feature.
    let e = error(&["--device", "cuda"]);
    assert!(
        e.contains("the cuda device is not built in this binary"),
        "{e}"
    );
}
