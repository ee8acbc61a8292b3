//! The host-side tables a launch reads: one entry per sequence, per selection list and per
//! block of query rows. They are O(B + N / BLOCK_M) integers, built from the validated
//! [`Problem`] and uploaded with each call.

use crate::{DmaError, Params, Problem, Result};

/// Query rows per block, the rows of one CTA of the forward and backward (`DMA_BLOCK_M` in
/// kernels/common.cu).
pub const BLOCK_M: usize = 128;
/// Query rows per causal selection list: four blocks share one list, so there are a quarter as
/// many lists to select. Block b of a list would read the keys before the list that the own keys
/// of the list's earlier rows pushed out of every later row's w best (about 128 b w / p keys at
/// position p); it skips them (`DMA_BLOCK_COUNTS` in kernels/common.cu), so longer lists cost the
/// attention nothing more: at 32K, w = 2048 the forward was 3% faster than with lists of 256 rows
/// (docs/cuda-notes.md, "256-row selection lists" and "Stop 25"). Also the most rows a list may
/// have (`DMA_LIST_M` in kernels/common.cu sizes the selection's shared arrays by it): the kernels
/// take a list's rows from the lists table, so [`list_rows`] may choose fewer.
pub const LIST_M: usize = 512;
/// The most blocks of one list (`DMA_LIST_BLOCKS`). A block's entry in the blocks table names its
/// list and its place in it as `list * LIST_BLOCKS + place`, which index the list's per-block
/// counts (the keys the block sees, its sure keys).
pub const LIST_BLOCKS: usize = LIST_M / BLOCK_M;
/// u32 counts per block of a list (`DMA_BLOCK_COUNTS`): the keys it sees, and the run of keys it
/// skips (head, skip; one unused).
pub const BLOCK_COUNTS: usize = 4;
/// Keys per shared-memory tile of the forward (`DMA_TILE_N` in kernels/common.cu).
pub const BLOCK_N: usize = 64;
/// Every this many query rows of a sequence, a causal list is an anchor that selects from all
/// earlier keys; the lists in between select from their anchor's list (kernels/select.cu).
/// Anchors cost O(N^2 / ANCHOR_ROWS) bias reads per head, the others select over at most
/// w + ANCHOR_ROWS keys each: at 32K and w = 2048, 2048 reads fewer keys in all than 1024 (about
/// 0.6M against 0.76M key reads per radix pass and head, measured with 256-row lists), and the
/// longest anchor is the same either way.
pub const ANCHOR_ROWS: usize = 2048;

/// Query rows per causal selection list, read at each call: [`LIST_M`], or 128 or 256 when the
/// environment variable `DMA_CUDA_LIST_ROWS` says so (an A/B switch; any other value is an
/// error).
pub fn list_rows() -> Result<usize> {
    let Some(value) = std::env::var_os("DMA_CUDA_LIST_ROWS") else {
        return Ok(LIST_M);
    };
    match value.to_str() {
        Some("512") => Ok(LIST_M),
        Some("256") => Ok(2 * BLOCK_M),
        Some("128") => Ok(BLOCK_M),
        _ => Err(DmaError::Cuda(format!(
            "DMA_CUDA_LIST_ROWS must be 128, 256 or 512 (got {value:?})"
        ))),
    }
}

/// The causal lists of a sequence of `nq` queries: runs [r0, r1) of `list_rows` rows that tile
/// them (the last may be shorter). A list whose first row is a multiple of `ANCHOR_ROWS` is an
/// anchor, the others select from the last anchor before them (`list_rows` divides ANCHOR_ROWS).
pub fn causal_lists(nq: usize, list_rows: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..nq)
        .step_by(list_rows)
        .map(move |r0| (r0, (r0 + list_rows).min(nq)))
}

