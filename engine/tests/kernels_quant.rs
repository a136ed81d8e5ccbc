//! Quant formats: bit layouts, activation quantizers, integer dots, SIMD levels agree.

#[path = "kernels_util.rs"]
mod util;

use engine::kernels::Simd;
use engine::quant::q8k::{quantize_row_q8_k, BlockQ8K, QK_K};
use engine::quant::{i2s, nearest_int, tq1, tq2};
use util::{levels, Rng};

/// One hand-built 128-value block: value 0 = +1, 32 = −1, 64 = 0, 96 = +1, 1 = −1, 127 = −1,
/// everything else 0. Byte j holds values j, j+32, j+64, j+96 at shifts 6, 4, 2, 0 with codes
/// −1→0, 0→1, +1→2.
#[test]
fn i2s_hand_built_block() {
    let scale = 0.75f32;
    let mut t = [0i32; 128];
    t[0] = 1;
    t[32] = -1;
    t[64] = 0;
    t[96] = 1;
    t[1] = -1;
    t[127] = -1;
    let vals: Vec<f32> = t.iter().map(|&v| v as f32 * scale).collect();
    let bytes = i2s::quantize(&vals);
    assert_eq!(bytes.len(), 128 / 4 + 32);
    let mut want = [0x55u8; 32]; // four zeros: 01 01 01 01
    want[0] = 0b10_00_01_10; // +1, −1, 0, +1
    want[1] = 0b00_01_01_01; // value 1 = −1, values 33, 65, 97 = 0
    want[31] = 0b01_01_01_00; // values 31, 63, 95 = 0, value 127 = −1
    assert_eq!(&bytes[..32], &want[..]);
    assert_eq!(want[0], 0x86);
    assert_eq!(&bytes[32..36], &scale.to_le_bytes());
    assert!(bytes[36..].iter().all(|&b| b == 0));
    assert_eq!(i2s::scale(&bytes, 128), scale);
    let mut codes = [0u8; 128];
    i2s::decode_codes(&bytes, &mut codes);
    for i in 0..128 {
        assert_eq!(codes[i] as i32 - 1, t[i], "value {i}");
    }
    assert_eq!(i2s::dequantize(&bytes, 128), vals);
}

#[test]
fn i2s_scale_sits_after_all_rows() {
    let mut rng = Rng::new(1);
    let (rows, cols) = (3, 256);
    let vals = rng.ternary(rows * cols, 0.5);
    let bytes = i2s::quantize(&vals);
    assert_eq!(bytes.len(), i2s::tensor_bytes(rows * cols));
    assert_eq!(i2s::scale(&bytes, rows * cols), 0.5);
    // Row r starts at r·cols/4.
    for r in 0..rows {
        let row = &bytes[r * cols / 4..];
        for c in 0..cols {
            assert_eq!(
                i2s::code_at(row, c) as i32 - 1,
                vals[r * cols + c].signum() as i32 * (vals[r * cols + c] != 0.0) as i32
            );
        }
    }
    assert_eq!(i2s::dequantize(&bytes, rows * cols), vals);
}

#[test]
fn i8_s_round_half_to_even_and_clamp() {
    // max |x| = 127 → s = 1, so x·s = x exactly.
    let x = [
        127.0f32, 2.5, 3.5, -2.5, -3.5, 0.5, 1.5, -0.5, 126.5, -127.0,
    ];
    let want = [127i8, 2, 4, -2, -4, 0, 2, 0, 126, -127];
    for s in levels() {
        let mut q = [0i8; 10];
        let (sc, sum) = i2s::quantize_row_i8_s_with(s, &x, &mut q);
        assert_eq!(sc, 1.0);
        assert_eq!(q, want, "{s:?}");
        assert_eq!(sum, want.iter().map(|&v| v as i32).sum::<i32>());
    }
    // All zeros: max starts at 1e-5 (double), s = (float)(127/1e-5).
    let mut q = [1i8; 5];
    let (sc, sum) = i2s::quantize_row_i8_s(&[0.0; 5], &mut q);
    assert_eq!(sc, (127.0f64 / 0.00001) as f32);
    assert_eq!((q, sum), ([0; 5], 0));
}

