//! The host-side tables a launch reads: one entry per sequence, per selection list and per
//! block of query rows. They are O(B + N / BLOCK_M) integers, built from the validated
//! [`Problem`] and uploaded with each call.

use crate::{DmaError, Params, Problem, Result};

/// Query rows per block, the rows of one CTA of the forward and backward (`DMA_BLOCK_M` in
/// kernels/common.cu).
pub const BLOCK_M: usize = 128;
/// Query rows per causal selection list: two blocks share one list, so there are half as many
/// lists to select (docs/cuda-notes.md, "256-row selection lists"). Also the most rows a list
/// may have (`DMA_LIST_M` in kernels/common.cu sizes the selection's shared arrays by it): the
/// kernels take a list's rows from the lists table, so [`list_rows`] may choose fewer.
pub const LIST_M: usize = 256;
/// Keys per shared-memory tile of the forward (`DMA_TILE_N` in kernels/common.cu).
pub const BLOCK_N: usize = 64;
/// Every this many causal lists of a sequence, one is an anchor that selects from all earlier
/// keys; the lists in between select from their anchor's list (kernels/select.cu). Anchors cost
/// O(N^2 / (ANCHOR_EVERY * LIST_M)) bias reads per head, the others select over at most
/// w + ANCHOR_EVERY * LIST_M keys each: at 32K and w = 2048, 8 reads fewer keys in all than 4
/// (about 0.6M against 0.76M key reads per radix pass and head), and the longest anchor is the
/// same either way.
pub const ANCHOR_EVERY: usize = 8;

/// Query rows per causal selection list, read at each call: [`LIST_M`], or [`BLOCK_M`] (one list
/// per block, as before) when the environment variable `DMA_CUDA_LIST_ROWS` is 128 (an A/B
/// switch; 256 is the default, any other value an error).
pub fn list_rows() -> Result<usize> {
    let Some(value) = std::env::var_os("DMA_CUDA_LIST_ROWS") else {
        return Ok(LIST_M);
    };
    match value.to_str() {
        Some("256") => Ok(LIST_M),
        Some("128") => Ok(BLOCK_M),
        _ => Err(DmaError::Cuda(format!(
            "DMA_CUDA_LIST_ROWS must be 128 or 256 (got {value:?})"
        ))),
    }
}

/// The tables of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Per sequence: q_start, nq, k_start, nk, bias_offset, lse_offset, 0, 0 (`SeqInfo`).
    pub seqs: Vec<i32>,
    /// Per selection list: sequence, first row, end row, anchor list (-1 for an anchor). Causal:
    /// one list per [`list_rows`] query rows (a whole number of blocks); not causal: one list per
    /// sequence (every row keeps the same keys), each an anchor.
    pub lists: Vec<i32>,
    /// The anchor lists, then the others (selected in a second launch, after their anchors).
    pub anchors: Vec<i32>,
    pub dependents: Vec<i32>,
    /// Per block of BLOCK_M query rows (one CTA): sequence, first row, end row, the list that
    /// holds its rows.
    pub blocks: Vec<i32>,
    /// Capacity of each candidate list, a multiple of BLOCK_N.
    pub cap: usize,
    /// The window clamped to the longest sequence's keys (the same selection, and fits in i32).
    pub window: i32,
}

/// i32s of one row of the per-sequence table (`SeqInfo` in kernels/common.cu).
pub(crate) const SEQ_INFO_INTS: usize = 8;

/// The per-sequence table of the kernels (`SeqInfo`): q_start, nq, k_start, nk, bias_offset,
/// lse_offset, 0, 0 for each sequence; a typed error when an offset the kernels form in 32 bits
/// does not fit.
pub(crate) fn seq_table(problem: &Problem) -> Result<Vec<[i32; SEQ_INFO_INTS]>> {
    let int = |x: usize| i32::try_from(x).map_err(|_| DmaError::TooLong(x));
    let mut rows = Vec::with_capacity(problem.sequences.len());
    for s in &problem.sequences {
        // The largest element offsets the kernels form in 32 bits.
        int(s.bias_offset + problem.heads.bias * problem.bias_head_stride)?;
        int(s.lse_offset + problem.heads.q * problem.lse_head_stride)?;
        rows.push([
            int(s.q_start)?,
            int(s.nq)?,
            int(s.k_start)?,
            int(s.nk)?,
            int(s.bias_offset)?,
            int(s.lse_offset)?,
            0,
            0,
        ]);
    }
    Ok(rows)
}

impl Plan {
    /// The tables of a call, with causal lists of [`list_rows`] query rows.
    pub fn new(params: &Params, problem: &Problem) -> Result<Plan> {
        Self::with_list_rows(params, problem, list_rows()?)
    }

