//! The candle side of `dma selftest --device cuda`: the dma-candle op on CUDA tensors (forward
//! and `loss.backward()`, through candle's autograd) against the same op on CPU tensors, and a
//! Doge model's logits on CUDA against the CPU.

use super::imp::{at_limit, rel_err, Case, Errors, Measured, LIMIT};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use dma::Layout;
use dma_candle::DmaAttention;
use doge::{DogeConfig, DogeForCausalLM, ModelOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The op on CUDA vs CPU: out, and the gradients of q, k, v and bias of `sum(out * g)`.
pub fn op(_: &dma::cuda::Device, case: &Case, seed: u64) -> Result<Errors> {
    let ([batch, seqlen_q, seqlen_k], cuda) = dense_on_cuda(case, seed, "the candle op")?;
    let (h, d) = (case.shape.heads, case.shape.head_dim);
    let cpu = Device::Cpu;
    let randn = |dims: &[usize], dtype: DType| -> Result<Tensor> {
        Ok(Tensor::randn(0f32, 1.0, dims, &cuda)?.to_dtype(dtype)?)
    };
    let q = randn(&[batch, seqlen_q, h.q, d], DType::BF16)?;
    let k = randn(&[batch, seqlen_k, h.kv, d], DType::BF16)?;
    let v = randn(&[batch, seqlen_k, h.kv, d], DType::BF16)?;
    let bias = (randn(&[batch, h.bias, seqlen_k], DType::F32)? * 2.0)?;
    let g = randn(&[batch, seqlen_q, h.q, d], DType::F32)?;
    let run = |dev: &Device| -> Result<Vec<Tensor>> {
        let vars = [&q, &k, &v, &bias].map(|t| t.to_device(dev).and_then(|t| Var::from_tensor(&t)));
        let [q, k, v, bias] = vars.map(|v| v.map_err(anyhow::Error::from));
        let (q, k, v, bias) = (q?, k?, v?, bias?);
        let out = dma_candle::dma_attention(&q, &k, &v, &bias, &case.params)?;
        let loss = (out.to_dtype(DType::F32)? * g.to_device(dev)?)?.sum_all()?;
        let grads = loss.backward()?;
        let mut results = vec![out];
        for var in [&q, &k, &v, &bias] {
            let grad = grads
                .get(var)
                .ok_or_else(|| anyhow::anyhow!("no gradient reached an input"))?;
            results.push(grad.clone());
        }
        results
            .into_iter()
            .map(|t| Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?))
            .collect()
    };
    let got = run(&cuda)?;
    let want = run(&cpu)?;
    let err = |i: usize| -> Result<f64> { Ok(rel_err(&flat(&got[i])?, &flat(&want[i])?)) };
    Ok(at_limit([
        ("out", err(0)?),
        ("dq", err(1)?),
        ("dk", err(2)?),
        ("dv", err(3)?),
        ("dbias", err(4)?),
    ]))
}

/// A dense case's batch, Nq and Nk, and the CUDA device with its generator seeded.
fn dense_on_cuda(case: &Case, seed: u64, check: &str) -> Result<([usize; 3], Device)> {
    let Layout::Dense {
        batch,
        seqlen_q,
        seqlen_k,
    } = case.shape.layout
    else {
        bail!("{check} takes dense tensors");
    };
    let cuda = Device::new_cuda(0)?;
    cuda.set_seed(seed)?;
    Ok(([batch, seqlen_q, seqlen_k], cuda))
}

