//! TQ2_0: ggml's 2-bit ternary blocks (GGUF type 35), 256 values in 66 bytes.
//!
//! `block_tq2_0` (ggml-common.h): `qs[64]` then `d` (f16). Value `j*4 + l*32 + m` of a
//! block (j in {0, 32}, l in 0..4, m in 0..32) is `((qs[j + m] >> 2l) & 3) − 1`, times d
//! (`dequantize_row_tq2_0`, ggml-quants.c).

use super::q8k::{hsum_float_8, tq_accumulate, tq_lanes, BlockQ8K, QK_K};
use crate::kernels::Simd;

/// Bytes per block.
pub const BLOCK_BYTES: usize = 66;

/// Bytes of one row of `cols` values.
pub fn row_bytes(cols: usize) -> usize {
    cols / QK_K * BLOCK_BYTES
}

/// The block's codes (0..=2, or 3 for a never-written pattern) in value order, and its d.
pub fn decode_block(b: &[u8]) -> ([u8; QK_K], f32) {
    let mut codes = [0u8; QK_K];
    for j in (0..64).step_by(32) {
        for l in 0..4 {
            for m in 0..32 {
                codes[j * 4 + l * 32 + m] = (b[j + m] >> (2 * l)) & 3;
            }
        }
    }
    (codes, super::f16_at(&b[64..66], 0))
}

/// Mirrors `dequantize_row_tq2_0`: `(float)(q − 1) · d`.
pub fn dequantize_row(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(QK_K))
    {
        let (codes, d) = decode_block(b);
        for (v, &c) in o.iter_mut().zip(codes.iter()) {
            *v = (c as i32 - 1) as f32 * d;
        }
    }
}

/// Mirrors `quantize_row_tq2_0_ref`: d = max |x| per block (stored f16), codes
/// `lroundf(x·(1/d)) + 1`.
pub fn quantize_row(x: &[f32]) -> Vec<u8> {
    assert!(
        x.len().is_multiple_of(QK_K),
        "TQ2_0: {} values is not a multiple of {QK_K}",
        x.len()
    );
    let mut out = Vec::with_capacity(row_bytes(x.len()));
    for xb in x.chunks_exact(QK_K) {
        let d = xb.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0u8; 64];
        for j in (0..64).step_by(32) {
            for m in 0..32 {
                let mut q = 0u8;
                for n in 0..4 {
                    let xi = (xb[j * 4 + n * 32 + m] * id).round() as i32 + 1;
                    q = q.wrapping_add(((xi & 3) as u8) << (2 * n));
                }
                qs[j + m] = q;
            }
        }
        out.extend_from_slice(&qs);
        out.extend_from_slice(&half::f16::from_f32(d).to_bits().to_le_bytes());
    }
    out
}

/// Dot of one TQ2_0 row with Q8_K activations, mirroring the x86 `__AVX2__` branch of
/// `ggml_vec_dot_tq2_0_q8_K` (ggml-quants.c) — the one the oracle runs — including its
/// eight float lanes, the unfused `sumf += lane·(y.d·x.d)` (clang build, see
/// `tq_accumulate`) and `hsum_float_8`.
pub fn vec_dot_q8k(row: &[u8], y: &[BlockQ8K]) -> f32 {
    vec_dot_q8k_with(Simd::current(), row, y)
}

/// [`vec_dot_q8k`] at an explicit SIMD level (clamped to what the CPU has).
pub fn vec_dot_q8k_with(simd: Simd, row: &[u8], y: &[BlockQ8K]) -> f32 {
    dot_with::<false>(simd, row, y)
}

/// [`vec_dot_q8k_with`] for rows read in one long stream (one token through a whole
/// matrix): same arithmetic, plus a software prefetch [`crate::kernels::PREFETCH_BYTES`]
/// ahead of the weight bytes (which may reach past the row: prefetches never fault).
pub fn vec_dot_q8k_stream_with(simd: Simd, row: &[u8], y: &[BlockQ8K]) -> f32 {
    dot_with::<true>(simd, row, y)
}

