//! Forward: for each block of query rows and each head, gather the block's candidate keys
//! into f32 tiles, then give each row a softmax over the candidates it keeps.

use super::tasks::{blocks, par_map_blocks, Block};
use super::{dot, load_row, prepare, Forward, Inputs};
use crate::selection::KeySelection;
use crate::{Element, Params, Problem, Result, Shape};

/// Computes DMA's output and log-sum-exp on the CPU.
///
/// Returns `out` in the layout of q and `lse` as `[B, Hq, Nq]` (dense) or `[Hq, total_q]`
/// (varlen). A row that keeps no key gets `out = 0` and `lse = -inf`.
pub fn forward<T: Element>(
    params: &Params,
    shape: &Shape,
    inputs: &Inputs<'_, T>,
) -> Result<Forward<T>> {
    let (problem, selections) = prepare(params, shape, inputs)?;
    let kernel = Kernel {
        problem: &problem,
        inputs,
        selections: &selections,
        scale: params.scale_for(problem.head_dim),
    };

    let row_elems = problem.heads.q * problem.head_dim;
    let mut out = vec![T::from_f32(0.0); problem.q_len()];
    let row_blocks = blocks(&problem, false);
    let block_lse = par_map_blocks(&mut out, row_elems, &row_blocks, |b, o| kernel.block(b, o));

    let mut lse = vec![f32::NEG_INFINITY; problem.lse_len()];
    for (b, values) in row_blocks.iter().zip(block_lse) {
        let seq = &problem.sequences[b.seq];
        for h in 0..problem.heads.q {
            for (i, r) in b.rows.clone().enumerate() {
                lse[problem.lse_index(seq, h, r)] = values[h * b.rows.len() + i];
            }
        }
    }
    Ok(Forward { out, lse })
}

struct Kernel<'a, T> {
    problem: &'a Problem,
    inputs: &'a Inputs<'a, T>,
    selections: &'a [KeySelection],
    scale: f32,
}

/// The candidate keys of one block for one head, converted to f32.
#[derive(Default)]
pub(super) struct KeyTile {
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub bias: Vec<f32>,
    /// (bias head, kv head) the tile was gathered for.
    pub source: Option<(usize, usize)>,
}

impl KeyTile {
    /// Gathers the rows of `keys` of kv head `kv_head` of sequence `seq` (skipped when the tile
    /// already holds them: the query heads of a group with Hb = Hkv share their keys).
    #[allow(clippy::too_many_arguments)]
    pub fn gather<T: Element>(
        &mut self,
        problem: &Problem,
        inputs: &Inputs<'_, T>,
        seq: usize,
        bias_head: usize,
        kv_head: usize,
        keys: &[u32],
    ) {
        if self.source == Some((bias_head, kv_head)) {
            return;
        }
        let s = &problem.sequences[seq];
        let d = problem.head_dim;
        let row = problem.heads.kv * d;
        let bias = &inputs.bias[problem.bias_range(s, bias_head)];
        self.k.resize(keys.len() * d, 0.0);
        self.v.resize(keys.len() * d, 0.0);
        self.bias.clear();
        for (c, &j) in keys.iter().enumerate() {
            let at = (s.k_start + j as usize) * row + kv_head * d;
            load_row(&inputs.k[at..at + d], &mut self.k[c * d..(c + 1) * d]);
            load_row(&inputs.v[at..at + d], &mut self.v[c * d..(c + 1) * d]);
            self.bias.push(bias[j as usize]);
        }
        self.source = Some((bias_head, kv_head));
    }
}

impl KeyTile {
    /// Score `scale * <q, k_c> + bias_c` of candidate `c` for a query already multiplied by the
    /// scale. Forward and backward both score through here, so that the backward's
    /// probabilities are bit for bit those whose log-sum-exp the forward returned.
    #[inline]
    pub fn score(&self, scaled_q: &[f32], c: usize) -> f32 {
        let d = scaled_q.len();
        dot(scaled_q, &self.k[c * d..(c + 1) * d]) + self.bias[c]
    }
}

/// Converts one query row to f32 and multiplies it by the softmax scale.
#[inline]
pub(super) fn load_scaled<T: Element>(src: &[T], scale: f32, dst: &mut [f32]) {
    load_row(src, dst);
    dst.iter_mut().for_each(|x| *x *= scale);
}

impl<T: Element> Kernel<'_, T> {
    /// One block of query rows, all heads; writes `out` rows and returns lse as `[Hq][rows]`.
    fn block(&self, b: &Block, out: &mut [T]) -> Vec<f32> {
        let p = self.problem;
        let d = p.head_dim;
        let seq = &p.sequences[b.seq];
        let mut lse = vec![f32::NEG_INFINITY; p.heads.q * b.rows.len()];
        let mut tile = KeyTile::default();
        let (mut q, mut acc) = (vec![0.0f32; d], vec![0.0f32; d]);
        let mut scores = Vec::new();
        for h in 0..p.heads.q {
            let hb = p.bias_head(h);
            let sel = &self.selections[b.seq * p.heads.bias + hb];
            let keys = sel.candidates(b.index);
            tile.gather(p, self.inputs, b.seq, hb, p.kv_head(h), keys);
            for (i, r) in b.rows.clone().enumerate() {
                let pos = seq.query_offset() + r as i64;
                let at = (seq.q_start + r) * p.heads.q * d + h * d;
                load_scaled(&self.inputs.q[at..at + d], self.scale, &mut q);

                scores.clear();
                let mut max = f32::NEG_INFINITY;
                for (c, &j) in keys.iter().enumerate() {
                    if sel.keeps(pos, j as usize) {
                        let s = tile.score(&q, c);
                        max = max.max(s);
                        scores.push((c, s));
                    }
                }
                let o = &mut out[i * p.heads.q * d + h * d..][..d];
                if scores.is_empty() {
                    o.fill(T::from_f32(0.0));
                    continue;
                }
                acc.fill(0.0);
                let mut sum = 0.0f32;
                for &(c, s) in &scores {
                    let e = (s - max).exp();
                    sum += e;
                    super::axpy(e, &tile.v[c * d..(c + 1) * d], &mut acc);
                }
                for (oi, ai) in o.iter_mut().zip(&acc) {
                    *oi = T::from_f32(ai / sum);
                }
                lse[h * b.rows.len() + i] = max + sum.ln();
            }
        }
        lse
    }
}
