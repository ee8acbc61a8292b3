//! Test support: random cases, the f64 dense reference that follows SPEC.md literally, an
//! independent sliding-window formulation, and error measures. The reference is the only place
//! in the project that materialises a mask, and only for small sizes.
#![allow(dead_code)]

pub mod reference;

use dma::{Element, Heads, Params, Shape};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One test problem: geometry and the data, already rounded to the dtype under test and held
/// as f64 for the reference.
#[derive(Debug, Clone)]
pub struct Case {
    pub hq: usize,
    pub hkv: usize,
    pub hb: usize,
    pub d: usize,
    pub window: usize,
    pub causal: bool,
    /// (Nq, Nk) of every sequence.
    pub seqs: Vec<(usize, usize)>,
    /// Packed varlen layout (otherwise dense, all sequences the same length).
    pub varlen: bool,
    pub q: Vec<f64>,
    pub k: Vec<f64>,
    pub v: Vec<f64>,
    pub bias: Vec<f32>,
    pub dout: Vec<f64>,
}

/// How to draw the bias.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BiasKind {
    /// Continuous random values: ties practically never happen.
    Random,
    /// A few distinct values (0.0 and -0.0 among them): many ties, decided by index.
    Ties,
    /// One value for every key: DMA must equal sliding-window attention.
    Constant,
}

#[derive(Debug, Clone)]
pub struct CaseSpec {
    pub hq: usize,
    pub hkv: usize,
    pub hb: usize,
    pub d: usize,
    pub window: usize,
    pub causal: bool,
    pub seqs: Vec<(usize, usize)>,
    pub varlen: bool,
    pub bias: BiasKind,
}

impl CaseSpec {
    pub fn dense(
        b: usize,
        nq: usize,
        nk: usize,
        hq: usize,
        hkv: usize,
        d: usize,
        w: usize,
    ) -> Self {
        CaseSpec {
            hq,
            hkv,
            hb: hkv,
            d,
            window: w,
            causal: true,
            seqs: vec![(nq, nk); b],
            varlen: false,
            bias: BiasKind::Random,
        }
    }

    /// Draws the data from `seed`, rounded to `T`.
    pub fn build<T: Element>(self, seed: u64) -> Case {
        let mut rng = StdRng::seed_from_u64(seed);
        let total_q: usize = self.seqs.iter().map(|s| s.0).sum();
        let total_k: usize = self.seqs.iter().map(|s| s.1).sum();
        // A larger spread of q sometimes, so that softmax rows are peaked as well as flat.
        let q_scale = if rng.random_bool(0.5) { 1.0 } else { 3.0 };
        let mut draw = |n: usize, scale: f64| -> Vec<f64> {
            (0..n)
                .map(|_| round::<T>(scale * rng.random_range(-1.0..1.0)))
                .collect()
        };
        let q = draw(total_q * self.hq * self.d, q_scale);
        let k = draw(total_k * self.hkv * self.d, 1.0);
        let v = draw(total_k * self.hkv * self.d, 1.0);
        let dout = draw(total_q * self.hq * self.d, 1.0);
        let n_bias = total_k * self.hb;
        let bias = match self.bias {
            BiasKind::Random => (0..n_bias)
                .map(|_| rng.random_range(-2.0f32..2.0))
                .collect(),
            BiasKind::Ties => {
                let values = [0.0f32, -0.0, 1.0, -1.5, 0.25];
                (0..n_bias)
                    .map(|_| values[rng.random_range(0..values.len())])
                    .collect()
            }
            BiasKind::Constant => vec![rng.random_range(-2.0f32..2.0); n_bias],
        };
        Case {
            hq: self.hq,
            hkv: self.hkv,
            hb: self.hb,
            d: self.d,
            window: self.window,
            causal: self.causal,
            seqs: self.seqs,
            varlen: self.varlen,
            q,
            k,
            v,
            bias,
            dout,
        }
    }
}

/// `x` rounded to `T` and back.
pub fn round<T: Element>(x: f64) -> f64 {
    T::from_f32(x as f32).to_f32() as f64
}

impl Case {
    pub fn params(&self) -> Params {
        Params::new(self.window).causal(self.causal)
    }

    pub fn scale(&self) -> f64 {
        1.0 / (self.d as f64).sqrt()
    }

    pub fn shape(&self) -> Shape {
        let heads = Heads::new(self.hq, self.hkv).with_bias(self.hb);
        if self.varlen {
            let cu = |pick: fn(&(usize, usize)) -> usize| -> Vec<i32> {
                let mut cu = vec![0i32];
                for s in &self.seqs {
                    cu.push(cu.last().unwrap() + pick(s) as i32);
                }
                cu
            };
            Shape::varlen(cu(|s| s.0), cu(|s| s.1), heads, self.d)
        } else {
            let (nq, nk) = self.seqs[0];
            Shape::dense(self.seqs.len(), nq, nk, heads, self.d)
        }
    }

