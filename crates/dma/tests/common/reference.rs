//! The f64 dense reference: SPEC.md read literally, one query row at a time.
// The reference indexes element by element, as the formulas in SPEC.md do.
#![allow(clippy::needless_range_loop)]

use super::Case;

/// The keys a query at position `p` keeps among keys with biases `bias`, in ranking order.
pub fn kept_keys(bias: &[f32], p: i64, window: usize, causal: bool) -> Vec<usize> {
    let mut visible: Vec<usize> = (0..bias.len())
        .filter(|&j| !causal || j as i64 <= p)
        .collect();
    // Larger bias first; equal biases (0.0 == -0.0 included): the later key first.
    visible.sort_by(|&a, &b| {
        bias[b]
            .partial_cmp(&bias[a])
            .expect("finite bias")
            .then(b.cmp(&a))
    });
    visible.truncate(window);
    visible
}

/// The keys query `i` of sequence `s` keeps under bias head `h`.
pub fn kept(case: &Case, s: usize, h: usize, i: usize) -> Vec<usize> {
    let (nq, nk) = case.seqs[s];
    let bias: Vec<f32> = (0..nk)
        .map(|j| case.bias[case.bias_index(s, h, j)])
        .collect();
    kept_keys(
        &bias,
        nk as i64 - nq as i64 + i as i64,
        case.window,
        case.causal,
    )
}

/// What the reference computes.
pub struct Output {
    pub out: Vec<f64>,
    pub lse: Vec<f64>,
}

pub struct Grads {
    pub dq: Vec<f64>,
    pub dk: Vec<f64>,
    pub dv: Vec<f64>,
    pub dbias: Vec<f64>,
}

fn q_at(case: &Case, s: usize, i: usize, h: usize) -> usize {
    ((case.start(s, false) + i) * case.hq + h) * case.d
}

fn k_at(case: &Case, s: usize, j: usize, h: usize) -> usize {
    ((case.start(s, true) + j) * case.hkv + h) * case.d
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Scores of row (s, i, query head h) against the given keys.
fn scores(case: &Case, s: usize, h: usize, i: usize, keys: &[usize]) -> Vec<f64> {
    let (hk, hb) = (h / (case.hq / case.hkv), h / (case.hq / case.hb));
    let d = case.d;
    let qa = q_at(case, s, i, h);
    keys.iter()
        .map(|&j| {
            let ka = k_at(case, s, j, hk);
            case.scale() * dot(&case.q[qa..qa + d], &case.k[ka..ka + d])
                + case.bias[case.bias_index(s, hb, j)] as f64
        })
        .collect()
}

/// Forward with the kept sets given by `keys_of(s, h, i)`.
pub fn forward_with(case: &Case, keys_of: &dyn Fn(usize, usize, usize) -> Vec<usize>) -> Output {
    let d = case.d;
    let mut out = vec![0.0; case.total_q() * case.hq * d];
    let mut lse = vec![f64::NEG_INFINITY; case.total_q() * case.hq];
    for s in 0..case.seqs.len() {
        for h in 0..case.hq {
            let hk = h / (case.hq / case.hkv);
            for i in 0..case.seqs[s].0 {
                let keys = keys_of(s, h, i);
                if keys.is_empty() {
                    continue;
                }
                let sc = scores(case, s, h, i, &keys);
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                let l = m + sum.ln();
                lse[case.lse_index(s, h, i)] = l;
                let oa = q_at(case, s, i, h);
                for (&j, &x) in keys.iter().zip(&sc) {
                    let ka = k_at(case, s, j, hk);
                    let pr = (x - l).exp();
                    for t in 0..d {
                        out[oa + t] += pr * case.v[ka + t];
                    }
                }
            }
        }
    }
    Output { out, lse }
}

/// DMA forward: SPEC.md's kept sets.
pub fn forward(case: &Case) -> Output {
    forward_with(case, &|s, h, i| kept(case, s, h / (case.hq / case.hb), i))
}

/// DMA backward with SPEC.md's formulas, given `dout` from the case.
pub fn backward(case: &Case) -> Grads {
    let d = case.d;
    let fwd = forward(case);
    let mut g = Grads {
        dq: vec![0.0; case.q.len()],
        dk: vec![0.0; case.k.len()],
        dv: vec![0.0; case.v.len()],
        dbias: vec![0.0; case.bias.len()],
    };
    for s in 0..case.seqs.len() {
        for h in 0..case.hq {
            let (hk, hb) = (h / (case.hq / case.hkv), h / (case.hq / case.hb));
            for i in 0..case.seqs[s].0 {
                let keys = kept(case, s, hb, i);
                if keys.is_empty() {
                    continue;
                }
                let l = fwd.lse[case.lse_index(s, h, i)];
                let qa = q_at(case, s, i, h);
                let d_o = &case.dout[qa..qa + d];
                let delta = dot(d_o, &fwd.out[qa..qa + d]);
                let sc = scores(case, s, h, i, &keys);
                for (&j, &x) in keys.iter().zip(&sc) {
                    let ka = k_at(case, s, j, hk);
                    let p = (x - l).exp();
                    let dp = dot(d_o, &case.v[ka..ka + d]);
                    let ds = p * (dp - delta);
                    for t in 0..d {
                        g.dq[qa + t] += case.scale() * ds * case.k[ka + t];
                        g.dk[ka + t] += case.scale() * ds * case.q[qa + t];
                        g.dv[ka + t] += p * d_o[t];
                    }
                    g.dbias[case.bias_index(s, hb, j)] += ds;
                }
            }
        }
    }
    g
}

/// Sliding-window attention of width w, written without any ranking: the last w visible keys
/// (causal: the w keys ending at the query's position; not causal: the last w keys).
pub fn sliding_window(case: &Case) -> Output {
    forward_with(case, &|s, _h, i| {
        let (nq, nk) = case.seqs[s];
        let w = case.window as i64;
        let (lo, hi) = if case.causal {
            let p = nk as i64 - nq as i64 + i as i64;
            (p - w + 1, p)
        } else {
            (nk as i64 - w, nk as i64 - 1)
        };
        (lo.max(0)..=hi).map(|j| j as usize).collect()
    })
}
