//! tinyBLAS (`llamafile_sgemm`) order: hand-computed cases that only its order gives, every
//! SIMD level bit-identical, and the matmul / attention dispatch taking it exactly when
//! ggml does (two or more tokens, `k % 16 == 0`; decode keeps `ggml_vec_dot_f16`).

#[path = "kernels_util.rs"]
mod util;

use engine::kernels::attention::{attention_with, ggml_n_kv, AttnShape, AttnTrace};
use engine::kernels::matmul::{matmul_with, Scratch, WeightView};
use engine::kernels::{dot, sgemm, Simd};
use half::f16;
use util::{bits, levels, pool, Rng};

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| f16::from_f32(*x).to_le_bytes())
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Every level of both dots on one (a, b) pair; asserts they agree and returns the value.
fn dots(a: &[f32], b: &[f32]) -> (f32, f32) {
    let (ah, af) = (f16_bytes(a), f32_bytes(a));
    let h0 = sgemm::dot_f16_scalar(&ah, b);
    let f0 = sgemm::dot_f32_scalar(&af, b);
    for s in levels() {
        assert_eq!(
            sgemm::dot_f16_with(s, &ah, b).to_bits(),
            h0.to_bits(),
            "f16 {s:?}"
        );
        assert_eq!(
            sgemm::dot_f32_with(s, &af, b).to_bits(),
            f0.to_bits(),
            "f32 {s:?}"
        );
    }
    (h0, f0)
}

/// Lane `l % 16`, then the reduce tree: `2²⁴ + 1` rounds back to `2²⁴` inside lane 0, and
/// lane 1's `−2²⁴` cancels it in the tree, so tinyBLAS gives 0. Summing in index order
/// (or `ggml_vec_dot_f16`, whose 64 lanes leave k = 32 wholly to its double tail) gives 1.
#[test]
fn hand_case_lanes_and_tree() {
    let a = vec![1.0f32; 32];
    let mut b = vec![0.0f32; 32];
    b[0] = 16_777_216.0;
    b[1] = -16_777_216.0;
    b[16] = 1.0;
    assert_eq!(dots(&a, &b), (0.0, 0.0));
    assert_eq!(dot::dot_f16_scalar(&f16_bytes(&a), &b), 1.0);
}

/// B is used as f32: `1 + 2⁻¹²` is not an f16, and tinyBLAS keeps it.
#[test]
fn hand_case_b_is_not_rounded_to_f16() {
    let mut a = vec![0.0f32; 16];
    let mut b = vec![0.0f32; 16];
    a[3] = 1.0;
    b[3] = 1.0 + 2f32.powi(-12);
    assert_eq!(dots(&a, &b), (b[3], b[3]));
}

/// Each lane accumulates by FMA: lane 0 holds 2, then adds a·b = 2⁻²³·(1 + 2⁻³⁰) exactly
/// (a = 1 + 2⁻¹⁰ is an f16, b = 2⁻²³·(1 − 2⁻¹⁰ + 2⁻²⁰)). Rounded first, the product would be
/// 2⁻²³, half an ulp of 2, and the add would tie back to 2; fused, it rounds up to 2 + 2⁻²².
#[test]
fn hand_case_fused_multiply_add() {
    let mut a = vec![0.0f32; 32];
    let mut b = vec![0.0f32; 32];
    a[0] = 1.0;
    b[0] = 2.0;
    a[16] = 1.0 + 2f32.powi(-10);
    b[16] = 2f32.powi(-23) * (1.0 - 2f32.powi(-10) + 2f32.powi(-20));
    assert_eq!(a[16] * b[16], 2f32.powi(-23));
    assert_eq!(a[16] * b[16] + 2.0, 2.0);
    let want = 2.0 + 2f32.powi(-22);
    assert_eq!(dots(&a, &b), (want, want));
}

#[test]
fn levels_agree_on_random_rows() {
    let mut rng = Rng::new(31);
    for k in [16, 32, 48, 128, 256, 1280] {
        for _ in 0..20 {
            let a = rng.vec(k, 1.0);
            let b = rng.vec(k, 3.0);
            dots(&a, &b);
        }
    }
}

#[test]
fn accepts_mirrors_llamafile_sgemm() {
    assert!(!sgemm::accepts(1, 256), "n < 2: decode stays on vec_dot");
    assert!(sgemm::accepts(2, 256));
    assert!(sgemm::accepts(7, 32));
    assert!(!sgemm::accepts(7, 40), "k % 16 != 0");
}

fn run(simd: Simd, w: &WeightView, x: &[f32]) -> Vec<f32> {
    let mut out = vec![f32::NAN; x.len() / w.cols() * w.rows()];
    matmul_with(simd, w, x, &mut out, &mut Scratch::default()).unwrap();
    out
}

