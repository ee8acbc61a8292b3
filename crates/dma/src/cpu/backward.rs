//! Backward in one query-major pass, like the forward: each block of query rows gathers its
//! candidate keys once, computes its rows' dq, and sums the block's contributions to dk, dv and
//! dbias into tile-sized partials. Partials are added into the full gradients in block order,
//! wave by wave, so the result is deterministic and no thread writes another's memory.

use super::forward::{load_scaled, KeyTile};
use super::tasks::{blocks, split_rows, Block};
use super::{axpy, dot, load_row, prepare, Gradients, Inputs};
use crate::selection::KeySelection;
use crate::{Element, Params, Problem, Result, Shape};
use rayon::prelude::*;

/// Computes the gradients of q, k, v and bias on the CPU, given the forward's `out` and `lse`
/// and the gradient `dout` of the output (same layout as q).
///
/// `Delta_i = <dout_i, out_i>` (SPEC.md) is computed here as the equal sum
/// `sum_j P_ij <dout_i, v_j>` in f32, from the same values as dS, so that `out` rounded to bf16
/// or f16 adds no cancellation error; `out` is checked for its shape and kept in the signature
/// so every backend (FlashAttention-style GPU kernels read Delta from it) takes the same inputs.
///
/// The selection is a step function of the bias and gets no gradient (SPEC.md, "Gradients").
pub fn backward<T: Element>(
    params: &Params,
    shape: &Shape,
    inputs: &Inputs<'_, T>,
    out: &[T],
    lse: &[f32],
    dout: &[T],
) -> Result<Gradients<T>> {
    let (problem, selections) = prepare(params, shape, inputs)?;
    problem.check_rows("out", "q", out.len())?;
    problem.check_rows("dout", "q", dout.len())?;
    problem.check_len("lse", problem.lse_len(), lse.len())?;
    let kernel = Kernel {
        problem: &problem,
        inputs,
        lse,
        dout,
        selections: &selections,
        scale: params.scale_for(problem.head_dim),
    };

    let mut dq = vec![T::from_f32(0.0); problem.q_len()];
    let mut sums = KeyGradients {
        dk: vec![0.0; problem.k_len()],
        dv: vec![0.0; problem.k_len()],
        dbias: vec![0.0; problem.bias_len()],
    };
    let row_blocks = blocks(&problem, false);
    let q_row = problem.heads.q * problem.head_dim;
    let mut jobs: Vec<(&Block, &mut [T])> = row_blocks
        .iter()
        .zip(split_rows(&mut dq, q_row, &row_blocks))
        .collect();
    // A wave of blocks runs in parallel; its partials (bounded by the wave, not by N) are then
    // added in block order.
    let wave = 2 * rayon::current_num_threads();
    while !jobs.is_empty() {
        let batch: Vec<_> = jobs.drain(..wave.min(jobs.len())).collect();
        let partials: Vec<Vec<Partial>> = batch
            .into_par_iter()
            .map(|(b, dq)| kernel.block(b, dq))
            .collect();
        for partial in partials.iter().flatten() {
            partial.add_into(&problem, &mut sums);
        }
    }

    let to_t = |xs: Vec<f32>| xs.into_par_iter().map(T::from_f32).collect();
    Ok(Gradients {
        dq,
        dk: to_t(sums.dk),
        dv: to_t(sums.dv),
        dbias: sums.dbias,
    })
}

/// dk, dv and dbias accumulated in f32.
struct KeyGradients {
    dk: Vec<f32>,
    dv: Vec<f32>,
    dbias: Vec<f32>,
}

/// One block's contributions to the gradients of its candidate keys, for one kv head and bias
/// head (the query heads of a group that share both share one partial).
struct Partial<'a> {
    seq: usize,
    kv_head: usize,
    bias_head: usize,
    keys: &'a [u32],
    dk: Vec<f32>,
    dv: Vec<f32>,
    dbias: Vec<f32>,
}

