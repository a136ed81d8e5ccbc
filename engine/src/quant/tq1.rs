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
        "TQ1_0 dot: row too short"
    );
    match simd.clamp() {
        Simd::Scalar => vec_dot_q8k_scalar(row, y),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `clamp` only yields a level `Simd::detect` found, and Avx2 and above have
        // AVX2/FMA/F16C; the assert above gives the `54·y.len()` bytes the kernel reads.
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

/// [`vec_dot_q8k`] with ggml's AVX2 code: trits by its multiply-by-3ⁿ and `avg_epu8`
/// steps (the qh trits through `vpmullw`), i16 sums, then its float step.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C, and `row.len() ≥ 54·y.len()`: block `i` loads 32 bytes
/// at `54i`, 16 at `54i + 32`, 4 at `54i + 48` and reads its f16 `d` at `54i + 52`. The
/// `BlockQ8K` loads stay inside the block: `qs` (256 i8) as eight 32-byte loads, `bsums`
/// (16 i16) as one.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn vec_dot_q8k_avx2<const PREFETCH: bool>(row: &[u8], y: &[BlockQ8K]) -> f32 {
    use std::arch::x86_64::*;
    let one = _mm256_set1_epi8(1);
    let m3 = _mm256_set1_epi8(3);
    let m8 = _mm256_set1_epi8(-8);
    let zero = _mm256_setzero_si256();
    // `(q·3) >> 8` of every byte, the ggml way: cancel avg's +1, two avgs, top two bits.
    let trit = |q: __m256i| {
        let q = _mm256_subs_epu8(q, one);
        let q = _mm256_avg_epu8(q, _mm256_avg_epu8(q, zero));
        _mm256_and_si256(_mm256_srli_epi16::<6>(q), m3)
    };
    // ×3 and ×9 modulo 256 in every byte (`x + x + x`, `((x << 3) & −8) + x`).
    let times3 = |x: __m256i| _mm256_add_epi8(x, _mm256_add_epi8(x, x));
    let times9 = |x: __m256i| _mm256_add_epi8(_mm256_and_si256(_mm256_slli_epi16::<3>(x), m8), x);
    let pow3 = _mm256_set_epi16(27, 27, 27, 27, 9, 9, 9, 9, 3, 3, 3, 3, 1, 1, 1, 1);
    let mut sumf = _mm256_setzero_ps();
    for (i, yb) in y.iter().enumerate() {
        let x = row.as_ptr().add(i * BLOCK_BYTES);
        if PREFETCH {
            crate::kernels::prefetch(x.wrapping_add(crate::kernels::PREFETCH_BYTES));
        }
        let yq = yb.qs.as_ptr();
        let ld = |o: usize| _mm256_loadu_si256(yq.add(o) as *const __m256i);
        // qs[0..32]: five trits each, values 32n + m.
        let qx0 = _mm256_loadu_si256(x as *const __m256i);
        let qx1 = times3(qx0);
        let qx2 = times9(qx0);
        let qx3 = times9(qx1);
        let qx4 = times9(qx2);
        let mut sumi0 = _mm256_add_epi16(
            _mm256_maddubs_epi16(trit(qx0), ld(0)),
            _mm256_maddubs_epi16(trit(qx1), ld(32)),
        );
        let mut sumi1 = _mm256_add_epi16(
            _mm256_maddubs_epi16(trit(qx2), ld(64)),
            _mm256_maddubs_epi16(trit(qx3), ld(96)),
        );
        let mut sumi2 = _mm256_maddubs_epi16(trit(qx4), ld(128));
        // qs[32..48] (five trits, values 160 + 16n + m) and qh (four, 240 + 4n + j).
        let h0 = _mm_loadu_si128(x.add(32) as *const __m128i);
        let qh = std::ptr::read_unaligned(x.add(48) as *const u32);
        let h1 = _mm_add_epi8(h0, _mm_add_epi8(h0, h0));
        let h2 = _mm_add_epi8(
            _mm_and_si128(_mm_slli_epi16::<3>(h0), _mm_set1_epi8(-8)),
            h0,
        );
        let h3 = _mm_add_epi8(
            _mm_and_si128(_mm_slli_epi16::<3>(h1), _mm_set1_epi8(-8)),
            h1,
        );
        let h4 = _mm_add_epi8(
            _mm_and_si128(_mm_slli_epi16::<3>(h2), _mm_set1_epi8(-8)),
            h2,
        );
        let q5 = _mm256_and_si256(
            _mm256_mullo_epi16(_mm256_cvtepu8_epi16(_mm_set1_epi32(qh as i32)), pow3),
            _mm256_set1_epi16(0xFF),
        );
        let h5 = _mm_packus_epi16(
            _mm256_castsi256_si128(q5),
            _mm256_extracti128_si256::<1>(q5),
        );
        let qx01 = _mm256_set_m128i(h1, h0);
        let qx23 = _mm256_set_m128i(h3, h2);
        let qx45 = _mm256_set_m128i(h5, h4);
        sumi0 = _mm256_add_epi16(sumi0, _mm256_maddubs_epi16(trit(qx01), ld(160)));
        sumi1 = _mm256_add_epi16(sumi1, _mm256_maddubs_epi16(trit(qx23), ld(192)));
        sumi2 = _mm256_add_epi16(sumi2, _mm256_maddubs_epi16(trit(qx45), ld(224)));
        let ysum = _mm256_loadu_si256(yb.bsums.as_ptr() as *const __m256i);
        let xd = super::f16_at(&row[i * BLOCK_BYTES + 52..i * BLOCK_BYTES + 54], 0);
        let d = _mm256_set1_ps(yb.d * xd);
        let s = _mm256_add_epi16(
            _mm256_sub_epi16(sumi0, ysum),
            _mm256_add_epi16(sumi1, sumi2),
        );
        let s = _mm256_madd_epi16(s, _mm256_set1_epi16(1));
        sumf = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(s), d), sumf);
    }
    let mut l = [0f32; 8];
    _mm256_storeu_ps(l.as_mut_ptr(), sumf);
    hsum_float_8(&l)
}