/// One token: `ggml_vec_dot_f16` on the f16-rounded row. Two tokens: tinyBLAS on the f32
/// rows. cols % 16 != 0: `vec_dot` even for many tokens. Row and token counts around the
/// AVX-512 kernel's 4 × 6 tiles (and 37 rows: three row tasks, 16 + 16 + 5; 784 columns: three
/// chunks of k, 2 × 384 + 16) take the tiles and the one-at-a-time remainders alike.
#[test]
fn matmul_takes_tiny_blas_exactly_when_ggml_does() {
    let mut rng = Rng::new(32);
    for (rows, cols) in [(9usize, 256usize), (5, 40), (37, 64), (4, 16), (13, 784)] {
        let w = rng.vec(rows * cols, 1.0);
        let (wh, wf) = (f16_bytes(&w), f32_bytes(&w));
        for nt in [1usize, 2, 4, 5, 6, 9, 13] {
            let x = rng.vec(nt * cols, 2.0);
            let tiny = nt >= 2 && cols % 16 == 0;
            let want_h: Vec<f32> = (0..nt * rows)
                .map(|i| {
                    let (t, r) = (i / rows, i % rows);
                    let (wr, xt) = (&wh[r * cols * 2..], &x[t * cols..(t + 1) * cols]);
                    if tiny {
                        sgemm::dot_f16_scalar(wr, xt)
                    } else {
                        let mut xh = vec![0f32; cols];
                        dot::round_to_f16(xt, &mut xh);
                        dot::dot_f16_scalar(wr, &xh)
                    }
                })
                .collect();
            let want_f: Vec<f32> = (0..nt * rows)
                .map(|i| {
                    let (t, r) = (i / rows, i % rows);
                    let (wr, xt) = (&wf[r * cols * 4..], &x[t * cols..(t + 1) * cols]);
                    if tiny {
                        sgemm::dot_f32_scalar(wr, xt)
                    } else {
                        dot::dot_f32_scalar(wr, xt)
                    }
                })
                .collect();
            for s in levels() {
                let vh = WeightView::F16 {
                    data: &wh,
                    rows,
                    cols,
                };
                let vf = WeightView::F32 {
                    data: &wf,
                    rows,
                    cols,
                };
                assert_eq!(
                    bits(&run(s, &vh, &x)),
                    bits(&want_h),
                    "F16 {cols} nt={nt} {s:?}"
                );
                assert_eq!(
                    bits(&run(s, &vf, &x)),
                    bits(&want_f),
                    "F32 {cols} nt={nt} {s:?}"
                );
            }
        }
    }
}

/// `kqv`: with two or more tokens each output is tinyBLAS's dot of the transposed V row
/// (n_kv long, zeros past the cache) with the f32 probabilities; with one token it is
/// `ggml_vec_dot_f16` of the f16-rounded probabilities. Checked through the trace's
/// probabilities, at every level and thread count.
#[test]
fn attention_kqv_follows_ggml_path() {
    let mut rng = Rng::new(33);
    for sh in [
        AttnShape {
            n_head: 4,
            n_head_kv: 2,
            head_dim: 16,
        },
        AttnShape {
            n_head: 1,
            n_head_kv: 1,
            head_dim: 32,
        },
    ] {
        for &(n_past, nt) in &[(0usize, 1usize), (0, 6), (40, 1), (57, 9), (120, 3)] {
            let AttnShape {
                n_head,
                n_head_kv,
                head_dim: hd,
            } = sh;
            let kvrow = n_head_kv * hd;
            let n = n_past + nt;
            let q = rng.vec(nt * n_head * hd, 2.0);
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
            let n_kv = ggml_n_kv(n, 4096);
            let mut want_out = vec![0f32; q.len()];
            let mut trace = AttnTrace::default();
            attention_with(
                Simd::Scalar,
                &q,
                &k,
                &v,
                n_past,
                sh,
                n_kv,
                &mut want_out,
                Some(&mut trace),
            )
            .unwrap();
            for t in 0..nt {
                for h in 0..n_head {
                    let kvh = h / (n_head / n_head_kv);
                    let p = &trace.probs[(h * nt + t) * n_kv..(h * nt + t + 1) * n_kv];
                    // kq: one head and ≥ 2 tokens makes q contiguous, so tinyBLAS (f32 q).
                    let qt = &q[(t * n_head + h) * hd..(t * n_head + h + 1) * hd];
                    for j in 0..n_past + t + 1 {
                        let kr = f16_bytes(
                            &k[j * kvrow + kvh * hd..j * kvrow + (kvh + 1) * hd]
                                .iter()
                                .map(|x| x.to_f32())
                                .collect::<Vec<_>>(),
                        );
                        let score = if n_head == 1 && nt >= 2 {
                            sgemm::dot_f16_scalar(&kr, qt)
                        } else {
                            let mut qh = vec![0f32; hd];
                            dot::round_to_f16(qt, &mut qh);
                            dot::dot_f16_scalar(&kr, &qh)
                        };
                        assert_eq!(trace.kq[(h * nt + t) * n_kv + j].to_bits(), score.to_bits());
                    }
                    for d in 0..hd {
                        let vt: Vec<f32> = (0..n_kv)
                            .map(|j| {
                                if j < n {
                                    v[j * kvrow + kvh * hd + d].to_f32()
                                } else {
                                    0.0
                                }
                            })
                            .collect();
                        let want = if nt >= 2 {
                            sgemm::dot_f16_scalar(&f16_bytes(&vt), p)
                        } else {
                            let mut ph = vec![0f32; n_kv];
                            dot::round_to_f16(p, &mut ph);
                            dot::dot_f16_scalar(&f16_bytes(&vt), &ph)
                        };
                        let got = want_out[(t * n_head + h) * hd + d];
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{sh:?} n_past={n_past} nt={nt} t={t} h={h} d={d}"
                        );
                    }
                }
            }
            for s in levels() {
                for threads in [1, 2, 3] {
                    let got = pool(threads).install(|| {
                        let mut o = vec![0f32; q.len()];
                        attention_with(s, &q, &k, &v, n_past, sh, n_kv, &mut o, None).unwrap();
                        o
                    });
                    assert_eq!(bits(&got), bits(&want_out), "{s:?} threads={threads}");
                }
            }
        }
    }
}