/// `dma_candle::dma_decode_step` on CUDA, over caches with room to grow (the filled prefix of
/// longer tensors, NaN bias past it) and one `DecodeState` carried across steps (single keys,
/// three at once, and a jump past `STEP_MAX_NEW` that selects again), against the op on the CPU
/// at every step.
pub fn decode_steps(_: &dma::cuda::Device, case: &Case, seed: u64) -> Result<Errors> {
    let ([batch, seqlen_q, seqlen_k], cuda) = dense_on_cuda(case, seed, "the decode steps")?;
    let (h, d) = (case.shape.heads, case.shape.head_dim);
    let randn = |dims: &[usize], dtype: DType| -> Result<Tensor> {
        Ok(Tensor::randn(0f32, 1.0, dims, &cuda)?.to_dtype(dtype)?)
    };
    let growth = [0usize, 1, 1, 3, 1, 100, 1];
    let capacity = seqlen_k + growth.iter().sum::<usize>() + 50;
    let k_all = randn(&[batch, capacity, h.kv, d], DType::BF16)?;
    let v_all = randn(&[batch, capacity, h.kv, d], DType::BF16)?;
    let bias_all = (randn(&[batch, h.bias, capacity], DType::F32)? * 2.0)?;
    let nan = Tensor::full(f32::NAN, (batch, h.bias, capacity), &cuda)?;
    let position = Tensor::arange(0u32, capacity as u32, &cuda)?.broadcast_as(nan.shape())?;
    let mut state = dma_candle::DecodeState::new();
    let (mut len, mut worst) = (seqlen_k, 0.0f64);
    for add in growth {
        len += add;
        let q = randn(&[batch, seqlen_q, h.q, d], DType::BF16)?;
        let k = k_all.narrow(1, 0, len)?;
        let v = v_all.narrow(1, 0, len)?;
        // NaN past the filled prefix: a step that read it would fail (non-finite bias).
        let filled = position.lt(len as u32)?;
        let bias = filled.where_cond(&bias_all, &nan)?.narrow(2, 0, len)?;
        let got = dma_candle::dma_decode_step(&q, &k, &v, &bias, &case.params, &mut state)?;
        let [q, k, v, bias] = [&q, &k, &v, &bias].map(|t| t.to_device(&Device::Cpu));
        let want = dma_candle::dma_attention(&q?, &k?, &v?, &bias?, &case.params)?;
        worst = worst.max(rel_err(
            &flat(&got.to_device(&Device::Cpu)?)?,
            &flat(&want)?,
        ));
    }
    Ok(at_limit([("out (worst of 7 steps)", worst)]))
}

/// `dma_candle::gather_rows` on CUDA vs the CPU: the rows of an embedding table `[8192, 128]`
/// picked by 65536 ids (a tenth of them one id), and the table's gradient of `sum(rows * g)`,
/// which CUDA sums with atomics. (The case only names the check.)
pub fn rows(_: &dma::cuda::Device, _: &Case, seed: u64) -> Result<Errors> {
    let (rows, width, n) = (8192usize, 128usize, 65536usize);
    let mut rng = StdRng::seed_from_u64(seed);
    let ids: Vec<u32> = (0..n)
        .map(|i| match i % 10 {
            0 => 7,
            _ => rng.random_range(0..rows as u32),
        })
        .collect();
    let table = Tensor::randn(0f32, 1.0, (rows, width), &Device::Cpu)?;
    let g = Tensor::randn(0f32, 1.0, (n, width), &Device::Cpu)?;
    let run = |dev: &Device| -> Result<[Vec<f32>; 2]> {
        let table = Var::from_tensor(&table.to_device(dev)?)?;
        let ids = Tensor::from_vec(ids.clone(), n, dev)?;
        let picked = dma_candle::gather_rows(&table, &ids)?;
        let grads = (&picked * g.to_device(dev)?)?.sum_all()?.backward()?;
        let grad = grads
            .get(&table)
            .ok_or_else(|| anyhow::anyhow!("no gradient reached the table"))?;
        Ok([
            flat(&picked.to_device(&Device::Cpu)?)?,
            flat(&grad.to_device(&Device::Cpu)?)?,
        ])
    };
    let [got_rows, got_grad] = run(&Device::new_cuda(0)?)?;
    let [want_rows, want_grad] = run(&Device::Cpu)?;
    Ok(at_limit([
        ("rows", rel_err(&got_rows, &want_rows)),
        ("dtable", rel_err(&got_grad, &want_grad)),
    ]))
}

