//! F16 and F32 dot products with one fixed reduction order: ggml's AVX-512 order.
//!
//! `ggml_vec_dot_f16` / `ggml_vec_dot_f32` (ggml.c) built with `__AVX512F__` (the oracle is
//! built with `-march=native` on these AVX-512 machines) keep 4 × 16 f32 lanes: element
//! `i < n & !63` goes to lane `i % 64` by FMA (`GGML_F32Cx16_FMA`); then
//! `GGML_F32Cx16_REDUCE` adds vectors (0+2), (1+3), then those two, and
//! `_mm512_reduce_add_ps` (halves, quarters, swap of 64-bit pairs, last pair: clang 14
//! emits `vextractf64x4`, `vextractf128`, `vpermilpd $1`, `vmovshdup`, checked in the
//! oracle's `ggml.c.o`).
//! For f16 the leftovers `n & 63` are added in double, `sumf += (double)(x*y)` with an f32
//! product; for f32, `sumf += x[i]*y[i]` is one expression, which clang fuses into the f32
//! sum (sequential `vfmadd231ss`). Every SIMD level here computes exactly this, so results
//! are bit-identical across levels and to the oracle. On an AVX2-only oracle build ggml's
//! order differs (32 lanes) and agreement is only close.
//!
//! These are ggml's `vec_dot` path: one token (decode), or `k % 16 != 0`. Two or more
//! tokens of F16/F32 weights go to tinyBLAS instead ([`super::sgemm`]).
//!
//! Weight rows are raw little-endian bytes (f16 or f32, unaligned); activations are f32
//! slices. For f16, ggml first rounds the activation row to f16 (`vec_dot_type` of F16 is
//! F16, `ggml_fp32_to_fp16_row`); callers pass that row widened back to f32
//! ([`round_to_f16`]), which is exact and saves a conversion per weight row.

use super::Simd;
use half::f16;

/// Rounds `x` to f16 (round-to-nearest-even, as F16C `vcvtps2ph` with
/// `_MM_FROUND_TO_NEAREST_INT` and `GGML_FP32_TO_FP16`) and widens back to f32.
pub fn round_to_f16(x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    out.copy_from_slice(x);
    round_to_f16_in_place(out);
}

/// [`round_to_f16`] in place. With F16C (every level from Avx2) eight at a time by
/// `vcvtps2ph` (round to nearest even) and `vcvtph2ps`, ggml's own conversions; else
/// `half`'s, which round the same (both IEEE).
pub fn round_to_f16_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if Simd::current() >= Simd::Avx2 {
        // SAFETY: the Avx2 level (clamped to what was detected) includes F16C; the kernel
        // touches only `x`'s elements.
        return unsafe { x86::round_to_f16_f16c(x) };
    }
    for v in x.iter_mut() {
        *v = f16::from_f32(*v).to_f32();
    }
}

/// Dot of two f16 vectors in ggml's AVX-512 `ggml_vec_dot_f16` order.
pub fn vec_dot_f16(w_row: &[f16], x_f16: &[f16]) -> f32 {
    assert_eq!(w_row.len(), x_f16.len());
    let x: Vec<f32> = x_f16.iter().map(|v| v.to_f32()).collect();
    // SAFETY: `f16` is a `repr(transparent)` u16: the `len` values are exactly `2·len`
    // initialised bytes at the same address, u8 needs no alignment, and the byte view
    // borrows `w_row`, so it cannot outlive it or alias a write.
    let bytes = unsafe { std::slice::from_raw_parts(w_row.as_ptr() as *const u8, w_row.len() * 2) };
    vec_dot_f16_bytes(bytes, &x)
}

/// [`vec_dot_f16_with`] for rows read in a long stream (one token through a whole F16
/// matrix): same arithmetic, plus software prefetch of the weight bytes
/// [`super::PREFETCH_BYTES`] ahead (`kernels::prefetch_stream`: none on a Zen 4), which may
/// reach past the row (prefetches never fault).
pub fn vec_dot_f16_stream_with(simd: Simd, w_row: &[u8], x: &[f32]) -> f32 {
    dot_f16_at::<true>(simd, w_row, x)
}

