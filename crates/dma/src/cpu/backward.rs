//! Backward, in two passes that each own their outputs (no atomics, deterministic):
//! query-major for dq (blocks of query rows, like the forward), and key-major for dk, dv and
//! dbias (blocks of keys; each key is kept by one interval of query rows, so a key visits
//! exactly the rows that keep it).

use super::forward::KeyTile;
use super::tasks::{blocks, par_map_blocks, Block};
use super::{axpy, dot, load_row, select_all, Gradients, Inputs};
use crate::selection::KeySelection;
use crate::{Element, Params, Problem, Result, Shape};
use rayon::prelude::*;

/// Computes the gradients of q, k, v and bias on the CPU, given the forward's `out` and `lse`
/// and the gradient `dout` of the output (same layout as q).
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
    params.validate()?;
    let problem = shape.problem()?;
    inputs.check(&problem)?;
    problem.check_rows("out", "q", out.len())?;
    problem.check_rows("dout", "q", dout.len())?;
    problem.check_len("lse", problem.lse_len(), lse.len())?;

    let selections = select_all(params, &problem, inputs.bias);
    let kernel = Kernel {
        problem: &problem,
        inputs,
        lse,
        dout,
        delta: row_deltas(&problem, out, dout),
        selections: &selections,
        scale: params.scale_for(problem.head_dim),
    };

    let mut dq = vec![T::from_f32(0.0); problem.q_len()];
    let q_row = problem.heads.q * problem.head_dim;
    par_map_blocks(&mut dq, q_row, &blocks(&problem, false), |b, dq| {
        kernel.dq_block(b, dq)
    });

    let kv_row = problem.heads.kv * problem.head_dim;
    let key_blocks = blocks(&problem, true);
    let mut dk = vec![T::from_f32(0.0); problem.k_len()];
    let mut dv = vec![T::from_f32(0.0); problem.k_len()];
    let mut dkv: Vec<(&mut [T], &mut [T])> = Vec::with_capacity(key_blocks.len());
    let (mut rest_k, mut rest_v) = (dk.as_mut_slice(), dv.as_mut_slice());
    for b in &key_blocks {
        let n = b.rows.len() * kv_row;
        let (k_head, k_tail) = rest_k.split_at_mut(n);
        let (v_head, v_tail) = rest_v.split_at_mut(n);
        dkv.push((k_head, v_head));
        (rest_k, rest_v) = (k_tail, v_tail);
    }
    let block_dbias: Vec<Vec<f32>> = key_blocks
        .par_iter()
        .zip(dkv.into_par_iter())
        .map(|(b, (dk, dv))| kernel.dkv_block(b, dk, dv))
        .collect();

    let mut dbias = vec![0.0f32; problem.bias_len()];
    for (b, values) in key_blocks.iter().zip(block_dbias) {
        let seq = &problem.sequences[b.seq];
        for hb in 0..problem.heads.bias {
            let range = problem.bias_range(seq, hb);
            let dst = &mut dbias[range][b.rows.clone()];
            dst.copy_from_slice(&values[hb * b.rows.len()..(hb + 1) * b.rows.len()]);
        }
    }
    Ok(Gradients { dq, dk, dv, dbias })
}

/// `Delta = <dout_i, out_i>` for every query row and head, as `[total_q, Hq]`.
fn row_deltas<T: Element>(problem: &Problem, out: &[T], dout: &[T]) -> Vec<f32> {
    let d = problem.head_dim;
    out.par_chunks(d)
        .zip(dout.par_chunks(d))
        .map(|(o, g)| o.iter().zip(g).map(|(x, y)| x.to_f32() * y.to_f32()).sum())
        .collect()
}

struct Kernel<'a, T> {
    problem: &'a Problem,
    inputs: &'a Inputs<'a, T>,
    lse: &'a [f32],
    dout: &'a [T],
    delta: Vec<f32>,
    selections: &'a [KeySelection],
    scale: f32,
}

