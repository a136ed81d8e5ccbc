//! I2_S matmul kernels on AVX-512 VNNI: the integers `ggml_vec_dot_i2_i8_s` computes, faster.
//!
//! ggml's dot ([`super::i2s::vec_dot_i2_i8`]) keeps sixteen i16 lanes per group of 32 blocks
//! and lets them wrap; `vpdpbusd` sums four byte products straight into i32 lanes and
//! cannot wrap the same way. It does not have to when no lane can leave the i16 range:
//! lane `k` of a group sums `code·q` over the positions `n·32 + 2k` and `n·32 + 2k + 1`
//! (`n` = 0..4) of each of its blocks, every code is at most 3, so
//! `|lane| ≤ 3·Σ|q|` over those positions. [`cannot_wrap`] checks `3·Σ|q| ≤ 32767` for
//! every lane of every group of one activation row — once per token, whatever the
//! weights. When it holds, ggml's wrapped sum *is* the exact sum `Σ code·q` (and no
//! `vpmaddubsw` pair saturates: `|pair| ≤ 2·3·128`), and any order of exact integer adds
//! gives it. Tokens that fail the check (only extreme activation rows, over rows of at
//! least 11 blocks) go to the wrap-exact kernels in [`super::i2s`]; the driver
//! (`kernels::matmul`) routes them.
//!
//! Both kernels read activations in *pair order* ([`to_pair_order`]) so that one 64-byte
//! load of packed weights — two blocks — meets its activations in 64-byte loads:
//!
//! - [`x86::dot_row`] (one token, decode): masks each packed byte with `0xC0`, `0x30`,
//!   `0x0C`, `0x03` instead of shifting, so shift group `n` contributes `4^(3−n)·code·q`
//!   into its own accumulator; every lane of it is a multiple of `4^(3−n)`, divided out
//!   exactly by an arithmetic shift at the end. [`x86::dot_rows4`] does four consecutive
//!   rows per call (what the driver uses), so that the per-row reduction and finishing
//!   arithmetic overlap the next rows' loads.
//! - [`x86::gemm_panel`] (two or more tokens, prefill): unpacks a panel of rows to one
//!   code byte per weight once ([`x86::unpack_panel`]) and applies it to every token in
//!   4-row × 6-token register tiles, so each weight is unpacked once per call instead of
//!   once per token.

use super::i2s::BLOCK;

/// Longest row the kernels take: [`x86::dot_row`]'s scaled i32 lanes each sum `cols/64`
/// terms of at most `4·192·128`, which must not overflow (ggml's own lanes are far from it).
pub const MAX_COLS: usize = 1 << 20;

/// Largest per-lane `Σ|q|` for which `3·Σ|q|` fits an i16 lane.
const LANE_ABS_LIMIT: i32 = 32767 / 3;

/// Whether ggml's i16 lanes cannot wrap for activation row `q` with any I2_S weights
/// (codes 0..=3): for every group of 32 blocks and every lane `k`, `3·Σ|q|` over the
/// lane's positions is at most 32767. See the module documentation.
pub fn cannot_wrap(q: &[i8]) -> bool {
    let nb = q.len() / BLOCK;
    let mut b0 = 0;
    while b0 < nb {
        let b1 = (b0 + 32).min(nb);
        let mut lanes = [0i32; 16];
        for y in q[b0 * BLOCK..b1 * BLOCK].chunks_exact(32) {
            for (k, l) in lanes.iter_mut().enumerate() {
                *l += (y[2 * k] as i32).abs() + (y[2 * k + 1] as i32).abs();
            }
        }
        if lanes.iter().any(|&l| l > LANE_ABS_LIMIT) {
            return false;
        }
        b0 = b1;
    }
    true
}

/// Copies activation row `q` (a multiple of 128 values) into pair order: for each pair of
/// blocks `2p, 2p+1`, the 32-value slices `(2p, n), (2p+1, n)` for `n` = 0..4 — the order
/// in which the codes of one 64-byte load of packed weights come out per shift group
/// (byte `j` of a block holds values `j, j+32, j+64, j+96`). An odd last block is copied
/// as it is.
pub fn to_pair_order(q: &[i8], out: &mut [i8]) {
    assert_eq!(q.len(), out.len(), "pair order: lengths differ");
    let nb = q.len() / BLOCK;
    for p in 0..nb / 2 {
        let (src, dst) = (
            &q[p * 2 * BLOCK..(p + 1) * 2 * BLOCK],
            &mut out[p * 2 * BLOCK..(p + 1) * 2 * BLOCK],
        );
        for n in 0..4 {
            dst[n * 64..n * 64 + 32].copy_from_slice(&src[n * 32..n * 32 + 32]);
            dst[n * 64 + 32..n * 64 + 64]
                .copy_from_slice(&src[BLOCK + n * 32..BLOCK + n * 32 + 32]);
        }
    }
    if nb % 2 == 1 {
        let o = (nb - 1) * BLOCK;
        out[o..].copy_from_slice(&q[o..]);
    }
}