/// [`vec_dot_f16_stream_with`] with the activations also given as f16 bits (`x16`, the
/// values of `x`, which [`round_to_f16`] made exactly representable: [`f16_bits`]): the
/// same FMAs in the same order, so the same result bit for bit, but the loop reads 16 bytes
/// of activations per 16 of weights instead of 32 — ggml's own form, which converts both.
/// The F16 matmuls' stream on a Zen 4 (`kernels::matmul`), where loads per weight byte
/// bound it. On the 2-vCPU EPYC, alternating runs: 2B-4T F16 decode one thread 3.3–3.6 →
/// 4.1–5.3 tok/s, two 5.1–5.7 → 5.4–6.3; 2B-4T I2_S (its F16 head) one thread 12.5–14.3 →
/// 14.6 (`docs/performance.md`, "The EPYC again"). At the Avx2 and Avx512 levels the
/// 256-bit kernel; at Scalar [`dot_f16_scalar`] of `x`.
pub fn vec_dot_f16_halves_stream_with(simd: Simd, w_row: &[u8], x: &[f32], x16: &[u16]) -> f32 {
    assert!(
        w_row.len() >= 2 * x.len() && x16.len() == x.len(),
        "f16 dot: row has {} bytes and {} f16 activations, need {} and {}",
        w_row.len(),
        x16.len(),
        2 * x.len(),
        x.len()
    );
    match simd.clamp() {
        // SAFETY: Avx2 and Avx512 (clamped: detected on this CPU) include AVX2, FMA and
        // F16C; the assert gives the `2·x.len()` bytes of `w_row` and the `x.len()` values
        // of `x16` the kernel reads.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 | Simd::Avx512 => unsafe { x86::dot_f16_halves_avx2(w_row.as_ptr(), x, x16) },
        _ => dot_f16_scalar(w_row, x),
    }
}

/// The f16 bits of `x` into `out` (`x` already rounded to f16, as [`round_to_f16`] leaves
/// it, so the conversion is exact): F16C eight at a time at the Avx2 level and above, else
/// `half`'s (the same IEEE rounding, none needed here).
pub fn f16_bits(x: &[f32], out: &mut [u16]) {
    assert_eq!(x.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if Simd::current() >= Simd::Avx2 {
        // SAFETY: the Avx2 level (clamped to what was detected) includes F16C; the kernel
        // reads `x` and writes `out`, of equal lengths (asserted).
        return unsafe { x86::f16_bits_f16c(x, out) };
    }
    for (o, v) in out.iter_mut().zip(x) {
        *o = f16::from_f32(*v).to_bits();
    }
}

/// Dot of an f16 weight row (raw LE bytes, `2·x.len()` of them) with an activation row
/// already rounded to f16 (see [`round_to_f16`]), mirroring `ggml_vec_dot_f16`.
pub fn vec_dot_f16_bytes(w_row: &[u8], x: &[f32]) -> f32 {
    vec_dot_f16_with(Simd::current(), w_row, x)
}

/// [`vec_dot_f16_bytes`] at an explicit SIMD level (clamped to what the CPU has).
pub fn vec_dot_f16_with(simd: Simd, w_row: &[u8], x: &[f32]) -> f32 {
    dot_f16_at::<false>(simd, w_row, x)
}

/// [`vec_dot_f16_with`] of four rows with the same activations, each bit for bit as alone:
/// at the AVX-512 level in one pass ([`x86::dot_f16_x4_avx512`]: each activation line loaded
/// once for the four, the four reductions overlapping), else one row after another. For
/// attention's scores, `head_dim` long: one call per position cost more in loop set-up and
/// reduction latency than in FMAs.
pub fn vec_dot_f16_x4_with(simd: Simd, rows: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
    for row in rows {
        assert!(
            row.len() >= 2 * x.len(),
            "f16 dot: row has {} bytes, need {}",
            row.len(),
            2 * x.len()
        );
    }
    #[cfg(target_arch = "x86_64")]
    if simd.clamp() == Simd::Avx512 {
        // SAFETY: the clamped level was detected on this CPU (AVX-512 F/BW/VL with
        // AVX2/FMA/F16C); each row holds the `2·x.len()` bytes the kernel reads (asserted).
        return unsafe { x86::dot_f16_x4_avx512(rows.map(|r| r.as_ptr()), x) };
    }
    rows.map(|row| vec_dot_f16_with(simd, row, x))
}

/// The f16 dot at `simd` (clamped), prefetching ahead of the row with `PREFETCH`.
fn dot_f16_at<const PREFETCH: bool>(simd: Simd, w_row: &[u8], x: &[f32]) -> f32 {
    assert!(
        w_row.len() >= 2 * x.len(),
        "f16 dot: row has {} bytes, need {}",
        w_row.len(),
        2 * x.len()
    );
    match simd.clamp() {
        Simd::Scalar => dot_f16_scalar(w_row, x),
        // SAFETY: `clamp` only yields a level `Simd::detect` found on this CPU (Avx2 = AVX2
        // + FMA + F16C; Avx512 adds F/BW/VL); the assert above gives the `2·x.len()` bytes
        // of `w_row` the kernel reads. Prefetches past the row never fault.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { x86::dot_f16_avx2::<PREFETCH>(w_row.as_ptr(), x) },
        // A stream on a Zen 4: the same order in 256-bit halves streams faster there
        // (`Simd::zen4`). SAFETY: as for Avx2.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 if PREFETCH && Simd::zen4() => unsafe {
            x86::dot_f16_avx2::<PREFETCH>(w_row.as_ptr(), x)
        },
        // SAFETY: as for Avx2.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { x86::dot_f16_avx512::<PREFETCH>(w_row.as_ptr(), x) },
        #[allow(unreachable_patterns)]
        _ => dot_f16_scalar(w_row, x),
    }
}

