//! The MQAR model (a small Doge with the chosen attention, weights drawn from the run's seed)
//! and its loss on the answer positions only.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var, D};
use doge::{AttentionKind, DogeConfig, DogeForCausalLM, ModelOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The sizes of the model.
#[derive(Debug, Clone, Copy)]
pub struct ModelSpec {
    pub kind: AttentionKind,
    pub vocab: usize,
    pub seq_len: usize,
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    pub window: usize,
    /// Standard deviation of the initial `A` (0: Doge's constant 0).
    pub a_std: f64,
}

/// A fresh Doge of `spec` (MLP width 2 * d_model), its matrices ~ N(0, 0.02) from `seed`.
pub fn build(spec: &ModelSpec, seed: u64, device: &Device) -> Result<DogeForCausalLM> {
    let mut config = DogeConfig::new(
        spec.vocab,
        spec.d_model,
        2 * spec.d_model,
        spec.layers,
        spec.heads,
        spec.heads,
    );
    config.max_position_embeddings = spec.seq_len;
    config.keep_window_size = spec.window;
    let options = ModelOptions {
        kind: spec.kind,
        ..Default::default()
    };
    let model = DogeForCausalLM::new(config, options, device)?;
    reseed(&model, seed, spec.a_std)?;
    Ok(model)
}

/// Redraws every matrix from `seed` (candle's CPU generator cannot be seeded), so a run is
/// repeatable, and each `A` from N(0, a_std) when `a_std` > 0; the other vectors (norms,
/// residual scales) keep their constant initial values.
pub(crate) fn reseed(model: &DogeForCausalLM, seed: u64, a_std: f64) -> Result<()> {
    let std = model.config().initializer_range;
    redraw(model, seed, |name, var| {
        match (var.rank(), name.ends_with(".A")) {
            (2, _) => Some(std),
            (_, true) if a_std > 0.0 => Some(a_std),
            _ => None,
        }
    })
}

/// Draws each layer's `A` from N(0, a_std) (from `seed`). Doge starts `A` at 0, where every
/// key's bias is equal and DMA keeps exactly sliding-window attention's keys; a random `A` makes
/// the selection start from the values.
pub fn draw_a(model: &DogeForCausalLM, seed: u64, a_std: f64) -> Result<()> {
    redraw(model, seed, |name, _| name.ends_with(".A").then_some(a_std))
}

/// Sets each variable for which `scale` gives a standard deviation to N(0, that) draws, in the
/// order of the variables' names, from one generator seeded with `seed`.
fn redraw(
    model: &DogeForCausalLM,
    seed: u64,
    scale: impl Fn(&str, &Var) -> Option<f64>,
) -> Result<()> {
    let data = model
        .vars()
        .data()
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = StdRng::seed_from_u64(seed);
    for name in names {
        let var = &data[name];
        let Some(std) = scale(name, var) else {
            continue;
        };
        let values: Vec<f32> = (0..var.elem_count())
            .map(|_| (normal(&mut rng) * std) as f32)
            .collect();
        var.set(&Tensor::from_vec(values, var.shape(), var.device())?)?;
    }
    Ok(())
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Whether each row of `logits` `[M, vocab]` has its largest logit at `targets` `[M]`.
pub fn hit_mask(logits: &Tensor, targets: &Tensor) -> Result<Vec<bool>> {
    let hits = logits
        .argmax(D::Minus1)?
        .eq(targets)?
        .to_dtype(DType::U32)?;
    Ok(hits.to_vec1::<u32>()?.into_iter().map(|h| h == 1).collect())
}

/// How many rows of `logits` `[M, vocab]` have their largest logit at `targets` `[M]`.
pub fn correct(logits: &Tensor, targets: &Tensor) -> Result<usize> {
    let hits = logits
        .argmax(D::Minus1)?
        .eq(targets)?
        .to_dtype(DType::U32)?
        .sum_all()?;
    Ok(hits.to_scalar::<u32>()? as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> DogeForCausalLM {
        let config = DogeConfig::new(64, 32, 64, 1, 2, 1);
        DogeForCausalLM::new(config, ModelOptions::default(), &Device::Cpu).unwrap()
    }

    fn values(model: &DogeForCausalLM) -> Vec<(String, Vec<f32>)> {
        let data = model.vars().data().lock().unwrap();
        let mut out: Vec<(String, Vec<f32>)> = data
            .iter()
            .map(|(name, var)| {
                let v = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
                (name.clone(), v)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Two models drawn by candle's unseeded generator end up equal once reseeded with one seed
    /// (the selftest's Doge check and `mqar` rely on it), and differ under another seed.
    #[test]
    fn reseed_repeats_under_a_seed() {
        let (a, b, c) = (tiny(), tiny(), tiny());
        reseed(&a, 7, 1.0).unwrap();
        reseed(&b, 7, 1.0).unwrap();
        reseed(&c, 8, 1.0).unwrap();
        let (va, vb, vc) = (values(&a), values(&b), values(&c));
        assert_eq!(va, vb);
        let differ = va.iter().zip(&vc).filter(|(x, y)| x.1 != y.1).count();
        let matrices = va
            .iter()
            .filter(|(name, _)| name.ends_with("proj.weight"))
            .count();
        assert!(
            differ >= matrices && matrices > 0,
            "{differ} of {} differ",
            va.len()
        );
    }
}
