//! RMSNorm, RoPE, softmax, activations, f16 rounding and dots, and attention against plain
//! references.

#[path = "kernels_util.rs"]
mod util;

use engine::kernels::attention::{attention_with, ggml_n_kv, AttnShape, AttnTrace};
use engine::kernels::softmax::{silu_row, soft_max_ext_row_with, v_expf};
use engine::kernels::{act, norm, rope, Simd};
use half::f16;
use util::{bits, levels, pool, Rng};

#[test]
fn rms_norm_follows_ggml_order() {
    let mut rng = Rng::new(1);
    for &n in &[1usize, 5, 2560] {
        let x = rng.vec(n, 3.0);
        let g = rng.vec(n, 1.5);
        let eps = 1e-5f32;
        let mut sum = 0f64;
        for &v in &x {
            sum += (v * v) as f64;
        }
        let scale = 1.0f32 / ((sum / n as f64) as f32 + eps).sqrt();
        let want: Vec<f32> = x.iter().zip(&g).map(|(&v, &gg)| (v * scale) * gg).collect();
        let mut out = vec![0f32; n];
        norm::rms_norm(&x, &g, eps, &mut out);
        assert_eq!(bits(&out), bits(&want));
        // No mean subtraction: a constant row normalizes to ±1 (times gamma).
        let mut o = vec![0f32; 4];
        norm::rms_norm_raw(&[2.0; 4], 0.0, &mut o);
        assert_eq!(o, [1.0; 4]);
    }
}

#[test]
fn rope_neox_rotates_halves() {
    let head_dim = 8;
    let mut rng = Rng::new(2);
    let x = rng.vec(2 * head_dim, 1.0);
    // Position 0 is the identity.
    let mut y = x.clone();
    rope::rope_neox(&mut y, head_dim, 0, head_dim, 10000.0);
    assert_eq!(y, x);
    // Position p rotates pair (i, i + 4) by p·base^(−2i/8); compare with f64 math.
    let (p, base) = (7, 10000.0f32);
    let mut y = x.clone();
    rope::rope_neox(&mut y, head_dim, p, head_dim, base);
    for h in 0..2 {
        for i in 0..4 {
            let th = p as f64 * (base as f64).powf(-2.0 * i as f64 / 8.0);
            let (x0, x1) = (x[h * 8 + i] as f64, x[h * 8 + i + 4] as f64);
            let (a, b) = (x0 * th.cos() - x1 * th.sin(), x0 * th.sin() + x1 * th.cos());
            assert!((y[h * 8 + i] as f64 - a).abs() < 1e-5, "h={h} i={i}");
            assert!((y[h * 8 + i + 4] as f64 - b).abs() < 1e-5, "h={h} i={i}");
        }
    }
    // Exactly ggml's f32 steps: theta *= theta_scale, fused update.
    let ts = base.powf(-2.0f32 / 8.0);
    let mut theta = p as f32;
    for i in 0..4 {
        let (c, s) = (theta.cos(), theta.sin());
        let (x0, x1) = (x[i], x[i + 4]);
        assert_eq!(y[i].to_bits(), x0.mul_add(c, -(x1 * s)).to_bits());
        assert_eq!(y[i + 4].to_bits(), x0.mul_add(s, x1 * c).to_bits());
        theta *= ts;
    }
    // Partial rotation leaves the tail alone.
    let mut z = x.clone();
    rope::rope_neox(&mut z, head_dim, 3, 4, base);
    assert_eq!(&z[4..8], &x[4..8]);
    assert_ne!(&z[..4], &x[..4]);
}

#[test]
fn v_expf_is_close_and_handles_limits() {
    let mut rng = Rng::new(3);
    for _ in 0..100_000 {
        let x = rng.f32() * 87.0;
        let e = v_expf(x) as f64;
        let r = (x as f64).exp();
        assert!(((e - r) / r).abs() < 3e-7, "x={x}: {e} vs {r}");
    }
    assert_eq!(v_expf(0.0), 1.0);
    assert_eq!(v_expf(f32::NEG_INFINITY), 0.0);
    assert_eq!(v_expf(-200.0), 0.0);
    assert_eq!(v_expf(f32::INFINITY), f32::INFINITY);
    assert_eq!(v_expf(100.0), f32::INFINITY);
    assert!(
        v_expf(-100.0) > 0.0 && v_expf(-100.0) < 1e-38,
        "subnormal range"
    );
}

