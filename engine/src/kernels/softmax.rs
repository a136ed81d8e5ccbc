//! Softmax as `ggml_soft_max_ext` computes it, and ggml's vector `expf`.

use super::Simd;

const R: u32 = 0x4b40_0000; // 0x1.8p23
const LOG2E: u32 = 0x3fb8_aa3b; // 0x1.715476p+0
const LN2_LO: u32 = 0x35bf_be8e; // 0x1.7f7d1cp-20
const LN2_HI: u32 = 0x3f31_7200; // 0x1.62e4p-1
const C5: u32 = 0x3c07_2010; // 0x1.0e4020p-7
const C4: u32 = 0x3d2b_9f17; // 0x1.573e2ep-5
const C3: u32 = 0x3e2a_af33; // 0x1.555e66p-3
const C2: u32 = 0x3eff_fedb; // 0x1.fffdb6p-2
const C1: u32 = 0x3f7f_fff6; // 0x1.ffffecp-1

#[inline(always)]
fn c(bits: u32) -> f32 {
    f32::from_bits(bits)
}

/// ggml's `ggml_v_expf`, the `__AVX512F__ && __AVX512DQ__` version (ggml.c) the oracle
/// runs on these machines, one lane at a time: same FMAs, same polynomial, `scalef` as an
/// exactly rounded `j·2ⁿ`, and 0 / +inf when |n| > 192. (ggml's AVX2 version rounds
/// differently; an AVX2-only oracle would differ in the last bit.)
#[inline(always)]
pub fn v_expf(x: f32) -> f32 {
    let r = c(R);
    let z = x.mul_add(c(LOG2E), r);
    let n = z - r;
    let b = (-n).mul_add(c(LN2_LO), (-n).mul_add(c(LN2_HI), x));
    let u = b * b;
    let j = c(C5)
        .mul_add(b, c(C4))
        .mul_add(u, c(C3).mul_add(b, c(C2)))
        .mul_add(u, c(C1).mul_add(b, 1.0));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    // _mm512_scalef_ps(j, n): j·2^floor(n), one rounding; n is integral here. 2ⁿ is built
    // from its exponent bits (exact for |n| ≤ 192; `powi` would be a libm call).
    let pow2 = f64::from_bits(((1023 + n as i64) as u64) << 52);
    (j as f64 * pow2) as f32
}

/// ggml's SiLU over a row: `ggml_vec_silu_f32` — `x / (1 + v_expf(0 − x))` for each full
/// chunk of 16 (`ggml_v_silu`, AVX-512), `x / (1.0f + expf(-x))` for the rest.
/// (Always inlined, so that [`silu_row_fast`] compiles it with FMA instructions.)
#[inline(always)]
pub fn silu_row(x: &[f32], out: &mut [f32]) {
    assert_eq!(x.len(), out.len());
    let n16 = x.len() & !15;
    for (o, &v) in out[..n16].iter_mut().zip(&x[..n16]) {
        *o = v / (1.0 + v_expf(0.0 - v));
    }
    for (o, &v) in out[n16..].iter_mut().zip(&x[n16..]) {
        *o = v / (1.0f32 + (-v).exp());
    }
}

/// One row of `ggml_soft_max_ext(kq, mask, scale, 0.0)` (`ggml_compute_forward_soft_max_f32`
/// + `ggml_vec_soft_max_f32`, ggml.c), in place over the row's first `row.len()` entries.
///
/// `nc` is the row length ggml sees (for attention: its padded `n_kv`); entries from
/// `row.len()` to `nc` are taken as masked (−inf, so exactly 0) and not stored. Steps, as
/// ggml: `w = x·scale`, `w += mask`; max; `e = v_expf(w − max)` for entries in full chunks
/// of 16 of the `nc`-long row (each chunk summed in float by the `_mm512_reduce_add_ps`
/// tree, then added to a double), `expf` for the rest (added to the double one by one);
/// finally `p = e · (float)(1.0/sum)`.
pub fn soft_max_ext_row(row: &mut [f32], mask: Option<&[f32]>, scale: f32, nc: usize) {
    soft_max_ext_row_with(Simd::current(), row, mask, scale, nc)
}

/// [`soft_max_ext_row`] at an explicit SIMD level (all levels are bit-identical).
pub fn soft_max_ext_row_with(
    simd: Simd,
    row: &mut [f32],
    mask: Option<&[f32]>,
    scale: f32,
    nc: usize,
) {
    let n = row.len();
    assert!(n <= nc, "softmax: {n} entries in a row of {nc}");
    if let Some(m) = mask {
        assert_eq!(m.len(), n, "softmax: mask length");
    }
    for (i, w) in row.iter_mut().enumerate() {
        *w *= scale;
        if let Some(m) = mask {
            *w += m[i];
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &w in row.iter() {
        max = max.max(w);
    }
    let n16 = nc & !15;
    let mut sum = 0f64;
    let full = n.min(n16);
    let mut i = 0;
    while i < full {
        let end = (i + 16).min(full);
        let mut lanes = [0f32; 16];
        exp_chunk(simd, &row[i..end], max, &mut lanes[..end - i]);
        row[i..end].copy_from_slice(&lanes[..end - i]);
        sum += super::dot::reduce16(&lanes) as f64;
        i += 16;
    }
    for w in row[full..].iter_mut() {
        let e = (*w - max).exp();
        sum += e as f64;
        *w = e;
    }
    let inv = (1.0 / sum) as f32;
    for w in row.iter_mut() {
        *w *= inv;
    }
}

#[inline]
fn exp_chunk(simd: Simd, x: &[f32], max: f32, out: &mut [f32]) {
    match simd.clamp() {
        // A full chunk in sixteen lanes, as ggml computes it (same bits as lane by lane).
        // SAFETY: the clamped Avx512 level has AVX-512 F and FMA; the chunk is 16 values of
        // `x` and of `out` (tested).
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 if x.len() == 16 && out.len() == 16 => unsafe {
            x86::exp_chunk16_avx512(x, max, out)
        },
        // SAFETY: `clamp` only yields a level `Simd::detect` found, and Avx2 and above
        // include FMA, the only feature `exp_chunk_fma` enables. It does no raw memory access.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 | Simd::Avx512 => unsafe { exp_chunk_fma(x, max, out) },
        _ => exp_chunk_generic(x, max, out),
    }
}

#[inline(always)]
fn exp_chunk_generic(x: &[f32], max: f32, out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v_expf(v - max);
    }
}

/// The same code with FMA instructions instead of libm `fmaf` calls (identical results).
///
/// # Safety
/// The CPU has FMA. (Safe code otherwise: slices only, no pointers.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn exp_chunk_fma(x: &[f32], max: f32, out: &mut [f32]) {
    exp_chunk_generic(x, max, out)
}

