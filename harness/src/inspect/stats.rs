//! Weight statistics straight from the raw bits: float moments and the share of each
//! ternary code, decoded through `engine::quant`.

use super::*;

/// The float storage types, read bit by bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FloatKind {
    F32,
    F16,
    BF16,
}

impl FloatKind {
    pub(super) fn of(t: GgmlType) -> Option<FloatKind> {
        match t {
            GgmlType::F32 => Some(FloatKind::F32),
            GgmlType::F16 => Some(FloatKind::F16),
            GgmlType::BF16 => Some(FloatKind::BF16),
            _ => None,
        }
    }
}

/// f16 → f32 for all 65 536 bit patterns (histogram bins, TQ block scales).
pub(super) fn f16_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|b| half::f16::from_bits(b).to_f32())
            .collect()
    })
}

/// Moments of the finite values, non-finite values counted apart, and the largest finite
/// |value| as its absolute bit pattern (monotonic in the value for IEEE floats).
#[derive(Clone, Copy, Debug)]
pub(super) struct FloatStats {
    pub(super) n: u64,
    pub(super) sum: f64,
    pub(super) sq: f64,
    pub(super) min: f64,
    pub(super) max: f64,
    pub(super) nan: u64,
    pub(super) pos_inf: u64,
    pub(super) neg_inf: u64,
    pub(super) max_abs_bits: u32,
}

impl FloatStats {
    pub(super) fn new() -> Self {
        FloatStats {
            n: 0,
            sum: 0.0,
            sq: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            nan: 0,
            pos_inf: 0,
            neg_inf: 0,
            max_abs_bits: 0,
        }
    }
    pub(super) fn non_finite(&self) -> u64 {
        self.nan + self.pos_inf + self.neg_inf
    }
    pub(super) fn mean(&self) -> f64 {
        self.sum / self.n.max(1) as f64
    }
    pub(super) fn rms(&self) -> f64 {
        (self.sq / self.n.max(1) as f64).sqrt()
    }
    pub(super) fn std(&self) -> f64 {
        let m = self.mean();
        (self.sq / self.n.max(1) as f64 - m * m).max(0.0).sqrt()
    }
    #[inline(always)]
    pub(super) fn finite(&mut self, v: f32, abs_bits: u32) {
        let v = v as f64;
        self.n += 1;
        self.sum += v;
        self.sq += v * v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.max_abs_bits = self.max_abs_bits.max(abs_bits);
    }
    /// `count` copies of the finite value `v`.
    pub(super) fn finite_n(&mut self, v: f32, abs_bits: u32, count: u64) {
        let x = v as f64;
        self.n += count;
        self.sum += x * count as f64;
        self.sq += x * x * count as f64;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        self.max_abs_bits = self.max_abs_bits.max(abs_bits);
    }
    #[inline(always)]
    pub(super) fn non_finite_value(&mut self, v: f32) {
        self.non_finite_n(v, 1)
    }
    #[inline(always)]
    pub(super) fn non_finite_n(&mut self, v: f32, count: u64) {
        if v.is_nan() {
            self.nan += count;
        } else if v > 0.0 {
            self.pos_inf += count;
        } else {
            self.neg_inf += count;
        }
    }
}

pub(super) fn float_stats(kind: FloatKind, data: &[u8]) -> FloatStats {
    let mut s = FloatStats::new();
    match kind {
        FloatKind::F32 => {
            for b in data.chunks_exact(4) {
                let bits = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                let v = f32::from_bits(bits);
                if v.is_finite() {
                    s.finite(v, bits & 0x7fff_ffff);
                } else {
                    s.non_finite_value(v);
                }
            }
        }
        FloatKind::F16 | FloatKind::BF16 => {
            // A 16-bit float has 65 536 possible values: count each bit pattern once, then
            // take the moments over the histogram. One increment per value instead of float
            // arithmetic keeps the 328 M-value 2B-4T embedding well under a second, and the
            // sums come out the same whatever the order of the values.
            let mut hist = vec![0u64; 1 << 16];
            for b in data.chunks_exact(2) {
                hist[u16::from_le_bytes([b[0], b[1]]) as usize] += 1;
            }
            let table = f16_table();
            let exp_mask = if kind == FloatKind::F16 {
                0x7c00
            } else {
                0x7f80
            };
            for (bits, &count) in hist.iter().enumerate().filter(|(_, c)| **c > 0) {
                let v = match kind {
                    FloatKind::F16 => table[bits],
                    _ => f32::from_bits((bits as u32) << 16),
                };
                if bits & exp_mask != exp_mask {
                    s.finite_n(v, bits as u32 & 0x7fff, count);
                } else {
                    s.non_finite_n(v, count);
                }
            }
        }
    }
    if s.n == 0 {
        (s.min, s.max) = (f64::NAN, f64::NAN);
    }
    s
}

