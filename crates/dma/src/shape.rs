//! Tensor geometry: the dense `[B, N, H, D]` layout and the packed varlen layout, and their
//! validation into a [`Problem`] that every kernel indexes through.

use crate::{DmaError, Result};

/// Largest head dim any backend supports.
pub const MAX_HEAD_DIM: usize = 256;

/// Head counts. `q % kv == 0`; `bias` is `q` or `kv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    pub q: usize,
    pub kv: usize,
    pub bias: usize,
}

impl Heads {
    /// `q` query heads reading `kv` kv heads, with one bias head per kv head.
    pub fn new(q: usize, kv: usize) -> Self {
        Heads { q, kv, bias: kv }
    }

    /// The same heads with `bias` bias heads (`q` or `kv`).
    pub fn with_bias(self, bias: usize) -> Self {
        Heads { bias, ..self }
    }
}

/// How sequences are laid out in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// q `[B, Nq, Hq, D]`, k/v `[B, Nk, Hkv, D]`, bias `[B, Hb, Nk]`, lse `[B, Hq, Nq]`.
    Dense {
        batch: usize,
        seqlen_q: usize,
        seqlen_k: usize,
    },
    /// q `[total_q, Hq, D]`, k/v `[total_k, Hkv, D]`, bias `[Hb, total_k]`, lse `[Hq, total_q]`;
    /// sequence b owns rows `cu_seqlens[b]..cu_seqlens[b + 1]`.
    Varlen {
        cu_seqlens_q: Vec<i32>,
        cu_seqlens_k: Vec<i32>,
    },
    /// Like `Dense`, with k/v `[B, capacity_k, Hkv, D]` and bias `[B, Hb, capacity_k]` of which
    /// each sequence's keys are the first `seqlen_k`: a KV cache with room to grow, read in
    /// place. The keys past `seqlen_k` are never read (they may hold anything); dk, dv and
    /// dbias are zero there.
    Padded {
        batch: usize,
        seqlen_q: usize,
        seqlen_k: usize,
        capacity_k: usize,
    },
}

/// The full geometry of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub layout: Layout,
    pub heads: Heads,
    pub head_dim: usize,
}

impl Shape {
    /// Dense batch of `batch` sequences, each with `seqlen_q` queries and `seqlen_k` keys.
    pub fn dense(
        batch: usize,
        seqlen_q: usize,
        seqlen_k: usize,
        heads: Heads,
        head_dim: usize,
    ) -> Self {
        Shape {
            layout: Layout::Dense {
                batch,
                seqlen_q,
                seqlen_k,
            },
            heads,
            head_dim,
        }
    }

    /// Dense batch whose keys sit in a cache of `capacity_k` rows per sequence
    /// ([`Layout::Padded`]).
    ///
    /// ```
    /// use dma::{Heads, Shape};
    /// // Two sequences of 100 cached keys each in a cache of 256 rows, one query each.
    /// let shape = Shape::padded(2, 1, 100, 256, Heads::new(8, 2), 64);
    /// let problem = shape.problem()?;
    /// assert_eq!(problem.k_len(), 2 * 256 * 2 * 64);
    /// assert_eq!(problem.sequences[1].k_start, 256);
    /// # Ok::<(), dma::DmaError>(())
    /// ```
    pub fn padded(
        batch: usize,
        seqlen_q: usize,
        seqlen_k: usize,
        capacity_k: usize,
        heads: Heads,
        head_dim: usize,
    ) -> Self {
        Shape {
            layout: Layout::Padded {
                batch,
                seqlen_q,
                seqlen_k,
                capacity_k,
            },
            heads,
            head_dim,
        }
    }

    /// Packed variable-length batch described by cumulative sequence lengths.
    pub fn varlen(
        cu_seqlens_q: Vec<i32>,
        cu_seqlens_k: Vec<i32>,
        heads: Heads,
        head_dim: usize,
    ) -> Self {
        Shape {
            layout: Layout::Varlen {
                cu_seqlens_q,
                cu_seqlens_k,
            },
            heads,
            head_dim,
        }
    }

    /// Checks the geometry and resolves it into per-sequence offsets.
    pub fn problem(&self) -> Result<Problem> {
        Problem::new(self)
    }
}

/// One sequence of a batch, as offsets into the tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequence {
    /// First row of this sequence in the packed q / out / dq rows.
    pub q_start: usize,
    pub nq: usize,
    /// First row of this sequence in the packed k / v rows.
    pub k_start: usize,
    pub nk: usize,
    /// Index of (this sequence, bias head 0, key 0) in bias / dbias.
    pub bias_offset: usize,
    /// Index of (this sequence, query head 0, query 0) in lse.
    pub lse_offset: usize,
}

impl Sequence {
    /// Position of query row 0 among the keys (queries are aligned to the end of the keys).
    pub fn query_offset(&self) -> i64 {
        self.nk as i64 - self.nq as i64
    }
}