/// The oracle is built by clang, which does not fuse `nearest_int(x*s)`: the rounding sees
/// the f32-rounded product. Find inputs where that product is exactly k+0.5 but the exact
/// one is not (a GCC build, which fuses, would round those the other way), and check the
/// quantizer follows the f32 product at every SIMD level.
#[test]
fn i8_s_rounds_the_f32_product() {
    let mut rng = Rng::new(7);
    let mut found = 0;
    for _ in 0..2_000_000 {
        let x = rng.f32() * 3.0;
        let s = 127.0f32 / (1.0 + rng.f32().abs() * 2.0);
        let p32 = x * s;
        let p64 = x as f64 * s as f64;
        if (p32 - p32.trunc()).abs() == 0.5 && p64 != p32 as f64 {
            let v = nearest_int(x * s);
            assert_eq!(v as f32, p32.round_ties_even(), "x={x} s={s}");
            if v as f64 != p64.round_ties_even() {
                found += 1;
            }
        }
    }
    assert!(found > 0, "no distinguishing case found");
    // Through the quantizer: max |x| = 1 gives s = 127; x·127 lands on k+0.5 in f32 for
    // x = (k+0.5)/127 rounded to f32 whenever the product rounds back exactly.
    let mut xs = vec![1.0f32];
    for k in 0..126 {
        let x = (k as f32 + 0.5) / 127.0;
        let (p32, p64) = (x * 127.0, x as f64 * 127.0);
        if p32.fract().abs() == 0.5 && p64 != p32 as f64 {
            xs.push(x);
            xs.push(-x);
        }
    }
    assert!(xs.len() > 1, "no tie case for s = 127");
    let want: Vec<i8> = xs.iter().map(|&x| nearest_int(x * 127.0) as i8).collect();
    for s in levels() {
        let mut q = vec![0i8; xs.len()];
        let (sc, _) = i2s::quantize_row_i8_s_with(s, &xs, &mut q);
        assert_eq!(sc, 127.0);
        assert_eq!(q, want, "{s:?}");
    }
}

#[test]
fn i8_s_levels_agree() {
    let mut rng = Rng::new(3);
    for &n in &[1usize, 7, 31, 32, 33, 128, 2560, 6912, 1000] {
        let x = rng.vec(n, 3.0);
        let mut q0 = vec![0i8; n];
        let r0 = i2s::quantize_row_i8_s_scalar(&x, &mut q0);
        for s in levels() {
            let mut q = vec![0i8; n];
            let r = i2s::quantize_row_i8_s_with(s, &x, &mut q);
            assert_eq!((r.0.to_bits(), r.1), (r0.0.to_bits(), r0.1), "{s:?} n={n}");
            assert_eq!(q, q0, "{s:?} n={n}");
        }
        // The max element maps to ±127.
        assert_eq!(q0.iter().map(|v| v.unsigned_abs()).max(), Some(127));
    }
}

fn random_packed(rng: &mut Rng, cols: usize) -> Vec<u8> {
    let vals = rng.ternary(cols, 1.0);
    let mut b = i2s::quantize(&vals);
    b.truncate(cols / 4);
    b
}

#[test]
fn i2s_dot_levels_agree_and_equal_true_dot() {
    let mut rng = Rng::new(11);
    for &nb in &[1usize, 2, 3, 20, 31, 32, 33, 54, 65] {
        let cols = nb * 128;
        let row = random_packed(&mut rng, cols);
        let x = rng.vec(cols, 1.0);
        let mut q = vec![0i8; cols];
        let (_, sum) = i2s::quantize_row_i8_s(&x, &mut q);
        let d0 = i2s::vec_dot_i2_i8_scalar(&row, &q);
        for s in levels() {
            assert_eq!(i2s::vec_dot_i2_i8_with(s, &row, &q), d0, "{s:?} nb={nb}");
        }
        // Random activations never approach the i16 limit: Σcode·q − Σq is the true dot.
        assert_eq!((d0 - sum) as i64, i2s::vec_dot_exact(&row, &q), "nb={nb}");
    }
}

