//! Bad input is a typed error that names the problem, never a panic.

use dma::{cpu, DmaError, Heads, Params, Shape};
use proptest::prelude::*;

struct Buffers {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    bias: Vec<f32>,
}

impl Buffers {
    /// Correctly sized buffers for a dense shape (or for `rows_q` / `rows_k` packed rows).
    fn new(rows_q: usize, rows_k: usize, hq: usize, hkv: usize, hb: usize, d: usize) -> Self {
        Buffers {
            q: vec![0.5; rows_q * hq * d],
            k: vec![0.25; rows_k * hkv * d],
            v: vec![1.0; rows_k * hkv * d],
            bias: vec![0.0; rows_k * hb],
        }
    }

    fn forward(&self, params: &Params, shape: &Shape) -> dma::Result<cpu::Forward<f32>> {
        let inputs = cpu::Inputs {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            bias: &self.bias,
        };
        cpu::forward(params, shape, &inputs)
    }
}

fn dense(b: usize, nq: usize, nk: usize, heads: Heads, d: usize) -> Shape {
    Shape::dense(b, nq, nk, heads, d)
}

#[test]
fn window_zero() {
    let shape = dense(1, 4, 4, Heads::new(2, 2), 8);
    let err = Buffers::new(4, 4, 2, 2, 2, 8)
        .forward(&Params::new(0), &shape)
        .unwrap_err();
    assert_eq!(err, DmaError::ZeroWindow);
}

#[test]
fn scale_not_finite() {
    let shape = dense(1, 4, 4, Heads::new(2, 2), 8);
    let err = Buffers::new(4, 4, 2, 2, 2, 8)
        .forward(&Params::new(2).scale(f32::NAN), &shape)
        .unwrap_err();
    assert!(matches!(err, DmaError::InvalidScale(s) if s.is_nan()));
}

#[test]
fn heads_not_grouped() {
    let shape = dense(1, 4, 4, Heads::new(3, 2), 8);
    let err = Buffers::new(4, 4, 3, 2, 2, 8)
        .forward(&Params::new(2), &shape)
        .unwrap_err();
    assert_eq!(err, DmaError::HeadsNotGrouped { q: 3, kv: 2 });
    assert!(err.to_string().contains("multiple of kv heads"));
}

#[test]
fn bias_heads_neither_q_nor_kv() {
    let shape = dense(1, 4, 4, Heads::new(4, 2).with_bias(1), 8);
    let err = Buffers::new(4, 4, 4, 2, 1, 8)
        .forward(&Params::new(2), &shape)
        .unwrap_err();
    assert_eq!(
        err,
        DmaError::BiasHeads {
            bias: 1,
            q: 4,
            kv: 2
        }
    );
}

#[test]
fn zero_heads() {
    let shape = dense(1, 4, 4, Heads::new(0, 1), 8);
    let err = Buffers::new(4, 4, 0, 1, 1, 8)
        .forward(&Params::new(2), &shape)
        .unwrap_err();
    assert_eq!(err, DmaError::ZeroHeads { which: "query" });
}

#[test]
fn head_dim_zero_or_too_large() {
    for d in [0, 257, 1024] {
        let shape = dense(1, 2, 2, Heads::new(1, 1), d);
        let err = Buffers::new(2, 2, 1, 1, 1, d)
            .forward(&Params::new(2), &shape)
            .unwrap_err();
        assert_eq!(err, DmaError::UnsupportedHeadDim(d));
    }
}

#[test]
fn empty_batch() {
    let b = Buffers::new(0, 0, 1, 1, 1, 4);
    let err = b
        .forward(&Params::new(2), &dense(0, 3, 3, Heads::new(1, 1), 4))
        .unwrap_err();
    assert_eq!(err, DmaError::EmptyBatch);
    let varlen = Shape::varlen(vec![0], vec![0], Heads::new(1, 1), 4);
    assert_eq!(
        b.forward(&Params::new(2), &varlen).unwrap_err(),
        DmaError::EmptyBatch
    );
}

#[test]
fn wrong_tensor_sizes_name_the_tensor() {
    let shape = dense(2, 5, 6, Heads::new(4, 2), 8);
    let good = || Buffers::new(10, 12, 4, 2, 2, 8);
    let mut cases: Vec<(&str, Buffers)> = Vec::new();
    let mut b = good();
    b.q.pop();
    cases.push(("q", b));
    let mut b = good();
    b.k.push(0.0);
    cases.push(("k", b));
    let mut b = good();
    b.v.truncate(8);
    cases.push(("v", b));
    let mut b = good();
    b.bias.pop();
    cases.push(("bias", b));
    for (name, b) in cases {
        match b.forward(&Params::new(3), &shape).unwrap_err() {
            DmaError::ShapeMismatch { name: got, .. } => assert_eq!(got, name),
            other => panic!("expected a shape error naming {name}, got {other}"),
        }
    }
}

#[test]
fn non_finite_bias_names_its_place() {
    let shape = dense(2, 4, 5, Heads::new(2, 2), 4);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut b = Buffers::new(8, 10, 2, 2, 2, 4);
        // Sequence 1, bias head 0, key 3 in [B, Hb, Nk].
        b.bias[2 * 5 + 3] = bad;
        match b.forward(&Params::new(3), &shape).unwrap_err() {
            DmaError::NonFiniteBias {
                sequence: 1,
                head: 0,
                key: 3,
                ..
            } => {}
            other => panic!("expected the bias position, got {other}"),
        }
    }
}