/// Rewrites the packed rows of an I2_S tensor (`rows` of `cols/4` bytes, the part before
/// the scale) into `out` (as long) in the layout [`x86::dot_rows4`] reads as *one* stream
/// with `BY4`: each group of four consecutive rows becomes one run of `cols` bytes, the
/// four rows' 64-byte lines interleaved (line `p` of rows 0, 1, 2, 3, then line `p + 1`, …)
/// and, when `cols/128` is odd, the last block's 32 bytes of each row after them; rows past
/// the last whole group stay as they are, at the same offsets. The decode kernel reads a line
/// of each of four rows per step to share each activation line among them; in the file's
/// layout those are four interleaved streams, which a Zen 4's hardware prefetchers do not
/// follow (see [`x86::dot_rows4`]). `kernels::matmul` reads this copy when the model made
/// one ([`crate::model::Model::load`]).
pub fn interleave4(rows_data: &[u8], rows: usize, cols: usize, out: &mut [u8]) {
    assert!(
        cols.is_multiple_of(BLOCK),
        "interleave4: {cols} columns, not whole blocks"
    );
    let (rb, nb) = (cols / 4, cols / BLOCK);
    super::interleave_groups_of_four(rows_data, rows, rb, out, |src, dst| {
        for p in 0..nb / 2 {
            for k in 0..4 {
                let (d, s) = ((4 * p + k) * 64, k * rb + p * 64);
                dst[d..d + 64].copy_from_slice(&src[s..s + 64]);
            }
        }
        if nb % 2 == 1 {
            for k in 0..4 {
                let (d, s) = ((nb / 2) * 256 + k * 32, k * rb + (nb - 1) * 32);
                dst[d..d + 32].copy_from_slice(&src[s..s + 32]);
            }
        }
    });
}

/// Whether this CPU has AVX-512 VNNI (with F/BW/VL), checked once.
pub fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512vnni")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Rows per register tile of [`x86::gemm_panel`].
pub const TILE_ROWS: usize = 4;
/// Tokens per register tile of [`x86::gemm_panel`].
pub const TILE_TOKENS: usize = 6;

#[cfg(target_arch = "x86_64")]
pub mod x86 {
    use crate::kernels::{prefetch, prefetch_stream, PREFETCH_BYTES};
    use std::arch::x86_64::*;

