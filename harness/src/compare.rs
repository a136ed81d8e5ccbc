//! The numbers every verdict rests on: how far an engine tensor is from the oracle's.
//!
//! NMSE follows llama.cpp's `tests/test-backend-ops.cpp`: Σ(a−b)² / Σb² with `b` the
//! reference (the oracle). All sums are in f64. Non-finite values are judged apart: a NaN
//! anywhere fails, an Inf must face an Inf of the same sign.

use serde::{Deserialize, Serialize};

/// Engine (`a`) against oracle (`b`) for one tensor.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorMetrics {
    pub len: usize,
    /// Σ(a−b)²/Σb² over positions where both are finite; 0 when both are all-zero.
    pub nmse: f64,
    /// a·b / (|a||b|) over finite positions; 1 when both are all-zero.
    pub cosine: f64,
    pub max_abs: f64,
    /// Every value has the same bits (blake3 of the f32 bytes would agree).
    pub bit_exact: bool,
    pub nan_engine: usize,
    pub nan_oracle: usize,
    /// Positions where one side is ±Inf and the other is not the same Inf.
    pub inf_mismatch: usize,
}

impl TensorMetrics {
    pub fn non_finite_failure(&self) -> Option<String> {
        if self.nan_engine + self.nan_oracle > 0 {
            return Some(format!(
                "NaN: engine {}, oracle {}",
                self.nan_engine, self.nan_oracle
            ));
        }
        if self.inf_mismatch > 0 {
            return Some(format!(
                "{} Inf values without a same-signed Inf opposite",
                self.inf_mismatch
            ));
        }
        None
    }
}

/// Compares engine `a` with oracle `b`. Lengths must agree (the caller reports a shape
/// mismatch before calling).
pub fn compare(a: &[f32], b: &[f32]) -> TensorMetrics {
    assert_eq!(a.len(), b.len(), "compare: length mismatch");
    let (mut err, mut refsq, mut asq, mut dot, mut max_abs) = (0f64, 0f64, 0f64, 0f64, 0f64);
    let (mut nan_a, mut nan_b, mut inf_mismatch) = (0, 0, 0);
    let mut bit_exact = true;
    for (&x, &y) in a.iter().zip(b) {
        bit_exact &= x.to_bits() == y.to_bits();
        if x.is_nan() || y.is_nan() {
            nan_a += x.is_nan() as usize;
            nan_b += y.is_nan() as usize;
            continue;
        }
        if x.is_infinite() || y.is_infinite() {
            if x != y {
                inf_mismatch += 1;
            }
            continue;
        }
        let (x, y) = (x as f64, y as f64);
        let d = x - y;
        err += d * d;
        refsq += y * y;
        asq += x * x;
        dot += x * y;
        max_abs = max_abs.max(d.abs());
    }
    let nmse = if refsq > 0.0 {
        err / refsq
    } else if err == 0.0 {
        0.0
    } else {
        f64::INFINITY
    };
    let cosine = if asq == 0.0 && refsq == 0.0 {
        1.0
    } else if asq == 0.0 || refsq == 0.0 {
        0.0
    } else {
        dot / (asq.sqrt() * refsq.sqrt())
    };
    TensorMetrics {
        len: a.len(),
        nmse,
        cosine,
        max_abs,
        bit_exact,
        nan_engine: nan_a,
        nan_oracle: nan_b,
        inf_mismatch,
    }
}

/// Engine against oracle logits at one position.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogitsMetrics {
    pub top1_engine: u32,
    pub top1_oracle: u32,
    /// How many of the oracle's top-5 ids are in the engine's top-5.
    pub top5_overlap: u32,
    /// KL(oracle ‖ engine) of the softmax, in nats.
    pub kl: f64,
    pub max_abs: f64,
    pub nmse: f64,
    /// Logit gap between each side's first and second choice: a small gap is a near-tie.
    pub margin_engine: f64,
    pub margin_oracle: f64,
    /// How far below the oracle's top-1 the engine's top-1 sits in the oracle's logits (0 when
    /// they agree; the oracle's top-2 margin when the engine chose the oracle's runner-up).
    #[serde(default)]
    pub gap_oracle: f64,
    /// NaN counts on each side, and Infs not faced by the same Inf (as in [`TensorMetrics`]).
    #[serde(default)]
    pub nan_engine: usize,
    #[serde(default)]
    pub nan_oracle: usize,
    #[serde(default)]
    pub inf_mismatch: usize,
}

impl LogitsMetrics {
    pub fn top1_agree(&self) -> bool {
        self.top1_engine == self.top1_oracle
    }
}

/// Indices of the `k` largest values, largest first, ties to the lower index.
pub fn top_k(v: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..v.len() as u32).collect();
    let key = |i: &u32| {
        let x = v[*i as usize];
        if x.is_nan() {
            f32::NEG_INFINITY
        } else {
            x
        }
    };
    let k = k.min(v.len());
    if k == 0 {
        return Vec::new();
    }
    idx.select_nth_unstable_by(k - 1, |a, b| key(b).total_cmp(&key(a)).then(a.cmp(b)));
    idx.truncate(k);
    idx.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.cmp(b)));
    idx
}