/// The output of `op` on `inputs` moved to `dev`, and the gradients of `sum(out * g)` reaching
/// each input, as f32 vectors.
fn with_grads(
    dev: &Device,
    inputs: &[&Tensor],
    g: &Tensor,
    op: &dyn Fn(&[Var]) -> candle_core::Result<Tensor>,
) -> Result<Vec<Vec<f32>>> {
    let vars = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_device(dev)?))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let out = op(&vars)?;
    let grads = (&out * g.to_device(dev)?)?.sum_all()?.backward()?;
    let mut results = vec![flat(&out)?];
    for var in &vars {
        let grad = grads
            .get(var)
            .ok_or_else(|| anyhow::anyhow!("no gradient reached an input"))?;
        results.push(flat(grad)?);
    }
    Ok(results)
}

/// The f32 layers around the attention on CUDA vs the CPU, with the gradients of
/// `sum(out * g)` for every input: on activations `[64, 1024, 128]`, `dma_candle::rms_norm`,
/// `silu_mul`, `scale_add`, three `adamw_step`s and `cross_entropy` (rows as logits of 128
/// classes); and a `DmaAttention` layer's projections (hidden 128, Hq = 2,
/// Hkv = 1: RMSNorm of every q and k head, then RoPE at offset 5) with the gradient of its
/// input. All in f32, so held to 1e-4 rather than the op's 1e-2. (The case only names the
/// check.)
pub fn layers(_: &dma::cuda::Device, _: &Case, seed: u64) -> Result<Errors> {
    let cpu = Device::Cpu;
    let cuda = Device::new_cuda(0)?;
    // Drawn on the GPU, whose generator takes a seed (the CPU's does not), then copied over.
    cuda.set_seed(seed)?;
    let randn = |mean: f32, std: f32, dims: &[usize]| -> Result<Tensor> {
        Ok(Tensor::randn(mean, std, dims, &cuda)?.to_device(&cpu)?)
    };
    let dims = [64, 1024, 128];
    let x = randn(0.0, 1.0, &dims)?;
    let u = randn(0.0, 3.0, &dims)?;
    let w = randn(1.0, 0.5, &[128])?;
    let g = randn(0.0, 1.0, &dims)?;
    let mut measured: Vec<(&'static str, f64)> = Vec::new();
    type Op<'a> = &'a dyn Fn(&[Var]) -> candle_core::Result<Tensor>;
    // The op's output and each input's gradient, CUDA against the CPU, under `names`.
    let mut compare = |names: &[&'static str], inputs: &[&Tensor], op: Op| -> Result<()> {
        let got = with_grads(&cuda, inputs, &g, op)?;
        let want = with_grads(&cpu, inputs, &g, op)?;
        for ((name, got), want) in names.iter().zip(&got).zip(&want) {
            measured.push((name, rel_err(got, want)));
        }
        Ok(())
    };
    let norm: Op = &|v| dma_candle::rms_norm(&v[0], &v[1], 1e-6);
    compare(&["rms_norm", "rms_norm dx", "rms_norm dw"], &[&x, &w], norm)?;
    let silu: Op = &|v| dma_candle::silu_mul(&v[0], &v[1]);
    compare(&["silu_mul", "silu_mul da", "silu_mul du"], &[&u, &x], silu)?;
    let residual: Op = &|v| dma_candle::scale_add(&v[0], &v[1], &v[2]);
    let names = ["scale_add", "scale_add dx", "scale_add ds", "scale_add dr"];
    compare(&names, &[&x, &w, &u], residual)?;
    // Three AdamW steps of x's values as weights, with u and g as the gradients.
    let adamw = |dev: &Device| -> Result<Vec<f32>> {
        let theta = x.to_device(dev)?.copy()?;
        let (m, v) = (theta.zeros_like()?, theta.zeros_like()?);
        for (t, grad) in [&u, &g, &u].into_iter().enumerate() {
            let step = dma_candle::AdamWStep {
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                lr: 1e-2,
                weight_decay: 0.1,
                grad_scale: 0.5,
                t: t as i32 + 1,
            };
            dma_candle::adamw_step(&theta, &m, &v, &grad.to_device(dev)?, &step)?;
        }
        flat(&theta)
    };
    measured.push(("adamw", rel_err(&adamw(&cuda)?, &adamw(&cpu)?)));
    // The mean cross-entropy of x's rows as logits of 128 classes, and its gradient.
    let rows = x.elem_count() / 128;
    let mut rng = StdRng::seed_from_u64(seed);
    let targets: Vec<u32> = (0..rows).map(|_| rng.random_range(0..128)).collect();
    let targets = Tensor::from_vec(targets, rows, &cpu)?;
    let loss = |dev: &Device| -> Result<[Vec<f32>; 2]> {
        let logits = Var::from_tensor(&x.reshape((rows, 128))?.to_device(dev)?)?;
        let loss = dma_candle::cross_entropy(&logits, &targets.to_device(dev)?)?;
        let grads = loss.backward()?;
        let dx = grads
            .get(&logits)
            .ok_or_else(|| anyhow::anyhow!("no gradient reached the logits"))?;
        Ok([flat(&loss)?, flat(dx)?])
    };
    let ([loss_got, dx_got], [loss_want, dx_want]) = (loss(&cuda)?, loss(&cpu)?);
    measured.push(("cross_entropy", rel_err(&loss_got, &loss_want)));
    measured.push(("cross_entropy dx", rel_err(&dx_got, &dx_want)));

    let config = dma_candle::DmaAttentionConfig::new(128, 2, 1, 64);
    let layer = |vars: &VarMap, dev: &Device| -> Result<DmaAttention> {
        let vb = VarBuilder::from_varmap(vars, DType::F32, dev);
        Ok(DmaAttention::new(config.clone(), vb)?)
    };
    let (cpu_vars, cuda_vars) = (VarMap::new(), VarMap::new());
    let layers = [layer(&cpu_vars, &cpu)?, layer(&cuda_vars, &cuda)?];
    // The CUDA layer takes the CPU layer's random weights.
    let cpu_weights = cpu_vars
        .data()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for (name, var) in cuda_vars
        .data()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        var.set(&cpu_weights[name].as_tensor().to_device(&cuda)?)?;
    }
    let input = Tensor::randn(0f32, 1.0, (8, 256, 128), &cpu)?;
    let project = |layer: &DmaAttention, dev: &Device| -> Result<[Vec<f32>; 3]> {
        let x = Var::from_tensor(&input.to_device(dev)?)?;
        let (q, k, _) = layer.project(&x, 5)?;
        let loss =
            ((&q * q.ones_like()?.affine(0.5, 0.25)?)?.sum_all()? + (&k * &k)?.sum_all()?)?;
        let grads = loss.backward()?;
        let dx = grads
            .get(&x)
            .ok_or_else(|| anyhow::anyhow!("no gradient reached the input"))?;
        Ok([flat(&q)?, flat(&k)?, flat(dx)?])
    };
    let [want_q, want_k, want_px] = project(&layers[0], &cpu)?;
    let [got_q, got_k, got_px] = project(&layers[1], &cuda)?;
    measured.push(("q", rel_err(&got_q, &want_q)));
    measured.push(("k", rel_err(&got_k, &want_k)));
    measured.push(("dinput", rel_err(&got_px, &want_px)));
    // All f32 on both sides: only the order of sums differs (atomics on CUDA).
    let limit = 1e-4;
    Ok(measured
        .into_iter()
        .map(|(name, error)| Measured { name, error, limit })
        .collect())
}

