//! The fused f32 ops (`rms_norm`, `silu_mul`, `scale_add`, `cross_entropy`) against f64 computations on fresh
//! random inputs: the output from the definition, and every gradient by central differences of
//! the f64 function (so that no backward's closed form is checked against anything derived
//! from it).

use candle_core::{DType, Device, Tensor, Var};
use dma_candle::{cross_entropy, rms_norm, scale_add, silu_mul};
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

/// Central differences of `sum(g * f(inputs))` in every element of `inputs[which]`.
fn numeric_grad(
    f: impl Fn(&[Vec<f64>]) -> Vec<f64>,
    inputs: &[Vec<f64>],
    g: &[f64],
    which: usize,
) -> Vec<f64> {
    let h = 1e-6;
    let loss = |inputs: &[Vec<f64>]| -> f64 { f(inputs).iter().zip(g).map(|(y, g)| y * g).sum() };
    (0..inputs[which].len())
        .map(|i| {
            let (mut plus, mut minus) = (inputs.to_vec(), inputs.to_vec());
            plus[which][i] += h;
            minus[which][i] -= h;
            (loss(&plus) - loss(&minus)) / (2.0 * h)
        })
        .collect()
}

/// The gradients of `sum(out * g)` reaching `vars`, against central differences of `f`.
fn check_grads(
    out: Tensor,
    vars: &[&Var],
    f: impl Fn(&[Vec<f64>]) -> Vec<f64>,
    inputs: &[Vec<f64>],
    g: &[f32],
) -> Result<(), TestCaseError> {
    let gt = Tensor::from_vec(g.to_vec(), out.shape(), out.device()).unwrap();
    let grads = (out * gt).unwrap().sum_all().unwrap().backward().unwrap();
    for (which, var) in vars.iter().enumerate() {
        let got = values(grads.get(var).unwrap());
        let err = max_rel_err(&got, &numeric_grad(&f, inputs, &to_f64(g), which));
        prop_assert!(err < 1e-4, "gradient {} error {}", which, err);
    }
    Ok(())
}

fn max_rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1.0f64, |m, x| m.max(x.abs()));
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs() / scale)
        .fold(0.0, f64::max)
}

/// A tensor's elements as f32, in order.
fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// The mean over rows of `log(sum exp(row)) - row[target]`, in f64 (the definition, without
/// shifting by the row's maximum: the test's logits are small enough).
fn cross_entropy_f64(x: &[f64], targets: &[u32]) -> f64 {
    let classes = x.len() / targets.len();
    let total: f64 = x
        .chunks(classes)
        .zip(targets)
        .map(|(row, &t)| row.iter().map(|v| v.exp()).sum::<f64>().ln() - row[t as usize])
        .sum();
    total / targets.len() as f64
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
        let (x64, w64) = (to_f64(&x), to_f64(&w));
        let got = values(&y);
        let err = max_rel_err(&got, &norm_f64(&x64, &w64, eps));
        prop_assert!(err < 1e-5, "output error {}", err);

        let f = |i: &[Vec<f64>]| norm_f64(&i[0], &i[1], eps);
        check_grads(y, &[&xv, &wv], f, &[x64, w64], &g)?;
    }

    #[test]
    fn silu_mul_and_gradients_match_f64(
        (a, u, g) in (1usize..300).prop_flat_map(|n| {
            let v = || prop::collection::vec(-6.0f32..6.0, n);
            (v(), v(), v())
        })
    ) {
        let dev = Device::Cpu;
        let n = a.len();
        let (av, uv) = (Var::from_vec(a.clone(), n, &dev).unwrap(), Var::from_vec(u.clone(), n, &dev).unwrap());
        let h = silu_mul(&av, &uv).unwrap();
        let f = |i: &[Vec<f64>]| -> Vec<f64> {
            i[0].iter().zip(&i[1]).map(|(a, u)| a / (1.0 + (-a).exp()) * u).collect()
        };
        let inputs = [to_f64(&a), to_f64(&u)];
        let got: Vec<f32> = h.to_vec1().unwrap();
        let err = max_rel_err(&got, &f(&inputs));
        prop_assert!(err < 1e-5, "output error {}", err);
        check_grads(h, &[&av, &uv], f, &inputs, &g)?;
    }

    #[test]
    fn scale_add_and_gradients_match_f64(
        (rows, width, x, s, r, g) in (1usize..12, 1usize..40).prop_flat_map(|(rows, width)| {
            let v = |n| prop::collection::vec(-3.0f32..3.0, n);
            (Just(rows), Just(width), v(rows * width), v(width), v(rows * width), v(rows * width))
        })
    ) {
        let dev = Device::Cpu;
        let xv = Var::from_vec(x.clone(), (rows, width), &dev).unwrap();
        let sv = Var::from_vec(s.clone(), width, &dev).unwrap();
        let rv = Var::from_vec(r.clone(), (rows, width), &dev).unwrap();
        let y = scale_add(&xv, &sv, &rv).unwrap();
        let f = |i: &[Vec<f64>]| -> Vec<f64> {
            let width = i[1].len();
            i[0].iter().zip(&i[2]).enumerate().map(|(e, (x, r))| x * i[1][e % width] + r).collect()
        };
        let inputs = [to_f64(&x), to_f64(&s), to_f64(&r)];
        let got = values(&y);
        let err = max_rel_err(&got, &f(&inputs));
        prop_assert!(err < 1e-6, "output error {}", err);
        check_grads(y, &[&xv, &sv, &rv], f, &inputs, &g)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Logits up to +-30 (where exp overflows nothing in f64 but a careless f32 sum would lose
    /// the small terms), one class to a few hundred.
    #[test]
    fn cross_entropy_and_gradient_match_f64(
        (rows, classes, x, t, g) in (1usize..10, 1usize..300).prop_flat_map(|(rows, classes)| (
            Just(rows),
            Just(classes),
            prop::collection::vec(-30.0f32..30.0, rows * classes),
            prop::collection::vec(0..classes as u32, rows),
            -2.0f32..2.0,
        ))
    ) {
        let dev = Device::Cpu;
        let xv = Var::from_vec(x.clone(), (rows, classes), &dev).unwrap();
        let tt = Tensor::from_vec(t.clone(), rows, &dev).unwrap();
        let loss = cross_entropy(&xv, &tt).unwrap();
        prop_assert_eq!(loss.dims(), &[] as &[usize]);
        let want = cross_entropy_f64(&to_f64(&x), &t);
        let got = loss.to_scalar::<f32>().unwrap() as f64;
        prop_assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "loss {} want {}", got, want);
        let f = |i: &[Vec<f64>]| vec![cross_entropy_f64(&i[0], &t)];
        check_grads(loss, &[&xv], f, &[to_f64(&x)], &[g])?;
    }
}

