//! `dma plot` on synthetic records and on the output of `dma bench --json`: the expected PNG
//! files exist, decode, have the documented size and are not blank. (Nothing here is timing.)

use std::path::Path;

mod common;

use common::{dir, dma, error, ok, s};

/// Decodes `path` and checks its size and that it holds more than a few colours (lines, text).
fn check_png(path: &Path, size: (u32, u32)) {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    assert_eq!(img.dimensions(), size, "{}", path.display());
    let mut colours: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    colours.sort();
    colours.dedup();
    assert!(
        colours.len() > 10,
        "{}: {} colours",
        path.display(),
        colours.len()
    );
}

#[test]
fn charts_from_synthetic_records() {
    let d = dir("plot-synthetic");
    let mut lines = String::from("# forward times of three implementations, decode of two\n");
    for (imp, per_n) in [("dma-cuda", 0.5), ("sdpa-cudnn", 0.1), ("sdpa-flash", 0.08)] {
        for n in [1024usize, 2048, 4096, 8192] {
            let t = per_n * n as f64 / 1024.0
                * if imp == "dma-cuda" {
                    1.0
                } else {
                    (n / 1024) as f64
                };
            lines += &format!(
                "{{\"kind\":\"forward\",\"impl\":\"{imp}\",\"n\":{n},\"time_ms\":{t},\"device\":\"H100\",\"dtype\":\"bf16\",\"window\":256}}\n"
            );
        }
    }
    for (imp, t) in [("dma-cuda", 0.05), ("sdpa-flash", 0.02)] {
        for ctx in [4096usize, 65536] {
            let t = t * (ctx as f64 / 4096.0).sqrt();
            lines += &format!(
                "{{\"kind\":\"decode\",\"impl\":\"{imp}\",\"n\":{ctx},\"time_ms\":{t}}}\n"
            );
        }
    }
    let input = d.join("results.jsonl");
    std::fs::write(&input, lines).unwrap();
    let out_dir = d.join("charts");
    let out = ok(&["plot", "--input", s(&input), "--out-dir", s(&out_dir)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in [
        "time-forward",
        "speedup-forward",
        "time-decode",
        "speedup-decode",
    ] {
        let path = out_dir.join(format!("{name}.png"));
        assert!(stdout.contains(s(&path)), "{stdout}");
        check_png(&path, (960, 640));
    }
    // A baseline by name; a missing one only skips the speedup charts.
    let out_dir = d.join("baseline");
    ok(&[
        "plot",
        "--input",
        s(&input),
        "--out-dir",
        s(&out_dir),
        "--baseline",
        "sdpa-flash",
    ]);
    check_png(&out_dir.join("speedup-forward.png"), (960, 640));
}

#[test]
fn bench_json_feeds_plot() {
    let d = dir("plot-bench");
    let json = d.join("cpu.jsonl");
    let args = [
        "bench",
        "--sizes",
        "64,128",
        "--window",
        "16",
        "--head-dim",
        "16",
        "--heads",
        "1",
    ];
    let mut all = args.to_vec();
    all.extend(["--reps", "1", "--backward", "--decode", "--json", s(&json)]);
    ok(&all);
    let text = std::fs::read_to_string(&json).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 6, "{text}");
    for kind in ["forward", "forward_backward", "decode"] {
        let of_kind: Vec<_> = records.iter().filter(|r| r["kind"] == kind).collect();
        assert_eq!(of_kind.len(), 2, "{kind}: {text}");
        for r in of_kind {
            assert_eq!(r["impl"], "dma-cpu");
            assert_eq!(r["window"], 16);
            assert!(r["time_ms"].as_f64().unwrap() > 0.0);
        }
    }
    let out_dir = d.join("charts");
    ok(&["plot", "--input", s(&json), "--out-dir", s(&out_dir)]);
    for name in ["time-forward", "time-forward_backward", "time-decode"] {
        check_png(&out_dir.join(format!("{name}.png")), (960, 640));
    }
    // One implementation: no speedup chart.
    assert!(!out_dir.join("speedup-forward.png").exists());
}

#[test]
fn bad_records_are_one_line_errors() {
    let d = dir("plot-bad");
    let input = d.join("bad.jsonl");
    std::fs::write(&input, "{\"kind\":\"forward\",\"impl\":\"x\",\"n\":4}\n").unwrap();
    let out = dma(&["plot", "--input", s(&input), "--out-dir", s(&d)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 1") && err.contains("time_ms"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn curves_from_synthetic_training_logs() {
    let d = dir("plot-curves");
    let mut inputs = Vec::new();
    for (kind, rate) in [("dma", 0.010), ("mha", 0.012)] {
        let mut text = String::new();
        for step in 1..=120u32 {
            let loss = 2.0 + 6.0 * (-rate * step as f64).exp() + 0.1 * ((step % 7) as f64 / 7.0);
            let eval = match step % 30 {
                0 => format!("{}", loss - 0.05),
                _ => "null".into(),
            };
            text += &format!(
                "{{\"eval_loss\":{eval},\"grad_norm\":1.0,\"loss\":{loss},\"lr\":0.001,\"step\":{step},\"tokens_per_s\":1000.0}}\n"
            );
        }
        let path = d.join(format!("{kind}.jsonl"));
        std::fs::write(&path, text).unwrap();
        inputs.push(path);
    }
    let out_dir = d.join("charts");
    let out = ok(&[
        "plot",
        "--curves",
        s(&inputs[0]),
        s(&inputs[1]),
        "--out-dir",
        s(&out_dir),
        "--smooth",
        "10",
    ]);
    let path = out_dir.join("loss.png");
    assert!(String::from_utf8_lossy(&out.stdout).contains(s(&path)));
    check_png(&path, (960, 640));
    // Only the curves were asked for: no benchmark charts.
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 1);
}

#[test]
fn mqar_grid_from_synthetic_records() {
    let d = dir("plot-mqar");
    let record = |attention: &str, seq_len: usize, d_model: usize, steps: u32, accuracy: f64| {
        format!(
            "{{  \"task\": \"mqar\",  \"attention\": \"{attention}\",  \"seq_len\": {seq_len},  \"kv_pairs\": 64,  \"d_model\": {d_model},  \"steps\": {steps},  \"batch\": 32,  \"lr\": 0.001,  \"seed\": 0,  \"accuracy\": {accuracy}}}\n"
        )
    };
    let input = d.join("mqar.jsonl");
    let text = record("dma", 512, 128, 100, 0.9)
        + &record("swa", 512, 128, 100, 0.1)
        + &record("dma", 1024, 64, 100, 0.5);
    std::fs::write(&input, text).unwrap();
    let out_dir = d.join("charts");
    let out = ok(&["plot", "--mqar", s(&input), "--out-dir", s(&out_dir)]);
    let path = out_dir.join("mqar-grid.png");
    assert!(String::from_utf8_lossy(&out.stdout).contains(s(&path)));
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(bytes.len() > 10_000, "{} bytes", bytes.len());
    // Only the grid was asked for.
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 1);

    // A record without its accuracy: one error line naming the file and the line.
    let bad = d.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"task\":\"mqar\",\"attention\":\"dma\",\"seq_len\":512}\n",
    )
    .unwrap();
    let err = error(&["plot", "--mqar", s(&bad), "--out-dir", s(&out_dir)]);
    assert!(err.contains(s(&bad)) && err.contains("line 1"), "{err}");
}