/// bitnet.cpp sums 32 blocks in i16 lanes before widening; with every weight +1 and every
/// activation 127 a lane reaches 256·254 and wraps. All levels wrap identically.
#[test]
fn i2s_dot_wraps_like_bitnet() {
    for &nb in &[32usize, 33, 40, 64] {
        let cols = nb * 128;
        let row = i2s::quantize(&vec![1.0f32; cols])[..cols / 4].to_vec();
        let q = vec![127i8; cols];
        let d0 = i2s::vec_dot_i2_i8_scalar(&row, &q);
        // Lane k of a full group: 256 products of 2·127 = 65024 → wraps to 65024 − 65536.
        let full = nb / 32;
        let rest = nb % 32;
        let want = full as i32 * 16 * (65024i32 - 65536) + 16 * (rest as i32 * 8 * 254);
        assert_eq!(d0, want, "nb={nb}");
        for s in levels() {
            assert_eq!(i2s::vec_dot_i2_i8_with(s, &row, &q), d0, "{s:?} nb={nb}");
        }
    }
}

#[test]
fn i2s_finish_order() {
    // (dot − sum) / s · scale, f32, left to right.
    let (dot, sum, s, sc) = (12345i32, -321i32, 41.3f32, 0.0123f32);
    let want = ((dot as f32 - sum as f32) / s) * sc;
    assert_eq!(i2s::finish(dot, sum, s, sc).to_bits(), want.to_bits());
}

#[test]
fn q8k_quantize_matches_ref_semantics() {
    let mut rng = Rng::new(5);
    let x = rng.vec(3 * QK_K, 2.0);
    let mut y = vec![BlockQ8K::default(); 3];
    quantize_row_q8_k(&x, &mut y);
    for (b, xb) in y.iter().zip(x.chunks(QK_K)) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let iscale = -127.0f32 / max;
        assert_eq!(b.d, 1.0 / iscale);
        for (j, &q) in b.qs.iter().enumerate() {
            assert_eq!(q as i32, nearest_int(iscale * xb[j]).min(127));
        }
        for j in 0..16 {
            assert_eq!(
                b.bsums[j] as i32,
                b.qs[j * 16..j * 16 + 16]
                    .iter()
                    .map(|&v| v as i32)
                    .sum::<i32>()
            );
        }
        // The max element maps to −127.
        assert!(b.qs.contains(&-127));
    }
    let mut z = vec![BlockQ8K::default(); 1];
    quantize_row_q8_k(&[0.0; QK_K], &mut z);
    assert_eq!(z[0], BlockQ8K::default());
}

#[test]
fn tq1_trit_extraction_formulas_agree() {
    for q in 0..=255u8 {
        assert_eq!(
            tq1::trit_avx2_formula(q),
            tq1::trit_scalar_formula(q),
            "q={q}"
        );
    }
}

#[test]
fn tq_roundtrip_ternary() {
    let mut rng = Rng::new(9);
    let n = 4 * QK_K;
    let mut vals = rng.ternary(n, 1.0);
    // One block with a non-trivial f16 scale.
    for v in vals[QK_K..2 * QK_K].iter_mut() {
        *v *= 0.3125;
    }
    for (name, bytes, bb) in [
        ("tq1", tq1::quantize_row(&vals), tq1::BLOCK_BYTES),
        ("tq2", tq2::quantize_row(&vals), tq2::BLOCK_BYTES),
    ] {
        assert_eq!(bytes.len(), n / QK_K * bb, "{name}");
        let mut back = vec![0f32; n];
        if name == "tq1" {
            tq1::dequantize_row(&bytes, &mut back);
        } else {
            tq2::dequantize_row(&bytes, &mut back);
        }
        assert_eq!(back, vals, "{name}");
    }
}

