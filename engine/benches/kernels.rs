//! The engine's kernels alone, at the BitNet b1.58 2B-4T sizes (hidden 2560, FFN 6912,
//! 20 heads × 128, 5 KV heads, vocab 128256): ternary matmuls per weight type, F16/F32
//! prefill matmuls (tinyBLAS's order), the F16 tied head, one decode step of attention,
//! RMSNorm and the int8 activation quantizer.
//!
//! `cargo bench -p engine --bench kernels` (about two minutes); `-- --quick` for a faster
//! pass, a filter such as `-- i2s/ffn_up` for one kernel. Decode matmuls report GB/s of
//! weight bytes read, prefill matmuls tokens/s (elem/s), attention GB/s of KV cache read. `BITPROBE_SIMD=avx2|scalar` benchmarks
//! another SIMD level; thread counts are part of each benchmark's name.
//!
//! Weights are random but shaped like the real ones: ternary values packed by the forge's
//! own packers (the bytes bitnet.cpp's quantizers would write), normal activations.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine::forge::pack;
use engine::forge::rng::Stream;
use engine::gguf::GgmlType;
use engine::kernels::attention::{attention_with, ggml_n_kv, AttnShape};
use engine::kernels::matmul::{matmul_with, Scratch, WeightView};
use engine::kernels::{dot, norm, Simd};
use engine::model::weight_view;
use engine::quant::{i2s, i2s_vnni, tq_vnni};
use half::f16;
use std::hint::black_box;
use std::time::Duration;

const N_EMBD: usize = 2560;
const N_FF: usize = 6912;
const N_HEAD: usize = 20;
const N_HEAD_KV: usize = 5;
const HEAD_DIM: usize = 128;
const N_VOCAB: usize = 128256;
const N_CTX: usize = 4096;
/// Tokens of the prefill benchmarks.
const PREFILL: usize = 128;
const THREADS: [usize; 2] = [1, 2];

#[derive(Clone, Copy)]
enum Fmt {
    I2S,
    TQ1,
    TQ2,
    F16,
    F32,
}

impl Fmt {
    fn ty(self) -> GgmlType {
        match self {
            Fmt::I2S => GgmlType::I2_S,
            Fmt::TQ1 => GgmlType::TQ1_0,
            Fmt::TQ2 => GgmlType::TQ2_0,
            Fmt::F16 => GgmlType::F16,
            Fmt::F32 => GgmlType::F32,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Fmt::I2S => "i2s",
            Fmt::TQ1 => "tq1_0",
            Fmt::TQ2 => "tq2_0",
            Fmt::F16 => "f16",
            Fmt::F32 => "f32",
        }
    }
}

/// A weight matrix as the GGUF file would hold it.
struct Mat {
    fmt: Fmt,
    data: Vec<u8>,
    /// The ternary types: the rows interleaved as a model holds them for the VNNI decode
    /// kernels (`i2s_vnni::interleave4`, `tq_vnni::interleave4`), when this CPU runs them;
    /// else empty.
    by4: Vec<u8>,
    rows: usize,
    cols: usize,
}

impl Mat {
    fn new(fmt: Fmt, name: &str, rows: usize, cols: usize) -> Mat {
        let s = Stream::new(7, name);
        let n = rows * cols;
        let ternary = || -> Vec<f32> { s.ternary(n).iter().map(|&t| t as f32 * 0.37).collect() };
        let data = match fmt {
            Fmt::I2S => pack::pack_i2s(&ternary()),
            Fmt::TQ1 => pack::pack_tq1_0(&ternary()),
            Fmt::TQ2 => pack::pack_tq2_0(&ternary()),
            Fmt::F16 => pack::pack_f16(&s.normal(n).iter().map(|v| v * 0.02).collect::<Vec<_>>()),
            Fmt::F32 => pack::pack_f32(&s.normal(n).iter().map(|v| v * 0.02).collect::<Vec<_>>()),
        };
        // As `Model::load` copies them where the VNNI decode kernels run.
        let mut by4 = Vec::new();
        if matches!(fmt, Fmt::I2S) && i2s_vnni::has_vnni() {
            by4 = vec![0; rows * cols / 4];
            i2s_vnni::interleave4(&data, rows, cols, &mut by4);
        } else if tq_vnni::available() {
            let tq = match fmt {
                Fmt::TQ1 => Some(tq_vnni::Format::Tq1),
                Fmt::TQ2 => Some(tq_vnni::Format::Tq2),
                _ => None,
            };
            if let Some(tq) = tq {
                by4 = vec![0; tq_vnni::copy_len(tq, rows, cols)];
                tq_vnni::interleave4(tq, &data, rows, cols, &mut by4);
            }
        }
        Mat {
            fmt,
            data,
            by4,
            rows,
            cols,
        }
    }