/// [`silu_row`] with SIMD instructions where the CPU has them (identical results): AVX-512
/// runs `ggml_v_silu` itself, sixteen lanes at a time ([`x86::silu_row_avx512`]); AVX2 the
/// lane-by-lane code with FMA instructions instead of libm `fmaf` calls. 2B-4T decode, one
/// thread, timed around the activation of the forward pass: 414–445 µs per token lane by
/// lane, 109–142 in sixteen lanes.
pub fn silu_row_fast(x: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match Simd::current() {
        // SAFETY: `Simd::current` is clamped to what `Simd::detect` found: its Avx512 level
        // has AVX-512 F (and FMA, with the Avx2 level's features).
        Simd::Avx512 => return unsafe { x86::silu_row_avx512(x, out) },
        Simd::Avx2 => {
            /// # Safety
            /// The CPU has FMA. (Safe code otherwise: slices only, no pointers.)
            #[target_feature(enable = "fma")]
            unsafe fn f(x: &[f32], out: &mut [f32]) {
                silu_row(x, out)
            }
            // SAFETY: the Avx2 level requires FMA (with AVX2 and F16C).
            return unsafe { f(x, out) };
        }
        Simd::Scalar => {}
    }
    silu_row(x, out)
}

#[cfg(target_arch = "x86_64")]
pub mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// `ggml_v_expf`, the AVX-512 version, instruction for instruction.
    ///
    /// # Safety
    /// The CPU has AVX-512 F.
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn v_expf_avx512(x: __m512) -> __m512 {
        let k = |bits: u32| _mm512_set1_ps(c(bits));
        let r = k(R);
        let z = _mm512_fmadd_ps(x, k(LOG2E), r);
        let n = _mm512_sub_ps(z, r);
        let b = _mm512_fnmadd_ps(n, k(LN2_LO), _mm512_fnmadd_ps(n, k(LN2_HI), x));
        let d = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), _mm512_set1_ps(192.0));
        let u = _mm512_mul_ps(b, b);
        let j = _mm512_fmadd_ps(
            _mm512_fmadd_ps(
                _mm512_fmadd_ps(k(C5), b, k(C4)),
                u,
                _mm512_fmadd_ps(k(C3), b, k(C2)),
            ),
            u,
            _mm512_fmadd_ps(k(C1), b, _mm512_set1_ps(1.0)),
        );
        let res = _mm512_scalef_ps(j, n);
        if d == 0 {
            return res;
        }
        let zero = _mm512_setzero_ps();
        let alt = _mm512_mask_blend_ps(
            _mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, zero),
            _mm512_set1_ps(f32::INFINITY),
            zero,
        );
        _mm512_mask_blend_ps(d, res, alt)
    }

    /// `out[i] = v_expf(x[i] − max)` for a chunk of sixteen, in one register (the softmax's
    /// `ggml_v_expf(_mm512_sub_ps(x, max))`).
    ///
    /// # Safety
    /// The CPU has AVX-512 F and FMA; `x` and `out` hold 16 values.
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn exp_chunk16_avx512(x: &[f32], max: f32, out: &mut [f32]) {
        let v = _mm512_sub_ps(_mm512_loadu_ps(x.as_ptr()), _mm512_set1_ps(max));
        _mm512_storeu_ps(out.as_mut_ptr(), v_expf_avx512(v));
    }

    /// [`silu_row`] with `ggml_v_silu` on every full chunk of 16: `x / (1 + v_expf(0 − x))`
    /// in sixteen lanes, the rest as [`silu_row`] does it.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and FMA. (Loads and stores stay within the first `len & !15`
    /// elements of the two slices, whose lengths are asserted equal.)
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn silu_row_avx512(x: &[f32], out: &mut [f32]) {
        assert_eq!(x.len(), out.len());
        let n16 = x.len() & !15;
        for i in (0..n16).step_by(16) {
            let v = _mm512_loadu_ps(x.as_ptr().add(i));
            let e = v_expf_avx512(_mm512_sub_ps(_mm512_setzero_ps(), v));
            let y = _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0), e));
            _mm512_storeu_ps(out.as_mut_ptr().add(i), y);
        }
        silu_row(&x[n16..], &mut out[n16..]);
    }
}
