//! The TQ1_0/TQ2_0 kernels against the portable reference (`tq{1,2}::vec_dot_q8k_scalar`,
//! ggml's lanes and float steps), bit for bit: the TQ1_0 tables, the AVX2 dots, the
//! AVX-512 VNNI decode dots and unpacked-panel GEMM, and the matmul driver at every SIMD
//! level and thread count, at odd block counts, odd row counts and 1–13 tokens. Weights
//! are random bytes (every TQ1_0 byte value, TQ2_0 code 3 included) as well as quantized
//! ternary values; activations are quantized rows and raw Q8_K blocks over the full i8
//! range.

#[path = "kernels_util.rs"]
mod util;

use engine::kernels::matmul::{matmul_with, Scratch, WeightView};
use engine::kernels::Simd;
use engine::quant::q8k::{quantize_row_q8_k, BlockQ8K, QK_K};
use engine::quant::tq_vnni::{self, Format, Line, PAIR_LINES, TQ1_LUT};
use engine::quant::{tq1, tq2};
use half::f16;
use util::{bits, Rng};

const BLOCKS: &[usize] = &[1, 2, 3, 5, 10, 27];

fn block_bytes(fmt: Format) -> usize {
    fmt.block_bytes()
}

/// Random packed rows: every byte random, then each block's f16 `d` set to a finite value
/// of either sign (or zero now and then).
fn random_rows(rng: &mut Rng, fmt: Format, rows: usize, nb: usize) -> Vec<u8> {
    let bb = block_bytes(fmt);
    let mut w: Vec<u8> = (0..rows * nb * bb).map(|_| rng.next_u64() as u8).collect();
    for blk in w.chunks_exact_mut(bb) {
        let d = if rng.below(16) == 0 {
            0.0
        } else {
            rng.f32() * 0.75
        };
        blk[bb - 2..].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    }
    w
}

/// Rows as the quantizers write them (ternary values times a per-block scale).
fn quantized_rows(rng: &mut Rng, fmt: Format, rows: usize, nb: usize) -> Vec<u8> {
    let v = rng.ternary(rows * nb * QK_K, 0.37);
    match fmt {
        Format::Tq1 => tq1::quantize_row(&v),
        Format::Tq2 => tq2::quantize_row(&v),
    }
}