/// Dot of an f32 weight row (raw LE bytes) with `x`, mirroring `ggml_vec_dot_f32`'s
/// AVX-512 order (leftovers fused sequentially into the f32 sum).
pub fn vec_dot_f32_bytes(w_row: &[u8], x: &[f32]) -> f32 {
    vec_dot_f32_with(Simd::current(), w_row, x)
}

/// Dot of two f32 slices (see [`vec_dot_f32_bytes`]).
pub fn vec_dot_f32(w_row: &[f32], x: &[f32]) -> f32 {
    assert_eq!(w_row.len(), x.len());
    // SAFETY: the `len` f32 values are exactly `4·len` initialised bytes at the same
    // address (no padding), u8 needs no alignment, and the view borrows `w_row`.
    let bytes = unsafe { std::slice::from_raw_parts(w_row.as_ptr() as *const u8, w_row.len() * 4) };
    vec_dot_f32_bytes(bytes, x)
}

/// [`vec_dot_f32_bytes`] at an explicit SIMD level (clamped to what the CPU has).
pub fn vec_dot_f32_with(simd: Simd, w_row: &[u8], x: &[f32]) -> f32 {
    dot_f32_at::<false>(simd, w_row, x)
}

/// [`vec_dot_f32_with`] for rows read in a long stream (one token through a whole F32
/// matrix): same arithmetic, plus software prefetch of the weight bytes
/// [`super::PREFETCH_BYTES`] ahead (`kernels::prefetch_stream`: none on a Zen 4), which may
/// reach past the row (prefetches never fault).
pub fn vec_dot_f32_stream_with(simd: Simd, w_row: &[u8], x: &[f32]) -> f32 {
    dot_f32_at::<true>(simd, w_row, x)
}

/// The f32 dot at `simd` (clamped), prefetching ahead of the row with `PREFETCH`.
fn dot_f32_at<const PREFETCH: bool>(simd: Simd, w_row: &[u8], x: &[f32]) -> f32 {
    assert!(
        w_row.len() >= 4 * x.len(),
        "f32 dot: row has {} bytes, need {}",
        w_row.len(),
        4 * x.len()
    );
    match simd.clamp() {
        Simd::Scalar => dot_f32_scalar(w_row, x),
        // SAFETY: `clamp` only yields a level `Simd::detect` found on this CPU; the assert
        // above gives the `4·x.len()` bytes of `w_row` the kernel reads (unaligned loads).
        // Prefetches past the row never fault.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { x86::dot_f32_avx2::<PREFETCH>(w_row.as_ptr(), x) },
        // SAFETY: as for Avx2.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { x86::dot_f32_avx512::<PREFETCH>(w_row.as_ptr(), x) },
        #[allow(unreachable_patterns)]
        _ => dot_f32_scalar(w_row, x),
    }
}