/// A validated [`Shape`]: head counts, the sequences, and the index arithmetic of each tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub heads: Heads,
    pub head_dim: usize,
    pub sequences: Vec<Sequence>,
    pub total_q: usize,
    /// Rows of k / v (with a padded layout, every sequence's whole capacity).
    pub total_k: usize,
    /// Distance between bias heads in bias / dbias.
    pub bias_head_stride: usize,
    /// Distance between query heads in lse.
    pub lse_head_stride: usize,
    /// Whether the sequences came from cu_seqlens (their totals are then checked against q / k).
    pub varlen: bool,
    description: String,
}

impl Problem {
    fn new(shape: &Shape) -> Result<Problem> {
        let Heads { q, kv, bias } = shape.heads;
        let d = shape.head_dim;
        if d == 0 || d > MAX_HEAD_DIM {
            return Err(DmaError::UnsupportedHeadDim(d));
        }
        for (which, n) in [("query", q), ("kv", kv), ("bias", bias)] {
            if n == 0 {
                return Err(DmaError::ZeroHeads { which });
            }
        }
        if q % kv != 0 {
            return Err(DmaError::HeadsNotGrouped { q, kv });
        }
        if bias != q && bias != kv {
            return Err(DmaError::BiasHeads { bias, q, kv });
        }
        let heads = shape.heads;
        match &shape.layout {
            Layout::Dense {
                batch,
                seqlen_q,
                seqlen_k,
            } => Self::batched(shape, *batch, *seqlen_q, *seqlen_k, *seqlen_k),
            Layout::Padded {
                batch,
                seqlen_q,
                seqlen_k,
                capacity_k,
            } => {
                if seqlen_k > capacity_k {
                    return Err(DmaError::KeysPastCapacity {
                        seqlen_k: *seqlen_k,
                        capacity_k: *capacity_k,
                    });
                }
                Self::batched(shape, *batch, *seqlen_q, *seqlen_k, *capacity_k)
            }
            Layout::Varlen {
                cu_seqlens_q,
                cu_seqlens_k,
            } => {
                let starts_q = check_cu_seqlens("q", cu_seqlens_q)?;
                let starts_k = check_cu_seqlens("k", cu_seqlens_k)?;
                if starts_q.len() != starts_k.len() {
                    return Err(DmaError::BadCuSeqlens {
                        which: "k",
                        reason: format!(
                            "describes {} sequences but cu_seqlens_q describes {}",
                            starts_k.len() - 1,
                            starts_q.len() - 1
                        ),
                    });
                }
                let total_q = *starts_q.last().unwrap_or(&0);
                let total_k = *starts_k.last().unwrap_or(&0);
                check_sizes(total_q, total_k, &heads, d)?;
                let sequences = starts_q
                    .windows(2)
                    .zip(starts_k.windows(2))
                    .map(|(wq, wk)| Sequence {
                        q_start: wq[0],
                        nq: wq[1] - wq[0],
                        k_start: wk[0],
                        nk: wk[1] - wk[0],
                        bias_offset: wk[0],
                        lse_offset: wq[0],
                    })
                    .collect();
                Ok(Problem {
                    heads,
                    head_dim: d,
                    sequences,
                    total_q,
                    total_k,
                    bias_head_stride: total_k,
                    lse_head_stride: total_q,
                    varlen: true,
                    description: format!(
                        "varlen B={} total_q={total_q} total_k={total_k} Hq={q} Hkv={kv} Hb={bias} D={d}",
                        starts_q.len() - 1
                    ),
                })
            }
        }
    }

    /// A dense or padded batch (heads already checked): sequence i's keys start at row
    /// i * `cap` of k / v and at i * Hb * `cap` in the bias, `cap` apart per bias head.
    fn batched(shape: &Shape, b: usize, nq: usize, nk: usize, cap: usize) -> Result<Problem> {
        let heads = shape.heads;
        let Heads { q, kv, bias } = heads;
        let d = shape.head_dim;
        if b == 0 {
            return Err(DmaError::EmptyBatch);
        }
        for n in [nq, cap] {
            if n > i32::MAX as usize {
                return Err(DmaError::TooLong(n));
            }
        }
        check_sizes(b.saturating_mul(nq), b.saturating_mul(cap), &heads, d)?;
        let sequences = (0..b)
            .map(|i| Sequence {
                q_start: i * nq,
                nq,
                k_start: i * cap,
                nk,
                bias_offset: i * bias * cap,
                lse_offset: i * q * nq,
            })
            .collect();
        let padding = if cap == nk {
            String::new()
        } else {
            format!(" (in a cache of {cap})")
        };
        Ok(Problem {
            heads,
            head_dim: d,
            sequences,
            total_q: b * nq,
            total_k: b * cap,
            bias_head_stride: cap,
            lse_head_stride: nq,
            varlen: false,
            description: format!(
                "dense B={b} Nq={nq} Nk={nk}{padding} Hq={q} Hkv={kv} Hb={bias} D={d}"
            ),
        })
    }