/// A Q8_K row of `nb` blocks: quantized floats (kind 0), constant-magnitude floats with
/// random signs (kind 1: every |q| = 127), or raw blocks with quants over all of i8 and
/// consistent bsums (kind 2); now and then an all-zero block.
fn q8k_row(rng: &mut Rng, nb: usize, kind: u64) -> Vec<BlockQ8K> {
    let mut y = vec![BlockQ8K::default(); nb];
    match kind {
        0 | 1 => {
            let x: Vec<f32> = (0..nb * QK_K)
                .map(|i| {
                    if kind == 1 {
                        if rng.below(2) == 0 {
                            2.5
                        } else {
                            -2.5
                        }
                    } else if i / QK_K == 1 && nb > 2 {
                        0.0
                    } else {
                        (0..3).map(|_| rng.f32()).sum()
                    }
                })
                .collect();
            quantize_row_q8_k(&x, &mut y);
        }
        _ => {
            for b in y.iter_mut() {
                for q in b.qs.iter_mut() {
                    *q = rng.next_u64() as i8;
                }
                for j in 0..16 {
                    b.bsums[j] = b.qs[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum();
                }
                b.d = rng.f32() * 0.05;
            }
        }
    }
    y
}

/// `rows` rows of `nb` blocks (kind 0: quantized from floats, else random bytes) and an
/// activation row of `nb` Q8_K blocks of that kind, drawn in that order.
fn rows_and_acts(
    rng: &mut Rng,
    fmt: Format,
    rows: usize,
    nb: usize,
    kind: u64,
) -> (Vec<u8>, Vec<BlockQ8K>) {
    let w = if kind == 0 {
        quantized_rows(rng, fmt, rows, nb)
    } else {
        random_rows(rng, fmt, rows, nb)
    };
    (w, q8k_row(rng, nb, kind))
}

fn reference(fmt: Format, row: &[u8], y: &[BlockQ8K]) -> f32 {
    match fmt {
        Format::Tq1 => tq1::vec_dot_q8k_scalar(row, y),
        Format::Tq2 => tq2::vec_dot_q8k_scalar(row, y),
    }
}

#[test]
fn tq1_tables_are_ggml_trits_for_every_byte() {
    for b in 0..=255u8 {
        for n in 0..5u32 {
            let want = tq1::trit_scalar_formula(b.wrapping_mul(3u8.pow(n)));
            assert_eq!(tq_vnni::tq1_trit(b, n), want, "byte {b} trit {n}");
            assert_eq!(
                tq1::trit_avx2_formula(b.wrapping_mul(3u8.pow(n))),
                want,
                "byte {b} trit {n} (ggml's avg formula)"
            );
            if n > 0 {
                let got = (TQ1_LUT[b as usize] >> (2 * (n - 1))) & 3;
                assert_eq!(got, want, "table: byte {b} trit {n}");
            }
        }
    }
    // The tables agree with the block decoder on a block holding every byte value.
    let blk: Vec<u8> = (0..54).map(|i| (i * 37 + 11) as u8).collect();
    let (codes, _) = tq1::decode_block(&blk);
    for m in 0..32 {
        for n in 0..5 {
            assert_eq!(codes[32 * n + m], tq_vnni::tq1_trit(blk[m], n as u32));
        }
    }
}

/// The AVX2 kernels (ggml's own `__AVX2__` code, with and without prefetch) against the
/// portable reference.
#[test]
#[cfg_attr(
    not(cpu_avx2),
    ignore = "this CPU has no AVX2/FMA/F16C: the AVX2 kernels cannot run here"
)]
fn avx2_dots_equal_reference() {
    assert!(
        Simd::Avx2.is_supported(),
        "the build saw AVX2 on this CPU but the engine does not detect it"
    );
    let mut rng = Rng::new(41);
    for fmt in [Format::Tq1, Format::Tq2] {
        for &nb in BLOCKS {
            for kind in 0..3 {
                let (w, y) = rows_and_acts(&mut rng, fmt, 2, nb, kind);
                for r in 0..2 {
                    let row = &w[r * nb * block_bytes(fmt)..(r + 1) * nb * block_bytes(fmt)];
                    let want = reference(fmt, row, &y).to_bits();
                    let (a, b) = match fmt {
                        Format::Tq1 => (
                            tq1::vec_dot_q8k_with(Simd::Avx2, row, &y),
                            tq1::vec_dot_q8k_stream_with(Simd::Avx2, row, &y),
                        ),
                        Format::Tq2 => (
                            tq2::vec_dot_q8k_with(Simd::Avx2, row, &y),
                            tq2::vec_dot_q8k_stream_with(Simd::Avx2, row, &y),
                        ),
                    };
                    assert_eq!(a.to_bits(), want, "{fmt:?} nb={nb} kind={kind}");
                    assert_eq!(b.to_bits(), want, "{fmt:?} stream nb={nb} kind={kind}");
                }
            }
        }
    }
}

fn decode_lines(fmt: Format, y: &[BlockQ8K]) -> Vec<Line> {
    let mut l = vec![Line::default(); fmt.decode_len(y.len())];
    tq_vnni::decode_acts(fmt, y, &mut l);
    l
}

/// One token's activations for the TQ1_0 copy's kernel ([`tq_vnni::tq1_copy_acts`]).
fn copy_lines(y: &[BlockQ8K]) -> Vec<Line> {
    let mut l = vec![Line::default(); tq_vnni::tq1_copy_acts_len(y.len())];
    tq_vnni::tq1_copy_acts(y, &mut l);
    l
}

