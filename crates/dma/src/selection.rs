//! Which keys each query keeps (SPEC.md, "Which keys a query keeps").
//!
//! Keys are ranked by `(bias_j, j)`, larger first. Because the bias does not depend on the
//! query, the w-th best rank among the visible keys only rises as the query position grows, so
//! under causal masking each key `j` is kept by one interval of query positions `[j, until_j)`.
//! A sweep over the keys with a min-heap of the current top-w finds every `until_j` in
//! O(Nk log w); nothing of size Nq x Nk is ever built. Without causal masking every query sees
//! every key and keeps the same top-w set.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;

/// Total order of keys: bias first, then index (the later key wins a tie). `-0.0` and `0.0`
/// are the same bias. The bias must be finite (validated before selection).
pub fn rank(bias: f32, index: usize) -> u64 {
    let bits = (bias + 0.0).to_bits(); // + 0.0 turns -0.0 into 0.0
    let ordered = if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    };
    (u64::from(ordered) << 32) | index as u64
}

fn index_of(rank: u64) -> usize {
    (rank & 0xffff_ffff) as usize
}

/// The kept-key structure of one sequence and one bias head.
#[derive(Debug, Clone)]
pub struct KeySelection {
    causal: bool,
    nq: usize,
    nk: usize,
    block_rows: usize,
    /// Key j is kept by the query positions p with `j <= p < until[j]` (causal), or by every
    /// query when `until[j] == i64::MAX` (not causal). `i64::MIN` or `j` itself: never kept.
    until: Vec<i64>,
    /// For each block of `block_rows` query rows, the keys that some row of the block keeps,
    /// ascending. Not causal: one shared list.
    candidates: Vec<Vec<u32>>,
}

impl KeySelection {
    /// Selects for a sequence of `nq` queries over the keys whose biases are `bias` (one per
    /// key), grouping query rows into blocks of `block_rows` for the candidate lists.
    pub fn new(bias: &[f32], nq: usize, window: usize, causal: bool, block_rows: usize) -> Self {
        let nk = bias.len();
        let block_rows = block_rows.max(1);
        let mut sel = KeySelection {
            causal,
            nq,
            nk,
            block_rows,
            until: Vec::new(),
            candidates: Vec::new(),
        };
        if causal {
            sel.until = causal_until(bias, nq, window);
            sel.candidates = sel.causal_candidates();
        } else {
            let top = top_w(bias, 0..nk, window);
            let mut until = vec![i64::MIN; nk];
            for &j in &top {
                until[j as usize] = i64::MAX;
            }
            sel.until = until;
            sel.candidates = vec![top];
        }
        sel
    }

    /// Whether the query at position `p` (query row `r` sits at `p = Nk - Nq + r`) keeps key `j`.
    #[inline]
    pub fn keeps(&self, p: i64, j: usize) -> bool {
        (!self.causal || j as i64 <= p) && p < self.until[j]
    }

    /// The query rows (0-based within the sequence) that keep key `j`: always one interval.
    pub fn rows_keeping(&self, j: usize) -> Range<usize> {
        let (first, end) = if self.causal {
            (j as i64, self.until[j])
        } else if self.until[j] == i64::MAX {
            return 0..self.nq;
        } else {
            return 0..0;
        };
        let offset = self.nk as i64 - self.nq as i64;
        let lo = (first - offset).clamp(0, self.nq as i64) as usize;
        let hi = end.saturating_sub(offset).clamp(0, self.nq as i64) as usize;
        lo..hi.max(lo)
    }

    /// The keys kept by at least one query row of block `block` (rows
    /// `block * block_rows .. (block + 1) * block_rows`), ascending; at most w + block_rows.
    pub fn candidates(&self, block: usize) -> &[u32] {
        let list = if self.causal { block } else { 0 };
        self.candidates.get(list).map_or(&[], Vec::as_slice)
    }