/// `_mm512_reduce_add_ps`'s tree over 16 lanes (as the oracle's clang compiles it).
#[inline(always)]
pub(crate) fn reduce16(v: &[f32; 16]) -> f32 {
    let mut t3 = [0f32; 8];
    for i in 0..8 {
        t3[i] = v[i + 8] + v[i];
    }
    let mut t6 = [0f32; 4];
    for i in 0..4 {
        t6[i] = t3[i + 4] + t3[i];
    }
    (t6[0] + t6[2]) + (t6[1] + t6[3])
}

/// `GGML_F32x16_REDUCE` over 4 × 16 lanes.
#[inline(always)]
pub(crate) fn reduce64(acc: &[f32; 64]) -> f32 {
    let mut v = [0f32; 16];
    for l in 0..16 {
        v[l] = (acc[l] + acc[32 + l]) + (acc[16 + l] + acc[48 + l]);
    }
    reduce16(&v)
}

#[inline(always)]
fn f16_le(w: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([w[2 * i], w[2 * i + 1]])).to_f32()
}

#[inline(always)]
fn f32_le(w: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]])
}

/// Portable f16 dot in the fixed order.
pub fn dot_f16_scalar(w: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    let np = n & !63;
    let mut acc = [0f32; 64];
    for i in (0..np).step_by(64) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a = f16_le(w, i + l).mul_add(x[i + l], *a);
        }
    }
    let mut s = reduce64(&acc) as f64;
    for i in np..n {
        s += (f16_le(w, i) * x[i]) as f64;
    }
    s as f32
}