/// Logits of a small random Doge (weights drawn from the seed, GQA, A randomised so the bias
/// decides the selection, keep_window_size below the length) on CUDA against the CPU, f32
/// weights and bf16 attention on both: a full forward; and the last tokens decoded one at a time
/// with the KV cache (the decode kernels and the kept sets carried between steps) against the
/// GPU's own full forward of those rows.
pub fn doge(_: &dma::cuda::Device, case: &Case, seed: u64) -> Result<Errors> {
    let n = match case.shape.layout {
        Layout::Dense { seqlen_q, .. } => seqlen_q,
        Layout::Varlen { .. } | Layout::Padded { .. } => bail!("the doge check takes a dense case"),
    };
    let mut config = DogeConfig::new(512, 256, 512, 2, 4, 2);
    config.keep_window_size = case.params.window;
    config.max_position_embeddings = n.max(2048);
    let dir = std::env::temp_dir().join(format!("dma-selftest-doge-{}-{seed}", std::process::id()));
    let model = DogeForCausalLM::new(config, ModelOptions::default(), &Device::Cpu)?;
    // Every matrix, and each A ~ N(0, 1), drawn from the seed: `--seed` reproduces the check.
    crate::mqar::model::reseed(&model, seed, 1.0)?;
    model.save(&dir)?;
    // The GPU attends in bf16: so does the CPU model it is compared with, so that the check
    // measures the GPU path, not bf16 rounding.
    let in_bf16 = ModelOptions {
        attention_dtype: Some(DType::BF16),
        ..Default::default()
    };
    let on_cpu = DogeForCausalLM::load(&dir, in_bf16, &Device::Cpu);
    let on_gpu = DogeForCausalLM::load(&dir, ModelOptions::default(), &Device::new_cuda(0)?);
    let on_cpu_f32 = DogeForCausalLM::load(&dir, ModelOptions::default(), &Device::Cpu);
    std::fs::remove_dir_all(&dir).ok();
    let (on_cpu, on_gpu, on_cpu_f32) = (on_cpu?, on_gpu?, on_cpu_f32?);
    let ids: Vec<u32> = (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761) ^ seed as u32) % 512)
        .collect();
    let ids = Tensor::from_vec(ids, (1, n), &Device::Cpu)?;
    let want = on_cpu.forward(&ids)?;
    let exact = on_cpu_f32.forward(&ids)?;
    let gpu_ids = ids.to_device(on_gpu.device())?;
    let got = on_gpu.forward(&gpu_ids)?;
    // Incremental decoding on the GPU (KV cache with per-key bias, the decode kernels): a
    // prefill of all but the last STEPS tokens, then one token at a time, against the CPU's
    // full forward over the same rows.
    const STEPS: usize = 8;
    let mut cache = on_gpu.new_cache();
    on_gpu.forward_cached(&gpu_ids.narrow(1, 0, n - STEPS)?, &mut cache)?;
    let mut rows = Vec::new();
    for i in n - STEPS..n {
        rows.push(on_gpu.forward_cached(&gpu_ids.narrow(1, i, 1)?, &mut cache)?);
    }
    let decoded = Tensor::cat(&rows, 1)?.to_device(&Device::Cpu)?;
    let got = got.to_device(&Device::Cpu)?;
    let last = |t: &Tensor| t.narrow(1, n - STEPS, STEPS);
    // The decoded rows against the GPU's own full forward (the same weights, device and dtype):
    // this isolates the decode path (cache, kept sets, decode kernels) from the rounding that
    // separates the GPU's forward from the CPU's, which the logits check bounds.
    Ok(vec![
        model_level("logits", &got, &want, &exact)?,
        model_level("decoded", &decoded, &last(&got)?, &last(&exact)?)?,
    ])
}

/// The GPU model's error against the CPU model that also attends in bf16 (`want`), held to
/// twice the CPU's own bf16 error against f32 attention (`exact`), or `LIMIT` if that is
/// larger. By the triangle inequality, a GPU path as accurate as the CPU's bf16 path is within
/// 2x of it; a model's logits gather every layer's bf16 rounding, so the op-level limit alone
/// is too tight for some seeds.
fn model_level(
    name: &'static str,
    got: &Tensor,
    want: &Tensor,
    exact: &Tensor,
) -> Result<Measured> {
    let rounding = rel_err(&flat(want)?, &flat(exact)?);
    Ok(Measured {
        name,
        error: rel_err(&flat(got)?, &flat(want)?),
        limit: LIMIT.max(2.0 * rounding),
    })
}

fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}