#[test]
fn softmax_levels_agree_and_normalize() {
    let mut rng = Rng::new(4);
    for &(n, nc) in &[
        (1usize, 32usize),
        (17, 32),
        (40, 64),
        (64, 64),
        (100, 100),
        (5, 5),
    ] {
        let x = rng.vec(n, 8.0);
        let mut want = x.clone();
        soft_max_ext_row_with(Simd::Scalar, &mut want, None, 0.125, nc);
        let s: f64 = want.iter().map(|&v| v as f64).sum();
        assert!((s - 1.0).abs() < 1e-5, "n={n}");
        let m = x.iter().cloned().fold(f32::MIN, f32::max);
        let z: f64 = x.iter().map(|&v| ((v - m) as f64 * 0.125).exp()).sum();
        for (i, &p) in want.iter().enumerate() {
            assert!((p as f64 - ((x[i] - m) as f64 * 0.125).exp() / z).abs() < 1e-6);
        }
        for s in levels() {
            let mut got = x.clone();
            soft_max_ext_row_with(s, &mut got, None, 0.125, nc);
            assert_eq!(bits(&got), bits(&want), "{s:?} n={n}");
        }
    }
    // Rows spread over thousands, whose small entries underflow (|n| > 192 in `v_expf`) or
    // land in subnormals: the levels still agree bit for bit.
    for amp in [100.0f32, 400.0, 3000.0] {
        let x = rng.vec(96, amp);
        let mut want = x.clone();
        soft_max_ext_row_with(Simd::Scalar, &mut want, None, 1.0, 96);
        for s in levels() {
            let mut got = x.clone();
            soft_max_ext_row_with(s, &mut got, None, 1.0, 96);
            assert_eq!(bits(&got), bits(&want), "{s:?} amp={amp}");
        }
    }
    // A −inf mask entry gives exactly 0.
    let mut r = vec![1.0f32, 2.0, 3.0];
    soft_max_ext_row_with(
        Simd::current(),
        &mut r,
        Some(&[0.0, f32::NEG_INFINITY, 0.0]),
        1.0,
        32,
    );
    assert_eq!(r[1], 0.0);
}

#[test]
fn activations() {
    let x = [-2.0f32, -0.0, 0.5, 3.0];
    let mut o = [0f32; 4];
    act::relu_sqr(&x, &mut o);
    assert_eq!(o, [0.0, 0.0, 0.25, 9.0]);
    let mut rng = Rng::new(5);
    let x = rng.vec(37, 6.0);
    let mut a = vec![0f32; 37];
    let mut b = vec![0f32; 37];
    silu_row(&x, &mut a);
    act::silu(&x, &mut b);
    assert_eq!(bits(&a), bits(&b));
    for (i, &v) in x.iter().enumerate() {
        let r = v as f64 / (1.0 + (-v as f64).exp());
        assert!((a[i] as f64 - r).abs() < 1e-5, "silu({v})");
    }
}