/// Portable f32 dot in the fixed order.
pub fn dot_f32_scalar(w: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    let np = n & !63;
    let mut acc = [0f32; 64];
    for i in (0..np).step_by(64) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a = f32_le(w, i + l).mul_add(x[i + l], *a);
        }
    }
    let mut s = reduce64(&acc);
    for i in np..n {
        s = f32_le(w, i).mul_add(x[i], s);
    }
    s
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use crate::kernels::{opaque, prefetch_range, prefetch_stream, PREFETCH_BYTES};
    use std::arch::x86_64::*;

    /// Reduces 16 lanes given as two 8-lane halves (`lo` = lanes 0..8) in the oracle's
    /// `_mm512_reduce_add_ps` order.
    ///
    /// # Safety
    /// The CPU has AVX (implied by [`crate::kernels::Simd::Avx2`]). Register-only, no memory
    /// access; it has no `target_feature` of its own and is always inlined into the
    /// `#[target_feature]` kernels here and in `sgemm`, which the runtime dispatch only calls
    /// at a level `Simd::detect` found.
    #[inline(always)]
    pub(crate) unsafe fn reduce16_halves(lo: __m256, hi: __m256) -> f32 {
        let t3 = _mm256_add_ps(hi, lo);
        let t6 = _mm_add_ps(_mm256_extractf128_ps(t3, 1), _mm256_castps256_ps128(t3));
        let t8 = _mm_add_ps(t6, _mm_movehl_ps(t6, t6));
        _mm_cvtss_f32(_mm_add_ss(t8, _mm_movehdup_ps(t8)))
    }

    /// [`reduce16_halves`] of the two 256-bit halves of a 512-bit vector.
    ///
    /// # Safety
    /// The CPU has AVX-512F (implied by [`crate::kernels::Simd::Avx512`]); register-only,
    /// always inlined into the AVX-512 kernels, which only run at that detected level.
    #[inline(always)]
    pub(crate) unsafe fn reduce16_zmm(v: __m512) -> f32 {
        reduce16_halves(
            _mm512_castps512_ps256(v),
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))),
        )
    }

    /// Loads 8 f16 (16 unaligned bytes) at `p`, widened to f32.
    ///
    /// # Safety
    /// `p` points to 16 readable bytes; the CPU has AVX and F16C (only called from
    /// [`dot_f16_avx2`], into which it is inlined).
    #[inline(always)]
    unsafe fn ld_f16x8(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    /// As [`dot_f16_avx512`], in two 8-lane halves per 16-lane accumulator.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C (callers dispatch here only at a clamped
    /// [`crate::kernels::Simd::Avx2`] or above); `w` points to `2·x.len()` readable bytes.
    /// The loop reads 128 bytes of `w` and 64 floats of `x` per step over the first
    /// `n & !63` values, then the tail through a `2·n`-byte slice, so nothing past those
    /// lengths.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16_avx2<const PREFETCH: bool>(w: *const u8, x: &[f32]) -> f32 {
        let n = x.len();
        let np = n & !63;
        let mut a = [_mm256_setzero_ps(); 8];
        // Two pointers walked (see `opaque`).
        let (mut wp, mut xp) = (w, x.as_ptr());
        let w_end = w.add(2 * np);
        while wp < w_end {
            if PREFETCH {
                prefetch_stream(wp.wrapping_add(PREFETCH_BYTES));
                prefetch_stream(wp.wrapping_add(PREFETCH_BYTES + 64));
            }
            for k in 0..8 {
                a[k] = _mm256_fmadd_ps(
                    ld_f16x8(wp.add(16 * k)),
                    _mm256_loadu_ps(xp.add(8 * k)),
                    a[k],
                );
            }
            wp = wp.add(128);
            xp = opaque(xp.add(64));
        }
        finish_f16_avx2(&a, w, x)
    }

    /// [`dot_f16_avx2`] with the activations read as f16 (`x16`, the bits of `x`): the same
    /// FMAs on the same values in the same order, the same result.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `w` points to `2·x.len()` readable bytes and `x16`
    /// holds `x.len()` values. The loop reads 128 bytes of each per step over the first
    /// `n & !63` values, the tail (from `x`) through a `2·n`-byte slice.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16_halves_avx2(w: *const u8, x: &[f32], x16: &[u16]) -> f32 {
        let n = x.len();
        let np = n & !63;
        let mut a = [_mm256_setzero_ps(); 8];
        // Two pointers walked (see `opaque`).
        let (mut wp, mut xp) = (w, x16.as_ptr() as *const u8);
        let w_end = w.add(2 * np);
        while wp < w_end {
            for k in 0..8 {
                a[k] = _mm256_fmadd_ps(ld_f16x8(wp.add(16 * k)), ld_f16x8(xp.add(16 * k)), a[k]);
            }
            wp = wp.add(128);
            xp = opaque(xp.add(128));
        }
        finish_f16_avx2(&a, w, x)
    }

    /// The end of [`dot_f16_avx2`] and [`dot_f16_halves_avx2`] for one row: the eight
    /// accumulators reduced in ggml's order, then the values past `x.len() & !63` added in
    /// f64.
    ///
    /// # Safety
    /// The CPU has AVX (inlined into those kernels); `w` points to `2·x.len()` readable
    /// bytes.
    #[inline(always)]
    unsafe fn finish_f16_avx2(a: &[__m256; 8], w: *const u8, x: &[f32]) -> f32 {
        let lo = _mm256_add_ps(_mm256_add_ps(a[0], a[4]), _mm256_add_ps(a[2], a[6]));
        let hi = _mm256_add_ps(_mm256_add_ps(a[1], a[5]), _mm256_add_ps(a[3], a[7]));
        let mut s = reduce16_halves(lo, hi) as f64;
        let n = x.len();
        let ws = std::slice::from_raw_parts(w, 2 * n);
        for i in (n & !63)..n {
            s += (super::f16_le(ws, i) * x[i]) as f64;
        }
        s as f32
    }

    /// [`super::f16_bits`] eight values at a time, the rest one by one (F16C).
    ///
    /// # Safety
    /// The CPU has AVX and F16C; `x.len() == out.len()`.
    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn f16_bits_f16c(x: &[f32], out: &mut [u16]) {
        let n8 = x.len() & !7;
        for i in (0..n8).step_by(8) {
            let h =
                _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(x.as_ptr().add(i)));
            _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, h);
        }
        for i in n8..x.len() {
            let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(x[i]));
            out[i] = _mm_extract_epi16::<0>(h) as u16;
        }
    }

    /// [`super::round_to_f16_in_place`] eight values at a time, the rest one by one (all
    /// through F16C).
    ///
    /// # Safety
    /// The CPU has AVX and F16C.
    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn round_to_f16_f16c(x: &mut [f32]) {
        let mut chunks = x.chunks_exact_mut(8);
        for c in chunks.by_ref() {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(c.as_ptr()));
            _mm256_storeu_ps(c.as_mut_ptr(), _mm256_cvtph_ps(h));
        }
        for v in chunks.into_remainder() {
            let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(*v));
            *v = _mm_cvtss_f32(_mm_cvtph_ps(h));
        }
    }

    /// [`dot_f16_avx512`] (without prefetch) of four rows against the same `x`: every row's
    /// accumulators take the same FMAs in the same order and are reduced the same way, so
    /// each result equals that row's [`dot_f16_avx512`] bit for bit.
    ///
    /// # Safety
    /// As [`dot_f16_avx512`] for each row: the CPU has AVX-512 F/BW/VL plus AVX2/FMA/F16C,
    /// and each `w[r]` points to `2·x.len()` readable bytes.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    pub unsafe fn dot_f16_x4_avx512(w: [*const u8; 4], x: &[f32]) -> [f32; 4] {
        let np = x.len() & !63;
        let mut a = [[_mm512_setzero_ps(); 4]; 4];
        for i in (0..np).step_by(64) {
            for k in 0..4 {
                let xv = _mm512_loadu_ps(x.as_ptr().add(i + 16 * k));
                for r in 0..4 {
                    let wv = _mm512_cvtph_ps(_mm256_loadu_si256(
                        w[r].add(2 * (i + 16 * k)) as *const __m256i
                    ));
                    a[r][k] = _mm512_fmadd_ps(wv, xv, a[r][k]);
                }
            }
        }
        std::array::from_fn(|r| finish_f16_avx512(&a[r], w[r], x))
    }

    /// `ggml_vec_dot_f16`'s AVX-512 order. With `PREFETCH`, it also prefetches the weight
    /// bytes [`PREFETCH_BYTES`] ahead of the ones it reads (for long row streams such as
    /// the F16 head; the arithmetic is the same).
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL plus AVX2/FMA/F16C (callers dispatch here only at a
    /// clamped [`crate::kernels::Simd::Avx512`]); `w` points to `2·x.len()` readable bytes
    /// (reads as in [`dot_f16_avx2`]). Prefetches may point past `w`: they never fault.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    pub unsafe fn dot_f16_avx512<const PREFETCH: bool>(w: *const u8, x: &[f32]) -> f32 {
        let n = x.len();
        let np = n & !63;
        let mut a = [_mm512_setzero_ps(); 4];
        // Two pointers walked, the FMAs' operand plain `[reg + disp]` (see `opaque`).
        let (mut wp, mut xp) = (w, x.as_ptr());
        let w_end = w.add(2 * np);
        while wp < w_end {
            if PREFETCH {
                // Two lines a step: the 128 bytes this step reads, PREFETCH_BYTES later.
                prefetch_stream(wp.wrapping_add(PREFETCH_BYTES));
                prefetch_stream(wp.wrapping_add(PREFETCH_BYTES + 64));
            }
            for k in 0..4 {
                let wv = _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(32 * k) as *const __m256i));
                a[k] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xp.add(16 * k)), a[k]);
            }
            wp = wp.add(128);
            xp = opaque(xp.add(64));
        }
        finish_f16_avx512(&a, w, x)
    }

    /// The end of [`dot_f16_avx512`] for one row: the four accumulators reduced in ggml's
    /// order, then the values past `x.len() & !63` added in f64.
    ///
    /// # Safety
    /// The CPU has AVX-512 F (only called from the AVX-512 f16 kernels, into which it is
    /// inlined); `w` points to `2·x.len()` readable bytes.
    #[inline(always)]
    unsafe fn finish_f16_avx512(a: &[__m512; 4], w: *const u8, x: &[f32]) -> f32 {
        let v = _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[1], a[3]));
        let mut s = reduce16_zmm(v) as f64;
        let ws = std::slice::from_raw_parts(w, 2 * x.len());
        for i in x.len() & !63..x.len() {
            s += (super::f16_le(ws, i) * x[i]) as f64;
        }
        s as f32
    }

    /// `ggml_vec_dot_f32`'s AVX-512 order in two 8-lane halves per 16-lane accumulator.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C (dispatch at a clamped level ≥ Avx2); `w` points to
    /// `4·x.len()` readable bytes (any alignment: unaligned loads). The loop reads 64 f32
    /// of each per step over the first `n & !63`, the tail goes through a `4·n`-byte
    /// slice. With `PREFETCH`, it also prefetches [`PREFETCH_BYTES`] ahead (never faults).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f32_avx2<const PREFETCH: bool>(w: *const u8, x: &[f32]) -> f32 {
        let n = x.len();
        let np = n & !63;
        let mut a = [_mm256_setzero_ps(); 8];
        // Two pointers walked (see `opaque`).
        let (mut wp, mut xp) = (w as *const f32, x.as_ptr());
        let w_end = wp.add(np);
        while wp < w_end {
            if PREFETCH {
                // The four lines this step reads, PREFETCH_BYTES later.
                prefetch_range((wp as *const u8).wrapping_add(PREFETCH_BYTES), 256);
            }
            for k in 0..8 {
                a[k] = _mm256_fmadd_ps(
                    _mm256_loadu_ps(wp.add(8 * k)),
                    _mm256_loadu_ps(xp.add(8 * k)),
                    a[k],
                );
            }
            wp = wp.add(64);
            xp = opaque(xp.add(64));
        }
        let lo = _mm256_add_ps(_mm256_add_ps(a[0], a[4]), _mm256_add_ps(a[2], a[6]));
        let hi = _mm256_add_ps(_mm256_add_ps(a[1], a[5]), _mm256_add_ps(a[3], a[7]));
        let mut s = reduce16_halves(lo, hi);
        let ws = std::slice::from_raw_parts(w, 4 * n);
        for i in np..n {
            s = super::f32_le(ws, i).mul_add(x[i], s);
        }
        s
    }

    /// `ggml_vec_dot_f32`'s AVX-512 order (`PREFETCH` as in [`dot_f32_avx2`]).
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL (dispatch at a clamped Avx512); `w` points to
    /// `4·x.len()` readable bytes (reads as in [`dot_f32_avx2`]).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    pub unsafe fn dot_f32_avx512<const PREFETCH: bool>(w: *const u8, x: &[f32]) -> f32 {
        let n = x.len();
        let np = n & !63;
        let mut a = [_mm512_setzero_ps(); 4];
        // Two pointers walked (see `opaque`).
        let (mut wp, mut xp) = (w as *const f32, x.as_ptr());
        let w_end = wp.add(np);
        while wp < w_end {
            if PREFETCH {
                // The four lines this step reads, PREFETCH_BYTES later.
                prefetch_range((wp as *const u8).wrapping_add(PREFETCH_BYTES), 256);
            }
            for k in 0..4 {
                a[k] = _mm512_fmadd_ps(
                    _mm512_loadu_ps(wp.add(16 * k)),
                    _mm512_loadu_ps(xp.add(16 * k)),
                    a[k],
                );
            }
            wp = wp.add(64);
            xp = opaque(xp.add(64));
        }
        let v = _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[1], a[3]));
        let mut s = reduce16_zmm(v);
        let ws = std::slice::from_raw_parts(w, 4 * n);
        for i in np..n {
            s = super::f32_le(ws, i).mul_add(x[i], s);
        }
        s
    }
}
