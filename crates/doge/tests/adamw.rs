//! `train::AdamW` against AdamW written out in f64 over several steps: an f32 matrix and vector
//! (the fused in-place step: weight decay on the matrix only) and an f64 vector (candle's
//! element-wise ops), with gradient scaling.

use candle_core::{DType, Device, Tensor, Var};
use doge::train::{AdamW, AdamWParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One variable's weights after AdamW steps with gradients `grads`, in f64.
fn reference(
    theta: &[f64],
    grads: &[Vec<f64>],
    p: &AdamWParams,
    lrs: &[f64],
    scale: f64,
    decay: bool,
) -> Vec<f64> {
    let mut theta = theta.to_vec();
    let (mut m, mut v) = (vec![0f64; theta.len()], vec![0f64; theta.len()]);
    for (t, (g, &lr)) in grads.iter().zip(lrs).enumerate() {
        let t = t as i32 + 1;
        let wd = if decay { p.weight_decay } else { 0.0 };
        for i in 0..theta.len() {
            let g = g[i] * scale;
            m[i] = p.beta1 * m[i] + (1.0 - p.beta1) * g;
            v[i] = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
            let (m_hat, v_hat) = (
                m[i] / (1.0 - p.beta1.powi(t)),
                v[i] / (1.0 - p.beta2.powi(t)),
            );
            theta[i] -= lr * wd * theta[i] + lr * m_hat / (v_hat.sqrt() + p.eps);
        }
    }
    theta
}

#[test]
fn steps_match_f64() {
    let dev = Device::Cpu;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut random =
        |n: usize| -> Vec<f64> { (0..n).map(|_| rng.random_range(-2.0..2.0)).collect() };
    let shapes: [(&str, Vec<usize>, DType); 3] = [
        ("matrix", vec![3, 4], DType::F32),
        ("vector", vec![5], DType::F32),
        ("f64 vector", vec![4], DType::F64),
    ];
    let starts: Vec<Vec<f64>> = shapes
        .iter()
        .map(|(_, s, _)| random(s.iter().product()))
        .collect();
    let vars: Vec<Var> = shapes
        .iter()
        .zip(&starts)
        .map(|((_, s, dtype), x)| {
            Var::from_tensor(
                &Tensor::from_vec(x.clone(), s.as_slice(), &dev)
                    .unwrap()
                    .to_dtype(*dtype)
                    .unwrap(),
            )
            .unwrap()
        })
        .collect();
    let params = AdamWParams::default();
    let named = shapes
        .iter()
        .zip(&vars)
        .map(|((n, _, _), v)| (n.to_string(), v.clone()))
        .collect();
    let mut opt = AdamW::new(named, params).unwrap();
    let (lrs, scale) = ([1e-2, 5e-3, 1e-2, 2e-3], 0.5);
    let mut grads: Vec<Vec<Vec<f64>>> = vec![Vec::new(); vars.len()];
    for &lr in &lrs {
        // loss = sum(var * c): each gradient is c.
        let mut loss = Tensor::zeros((), DType::F64, &dev).unwrap();
        for (i, var) in vars.iter().enumerate() {
            let c = random(var.elem_count());
            let ct = Tensor::from_vec(c.clone(), var.shape(), &dev)
                .unwrap()
                .to_dtype(var.dtype())
                .unwrap();
            loss = (loss
                + (var.as_tensor() * ct)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap())
            .unwrap();
            grads[i].push(c);
        }
        opt.step(&loss.backward().unwrap(), lr, scale).unwrap();
    }
    for (i, ((name, _, _), var)) in shapes.iter().zip(&vars).enumerate() {
        let want = reference(&starts[i], &grads[i], &params, &lrs, scale, var.rank() >= 2);
        let got: Vec<f64> = var
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let err = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0, f64::max);
        // The start is rounded to f32 for the f32 variables; four steps of lr <= 1e-2 move each
        // weight by at most about 0.03, which f32 carries to ~1e-8.
        let limit = if var.dtype() == DType::F32 {
            1e-6 * 2.0
        } else {
            1e-12
        };
        let start_rounding = if var.dtype() == DType::F32 {
            2.0 * f32::EPSILON as f64
        } else {
            0.0
        };
        assert!(
            err < limit + start_rounding,
            "{name}: max error {err:e} (seed {seed})"
        );
    }
}

/// `grad_norm` is the L2 norm of all gradients together; variables without one count nothing.
#[test]
fn grad_norm_is_the_global_l2_norm() {
    let dev = Device::Cpu;
    let a = Var::new(&[[1f32, 2.], [3., 4.]], &dev).unwrap();
    let b = Var::new(&[0.5f64, -1.5, 2.0], &dev).unwrap();
    let unused = Var::new(&[7f32], &dev).unwrap();
    let (ca, cb) = ([[0.25f32, -1.], [2., 0.5]], [3f64, -0.5, 1.25]);
    let loss = ((a.as_tensor() * Tensor::new(&ca, &dev).unwrap())
        .unwrap()
        .sum_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        + (b.as_tensor() * Tensor::new(&cb, &dev).unwrap())
            .unwrap()
            .sum_all()
            .unwrap())
    .unwrap();
    let grads = loss.backward().unwrap();
    let vars = [("a", &a), ("b", &b), ("unused", &unused)].map(|(n, v)| (n.to_string(), v.clone()));
    let want: f64 = ca
        .iter()
        .flatten()
        .map(|&c| (c as f64).powi(2))
        .chain(cb.iter().map(|c| c * c))
        .sum::<f64>()
        .sqrt();
    let got = doge::train::grad_norm(&grads, &vars).unwrap();
    assert!((got - want).abs() < 1e-9 * want, "{got} vs {want}");
    assert_eq!(
        doge::train::grad_norm(&Tensor::new(1f64, &dev).unwrap().backward().unwrap(), &vars)
            .unwrap(),
        0.0
    );
}
