//! Splitting a batch into blocks of rows, and running them in parallel over disjoint slices of
//! an output tensor.

use super::BLOCK;
use crate::Problem;
use rayon::prelude::*;
use std::ops::Range;

/// A block of rows (query rows or keys) of one sequence.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub seq: usize,
    /// Index of the block within its sequence.
    pub index: usize,
    /// Rows within the sequence.
    pub rows: Range<usize>,
}

/// Blocks of `BLOCK` query rows (`keys == false`) or keys (`keys == true`) over every sequence,
/// in memory order: together they tile the packed rows exactly.
pub(crate) fn blocks(problem: &Problem, keys: bool) -> Vec<Block> {
    let mut out = Vec::new();
    for (seq, s) in problem.sequences.iter().enumerate() {
        let n = if keys { s.nk } else { s.nq };
        for index in 0..n.div_ceil(BLOCK) {
            out.push(Block {
                seq,
                index,
                rows: index * BLOCK..((index + 1) * BLOCK).min(n),
            });
        }
    }
    out
}

/// Splits `data` into the slices that hold each block's rows (`row_elems` elements a row).
pub(crate) fn split_rows<'a, T>(
    data: &'a mut [T],
    row_elems: usize,
    blocks: &[Block],
) -> Vec<&'a mut [T]> {
    let mut slices = Vec::with_capacity(blocks.len());
    let mut rest = data;
    for b in blocks {
        let (head, tail) = rest.split_at_mut(b.rows.len() * row_elems);
        slices.push(head);
        rest = tail;
    }
    slices
}

/// Runs `f` on every block in parallel, handing each the slice of `data` that holds its rows,
/// and collects what each returns in block order.
pub(crate) fn par_map_blocks<T, R, F>(
    data: &mut [T],
    row_elems: usize,
    blocks: &[Block],
    f: F,
) -> Vec<R>
where
    T: Send,
    R: Send,
    F: Fn(&Block, &mut [T]) -> R + Sync,
{
    blocks
        .par_iter()
        .zip(split_rows(data, row_elems, blocks).into_par_iter())
        .map(|(b, slice)| f(b, slice))
        .collect()
}