    /// Elements of q, out, dout and dq.
    pub fn q_len(&self) -> usize {
        self.total_q * self.heads.q * self.head_dim
    }

    /// Elements of k, v, dk and dv.
    pub fn k_len(&self) -> usize {
        self.total_k * self.heads.kv * self.head_dim
    }

    /// Elements of bias and dbias.
    pub fn bias_len(&self) -> usize {
        self.total_k * self.heads.bias
    }

    /// Elements of lse.
    pub fn lse_len(&self) -> usize {
        self.total_q * self.heads.q
    }

    /// Query heads that read one kv head.
    pub fn q_per_kv(&self) -> usize {
        self.heads.q / self.heads.kv
    }

    /// Bias head read by query head `h`.
    pub fn bias_head(&self, h: usize) -> usize {
        h / (self.heads.q / self.heads.bias)
    }

    /// kv head read by query head `h`.
    pub fn kv_head(&self, h: usize) -> usize {
        h / self.q_per_kv()
    }

    /// The bias (or dbias) values of one sequence and bias head, contiguous, one per key.
    pub fn bias_range(&self, seq: &Sequence, bias_head: usize) -> std::ops::Range<usize> {
        let start = seq.bias_offset + bias_head * self.bias_head_stride;
        start..start + seq.nk
    }

    /// Index of (query head `h`, query row `r`) of `seq` in lse.
    pub fn lse_index(&self, seq: &Sequence, h: usize, r: usize) -> usize {
        seq.lse_offset + h * self.lse_head_stride + r
    }

    /// Checks that a tensor has the number of elements this geometry needs.
    pub fn check_len(&self, name: &'static str, expected: usize, actual: usize) -> Result<()> {
        if expected == actual {
            Ok(())
        } else {
            Err(DmaError::ShapeMismatch {
                name,
                expected,
                actual,
                shape: self.description.clone(),
            })
        }
    }

    /// Checks a tensor of packed rows (q-like when `which` is "q", k-like when "k"). In the varlen
    /// layout a row count that differs from the cu_seqlens total is reported as a cu_seqlens error.
    pub fn check_rows(&self, name: &'static str, which: &'static str, len: usize) -> Result<()> {
        let (rows, heads) = match which {
            "q" => (self.total_q, self.heads.q),
            _ => (self.total_k, self.heads.kv),
        };
        let row_elems = heads * self.head_dim;
        if self.varlen && len % row_elems == 0 && len / row_elems != rows {
            return Err(DmaError::BadCuSeqlens {
                which,
                reason: format!(
                    "ends at {rows} but `{name}` holds {} rows of {heads} heads x {}",
                    len / row_elems,
                    self.head_dim
                ),
            });
        }
        self.check_len(name, rows * row_elems, len)
    }

    /// Rejects a bias holding NaN or an infinity, naming where.
    pub fn check_bias(&self, bias: &[f32]) -> Result<()> {
        self.check_len("bias", self.bias_len(), bias.len())?;
        for (s, seq) in self.sequences.iter().enumerate() {
            for h in 0..self.heads.bias {
                let values = &bias[self.bias_range(seq, h)];
                if let Some(key) = values.iter().position(|b| !b.is_finite()) {
                    return Err(DmaError::NonFiniteBias {
                        sequence: s,
                        head: h,
                        key,
                        value: values[key],
                    });
                }
            }
        }
        Ok(())
    }
}

/// Rejects geometries whose tensors could not be indexed (more than 2^31 - 1 rows, or an
/// element count that overflows).
fn check_sizes(total_q: usize, total_k: usize, heads: &Heads, d: usize) -> Result<()> {
    for rows in [total_q, total_k] {
        if rows > i32::MAX as usize {
            return Err(DmaError::TooLong(rows));
        }
    }
    let widest = heads.q.max(heads.kv).max(heads.bias).saturating_mul(d);
    if total_q.max(total_k).checked_mul(widest).is_none() {
        return Err(DmaError::TooLong(total_q.max(total_k)));
    }
    Ok(())
}

/// Checks one cu_seqlens array and returns it as offsets.
fn check_cu_seqlens(which: &'static str, cu: &[i32]) -> Result<Vec<usize>> {
    let bad = |reason: String| DmaError::BadCuSeqlens { which, reason };
    if cu.len() < 2 {
        return Err(if cu.is_empty() {
            bad("is empty; it needs B + 1 entries".into())
        } else {
            DmaError::EmptyBatch
        });
    }
    if cu[0] != 0 {
        return Err(bad(format!("must start at 0, starts at {}", cu[0])));
    }
    if let Some(i) = cu.windows(2).position(|w| w[1] < w[0]) {
        return Err(bad(format!(
            "decreases at index {}: {} then {}",
            i + 1,
            cu[i],
            cu[i + 1]
        )));
    }
    Ok(cu.iter().map(|&x| x as usize).collect())
}
