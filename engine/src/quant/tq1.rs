//! TQ1_0: ggml's base-3 packed ternary blocks (GGUF type 34), 256 values in 54 bytes.
//!
//! `block_tq1_0` (ggml-common.h): `qs[48]` (5 trits per byte), `qh[4]` (4 trits per byte),
//! `d` (f16). A trit is read by multiplying the byte by 3ⁿ (mod 256) and taking
//! `(q·3) >> 8` (`dequantize_row_tq1_0`, ggml-quants.c). Value order: trits n=0..5 of
//! `qs[0..32]` (32 values each), trits n=0..5 of `qs[32..48]` (16 each), trits n=0..4 of
//! `qh[0..4]` (4 each).

use super::q8k::{hsum_float_8, tq_accumulate, tq_lanes, BlockQ8K, QK_K};
use crate::kernels::Simd;

/// Bytes per block.
pub const BLOCK_BYTES: usize = 54;

const POW3: [u8; 6] = [1, 3, 9, 27, 81, 243];

/// Bytes of one row of `cols` values.
pub fn row_bytes(cols: usize) -> usize {
    cols / QK_K * BLOCK_BYTES
}

#[inline(always)]
fn trit(byte: u8, n: usize) -> u8 {
    let q = byte.wrapping_mul(POW3[n]);
    ((q as u16 * 3) >> 8) as u8
}

/// The block's codes (0..=2) in value order, and its d.
pub fn decode_block(b: &[u8]) -> ([u8; QK_K], f32) {
    let mut codes = [0u8; QK_K];
    let mut k = 0;
    for n in 0..5 {
        for m in 0..32 {
            codes[k] = trit(b[m], n);
            k += 1;
        }
    }
    for n in 0..5 {
        for m in 0..16 {
            codes[k] = trit(b[32 + m], n);
            k += 1;
        }
    }
    for n in 0..4 {
        for j in 0..4 {
            codes[k] = trit(b[48 + j], n);
            k += 1;
        }
    }
    (codes, super::f16_at(&b[52..54], 0))
}

/// Mirrors `dequantize_row_tq1_0`: `(float)(xi − 1) · d`.
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

/// Mirrors `quantize_row_tq1_0_ref`: d = max |x| (f16), trits `lroundf(x/d) + 1` packed
/// base 3, most significant trit first, then `q = (q·256 + 242) / 243`.
pub fn quantize_row(x: &[f32]) -> Vec<u8> {
    assert!(
        x.len().is_multiple_of(QK_K),
        "TQ1_0: {} values is not a multiple of {QK_K}",
        x.len()
    );
    let mut out = Vec::with_capacity(row_bytes(x.len()));
    let code = |v: f32, id: f32| ((v * id).round() as i32 + 1) as u8;
    // ggml's `(q·256 + (243 − 1)) / 243`, kept in its C form.
    #[allow(clippy::manual_div_ceil)]
    let pack = |q: u8| ((q as u16 * 256 + 242) / 243) as u8;
    for xb in x.chunks_exact(QK_K) {
        let d = xb.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut blk = [0u8; BLOCK_BYTES];
        for m in 0..32 {
            let q = (0..5).fold(0u8, |q, n| q * 3 + code(xb[m + n * 32], id));
            blk[m] = pack(q);
        }
        for m in 0..16 {
            let q = (0..5).fold(0u8, |q, n| q * 3 + code(xb[160 + m + n * 16], id));
            blk[32 + m] = pack(q);
        }
        for j in 0..4 {
            let q = (0..4).fold(0u8, |q, n| q * 3 + code(xb[240 + j + n * 4], id));
            blk[48 + j] = pack(q * 3);
        }
        blk[52..54].copy_from_slice(&half::f16::from_f32(d).to_bits().to_le_bytes());
        out.extend_from_slice(&blk);
    }
    out
}

/// Dot of one TQ1_0 row with Q8_K activations, mirroring the x86 `__AVX2__` branch of
/// `ggml_vec_dot_tq1_0_q8_K` (ggml-quants.c): same eight lanes,
/// `sumf += lane·(y.d·x.d)` unfused (clang build, see `tq_accumulate`), `hsum_float_8`.
/// Its `avg_epu8` trit extraction equals `(q·3) >> 8` for every byte (checked
/// exhaustively in the tests).
pub fn vec_dot_q8k(row: &[u8], y: &[BlockQ8K]) -> f32 {
    vec_dot_q8k_with(Simd::current(), row, y)
}

/// [`vec_dot_q8k`] at an explicit SIMD level (clamped to what the CPU has).
pub fn vec_dot_q8k_with(simd: Simd, row: &[u8], y: &[BlockQ8K]) -> f32 {
    assert!(
        row.len() >= y.len() * BLOCK_BYTES,
        "TQ1_0 dot: row too short"
    );
    match simd.clamp() {
        Simd::Scalar => vec_dot_q8k_scalar(row, y),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `clamp` only yields a level `Simd::detect` found, and Avx2 and above have
        // AVX2/FMA/F16C; the kernel's raw loads are within fixed-size arrays.
        Simd::Avx2 | Simd::Avx512 => unsafe { vec_dot_q8k_avx2(row, y) },
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

/// The AVX2 trit extraction of ggml (`subs_epu8`, two `avg_epu8`, `>> 6`), for the test
/// that it equals `(q·3) >> 8`.
pub fn trit_avx2_formula(q: u8) -> u8 {
    let a = q.saturating_sub(1) as u16;
    let avg0 = (a + 1) >> 1;
    let r = (a + avg0 + 1) >> 1;
    ((r >> 6) & 3) as u8
}

/// `(q·3) >> 8`, the scalar trit extraction.
pub fn trit_scalar_formula(q: u8) -> u8 {
    ((q as u16 * 3) >> 8) as u8
}

/// [`vec_dot_q8k`] with ggml's AVX2 integer and float steps.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C. Memory: the weight bytes go through checked slices;
/// the loads read the local `codes` array (256 bytes, 8 × 32) and each `BlockQ8K`'s `qs`
/// (256 i8, 8 × 32) and `bsums` (16 i16, one 32-byte load), all in bounds by their types.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q8k_avx2(row: &[u8], y: &[BlockQ8K]) -> f32 {
    use std::arch::x86_64::*;
    // Trit extraction: the codes are computed exactly as the scalar path does, one 32-byte
    // vector at a time; the integer lanes and the float step then follow ggml's AVX2 code.
    let mut sumf = _mm256_setzero_ps();
    for (i, yb) in y.iter().enumerate() {
        let b = &row[i * BLOCK_BYTES..(i + 1) * BLOCK_BYTES];
        let (codes, xd) = decode_block(b);
        let mut s = _mm256_setzero_si256();
        for v in 0..8 {
            let c = _mm256_loadu_si256(codes.as_ptr().add(v * 32) as *const __m256i);
            let q = _mm256_loadu_si256(yb.qs.as_ptr().add(v * 32) as *const __m256i);
            s = _mm256_add_epi16(s, _mm256_maddubs_epi16(c, q));
        }
        let ysum = _mm256_loadu_si256(yb.bsums.as_ptr() as *const __m256i);
        let s = _mm256_madd_epi16(_mm256_sub_epi16(s, ysum), _mm256_set1_epi16(1));
        sumf = _mm256_add_ps(
            _mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(yb.d * xd)),
            sumf,
        );
    }
    let mut l = [0f32; 8];
    _mm256_storeu_ps(l.as_mut_ptr(), sumf);
    hsum_float_8(&l)
}