impl<T: Element> Kernel<'_, T> {
    /// `(lse, Delta)` of query row `r` of sequence `seq` at head `h`.
    fn row_stats(&self, seq: usize, h: usize, r: usize) -> (f32, f32) {
        let p = self.problem;
        let s = &p.sequences[seq];
        let lse = self.lse[p.lse_index(s, h, r)];
        (lse, self.delta[(s.q_start + r) * p.heads.q + h])
    }

    /// dq of one block of query rows, all heads.
    fn dq_block(&self, b: &Block, dq: &mut [T]) {
        let p = self.problem;
        let d = p.head_dim;
        let seq = &p.sequences[b.seq];
        let mut tile = KeyTile::default();
        let (mut q, mut g, mut acc) = (vec![0.0f32; d], vec![0.0f32; d], vec![0.0f32; d]);
        for h in 0..p.heads.q {
            let hb = p.bias_head(h);
            let sel = &self.selections[b.seq * p.heads.bias + hb];
            let keys = sel.candidates(b.index);
            tile.gather(p, self.inputs, b.seq, hb, p.kv_head(h), keys);
            for (i, r) in b.rows.clone().enumerate() {
                let (lse, delta) = self.row_stats(b.seq, h, r);
                let at = (seq.q_start + r) * p.heads.q * d + h * d;
                load_row(&self.inputs.q[at..at + d], &mut q);
                load_row(&self.dout[at..at + d], &mut g);
                acc.fill(0.0);
                if lse.is_finite() {
                    let pos = seq.query_offset() + r as i64;
                    for (c, &j) in keys.iter().enumerate() {
                        if !sel.keeps(pos, j as usize) {
                            continue;
                        }
                        let (k, v) = (&tile.k[c * d..(c + 1) * d], &tile.v[c * d..(c + 1) * d]);
                        let prob = (self.scale * dot(&q, k) + tile.bias[c] - lse).exp();
                        let ds = prob * (dot(&g, v) - delta);
                        axpy(ds, k, &mut acc);
                    }
                }
                let o = &mut dq[i * p.heads.q * d + h * d..][..d];
                for (oi, ai) in o.iter_mut().zip(&acc) {
                    *oi = T::from_f32(self.scale * ai);
                }
            }
        }
    }

    /// dk and dv of one block of keys, all kv heads; returns dbias as `[Hb][keys]`.
    fn dkv_block(&self, b: &Block, dk_out: &mut [T], dv_out: &mut [T]) -> Vec<f32> {
        let p = self.problem;
        let d = p.head_dim;
        let seq = &p.sequences[b.seq];
        let n = b.rows.len();
        let kv_row = p.heads.kv * d;
        let mut dk = vec![0.0f32; n * kv_row];
        let mut dv = vec![0.0f32; n * kv_row];
        let mut dbias = vec![0.0f32; p.heads.bias * n];
        let (mut k, mut v, mut q, mut g) = (
            vec![0.0f32; d],
            vec![0.0f32; d],
            vec![0.0f32; d],
            vec![0.0f32; d],
        );
        for h in 0..p.heads.q {
            let (hb, hk) = (p.bias_head(h), p.kv_head(h));
            let sel = &self.selections[b.seq * p.heads.bias + hb];
            let bias = &self.inputs.bias[p.bias_range(seq, hb)];
            for (c, j) in b.rows.clone().enumerate() {
                let rows = sel.rows_keeping(j);
                if rows.is_empty() {
                    continue;
                }
                let at = (seq.k_start + j) * kv_row + hk * d;
                load_row(&self.inputs.k[at..at + d], &mut k);
                load_row(&self.inputs.v[at..at + d], &mut v);
                let dk_j = &mut dk[c * kv_row + hk * d..][..d];
                let dv_j = &mut dv[c * kv_row + hk * d..][..d];
                let mut db = 0.0f32;
                for r in rows {
                    let (lse, delta) = self.row_stats(b.seq, h, r);
                    let qa = (seq.q_start + r) * p.heads.q * d + h * d;
                    load_row(&self.inputs.q[qa..qa + d], &mut q);
                    load_row(&self.dout[qa..qa + d], &mut g);
                    let prob = (self.scale * dot(&q, &k) + bias[j] - lse).exp();
                    let ds = prob * (dot(&g, &v) - delta);
                    axpy(prob, &g, dv_j);
                    axpy(self.scale * ds, &q, dk_j);
                    db += ds;
                }
                dbias[hb * n + c] += db;
            }
        }
        for (o, x) in dk_out.iter_mut().zip(&dk) {
            *o = T::from_f32(*x);
        }
        for (o, x) in dv_out.iter_mut().zip(&dv) {
            *o = T::from_f32(*x);
        }
        dbias
    }
}