fn tq_reference_dot(w: &[f32], y: &[BlockQ8K]) -> f64 {
    w.chunks(QK_K)
        .zip(y)
        .map(|(wb, yb)| {
            wb.iter()
                .zip(yb.qs.iter())
                .map(|(&a, &q)| a as f64 * q as f64 * yb.d as f64)
                .sum::<f64>()
        })
        .sum()
}

#[test]
fn tq_dots_levels_agree_and_are_close() {
    let mut rng = Rng::new(13);
    for &nb in &[1usize, 2, 5, 10] {
        let n = nb * QK_K;
        let w = rng.ternary(n, 0.5);
        let x = rng.vec(n, 2.0);
        let mut y = vec![BlockQ8K::default(); nb];
        quantize_row_q8_k(&x, &mut y);
        let r = tq_reference_dot(&w, &y);
        let b1 = tq1::quantize_row(&w);
        let b2 = tq2::quantize_row(&w);
        let d1 = tq1::vec_dot_q8k_scalar(&b1, &y);
        let d2 = tq2::vec_dot_q8k_scalar(&b2, &y);
        assert_eq!(
            d1.to_bits(),
            d2.to_bits(),
            "same codes, same lanes, same floats"
        );
        assert!(
            (d1 as f64 - r).abs() <= 1e-4 * (1.0 + r.abs()),
            "{d1} vs {r}"
        );
        for s in levels() {
            assert_eq!(
                tq1::vec_dot_q8k_with(s, &b1, &y).to_bits(),
                d1.to_bits(),
                "tq1 {s:?}"
            );
            assert_eq!(
                tq2::vec_dot_q8k_with(s, &b2, &y).to_bits(),
                d2.to_bits(),
                "tq2 {s:?}"
            );
        }
    }
}

#[test]
fn simd_env_names() {
    assert_eq!(Simd::parse("AVX512"), Some(Simd::Avx512));
    assert_eq!(Simd::parse("scalar"), Some(Simd::Scalar));
    assert_eq!(Simd::parse("sse"), None);
    assert!(Simd::Scalar.is_supported());
    assert!(Simd::current() <= Simd::detect());
}

/// Block results are accumulated as `sumf = lane·d + sumf` with the product rounded first:
/// the oracle's clang keeps `_mm256_add_ps(_mm256_mul_ps(..), sumf)` unfused (a GCC build
/// would emit `vfmadd231ps`). Two blocks, each with one +1 weight at position 0 and a
/// constant activation, put `-127·d_b` into lane 0 and nothing elsewhere; find weights
/// where fused and unfused sums differ and check the dots give the unfused one.
#[test]
fn tq_blocks_accumulate_unfused() {
    let mut rng = Rng::new(14);
    let mut found = 0;
    for _ in 0..2000 {
        let (wa, wb) = (0.1 + rng.f32().abs(), 0.1 + rng.f32().abs());
        let (xa, xb) = (0.1 + rng.f32().abs(), 0.1 + rng.f32().abs());
        let mut w = vec![0f32; 2 * QK_K];
        w[0] = wa;
        w[QK_K] = wb;
        let x: Vec<f32> = (0..2 * QK_K)
            .map(|i| if i < QK_K { xa } else { xb })
            .collect();
        let mut y = vec![BlockQ8K::default(); 2];
        quantize_row_q8_k(&x, &mut y);
        assert!(y.iter().all(|b| b.qs.iter().all(|&q| q == -127)));
        let da = y[0].d * half::f16::from_f32(wa).to_f32();
        let db = y[1].d * half::f16::from_f32(wb).to_f32();
        let first = -127.0f32 * da;
        let unfused = -127.0f32 * db + first;
        let fused = (-127.0f32).mul_add(db, first);
        if unfused == fused {
            continue;
        }
        found += 1;
        let (b1, b2) = (tq1::quantize_row(&w), tq2::quantize_row(&w));
        for s in levels() {
            assert_eq!(tq1::vec_dot_q8k_with(s, &b1, &y), unfused, "tq1 {s:?}");
            assert_eq!(tq2::vec_dot_q8k_with(s, &b2, &y), unfused, "tq2 {s:?}");
        }
    }
    assert!(found > 0, "no distinguishing case found");
}
