//! `rms_norm` against an f64 computation on fresh random inputs: the output from the
//! definition, and both gradients by central differences of the f64 function (so that the
//! backward's closed form is checked against nothing derived from it).

use candle_core::{DType, Device, Tensor, Var};
use dma_candle::rms_norm;
use proptest::prelude::*;

/// `weight * x / sqrt(mean(x²) + eps)` of every row, in f64.
fn norm_f64(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let width = w.len();
    x.chunks(width)
        .flat_map(|row| {
            let ms = row.iter().map(|v| v * v).sum::<f64>() / width as f64;
            let r = 1.0 / (ms + eps).sqrt();
            row.iter().zip(w).map(move |(x, w)| x * r * w)
        })
        .collect()
}

/// `sum(g * norm(x, w))`, the loss whose gradients the backward computes.
fn loss(x: &[f64], w: &[f64], g: &[f64], eps: f64) -> f64 {
    norm_f64(x, w, eps).iter().zip(g).map(|(y, g)| y * g).sum()
}

/// Central differences of `loss` in each element of `at` (`x` or `w`, picked by `which`).
fn numeric_grad(x: &[f64], w: &[f64], g: &[f64], eps: f64, of_w: bool) -> Vec<f64> {
    let h = 1e-6;
    let len = if of_w { w.len() } else { x.len() };
    (0..len)
        .map(|i| {
            let (mut xp, mut wp, mut xm, mut wm) = (x.to_vec(), w.to_vec(), x.to_vec(), w.to_vec());
            if of_w {
                wp[i] += h;
                wm[i] -= h;
            } else {
                xp[i] += h;
                xm[i] -= h;
            }
            (loss(&xp, &wp, g, eps) - loss(&xm, &wm, g, eps)) / (2.0 * h)
        })
        .collect()
}

fn max_rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs() / scale)
        .fold(0.0, f64::max)
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Rows, width, x, weight, upstream gradient, eps. Some rows are scaled far down, where eps
/// matters.
fn norm_case() -> impl Strategy<Value = (usize, usize, Vec<f32>, Vec<f32>, Vec<f32>, f64)> {
    (
        1usize..12,
        1usize..40,
        prop::sample::select(vec![1e-6, 1e-2]),
    )
        .prop_flat_map(|(rows, width, eps)| {
            (
                Just(rows),
                Just(width),
                prop::collection::vec(-3.0f32..3.0, rows * width),
                prop::collection::vec(-2.0f32..2.0, width),
                prop::collection::vec(-2.0f32..2.0, rows * width),
                prop::collection::vec(prop::sample::select(vec![1.0f32, 1.0, 1e-2]), rows),
                Just(eps),
            )
        })
        .prop_map(|(rows, width, mut x, w, g, row_scale, eps)| {
            for (row, s) in x.chunks_mut(width).zip(&row_scale) {
                row.iter_mut().for_each(|v| *v *= s);
            }
            (rows, width, x, w, g, eps)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn f32_norm_and_gradients_match_f64((rows, width, x, w, g, eps) in norm_case()) {
        let dev = Device::Cpu;
        // A leading batch dim, so that the op sees rank 3.
        let xv = Var::from_vec(x.clone(), (1, rows, width), &dev).unwrap();
        let wv = Var::from_vec(w.clone(), width, &dev).unwrap();
        let y = rms_norm(&xv, &wv, eps).unwrap();
        prop_assert_eq!(y.dims(), &[1, rows, width]);
        let (x64, w64, g64) = (to_f64(&x), to_f64(&w), to_f64(&g));
        let got: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let err = max_rel_err(&got, &norm_f64(&x64, &w64, eps));
        prop_assert!(err < 1e-5, "output error {}", err);

        let gt = Tensor::from_vec(g.clone(), (1, rows, width), &dev).unwrap();
        let grads = (y * gt).unwrap().sum_all().unwrap().backward().unwrap();
        for (var, of_w, name) in [(&xv, false, "dx"), (&wv, true, "dw")] {
            let got: Vec<f32> = grads.get(var).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let err = max_rel_err(&got, &numeric_grad(&x64, &w64, &g64, eps, of_w));
            prop_assert!(err < 1e-4, "{} error {}", name, err);
        }
    }
}

/// bf16 takes candle's element-wise ops (normalised in f32, scaled in bf16), with gradients.
#[test]
fn bf16_norm_matches_f64() {
    let dev = Device::Cpu;
    let (rows, width, eps) = (5, 24, 1e-6);
    let x = Tensor::randn(0f32, 1.0, (rows, width), &dev).unwrap();
    let w = Tensor::randn(1f32, 0.3, width, &dev).unwrap();
    let xv = Var::from_tensor(&x.to_dtype(DType::BF16).unwrap()).unwrap();
    let wv = Var::from_tensor(&w.to_dtype(DType::BF16).unwrap()).unwrap();
    let y = rms_norm(&xv, &wv, eps).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    let f64s = |t: &Tensor| -> Vec<f64> {
        let v: Vec<f32> = t
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        to_f64(&v)
    };
    let want = norm_f64(&f64s(&xv), &f64s(&wv), eps);
    let got: Vec<f32> = y
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let err = max_rel_err(&got, &want);
    assert!(err < 1e-2, "bf16 output error {err}");
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&xv).is_some() && grads.get(&wv).is_some());
}

/// A weight that does not match x's last dim is an error naming it; an empty x is empty.
#[test]
fn bad_weight_is_an_error_and_empty_input_is_empty() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((2, 3, 8), DType::F32, &dev).unwrap();
    let err = rms_norm(&x, &Tensor::ones(7, DType::F32, &dev).unwrap(), 1e-6).unwrap_err();
    assert!(err.to_string().contains("`weight`"), "{err}");
    let err = rms_norm(&x, &Tensor::ones((1, 8), DType::F32, &dev).unwrap(), 1e-6).unwrap_err();
    assert!(err.to_string().contains("`weight`"), "{err}");
    let empty = Tensor::zeros((0, 8), DType::F32, &dev).unwrap();
    let y = rms_norm(&empty, &Tensor::ones(8, DType::F32, &dev).unwrap(), 1e-6).unwrap();
    assert_eq!(y.dims(), &[0, 8]);
}