    pub fn total_q(&self) -> usize {
        self.seqs.iter().map(|s| s.0).sum()
    }

    pub fn total_k(&self) -> usize {
        self.seqs.iter().map(|s| s.1).sum()
    }

    /// First packed row of sequence `s` in q (`keys == false`) or k (`keys == true`).
    pub fn start(&self, s: usize, keys: bool) -> usize {
        self.seqs[..s]
            .iter()
            .map(|x| if keys { x.1 } else { x.0 })
            .sum()
    }

    /// Index of the bias of (sequence `s`, bias head `h`, key `j`), written out from the
    /// layouts in SPEC.md.
    pub fn bias_index(&self, s: usize, h: usize, j: usize) -> usize {
        if self.varlen {
            h * self.total_k() + self.start(s, true) + j
        } else {
            (s * self.hb + h) * self.seqs[0].1 + j
        }
    }

    /// Index of lse of (sequence `s`, query head `h`, query `i`).
    pub fn lse_index(&self, s: usize, h: usize, i: usize) -> usize {
        if self.varlen {
            h * self.total_q() + self.start(s, false) + i
        } else {
            (s * self.hq + h) * self.seqs[0].0 + i
        }
    }

    pub fn to<T: Element>(xs: &[f64]) -> Vec<T> {
        xs.iter().map(|&x| T::from_f32(x as f32)).collect()
    }

    /// Our CPU forward on this case's data as `T`.
    pub fn forward<T: Element>(&self) -> dma::cpu::Forward<T> {
        let (q, k, v) = (
            Self::to::<T>(&self.q),
            Self::to::<T>(&self.k),
            Self::to::<T>(&self.v),
        );
        let inputs = dma::cpu::Inputs {
            q: &q,
            k: &k,
            v: &v,
            bias: &self.bias,
        };
        dma::cpu::forward(&self.params(), &self.shape(), &inputs).expect("valid case")
    }

    /// Our CPU forward then backward on this case's data as `T`.
    pub fn backward<T: Element>(&self) -> (dma::cpu::Forward<T>, dma::cpu::Gradients<T>) {
        let (q, k, v) = (
            Self::to::<T>(&self.q),
            Self::to::<T>(&self.k),
            Self::to::<T>(&self.v),
        );
        let dout = Self::to::<T>(&self.dout);
        let inputs = dma::cpu::Inputs {
            q: &q,
            k: &k,
            v: &v,
            bias: &self.bias,
        };
        let (params, shape) = (self.params(), self.shape());
        let fwd = dma::cpu::forward(&params, &shape, &inputs).expect("valid case");
        let grads = dma::cpu::backward(&params, &shape, &inputs, &fwd.out, &fwd.lse, &dout)
            .expect("valid case");
        (fwd, grads)
    }
}

pub fn as_f64<T: Element>(xs: &[T]) -> Vec<f64> {
    xs.iter().map(|x| x.to_f32() as f64).collect()
}

/// Relative Frobenius error `|a - b| / |b|`; -inf entries must agree exactly and are left out
/// of the norms; NaN anywhere is an infinite error. An all-zero reference compares absolutely.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let (mut num, mut den) = (0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        if x.is_nan() || y.is_nan() {
            return f64::INFINITY;
        }
        if x.is_infinite() || y.is_infinite() {
            if x != y {
                return f64::INFINITY;
            }
            continue;
        }
        num += (x - y) * (x - y);
        den += y * y;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Tolerance of outputs and gradients for inputs of type `T` (the numbers).
pub fn tol<T: Element>() -> f64 {
    match T::DTYPE {
        dma::DType::F32 => 1e-5,
        _ => 1e-2,
    }
}

/// Random geometry: group sizes 1/2/8, both bias-head choices, varied head dims and windows,
/// dense and varlen (with empty sequences), causal and not, all three bias kinds.
pub fn any_spec() -> impl Strategy<Value = CaseSpec> {
    let heads = (
        prop::sample::select(vec![1usize, 2, 3]),
        prop::sample::select(vec![1usize, 2, 8]),
        any::<bool>(),
    );
    let seqs = prop_oneof![
        (1usize..3, 1usize..150, 0usize..150).prop_map(|(b, nq, nk)| (false, vec![(nq, nk); b])),
        prop::collection::vec((0usize..100, 0usize..140), 1..4).prop_map(|s| (true, s)),
    ];
    let bias = prop::sample::select(vec![BiasKind::Random, BiasKind::Ties, BiasKind::Constant]);
    (
        heads,
        prop::sample::select(vec![1usize, 5, 8, 16, 32, 64]),
        1usize..48,
        any::<bool>(),
        seqs,
        bias,
    )
        .prop_map(
            |((hkv, group, per_q), d, window, causal, (varlen, seqs), bias)| {
                let hq = hkv * group;
                CaseSpec {
                    hq,
                    hkv,
                    hb: if per_q { hq } else { hkv },
                    d,
                    window,
                    causal,
                    seqs,
                    varlen,
                    bias,
                }
            },
        )
}