    /// The tables of a call with causal lists of `list_rows` query rows, a multiple of BLOCK_M
    /// (so that no block straddles two lists) and at most LIST_M (the kernels' shared arrays).
    pub(crate) fn with_list_rows(
        params: &Params,
        problem: &Problem,
        list_rows: usize,
    ) -> Result<Plan> {
        assert!(list_rows % BLOCK_M == 0 && (BLOCK_M..=LIST_M).contains(&list_rows));
        let int = |x: usize| i32::try_from(x).map_err(|_| DmaError::TooLong(x));
        let seqs = seq_table(problem)?.concat();
        let mut lists = Vec::new();
        let mut blocks = Vec::new();
        let (mut anchors, mut dependents) = (Vec::new(), Vec::new());
        let mut max_nk = 0;
        for (i, s) in problem.sequences.iter().enumerate() {
            max_nk = max_nk.max(s.nk);
            let first = lists.len() / 4;
            if params.causal {
                for (k, r0) in (0..s.nq).step_by(list_rows).enumerate() {
                    let id = int(first + k)?;
                    let anchor = if k % ANCHOR_EVERY == 0 {
                        anchors.push(id);
                        -1
                    } else {
                        dependents.push(id);
                        int(first + k - k % ANCHOR_EVERY)?
                    };
                    let r1 = (r0 + list_rows).min(s.nq);
                    lists.extend([int(i)?, int(r0)?, int(r1)?, anchor]);
                }
            } else {
                anchors.push(int(first)?);
                lists.extend([int(i)?, 0, int(s.nq)?, -1]);
            }
            for r0 in (0..s.nq).step_by(BLOCK_M) {
                let list = first + if params.causal { r0 / list_rows } else { 0 };
                let r1 = (r0 + BLOCK_M).min(s.nq);
                blocks.extend([int(i)?, int(r0)?, int(r1)?, int(list)?]);
            }
        }
        int(problem.total_q)?;
        int(problem.total_k)?;
        let kept = params.window.min(max_nk);
        // A causal list holds at most w + its rows' keys (select.cu). A multiple of BLOCK_N: the
        // forward reads whole 16-byte-aligned tiles of a list.
        let cap = if params.causal {
            kept + list_rows
        } else {
            kept
        }
        .max(1)
        .next_multiple_of(BLOCK_N);
        int(cap)?;
        Ok(Plan {
            seqs,
            lists,
            anchors,
            dependents,
            blocks,
            cap,
            window: int(kept.max(1))?,
        })
    }

    pub fn num_lists(&self) -> usize {
        self.lists.len() / 4
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len() / 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Heads, Shape};

    /// Entry `e` of a table (4 i32 each): (sequence, first row, end row) and the last field.
    fn entry(table: &[i32], e: usize) -> ([usize; 3], i32) {
        let at = |k: usize| table[4 * e + k] as usize;
        ([at(0), at(1), at(2)], table[4 * e + 3])
    }

    /// Blocks of BLOCK_M rows tile every sequence, each pointing to a list of its sequence that
    /// holds its rows; causal lists tile the sequence by `list_rows` rows and every dependent
    /// list names an anchor of its sequence at most ANCHOR_EVERY lists before it; the capacity
    /// holds w + a list's rows.
    #[test]
    fn blocks_share_lists_of_list_rows() {
        // Queries per sequence: none, one row, a block and one, two lists and one, 2000 rows.
        let nq = [0, 1, 129, 513, 2000];
        let cu = |extra: usize| {
            let mut c = vec![0i32];
            for n in nq {
                c.push(c.last().unwrap() + (n + extra) as i32);
            }
            c
        };
        let problem = Shape::varlen(cu(0), cu(7), Heads::new(4, 2), 64)
            .problem()
            .unwrap();
        for rows in [BLOCK_M, LIST_M] {
            for causal in [false, true] {
                let params = Params::new(300).causal(causal);
                let plan = Plan::with_list_rows(&params, &problem, rows).unwrap();
                let mut block = 0;
                for (i, &n) in nq.iter().enumerate() {
                    for r0 in (0..n).step_by(BLOCK_M) {
                        let ([seq, y, z], list) = entry(&plan.blocks, block);
                        assert_eq!([seq, y, z], [i, r0, (r0 + BLOCK_M).min(n)]);
                        let ([list_seq, ly, lz], _) = entry(&plan.lists, list as usize);
                        let first = if causal { r0 / rows * rows } else { 0 };
                        let end = if causal { (first + rows).min(n) } else { n };
                        assert_eq!([list_seq, ly, lz], [i, first, end], "block {y}..{z}");
                        block += 1;
                    }
                }
                assert_eq!(block, plan.num_blocks());
                let mut all: Vec<i32> = plan
                    .anchors
                    .iter()
                    .chain(&plan.dependents)
                    .copied()
                    .collect();
                all.sort_unstable();
                assert_eq!(all, (0..plan.num_lists() as i32).collect::<Vec<_>>());
                for &d in &plan.dependents {
                    let ([seq, y, _], anchor) = entry(&plan.lists, d as usize);
                    let ([anchor_seq, anchor_y, _], own) = entry(&plan.lists, anchor as usize);
                    assert_eq!((anchor_seq, own), (seq, -1));
                    assert!(anchor_y < y && y - anchor_y < ANCHOR_EVERY * rows);
                }
                let extra = if causal { rows } else { 0 };
                assert!(plan.cap >= 300 + extra && plan.cap % BLOCK_N == 0);
            }
        }
    }
}
