//! tinyBLAS, llamafile's matmul (`llamafile_sgemm`, `ggml/src/llamafile/sgemm.cpp`), in the
//! order the oracle's AVX-512 build runs it.
//!
//! The vendored llama.cpp defines `GGML_USE_LLAMAFILE` (`GGML_LLAMAFILE` defaults on), so
//! `ggml_compute_forward_mul_mat` (ggml.c) first offers every matmul to
//! `llamafile_sgemm(m = ne01, n = ne11, k = ne00, A = src0, B = src1, …)` — when `src1` is
//! contiguous, with `Btype = src1->type` — and falls back to its `vec_dot` loop only when
//! that returns false. (A second offer, with `src1` converted to `vec_dot_type`, can only
//! succeed for F16×F16 and Q8_0, which this build's `__AVX512F__` branch never takes.)
//! With `__AVX512F__` (the oracle is built with `-march=native` on these machines) it takes:
//!
//! - `n < 2` never: "only enable sgemm for prompt processing" — single-token decode stays
//!   on `ggml_vec_dot_f16` / `ggml_vec_dot_f32` ([`super::dot`]);
//! - A = F32 with B = F32, or A = F16 with B = **F32** (the activations are *not* rounded
//!   to f16 on this path), and only if `k % 16 == 0`;
//! - nothing else (I2_S, TQ1_0, TQ2_0 fall through; Q8_0/Q4_0 are not used here).
//!
//! Per output element, `tinyBLAS<16, __m512, …>::gemm` keeps one 16-lane f32 accumulator
//! (`D Cv[RN][RM] = {}`), adds `A[l]·B[l]` into lane `l % 16` by `_mm512_fmadd_ps` for
//! `l = 0, 16, 32, … < k` in order (f16 A widened exactly by `vcvtph2ps`), then
//! `hsum` = `_mm512_reduce_add_ps`. Clang 14 compiles that reduce to the same halving tree
//! as `ggml_vec_dot_f*`'s (`vextractf64x4`+`vaddps`, `vextractf128`+`vaddps`,
//! `vpermilpd`+`vaddps`, `vmovshdup`+`vaddss`: [`super::dot::reduce16`]); checked in the
//! oracle's `sgemm.cpp.o`. The RM×RN tiling (`mnpack`) and the `ith/nth` split of tiles
//! over threads only decide *who* computes an element, never its order, so results do
//! not depend on the tile shape or the thread count. There is no tail: `k % 16 == 0`.

use super::dot::reduce16;
use super::Simd;
use half::f16;

/// tinyBLAS's `KN` on AVX-512: lanes per accumulator, and the multiple `k` must be.
pub const KN: usize = 16;

/// Whether `llamafile_sgemm`'s `__AVX512F__` branch takes a `mul_mat` of F32 or F16 `A`
/// with a contiguous F32 `src1` of `n` rows of length `k` (`n = ne11`, `k = ne00`):
/// `n ≥ 2` and `k % 16 == 0`, the same test for both A types. Callers check contiguity.
///
/// `BITPROBE_LLAMAFILE=off` makes it refuse everything: the numerics of a bitnet.cpp built
/// with `GGML_LLAMAFILE=OFF` (every matmul through ggml's `vec_dot`), read once.
#[inline]
pub fn accepts(n: usize, k: usize) -> bool {
    enabled() && n >= 2 && k.is_multiple_of(KN)
}

/// Whether the llamafile path is mirrored at all (see [`accepts`]).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        !matches!(
            std::env::var("BITPROBE_LLAMAFILE").as_deref(),
            Ok("off" | "0" | "no")
        )
    })
}

/// One tinyBLAS output element: f16 row `a` (raw LE bytes, `2·b.len()` of them) times f32
/// row `b` (not rounded), `b.len() % 16 == 0`.
pub fn dot_f16_with(simd: Simd, a: &[u8], b: &[f32]) -> f32 {
    check(a.len(), 2, b.len());
    match simd.clamp() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `clamp` only yields a level `Simd::detect` found on this CPU; `check`
        // asserted `b.len() % 16 == 0` and `a.len() ≥ 2·b.len()`, what the kernel reads.
        Simd::Avx512 => unsafe { x86::dot_f16_avx512(a.as_ptr(), b) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as for Avx512.
        Simd::Avx2 => unsafe { x86::dot_f16_avx2(a.as_ptr(), b) },
        _ => dot_f16_scalar(a, b),
    }
}

