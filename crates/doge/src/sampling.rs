//! Choosing the next token from logits: greedy (temperature 0) or temperature and nucleus
//! (top-p) sampling from a seeded generator, so a run repeats exactly under the same seed.

use crate::{Error, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How tokens are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 for greedy; otherwise logits are divided by it before the softmax.
    pub temperature: f64,
    /// Keep the smallest set of most likely tokens whose probabilities add up to at least
    /// `top_p` (1 keeps all). In `(0, 1]`.
    pub top_p: f64,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// A token chooser with its own random state.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        if !(params.temperature >= 0.0 && params.temperature.is_finite()) {
            return Err(Error::Sampling(format!(
                "temperature must be a finite number >= 0, got {}",
                params.temperature
            )));
        }
        if !(params.top_p > 0.0 && params.top_p <= 1.0) {
            return Err(Error::Sampling(format!(
                "top_p must be in (0, 1], got {}",
                params.top_p
            )));
        }
        Ok(Sampler {
            params,
            rng: StdRng::seed_from_u64(params.seed),
        })
    }

    /// The next token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(Error::Sampling("no logits".into()));
        }
        if logits.iter().any(|x| x.is_nan()) {
            return Err(Error::Sampling("the logits hold NaN".into()));
        }
        if self.params.temperature == 0.0 {
            return Ok(argmax(logits));
        }
        // Probabilities in f64, most likely first (ties: the lower id first).
        let t = self.params.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l as f64 - max) / t).exp()))
            .collect();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let total: f64 = probs.iter().map(|p| p.1).sum();
        // The nucleus: the shortest prefix whose mass reaches top_p.
        let mut mass = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            mass += p.1 / total;
            if mass >= self.params.top_p {
                keep = i + 1;
                break;
            }
        }
        let kept = &probs[..keep];
        let kept_total: f64 = kept.iter().map(|p| p.1).sum();
        let mut u = self.rng.random::<f64>() * kept_total;
        for &(id, p) in kept {
            if u < p {
                return Ok(id);
            }
            u -= p;
        }
        Ok(kept[kept.len() - 1].0)
    }
}

/// The index of the largest logit (the first one among equals).
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f64, top_p: f64, seed: u64) -> Sampler {
        Sampler::new(SamplingParams {
            temperature,
            top_p,
            seed,
        })
        .unwrap()
    }

    #[test]
    fn greedy_takes_the_first_largest() {
        let mut s = sampler(0.0, 1.0, 0);
        assert_eq!(s.sample(&[0.5, 2.0, -1.0, 2.0]).unwrap(), 1);
        assert_eq!(s.sample(&[f32::NEG_INFINITY, -3.0]).unwrap(), 1);
    }

    #[test]
    fn top_p_keeps_the_nucleus_only() {
        // Probabilities 0.5, 0.3, 0.2 (logits are their logs, temperature 1).
        let logits = [0.2f32.ln(), 0.5f32.ln(), 0.3f32.ln()];
        let mut counts = [0usize; 3];
        let mut s = sampler(1.0, 0.75, 1);
        for _ in 0..4000 {
            counts[s.sample(&logits).unwrap() as usize] += 1;
        }
        // top_p 0.75 keeps {1, 2} (0.5 + 0.3 >= 0.75), renormalised to 5/8 and 3/8.
        assert_eq!(counts[0], 0);
        let share = counts[1] as f64 / 4000.0;
        assert!((share - 0.625).abs() < 0.03, "{counts:?}");
        // A tiny top_p is greedy.
        let mut s = sampler(1.0, 1e-9, 2);
        assert!((0..50).all(|_| s.sample(&logits).unwrap() == 1));
    }

    #[test]
    fn bad_logits_and_params_are_errors() {
        let mut s = sampler(1.0, 1.0, 0);
        assert!(s.sample(&[]).is_err());
        assert!(s.sample(&[1.0, f32::NAN]).is_err());
        assert!(Sampler::new(SamplingParams {
            temperature: f64::INFINITY,
            top_p: 1.0,
            seed: 0
        })
        .is_err());
    }
}