/// The tables of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Per sequence: q_start, nq, k_start, nk, bias_offset, lse_offset, 0, 0 (`SeqInfo`).
    pub seqs: Vec<i32>,
    /// Per selection list: sequence, first row, end row, anchor list (-1 for an anchor). Causal:
    /// the runs of rows of [`causal_lists`]; not causal: one list per sequence (every row keeps
    /// the same keys), each an anchor.
    pub lists: Vec<i32>,
    /// The anchor lists, then the others (selected in a second launch, after their anchors).
    pub anchors: Vec<i32>,
    pub dependents: Vec<i32>,
    /// Per block of BLOCK_M query rows (one CTA): sequence, first row, end row, and the list that
    /// holds its rows with the block's place in it, `list * LIST_BLOCKS + place` (place 0 when
    /// not causal: every block sees the whole list).
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

    /// The tables of a call with causal lists of `list_rows` query rows, a multiple of BLOCK_M (so
    /// that no block straddles two lists) and at most LIST_M (the kernels' shared arrays).
    pub(crate) fn with_list_rows(
        params: &Params,
        problem: &Problem,
        list_rows: usize,
    ) -> Result<Plan> {
        assert!(list_rows % BLOCK_M == 0 && (BLOCK_M..=LIST_M).contains(&list_rows));
        assert!(ANCHOR_ROWS % list_rows == 0, "every anchor starts a list");
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
                let mut anchor = 0;
                for (r0, r1) in causal_lists(s.nq, list_rows) {
                    let id = lists.len() / 4;
                    let of = if r0 % ANCHOR_ROWS == 0 {
                        anchors.push(int(id)?);
                        anchor = id;
                        -1
                    } else {
                        dependents.push(int(id)?);
                        int(anchor)?
                    };
                    lists.extend([int(i)?, int(r0)?, int(r1)?, of]);
                    for b0 in (r0..r1).step_by(BLOCK_M) {
                        let b1 = (b0 + BLOCK_M).min(r1);
                        let code = id * LIST_BLOCKS + (b0 - r0) / BLOCK_M;
                        blocks.extend([int(i)?, int(b0)?, int(b1)?, int(code)?]);
                    }
                }
            } else {
                anchors.push(int(first)?);
                lists.extend([int(i)?, 0, int(s.nq)?, -1]);
                for b0 in (0..s.nq).step_by(BLOCK_M) {
                    let b1 = (b0 + BLOCK_M).min(s.nq);
                    blocks.extend([int(i)?, int(b0)?, int(b1)?, int(first * LIST_BLOCKS)?]);
                }
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
    /// holds its rows and to its place in it; causal lists tile the sequence by `list_rows` rows,
    /// and every list that does not start a group of ANCHOR_ROWS rows names the group's first as
    /// its anchor; the capacity holds w + a list's rows.
    #[test]
    fn blocks_share_lists_of_list_rows() {
        // Queries per sequence: none, one row, a block and one, four lists and one, 5000 rows
        // (groups of ANCHOR_ROWS); keys 7 more than queries.
        let nq = [0, 1, 129, 513, 5000];
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
        let window = 300;
        for rows in [BLOCK_M, 2 * BLOCK_M, LIST_M] {
            for causal in [false, true] {
                let params = Params::new(window).causal(causal);
                let plan = Plan::with_list_rows(&params, &problem, rows).unwrap();
                let mut block = 0;
                for (i, &n) in nq.iter().enumerate() {
                    for r0 in (0..n).step_by(BLOCK_M) {
                        let ([seq, y, z], code) = entry(&plan.blocks, block);
                        block += 1;
                        assert_eq!([seq, y, z], [i, r0, (r0 + BLOCK_M).min(n)]);
                        let (list, place) =
                            (code as usize / LIST_BLOCKS, code as usize % LIST_BLOCKS);
                        let ([list_seq, ly, lz], of) = entry(&plan.lists, list);
                        assert_eq!(list_seq, i);
                        assert!(ly <= r0 && r0 < lz, "block {y}..{z} in list {ly}..{lz}");
                        if !causal {
                            assert_eq!([ly, lz, place], [0, n, 0]);
                            continue;
                        }
                        assert_eq!(place, (r0 - ly) / BLOCK_M);
                        assert_eq!([ly % rows, lz], [0, (ly + rows).min(n)], "list {ly}..{lz}");
                        assert_eq!(ly / ANCHOR_ROWS, (lz - 1) / ANCHOR_ROWS, "one group");
                        if ly % ANCHOR_ROWS == 0 {
                            assert_eq!(of, -1, "a group's first list is an anchor");
                        } else {
                            let ([_, anchor_y, _], own) = entry(&plan.lists, of as usize);
                            assert_eq!((anchor_y, own), (ly / ANCHOR_ROWS * ANCHOR_ROWS, -1));
                        }
                    }
                }
                assert_eq!(block, plan.num_blocks());
                // Causal lists tile each sequence (those of causal_lists); one list per
                // sequence otherwise.
                let mut at = 0;
                for (i, &n) in nq.iter().enumerate() {
                    let want = match causal {
                        true => causal_lists(n, rows).collect(),
                        false => vec![(0, n)],
                    };
                    for (r0, r1) in want {
                        assert_eq!(entry(&plan.lists, at).0, [i, r0, r1]);
                        at += 1;
                    }
                }
                assert_eq!(at, plan.num_lists());
                let mut all: Vec<i32> = plan
                    .anchors
                    .iter()
                    .chain(&plan.dependents)
                    .copied()
                    .collect();
                all.sort_unstable();
                assert_eq!(all, (0..plan.num_lists() as i32).collect::<Vec<_>>());
                let extra = if causal { rows } else { 0 };
                assert!(plan.cap >= window + extra && plan.cap % BLOCK_N == 0);
            }
        }
    }
}
