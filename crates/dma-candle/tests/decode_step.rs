//! Timing (ignored; on a CUDA machine): batched generation steps over a KV cache with room to
//! grow. `dma_decode_step` reads the cache's filled prefix in place (a padded layout); the same
//! step on contiguous copies of that prefix is what it did before (a copy of k, v and the bias
//! every step). Run: `cargo test --release -p dma-candle --features cuda --test decode_step --
//! --ignored --nocapture`.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Result, Tensor};
use dma::Params;
use dma_candle::{dma_decode_step, DecodeState};
use std::time::Instant;

/// Median milliseconds of `step` over `reps` calls after 5 warm-up calls, each waited for.
fn median_ms(dev: &Device, reps: usize, mut step: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..5 {
        step()?;
    }
    dev.synchronize()?;
    let mut ms = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        step()?;
        dev.synchronize()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms[reps / 2])
}

/// Hq = 32, Hkv = Hb = 8, D = 128, w = 2048 (the decode benchmark's shape), bf16; the cache holds
/// `n` keys of a capacity of the next power of two above.
#[test]
#[ignore = "timing, run on the GPU with --ignored"]
fn bench_cache_step() -> Result<()> {
    let Ok(dev) = Device::new_cuda(0) else {
        eprintln!("no CUDA device: skipped");
        return Ok(());
    };
    let (hq, hkv, d) = (32usize, 8usize, 128usize);
    let params = Params::new(2048);
    for (b, n) in [(1usize, 32768usize), (4, 8192), (4, 32768), (8, 32768)] {
        let cap = (n + 1).next_power_of_two();
        let k_all = Tensor::randn(0f32, 1.0, (b, cap, hkv, d), &dev)?.to_dtype(DType::BF16)?;
        let v_all = Tensor::randn(0f32, 1.0, (b, cap, hkv, d), &dev)?.to_dtype(DType::BF16)?;
        let bias_all = Tensor::randn(0f32, 2.0, (b, hkv, cap), &dev)?;
        let q = Tensor::randn(0f32, 1.0, (b, 1, hq, d), &dev)?.to_dtype(DType::BF16)?;
        let (k, v, bias) = (
            k_all.narrow(1, 0, n)?,
            v_all.narrow(1, 0, n)?,
            bias_all.narrow(2, 0, n)?,
        );
        let mut in_place = DecodeState::new();
        let t_in_place = median_ms(&dev, 50, || {
            dma_decode_step(&q, &k, &v, &bias, &params, &mut in_place).map(drop)
        })?;
        let mut copied = DecodeState::new();
        let t_copied = median_ms(&dev, 50, || {
            let (k, v, bias) = (k.contiguous()?, v.contiguous()?, bias.contiguous()?);
            dma_decode_step(&q, &k, &v, &bias, &params, &mut copied).map(drop)
        })?;
        println!(
            "BENCH cache step B={b} ctx={n} capacity={cap} Hq={hq} Hkv={hkv} D={d} w=2048 bf16: \
             in place {t_in_place:.4} ms, on copies of the prefix {t_copied:.4} ms"
        );
    }
    Ok(())
}