#[test]
fn bad_cu_seqlens() {
    let heads = Heads::new(2, 1);
    let run = |cu_q: Vec<i32>, cu_k: Vec<i32>, rows_q: usize, rows_k: usize| {
        Buffers::new(rows_q, rows_k, 2, 1, 1, 4)
            .forward(&Params::new(2), &Shape::varlen(cu_q, cu_k, heads, 4))
            .unwrap_err()
    };
    let reason = |e: DmaError| match e {
        DmaError::BadCuSeqlens { which, reason } => format!("{which}: {reason}"),
        other => panic!("expected a cu_seqlens error, got {other}"),
    };
    assert!(reason(run(vec![1, 3], vec![0, 3], 2, 3)).contains("start at 0"));
    assert!(reason(run(vec![0, 3, 2], vec![0, 3, 4], 3, 4)).contains("decreases"));
    assert!(reason(run(vec![0, 3], vec![0, 3, 5], 3, 5)).contains("sequences"));
    assert!(reason(run(vec![], vec![0, 3], 0, 3)).contains("empty"));
    // Totals that disagree with the packed tensors.
    assert!(reason(run(vec![0, 3], vec![0, 3], 4, 3)).starts_with("q: ends at 3"));
    assert!(reason(run(vec![0, 3], vec![0, 3], 3, 5)).starts_with("k: ends at 3"));
}

#[test]
fn backward_checks_its_extra_tensors() {
    let shape = dense(1, 4, 4, Heads::new(2, 2), 4);
    let b = Buffers::new(4, 4, 2, 2, 2, 4);
    let params = Params::new(2);
    let fwd = b.forward(&params, &shape).unwrap();
    let inputs = cpu::Inputs {
        q: &b.q,
        k: &b.k,
        v: &b.v,
        bias: &b.bias,
    };
    let dout = vec![1.0f32; b.q.len()];
    let short = &dout[1..];
    let name = |e: DmaError| match e {
        DmaError::ShapeMismatch { name, .. } => name,
        other => panic!("expected a shape error, got {other}"),
    };
    let bw = |out: &[f32], lse: &[f32], dout: &[f32]| {
        cpu::backward(&params, &shape, &inputs, out, lse, dout).unwrap_err()
    };
    assert_eq!(name(bw(&fwd.out, &fwd.lse, short)), "dout");
    assert_eq!(name(bw(&fwd.out[1..], &fwd.lse, &dout)), "out");
    assert_eq!(name(bw(&fwd.out, &fwd.lse[1..], &dout)), "lse");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Arbitrary geometry and buffer sizes never panic, and a call whose buffers do not fit its
    /// geometry is always an error.
    #[test]
    fn malformed_input_is_an_error_not_a_panic(
        b in 0usize..3, nq in 0usize..20, nk in 0usize..20,
        hq in 0usize..5, hkv in 0usize..5, hb in 0usize..5, d in 0usize..9,
        window in 0usize..6, varlen in any::<bool>(),
        cu_q in prop::collection::vec(-2i32..25, 0..4),
        cu_k in prop::collection::vec(-2i32..25, 0..4),
        deltas in prop::collection::vec(-2i64..3, 4),
        causal in any::<bool>(),
    ) {
        let heads = Heads::new(hq, hkv).with_bias(hb);
        let shape = if varlen { Shape::varlen(cu_q, cu_k, heads, d) } else { dense(b, nq, nk, heads, d) };
        let (rows_q, rows_k) = (b * nq, b * nk);
        let len = |n: usize, delta: i64| (n as i64 + delta).max(0) as usize;
        let bufs = Buffers {
            q: vec![0.1; len(rows_q * hq * d, deltas[0])],
            k: vec![0.2; len(rows_k * hkv * d, deltas[1])],
            v: vec![0.3; len(rows_k * hkv * d, deltas[2])],
            bias: vec![0.0; len(rows_k * hb, deltas[3])],
        };
        let result = bufs.forward(&Params::new(window).causal(causal), &shape);
        if !varlen && deltas.iter().any(|&x| x != 0) && result.is_ok() {
            // A size change that still fits is possible only for tensors of zero elements.
            let sizes_fit = bufs.q.len() == rows_q * hq * d
                && bufs.k.len() == rows_k * hkv * d
                && bufs.v.len() == rows_k * hkv * d
                && bufs.bias.len() == rows_k * hb;
            prop_assert!(sizes_fit, "mis-sized buffers accepted");
        }
        if let Ok(fwd) = result {
            let inputs = cpu::Inputs { q: &bufs.q, k: &bufs.k, v: &bufs.v, bias: &bufs.bias };
            let dout = vec![1.0f32; fwd.out.len()];
            let params = Params::new(window).causal(causal);
            prop_assert!(cpu::backward(&params, &shape, &inputs, &fwd.out, &fwd.lse, &dout).is_ok());
        }
    }
}

#[test]
fn sizes_that_overflow_are_errors() {
    let b = Buffers::new(1, 1, 1, 1, 1, 4);
    let huge = dense(usize::MAX / 2, 1 << 20, 1 << 20, Heads::new(1, 1), 4);
    assert!(matches!(
        b.forward(&Params::new(2), &huge).unwrap_err(),
        DmaError::TooLong(_)
    ));
    let long = dense(1, 1, 1 << 31, Heads::new(1, 1), 4);
    assert_eq!(
        b.forward(&Params::new(2), &long).unwrap_err(),
        DmaError::TooLong(1 << 31)
    );
}