    /// Builds the per-block candidate lists from `until`, block by block: the keys before a
    /// block that its first row keeps (a filter of the previous block's list) plus the block's
    /// own keys that their own row keeps.
    fn causal_candidates(&self) -> Vec<Vec<u32>> {
        let offset = self.nk as i64 - self.nq as i64;
        let blocks = self.nq.div_ceil(self.block_rows);
        let mut lists = Vec::with_capacity(blocks);
        let first_p = offset;
        let carried_in: Vec<u32> = (0..first_p.clamp(0, self.nk as i64) as usize)
            .filter(|&j| self.until[j] > first_p)
            .map(|j| j as u32)
            .collect();
        for b in 0..blocks {
            let p0 = offset + (b * self.block_rows) as i64;
            let p1 = offset + ((b + 1) * self.block_rows).min(self.nq) as i64;
            let carried = lists.last().unwrap_or(&carried_in);
            let mut list: Vec<u32> = carried
                .iter()
                .copied()
                .filter(|&j| self.until[j as usize] > p0)
                .collect();
            let own = p0.clamp(0, self.nk as i64) as usize..p1.clamp(0, self.nk as i64) as usize;
            list.extend(own.filter(|&j| self.until[j] > j as i64).map(|j| j as u32));
            lists.push(list);
        }
        lists
    }
}

/// The w best-ranked keys among `keys` (all of them when there are at most w), ascending.
fn top_w(bias: &[f32], keys: Range<usize>, window: usize) -> Vec<u32> {
    let mut ranks: Vec<u64> = keys.map(|j| rank(bias[j], j)).collect();
    if ranks.len() > window {
        let cut = ranks.len() - window;
        ranks.select_nth_unstable(cut);
        ranks.drain(..cut);
    }
    let mut top: Vec<u32> = ranks.into_iter().map(|r| index_of(r) as u32).collect();
    top.sort_unstable();
    top
}

/// `until[j]` for causal masking: the first query position that no longer keeps key j.
///
/// Only keys in the top-w of the keys before the first query's position can matter to any
/// query, so those are found with one O(Nk) selection and the heap sweep starts at the first
/// query: decoding one token over a long cache costs O(Nk), not O(Nk log w).
fn causal_until(bias: &[f32], nq: usize, window: usize) -> Vec<i64> {
    let nk = bias.len();
    let first_p = (nk as i64 - nq as i64).max(0) as usize;
    // A key never enters the heap: never kept (j <= p < j is empty).
    let mut until: Vec<i64> = (0..nk as i64).collect();
    let mut heap: BinaryHeap<Reverse<u64>> = BinaryHeap::with_capacity(window + 1);
    for j in top_w(bias, 0..first_p, window) {
        heap.push(Reverse(rank(bias[j as usize], j as usize)));
        until[j as usize] = i64::MAX;
    }
    for p in first_p..nk {
        heap.push(Reverse(rank(bias[p], p)));
        until[p] = i64::MAX;
        if heap.len() > window {
            if let Some(Reverse(evicted)) = heap.pop() {
                until[index_of(evicted)] = p as i64;
            }
        }
    }
    until
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_orders_by_bias_then_index() {
        assert!(rank(1.0, 0) > rank(0.5, 9));
        assert!(rank(-1.0, 3) < rank(-0.5, 0));
        assert!(rank(2.0, 5) > rank(2.0, 4));
        assert_eq!(rank(-0.0, 1) >> 32, rank(0.0, 1) >> 32);
        assert!(rank(-3.0e38, 1) < rank(-1.0e-40, 0));
    }

    #[test]
    fn constant_bias_is_a_sliding_window() {
        let sel = KeySelection::new(&[0.25; 10], 10, 3, true, 4);
        for p in 0..10i64 {
            for j in 0..10usize {
                let in_window = j as i64 <= p && j as i64 > p - 3;
                assert_eq!(sel.keeps(p, j), in_window, "p={p} j={j}");
            }
        }
        assert_eq!(sel.rows_keeping(4), 4..7);
        assert_eq!(sel.candidates(1), &[2, 3, 4, 5, 6, 7]);
    }
}
