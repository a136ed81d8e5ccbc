//! Captured stage tensors: one (stage, layer, position) slice with its shape and f32 data.

use crate::stage::{Stage, StageId};
use serde::{Deserialize, Serialize};

/// One stage's values at one token position.
///
/// `data` is row-major over `shape` (for `attn_q`: `[n_head, head_dim]`). On the wire the
/// data travels as a binary blob (see [`crate::wire`]); in plain JSON it is an array.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageTensor {
    pub stage: Stage,
    /// Layer index for per-layer stages, `None` for `inp_embd`, `result_norm`, `result_output`.
    pub layer: Option<u32>,
    /// Absolute token position in the sequence (0 = first prompt token).
    pub position: u32,
    pub shape: Vec<usize>,
    #[serde(with = "crate::wire::blob")]
    pub data: Vec<f32>,
}

impl StageTensor {
    pub fn id(&self) -> StageId {
        StageId::new(self.stage, self.layer)
    }

    /// blake3 of the little-endian f32 bytes, hex. Equal hashes mean bit-identical tensors.
    pub fn blake3(&self) -> String {
        blake3_f32(&self.data)
    }

    pub fn stats(&self) -> Stats {
        Stats::of(&self.data)
    }
}

/// blake3 over the little-endian bytes of `data`, as lowercase hex.
pub fn blake3_f32(data: &[f32]) -> String {
    let mut h = blake3::Hasher::new();
    for chunk in data.chunks(4096) {
        let mut buf = Vec::with_capacity(chunk.len() * 4);
        for v in chunk {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        h.update(&buf);
    }
    h.finalize().to_hex().to_string()
}

/// Summary statistics of a tensor; NaN and ±Inf are counted, not folded into the moments.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub len: usize,
    /// Root mean square over the finite values.
    pub rms: f64,
    pub mean: f64,
    pub min: f32,
    pub max: f32,
    pub nan: usize,
    pub pos_inf: usize,
    pub neg_inf: usize,
}

impl Stats {
    pub fn of(data: &[f32]) -> Stats {
        let (mut sum, mut sq, mut n) = (0f64, 0f64, 0usize);
        let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
        let (mut nan, mut pos_inf, mut neg_inf) = (0, 0, 0);
        for &v in data {
            if v.is_nan() {
                nan += 1;
            } else if v == f32::INFINITY {
                pos_inf += 1;
            } else if v == f32::NEG_INFINITY {
                neg_inf += 1;
            } else {
                sum += v as f64;
                sq += (v as f64) * (v as f64);
                n += 1;
                min = min.min(v);
                max = max.max(v);
            }
        }
        let nf = n.max(1) as f64;
        Stats {
            len: data.len(),
            rms: (sq / nf).sqrt(),
            mean: sum / nf,
            min: if n == 0 { f32::NAN } else { min },
            max: if n == 0 { f32::NAN } else { max },
            nan,
            pos_inf,
            neg_inf,
        }
    }

    pub fn non_finite(&self) -> usize {
        self.nan + self.pos_inf + self.neg_inf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blake3_is_of_le_bytes() {
        let data = [1.0f32, -2.5, 0.0];
        let mut bytes = Vec::new();
        for v in data {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(blake3_f32(&data), blake3::hash(&bytes).to_hex().to_string());
        // -0.0 and 0.0 differ bitwise, so their hashes must differ.
        assert_ne!(blake3_f32(&[0.0]), blake3_f32(&[-0.0]));
    }

    #[test]
    fn stats_count_non_finite_apart() {
        let s = Stats::of(&[3.0, -4.0, f32::NAN, f32::INFINITY]);
        assert_eq!((s.nan, s.pos_inf, s.neg_inf), (1, 1, 0));
        assert!((s.rms - (12.5f64).sqrt()).abs() < 1e-12);
        assert_eq!((s.min, s.max), (-4.0, 3.0));
    }
}
