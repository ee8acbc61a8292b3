//! Multi-query associative recall examples, built as Zoology (Arora et al. 2023) defines them:
//! the key-value pairs first, then each key queried once at a place drawn with a power-law gap,
//! every other position a random token that is none of the example's keys. Only the position
//! of a queried key carries a label: the model's output there must be that key's value (the
//! next-token prediction right after the key).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fmt;

/// The label of a position the loss and the accuracy ignore.
pub const IGNORE: i64 = -100;

/// The shape of a task: sizes and the power-law exponent of the query gaps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskSpec {
    pub vocab: usize,
    pub seq_len: usize,
    pub kv_pairs: usize,
    /// Gap g (in query slots, 1-based) is drawn with weight g^(power_a - 1); 1 is uniform.
    pub power_a: f64,
}

/// Why a task cannot be built.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskError {
    NoPairs,
    TooManyPairsForLength { kv_pairs: usize, seq_len: usize },
    TooManyPairsForVocab { kv_pairs: usize, vocab: usize },
    PowerA(f64),
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TaskError::NoPairs => write!(f, "--kv-pairs must be at least 1"),
            TaskError::TooManyPairsForLength { kv_pairs, seq_len } => write!(
                f,
                "--kv-pairs {kv_pairs} does not fit --seq-len {seq_len}: the pairs take 2 tokens \
                 each and their queries 2 slots each, so seq_len must be at least 4 * kv_pairs \
                 = {}",
                4 * kv_pairs
            ),
            TaskError::TooManyPairsForVocab { kv_pairs, vocab } => write!(
                f,
                "--kv-pairs {kv_pairs} does not fit --vocab {vocab}: keys are distinct tokens \
                 from 1 to vocab/2 - 1 (and filler needs tokens that are no key), so vocab must \
                 be at least {}",
                2 * kv_pairs + 2
            ),
            TaskError::PowerA(a) => write!(f, "--power-a must be in (0, 1], got {a}"),
        }
    }
}

impl std::error::Error for TaskError {}

/// One example: `inputs` token ids and `labels` (the expected next token, or [`IGNORE`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub inputs: Vec<u32>,
    pub labels: Vec<i64>,
}

impl TaskSpec {
    /// Checks that the sizes allow an example.
    pub fn validate(&self) -> Result<(), TaskError> {
        let (kv, n, v) = (self.kv_pairs, self.seq_len, self.vocab);
        if kv == 0 {
            return Err(TaskError::NoPairs);
        }
        if kv.saturating_mul(4) > n {
            return Err(TaskError::TooManyPairsForLength {
                kv_pairs: kv,
                seq_len: n,
            });
        }
        // Keys come from 1..vocab/2 (0 stays out, as in Zoology), values from vocab/2..vocab.
        if v / 2 < kv + 1 || v - v / 2 < kv {
            return Err(TaskError::TooManyPairsForVocab {
                kv_pairs: kv,
                vocab: v,
            });
        }
        if !(self.power_a > 0.0 && self.power_a <= 1.0) {
            return Err(TaskError::PowerA(self.power_a));
        }
        Ok(())
    }

    /// Tokens of the key-value section.
    pub fn context_len(&self) -> usize {
        2 * self.kv_pairs
    }

    /// Slots a query can take: every other position after the key-value section.
    fn query_slots(&self) -> usize {
        (self.seq_len - self.context_len()) / 2
    }

    /// `count` examples from `seed` (the same seed gives the same examples).
    pub fn generate(&self, count: usize, seed: u64) -> Result<Vec<Example>, TaskError> {
        self.validate()?;
        let weights = self.gap_weights();
        let mut rng = StdRng::seed_from_u64(seed);
        Ok((0..count)
            .map(|_| self.example(&weights, &mut rng))
            .collect())
    }

    /// Weight of each query slot (0-based gap g has weight (g + 1)^(power_a - 1)).
    fn gap_weights(&self) -> Vec<f64> {
        (1..=self.query_slots())
            .map(|g| (g as f64).powf(self.power_a - 1.0))
            .collect()
    }

    fn example(&self, weights: &[f64], rng: &mut StdRng) -> Example {
        let (n, half) = (self.seq_len, self.vocab / 2);
        let keys = distinct(rng, 1, half, self.kv_pairs);
        let values = distinct(rng, half, self.vocab, self.kv_pairs);
        let gaps = weighted_distinct(rng, weights, self.kv_pairs);
        let mut inputs: Vec<Option<u32>> = vec![None; n];
        let mut labels = vec![IGNORE; n];
        for (i, (&k, &v)) in keys.iter().zip(&values).enumerate() {
            inputs[2 * i] = Some(k);
            inputs[2 * i + 1] = Some(v);
        }
        let start = self.context_len();
        for (i, &g) in gaps.iter().enumerate() {
            let pos = start + 2 * g;
            inputs[pos] = Some(keys[i]);
            labels[pos] = i64::from(values[i]);
        }
        let inputs = inputs
            .into_iter()
            .map(|t| t.unwrap_or_else(|| filler(rng, self.vocab, &keys)))
            .collect();
        Example { inputs, labels }
    }
}

