//! The CPU backend: multi-threaded (rayon) and tiled by blocks of query rows or keys. Work per
//! head is O(N·w·D); memory is linear in N.

mod backward;
mod forward;
mod tasks;

pub use backward::backward;
pub use forward::forward;

use crate::selection::KeySelection;
use crate::{Element, Params, Problem, Result};
use rayon::prelude::*;

/// Query rows (forward, dq) or keys (dk, dv, dbias) per parallel task.
pub(crate) const BLOCK: usize = 64;

/// The tensors of a call. q `[.., Hq, D]`, k and v `[.., Hkv, D]`, bias `[.., Hb, Nk]` (f32),
/// laid out as the [`Shape`](crate::Shape) says.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a, T> {
    pub q: &'a [T],
    pub k: &'a [T],
    pub v: &'a [T],
    pub bias: &'a [f32],
}

impl<T: Element> Inputs<'_, T> {
    pub(crate) fn check(&self, problem: &Problem) -> Result<()> {
        problem.check_rows("q", "q", self.q.len())?;
        problem.check_rows("k", "k", self.k.len())?;
        problem.check_rows("v", "k", self.v.len())?;
        problem.check_bias(self.bias)
    }
}

/// What the forward returns: `out` like q, `lse` `[.., Hq, Nq]` in f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward<T> {
    pub out: Vec<T>,
    pub lse: Vec<f32>,
}

/// What the backward returns: gradients of q, k, v in their dtype and of the bias in f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients<T> {
    pub dq: Vec<T>,
    pub dk: Vec<T>,
    pub dv: Vec<T>,
    pub dbias: Vec<f32>,
}

/// Validates a call and selects its keys: the problem and the selection of every (sequence,
/// bias head), indexed `sequence * Hb + bias_head`.
fn prepare<T: Element>(
    params: &Params,
    shape: &crate::Shape,
    inputs: &Inputs<'_, T>,
) -> Result<(Problem, Vec<KeySelection>)> {
    params.validate()?;
    let problem = shape.problem()?;
    inputs.check(&problem)?;
    let selections = select_all(params, &problem, inputs.bias);
    Ok((problem, selections))
}

fn select_all(params: &Params, problem: &Problem, bias: &[f32]) -> Vec<KeySelection> {
    let hb = problem.heads.bias;
    (0..problem.sequences.len() * hb)
        .into_par_iter()
        .map(|i| {
            let seq = &problem.sequences[i / hb];
            let keys = &bias[problem.bias_range(seq, i % hb)];
            KeySelection::new(keys, seq.nq, params.window, params.causal, BLOCK)
        })
        .collect()
}

/// Converts one row of `D` elements to f32 into `dst`.
#[inline]
fn load_row<T: Element>(src: &[T], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// Dot product with independent partial sums, so the compiler vectorises it.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `y += alpha * x`.
#[inline]
fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}
