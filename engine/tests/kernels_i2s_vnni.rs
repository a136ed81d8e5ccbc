//! The AVX-512 VNNI I2_S kernels (`quant::i2s_vnni`) against the portable wrap-exact
//! reference (`i2s::vec_dot_i2_i8_scalar`), bit for bit: the no-wrap check, pair order,
//! the one-row decode dot, the unpacked-panel GEMM, and the matmul driver's routing of
//! tokens that could wrap, at odd block counts, odd row counts and many tokens.

#[path = "kernels_util.rs"]
mod util;

use engine::kernels::matmul::{matmul_with, Scratch, WeightView};
use engine::kernels::Simd;
use engine::quant::{i2s, i2s_vnni};
use util::{bits, Rng};

/// Packed I2_S rows with every code 0..=3 (3 never comes out of `quantize_i2_s`, but a file
/// may hold it and ggml's dot reads it as +2).
fn random_packed(rng: &mut Rng, rows: usize, cols: usize) -> Vec<u8> {
    (0..rows * cols / 4 + 32)
        .map(|_| rng.next_u64() as u8)
        .collect()
}

/// An activation row of int8 values with |q| ≤ `amp`.
fn random_q(rng: &mut Rng, cols: usize, amp: i64) -> Vec<i8> {
    (0..cols)
        .map(|_| (rng.below(2 * amp as u64 + 1) as i64 - amp) as i8)
        .collect()
}

fn pair_order(q: &[i8]) -> Vec<i8> {
    let mut p = vec![0i8; q.len()];
    i2s_vnni::to_pair_order(q, &mut p);
    p
}

const COLS: &[usize] = &[128, 256, 384, 640, 1280, 2560, 4224, 6912];

#[test]
fn pair_order_is_a_permutation_by_block_pairs() {
    for &cols in COLS {
        let q: Vec<i8> = (0..cols).map(|i| (i % 251) as i8).collect();
        let p = pair_order(&q);
        let nb = cols / 128;
        for pair in 0..nb / 2 {
            for n in 0..4 {
                for j in 0..32 {
                    assert_eq!(p[pair * 256 + n * 64 + j], q[pair * 256 + n * 32 + j]);
                    assert_eq!(
                        p[pair * 256 + n * 64 + 32 + j],
                        q[pair * 256 + 128 + n * 32 + j]
                    );
                }
            }
        }
        if nb % 2 == 1 {
            assert_eq!(p[(nb - 1) * 128..], q[(nb - 1) * 128..]);
        }
    }
}

/// Whenever the check passes, ggml's wrapped dot equals the exact dot (the premise of
/// the VNNI kernels), including with code 3 and at the edge of the bound.
#[test]
fn cannot_wrap_implies_wrapped_dot_is_exact() {
    let mut rng = Rng::new(31);
    let mut passed = 0;
    for &cols in COLS {
        for amp in [1i64, 20, 60, 127, 128] {
            for _ in 0..4 {
                let w = random_packed(&mut rng, 1, cols);
                let q = random_q(&mut rng, cols, amp);
                if i2s_vnni::cannot_wrap(&q) {
                    passed += 1;
                    assert_eq!(
                        i2s::vec_dot_i2_i8_scalar(&w, &q) as i64,
                        i2s::vec_dot_exact(&w, &q) + q.iter().map(|&v| v as i64).sum::<i64>(),
                        "cols={cols} amp={amp}"
                    );
                }
            }
        }
    }
    assert!(
        passed > 40,
        "too few rows passed the check to test anything: {passed}"
    );
}

