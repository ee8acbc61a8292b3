//! Helpers shared by the integration tests: running the `dma` binary, scratch paths under the
//! target's temporary directory and a small random Doge. Each test file names its paths `dma-cli-<its name>-...`,
//! so that test binaries running at once do not share them.

// Each test file uses only some of these.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use doge::{DogeConfig, DogeForCausalLM, ModelOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `dma` binary with `args` and returns what it exited with and wrote.
pub fn dma(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dma"))
        .args(args)
        .output()
        .expect("run dma")
}

/// Runs `dma args`, which must succeed.
pub fn ok(args: &[&str]) -> Output {
    let out = dma(args);
    assert!(out.status.success(), "dma {args:?}: {}", stderr(&out));
    out
}

/// What a run wrote to stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The error `dma args` fails with: a failing exit code and one `error:` line.
pub fn error(args: &[&str]) -> String {
    let o = dma(args);
    assert!(!o.status.success(), "{args:?} should fail");
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got {err}");
    assert!(lines[0].starts_with("error:"), "{err}");
    err
}

/// `dma-cli-<name>` under the target's temporary directory (not created).
pub fn temp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("dma-cli-{name}"))
}

/// An empty directory `dma-cli-<name>` under the target's temporary directory.
pub fn dir(name: &str) -> PathBuf {
    let d = temp(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A path as the `&str` that an argument list takes.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A Doge of `vocab` tokens for up to `positions` positions (width 32, 2 layers, 4 heads, 2 KV
/// heads, window 4) with every weight random (A away from 0), saved in `dir`.
pub fn random_model(dir: &Path, vocab: usize, positions: usize) -> DogeForCausalLM {
    let cpu = Device::Cpu;
    let mut c = DogeConfig::new(vocab, 32, 48, 2, 4, 2);
    c.keep_window_size = 4;
    c.max_position_embeddings = positions;
    let m = DogeForCausalLM::new(c, ModelOptions::default(), &cpu).unwrap();
    for (name, var) in m.vars().data().lock().unwrap().iter() {
        let value = match name.ends_with(".A") {
            true => Tensor::new(&[0.8f32, -0.5], &cpu).unwrap(),
            false => Tensor::randn(0f32, 0.3, var.shape(), &cpu).unwrap(),
        };
        var.set(&value).unwrap();
    }
    m.save(dir).unwrap();
    m
}