/// One tinyBLAS output element for f32 `a` (raw LE bytes) and f32 `b`, `b.len() % 16 == 0`.
pub fn dot_f32_with(simd: Simd, a: &[u8], b: &[f32]) -> f32 {
    check(a.len(), 4, b.len());
    match simd.clamp() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `clamp` only yields a level `Simd::detect` found on this CPU; `check`
        // asserted `b.len() % 16 == 0` and `a.len() ≥ 4·b.len()`, what the kernel reads.
        Simd::Avx512 => unsafe { x86::dot_f32_avx512(a.as_ptr(), b) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as for Avx512.
        Simd::Avx2 => unsafe { x86::dot_f32_avx2(a.as_ptr(), b) },
        _ => dot_f32_scalar(a, b),
    }
}

/// The element type of tinyBLAS's `A` (the weights).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AType {
    F16,
    F32,
}

impl AType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            AType::F16 => 2,
            AType::F32 => 4,
        }
    }
}

/// Weight rows × tokens computed together by the AVX-512 kernel: 24 accumulators, four
/// weight vectors and one token vector fill 29 of the 32 vector registers.
pub const TILE: (usize, usize) = (4, 6);

/// Chunk of `k` per pass of the AVX-512 tiles. Measured on the 2B-4T `ffn_up` shape
/// (6912 × 2560, F16, 128 tokens, one thread, 32-row tasks) with the tokens packed per task:
/// 107 GFLOP/s at 128, 115 at 256, 117 at 384, 117 at 512 (F32: 108–109 at 256–512); packed
/// once per matmul ([`pack_tokens`]): 112 at 256, 115–123 at 384, 116 at 512 and 768 (F32
/// 105, 106–114, 107, 109).
pub const KC: usize = 384;

/// 16 floats on a 64-byte boundary: the unit of the packed tokens ([`Tokens`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C, align(64))]
pub struct Lane16(pub [f32; KN]);

/// The token rows of one matmul (`b`, `k` floats each) and, for the AVX-512 tiles, the same
/// values packed once for every task: chunk by chunk of `k` ([`KC`]), each token's chunk
/// contiguous and 64-byte aligned (token `t`'s chunk `c` at float `nt·c·KC + t·kn`, `kn` the
/// chunk's width). Made by [`pack_tokens`].
#[derive(Clone, Copy, Debug)]
pub struct Tokens<'a> {
    b: &'a [f32],
    k: usize,
    /// Empty unless the AVX-512 tiles will run.
    packed: &'a [Lane16],
}