    fn view(&self) -> WeightView<'_> {
        weight_view(self.fmt.ty(), &self.data, self.rows, self.cols)
            .with_by4((!self.by4.is_empty()).then_some(&self.by4[..]))
    }

    /// Weight bytes one pass reads (I2_S: without the trailing scale and padding).
    fn bytes(&self) -> u64 {
        self.view().needed_bytes() as u64
    }
}

fn pool(n: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .expect("rayon pool")
}

fn activations(name: &str, n: usize) -> Vec<f32> {
    Stream::new(11, name).normal(n)
}

/// The ternary matmuls: each weight type at attn_q, ffn_up and ffn_down, decode (1 token)
/// and prefill ([`PREFILL`] tokens), 1 and 2 threads. Every iteration reads the same
/// matrix, so decode figures here are cache-warm (attn_q fits L2); [`decode_stream`] reads
/// from memory as a model does.
fn ternary_matmuls(c: &mut Criterion) {
    let shapes = [
        ("attn_q", N_EMBD, N_EMBD),
        ("ffn_up", N_FF, N_EMBD),
        ("ffn_down", N_EMBD, N_FF),
    ];
    for fmt in [Fmt::I2S, Fmt::TQ1, Fmt::TQ2] {
        let mut g = c.benchmark_group(format!("matmul/{}", fmt.name()));
        for (shape, rows, cols) in shapes {
            let m = Mat::new(fmt, shape, rows, cols);
            for nt in [1, PREFILL] {
                // Decode reads each weight once: GB/s of weights. Prefill re-uses them:
                // tokens per second.
                g.throughput(if nt == 1 {
                    Throughput::Bytes(m.bytes())
                } else {
                    Throughput::Elements(nt as u64)
                });
                matmul_threads(&mut g, &m, shape, nt);
            }
        }
        g.finish();
    }
}

/// `nt` tokens through `m` (activations named after `shape`), once per thread count of
/// [`THREADS`], in group `g` (whose throughput the caller set).
fn matmul_threads(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    m: &Mat,
    shape: &str,
    nt: usize,
) {
    let simd = Simd::current();
    let x = activations(shape, nt * m.cols);
    let mut out = vec![0f32; nt * m.rows];
    let mut s = Scratch::default();
    for threads in THREADS {
        let p = pool(threads);
        let id = BenchmarkId::new(format!("{shape}/{nt}tok"), format!("t{threads}"));
        g.bench_function(id, |b| {
            b.iter(|| {
                p.install(|| matmul_with(simd, &m.view(), black_box(&x), &mut out, &mut s))
                    .unwrap()
            })
        });
    }
}

/// F16 and F32 prefill: tinyBLAS's tiles (`kernels::sgemm`) at ffn_up and ffn_down,
/// [`PREFILL`] tokens, 1 and 2 threads; tokens/s (×2·rows·cols for FLOP/s).
fn tiny_blas(c: &mut Criterion) {
    for fmt in [Fmt::F16, Fmt::F32] {
        let mut g = c.benchmark_group(format!("matmul/{}", fmt.name()));
        for (shape, rows, cols) in [("ffn_up", N_FF, N_EMBD), ("ffn_down", N_EMBD, N_FF)] {
            let m = Mat::new(fmt, shape, rows, cols);
            g.throughput(Throughput::Elements(PREFILL as u64));
            matmul_threads(&mut g, &m, shape, PREFILL);
        }
        g.finish();
    }
}

/// The ternary weights of one decode step as the model streams them from memory: 30 layers
/// of attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down (521 MB for I2_S,
/// more than the caches hold), one token through each matmul in turn.
fn decode_stream(c: &mut Criterion) {
    let simd = Simd::current();
    let kv = N_HEAD_KV * HEAD_DIM;
    let shapes = [
        ("attn_q", N_EMBD, N_EMBD),
        ("attn_k", kv, N_EMBD),
        ("attn_v", kv, N_EMBD),
        ("attn_output", N_EMBD, N_EMBD),
        ("ffn_gate", N_FF, N_EMBD),
        ("ffn_up", N_FF, N_EMBD),
        ("ffn_down", N_EMBD, N_FF),
    ];
    let layer: Vec<Mat> = shapes
        .iter()
        .map(|&(name, r, c)| Mat::new(Fmt::I2S, name, r, c))
        .collect();
    // Copies, not one matrix re-used: each layer's bytes live at their own addresses.
    let layers: Vec<Vec<Mat>> = (0..30)
        .map(|_| {
            layer
                .iter()
                .map(|m| Mat {
                    fmt: m.fmt,
                    data: m.data.clone(),
                    by4: m.by4.clone(),
                    rows: m.rows,
                    cols: m.cols,
                })
                .collect()
        })
        .collect();
    let bytes: u64 = layers.iter().flatten().map(Mat::bytes).sum();
    let x = activations("x", N_FF);
    let mut out = vec![0f32; N_FF];
    let mut s = Scratch::default();
    let mut g = c.benchmark_group("decode_stream");
    g.throughput(Throughput::Bytes(bytes));
    for threads in THREADS {
        let p = pool(threads);
        g.bench_function(
            BenchmarkId::new("i2s_30_layers", format!("t{threads}")),
            |b| {
                b.iter(|| {
                    p.install(|| {
                        for m in layers.iter().flatten() {
                            let (rows, cols) = (m.rows, m.cols);
                            matmul_with(
                                simd,
                                &m.view(),
                                black_box(&x[..cols]),
                                &mut out[..rows],
                                &mut s,
                            )
                            .unwrap();
                        }
                    })
                })
            },
        );
    }
    g.finish();
}