/// The bound itself: lane 0 of a 32-block group at Σ|q| = 10922 passes, one more fails;
/// a row of fewer than 11 blocks always passes; groups are checked one by one.
#[test]
fn cannot_wrap_bound_is_per_lane_and_group() {
    // 32 blocks × 4 slices × 2 positions = 256 positions in lane 0 of the group.
    let lane0 = |q: &mut [i8], total: i32| {
        let mut left = total;
        for blk in 0..32 {
            for n in 0..4 {
                for b in 0..2 {
                    let v = left.min(128);
                    q[blk * 128 + n * 32 + b] = if v == 128 { -128 } else { v as i8 };
                    left -= v;
                }
            }
        }
        assert_eq!(left, 0);
    };
    let mut q = vec![0i8; 4096];
    lane0(&mut q, 10922);
    assert!(i2s_vnni::cannot_wrap(&q));
    lane0(&mut q, 10923);
    assert!(!i2s_vnni::cannot_wrap(&q));
    // Twice that sum spread over two lanes passes: 128 slices × 80 = 10240 per lane.
    let mut q = vec![0i8; 4096];
    for i in (0..4096).step_by(32) {
        q[i] = 80;
        q[i + 2] = 80;
    }
    assert!(i2s_vnni::cannot_wrap(&q));
    // Lane 1 up to the limit through its odd positions (3, 35, …): 10240 + 5·127 + 47.
    for i in 0..5 {
        q[i * 32 + 3] = 127;
    }
    q[5 * 32 + 3] = -47;
    assert!(i2s_vnni::cannot_wrap(&q));
    q[5 * 32 + 3] = -48;
    assert!(!i2s_vnni::cannot_wrap(&q));
    // Ten blocks of ±128 everywhere: 3·10·8·128 = 30720 ≤ 32767.
    assert!(i2s_vnni::cannot_wrap(&vec![-128i8; 1280]));
    assert!(!i2s_vnni::cannot_wrap(&vec![-128i8; 1408]));
    // A second group is checked on its own: 32 full blocks of 1, then 11 blocks of 127.
    let mut q = vec![1i8; 43 * 128];
    assert!(i2s_vnni::cannot_wrap(&q));
    q[32 * 128..].fill(127);
    assert!(!i2s_vnni::cannot_wrap(&q));
}