impl Tokens<'_> {
    /// Tokens (rows of `b`).
    pub fn len(&self) -> usize {
        self.b.len() / self.k.max(1)
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The `b.len() / k` token rows of `b` for [`rows_with`] at `simd`, packed into `buf` (grown
/// as needed, never shrunk) when the AVX-512 tiles will use them. Packing once per matmul
/// instead of once per task: copying each task's token chunks took ~15% of an F16 prefill.
pub fn pack_tokens<'a>(simd: Simd, b: &'a [f32], k: usize, buf: &'a mut Vec<Lane16>) -> Tokens<'a> {
    assert!(
        k.is_multiple_of(KN) && (k > 0 || b.is_empty()) && b.len().is_multiple_of(k.max(1)),
        "tinyBLAS: {} token values, k = {k}",
        b.len()
    );
    if simd.clamp() != Simd::Avx512 || b.is_empty() {
        return Tokens { b, k, packed: &[] };
    }
    let nt = b.len() / k;
    let n = b.len() / KN;
    if buf.len() < n {
        buf.resize(n, Lane16::default());
    }
    let dst: &mut [f32] = floats_mut(&mut buf[..n]);
    for k0 in (0..k).step_by(KC) {
        let kn = KC.min(k - k0);
        for t in 0..nt {
            let at = nt * k0 + t * kn;
            dst[at..at + kn].copy_from_slice(&b[t * k + k0..][..kn]);
        }
    }
    Tokens {
        b,
        k,
        packed: &buf[..n],
    }
}

/// The floats of `lanes`, in order.
fn floats_mut(lanes: &mut [Lane16]) -> &mut [f32] {
    // SAFETY: `Lane16` is `repr(C)` over `[f32; 16]` with no padding (64 bytes, align 64),
    // so `lanes` is `16·len` contiguous, initialized, aligned f32; the borrow is carried over.
    unsafe { std::slice::from_raw_parts_mut(lanes.as_mut_ptr() as *mut f32, lanes.len() * KN) }
}

/// Every output of weight rows `r0..r1` of `a` (`ty` elements, `k` per row, row-major from
/// row 0) against the tokens `b` ([`pack_tokens`], made at the same `simd`): `store(r, t,
/// value)` once per pair. Each value is bit for bit [`dot_f16_with`] / [`dot_f32_with`] of
/// its pair: at the AVX-512 level, [`TILE`] outputs run together, each on its own
/// accumulator in the same order (one `vfmadd` chain per output hid the FMA latency behind
/// nothing: 0.49× the oracle's F16 prefill on the 2B-4T shapes); tokens left over go in
/// tiles of as many tokens, rows left over (fewer than a tile) one output at a time.
pub fn rows_with(
    simd: Simd,
    ty: AType,
    a: &[u8],
    (r0, r1): (usize, usize),
    b: &Tokens,
    mut store: impl FnMut(usize, usize, f32),
) {
    let k = b.k;
    check(a.len(), ty.size(), k);
    assert!(
        r1 <= a.len() / (ty.size() * k.max(1)) && r0 <= r1,
        "tinyBLAS: rows {r0}..{r1} of {} bytes, k = {k}",
        a.len(),
    );
    let nt = b.len();
    let rb = ty.size() * k;
    let one = |r: usize, t: usize| {
        let (row, bt) = (&a[r * rb..(r + 1) * rb], &b.b[t * k..(t + 1) * k]);
        match ty {
            AType::F16 => dot_f16_with(simd, row, bt),
            AType::F32 => dot_f32_with(simd, row, bt),
        }
    };
    let mut r = r0;
    #[cfg(target_arch = "x86_64")]
    if simd.clamp() == Simd::Avx512 && !b.packed.is_empty() {
        const TR: usize = TILE.0;
        let n_rg = (r1 - r0) / TR;
        if n_rg > 0 {
            let rows = &a[r0 * rb..];
            // SAFETY: AVX-512 was detected (clamped level); `rows` holds the n_rg·TR rows
            // r0..r0 + n_rg·TR ≤ r1 (asserted: r1 ≤ a.len()/rb); `b.packed` holds the nt
            // tokens of k floats each in the chunk layout (`pack_tokens` at Avx512, which
            // asserted k % 16 == 0).
            unsafe {
                x86::tiles(ty, rows, rb, n_rg, b.packed, nt, k, &mut |i, t, v| {
                    store(r0 + i, t, v)
                });
            }
        }
        r = r0 + n_rg * TR;
    }
    for r in r..r1 {
        for t in 0..nt {
            store(r, t, one(r, t));
        }
    }
}

#[inline(always)]
fn check(a_bytes: usize, elem: usize, k: usize) {
    assert!(
        k.is_multiple_of(KN),
        "tinyBLAS: k = {k} is not a multiple of {KN}"
    );
    assert!(
        a_bytes >= elem * k,
        "tinyBLAS: A row has {a_bytes} bytes, need {}",
        elem * k
    );
}

/// Portable [`dot_f16_with`].
pub fn dot_f16_scalar(a: &[u8], b: &[f32]) -> f32 {
    check(a.len(), 2, b.len());
    let mut acc = [0f32; KN];
    for (l, &bl) in b.iter().enumerate() {
        let al = f16::from_bits(u16::from_le_bytes([a[2 * l], a[2 * l + 1]])).to_f32();
        acc[l % KN] = al.mul_add(bl, acc[l % KN]);
    }
    reduce16(&acc)
}

/// Portable [`dot_f32_with`].
pub fn dot_f32_scalar(a: &[u8], b: &[f32]) -> f32 {
    check(a.len(), 4, b.len());
    let mut acc = [0f32; KN];
    for (l, &bl) in b.iter().enumerate() {
        let al = f32::from_le_bytes([a[4 * l], a[4 * l + 1], a[4 * l + 2], a[4 * l + 3]]);
        acc[l % KN] = al.mul_add(bl, acc[l % KN]);
    }
    reduce16(&acc)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::dot::x86::{reduce16_halves, reduce16_zmm};
    use std::arch::x86_64::*;

    /// The 16 lanes as two 8-lane halves (lanes 0..8, 8..16); same FMAs, same tree.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C (only [`super::dot_f16_with`] calls this, at a
    /// clamped level ≥ Avx2); `b.len() % 16 == 0` and `a` points to `2·b.len()` readable
    /// bytes: each step `l` (step 16, `l < b.len()`) reads 32 bytes of `a` at `2·l` and 16
    /// floats of `b` at `l`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_f16_avx2(a: *const u8, b: &[f32]) -> f32 {
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let bp = b.as_ptr();
        for l in (0..b.len()).step_by(16) {
            let a0 = _mm256_cvtph_ps(_mm_loadu_si128(a.add(2 * l) as *const __m128i));
            let a1 = _mm256_cvtph_ps(_mm_loadu_si128(a.add(2 * l + 16) as *const __m128i));
            lo = _mm256_fmadd_ps(a0, _mm256_loadu_ps(bp.add(l)), lo);
            hi = _mm256_fmadd_ps(a1, _mm256_loadu_ps(bp.add(l + 8)), hi);
        }
        reduce16_halves(lo, hi)
    }

    /// 16-lane tinyBLAS dot of an f16 row with f32 `b`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL (only [`super::dot_f16_with`] calls this, at a clamped
    /// Avx512); `b.len() % 16 == 0` and `a` points to `2·b.len()` readable bytes.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn dot_f16_avx512(a: *const u8, b: &[f32]) -> f32 {
        let mut acc = _mm512_setzero_ps();
        let bp = b.as_ptr();
        for l in (0..b.len()).step_by(16) {
            let al = _mm512_cvtph_ps(_mm256_loadu_si256(a.add(2 * l) as *const __m256i));
            acc = _mm512_fmadd_ps(al, _mm512_loadu_ps(bp.add(l)), acc);
        }
        reduce16_zmm(acc)
    }

    thread_local! {
        /// The accumulators of [`tiles_avx512`] between chunks of `k`, per thread.
        static ACC: std::cell::RefCell<Vec<__m512>> = const { std::cell::RefCell::new(Vec::new()) };
        /// The current chunk of `k` of the rows, as f32 ([`tiles_avx512`]), per thread.
        static PACK: std::cell::RefCell<Vec<__m512>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// [`tiles_avx512`] with this thread's buffers.
    ///
    /// # Safety
    /// As [`tiles_avx512`]: AVX-512 F/BW/VL and F16C, `k % 16 == 0`, `rows` holds `n_rg·4`
    /// rows of `a_stride` bytes, `toks` holds `nt` tokens of `k` floats in the chunk layout
    /// of [`super::pack_tokens`].
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tiles<F: FnMut(usize, usize, f32)>(
        ty: super::AType,
        rows: &[u8],
        a_stride: usize,
        n_rg: usize,
        toks: &[super::Lane16],
        nt: usize,
        k: usize,
        out: &mut F,
    ) {
        const RM: usize = super::TILE.0;
        debug_assert!(rows.len() >= n_rg * RM * a_stride && toks.len() * 16 >= nt * k);
        if n_rg == 0 || nt == 0 {
            return;
        }
        ACC.with_borrow_mut(|acc| {
            PACK.with_borrow_mut(|pack| {
                tiles_avx512(
                    ty,
                    rows.as_ptr(),
                    a_stride,
                    n_rg,
                    toks.as_ptr() as *const f32,
                    nt,
                    k,
                    acc,
                    pack,
                    out,
                )
            })
        })
    }

    /// One `RM × RN` tile over one chunk of `kn` floats: rows at `ap` ([`super::KC`] apart),
    /// tokens at `bp` (`kn` apart), accumulators `c` (`RM·RN`, row-major), which start from
    /// zero instead when `first`. Each accumulator takes its FMAs in `k` order.
    ///
    /// # Safety
    /// AVX-512 F (inlined into [`tiles_avx512`]); `ap`, `bp` aligned and readable as said,
    /// `kn % 16 == 0`.
    #[inline(always)]
    unsafe fn tile<const RM: usize, const RN: usize>(
        ap: *const f32,
        bp: *const f32,
        kn: usize,
        c: &mut [__m512],
        first: bool,
    ) {
        let mut v = [[_mm512_setzero_ps(); RN]; RM];
        if !first {
            for i in 0..RM {
                for j in 0..RN {
                    v[i][j] = c[i * RN + j];
                }
            }
        }
        for l in (0..kn).step_by(16) {
            let mut av = [_mm512_setzero_ps(); RM];
            for (i, w) in av.iter_mut().enumerate() {
                *w = _mm512_load_ps(ap.add(i * super::KC + l));
            }
            for j in 0..RN {
                let bv = _mm512_load_ps(bp.add(j * kn + l));
                for i in 0..RM {
                    v[i][j] = _mm512_fmadd_ps(av[i], bv, v[i][j]);
                }
            }
        }
        for i in 0..RM {
            for j in 0..RN {
                c[i * RN + j] = v[i][j];
            }
        }
    }

    /// Every output of `n_rg` groups of 4 rows (`a`, `a_stride` bytes apart) × `nt` tokens
    /// (`toks`, packed by [`super::pack_tokens`]), 4 × 6 tiles and one 4 × (`nt mod 6`) tile
    /// per row group, `k` in chunks of [`super::KC`], each output on its own 16-lane
    /// accumulator in the one-output kernel's order.
    ///
    /// Per chunk, the chunk of every row is widened to f32 (exact) and packed `KC` apart in
    /// `pack`; then every token group, with its chunk in L1, passes over every row group.
    /// Packing matters twice: rows and tokens a multiple of 1–4 KiB apart in the model
    /// (5120, 10240, 13824 bytes) share L1 sets and evict each other, and the activations are
    /// not 64-byte aligned, so every load of them split two cache lines. Each output's
    /// accumulator waits in memory between chunks — the same FMAs in the same order, so every
    /// output is bit for bit the one-output kernel's ([`super::dot_f16_avx512`] /
    /// [`super::dot_f32_avx512`]). `out(row, token, value)` with `row < n_rg·4`, `token < nt`.
    ///
    /// Measured on the 2B-4T `ffn_up` shape (F16, 128 tokens, one thread, 32-row tasks):
    /// 99 GFLOP/s reading the rows and tokens in place (k chunks of 256), 117 with rows and
    /// tokens packed per task; F32 86 → 109. On a second machine of the same kind, tokens
    /// packed per task → once per matmul: F16 93 → 115–123, F32 85 → 106–114; the tile loop
    /// then takes two thirds of the time (~170 GFLOP/s while it runs; alone, in L1, 224 — the
    /// FMA ports' 232), widening the rows a tenth, the accumulators' trips to L2 a sixth.
    /// Tried without gain: prefetching the next chunk of the rows into L2 or the next tile's
    /// accumulators into L1, and widening each row group just before its first tile.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL and F16C; `k % 16 == 0`; each of the `n_rg·4` rows holds
    /// `k` elements of `ty`; `toks` holds `nt` tokens of `k` floats in the chunk layout,
    /// 64-byte aligned.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn tiles_avx512<F: FnMut(usize, usize, f32)>(
        ty: super::AType,
        a: *const u8,
        a_stride: usize,
        n_rg: usize,
        toks: *const f32,
        nt: usize,
        k: usize,
        acc: &mut Vec<__m512>,
        pack: &mut Vec<__m512>,
        out: &mut F,
    ) {
        const RM: usize = super::TILE.0;
        const RN: usize = super::TILE.1;
        const KC: usize = super::KC;
        let (n_tg, left) = (nt / RN, nt % RN);
        let n_rows = n_rg * RM;
        // Per row group: n_tg tiles of RM × RN, then one of RM × left.
        let per_rg = nt * RM;
        if acc.len() < n_rg * per_rg {
            acc.resize(n_rg * per_rg, _mm512_setzero_ps());
        }
        if pack.len() < n_rows * KC / 16 {
            pack.resize(n_rows * KC / 16, _mm512_setzero_ps());
        }
        let rows_pk = pack.as_mut_ptr() as *mut f32;
        for k0 in (0..k).step_by(KC) {
            let kn = KC.min(k - k0);
            let first = k0 == 0;
            // The chunk of every row, widened to f32, `KC` apart.
            for r in 0..n_rows {
                let (src, dst) = (a.add(r * a_stride), rows_pk.add(r * KC));
                for l in (0..kn).step_by(16) {
                    let w = match ty {
                        super::AType::F16 => _mm512_cvtph_ps(_mm256_loadu_si256(
                            src.add(2 * (k0 + l)) as *const __m256i,
                        )),
                        super::AType::F32 => _mm512_loadu_ps((src as *const f32).add(k0 + l)),
                    };
                    _mm512_store_ps(dst.add(l), w);
                }
            }
            let chunk = toks.add(nt * k0);
            for tg in 0..n_tg {
                let bp = chunk.add(tg * RN * kn);
                for rg in 0..n_rg {
                    let c = &mut acc[rg * per_rg + tg * RM * RN..][..RM * RN];
                    tile::<RM, RN>(rows_pk.add(rg * RM * KC), bp, kn, c, first);
                }
            }
            if left > 0 {
                let bp = chunk.add(n_tg * RN * kn);
                for rg in 0..n_rg {
                    let c = &mut acc[rg * per_rg + n_tg * RM * RN..][..RM * left];
                    let ap = rows_pk.add(rg * RM * KC);
                    match left {
                        1 => tile::<RM, 1>(ap, bp, kn, c, first),
                        2 => tile::<RM, 2>(ap, bp, kn, c, first),
                        3 => tile::<RM, 3>(ap, bp, kn, c, first),
                        4 => tile::<RM, 4>(ap, bp, kn, c, first),
                        _ => tile::<RM, 5>(ap, bp, kn, c, first),
                    }
                }
            }
        }
        for rg in 0..n_rg {
            for tg in 0..n_tg {
                let c = &acc[rg * per_rg + tg * RM * RN..][..RM * RN];
                for i in 0..RM {
                    for j in 0..RN {
                        out(rg * RM + i, tg * RN + j, reduce16_zmm(c[i * RN + j]));
                    }
                }
            }
            let c = &acc[rg * per_rg + n_tg * RM * RN..][..RM * left];
            for i in 0..RM {
                for j in 0..left {
                    out(rg * RM + i, n_tg * RN + j, reduce16_zmm(c[i * left + j]));
                }
            }
        }
    }

    /// As [`dot_f16_avx2`] for an f32 row.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C (only [`super::dot_f32_with`] calls this, at a
    /// clamped level ≥ Avx2); `b.len() % 16 == 0` and `a` points to `4·b.len()` readable
    /// bytes (any alignment: unaligned loads).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_f32_avx2(a: *const u8, b: &[f32]) -> f32 {
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let (ap, bp) = (a as *const f32, b.as_ptr());
        for l in (0..b.len()).step_by(16) {
            lo = _mm256_fmadd_ps(_mm256_loadu_ps(ap.add(l)), _mm256_loadu_ps(bp.add(l)), lo);
            hi = _mm256_fmadd_ps(
                _mm256_loadu_ps(ap.add(l + 8)),
                _mm256_loadu_ps(bp.add(l + 8)),
                hi,
            );
        }
        reduce16_halves(lo, hi)
    }

    /// 16-lane tinyBLAS dot of an f32 row with `b`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL (only [`super::dot_f32_with`] calls this, at a clamped
    /// Avx512); `b.len() % 16 == 0` and `a` points to `4·b.len()` readable bytes.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn dot_f32_avx512(a: *const u8, b: &[f32]) -> f32 {
        let mut acc = _mm512_setzero_ps();
        let (ap, bp) = (a as *const f32, b.as_ptr());
        for l in (0..b.len()).step_by(16) {
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(ap.add(l)), _mm512_loadu_ps(bp.add(l)), acc);
        }
        reduce16_zmm(acc)
    }
}