/// The AVX-512 SiLU (`ggml_v_silu` in sixteen lanes) against the lane-by-lane mirror, bit
/// for bit, over every scale the activations reach and past them: exp's overflow and
/// underflow branches (|n| > 192), subnormal results of `scalef`, ±0 and the scalar tail.
#[test]
fn silu_sixteen_lanes_equal_the_lane_by_lane_mirror() {
    let mut rng = Rng::new(6);
    let mut x: Vec<f32> = [
        1e-3f32, 0.1, 1.0, 6.0, 20.0, 90.0, 104.0, 140.0, 300.0, 1e30,
    ]
    .iter()
    .flat_map(|&amp| rng.vec(4000, amp))
    .collect();
    x.extend([
        0.0,
        -0.0,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        1e-40,
        -1e-40,
    ]);
    x.extend((-1500..=1500).map(|i| i as f32 * 0.1));
    // A length that leaves a scalar tail.
    x.push(-3.25);
    let mut want = vec![0f32; x.len()];
    silu_row(&x, &mut want);
    let mut got = vec![0f32; x.len()];
    act::silu(&x, &mut got);
    assert_eq!(
        bits(&got),
        bits(&want),
        "act::silu at {:?}",
        Simd::current()
    );
    #[cfg(target_arch = "x86_64")]
    {
        if Simd::Avx512.is_supported() {
            let mut got = vec![0f32; x.len()];
            // SAFETY: AVX-512 F is present (checked above; the level includes FMA).
            unsafe { engine::kernels::softmax::x86::silu_row_avx512(&x, &mut got) };
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "silu({}) = {g} against {w}", x[i]);
            }
        } else {
            eprintln!(
                "ignored part: this CPU has no AVX-512, only act::silu at {:?} was compared",
                Simd::current()
            );
        }
    }
}

/// Rounding to f16 in place (F16C where the CPU has it) equals `half`'s rounding for every
/// exponent: a stride through all non-NaN f32 bit patterns, ties included (the low 13 bits
/// of the patterns walk through 0x1000), lengths with and without a tail of eight.
#[test]
fn round_to_f16_equals_half_over_the_whole_range() {
    use engine::kernels::dot;
    let mut x: Vec<f32> = (0..=u32::MAX / 4093)
        .map(|i| f32::from_bits(i.wrapping_mul(4093)))
        .filter(|v| !v.is_nan())
        .collect();
    x.extend([
        0.5 + 2f32.powi(-12),
        65504.0,
        65520.0,
        65519.0,
        2f32.powi(-25),
        2f32.powi(-24),
    ]);
    x.push(-1.0 / 3.0);
    let want: Vec<f32> = x.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
    let mut got = x.clone();
    dot::round_to_f16_in_place(&mut got);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{:e} ({:#x})",
            x[i],
            x[i].to_bits()
        );
    }
}

/// Four f16 dots in one call (attention's scores) equal four single dots bit for bit, at
/// every level, over lengths with and without a scalar tail.
#[test]
fn f16_dots_four_at_once_equal_one_at_a_time() {
    use engine::kernels::dot;
    let mut rng = Rng::new(8);
    for n in [1usize, 16, 63, 64, 65, 128, 130, 200] {
        let rows: Vec<Vec<u8>> = (0..4)
            .map(|_| {
                rng.vec(n, 3.0)
                    .iter()
                    .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                    .collect()
            })
            .collect();
        let mut x = rng.vec(n, 2.0);
        dot::round_to_f16(&x.clone(), &mut x);
        let want: Vec<f32> = rows
            .iter()
            .map(|r| dot::vec_dot_f16_with(Simd::Scalar, r, &x))
            .collect();
        for simd in levels() {
            let got = dot::vec_dot_f16_x4_with(simd, std::array::from_fn(|r| &rows[r][..]), &x);
            assert_eq!(bits(&got), bits(&want), "n {n} at {simd:?}");
        }
    }
}

/// Rotations at a sequence of positions, bases and widths (with repeats, as a decode step
/// rotates q and k of every layer at one position) equal rotations with a fresh cache.
#[test]
fn rope_reuses_the_last_position_exactly() {
    let head_dim = 16;
    let mut rng = Rng::new(7);
    let x = rng.vec(3 * head_dim, 2.0);
    let keys = [
        (5, 16, 10000.0f32),
        (5, 16, 10000.0),
        (6, 16, 10000.0),
        (6, 8, 10000.0),
        (6, 16, 500000.0),
        (6, 16, 500000.0),
        (5, 16, 10000.0),
        (0, 16, 10000.0),
        (1000, 16, 10000.0),
    ];
    for (pos, n_rot, base) in keys {
        let mut got = x.clone();
        rope::rope_neox(&mut got, head_dim, pos, n_rot, base);
        let mut cache = vec![(0f32, 0f32); n_rot / 2];
        rope::rope_cache(pos, n_rot, base, &mut cache);
        let mut want = x.clone();
        for head in want.chunks_exact_mut(head_dim) {
            let half = n_rot / 2;
            for (i, &(c, s)) in cache.iter().enumerate() {
                let (x0, x1) = (head[i], head[i + half]);
                head[i] = x0.mul_add(c, -(x1 * s));
                head[i + half] = x0.mul_add(s, x1 * c);
            }
        }
        assert_eq!(
            bits(&got),
            bits(&want),
            "pos {pos}, n_rot {n_rot}, base {base}"
        );
    }
}