#[cfg(target_arch = "x86_64")]
#[test]
#[cfg_attr(
    not(cpu_avx512_vnni),
    ignore = "this CPU has no AVX-512 F/BW/VL/VNNI: the VNNI kernels cannot run here"
)]
fn dot_row_equals_reference() {
    assert!(
        i2s_vnni::has_vnni(),
        "the build saw AVX-512 VNNI on this CPU but the engine does not detect it"
    );
    let mut rng = Rng::new(32);
    for &cols in COLS {
        for amp in [3i64, 40, 127, 128] {
            let w = random_packed(&mut rng, 3, cols);
            let q = random_q(&mut rng, cols, amp);
            let qp = pair_order(&q);
            for r in 0..3 {
                let row = &w[r * cols / 4..];
                // SAFETY: `has_vnni()` returned true above; `w` has 3·cols/4 + 32 bytes
                // (`random_packed`), so row r < 3 holds ≥ cols/4; `qp` has cols values;
                // every entry of COLS is a multiple of 128.
                let got = unsafe { i2s_vnni::x86::dot_row(row.as_ptr(), qp.as_ptr(), cols) } as i64;
                let exact = i2s::vec_dot_exact(row, &q) + q.iter().map(|&v| v as i64).sum::<i64>();
                assert_eq!(got, exact, "cols={cols} amp={amp}");
                if i2s_vnni::cannot_wrap(&q) {
                    assert_eq!(got, i2s::vec_dot_i2_i8_scalar(row, &q) as i64);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
#[cfg_attr(
    not(cpu_avx512_vnni),
    ignore = "this CPU has no AVX-512 F/BW/VL/VNNI: the VNNI kernels cannot run here"
)]
fn four_rows_at_once_equal_four_single_rows() {
    assert!(
        i2s_vnni::has_vnni(),
        "the build saw AVX-512 VNNI on this CPU but the engine does not detect it"
    );
    let mut rng = Rng::new(33);
    for &cols in COLS {
        for amp in [3i64, 127, 128] {
            let w = random_packed(&mut rng, 6, cols);
            let qp = pair_order(&random_q(&mut rng, cols, amp));
            // Rows 0..4 and 2..6: the four need not start on a multiple of four.
            for r0 in [0, 2] {
                let rows = &w[r0 * cols / 4..];
                // SAFETY: `has_vnni()` returned true above; `w` has 6·cols/4 + 32 bytes
                // (`random_packed`), so rows r0..r0 + 4 ≤ 6 are there; `qp` has cols values;
                // every entry of COLS is a multiple of 128.
                let got =
                    unsafe { i2s_vnni::x86::dot_rows4::<false>(rows.as_ptr(), qp.as_ptr(), cols) };
                // The same four rows interleaved (as a model copies them), read as one stream.
                let mut by4 = vec![0u8; cols];
                i2s_vnni::interleave4(rows, 4, cols, &mut by4);
                // SAFETY: as above; `by4` holds the four rows' cols bytes.
                let got_by4 =
                    unsafe { i2s_vnni::x86::dot_rows4::<true>(by4.as_ptr(), qp.as_ptr(), cols) };
                assert_eq!(got_by4, got, "interleaved: cols={cols} amp={amp} r0={r0}");
                let one = |k: usize| {
                    // SAFETY: as above, for the single row r0 + k < 6.
                    unsafe {
                        i2s_vnni::x86::dot_row(rows[k * cols / 4..].as_ptr(), qp.as_ptr(), cols)
                    }
                };
                assert_eq!(
                    got,
                    [one(0), one(1), one(2), one(3)],
                    "cols={cols} amp={amp} r0={r0}"
                );
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
#[cfg_attr(
    not(cpu_avx512_vnni),
    ignore = "this CPU has no AVX-512 F/BW/VL/VNNI: the VNNI kernels cannot run here"
)]
fn panel_gemm_equals_reference() {
    assert!(
        i2s_vnni::has_vnni(),
        "the build saw AVX-512 VNNI on this CPU but the engine does not detect it"
    );
    let mut rng = Rng::new(33);
    for &(n_rows, n_tok, cols) in &[
        (1, 1, 128),
        (4, 6, 256),
        (5, 7, 384),
        (9, 13, 640),
        (32, 12, 2560),
        (3, 2, 6912),
        (17, 1, 4224),
    ] {
        let w = random_packed(&mut rng, n_rows, cols);
        let qs: Vec<Vec<i8>> = (0..n_tok).map(|_| random_q(&mut rng, cols, 30)).collect();
        let qp: Vec<i8> = qs.iter().flat_map(|q| pair_order(q)).collect();
        let mut panel = vec![0u8; n_rows * cols];
        let mut got = vec![i32::MIN; n_rows * n_tok];
        // SAFETY: `has_vnni()` returned true above; `w` has n_rows·cols/4 + 32 bytes
        // (`random_packed`), `panel` n_rows·cols (a separate buffer), `qp` n_tok·cols
        // values; every `cols` here is a multiple of 128.
        unsafe {
            i2s_vnni::x86::unpack_panel(w.as_ptr(), n_rows, cols, panel.as_mut_ptr());
            i2s_vnni::x86::gemm_panel(
                panel.as_ptr(),
                n_rows,
                qp.as_ptr(),
                n_tok,
                cols,
                |r, t, d| {
                    assert_eq!(got[r * n_tok + t], i32::MIN, "({r}, {t}) emitted twice");
                    got[r * n_tok + t] = d;
                },
            );
        }
        for r in 0..n_rows {
            for t in 0..n_tok {
                let row = &w[r * cols / 4..];
                assert!(i2s_vnni::cannot_wrap(&qs[t]));
                assert_eq!(
                    got[r * n_tok + t],
                    i2s::vec_dot_i2_i8_scalar(row, &qs[t]),
                    "{n_rows}x{cols} tokens={n_tok} r={r} t={t}"
                );
            }
        }
    }
}

/// `interleave4`'s layout, byte by byte: each group of four rows one run of `cols` bytes,
/// the rows' 64-byte lines interleaved, an odd last block's 32 bytes per row after them,
/// rows past the last whole group where they were.
#[test]
fn interleave4_puts_every_byte_where_documented() {
    let mut rng = Rng::new(36);
    for &(rows, cols) in &[(4, 128), (6, 384), (9, 2560), (3, 256), (8, 640)] {
        let w = random_packed(&mut rng, rows, cols);
        let (rb, nb) = (cols / 4, cols / 128);
        let mut out = vec![0u8; rows * rb];
        i2s_vnni::interleave4(&w, rows, cols, &mut out);
        for r in 0..rows {
            let (g, k) = (r / 4, r % 4);
            for b in 0..rb {
                let at = if g < rows / 4 {
                    let (p, o) = (b / 64, b % 64);
                    if p < nb / 2 {
                        4 * g * rb + p * 256 + k * 64 + o
                    } else {
                        4 * g * rb + (nb / 2) * 256 + k * 32 + (b - (nb - 1) * 32)
                    }
                } else {
                    r * rb + b
                };
                assert_eq!(out[at], w[r * rb + b], "{rows}x{cols}: row {r} byte {b}");
            }
        }
    }
}

/// An interleaved copy of the wrong length is refused, not read past.
#[test]
fn interleaved_rows_of_the_wrong_length_are_an_error() {
    let mut rng = Rng::new(37);
    let (rows, cols) = (8, 256);
    let w = i2s::quantize(&rng.ternary(rows * cols, 0.5));
    let short = vec![0u8; rows * cols / 4 - 1];
    let view = WeightView::I2S {
        data: &w,
        rows,
        cols,
        by4: Some(&short),
    };
    let x = rng.vec(cols, 1.0);
    let mut out = vec![0f32; rows];
    let err = matmul_with(
        Simd::current(),
        &view,
        &x,
        &mut out,
        &mut Scratch::default(),
    );
    assert!(
        matches!(err, Err(engine::kernels::KernelError::Size { .. })),
        "{err:?}"
    );
}

/// The matmul driver at every level, with tokens that pass the check and tokens that do
/// not (constant-magnitude activations: every |q| = 127, so lanes of ≥ 11-block groups
/// could wrap) in one call: each output equals the portable reference, bit for bit, for
/// one token (decode) and many (prefill), odd row counts, one to three threads.
#[test]
fn matmul_routes_wrapping_tokens_exactly() {
    let mut rng = Rng::new(34);
    for &(rows, cols, nt) in &[
        (37, 2560, 1),
        (37, 2560, 9),
        (70, 1408, 14),
        (70, 1408, 1),
        (5, 6912, 3),
        (64, 384, 7),
        (66, 384, 1),
    ] {
        let w = i2s::quantize(&rng.ternary(rows * cols, 0.25));
        let mut interleaved = vec![0u8; rows * cols / 4];
        i2s_vnni::interleave4(&w, rows, cols, &mut interleaved);
        for hot in [false, true] {
            // Bell-shaped activations, as a model's are (uniform ones would fail the check
            // at 2560 columns: mean |q| ≈ 64).
            let mut x: Vec<f32> = (0..nt * cols)
                .map(|_| (0..4).map(|_| rng.f32()).sum())
                .collect();
            if hot {
                // Every other token (the only one, for nt = 1) at constant magnitude, with
                // random signs; with nt = 1 the single token is hot.
                for t in (0..nt).step_by(2) {
                    for v in &mut x[t * cols..(t + 1) * cols] {
                        *v = if rng.below(2) == 0 { 3.0 } else { -3.0 };
                    }
                }
            }
            let scale = i2s::scale(&w, rows * cols);
            let mut want = vec![0f32; nt * rows];
            for t in 0..nt {
                let mut q = vec![0i8; cols];
                let (s, sum) = i2s::quantize_row_i8_s_scalar(&x[t * cols..(t + 1) * cols], &mut q);
                let hot_token = hot && t % 2 == 0;
                assert_eq!(
                    i2s_vnni::cannot_wrap(&q),
                    !hot_token || cols < 1408,
                    "t={t}"
                );
                for r in 0..rows {
                    let d = i2s::vec_dot_i2_i8_scalar(&w[r * cols / 4..], &q);
                    want[t * rows + r] = i2s::finish(d, sum, s, scale);
                }
            }
            // With and without the interleaved copy a model makes for the VNNI decode
            // kernel (every other path reads `data`).
            for by4 in [None, Some(&interleaved[..])] {
                let view = WeightView::I2S {
                    data: &w,
                    rows,
                    cols,
                    by4,
                };
                util::matmul_everywhere_equals(
                    &view,
                    &x,
                    &want,
                    &format!(
                        "{rows}x{cols} nt={nt} hot={hot} interleaved={}",
                        by4.is_some()
                    ),
                );
            }
        }
    }
}

/// One scratch re-used across calls of different shapes and token counts.
#[test]
fn scratch_reuse_across_shapes() {
    let mut rng = Rng::new(35);
    let mut s = Scratch::default();
    for &(rows, cols, nt) in &[(40, 2560, 5), (16, 640, 1), (33, 1280, 12), (40, 2560, 1)] {
        let w = i2s::quantize(&rng.ternary(rows * cols, 0.5));
        let view = WeightView::I2S {
            data: &w,
            rows,
            cols,
            by4: None,
        };
        let x = rng.vec(nt * cols, 1.0);
        let mut a = vec![0f32; nt * rows];
        let mut b = vec![0f32; nt * rows];
        matmul_with(Simd::current(), &view, &x, &mut a, &mut s).unwrap();
        matmul_with(Simd::Scalar, &view, &x, &mut b, &mut Scratch::default()).unwrap();
        assert_eq!(bits(&a), bits(&b), "{rows}x{cols} nt={nt}");
    }
}
