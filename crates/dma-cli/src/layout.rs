//! The operator's geometry (`dma::Shape`) inferred from tensor shapes: ranks and the dims that
//! tensors share are checked here; everything else is left to the dma crate's validation.

use anyhow::{bail, Result};
use dma::{Heads, Shape};

/// The shapes of the input tensors.
pub struct Shapes<'a> {
    pub q: &'a [usize],
    pub k: &'a [usize],
    pub v: &'a [usize],
    pub bias: &'a [usize],
    pub dout: Option<&'a [usize]>,
}

/// What the operator needs, and the shape of the lse it returns.
pub struct Geometry {
    pub shape: Shape,
    pub lse: Vec<usize>,
}

/// Dense `[B, N, H, D]` tensors when `cu_seqlens` is `None`, packed varlen tensors otherwise.
pub fn infer(s: &Shapes, cu_seqlens: Option<(Vec<i32>, Vec<i32>)>) -> Result<Geometry> {
    let varlen = cu_seqlens.is_some();
    let layout = if varlen { "varlen" } else { "dense" };
    let q_dims: &[&str] = if varlen {
        &["total_q", "Hq", "D"]
    } else {
        &["B", "Nq", "Hq", "D"]
    };
    let k_dims: &[&str] = if varlen {
        &["total_k", "Hkv", "D"]
    } else {
        &["B", "Nk", "Hkv", "D"]
    };
    let bias_dims: &[&str] = if varlen {
        &["Hb", "total_k"]
    } else {
        &["B", "Hb", "Nk"]
    };
    rank("q", s.q, q_dims, layout)?;
    rank("k", s.k, k_dims, layout)?;
    rank("bias", s.bias, bias_dims, layout)?;
    same_shape("v", s.v, "k", s.k)?;
    if let Some(dout) = s.dout {
        same_shape("dout", dout, "q", s.q)?;
    }

    let d = s.q[q_dims.len() - 1];
    let (hq, hkv) = (s.q[q_dims.len() - 2], s.k[k_dims.len() - 2]);
    dim("k", s.k, k_dims, k_dims.len() - 1, d, "q")?;
    // Keys per sequence (dense) or in total (varlen).
    let nk = s.k[k_dims.len() - 3];
    dim("bias", s.bias, bias_dims, bias_dims.len() - 1, nk, "k")?;
    let hb = s.bias[bias_dims.len() - 2];
    let heads = Heads::new(hq, hkv).with_bias(hb);

    Ok(match cu_seqlens {
        Some((cu_q, cu_k)) => Geometry {
            shape: Shape::varlen(cu_q, cu_k, heads, d),
            lse: vec![hq, s.q[0]],
        },
        None => {
            let b = s.q[0];
            dim("k", s.k, k_dims, 0, b, "q")?;
            dim("bias", s.bias, bias_dims, 0, b, "q")?;
            Geometry {
                shape: Shape::dense(b, s.q[1], nk, heads, d),
                lse: vec![b, hq, s.q[1]],
            }
        }
    })
}

fn rank(name: &str, shape: &[usize], dims: &[&str], layout: &str) -> Result<()> {
    if shape.len() != dims.len() {
        let hint = if layout == "dense" {
            " (packed varlen tensors need cu_seqlens_q and cu_seqlens_k)"
        } else {
            ""
        };
        bail!(
            "tensor `{name}` has shape {shape:?}, expected {layout} [{}]{hint}",
            dims.join(", ")
        );
    }
    Ok(())
}

fn same_shape(name: &str, shape: &[usize], other: &str, other_shape: &[usize]) -> Result<()> {
    if shape != other_shape {
        bail!(
            "tensor `{name}` has shape {shape:?}, expected the shape of `{other}` {other_shape:?}"
        );
    }
    Ok(())
}

fn dim(
    name: &str,
    shape: &[usize],
    dims: &[&str],
    axis: usize,
    want: usize,
    from: &str,
) -> Result<()> {
    if shape[axis] != want {
        bail!(
            "tensor `{name}` has shape {shape:?}: its {} is {} but `{from}` has {} = {want}",
            dims[axis],
            shape[axis],
            dims[axis]
        );
    }
    Ok(())
}