/// `count` distinct tokens from `lo..hi`, in random order (a partial Fisher-Yates shuffle).
fn distinct(rng: &mut StdRng, lo: usize, hi: usize, count: usize) -> Vec<u32> {
    let mut pool: Vec<u32> = (lo as u32..hi as u32).collect();
    for i in 0..count {
        let j = rng.random_range(i..pool.len());
        pool.swap(i, j);
    }
    pool.truncate(count);
    pool
}

/// `count` distinct indices drawn one after another with probability proportional to
/// `weights` among those not drawn yet.
fn weighted_distinct(rng: &mut StdRng, weights: &[f64], count: usize) -> Vec<usize> {
    let mut w = weights.to_vec();
    let mut total: f64 = w.iter().sum();
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut r = rng.random::<f64>() * total;
        let mut pick = None;
        for (i, &wi) in w.iter().enumerate() {
            if wi == 0.0 {
                continue;
            }
            pick = Some(i);
            if r < wi {
                break;
            }
            r -= wi;
        }
        // `pick` is the last free index when rounding left r past the end.
        let i = pick.unwrap_or(0);
        total -= w[i];
        w[i] = 0.0;
        out.push(i);
    }
    out
}

/// A random token that is none of `keys`.
fn filler(rng: &mut StdRng, vocab: usize, keys: &[u32]) -> u32 {
    loop {
        let t = rng.random_range(0..vocab as u32);
        if !keys.contains(&t) {
            return t;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn spec(vocab: usize, seq_len: usize, kv_pairs: usize) -> TaskSpec {
        TaskSpec {
            vocab,
            seq_len,
            kv_pairs,
            power_a: 0.01,
        }
    }

    fn check(spec: &TaskSpec, e: &Example) {
        let (n, half, kv) = (spec.seq_len, spec.vocab as u32 / 2, spec.kv_pairs);
        assert_eq!(e.inputs.len(), n);
        assert_eq!(e.labels.len(), n);
        let mut value_of = HashMap::new();
        for i in 0..kv {
            let (k, v) = (e.inputs[2 * i], e.inputs[2 * i + 1]);
            assert!(k >= 1 && k < half, "key {k} outside the lower half");
            assert!(
                v >= half && v < spec.vocab as u32,
                "value {v} outside the upper half"
            );
            assert!(value_of.insert(k, v).is_none(), "key {k} twice");
        }
        let mut queried = 0;
        for p in spec.context_len()..n {
            let t = e.inputs[p];
            match value_of.get(&t) {
                Some(&v) => {
                    queried += 1;
                    assert_eq!((p - spec.context_len()) % 2, 0, "query off its slot");
                    assert_eq!(e.labels[p], i64::from(v), "label of query at {p}");
                }
                None => assert_eq!(e.labels[p], IGNORE, "label on filler at {p}"),
            }
        }
        assert_eq!(queried, kv, "each key queried once");
        assert!(e.labels[..spec.context_len()].iter().all(|&l| l == IGNORE));
    }

    #[test]
    fn examples_keep_the_invariants_on_fresh_seeds() {
        let seed: u64 = rand::random();
        for s in [
            spec(8192, 64, 8),
            spec(64, 32, 8),
            spec(20, 40, 9),
            spec(256, 65, 4),
        ] {
            for e in s.generate(50, seed).unwrap() {
                check(&s, &e);
            }
        }
    }

    #[test]
    fn a_seed_fixes_the_examples_and_seeds_differ() {
        let s = spec(512, 64, 8);
        assert_eq!(s.generate(20, 7).unwrap(), s.generate(20, 7).unwrap());
        assert_ne!(s.generate(20, 7).unwrap(), s.generate(20, 8).unwrap());
    }

    #[test]
    fn gaps_favour_early_queries() {
        let s = spec(8192, 256, 4);
        let mut early = 0;
        let mut late = 0;
        for e in s.generate(400, 3).unwrap() {
            for (p, &l) in e.labels.iter().enumerate() {
                if l != IGNORE {
                    match p < s.context_len() + (s.seq_len - s.context_len()) / 2 {
                        true => early += 1,
                        false => late += 1,
                    }
                }
            }
        }
        assert!(early > 2 * late, "early {early}, late {late}");
        let uniform = TaskSpec { power_a: 1.0, ..s };
        assert!(uniform.generate(1, 0).is_ok());
    }

    #[test]
    fn sizes_that_do_not_fit_are_errors() {
        assert_eq!(
            spec(8192, 31, 8).validate(),
            Err(TaskError::TooManyPairsForLength {
                kv_pairs: 8,
                seq_len: 31
            })
        );
        assert_eq!(
            spec(17, 64, 8).validate(),
            Err(TaskError::TooManyPairsForVocab {
                kv_pairs: 8,
                vocab: 17
            })
        );
        assert!(spec(18, 64, 8).validate().is_ok());
        assert_eq!(spec(64, 64, 0).validate(), Err(TaskError::NoPairs));
        let bad = TaskSpec {
            power_a: 0.0,
            ..spec(64, 64, 4)
        };
        assert_eq!(bad.validate(), Err(TaskError::PowerA(0.0)));
        assert!(spec(8192, 31, 8).generate(1, 0).is_err());
    }
}