/// An F16/F32 projection held to the ternary grid {−s, 0, +s} with s = max |w|, compared
/// bit for bit (the forge and bitnet's converters store exactly ±s).
pub(super) fn float_ternary(
    t: &TensorInfo,
    kind: FloatKind,
    data: &[u8],
    max_abs_bits: u32,
) -> TernaryStats {
    let mut counts = [0u64; 4]; // −1, 0, +1, other
    let mut tally = |bits: u32, abs: u32, sign: u32| {
        let i = if abs == 0 {
            1
        } else if abs == max_abs_bits {
            if bits & sign != 0 {
                0
            } else {
                2
            }
        } else {
            3
        };
        counts[i] += 1;
    };
    match kind {
        FloatKind::F32 => {
            for b in data.chunks_exact(4) {
                let bits = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                tally(bits, bits & 0x7fff_ffff, 0x8000_0000);
            }
        }
        FloatKind::F16 | FloatKind::BF16 => {
            for b in data.chunks_exact(2) {
                let bits = u16::from_le_bytes([b[0], b[1]]) as u32;
                tally(bits, bits & 0x7fff, 0x8000);
            }
        }
    }
    let scale = match kind {
        FloatKind::F32 => f32::from_bits(max_abs_bits),
        FloatKind::F16 => f16_table()[max_abs_bits as usize],
        FloatKind::BF16 => f32::from_bits(max_abs_bits << 16),
    } as f64;
    ternary_stats(t, counts, scale, scale, scale)
}

pub(super) fn ternary_stats(
    t: &TensorInfo,
    counts: [u64; 4],
    scale: f64,
    scale_min: f64,
    scale_max: f64,
) -> TernaryStats {
    let n = t.n_elements();
    let share = |c: u64| c as f64 / n.max(1) as f64;
    TernaryStats {
        name: t.name.clone(),
        ty: t.ty.name().to_uppercase(),
        n,
        scale,
        scale_min,
        scale_max,
        minus: share(counts[0]),
        zero: share(counts[1]),
        plus: share(counts[2]),
        other: counts[3],
    }
}

// ---------------------------------------------------------------------------------------------
// Packed ternary tensors: counting 2-bit codes.

/// For each byte, how many of its four 2-bit fields hold code 0, 1, 2, 3, in 16-bit lanes
/// (lane c = count of code c). Where a code sits in the byte does not matter for counting,
/// so I2_S (interleaved blocks of 128, see `engine::quant::i2s::code_at` for the layout) is
/// counted without decoding each position: one table lookup per byte.
pub(super) fn code_count_table() -> &'static [u64; 256] {
    static TABLE: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [0u64; 256];
        for (b, lanes) in t.iter_mut().enumerate() {
            for shift in [0, 2, 4, 6] {
                *lanes += 1u64 << (16 * ((b >> shift) & 3));
            }
        }
        t
    })
}

/// Code counts (0, 1, 2, 3) over packed bytes.
pub(super) fn count_codes(packed: &[u8], totals: &mut [u64; 4]) {
    let table = code_count_table();
    // Each byte adds at most 4 to a 16-bit lane: flush before 65 535 / 4 bytes.
    for chunk in packed.chunks(16_000) {
        let lanes: u64 = chunk.iter().map(|&b| table[b as usize]).sum();
        for (c, total) in totals.iter_mut().enumerate() {
            *total += (lanes >> (16 * c)) & 0xffff;
        }
    }
}

/// I2_S: codes 0/1/2 are −1/0/+1 (`quantize_i2_s`); the f32 scale follows the n/4 packed
/// bytes.
pub(super) fn i2s_ternary(t: &TensorInfo, data: &[u8]) -> Result<TernaryStats, InspectError> {
    let n = t.n_elements() as usize;
    if data.len() < n / 4 + 4 {
        return Err(InspectError::Tensor {
            tensor: t.name.clone(),
            message: format!(
                "I2_S data of {} bytes cannot hold {n} values and the scale ({} bytes)",
                data.len(),
                n / 4 + 4
            ),
        });
    }
    let mut codes = [0u64; 4];
    count_codes(&data[..n / 4], &mut codes);
    let scale = engine::quant::i2s::scale(data, n) as f64;
    Ok(ternary_stats(t, codes, scale, scale, scale))
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum TqKind {
    Tq1,
    Tq2,
}

/// TQ1_0 / TQ2_0: per 256-value block, codes (value = code − 1) and an f16 `d`.
pub(super) fn tq_ternary(
    t: &TensorInfo,
    data: &[u8],
    kind: TqKind,
) -> Result<TernaryStats, InspectError> {
    use engine::quant::{tq1, tq2};
    let block_bytes = if kind == TqKind::Tq1 {
        tq1::BLOCK_BYTES
    } else {
        tq2::BLOCK_BYTES
    };
    let n_blocks = (t.n_elements() / QK_K) as usize;
    if data.len() < n_blocks * block_bytes {
        return Err(InspectError::Tensor {
            tensor: t.name.clone(),
            message: format!(
                "{} bytes cannot hold {n_blocks} blocks of {block_bytes}",
                data.len()
            ),
        });
    }
    let mut codes = [0u64; 4];
    let (mut dmin, mut dmax, mut dsum) = (f64::INFINITY, f64::NEG_INFINITY, 0f64);
    for b in data.chunks_exact(block_bytes).take(n_blocks) {
        // The engine's own block decoders: value = code − 1, and the block's f16 `d`.
        let (c, d) = match kind {
            TqKind::Tq1 => tq1::decode_block(b),
            TqKind::Tq2 => tq2::decode_block(b),
        };
        let d = d as f64;
        (dmin, dmax, dsum) = (dmin.min(d), dmax.max(d), dsum + d);
        for &x in c.iter() {
            codes[x.min(3) as usize] += 1;
        }
    }
    let mean = dsum / n_blocks.max(1) as f64;
    Ok(ternary_stats(t, codes, mean, dmin, dmax))
}
