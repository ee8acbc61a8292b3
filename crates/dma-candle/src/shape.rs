//! Tensor dims to the operator's [`dma::Shape`], with errors that name the tensor at fault.

use crate::Error;
use dma::{Heads, Shape};

/// The dense geometry of q `[B, Nq, Hq, D]`, k (and v) `[B, Nk, Hkv, D]` and bias
/// `[B, Hb, Nk]`. Head counts and the head dim are left to the operator to validate.
pub(crate) fn dense(q: &[usize], k: &[usize], bias: &[usize]) -> Result<Shape, Error> {
    let &[b, nq, hq, d] = q else {
        return Err(rank("q", "[B, Nq, Hq, D]", q));
    };
    let &[bk, nk, hkv, dk] = k else {
        return Err(rank("k", "[B, Nk, Hkv, D]", k));
    };
    let &[bb, hb, nkb] = bias else {
        return Err(rank("bias", "[B, Hb, Nk]", bias));
    };
    let checks = [
        ("k", "batch", bk, b, "the batch of q"),
        ("k", "head dim", dk, d, "the head dim of q"),
        ("bias", "batch", bb, b, "the batch of q"),
        ("bias", "key count", nkb, nk, "the key count of k"),
    ];
    for (name, what, actual, expected, reason) in checks {
        if actual != expected {
            return Err(Error::Mismatch {
                name,
                what,
                actual,
                expected,
                reason,
            });
        }
    }
    Ok(Shape::dense(
        b,
        nq,
        nk,
        Heads::new(hq, hkv).with_bias(hb),
        d,
    ))
}

/// The dims of k inside the packed kv `[2, B, Nk, Hkv, D]` (k stacked over v).
pub(crate) fn unpack_kv(kv: &[usize]) -> Result<&[usize], Error> {
    match kv {
        [2, k @ ..] => Ok(k),
        _ => Err(rank("kv", "[2, B, Nk, Hkv, D]", kv)),
    }
}

fn rank(name: &'static str, expected: &'static str, actual: &[usize]) -> Error {
    Error::Rank {
        name,
        expected,
        actual: actual.to_vec(),
    }
}