/// Integer targets of other dtypes are taken as classes; a target that is not a class, a
/// shape that does not match and a float target are errors naming the problem.
#[test]
fn cross_entropy_checks_its_inputs() {
    let dev = Device::Cpu;
    let x = Tensor::new(&[[1f32, 2., 3.], [0., 0., 5.]], &dev).unwrap();
    let loss = |t: Tensor| cross_entropy(&x, &t).map(|l| l.to_scalar::<f32>().unwrap());
    let by_u32 = loss(Tensor::new(&[2u32, 1], &dev).unwrap()).unwrap();
    let by_i64 = loss(Tensor::new(&[2i64, 1], &dev).unwrap()).unwrap();
    assert_eq!(by_u32, by_i64);
    let err = loss(Tensor::new(&[3u32, 0], &dev).unwrap()).unwrap_err();
    assert!(err.to_string().contains("class 3 in row 0"), "{err}");
    let err = loss(Tensor::new(&[1u32, 0, 0], &dev).unwrap()).unwrap_err();
    assert!(err.to_string().contains("`targets`"), "{err}");
    let err = loss(Tensor::new(&[1f32, 0.], &dev).unwrap()).unwrap_err();
    assert!(err.to_string().contains("u32, u8 or i64"), "{err}");
    let flat = Tensor::new(&[1f32, 2.], &dev).unwrap();
    let err = cross_entropy(&flat, &Tensor::new(&[0u32], &dev).unwrap()).unwrap_err();
    assert!(err.to_string().contains("`logits`"), "{err}");
}

/// bf16 logits take candle_nn's loss, which agrees with the fused f32 op.
#[test]
fn bf16_cross_entropy_agrees_with_f32() {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 2.0, (6, 50), &dev).unwrap();
    let t = Tensor::new(&[0u32, 7, 49, 3, 3, 20], &dev).unwrap();
    let f32_loss = cross_entropy(&x, &t).unwrap().to_scalar::<f32>().unwrap();
    let bf16 = cross_entropy(&x.to_dtype(DType::BF16).unwrap(), &t).unwrap();
    let bf16_loss = bf16
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        (f32_loss - bf16_loss).abs() < 2e-2 * f32_loss.abs().max(1.0),
        "{f32_loss} {bf16_loss}"
    );
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
    let want = norm_f64(&to_f64(&values(&xv)), &to_f64(&values(&wv)), eps);
    let err = max_rel_err(&values(&y), &want);
    assert!(err < 1e-2, "bf16 output error {err}");
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(&xv).is_some() && grads.get(&wv).is_some());
}

/// Shapes that do not match are errors naming the tensor; an empty x is empty.
#[test]
fn bad_shapes_are_errors_and_empty_inputs_are_empty() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((2, 3, 8), DType::F32, &dev).unwrap();
    let err = rms_norm(&x, &Tensor::ones(7, DType::F32, &dev).unwrap(), 1e-6).unwrap_err();
    assert!(err.to_string().contains("`weight`"), "{err}");
    let err = rms_norm(&x, &Tensor::ones((1, 8), DType::F32, &dev).unwrap(), 1e-6).unwrap_err();
    assert!(err.to_string().contains("`weight`"), "{err}");
    let empty = Tensor::zeros((0, 8), DType::F32, &dev).unwrap();
    let y = rms_norm(&empty, &Tensor::ones(8, DType::F32, &dev).unwrap(), 1e-6).unwrap();
    assert_eq!(y.dims(), &[0, 8]);
    let ones = Tensor::ones((2, 3, 8), DType::F32, &dev).unwrap();
    let err = silu_mul(&x, &ones.narrow(2, 0, 7).unwrap()).unwrap_err();
    assert!(err.to_string().contains("`u`"), "{err}");
    let s = Tensor::ones(8, DType::F32, &dev).unwrap();
    let err = scale_add(&x, &s.narrow(0, 0, 7).unwrap(), &ones).unwrap_err();
    assert!(err.to_string().contains("`s`"), "{err}");
    let err = scale_add(&x, &s, &ones.narrow(1, 0, 2).unwrap()).unwrap_err();
    assert!(err.to_string().contains("`r`"), "{err}");
    assert_eq!(silu_mul(&empty, &empty).unwrap().dims(), &[0, 8]);
    assert_eq!(scale_add(&empty, &s, &empty).unwrap().dims(), &[0, 8]);
}