    /// `Σ code·q` of one packed row against an activation row in pair order (`qp`),
    /// `cols` values (a multiple of 128). Exact; equals ggml's dot when [`super::cannot_wrap`]
    /// holds for the activations. Prefetches the weights [`PREFETCH_BYTES`] ahead (rows
    /// are read as one stream; the prefetch may reach past the row, which is harmless;
    /// `kernels::prefetch_stream`: none on a Zen 4).
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/VNNI ([`super::has_vnni`]); `row` holds `cols/4`
    /// readable bytes and `qp` `cols`. (Pair `p < nb/2` reads 64 bytes at `64·p` and 256
    /// values at `256·p`, an odd last block 32 bytes and 128 values after those, with
    /// `nb = cols/128`; so nothing past `nb·32` bytes and `nb·128` values is read.)
    /// `cols ≤` [`super::MAX_COLS`] is needed for the result, not for safety.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn dot_row(row: *const u8, qp: *const i8, cols: usize) -> i32 {
        let nb = cols / 128;
        let (m0, m1, m2, m3) = (
            _mm512_set1_epi8(0xC0u8 as i8),
            _mm512_set1_epi8(0x30),
            _mm512_set1_epi8(0x0C),
            _mm512_set1_epi8(0x03),
        );
        let mut a = [_mm512_setzero_si512(); 4];
        for p in 0..nb / 2 {
            prefetch_stream(row.wrapping_add(p * 64 + PREFETCH_BYTES));
            let w = _mm512_loadu_si512(row.add(p * 64) as *const _);
            let y = qp.add(p * 256);
            a[0] = _mm512_dpbusd_epi32(
                a[0],
                _mm512_and_si512(w, m0),
                _mm512_loadu_si512(y as *const _),
            );
            a[1] = _mm512_dpbusd_epi32(
                a[1],
                _mm512_and_si512(w, m1),
                _mm512_loadu_si512(y.add(64) as *const _),
            );
            a[2] = _mm512_dpbusd_epi32(
                a[2],
                _mm512_and_si512(w, m2),
                _mm512_loadu_si512(y.add(128) as *const _),
            );
            a[3] = _mm512_dpbusd_epi32(
                a[3],
                _mm512_and_si512(w, m3),
                _mm512_loadu_si512(y.add(192) as *const _),
            );
        }
        // Lanes of a[n] are multiples of 4^(3−n): the shifts divide exactly.
        let v = _mm512_add_epi32(
            _mm512_add_epi32(_mm512_srai_epi32::<6>(a[0]), _mm512_srai_epi32::<4>(a[1])),
            _mm512_add_epi32(_mm512_srai_epi32::<2>(a[2]), a[3]),
        );
        let mut sum = _mm512_reduce_add_epi32(v);
        if nb % 2 == 1 {
            sum += dot_block_256(row.add((nb - 1) * 32), qp.add((nb - 1) * 128));
        }
        sum
    }

    /// [`dot_row`] of four consecutive rows (`cols/4` bytes apart from `rows`) at once,
    /// side by side: a line of each row per step, each activation line loaded once for the
    /// four (two loads per 64 bytes of weights instead of five), and the four sums reduced
    /// and returned together, so the latency of the reductions (and of the caller's
    /// finishing arithmetic) follows four rows instead of every row. The same exact integers
    /// as [`dot_row`] (exact adds, in any order).
    ///
    /// Each step also prefetches four lines of the *next* four rows (`cols` bytes on), in
    /// their memory order: over a call, the next call's `cols` bytes front to back. Reading
    /// side by side is four interleaved streams, which an AMD Zen 4's hardware prefetchers
    /// do not follow, and a prefetch of the same lines in the same interleaved order (the
    /// Xeon-era form) did not rescue it; one sequential stream of prefetches does. On the
    /// 2-vCPU EPYC, 2B-4T I2_S decode, one thread: this kernel's perf samples against the
    /// F16 head's fell from 1.04–1.13 to 0.76–0.79, and decode went 11.4–12.5 → 15.2–17.3
    /// tok/s (alternating runs; `docs/performance.md`, "The EPYC again").
    ///
    /// With `BY4`, `rows` is a group of [`super::interleave4`]'s layout instead: the same
    /// lines, now one stream front to back, prefetched like [`dot_row`]'s. That reads
    /// faster still (2B-4T I2_S, the EPYC, alternating runs): this kernel's samples against
    /// the F16 head's 0.86–0.91 → 0.71–0.75 on one thread, 0.87–0.92 → 0.72–0.76 on two
    /// (`docs/performance.md`, "Four rows in one stream").
    ///
    /// # Safety
    /// As [`dot_row`] for each of the four rows: the CPU has AVX-512 F/BW/VL/VNNI, `rows`
    /// holds `cols` readable bytes (four rows of `cols/4`, in the file's layout or
    /// interleaved) and `qp` `cols` values. (The prefetches reach past `rows` — the next
    /// `cols` bytes, or [`PREFETCH_BYTES`] on with `BY4` — which is harmless: a prefetch
    /// never faults.)
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn dot_rows4<const BY4: bool>(
        rows: *const u8,
        qp: *const i8,
        cols: usize,
    ) -> [i32; 4] {
        let (nb, rb) = (cols / 128, cols / 4);
        let m = [
            _mm512_set1_epi8(0xC0u8 as i8),
            _mm512_set1_epi8(0x30),
            _mm512_set1_epi8(0x0C),
            _mm512_set1_epi8(0x03),
        ];
        let next = rows.wrapping_add(cols);
        let mut a = [[_mm512_setzero_si512(); 4]; 4];
        // Line p of row k.
        let line = |k: usize, p: usize| {
            if BY4 {
                rows.add(p * 256 + k * 64)
            } else {
                rows.add(k * rb + p * 64)
            }
        };
        for p in 0..nb / 2 {
            if BY4 {
                // One stream: as the one-row kernel, PREFETCH_BYTES ahead (none on a Zen 4).
                for j in 0..4 {
                    prefetch_stream(rows.wrapping_add(p * 256 + j * 64 + PREFETCH_BYTES));
                }
            } else {
                // Lines 4p..4p+4 of the next four rows: the nb/2 steps cover their cols/64
                // lines (all but the last two when nb is odd).
                for j in 0..4 {
                    prefetch(next.wrapping_add((4 * p + j) * 64));
                }
            }
            let w: [__m512i; 4] =
                std::array::from_fn(|k| _mm512_loadu_si512(line(k, p) as *const _));
            let y = qp.add(p * 256);
            for n in 0..4 {
                let yn = _mm512_loadu_si512(y.add(64 * n) as *const _);
                for k in 0..4 {
                    a[k][n] = _mm512_dpbusd_epi32(a[k][n], _mm512_and_si512(w[k], m[n]), yn);
                }
            }
        }
        // Per row as in `dot_row`, then the four rows' lanes summed pairwise: 16 → 8 → 4
        // lanes per row in one register, and two horizontal adds for the last four.
        let v: [__m512i; 4] = std::array::from_fn(|k| {
            let a = &a[k];
            _mm512_add_epi32(
                _mm512_add_epi32(_mm512_srai_epi32::<6>(a[0]), _mm512_srai_epi32::<4>(a[1])),
                _mm512_add_epi32(_mm512_srai_epi32::<2>(a[2]), a[3]),
            )
        });
        let half = |v: __m512i| {
            let h = _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v));
            _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
        };
        let s = _mm_hadd_epi32(
            _mm_hadd_epi32(half(v[0]), half(v[1])),
            _mm_hadd_epi32(half(v[2]), half(v[3])),
        );
        let mut out = [0i32; 4];
        _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, s);
        if nb % 2 == 1 {
            for (k, o) in out.iter_mut().enumerate() {
                let w = if BY4 {
                    rows.add((nb / 2) * 256 + k * 32)
                } else {
                    rows.add(k * rb + (nb - 1) * 32)
                };
                *o += dot_block_256(w, qp.add((nb - 1) * 128));
            }
        }
        out
    }

    /// `Σ code·q` of one block (32 packed bytes, activations in natural order).
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/VNNI (only [`dot_row`] and [`dot_rows4`] call it); `w`
    /// points to 32 readable bytes and `y` to 128 readable values.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn dot_block_256(w: *const u8, y: *const i8) -> i32 {
        let mask = _mm256_set1_epi8(3);
        let w = _mm256_loadu_si256(w as *const __m256i);
        let mut acc = _mm256_setzero_si256();
        for n in 0..4 {
            let c = _mm256_and_si256(
                _mm256_srlv_epi16(w, _mm256_set1_epi16(6 - 2 * n as i16)),
                mask,
            );
            acc = _mm256_dpbusd_epi32(acc, c, _mm256_loadu_si256(y.add(32 * n) as *const __m256i));
        }
        let s = _mm_add_epi32(
            _mm256_castsi256_si128(acc),
            _mm256_extracti128_si256::<1>(acc),
        );
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }

    /// Unpacks `n_rows` packed rows (`cols/4` bytes each, consecutive from `rows`) into one
    /// code byte (0..=3) per weight in pair order, `cols` bytes per row into `out`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/VNNI ([`super::has_vnni`]); `cols % 128 == 0`; `rows`
    /// holds `n_rows·cols/4` readable bytes and `out` `n_rows·cols` writable ones, not
    /// overlapping them. Row `r` reads `cols/4` bytes at `r·cols/4` and writes `cols` bytes
    /// at `r·cols`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn unpack_panel(rows: *const u8, n_rows: usize, cols: usize, out: *mut u8) {
        let nb = cols / 128;
        let mask = _mm512_set1_epi8(3);
        let mask256 = _mm256_set1_epi8(3);
        for r in 0..n_rows {
            let (w, o) = (rows.add(r * cols / 4), out.add(r * cols));
            for p in 0..nb / 2 {
                let v = _mm512_loadu_si512(w.add(p * 64) as *const _);
                let d = o.add(p * 256);
                _mm512_storeu_si512(
                    d as *mut _,
                    _mm512_and_si512(_mm512_srli_epi16::<6>(v), mask),
                );
                _mm512_storeu_si512(
                    d.add(64) as *mut _,
                    _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask),
                );
                _mm512_storeu_si512(
                    d.add(128) as *mut _,
                    _mm512_and_si512(_mm512_srli_epi16::<2>(v), mask),
                );
                _mm512_storeu_si512(d.add(192) as *mut _, _mm512_and_si512(v, mask));
            }
            if nb % 2 == 1 {
                let v = _mm256_loadu_si256(w.add((nb - 1) * 32) as *const __m256i);
                let d = o.add((nb - 1) * 128);
                _mm256_storeu_si256(
                    d as *mut __m256i,
                    _mm256_and_si256(_mm256_srli_epi16::<6>(v), mask256),
                );
                _mm256_storeu_si256(
                    d.add(32) as *mut __m256i,
                    _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask256),
                );
                _mm256_storeu_si256(
                    d.add(64) as *mut __m256i,
                    _mm256_and_si256(_mm256_srli_epi16::<2>(v), mask256),
                );
                _mm256_storeu_si256(d.add(96) as *mut __m256i, _mm256_and_si256(v, mask256));
            }
        }
    }

    /// `R × T` exact dots of unpacked code rows (`u`, stride `cols`) with pair-order
    /// activation rows (`y`, stride `cols`): `out[r][t] = Σ code·q`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/VNNI (only [`gemm_panel`] calls it, and it is always
    /// inlined there, so it runs with that function's features); `cols % 64 == 0`; `u`
    /// holds `R·cols` readable bytes and `y` `T·cols` values: each step `c < cols` (step 64)
    /// loads 64 bytes at `r·cols + c` and `t·cols + c`.
    #[inline(always)]
    unsafe fn tile<const R: usize, const T: usize>(
        u: *const u8,
        y: *const i8,
        cols: usize,
    ) -> [[i32; T]; R] {
        let mut acc = [[_mm512_setzero_si512(); T]; R];
        let mut c = 0;
        while c < cols {
            let mut a = [_mm512_setzero_si512(); R];
            for r in 0..R {
                a[r] = _mm512_loadu_si512(u.add(r * cols + c) as *const _);
            }
            for t in 0..T {
                let b = _mm512_loadu_si512(y.add(t * cols + c) as *const _);
                for r in 0..R {
                    acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], a[r], b);
                }
            }
            c += 64;
        }
        let mut out = [[0i32; T]; R];
        for r in 0..R {
            for t in 0..T {
                out[r][t] = _mm512_reduce_add_epi32(acc[r][t]);
            }
        }
        out
    }

    /// All dots of an unpacked panel (`n_rows` code rows from [`unpack_panel`]) with
    /// `n_tok` pair-order activation rows, `cols` values each: calls
    /// `emit(row, token, Σ code·q)` for each pair, in register tiles of
    /// [`super::TILE_ROWS`] × [`super::TILE_TOKENS`] (and smaller ones at the edges).
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/VNNI ([`super::has_vnni`]); `cols % 128 == 0`; `u` holds
    /// `n_rows·cols` readable bytes and `y` `n_tok·cols` values. Every [`tile`] call gets
    /// `u` advanced to a row `r0 + r < n_rows` and `y` to a token `t0 + t < n_tok`, with
    /// as many rows/tokens after it as the tile reads (`nr`, `nt` are clamped to the rest).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn gemm_panel<F: FnMut(usize, usize, i32)>(
        u: *const u8,
        n_rows: usize,
        y: *const i8,
        n_tok: usize,
        cols: usize,
        mut emit: F,
    ) {
        const R: usize = super::TILE_ROWS;
        const T: usize = super::TILE_TOKENS;
        let mut t0 = 0;
        while t0 < n_tok {
            let nt = (n_tok - t0).min(T);
            let yt = y.add(t0 * cols);
            let mut r0 = 0;
            while r0 < n_rows {
                let nr = (n_rows - r0).min(R);
                let ur = u.add(r0 * cols);
                if nr == R && nt == T {
                    let d = tile::<R, T>(ur, yt, cols);
                    for r in 0..R {
                        for t in 0..T {
                            emit(r0 + r, t0 + t, d[r][t]);
                        }
                    }
                } else {
                    // Edges: one row at a time against up to T tokens, one token at a time.
                    for r in 0..nr {
                        let ur = ur.add(r * cols);
                        if nt == T {
                            let d = tile::<1, T>(ur, yt, cols);
                            for t in 0..T {
                                emit(r0 + r, t0 + t, d[0][t]);
                            }
                        } else {
                            for t in 0..nt {
                                emit(
                                    r0 + r,
                                    t0 + t,
                                    tile::<1, 1>(ur, yt.add(t * cols), cols)[0][0],
                                );
                            }
                        }
                    }
                }
                r0 += nr;
            }
            t0 += nt;
        }
    }
}