fn dot_with<const PREFETCH: bool>(simd: Simd, row: &[u8], y: &[BlockQ8K]) -> f32 {
    assert!(
        row.len() >= y.len() * BLOCK_BYTES,
        "TQ2_0 dot: row too short"
    );
    match simd.clamp() {
        Simd::Scalar => vec_dot_q8k_scalar(row, y),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `clamp` only yields a level `Simd::detect` found, and Avx2 and above have
        // AVX2/FMA/F16C; the assert above gives the `y.len()` blocks of `row` it reads.
        Simd::Avx2 | Simd::Avx512 => unsafe { vec_dot_q8k_avx2::<PREFETCH>(row, y) },
        #[allow(unreachable_patterns)]
        _ => vec_dot_q8k_scalar(row, y),
    }
}

/// Portable [`vec_dot_q8k`].
pub fn vec_dot_q8k_scalar(row: &[u8], y: &[BlockQ8K]) -> f32 {
    let mut sumf = [0f32; 8];
    for (b, yb) in row.chunks_exact(BLOCK_BYTES).zip(y) {
        let (codes, xd) = decode_block(b);
        tq_accumulate(&mut sumf, &tq_lanes(&codes, yb), yb.d * xd);
    }
    hsum_float_8(&sumf)
}

/// [`vec_dot_q8k`] with ggml's AVX2 intrinsics.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C, and `row.len() ≥ y.len()·66`: block `i` loads 64 bytes
/// at `66·i` (two 32-byte loads) and reads its f16 `d` through a checked slice. The
/// `BlockQ8K` loads stay inside the block: `qs` (256 i8) at `4j + 0..128` for `j` in
/// {0, 32}, `bsums` (16 i16) as one 32-byte load.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q8k_avx2<const PREFETCH: bool>(row: &[u8], y: &[BlockQ8K]) -> f32 {
    use std::arch::x86_64::*;
    let mut sumf = _mm256_setzero_ps();
    let m3 = _mm256_set1_epi8(3);
    for (i, yb) in y.iter().enumerate() {
        let x = row.as_ptr().add(i * BLOCK_BYTES);
        if PREFETCH {
            crate::kernels::prefetch_stream(x.wrapping_add(crate::kernels::PREFETCH_BYTES));
        }
        let yq = yb.qs.as_ptr();
        let mut s0 = _mm256_setzero_si256();
        let mut s1 = _mm256_setzero_si256();
        for j in (0..64).step_by(32) {
            let q0 = _mm256_loadu_si256(x.add(j) as *const __m256i);
            let q1 = _mm256_and_si256(_mm256_srli_epi16(q0, 2), m3);
            let q2 = _mm256_and_si256(_mm256_srli_epi16(q0, 4), m3);
            let q3 = _mm256_and_si256(_mm256_srli_epi16(q0, 6), m3);
            let q0 = _mm256_and_si256(q0, m3);
            let y0 = _mm256_loadu_si256(yq.add(j * 4) as *const __m256i);
            let y1 = _mm256_loadu_si256(yq.add(j * 4 + 32) as *const __m256i);
            let y2 = _mm256_loadu_si256(yq.add(j * 4 + 64) as *const __m256i);
            let y3 = _mm256_loadu_si256(yq.add(j * 4 + 96) as *const __m256i);
            s0 = _mm256_add_epi16(
                s0,
                _mm256_add_epi16(_mm256_maddubs_epi16(q0, y0), _mm256_maddubs_epi16(q1, y1)),
            );
            s1 = _mm256_add_epi16(
                s1,
                _mm256_add_epi16(_mm256_maddubs_epi16(q2, y2), _mm256_maddubs_epi16(q3, y3)),
            );
        }
        let ysum = _mm256_loadu_si256(yb.bsums.as_ptr() as *const __m256i);
        let xd = super::f16_at(&row[i * BLOCK_BYTES + 64..i * BLOCK_BYTES + 66], 0);
        let d = _mm256_set1_ps(yb.d * xd);
        let s = _mm256_sub_epi16(_mm256_add_epi16(s0, s1), ysum);
        let s = _mm256_madd_epi16(s, _mm256_set1_epi16(1));
        sumf = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(s), d), sumf);
    }
    let mut l = [0f32; 8];
    _mm256_storeu_ps(l.as_mut_ptr(), sumf);
    hsum_float_8(&l)
}
