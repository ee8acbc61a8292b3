//! `dma train-bench`: training throughput of one Doge model with each attention kind, side by
//! side in one run (same weights' shapes, same random batches), and the attention op alone
//! (forward + backward through candle) at the model's shape.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};
use clap::Args;
use doge::train::{AdamWParams, TrainConfig, Trainer, WsdSchedule};
use doge::{DogeConfig, DogeForCausalLM, ModelOptions};
use std::path::PathBuf;
use std::time::Instant;

use crate::model_args::Kind;

#[derive(Args)]
pub struct TrainBenchArgs {
    /// A config.json for the model (default: a ~50M-parameter Doge, see --help of the fields
    /// printed at the start).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long, default_value_t = 8192)]
    pub seq_len: usize,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// keep_window_size for dma and swa.
    #[arg(long, default_value_t = 1024)]
    pub window: usize,
    /// Attention kinds to compare, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "dma,mha")]
    pub kinds: Vec<Kind>,
    /// Untimed steps first (kernel compilation, allocator warm-up).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed optimiser steps per kind.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long, value_enum, default_value_t = crate::Device::Cpu)]
    pub device: crate::Device,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// The default model: hidden 512, 8 layers of 8 query and 4 kv heads of 64, MLP 2048, vocab
/// 32768 tied: about 50M parameters.
fn default_config() -> DogeConfig {
    let mut c = DogeConfig::new(32768, 512, 2048, 8, 8, 4);
    c.tie_word_embeddings = true;
    c
}

pub fn run(a: &TrainBenchArgs) -> Result<()> {
    if a.steps == 0 || a.batch == 0 || a.seq_len == 0 || a.kinds.is_empty() {
        bail!("--steps, --batch, --seq-len and --kinds must be non-empty / at least 1");
    }
    let device = a.device.candle()?;
    let mut config = match &a.config {
        Some(p) => DogeConfig::from_file(p)?,
        None => default_config(),
    };
    config.keep_window_size = a.window;
    config.max_position_embeddings = config.max_position_embeddings.max(a.seq_len);
    config.validate()?;
    let mut rng_seed = a.seed;
    let batch = |dev: &Device, seed: u64| -> Result<Tensor> {
        // Random token ids (the speed does not depend on their values).
        let n = a.batch * (a.seq_len + 1);
        let ids: Vec<u32> = (0..n as u64)
            .map(|i| (splitmix(seed ^ i) % config.vocab_size as u64) as u32)
            .collect();
        Ok(Tensor::from_vec(ids, (a.batch, a.seq_len + 1), dev)?)
    };
    println!(
        "dma train-bench: hidden {}, {} layers, Hq {}, Hkv {}, D {}, vocab {}, B {}, N {}, w {}, {} timed steps after {} warm-up",
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim(),
        config.vocab_size,
        a.batch,
        a.seq_len,
        a.window,
        a.steps,
        a.warmup
    );
    let mut rows = Vec::new();
    for &k in &a.kinds {
        let options = ModelOptions {
            kind: k.attention(),
            ..Default::default()
        };
        let model = DogeForCausalLM::new(config.clone(), options, &device)?;
        let params = crate::train::parameters(&model);
        let mut trainer = Trainer::new(model, train_config(a.warmup + a.steps))?;
        for _ in 0..a.warmup {
            rng_seed = rng_seed.wrapping_add(1);
            trainer.train_step(&batch(&device, rng_seed)?)?;
        }
        device.synchronize()?;
        let clock = Instant::now();
        let mut loss = 0.0;
        for _ in 0..a.steps {
            rng_seed = rng_seed.wrapping_add(1);
            loss = trainer.train_step(&batch(&device, rng_seed)?)?.loss;
        }
        device.synchronize()?;
        let seconds = clock.elapsed().as_secs_f64();
        let tokens = (a.steps * a.batch * a.seq_len) as f64;
        let op = op_time(&config, a, k, &device)?;
        let (forward_ms, backward_ms) = phases(&trainer, &batch(&device, rng_seed)?, &device)?;
        let step_ms = 1e3 * seconds / a.steps as f64;
        println!(
            "{:<4} {:>11} params  {:>10.0} tokens/s  {:>8.1} ms/step (forward+loss {forward_ms:.1}, backward {backward_ms:.1}, optimiser {:.1})  attention op fwd+bwd {:>7.3} ms/layer  (last loss {loss:.3})",
            k.name(),
            params,
            tokens / seconds,
            step_ms,
            step_ms - forward_ms - backward_ms,
            op
        );
        rows.push((k, tokens / seconds, op));
    }
    if let (Some(first), true) = (rows.first(), rows.len() > 1) {
        for r in &rows[1..] {
            println!(
                "{} / {}: training throughput {:.2}x, attention op time {:.2}x",
                first.0.name(),
                r.0.name(),
                first.1 / r.1,
                r.2 / first.2
            );
        }
    }
    Ok(())
}

/// Times in ms of the forward with the loss, and of the backward, of one batch (each waited for).
fn phases(trainer: &Trainer, batch: &Tensor, dev: &Device) -> Result<(f64, f64)> {
    dev.synchronize()?;
    let clock = Instant::now();
    let loss = doge::train::lm_loss(trainer.model(), batch)?;
    dev.synchronize()?;
    let forward = clock.elapsed().as_secs_f64() * 1e3;
    let clock = Instant::now();
    let grads = loss.backward()?;
    dev.synchronize()?;
    let backward = clock.elapsed().as_secs_f64() * 1e3;
    drop(grads);
    Ok((forward, backward))
}

fn train_config(total_steps: usize) -> TrainConfig {
    TrainConfig {
        schedule: WsdSchedule {
            peak_lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 1,
            decay_steps: 0,
            total_steps,
        },
        adamw: AdamWParams::default(),
        clip_norm: 1.0,
    }
}

/// Median time in ms of the layer's attention op alone (bf16 on CUDA, the model's dtype on the
/// CPU), forward and backward through candle, at the model's shape with this kind's window.
fn op_time(config: &DogeConfig, a: &TrainBenchArgs, k: Kind, dev: &Device) -> Result<f64> {
    let dtype = if dev.is_cuda() {
        DType::BF16
    } else {
        DType::F32
    };
    let (hq, hkv, d, n) = (
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim(),
        a.seq_len,
    );
    let var = |dims: &[usize], dtype: DType| -> Result<Var> {
        Ok(Var::from_tensor(
            &Tensor::randn(0f32, 1.0, dims, dev)?.to_dtype(dtype)?,
        )?)
    };
    let (q, kk, v) = (
        var(&[a.batch, n, hq, d], dtype)?,
        var(&[a.batch, n, hkv, d], dtype)?,
        var(&[a.batch, n, hkv, d], dtype)?,
    );
    let (bias, window) = match k {
        Kind::Dma => (var(&[a.batch, hkv, n], DType::F32)?, a.window),
        Kind::Swa => (Var::zeros((a.batch, hkv, n), DType::F32, dev)?, a.window),
        Kind::Mha => (Var::zeros((a.batch, hkv, n), DType::F32, dev)?, n),
    };
    let params = dma::Params::new(window);
    let mut times = Vec::new();
    for rep in 0..7 {
        dev.synchronize()?;
        let clock = Instant::now();
        let out = dma_candle::dma_attention(&q, &kk, &v, &bias, &params)?;
        // Sums over the head dim and the heads first: candle reduces with one CTA per output,
        // so `sum_all` of the whole output alone would take longer than the attention.
        let loss = out.to_dtype(DType::F32)?.sum(3)?.sum(2)?.sum_all()?;
        let grads = loss.backward()?;
        drop(grads);
        dev.synchronize()?;
        if rep > 1 {
            times.push(clock.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
