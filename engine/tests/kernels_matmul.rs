//! Matmul drivers: each format against a per-element reference, every SIMD level
//! bit-identical, results independent of the thread count, odd shapes.

#[path = "kernels_util.rs"]
mod util;

use engine::gguf::GgmlType;
use engine::kernels::matmul::{matmul_with, Scratch, WeightView};
use engine::kernels::{dot, sgemm};
use engine::kernels::{KernelError, Simd};
use engine::model::weight_view;
use engine::quant::q8k::{quantize_row_q8_k, BlockQ8K, QK_K};
use engine::quant::{i2s, tq1, tq2};
use half::f16;
use util::{bits, levels, pool, Rng};

#[derive(Clone, Copy, Debug)]
enum Fmt {
    F32,
    F16,
    I2S,
    TQ1,
    TQ2,
}

struct Mat {
    fmt: Fmt,
    data: Vec<u8>,
    rows: usize,
    cols: usize,
}

impl Mat {
    fn new(fmt: Fmt, rng: &mut Rng, rows: usize, cols: usize) -> Mat {
        let data = match fmt {
            Fmt::F32 => rng
                .vec(rows * cols, 1.0)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            Fmt::F16 => rng
                .vec(rows * cols, 1.0)
                .iter()
                .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                .collect(),
            Fmt::I2S => i2s::quantize(&rng.ternary(rows * cols, 0.37)),
            Fmt::TQ1 => tq1::quantize_row(&rng.ternary(rows * cols, 0.37)),
            Fmt::TQ2 => tq2::quantize_row(&rng.ternary(rows * cols, 0.37)),
        };
        Mat {
            fmt,
            data,
            rows,
            cols,
        }
    }
    fn view(&self) -> WeightView<'_> {
        let ty = match self.fmt {
            Fmt::F32 => GgmlType::F32,
            Fmt::F16 => GgmlType::F16,
            Fmt::I2S => GgmlType::I2_S,
            Fmt::TQ1 => GgmlType::TQ1_0,
            Fmt::TQ2 => GgmlType::TQ2_0,
        };
        weight_view(ty, &self.data, self.rows, self.cols)
    }
    /// One element through the portable per-row primitives. F16/F32 with two or more
    /// tokens (`x` holds them all) go through tinyBLAS, as ggml's `llamafile_sgemm` does.
    fn reference(&self, x: &[f32], t: usize, r: usize) -> f32 {
        let c = self.cols;
        let xt = &x[t * c..(t + 1) * c];
        let tiny_blas = sgemm::accepts(x.len() / c, c);
        match self.fmt {
            Fmt::F32 if tiny_blas => sgemm::dot_f32_scalar(&self.data[r * c * 4..], xt),
            Fmt::F16 if tiny_blas => sgemm::dot_f16_scalar(&self.data[r * c * 2..], xt),
            Fmt::F32 => dot::dot_f32_scalar(&self.data[r * c * 4..], xt),
            Fmt::F16 => {
                let mut xh = vec![0f32; c];
                dot::round_to_f16(xt, &mut xh);
                dot::dot_f16_scalar(&self.data[r * c * 2..], &xh)
            }
            Fmt::I2S => {
                let mut q = vec![0i8; c];
                let (s, sum) = i2s::quantize_row_i8_s_scalar(xt, &mut q);
                let d = i2s::vec_dot_i2_i8_scalar(&self.data[r * c / 4..], &q);
                i2s::finish(d, sum, s, i2s::scale(&self.data, self.rows * c))
            }
            Fmt::TQ1 | Fmt::TQ2 => {
                let mut y = vec![BlockQ8K::default(); c / QK_K];
                quantize_row_q8_k(xt, &mut y);
                if let Fmt::TQ1 = self.fmt {
                    tq1::vec_dot_q8k_scalar(&self.data[r * tq1::row_bytes(c)..], &y)
                } else {
                    tq2::vec_dot_q8k_scalar(&self.data[r * tq2::row_bytes(c)..], &y)
                }
            }
        }
    }
}

fn run(simd: Simd, m: &Mat, x: &[f32]) -> Vec<f32> {
    let nt = x.len() / m.cols;
    let mut out = vec![f32::NAN; nt * m.rows];
    matmul_with(simd, &m.view(), x, &mut out, &mut Scratch::default()).unwrap();
    out
}

const SHAPES: &[(usize, usize, usize)] = &[
    // (rows, cols, tokens)
    (1, 256, 1),
    (33, 256, 3),
    (70, 512, 1),
    (5, 768, 67),
    (64, 1280, 4),
];