/// The F16 tied head (`token_embd` as output): one token through `ggml_vec_dot_f16`, eight
/// through tinyBLAS, and the bare row loop without the driver (kernel vs driver overhead).
fn f16_head(c: &mut Criterion) {
    let simd = Simd::current();
    let m = Mat::new(Fmt::F16, "token_embd", N_VOCAB, N_EMBD);
    let mut g = c.benchmark_group("head/f16");
    g.throughput(Throughput::Bytes(m.bytes()));
    for nt in [1, 8] {
        let x = activations("result_norm", nt * N_EMBD);
        let mut out = vec![0f32; nt * N_VOCAB];
        let mut s = Scratch::default();
        for threads in THREADS {
            let p = pool(threads);
            let id = BenchmarkId::new(format!("{nt}tok"), format!("t{threads}"));
            g.bench_function(id, |b| {
                b.iter(|| {
                    p.install(|| matmul_with(simd, &m.view(), black_box(&x), &mut out, &mut s))
                        .unwrap()
                })
            });
        }
    }
    let mut xh = vec![0f32; N_EMBD];
    dot::round_to_f16(&activations("result_norm", N_EMBD), &mut xh);
    let rb = N_EMBD * 2;
    g.bench_function("raw_rows/t1", |b| {
        b.iter(|| {
            let mut acc = 0f32;
            for r in 0..N_VOCAB {
                acc += dot::vec_dot_f16_stream_with(
                    simd,
                    &m.data[r * rb..(r + 1) * rb],
                    black_box(&xh),
                );
            }
            acc
        })
    });
    g.finish();
}

/// One decode step of attention (20 query heads over 5 KV heads) at a few context lengths.
fn attention(c: &mut Criterion) {
    let simd = Simd::current();
    let shape = AttnShape {
        n_head: N_HEAD,
        n_head_kv: N_HEAD_KV,
        head_dim: HEAD_DIM,
    };
    let kvrow = N_HEAD_KV * HEAD_DIM;
    let mut g = c.benchmark_group("attention/decode");
    for ctx in [128, 1024] {
        let cache = |name: &str| -> Vec<f16> {
            activations(name, ctx * kvrow)
                .iter()
                .map(|&v| f16::from_f32(v))
                .collect()
        };
        let (kc, vc) = (cache("k_cache"), cache("v_cache"));
        let q = activations("q", N_HEAD * HEAD_DIM);
        let mut out = vec![0f32; q.len()];
        let n_kv = ggml_n_kv(ctx, N_CTX);
        g.throughput(Throughput::Bytes((2 * ctx * kvrow * 2) as u64));
        for threads in THREADS {
            let p = pool(threads);
            g.bench_function(
                BenchmarkId::new(format!("ctx{ctx}"), format!("t{threads}")),
                |b| {
                    b.iter(|| {
                        p.install(|| {
                            attention_with(
                                simd,
                                black_box(&q),
                                &kc,
                                &vc,
                                ctx - 1,
                                shape,
                                n_kv,
                                &mut out,
                                None,
                            )
                        })
                        .unwrap()
                    })
                },
            );
        }
    }
    g.finish();
}

/// RMSNorm and `quantize_row_i8_s` over one hidden row.
fn rows(c: &mut Criterion) {
    let simd = Simd::current();
    let x = activations("x", N_EMBD);
    let gamma = activations("gamma", N_EMBD);
    let mut out = vec![0f32; N_EMBD];
    let mut q = vec![0i8; N_EMBD];
    let mut g = c.benchmark_group("row");
    g.throughput(Throughput::Bytes((N_EMBD * 4) as u64));
    g.bench_function("rms_norm/2560", |b| {
        b.iter(|| norm::rms_norm(black_box(&x), &gamma, 1e-5, &mut out))
    });
    g.bench_function("quantize_row_i8_s/2560", |b| {
        b.iter(|| i2s::quantize_row_i8_s_with(simd, black_box(&x), &mut q))
    });
    g.finish();
}

// Few, short samples: each kernel call is long (up to ~100 ms), and the whole run should
// stay near two minutes. Command-line options (`--quick`, `--sample-size`) still override.
criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = ternary_matmuls, tiny_blas, decode_stream, f16_head, attention, rows
}
criterion_main!(benches);
