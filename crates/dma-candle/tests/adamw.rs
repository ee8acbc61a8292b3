//! `adamw_step` against AdamW written out in f64 from its definition (Loshchilov & Hutter's
//! decoupled weight decay, bias-corrected moments), over several steps on fresh random inputs.

use candle_core::{DType, Device, Tensor, Var};
use dma_candle::{adamw_step, AdamWStep};
use proptest::prelude::*;

/// `steps` AdamW steps of `theta` with the gradients `grads[t]`, in f64.
fn adamw_f64(theta: &[f32], grads: &[Vec<f32>], s: &AdamWStep) -> Vec<f64> {
    let mut theta: Vec<f64> = theta.iter().map(|&x| x as f64).collect();
    let (mut m, mut v) = (vec![0f64; theta.len()], vec![0f64; theta.len()]);
    for (t, g) in grads.iter().enumerate() {
        let t = t as i32 + 1;
        for i in 0..theta.len() {
            let g = g[i] as f64 * s.grad_scale;
            m[i] = s.beta1 * m[i] + (1.0 - s.beta1) * g;
            v[i] = s.beta2 * v[i] + (1.0 - s.beta2) * g * g;
            let m_hat = m[i] / (1.0 - s.beta1.powi(t));
            let v_hat = v[i] / (1.0 - s.beta2.powi(t));
            theta[i] -= s.lr * s.weight_decay * theta[i] + s.lr * m_hat / (v_hat.sqrt() + s.eps);
        }
    }
    theta
}

fn case() -> impl Strategy<Value = (Vec<f32>, Vec<Vec<f32>>, f64, f64, f64)> {
    (1usize..50, 1usize..5).prop_flat_map(|(n, steps)| {
        (
            prop::collection::vec(-2.0f32..2.0, n),
            prop::collection::vec(prop::collection::vec(-3.0f32..3.0, n), steps),
            prop::sample::select(vec![1e-3, 1e-2]),
            prop::sample::select(vec![0.0, 0.1]),
            prop::sample::select(vec![1.0, 0.25]),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn steps_match_f64((theta, grads, lr, weight_decay, grad_scale) in case()) {
        let dev = Device::Cpu;
        let n = theta.len();
        let var = Var::from_vec(theta.clone(), n, &dev).unwrap();
        let (m, v) = (var.zeros_like().unwrap(), var.zeros_like().unwrap());
        let mut step = AdamWStep { beta1: 0.9, beta2: 0.95, eps: 1e-8, lr, weight_decay, grad_scale, t: 0 };
        for (t, g) in grads.iter().enumerate() {
            step.t = t as i32 + 1;
            let g = Tensor::from_vec(g.clone(), n, &dev).unwrap();
            adamw_step(&var, &m, &v, &g, &step).unwrap();
        }
        let want = adamw_f64(&theta, &grads, &step);
        let got: Vec<f32> = var.to_vec1().unwrap();
        // Each step moves a weight by at most about lr; the error is relative to that.
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let err = (g as f64 - w).abs() / lr;
            prop_assert!(err < 1e-3, "weight {}: {} vs {} ({} steps)", i, g, w, grads.len());
        }
    }
}

/// Wrong dtypes, shapes and layouts are errors naming the tensor, and leave the weights alone.
#[test]
fn bad_inputs_are_errors() {
    let dev = Device::Cpu;
    let theta = Var::new(&[[1f32, 2.], [3., 4.]], &dev).unwrap();
    let zeros = theta.zeros_like().unwrap();
    let step = AdamWStep {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        lr: 0.1,
        weight_decay: 0.0,
        grad_scale: 1.0,
        t: 1,
    };
    let g64 = zeros.to_dtype(DType::F64).unwrap();
    let err = adamw_step(&theta, &zeros, &zeros.copy().unwrap(), &g64, &step).unwrap_err();
    assert!(err.to_string().contains("`grad`"), "{err}");
    let short = Tensor::zeros(2, DType::F32, &dev).unwrap();
    let err = adamw_step(&theta, &short, &zeros, &zeros.copy().unwrap(), &step).unwrap_err();
    assert!(err.to_string().contains("`m`"), "{err}");
    let transposed = zeros.copy().unwrap().t().unwrap();
    let err = adamw_step(&theta, &zeros, &transposed, &zeros.copy().unwrap(), &step).unwrap_err();
    assert!(err.to_string().contains("`v`"), "{err}");
    assert_eq!(theta.to_vec2::<f32>().unwrap(), [[1., 2.], [3., 4.]]);
}