#[test]
fn every_format_matches_reference_at_every_level() {
    let mut rng = Rng::new(21);
    for fmt in [Fmt::F32, Fmt::F16, Fmt::I2S, Fmt::TQ1, Fmt::TQ2] {
        for &(rows, cols, nt) in SHAPES {
            let m = Mat::new(fmt, &mut rng, rows, cols);
            let x = rng.vec(nt * cols, 2.0);
            let want: Vec<f32> = (0..nt)
                .flat_map(|t| (0..rows).map(move |r| (t, r)))
                .map(|(t, r)| m.reference(&x, t, r))
                .collect();
            for s in levels() {
                let got = run(s, &m, &x);
                assert_eq!(
                    bits(&got),
                    bits(&want),
                    "{fmt:?} {rows}x{cols} nt={nt} {s:?}"
                );
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let mut rng = Rng::new(22);
    for fmt in [Fmt::F16, Fmt::I2S, Fmt::TQ2] {
        let m = Mat::new(fmt, &mut rng, 257, 512);
        let x = rng.vec(9 * 512, 1.0);
        let one = pool(1).install(|| run(Simd::current(), &m, &x));
        let two = pool(2).install(|| run(Simd::current(), &m, &x));
        let three = pool(3).install(|| run(Simd::current(), &m, &x));
        assert_eq!(bits(&one), bits(&two), "{fmt:?}");
        assert_eq!(bits(&one), bits(&three), "{fmt:?}");
    }
}

#[test]
fn values_are_close_to_float_math() {
    let mut rng = Rng::new(23);
    let (rows, cols) = (16, 1024);
    let w = rng.ternary(rows * cols, 0.5);
    let x = rng.vec(2 * cols, 1.0);
    let m = Mat {
        fmt: Fmt::I2S,
        data: i2s::quantize(&w),
        rows,
        cols,
    };
    let got = run(Simd::current(), &m, &x);
    for t in 0..2 {
        let amax = x[t * cols..(t + 1) * cols]
            .iter()
            .fold(0f32, |a, v| a.max(v.abs()));
        for r in 0..rows {
            let exact: f64 = (0..cols)
                .map(|c| w[r * cols + c] as f64 * x[t * cols + c] as f64)
                .sum();
            // int8 activations: error ≲ 0.5/s per term, s = 127/amax, random-walk over cols.
            let tol = 0.5 * (amax as f64 / 127.0) * 0.5 * (cols as f64).sqrt() * 4.0;
            assert!(
                (got[t * rows + r] as f64 - exact).abs() < tol,
                "t={t} r={r}: {} vs {exact}",
                got[t * rows + r]
            );
        }
    }
}

#[test]
fn scratch_is_reused_and_sizes_checked() {
    let mut rng = Rng::new(24);
    let m = Mat::new(Fmt::I2S, &mut rng, 8, 256);
    let mut s = Scratch::default();
    let x = rng.vec(2 * 256, 1.0);
    let mut out = vec![0f32; 16];
    matmul_with(Simd::current(), &m.view(), &x, &mut out, &mut s).unwrap();
    let again = out.clone();
    matmul_with(Simd::current(), &m.view(), &x, &mut out, &mut s).unwrap();
    assert_eq!(bits(&out), bits(&again));
    let mut short = vec![0f32; 15];
    assert!(matches!(
        matmul_with(Simd::current(), &m.view(), &x, &mut short, &mut s),
        Err(KernelError::Size { .. })
    ));
    let bad = WeightView::I2S {
        data: &m.data[..100],
        rows: 8,
        cols: 256,
        by4: None,
    };
    assert!(matches!(
        matmul_with(Simd::current(), &bad, &x, &mut out, &mut s),
        Err(KernelError::Size { .. })
    ));
    let odd = WeightView::TQ2 {
        data: &m.data,
        rows: 1,
        cols: 128,
        by4: None,
    };
    assert!(matches!(
        matmul_with(Simd::current(), &odd, &x[..128], &mut out[..1], &mut s),
        Err(KernelError::NotMultiple { .. })
    ));
}

#[test]
fn f16_dot_fixed_order_levels_agree() {
    let mut rng = Rng::new(25);
    for &n in &[1usize, 63, 64, 65, 128, 200, 2560] {
        let w: Vec<u8> = rng
            .vec(n, 1.0)
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect();
        let mut x = rng.vec(n, 1.0);
        let xc = x.clone();
        dot::round_to_f16(&xc, &mut x);
        let d0 = dot::dot_f16_scalar(&w, &x);
        let exact: f64 = (0..n)
            .map(|i| f16::from_le_bytes([w[2 * i], w[2 * i + 1]]).to_f64() * x[i] as f64)
            .sum();
        assert!((d0 as f64 - exact).abs() < 1e-5 * n as f64, "n={n}");
        for s in levels() {
            assert_eq!(
                dot::vec_dot_f16_with(s, &w, &x).to_bits(),
                d0.to_bits(),
                "{s:?} n={n}"
            );
            // The stream form (the F16 head's; 256-bit halves at Avx512 on a Zen 4).
            assert_eq!(
                dot::vec_dot_f16_stream_with(s, &w, &x).to_bits(),
                d0.to_bits(),
                "stream {s:?} n={n}"
            );
            // With the activations as f16 bits too (the F16 stream's form on a Zen 4).
            let mut x16 = vec![0u16; n];
            dot::f16_bits(&x, &mut x16);
            assert_eq!(
                dot::vec_dot_f16_halves_stream_with(s, &w, &x, &x16).to_bits(),
                d0.to_bits(),
                "halves {s:?} n={n}"
            );
        }
        let wf: Vec<u8> = rng
            .vec(n, 1.0)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let e0 = dot::dot_f32_scalar(&wf, &x);
        for s in levels() {
            assert_eq!(
                dot::vec_dot_f32_with(s, &wf, &x).to_bits(),
                e0.to_bits(),
                "f32 {s:?} n={n}"
            );
        }
    }
}

/// `Simd::zen4` (CPUID) against what Linux reads off the same CPU: vendor AuthenticAMD,
/// family 25 (19h), and the avx512f/bw/vl flags.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[test]
fn zen4_detection_agrees_with_proc_cpuinfo() {
    let info = std::fs::read_to_string("/proc/cpuinfo").expect("read /proc/cpuinfo");
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| panic!("/proc/cpuinfo has no {name:?} line"))
    };
    let flags = field("flags");
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let expected = field("vendor_id") == "AuthenticAMD"
        && field("cpu family") == "25"
        && ["avx512f", "avx512bw", "avx512vl", "avx2", "fma", "f16c"]
            .iter()
            .all(|f| has(f));
    assert_eq!(
        Simd::zen4(),
        expected,
        "vendor {:?}, family {:?}",
        field("vendor_id"),
        field("cpu family")
    );
}