fn log_softmax(v: &[f32]) -> Vec<f64> {
    let max = v
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold(f64::NEG_INFINITY, |m, x| m.max(x as f64));
    let lse = max
        + v.iter()
            .map(|&x| ((x as f64) - max).exp())
            .sum::<f64>()
            .ln();
    v.iter().map(|&x| x as f64 - lse).collect()
}

/// KL(p ‖ q) with p = softmax(oracle), q = softmax(engine).
pub fn kl_divergence(oracle: &[f32], engine: &[f32]) -> f64 {
    let lp = log_softmax(oracle);
    let lq = log_softmax(engine);
    lp.iter()
        .zip(&lq)
        .map(|(&p, &q)| {
            if p.exp() > 0.0 {
                p.exp() * (p - q)
            } else {
                0.0
            }
        })
        .sum::<f64>()
        .max(0.0)
}

pub fn compare_logits(engine: &[f32], oracle: &[f32]) -> LogitsMetrics {
    let te = top_k(engine, 5);
    let to = top_k(oracle, 5);
    let margin = |v: &[f32], t: &[u32]| match t {
        [a, b, ..] => v[*a as usize] as f64 - v[*b as usize] as f64,
        _ => f64::INFINITY,
    };
    let t = compare(engine, oracle);
    LogitsMetrics {
        top1_engine: te.first().copied().unwrap_or(0),
        top1_oracle: to.first().copied().unwrap_or(0),
        top5_overlap: to.iter().filter(|i| te.contains(i)).count() as u32,
        kl: kl_divergence(oracle, engine),
        max_abs: t.max_abs,
        nmse: t.nmse,
        margin_engine: margin(engine, &te),
        margin_oracle: margin(oracle, &to),
        gap_oracle: match (to.first(), te.first()) {
            (Some(&o), Some(&e)) => oracle[o as usize] as f64 - oracle[e as usize] as f64,
            _ => 0.0,
        },
        nan_engine: t.nan_engine,
        nan_oracle: t.nan_oracle,
        inf_mismatch: t.inf_mismatch,
    }
}

/// Rounds to the decade for snapshots: 3.2e-7 → "1e-7"; 0 → "0".
pub fn decade(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if !x.is_finite() {
        format!("{x}")
    } else {
        format!("1e{}", x.abs().log10().floor() as i32)
    }
}

/// Rounds to `digits` significant digits, for snapshots.
pub fn sig(x: f64, digits: usize) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    format!("{:.*e}", digits.saturating_sub(1), x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nmse_is_relative_to_the_oracle() {
        // Exactly representable values: Σ(a−b)² = 0.25, Σb² = 5.
        let m = compare(&[1.5, 2.0], &[1.0, 2.0]);
        assert_eq!(m.nmse, 0.05);
        assert_eq!(m.max_abs, 0.5);
        assert!(!m.bit_exact);
        assert!(compare(&[1.0, -2.0], &[1.0, -2.0]).bit_exact);
        assert_eq!(compare(&[0.0], &[0.0]).nmse, 0.0);
        assert_eq!(compare(&[1.0], &[0.0]).nmse, f64::INFINITY);
    }

    #[test]
    fn non_finite_rules() {
        assert!(compare(&[f32::NAN], &[1.0])
            .non_finite_failure()
            .unwrap()
            .contains("NaN"));
        assert!(compare(&[f32::INFINITY], &[f32::INFINITY])
            .non_finite_failure()
            .is_none());
        assert!(compare(&[f32::INFINITY], &[f32::NEG_INFINITY])
            .non_finite_failure()
            .is_some());
        assert!(compare(&[f32::INFINITY], &[3.0])
            .non_finite_failure()
            .is_some());
    }

    #[test]
    fn logits_metrics() {
        let o = [0.0, 5.0, 4.9, 1.0, 2.0, 3.0, -1.0];
        let e = [0.0, 4.9, 5.0, 1.0, 2.0, 3.0, -1.0];
        let m = compare_logits(&e, &o);
        assert_eq!((m.top1_oracle, m.top1_engine), (1, 2));
        assert!(!m.top1_agree());
        assert_eq!(m.top5_overlap, 5);
        assert!((m.margin_oracle - 0.1).abs() < 1e-5);
        assert!(m.kl > 0.0 && m.kl < 0.01);
        assert_eq!(kl_divergence(&o, &o), 0.0);
    }

    #[test]
    fn top_k_ties_and_nan() {
        assert_eq!(top_k(&[1.0, 3.0, 3.0, f32::NAN, 2.0], 3), vec![1, 2, 4]);
    }

    #[test]
    fn rounding_for_snapshots() {
        assert_eq!(decade(3.2e-7), "1e-7");
        assert_eq!(decade(0.0), "0");
        assert_eq!(sig(0.0123456, 4), "1.235e-2");
    }
}
