//! The host-side tables a launch reads: one entry per sequence, per selection list and per
//! block of query rows. They are O(B + N / BLOCK_M) integers, built from the validated
//! [`Problem`] and uploaded with each call.

use crate::{DmaError, Params, Problem, Result};

/// Query rows per block (`DMA_BLOCK_M` in kernels/common.cu).
pub const BLOCK_M: usize = 128;
/// Keys per shared-memory tile of the forward (`DMA_TILE_N` in kernels/common.cu).
pub const BLOCK_N: usize = 64;
/// Every this many causal lists of a sequence, one is an anchor that selects from all earlier
/// keys; the lists in between select from their anchor's list (kernels/select.cu).
pub const ANCHOR_EVERY: usize = 8;

/// The tables of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Per sequence: q_start, nq, k_start, nk, bias_offset, lse_offset, 0, 0 (`SeqInfo`).
    pub seqs: Vec<i32>,
    /// Per selection list: sequence, first row, end row, anchor list (-1 for an anchor). Causal:
    /// one list per block of query rows; not causal: one list per sequence (every row keeps the
    /// same keys), each an anchor.
    pub lists: Vec<i32>,
    /// The anchor lists, then the others (selected in a second launch, after their anchors).
    pub anchors: Vec<i32>,
    pub dependents: Vec<i32>,
    /// Per block of query rows: sequence, first row, end row, list.
    pub blocks: Vec<i32>,
    /// Capacity of each candidate list, a multiple of BLOCK_N.
    pub cap: usize,
    /// The window clamped to the longest sequence's keys (the same selection, and fits in i32).
    pub window: i32,
}

impl Plan {
    pub fn new(params: &Params, problem: &Problem) -> Result<Plan> {
        let int = |x: usize| i32::try_from(x).map_err(|_| DmaError::TooLong(x));
        let mut seqs = Vec::with_capacity(problem.sequences.len() * 8);
        let mut lists = Vec::new();
        let mut blocks = Vec::new();
        let (mut anchors, mut dependents) = (Vec::new(), Vec::new());
        let mut max_nk = 0;
        for (i, s) in problem.sequences.iter().enumerate() {
            // The largest element offsets the kernels form in 32 bits.
            int(s.bias_offset + problem.heads.bias * problem.bias_head_stride)?;
            int(s.lse_offset + problem.heads.q * problem.lse_head_stride)?;
            for x in [
                s.q_start,
                s.nq,
                s.k_start,
                s.nk,
                s.bias_offset,
                s.lse_offset,
            ] {
                seqs.push(int(x)?);
            }
            seqs.extend([0, 0]);
            max_nk = max_nk.max(s.nk);
            if !params.causal {
                anchors.push(int(lists.len() / 4)?);
                lists.extend([int(i)?, 0, int(s.nq)?, -1]);
            }
            let first = lists.len() / 4;
            for (k, r0) in (0..s.nq).step_by(BLOCK_M).enumerate() {
                let r1 = (r0 + BLOCK_M).min(s.nq);
                let list = if params.causal {
                    let id = int(lists.len() / 4)?;
                    let anchor = if k % ANCHOR_EVERY == 0 {
                        anchors.push(id);
                        -1
                    } else {
                        dependents.push(id);
                        int(first + k - k % ANCHOR_EVERY)?
                    };
                    lists.extend([int(i)?, int(r0)?, int(r1)?, anchor]);
                    id
                } else {
                    int(i)?
                };
                blocks.extend([int(i)?, int(r0)?, int(r1)?, list]);
            }
        }
        int(problem.total_q)?;
        int(problem.total_k)?;
        let kept = params.window.min(max_nk);
        // A multiple of BLOCK_N: the forward reads whole 16-byte-aligned tiles of a list.
        let cap = if params.causal { kept + BLOCK_M } else { kept }
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
