//! `dma op` end to end: random safetensors inputs in, the binary's outputs compared with
//! `dma::cpu` on the same data, and one clean error line for bad inputs.

use dma::{cpu, Heads, Params, Shape};
use half::bf16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

mod common;

use common::{dma, s, temp};

/// A tensor to write: name, dtype, shape, little-endian bytes.
struct Raw(&'static str, Dtype, Vec<usize>, Vec<u8>);

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}
fn bf16_bytes(x: &[bf16]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect()
}
fn i32_bytes(x: &[i32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}
fn f32_from(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
fn bf16_from(b: &[u8]) -> Vec<bf16> {
    b.chunks_exact(2)
        .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])))
        .collect()
}

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn write(name: &str, tensors: &[Raw]) -> PathBuf {
    let path = temp(name);
    let views: Vec<_> = tensors
        .iter()
        .map(|Raw(n, d, s, b)| {
            (
                *n,
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
    path
}

/// Runs `dma op` on `input` and returns the bytes of the output file.
fn op(input: &Path, name: &str, extra: &[&str]) -> Vec<u8> {
    let output = temp(name);
    let mut args = vec![
        "op",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend(extra);
    let r = dma(&args);
    assert!(
        r.status.success(),
        "dma op failed: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    std::fs::read(output).unwrap()
}

fn check<'a>(file: &'a SafeTensors, name: &str, dtype: Dtype, shape: &[usize]) -> &'a [u8] {
    let t = file.tensor(name).unwrap_or_else(|_| panic!("no `{name}`"));
    assert_eq!(t.dtype(), dtype, "{name}");
    assert_eq!(t.shape(), shape, "{name}");
    t.data()
}

#[test]
fn dense_f32_forward_and_backward_match_the_library() {
    let (b, nq, nk, hq, hkv, d) = (2, 5, 7, 4, 2, 8);
    let mut rng = StdRng::seed_from_u64(1);
    let q = random(&mut rng, b * nq * hq * d);
    let k = random(&mut rng, b * nk * hkv * d);
    let v = random(&mut rng, b * nk * hkv * d);
    let bias = random(&mut rng, b * hq * nk);
    let dout = random(&mut rng, q.len());
    let input = write(
        "dense.in.safetensors",
        &[
            Raw("q", Dtype::F32, vec![b, nq, hq, d], f32_bytes(&q)),
            Raw("k", Dtype::F32, vec![b, nk, hkv, d], f32_bytes(&k)),
            Raw("v", Dtype::F32, vec![b, nk, hkv, d], f32_bytes(&v)),
            Raw("bias", Dtype::F32, vec![b, hq, nk], f32_bytes(&bias)),
            Raw("dout", Dtype::F32, vec![b, nq, hq, d], f32_bytes(&dout)),
        ],
    );
    let bytes = op(
        &input,
        "dense.out.safetensors",
        &["--window", "3", "--scale", "0.5"],
    );
    let file = SafeTensors::deserialize(&bytes).unwrap();

    let params = Params::new(3).scale(0.5);
    let shape = Shape::dense(b, nq, nk, Heads::new(hq, hkv).with_bias(hq), d);
    let inputs = cpu::Inputs {
        q: &q,
        k: &k,
        v: &v,
        bias: &bias,
    };
    let fwd = cpu::forward(&params, &shape, &inputs).unwrap();
    let g = cpu::backward(&params, &shape, &inputs, &fwd.out, &fwd.lse, &dout).unwrap();

    let qs = [b, nq, hq, d];
    let ks = [b, nk, hkv, d];
    assert_eq!(f32_from(check(&file, "out", Dtype::F32, &qs)), fwd.out);
    assert_eq!(
        f32_from(check(&file, "lse", Dtype::F32, &[b, hq, nq])),
        fwd.lse
    );
    assert_eq!(f32_from(check(&file, "dq", Dtype::F32, &qs)), g.dq);
    assert_eq!(f32_from(check(&file, "dk", Dtype::F32, &ks)), g.dk);
    assert_eq!(f32_from(check(&file, "dv", Dtype::F32, &ks)), g.dv);
    assert_eq!(
        f32_from(check(&file, "dbias", Dtype::F32, &[b, hq, nk])),
        g.dbias
    );
    assert_eq!(file.len(), 6);
}

#[test]
fn varlen_bf16_forward_matches_the_library() {
    let (cu_q, cu_k) = (vec![0, 3, 3, 8], vec![0, 4, 6, 12]);
    let (tq, tk, hq, hkv, d) = (8, 12, 2, 1, 4);
    let mut rng = StdRng::seed_from_u64(2);
    let mut random_bf16 = |n| -> Vec<bf16> {
        random(&mut rng, n)
            .into_iter()
            .map(bf16::from_f32)
            .collect()
    };
    let (q, k, v) = (
        random_bf16(tq * hq * d),
        random_bf16(tk * hkv * d),
        random_bf16(tk * hkv * d),
    );
    let bias = random(&mut rng, hkv * tk);
    let input = write(
        "varlen.in.safetensors",
        &[
            Raw("q", Dtype::BF16, vec![tq, hq, d], bf16_bytes(&q)),
            Raw("k", Dtype::BF16, vec![tk, hkv, d], bf16_bytes(&k)),
            Raw("v", Dtype::BF16, vec![tk, hkv, d], bf16_bytes(&v)),
            Raw("bias", Dtype::F32, vec![hkv, tk], f32_bytes(&bias)),
            Raw("cu_seqlens_q", Dtype::I32, vec![4], i32_bytes(&cu_q)),
            Raw("cu_seqlens_k", Dtype::I32, vec![4], i32_bytes(&cu_k)),
        ],
    );
    let bytes = op(
        &input,
        "varlen.out.safetensors",
        &["--window", "2", "--no-causal"],
    );
    let file = SafeTensors::deserialize(&bytes).unwrap();

    let params = Params::new(2).causal(false);
    let shape = Shape::varlen(cu_q, cu_k, Heads::new(hq, hkv), d);
    let inputs = cpu::Inputs {
        q: &q,
        k: &k,
        v: &v,
        bias: &bias,
    };
    let fwd = cpu::forward(&params, &shape, &inputs).unwrap();

    assert_eq!(
        bf16_from(check(&file, "out", Dtype::BF16, &[tq, hq, d])),
        fwd.out
    );
    assert_eq!(
        f32_from(check(&file, "lse", Dtype::F32, &[hq, tq])),
        fwd.lse
    );
    assert_eq!(file.len(), 2, "no gradients without dout");
}

/// A small valid dense input, with `edit` applied to the list of tensors.
fn dense_input(name: &str, edit: impl FnOnce(&mut Vec<Raw>)) -> PathBuf {
    let (b, n, h, d) = (1, 4, 2, 4);
    let x = f32_bytes(&vec![0.25; b * n * h * d]);
    let mut tensors = vec![
        Raw("q", Dtype::F32, vec![b, n, h, d], x.clone()),
        Raw("k", Dtype::F32, vec![b, n, h, d], x.clone()),
        Raw("v", Dtype::F32, vec![b, n, h, d], x),
        Raw(
            "bias",
            Dtype::F32,
            vec![b, h, n],
            f32_bytes(&vec![0.0; b * h * n]),
        ),
    ];
    edit(&mut tensors);
    write(name, &tensors)
}

/// Runs `dma op` expecting failure; returns its single stderr line.
fn op_error(input: &str, extra: &[&str]) -> String {
    let output = temp("error.out.safetensors");
    let mut args = vec!["op", "--input", input, "--output", output.to_str().unwrap()];
    args.extend(extra);
    let r = dma(&args);
    let stderr = String::from_utf8(r.stderr).unwrap();
    assert!(!r.status.success(), "expected failure, stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn missing_bias_is_named() {
    let input = dense_input("nobias.safetensors", |t| t.retain(|r| r.0 != "bias"));
    let e = op_error(s(&input), &["--window", "2"]);
    assert!(e.contains("missing tensor `bias`"), "{e}");
}

#[test]
fn q_in_f64_or_i32_is_rejected() {
    for (dtype, size, word) in [(Dtype::F64, 8, "F64"), (Dtype::I32, 4, "I32")] {
        let input = dense_input(&format!("q-{word}.safetensors"), |t| {
            t[0] = Raw("q", dtype, vec![1, 4, 2, 4], vec![0; 32 * size]);
        });
        let e = op_error(s(&input), &["--window", "2"]);
        assert!(e.contains("dtype") && e.contains(word), "{e}");
    }
}

#[test]
fn k_of_another_dtype_is_rejected() {
    let input = dense_input("k-bf16.safetensors", |t| {
        t[1] = Raw("k", Dtype::BF16, vec![1, 4, 2, 4], vec![0; 64]);
    });
    let e = op_error(s(&input), &["--window", "2"]);
    assert!(e.contains("`k`") && e.contains("BF16"), "{e}");
}

#[test]
fn bad_shape_names_the_tensor() {
    let input = dense_input("bad-bias-shape.safetensors", |t| {
        t[3] = Raw("bias", Dtype::F32, vec![1, 2, 3], vec![0; 24]);
    });
    let e = op_error(s(&input), &["--window", "2"]);
    assert!(e.contains("`bias`") && e.contains("[1, 2, 3]"), "{e}");
}

#[test]
fn nonexistent_input_file() {
    let missing = temp("does-not-exist.safetensors");
    let e = op_error(s(&missing), &["--window", "2"]);
    assert!(
        e.contains("cannot read") && e.contains("does-not-exist"),
        "{e}"
    );
}

#[test]
fn garbage_file() {
    let path = temp("garbage.safetensors");
    std::fs::write(
        &path,
        b"\xff\xff\xff\xff\xff\xff\xff\x7fthis is not a safetensors file",
    )
    .unwrap();
    let e = op_error(s(&path), &["--window", "2"]);
    assert!(e.contains("not a valid safetensors file"), "{e}");
}

#[test]
fn window_zero() {
    let input = dense_input("window0.safetensors", |_| {});
    let e = op_error(s(&input), &["--window", "0"]);
    assert!(e.contains("window"), "{e}");
}

/// With the cuda device built in, f32 files are refused before any GPU is touched.
#[test]
#[cfg(feature = "cuda")]
fn cuda_device_takes_16_bit_tensors() {
    let input = dense_input("cuda_f32.safetensors", |_| {});
    let e = op_error(s(&input), &["--window", "2", "--device", "cuda"]);
    assert!(e.contains("bf16 or f16"), "{e}");
}

#[test]
#[cfg(not(feature = "cuda"))]
fn cuda_device_is_not_built() {
    let input = dense_input("cuda.safetensors", |_| {});
    let e = op_error(s(&input), &["--window", "2", "--device", "cuda"]);
    assert!(e.contains("cuda"), "{e}");
}
