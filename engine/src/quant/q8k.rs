//! Q8_K: ggml's 256-value int8 activation blocks, the `vec_dot_type` of TQ1_0 and TQ2_0
//! (`type_traits[GGML_TYPE_TQ*_0].vec_dot_type = GGML_TYPE_Q8_K`, ggml.c).

/// Values per Q8_K block (`QK_K`).
pub const QK_K: usize = 256;

/// One Q8_K block (`block_q8_K`, ggml-common.h).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ8K {
    /// Delta: value = d · q.
    pub d: f32,
    /// Quants.
    pub qs: [i8; QK_K],
    /// Sums of the quants in groups of 16.
    pub bsums: [i16; QK_K / 16],
}

impl Default for BlockQ8K {
    fn default() -> Self {
        BlockQ8K {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
        }
    }
}

/// Quantizes `x` (a multiple of 256 long) into `y`, mirroring `quantize_row_q8_K_ref`
/// (ggml-quants.c), which is what `quantize_row_q8_K` calls on x86.
///
/// Per block: `max` is the first value of largest |x|; `iscale = -127/max`;
/// `q = MIN(127, nearest_int(iscale·x))` with the product rounded to f32 first (clang does
/// not fuse it, see [`super::nearest_int`]); `d = 1/iscale`; an all-zero
/// block gets `d = 0` and zero quants (and keeps whatever bsums it had: ggml skips them too,
/// we zero them).
pub fn quantize_row_q8_k(x: &[f32], y: &mut [BlockQ8K]) {
    assert!(
        x.len().is_multiple_of(QK_K),
        "Q8_K: {} values is not a multiple of {QK_K}",
        x.len()
    );
    assert_eq!(y.len(), x.len() / QK_K, "Q8_K: block count");
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut max = 0f32;
        let mut amax = 0f32;
        for &v in xb {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax == 0.0 {
            *yb = BlockQ8K::default();
            continue;
        }
        let iscale = -127.0f32 / max;
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            *q = super::nearest_int(iscale * v).min(127) as i8;
        }
        for (j, s) in yb.bsums.iter_mut().enumerate() {
            *s = yb.qs[j * 16..j * 16 + 16]
                .iter()
                .map(|&q| q as i32)
                .sum::<i32>() as i16;
        }
        yb.d = 1.0 / iscale;
    }
}

/// The eight i32 lane sums ggml's AVX2 TQ dots (`ggml_vec_dot_tq1_0_q8_K`,
/// `ggml_vec_dot_tq2_0_q8_K`, ggml-quants.c) produce for one block, before the float step.
///
/// Their i16 lane `k` collects the products at byte positions `2k, 2k+1` of each 32-value
/// slice of the block, then has `bsums[k]` subtracted; `_mm256_madd_epi16(.., 1)` pairs
/// lanes `2l, 2l+1` into i32 lane `l`. So lane `l` = Σ over positions `i` with
/// `(i % 32) / 4 == l` of `code_i · q_i`, minus Σ `q` over positions `32l .. 32l+32`.
/// (No i16 lane can overflow here.) `codes` are the 0..=2 codes in the block's value order.
#[inline]
pub(crate) fn tq_lanes(codes: &[u8; QK_K], y: &BlockQ8K) -> [i32; 8] {
    let mut lanes = [0i32; 8];
    for (i, (&c, &q)) in codes.iter().zip(y.qs.iter()).enumerate() {
        lanes[(i % 32) / 4] += c as i32 * q as i32;
    }
    for (l, lane) in lanes.iter_mut().enumerate() {
        *lane -= y.bsums[2 * l] as i32 + y.bsums[2 * l + 1] as i32;
    }
    lanes
}

/// `sumf = (float)lane · d + sumf` per lane, two roundings: ggml's
/// `_mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(sumi), d), sumf)`. The oracle's clang
/// build keeps the two intrinsics apart (`vmulps` + `vaddps` in its
/// `ggml_vec_dot_tq{1,2}_0_q8_K`); a GCC build would fuse them into `vfmadd231ps`.
#[inline(always)]
pub(crate) fn tq_accumulate(sumf: &mut [f32; 8], lanes: &[i32; 8], d: f32) {
    for l in 0..8 {
        sumf[l] += lanes[l] as f32 * d;
    }
}

/// ggml's `hsum_float_8` (ggml-quants.c): `((x4+x0)+(x6+x2)) + ((x5+x1)+(x7+x3))`.
#[inline(always)]
pub(crate) fn hsum_float_8(x: &[f32; 8]) -> f32 {
    let r = [x[4] + x[0], x[5] + x[1], x[6] + x[2], x[7] + x[3]];
    let (a, b) = (r[0] + r[2], r[1] + r[3]);
    a + b
}
