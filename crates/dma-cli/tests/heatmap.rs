//! `dma heatmap` end to end on a small random Doge with byte-level tokens: the PNG exists,
//! decodes, has the size the command reports and shows kept keys; long prompts and bad layers
//! are one-line errors.

use std::path::PathBuf;

mod common;

use common::{dir, dma, random_model, s};

fn model_dir(name: &str) -> PathBuf {
    let d = dir(&format!("heatmap-{name}"));
    // 256 tokens: no tokenizer.json needed (UTF-8 bytes are the ids).
    random_model(&d, 256, 1024);
    d
}

#[test]
fn heatmap_png_of_a_layer() {
    let d = model_dir("ok");
    let png = d.join("layer1.png");
    let out = dma(&[
        "heatmap",
        "--model",
        s(&d),
        "--prompt",
        "hello, dynamic mask!",
        "--layer",
        "1",
        "--out",
        s(&png),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "wrote FILE (WxH px): ..."
    let size = stdout.split('(').nth(1).unwrap().split(' ').next().unwrap();
    let (w, h) = size.split_once('x').unwrap();
    let (w, h): (u32, u32) = (w.parse().unwrap(), h.parse().unwrap());
    assert!(stdout.contains("20 tokens, 4 heads, window 4"), "{stdout}");
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (w, h));
    // Four panels of 20 x 20 cells of 19 px side, and more.
    assert!(w >= 4 * 20 * 19 && h >= 2 * 20 * 19, "{w}x{h}");
    let kept = img.pixels().filter(|p| p.0 == [31, 78, 160]).count();
    // 4 heads, each row keeping min(4, i + 1) keys: 74 cells of 19 x 19 px.
    assert!(kept >= 4 * 74 * 17 * 17, "{kept} kept-key pixels");
    let heavy = img.pixels().filter(|p| p.0 == [150, 0, 30]).count();
    assert!(heavy > 0, "no full-weight cell");
}

#[test]
fn long_prompts_and_bad_layers_are_errors() {
    let d = model_dir("errors");
    let png = d.join("x.png");
    let long = "a".repeat(513);
    let out = dma(&[
        "heatmap",
        "--model",
        s(&d),
        "--prompt",
        &long,
        "--out",
        s(&png),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("513 tokens") && err.contains("512"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let out = dma(&[
        "heatmap",
        "--model",
        s(&d),
        "--prompt",
        "abc",
        "--layer",
        "2",
        "--out",
        s(&png),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--layer 2") && err.contains("2 layers"),
        "{err}"
    );
    assert!(!png.exists());
}
