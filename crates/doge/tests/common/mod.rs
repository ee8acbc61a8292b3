//! Small random Doge models for the tests: built here, written to a temp dir as transformers
//! would (config.json + model.safetensors), with every weight away from its initial value so a
//! mix-up of tensors would show.

#![allow(dead_code)]

use candle_core::{Device, Tensor};
use doge::{DogeConfig, DogeForCausalLM, ModelOptions};
use std::path::Path;

pub const CPU: Device = Device::Cpu;

/// GQA (4 query heads, 2 kv heads), a window smaller than the test sequences.
pub fn small_config() -> DogeConfig {
    let mut c = DogeConfig::new(61, 32, 48, 2, 4, 2);
    c.keep_window_size = 5;
    c.max_position_embeddings = 40;
    c
}

/// A model whose `A` (of either sign), norm weights and residual scales are random too.
pub fn random_model(config: DogeConfig, options: ModelOptions) -> DogeForCausalLM {
    let model = DogeForCausalLM::new(config, options, &CPU).unwrap();
    let data = model.vars().data().lock().unwrap();
    for (name, var) in data.iter() {
        let value = if name.ends_with(".A") {
            // Of either sign and away from 0, so biases neither underflow to ties nor sit
            // within rounding of each other (a near-tie may rank differently after a matmul
            // of another shape, in any implementation).
            let sign = Tensor::randn(0f32, 1.0, var.shape(), &CPU)
                .unwrap()
                .sign()
                .unwrap();
            (Tensor::rand(0.3f32, 1.0, var.shape(), &CPU).unwrap() * sign).unwrap()
        } else if name.ends_with("norm.weight") || name.ends_with("residual") {
            Tensor::rand(0.7f32, 1.3, var.shape(), &CPU).unwrap()
        } else if name.ends_with(".bias") {
            Tensor::randn(0f32, 0.1, var.shape(), &CPU).unwrap()
        } else {
            Tensor::randn(0f32, 0.2, var.shape(), &CPU).unwrap()
        };
        var.set(&value).unwrap();
    }
    drop(data);
    model
}

/// Token ids `[b, n]` (u32), distinct within each row. A repeated token has the same value
/// vector, so in the first layer the same bias as its other occurrences: an exact tie that the
/// ranking breaks by position, but only if both biases come out bit for bit equal, which matmuls
/// of different shapes (a full forward against a cached decode) do not promise.
pub fn random_ids(b: usize, n: usize, vocab: usize) -> Tensor {
    use rand::seq::SliceRandom;
    assert!(n <= vocab);
    let mut rng = rand::rng();
    let mut ids = Vec::with_capacity(b * n);
    for _ in 0..b {
        let mut row: Vec<u32> = (0..vocab as u32).collect();
        row.shuffle(&mut rng);
        ids.extend_from_slice(&row[..n]);
    }
    Tensor::from_vec(ids, (b, n), &CPU).unwrap()
}

/// max |a - b| / max |b|.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let scale = b.abs().unwrap().max_all().unwrap();
    diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap().max(1e-30)
}

pub fn write_config(dir: &Path, json: &str) {
    std::fs::write(dir.join("config.json"), json).unwrap();
}