impl Partial<'_> {
    fn add_into(&self, problem: &Problem, sums: &mut KeyGradients) {
        let d = problem.head_dim;
        let seq = &problem.sequences[self.seq];
        let row = problem.heads.kv * d;
        let dbias = &mut sums.dbias[problem.bias_range(seq, self.bias_head)];
        for (c, &j) in self.keys.iter().enumerate() {
            let at = (seq.k_start + j as usize) * row + self.kv_head * d;
            axpy(1.0, &self.dk[c * d..(c + 1) * d], &mut sums.dk[at..at + d]);
            axpy(1.0, &self.dv[c * d..(c + 1) * d], &mut sums.dv[at..at + d]);
            dbias[j as usize] += self.dbias[c];
        }
    }
}

struct Kernel<'a, T> {
    problem: &'a Problem,
    inputs: &'a Inputs<'a, T>,
    lse: &'a [f32],
    dout: &'a [T],
    selections: &'a [KeySelection],
    scale: f32,
}

impl<'s, T: Element> Kernel<'s, T> {
    /// One block of query rows, all heads: writes dq, returns the key-side partials.
    fn block(&self, b: &Block, dq: &mut [T]) -> Vec<Partial<'s>> {
        let p = self.problem;
        let d = p.head_dim;
        let seq = &p.sequences[b.seq];
        let mut tile = KeyTile::default();
        let mut partials: Vec<Partial<'s>> = Vec::new();
        let (mut q, mut g, mut acc) = (vec![0.0f32; d], vec![0.0f32; d], vec![0.0f32; d]);
        // (candidate, P_ij, dP_ij) of the keys one row keeps.
        let mut kept: Vec<(usize, f32, f32)> = Vec::new();
        for h in 0..p.heads.q {
            let (hb, hk) = (p.bias_head(h), p.kv_head(h));
            let sel = &self.selections[b.seq * p.heads.bias + hb];
            let keys = sel.candidates(b.index);
            tile.gather(p, self.inputs, b.seq, hb, hk, keys);
            if partials
                .last()
                .is_none_or(|x| (x.bias_head, x.kv_head) != (hb, hk))
            {
                partials.push(Partial {
                    seq: b.seq,
                    kv_head: hk,
                    bias_head: hb,
                    keys,
                    dk: vec![0.0; keys.len() * d],
                    dv: vec![0.0; keys.len() * d],
                    dbias: vec![0.0; keys.len()],
                });
            }
            let part = partials.last_mut().expect("pushed above");
            for (i, r) in b.rows.clone().enumerate() {
                let lse = self.lse[p.lse_index(seq, h, r)];
                let at = (seq.q_start + r) * p.heads.q * d + h * d;
                load_scaled(&self.inputs.q[at..at + d], self.scale, &mut q);
                load_row(&self.dout[at..at + d], &mut g);
                acc.fill(0.0);
                kept.clear();
                // Delta = sum_j P_ij dP_ij, which equals <dout_i, out_i> but is taken from the
                // same f32 P and dP as dS: no cancellation error from an out rounded to T.
                let mut delta = 0.0f32;
                if lse.is_finite() {
                    let pos = seq.query_offset() + r as i64;
                    for (c, &j) in keys.iter().enumerate() {
                        if sel.keeps(pos, j as usize) {
                            let prob = (tile.score(&q, c) - lse).exp();
                            let dp = dot(&g, &tile.v[c * d..(c + 1) * d]);
                            delta += prob * dp;
                            kept.push((c, prob, dp));
                        }
                    }
                }
                for &(c, prob, dp) in &kept {
                    let ds = prob * (dp - delta);
                    axpy(ds, &tile.k[c * d..(c + 1) * d], &mut acc);
                    // scale * dS * q, with q already scaled.
                    axpy(ds, &q, &mut part.dk[c * d..(c + 1) * d]);
                    axpy(prob, &g, &mut part.dv[c * d..(c + 1) * d]);
                    part.dbias[c] += ds;
                }
                let o = &mut dq[i * p.heads.q * d + h * d..][..d];
                for (oi, ai) in o.iter_mut().zip(&acc) {
                    *oi = T::from_f32(self.scale * ai);
                }
            }
        }
        partials
    }
}