#[cfg(target_arch = "x86_64")]
#[test]
#[cfg_attr(
    not(cpu_avx512_vbmi_gfni),
    ignore = "this CPU has no AVX-512 VNNI/VBMI/GFNI: the TQ VNNI kernels cannot run here"
)]
fn vnni_decode_dots_equal_reference() {
    assert!(
        tq_vnni::available(),
        "the build saw AVX-512 VNNI/VBMI/GFNI on this CPU but the engine does not detect it"
    );
    let mut rng = Rng::new(42);
    for fmt in [Format::Tq1, Format::Tq2] {
        let bb = block_bytes(fmt);
        for &nb in BLOCKS {
            for kind in 0..3 {
                let rows = 3;
                let (w, y) = rows_and_acts(&mut rng, fmt, rows, nb, kind);
                let acts = decode_lines(fmt, &y);
                for r in 0..rows {
                    // The last row ends the buffer: a kernel reading past it would fault or
                    // be caught by the allocator's guard (the TQ1_0 loads are masked).
                    let row = &w[r * nb * bb..(r + 1) * nb * bb];
                    // SAFETY: `available()` returned true; `row` holds nb blocks and `acts`
                    // decode_len(nb) lines of this format.
                    let got = unsafe {
                        match fmt {
                            Format::Tq1 => {
                                tq_vnni::x86::tq1_dot_row(row.as_ptr(), acts.as_ptr(), nb)
                            }
                            Format::Tq2 => {
                                tq_vnni::x86::tq2_dot_row(row.as_ptr(), acts.as_ptr(), nb)
                            }
                        }
                    };
                    let want = reference(fmt, row, &y).to_bits();
                    assert_eq!(got.to_bits(), want, "{fmt:?} nb={nb} kind={kind} r={r}");
                    if fmt == Format::Tq1 {
                        // The row alone as a model copies it (a group of one).
                        let mut copy = vec![0u8; tq_vnni::copy_len(fmt, 1, nb * QK_K)];
                        tq_vnni::interleave4(fmt, row, 1, nb * QK_K, &mut copy);
                        let (c, d) = tq_vnni::tq1_rows_at(1, nb, 0);
                        let lines = copy_lines(&y);
                        // SAFETY: as above; `copy` holds the row's codes and scales at
                        // `tq1_rows_at`'s offsets, `lines` the copy kernels' activations.
                        let got = unsafe {
                            tq_vnni::x86::tq1_dot_quint_row(
                                copy[c..].as_ptr(),
                                copy[d..].as_ptr(),
                                lines.as_ptr(),
                                nb,
                            )
                        };
                        assert_eq!(got.to_bits(), want, "copied: nb={nb} kind={kind} r={r}");
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
#[cfg_attr(
    not(cpu_avx512_vbmi_gfni),
    ignore = "this CPU has no AVX-512 VNNI/VBMI/GFNI: the TQ VNNI kernels cannot run here"
)]
fn vnni_rows_at_once_equal_the_reference() {
    assert!(
        tq_vnni::available(),
        "the build saw AVX-512 VNNI/VBMI/GFNI on this CPU but the engine does not detect it"
    );
    let mut rng = Rng::new(43);
    for fmt in [Format::Tq1, Format::Tq2] {
        let bb = block_bytes(fmt);
        for &nb in BLOCKS {
            for kind in 0..3 {
                let rows = 4;
                let (w, y) = rows_and_acts(&mut rng, fmt, rows, nb, kind);
                let acts = decode_lines(fmt, &y);
                // The four rows end the buffer, as in `vnni_decode_dots_equal_reference`.
                // SAFETY: `available()` returned true; `w` holds four rows of nb blocks and
                // `acts` decode_len(nb) lines of this format.
                let got = unsafe {
                    match fmt {
                        Format::Tq1 => {
                            tq_vnni::x86::tq1_dot_rows::<4>(w.as_ptr(), acts.as_ptr(), nb)
                        }
                        Format::Tq2 => {
                            tq_vnni::x86::tq2_dot_rows::<4>(w.as_ptr(), acts.as_ptr(), nb)
                        }
                    }
                };
                // The same four rows as a model copies them ([`tq_vnni::interleave4`]).
                let mut by4 = vec![0u8; tq_vnni::copy_len(fmt, 4, nb * QK_K)];
                tq_vnni::interleave4(fmt, &w, 4, nb * QK_K, &mut by4);
                // SAFETY: as above; `by4` holds the four rows in `interleave4`'s layout
                // (group 0's codes and scales at `tq{1,2}_…_at`'s offsets), `copy` the
                // activations of TQ1_0's copy kernel.
                let got_by4 = unsafe {
                    match fmt {
                        Format::Tq1 => {
                            let copy = copy_lines(&y);
                            let (c, d) = tq_vnni::tq1_rows_at(4, nb, 0);
                            tq_vnni::x86::tq1_dot_quint_pairs(
                                by4[c..].as_ptr(),
                                by4[d..].as_ptr(),
                                copy.as_ptr(),
                                nb,
                            )
                        }
                        Format::Tq2 => {
                            let (qs, ds) = tq_vnni::tq2_group_at(4, nb, 0);
                            tq_vnni::x86::tq2_dot_pairs(
                                by4[qs..].as_ptr(),
                                by4[ds..].as_ptr(),
                                acts.as_ptr(),
                                nb,
                            )
                        }
                    }
                };
                for (r, (got, got_by4)) in got.into_iter().zip(got_by4).enumerate() {
                    let row = &w[r * nb * bb..(r + 1) * nb * bb];
                    let want = reference(fmt, row, &y).to_bits();
                    assert_eq!(got.to_bits(), want, "{fmt:?} nb={nb} kind={kind} r={r}");
                    assert_eq!(
                        got_by4.to_bits(),
                        want,
                        "interleaved: {fmt:?} nb={nb} kind={kind} r={r}"
                    );
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
#[cfg_attr(
    not(cpu_avx512_vbmi_gfni),
    ignore = "this CPU has no AVX-512 VNNI/VBMI/GFNI: the TQ VNNI kernels cannot run here"
)]
fn vnni_panel_gemm_equals_reference() {
    assert!(
        tq_vnni::available(),
        "the build saw AVX-512 VNNI/VBMI/GFNI on this CPU but the engine does not detect it"
    );
    let mut rng = Rng::new(43);
    for fmt in [Format::Tq1, Format::Tq2] {
        let bb = block_bytes(fmt);
        for &(n_rows, n_tok, nb) in &[
            (1usize, 1usize, 1usize),
            (1, 2, 1),
            (4, 6, 2),
            (5, 7, 3),
            (9, 13, 5),
            (8, 12, 10),
            (3, 2, 27),
            (17, 1, 3),
            (6, 11, 1),
        ] {
            let w = random_rows(&mut rng, fmt, n_rows, nb);
            let ys: Vec<Vec<BlockQ8K>> = (0..n_tok)
                .map(|t| q8k_row(&mut rng, nb, t as u64 % 3))
                .collect();
            let np = n_tok.div_ceil(2);
            let mut acts = vec![Line::default(); np * nb * PAIR_LINES];
            for (p, lines) in acts.chunks_exact_mut(nb * PAIR_LINES).enumerate() {
                let b = ys.get(2 * p + 1).map(|v| &v[..]);
                tq_vnni::pair_acts(fmt, &ys[2 * p], b, lines);
            }
            let mut codes = vec![0u8; n_rows * nb * 256];
            let mut xd = vec![0f32; n_rows * nb];
            let mut got = vec![f32::NAN; n_rows * n_tok];
            let mut seen = vec![false; n_rows * n_tok];
            // SAFETY: `available()` returned true; `w` holds n_rows·nb blocks, `codes` and
            // `xd` were sized for n_rows·nb blocks, `acts` for np pairs of nb blocks.
            unsafe {
                tq_vnni::x86::unpack_panel(
                    fmt,
                    w.as_ptr(),
                    n_rows,
                    nb,
                    codes.as_mut_ptr(),
                    xd.as_mut_ptr(),
                );
                tq_vnni::x86::gemm_panel(
                    codes.as_ptr(),
                    xd.as_ptr(),
                    n_rows,
                    nb,
                    acts.as_ptr(),
                    n_tok,
                    |r, t, v| {
                        assert!(!seen[r * n_tok + t], "({r}, {t}) emitted twice");
                        seen[r * n_tok + t] = true;
                        got[r * n_tok + t] = v;
                    },
                );
            }
            for r in 0..n_rows {
                let row = &w[r * nb * bb..(r + 1) * nb * bb];
                for t in 0..n_tok {
                    assert!(seen[r * n_tok + t], "({r}, {t}) never emitted");
                    assert_eq!(
                        got[r * n_tok + t].to_bits(),
                        reference(fmt, row, &ys[t]).to_bits(),
                        "{fmt:?} {n_rows} rows × {nb} blocks, {n_tok} tokens: r={r} t={t}"
                    );
                }
            }
        }
    }
}

/// The matmul driver at every level and 1–3 threads: every output equals the portable
/// per-element reference, bit for bit, for 1–13 tokens, odd row and block counts.
#[test]
fn matmul_equals_reference_at_every_level_and_thread_count() {
    let mut rng = Rng::new(44);
    for fmt in [Format::Tq1, Format::Tq2] {
        let bb = block_bytes(fmt);
        for &(rows, nb, nt) in &[
            (37, 10, 1),
            (37, 10, 2),
            (70, 3, 13),
            (5, 27, 3),
            (64, 1, 7),
            (33, 5, 12),
            (1, 2, 1),
            (100, 2, 5),
        ] {
            let cols = nb * QK_K;
            for random in [false, true] {
                let w = if random {
                    random_rows(&mut rng, fmt, rows, nb)
                } else {
                    quantized_rows(&mut rng, fmt, rows, nb)
                };
                let mut interleaved = vec![0u8; tq_vnni::copy_len(fmt, rows, cols)];
                tq_vnni::interleave4(fmt, &w, rows, cols, &mut interleaved);
                let x: Vec<f32> = (0..nt * cols)
                    .map(|i| {
                        if (i / cols) % 4 == 3 {
                            // Constant magnitude: every quant ±127.
                            if rng.below(2) == 0 {
                                1.5
                            } else {
                                -1.5
                            }
                        } else {
                            (0..4).map(|_| rng.f32()).sum()
                        }
                    })
                    .collect();
                let mut want = vec![0f32; nt * rows];
                for t in 0..nt {
                    let mut y = vec![BlockQ8K::default(); nb];
                    quantize_row_q8_k(&x[t * cols..(t + 1) * cols], &mut y);
                    for r in 0..rows {
                        want[t * rows + r] = reference(fmt, &w[r * nb * bb..(r + 1) * nb * bb], &y);
                    }
                }
                // With and without the interleaved copy a model makes for the VNNI decode
                // kernels (every other path reads `data`).
                for by4 in [None, Some(&interleaved[..])] {
                    let view = match fmt {
                        Format::Tq1 => WeightView::TQ1 {
                            data: &w,
                            rows,
                            cols,
                            by4,
                        },
                        Format::Tq2 => WeightView::TQ2 {
                            data: &w,
                            rows,
                            cols,
                            by4,
                        },
                    };
                    let case = format!(
                        "{fmt:?} {rows}x{cols} nt={nt} random={random} interleaved={}",
                        by4.is_some()
                    );
                    util::matmul_everywhere_equals(&view, &x, &want, &case);
                }
            }
        }
    }
}

/// One scratch re-used across formats, shapes and token counts (decode and prefill lines
/// share a buffer).
#[test]
fn scratch_reuse_across_tq_shapes() {
    let mut rng = Rng::new(45);
    let mut s = Scratch::default();
    for &(fmt, rows, nb, nt) in &[
        (Format::Tq2, 40, 10, 5),
        (Format::Tq1, 16, 2, 1),
        (Format::Tq1, 33, 5, 12),
        (Format::Tq2, 40, 10, 1),
        (Format::Tq1, 7, 27, 2),
    ] {
        let cols = nb * QK_K;
        let w = quantized_rows(&mut rng, fmt, rows, nb);
        let view = match fmt {
            Format::Tq1 => WeightView::TQ1 {
                data: &w,
                rows,
                cols,
                by4: None,
            },
            Format::Tq2 => WeightView::TQ2 {
                data: &w,
                rows,
                cols,
                by4: None,
            },
        };
        let x = rng.vec(nt * cols, 1.0);
        let mut a = vec![0f32; nt * rows];
        let mut b = vec![0f32; nt * rows];
        matmul_with(Simd::current(), &view, &x, &mut a, &mut s).unwrap();
        matmul_with(Simd::Scalar, &view, &x, &mut b, &mut Scratch::default()).unwrap();
        assert_eq!(bits(&a), bits(&b), "{fmt:?} {rows}x{cols} nt={nt}");
    }
}

/// `tq_vnni::interleave4`'s TQ1_0 layout, trit by trit: the byte of value `j` of row `r`'s
/// quint `q` is `t₀ + 3t₁ + 9t₂ + 27t₃ + 84t₄` of the trits of value `j` of blocks
/// `5q..5q + 5` (`tq1::decode_block`, ggml's), that of a block past the last quint
/// `t₀ + 3t₁ + 9t₂ + 27t₃` of its values `j`, `64 + j`, `128 + j`, `192 + j` (`j < 64`). In
/// a group of four rows (at `tq1_rows_at`'s offset) each quint takes 1024 bytes and each
/// block past the quints 256, the unit's first half for rows 0 and 1 and its second for
/// rows 2 and 3, in vectors of 32 bytes of each row of the pair (`[r0 | r1]`, byte `j` in
/// vector `j / 32`); a row past the last whole group keeps its own bytes in order (256 a
/// quint, 64 a block). Every row's scales in block order after every code.
#[test]
fn interleave4_packs_tq1_trits_where_documented() {
    let mut rng = Rng::new(46);
    let bb = block_bytes(Format::Tq1);
    for &(rows, nb) in &[(4, 1), (6, 3), (9, 10), (3, 2), (8, 27), (5, 5), (7, 12)] {
        let w = random_rows(&mut rng, Format::Tq1, rows, nb);
        let rb = nb * bb;
        let mut out = vec![0u8; tq_vnni::copy_len(Format::Tq1, rows, nb * QK_K)];
        tq_vnni::interleave4(Format::Tq1, &w, rows, nb * QK_K, &mut out);
        let (nq, nt) = (nb / 5, nb % 5);
        for r in 0..rows {
            let trits: Vec<[u8; QK_K]> = (0..nb)
                .map(|b| tq1::decode_block(&w[r * rb + b * bb..][..bb]).0)
                .collect();
            let (g0, n) = if r < rows / 4 * 4 {
                (r / 4 * 4, 4)
            } else {
                (r, 1)
            };
            let (codes, _) = tq_vnni::tq1_rows_at(rows, nb, g0);
            let (_, ds) = tq_vnni::tq1_rows_at(rows, nb, r);
            let k = r - g0;
            // Byte `j` of a `unit`-byte unit (a quint's or a block's) starting at `at`.
            let place = |at: usize, unit: usize, j: usize| {
                if n == 1 {
                    at + j
                } else {
                    at + 2 * unit * (k / 2) + 64 * (j / 32) + 32 * (k % 2) + j % 32
                }
            };
            for (q, five) in trits.chunks_exact(5).enumerate() {
                let wants = (0..256).map(|j| {
                    let t = |m: usize| five[m][j] as u32;
                    t(0) + 3 * t(1) + 9 * t(2) + 27 * t(3) + tq_vnni::QUINT_STEP as u32 * t(4)
                });
                for (j, want) in wants.enumerate() {
                    let at = place(codes + 256 * n * q, 256, j);
                    assert_eq!(
                        out[at] as u32, want,
                        "{rows}x{nb}: row {r} quint {q} byte {j}"
                    );
                }
            }
            for t in 0..nt {
                for j in 0..64 {
                    let b = 5 * nq + t;
                    let want: u32 = (0..4)
                        .map(|m| trits[b][64 * m + j] as u32 * 3u32.pow(m as u32))
                        .sum();
                    let at = place(codes + 256 * n * nq + 64 * n * t, 64, j);
                    assert_eq!(
                        out[at] as u32, want,
                        "{rows}x{nb}: row {r} block {b} byte {j}"
                    );
                }
            }
            for b in 0..nb {
                assert_eq!(
                    out[ds + 2 * b..][..2],
                    w[r * rb + b * bb + bb - 2..][..2],
                    "{rows}x{nb}: row {r} scale {b}"
                );
            }
        }
    }
}

/// The TQ1_0 digit table: the base-3 digits of every number below 81, zero past it.
#[test]
fn tq1_digit_table_holds_base3_digits() {
    for x in 0..128usize {
        let want = if x < 81 {
            (0..4)
                .map(|m| ((x / 3usize.pow(m)) % 3) << (2 * m))
                .sum::<usize>() as u8
        } else {
            0
        };
        assert_eq!(tq_vnni::TQ1_DIGITS[x], want, "entry {x}");
    }
}

/// `tq_vnni::interleave4`'s TQ2_0 layout, byte by byte: in group `g`, row `k`'s codes
/// 0..32 and 32..64 of block `b` at bytes `32·(k mod 2)` of the vectors `2·(k / 2)` and
/// `2·(k / 2) + 1` of the block's four, its scale the `k`-th of the block's four; codes
/// and scales where `tq2_group_at` says; rows past the last whole group where they were.
#[test]
fn interleave4_pairs_tq2_rows_where_documented() {
    let mut rng = Rng::new(47);
    let bb = block_bytes(Format::Tq2);
    for &(rows, nb) in &[(4, 1), (6, 3), (9, 10), (3, 2), (8, 27), (12, 2)] {
        let w = random_rows(&mut rng, Format::Tq2, rows, nb);
        let rb = nb * bb;
        let mut out = vec![0u8; rows * rb];
        tq_vnni::interleave4(Format::Tq2, &w, rows, nb * QK_K, &mut out);
        for r in 0..rows {
            for b in 0..nb {
                let x = &w[r * rb + b * bb..r * rb + (b + 1) * bb];
                let what = format!("{rows}x{nb}: row {r} block {b}");
                if r / 4 == rows / 4 {
                    assert_eq!(out[r * rb + b * bb..][..bb], *x, "{what} (tail)");
                    continue;
                }
                let (qs, ds) = tq_vnni::tq2_group_at(rows, nb, r / 4);
                let k = r % 4;
                let v = qs + 256 * b + 128 * (k / 2) + 32 * (k % 2);
                assert_eq!(out[v..v + 32], x[..32], "{what}: codes 0..32");
                assert_eq!(out[v + 64..v + 96], x[32..64], "{what}: codes 32..64");
                assert_eq!(out[ds + 8 * b + 2 * k..][..2], x[64..66], "{what}: scale");
            }
        }
    }
}