/// Plain f64 attention on the same f16 data, for closeness.
fn naive_attention(q: &[f32], k: &[f16], v: &[f16], n_past: usize, sh: AttnShape) -> Vec<f32> {
    let AttnShape {
        n_head,
        n_head_kv,
        head_dim: hd,
    } = sh;
    let nt = q.len() / (n_head * hd);
    let kvrow = n_head_kv * hd;
    let mut out = vec![0f32; q.len()];
    for t in 0..nt {
        for h in 0..n_head {
            let kvh = h / (n_head / n_head_kv);
            let qv = &q[(t * n_head + h) * hd..(t * n_head + h + 1) * hd];
            let vis = n_past + t + 1;
            let s: Vec<f64> = (0..vis)
                .map(|j| {
                    (0..hd)
                        .map(|d| qv[d] as f64 * k[j * kvrow + kvh * hd + d].to_f64())
                        .sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            for d in 0..hd {
                out[(t * n_head + h) * hd + d] = (0..vis)
                    .map(|j| (s[j] - m).exp() / z * v[j * kvrow + kvh * hd + d].to_f64())
                    .sum::<f64>() as f32;
            }
        }
    }
    out
}

fn attn_case(
    rng: &mut Rng,
    sh: AttnShape,
    n_past: usize,
    nt: usize,
) -> (Vec<f32>, Vec<f16>, Vec<f16>) {
    let kvrow = sh.n_head_kv * sh.head_dim;
    let n = n_past + nt;
    let q = rng.vec(nt * sh.n_head * sh.head_dim, 2.0);
    let k: Vec<f16> = rng
        .vec(n * kvrow, 1.0)
        .into_iter()
        .map(f16::from_f32)
        .collect();
    let v: Vec<f16> = rng
        .vec(n * kvrow, 1.0)
        .into_iter()
        .map(f16::from_f32)
        .collect();
    (q, k, v)
}

#[test]
fn attention_matches_naive_and_levels_agree() {
    let mut rng = Rng::new(6);
    let sh = AttnShape {
        n_head: 4,
        n_head_kv: 2,
        head_dim: 16,
    };
    for &(n_past, nt) in &[
        (0usize, 1usize),
        (0, 5),
        (10, 1),
        (60, 7),
        (130, 2),
        (70, 1),
        (100, 1),
        (300, 1),
    ] {
        let (q, k, v) = attn_case(&mut rng, sh, n_past, nt);
        let n_kv = ggml_n_kv(n_past + nt, 4096);
        let naive = naive_attention(&q, &k, &v, n_past, sh);
        let mut want = vec![0f32; q.len()];
        attention_with(Simd::Scalar, &q, &k, &v, n_past, sh, n_kv, &mut want, None).unwrap();
        for (a, b) in want.iter().zip(&naive) {
            assert!((a - b).abs() < 2e-3, "n_past={n_past} nt={nt}: {a} vs {b}");
        }
        for s in levels() {
            let mut got = vec![0f32; q.len()];
            attention_with(s, &q, &k, &v, n_past, sh, n_kv, &mut got, None).unwrap();
            assert_eq!(bits(&got), bits(&want), "{s:?} n_past={n_past} nt={nt}");
        }
        let one = pool(1).install(|| {
            let mut o = vec![0f32; q.len()];
            attention_with(Simd::current(), &q, &k, &v, n_past, sh, n_kv, &mut o, None).unwrap();
            o
        });
        let two = pool(2).install(|| {
            let mut o = vec![0f32; q.len()];
            attention_with(Simd::current(), &q, &k, &v, n_past, sh, n_kv, &mut o, None).unwrap();
            o
        });
        assert_eq!(bits(&one), bits(&two));
    }
}

/// With 4 query heads and 2 KV heads, heads 0,1 read KV head 0 and heads 2,3 read KV
/// head 1 (grouped, `h / 2`), not `h % 2`.
#[test]
fn attention_gqa_is_grouped() {
    let sh = AttnShape {
        n_head: 4,
        n_head_kv: 2,
        head_dim: 8,
    };
    let kvrow = 16;
    let n = 3;
    let k = vec![f16::from_f32(0.0); n * kvrow];
    let mut v = vec![f16::from_f32(0.0); n * kvrow];
    for j in 0..n {
        for d in 0..8 {
            v[j * kvrow + d] = f16::from_f32(1.0);
            v[j * kvrow + 8 + d] = f16::from_f32(-1.0);
        }
    }
    let q = vec![0.5f32; 4 * 8];
    let mut out = vec![0f32; 32];
    attention_with(Simd::current(), &q, &k, &v, n - 1, sh, 32, &mut out, None).unwrap();
    for h in 0..4 {
        // Probabilities 1/3 are rounded to f16 before the V product, as in ggml.
        let want = if h < 2 { 1.0 } else { -1.0 };
        assert!(
            out[h * 8..(h + 1) * 8]
                .iter()
                .all(|&o| (o - want).abs() < 1e-3),
            "head {h}: {:?}",
            &out[h * 8..h * 8 + 8]
        );
    }
}

#[test]
fn attention_trace_layout_and_causality() {
    let mut rng = Rng::new(8);
    let sh = AttnShape {
        n_head: 2,
        n_head_kv: 1,
        head_dim: 64,
    };
    let (n_past, nt) = (3, 4);
    let (q, k, v) = attn_case(&mut rng, sh, n_past, nt);
    let n_kv = ggml_n_kv(n_past + nt, 4096);
    assert_eq!(n_kv, 32);
    let mut tr = AttnTrace::default();
    let mut out = vec![0f32; q.len()];
    attention_with(
        Simd::current(),
        &q,
        &k,
        &v,
        n_past,
        sh,
        n_kv,
        &mut out,
        Some(&mut tr),
    )
    .unwrap();
    assert_eq!(tr.kq.len(), 2 * nt * n_kv);
    for h in 0..2 {
        for t in 0..nt {
            let row = &tr.probs[(h * nt + t) * n_kv..(h * nt + t + 1) * n_kv];
            let vis = n_past + t + 1;
            assert!(
                row[vis..].iter().all(|&p| p == 0.0),
                "causal mask h={h} t={t}"
            );
            assert!(row[..vis].iter().all(|&p| p > 0.0));
            let kq = &tr.kq[(h * nt + t) * n_kv..(h * nt + t + 1) * n_kv];
            assert!(
                kq[..n_past + nt].iter().all(|&s| s != 0.0),
                "scores exist for every cached position"
            );
            assert!(kq[n_past + nt..].iter().all(|&s| s == 0.0));
        }
    }
    let mut plain = vec![0f32; q.len()];
    attention_with(
        Simd::current(),
        &q,
        &k,
        &v,
        n_past,
        sh,
        n_kv,
        &mut plain,
        None,
    )
    .unwrap();
    assert_eq!(
        bits(&plain),
        bits(&out),
        "tracing does not change the result"
    );
}

#[test]
fn ggml_n_kv_pads_to_32() {
    assert_eq!(ggml_n_kv(1, 4096), 32);
    assert_eq!(ggml_n_kv(32, 4096), 32);
    assert_eq!(ggml_n_kv(33, 4096), 64);
    assert_eq!(ggml_n_kv(4000, 4096), 4000);
    assert_eq!(ggml_n_kv(4001, 4010), 4010);
}
