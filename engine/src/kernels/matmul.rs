//! Matmul drivers: `out[t][r] = W[r] · x[t]` for every token `t` and weight row `r`.
//!
//! Mirrors `ggml_compute_forward_mul_mat` (ggml.c). F16 and F32 weights applied to two or
//! more tokens (`cols % 16 == 0`) go to tinyBLAS as `llamafile_sgemm` takes them
//! ([`super::sgemm`]: f32 activations as they are, 16 lanes). Everything else goes
//! through ggml's `vec_dot` loop: each activation row (one token) is converted once to the
//! weight type's `vec_dot_type` — int8 + scale + sum for I2_S (`quantize_row_i8_s`), Q8_K
//! for TQ1_0/TQ2_0, f16 for F16, nothing for F32 — then every output element is one
//! `vec_dot` of a weight row with a converted activation row.
//!
//! The activation rows of a prompt are converted in parallel, one token per task. Work is
//! split over output rows in chunks on rayon; each element is computed by one call
//! whose order depends on nothing but the data, so results do not depend on the thread
//! count or the chunking. Each task walks its weight rows once and applies each row to
//! every token while it is hot in L1 (prefill re-uses the weight traffic). Decode reads
//! each weight byte once and is memory-bandwidth bound: its kernels prefetch
//! [`PREFETCH_BYTES`] ahead of the row stream, which the hardware prefetcher alone does
//! not keep full.
//!
//! I2_S at the AVX-512 level on a CPU with VNNI goes through [`i2s_vnni`]: the same
//! integers as `ggml_vec_dot_i2_i8_s` for every activation row whose i16 lanes provably
//! cannot wrap, with each weight row unpacked once per call instead of once per token
//! (prefill); rows that could wrap take ggml's wrap-exact dot as before.

use super::{check_len, KernelError, SendPtr, Simd, PREFETCH_BYTES};
use super::{dot, sgemm};
use crate::quant::q8k::{self, BlockQ8K, QK_K};
use crate::quant::{i2s, tq1, tq2};
#[cfg(target_arch = "x86_64")]
use crate::quant::{i2s_vnni, tq_vnni};
use rayon::prelude::*;

/// A weight matrix of `rows × cols` as raw bytes straight from the mmap (unaligned, LE).
#[derive(Clone, Copy, Debug)]
pub enum WeightView<'a> {
    /// `rows·cols` f32.
    F32 {
        data: &'a [u8],
        rows: usize,
        cols: usize,
    },
    /// `rows·cols` f16.
    F16 {
        data: &'a [u8],
        rows: usize,
        cols: usize,
    },
    /// The whole I2_S tensor: packed rows, then the f32 scale (`cols % 128 == 0`).
    I2S {
        data: &'a [u8],
        rows: usize,
        cols: usize,
        /// The same rows interleaved four by four ([`i2s_vnni::interleave4`], `rows·cols/4`
        /// bytes), which the VNNI decode kernel streams faster, when the model made a copy
        /// ([`crate::model::Model::load`]); the arithmetic is the same either way, and
        /// every other path reads `data`.
        by4: Option<&'a [u8]>,
    },
    /// TQ1_0 blocks, row after row (`cols % 256 == 0`).
    TQ1 {
        data: &'a [u8],
        rows: usize,
        cols: usize,
        /// The same rows in [`tq_vnni::interleave4`]'s TQ1_0 layout (five blocks' trits to
        /// a byte, [`tq_vnni::copy_len`] bytes), which the VNNI decode kernel reads, when
        /// the model made a copy; the arithmetic is the same either way.
        by4: Option<&'a [u8]>,
    },
    /// TQ2_0 blocks, row after row (`cols % 256 == 0`).
    TQ2 {
        data: &'a [u8],
        rows: usize,
        cols: usize,
        /// The same rows in [`tq_vnni::interleave4`]'s TQ2_0 layout (two rows to a vector,
        /// as long as `data`'s rows), which the VNNI decode kernel reads, when the model
        /// made a copy; the arithmetic is the same either way.
        by4: Option<&'a [u8]>,
    },
}

impl<'a> WeightView<'a> {
    /// Output rows.
    pub fn rows(&self) -> usize {
        match *self {
            WeightView::F32 { rows, .. }
            | WeightView::F16 { rows, .. }
            | WeightView::I2S { rows, .. }
            | WeightView::TQ1 { rows, .. }
            | WeightView::TQ2 { rows, .. } => rows,
        }
    }

    /// Input columns (the dot length).
    pub fn cols(&self) -> usize {
        match *self {
            WeightView::F32 { cols, .. }
            | WeightView::F16 { cols, .. }
            | WeightView::I2S { cols, .. }
            | WeightView::TQ1 { cols, .. }
            | WeightView::TQ2 { cols, .. } => cols,
        }
    }

    /// Bytes the view needs (I2_S: packed data plus the 4-byte scale).
    ///
    /// Panics if that number overflows `usize` (as overflow checks would; [`validate`]
    /// relies on it not wrapping, since the I2_S kernels read the rows through raw pointers).
    ///
    /// [`validate`]: WeightView::validate
    pub fn needed_bytes(&self) -> usize {
        let (rows, cols) = (self.rows(), self.cols());
        let need = match self {
            WeightView::F32 { .. } => rows.checked_mul(cols).and_then(|n| n.checked_mul(4)),
            WeightView::F16 { .. } => rows.checked_mul(cols).and_then(|n| n.checked_mul(2)),
            WeightView::I2S { .. } => rows.checked_mul(cols).map(|n| n / 4 + 4),
            WeightView::TQ1 { .. } => rows.checked_mul(tq1::row_bytes(cols)),
            WeightView::TQ2 { .. } => rows.checked_mul(tq2::row_bytes(cols)),
        };
        need.unwrap_or_else(|| panic!("weight view of {rows} × {cols}: size overflows usize"))
    }

    fn data(&self) -> &'a [u8] {
        match *self {
            WeightView::F32 { data, .. }
            | WeightView::F16 { data, .. }
            | WeightView::I2S { data, .. }
            | WeightView::TQ1 { data, .. }
            | WeightView::TQ2 { data, .. } => data,
        }
    }

    /// The view with `by4` as its interleaved rows (ternary types; F16 and F32 have none
    /// and come back as they are).
    pub fn with_by4(mut self, rows4: Option<&'a [u8]>) -> WeightView<'a> {
        if let WeightView::I2S { by4, .. }
        | WeightView::TQ1 { by4, .. }
        | WeightView::TQ2 { by4, .. } = &mut self
        {
            *by4 = rows4;
        }
        self
    }

    /// The rows interleaved four by four, if the view has them.
    pub fn by4(&self) -> Option<&'a [u8]> {
        match *self {
            WeightView::I2S { by4, .. }
            | WeightView::TQ1 { by4, .. }
            | WeightView::TQ2 { by4, .. } => by4,
            WeightView::F32 { .. } | WeightView::F16 { .. } => None,
        }
    }

    /// Checks block multiples and that the data is long enough.
    pub fn validate(&self) -> Result<(), KernelError> {
        let cols = self.cols();
        let block = match self {
            WeightView::I2S { .. } => i2s::BLOCK,
            WeightView::TQ1 { .. } | WeightView::TQ2 { .. } => QK_K,
            _ => 1,
        };
        if !cols.is_multiple_of(block) {
            return Err(KernelError::NotMultiple {
                what: "weight cols",
                value: cols,
                multiple: block,
            });
        }
        let need = self.needed_bytes();
        let got = self.data().len();
        if got < need {
            return Err(KernelError::Size {
                what: "weight data",
                expected: need,
                got,
                unit: "bytes",
            });
        }
        // The interleaved rows: exactly the rows' bytes, without I2_S's scale
        // (`needed_bytes` did not overflow, so neither does this).
        if let Some(b) = self.by4() {
            let rows_bytes = match *self {
                WeightView::I2S { rows, cols, .. } => rows * cols / 4,
                WeightView::TQ1 { rows, cols, .. } => {
                    crate::quant::tq_vnni::copy_len(crate::quant::tq_vnni::Format::Tq1, rows, cols)
                }
                _ => need,
            };
            check_len("interleaved weight rows", b.len(), rows_bytes, "bytes")?;
        }
        Ok(())
    }
}

/// Buffers re-used across calls: converted activations. Grows to the largest call seen,
/// then allocates nothing.
#[derive(Default, Debug)]
pub struct Scratch {
    q8: Vec<i8>,
    /// Activation rows in pair order ([`i2s_vnni::to_pair_order`]), fast tokens only.
    q8p: Vec<i8>,
    /// Whether each token's I2_S lanes cannot wrap ([`i2s_vnni::cannot_wrap`]); the tokens
    /// for which that holds, and the others.
    wrap_free: Vec<bool>,
    fast: Vec<usize>,
    slow: Vec<usize>,
    act_scales: Vec<f32>,
    act_sums: Vec<i32>,
    xh: Vec<f32>,
    /// `xh` as f16 bits ([`dot::f16_bits`]), for the F16 stream on a Zen 4.
    xh16: Vec<u16>,
    /// Token rows packed for tinyBLAS's tiles ([`sgemm::pack_tokens`]).
    sgemm_tokens: Vec<sgemm::Lane16>,
    q8k: Vec<BlockQ8K>,
    /// TQ1_0/TQ2_0 activations for the VNNI kernels ([`tq_vnni::decode_acts`] for one
    /// token, [`tq_vnni::pair_acts`] for several).
    #[cfg(target_arch = "x86_64")]
    tq_lines: Vec<tq_vnni::Line>,
}

fn grow<T: Clone + Default>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

/// TQ1_0 and TQ2_0 rows per decode kernel call ([`tq_vnni::x86::tq1_dot_rows`],
/// [`tq_vnni::x86::tq2_dot_rows`]). TQ1_0 on the Xeon, alternating runs, one thread 7.9 →
/// 8.1 tok/s, two 16.7–17.0 → 17.6–18.1 (two rows: no change on one thread).
#[cfg(target_arch = "x86_64")]
const TQ_ROWS: usize = 4;
// `tq_vnni::interleave4` groups four rows: the interleaved kernels read one group a call.
#[cfg(target_arch = "x86_64")]
const _: () = assert!(TQ_ROWS == 4);

/// Weight rows per rayon task (at least, for streams: [`stream_rows_per_task`]).
const ROWS_PER_TASK: usize = 32;
/// Weight rows per rayon task of tinyBLAS's tiles ([`sgemm::rows_with`]): every task reads
/// all the packed tokens (`nt·k` floats), from L2 while they fit there and from L3 once they
/// do not, so tasks are short while the tokens take at most 1.5 MiB (of the Xeon's 2 MiB L2)
/// and four times longer past that. Measured with the 2B-4T shapes, one thread, GFLOP/s
/// F16/F32, alternating runs:
///
/// | shape, tokens (packed size) | 16 rows | 32 rows | 64 rows |
/// |---|---|---|---|
/// | ffn_up, 128 (1.3 MB) | 116–121 / 109–113 | 115–116 / 106 | 113–114 / 105–106 |
/// | ffn_up, 192 (2.0 MB) | 108 | | 114 |
/// | ffn_up, 256 (2.6 MB) | 90–104 | | 108–110 |
/// | ffn_down, 128 (3.5 MB) | 97–100 / 93 | 107 | 115–119 / 109–113 |
///
/// (ffn_up, 128 tokens: 8 rows 114/110, 12 rows 119–120/110–114, 24 rows 117/109; ffn_down:
/// 128 rows 115–116/103–105.)
fn sgemm_rows(nt: usize, k: usize) -> usize {
    const TOKENS_IN_L2: usize = 3 << 19;
    if nt * k * 4 <= TOKENS_IN_L2 {
        16
    } else {
        64
    }
}

/// Weight rows per rayon task when I2_S rows are unpacked into a panel (prefill): 32 rows
/// of up to 6912 codes stay in L2 while every token tile passes over them.
#[cfg(target_arch = "x86_64")]
const PANEL_ROWS: usize = 32;

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// Unpacked I2_S codes of one panel ([`i2s_vnni::x86::unpack_panel`]), or TQ1_0/TQ2_0
    /// codes ([`tq_vnni::x86::unpack_panel`]), per thread.
    static PANEL: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The `x.d` of each block of a TQ1_0/TQ2_0 panel, per thread.
    static PANEL_XD: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Rows per task when one token streams through a matrix (decode): about 8 tasks per
/// thread, so that work stealing evens out a thread slowed by something else, but no
/// fewer than [`ROWS_PER_TASK`] rows (each task restarts its prefetch stream). Who
/// computes a row never changes how it is computed.
fn stream_rows_per_task(rows: usize) -> usize {
    rows.div_ceil(8 * rayon::current_num_threads())
        .max(ROWS_PER_TASK)
}

/// Runs `f(r0, r1)` over `0..rows` in ranges of `per_task` rows, in parallel.
fn par_row_ranges(rows: usize, per_task: usize, f: impl Fn(usize, usize) + Sync) {
    (0..rows.div_ceil(per_task))
        .into_par_iter()
        .for_each(|task| {
            let r0 = task * per_task;
            f(r0, (r0 + per_task).min(rows))
        });
}

/// `out[t·rows + r] = dot(row r, t)` over rows of `rb` bytes in `data` and tokens
/// `t < nt`, the rows read as one stream: each task prefetches the start of its range, `dot`
/// (a streaming kernel, which picks token `t`'s activations) the rest.
///
/// # Safety
/// `data` holds `rows·rb` bytes and `optr` points to `nt·rows` writable f32 that nothing else
/// accesses during the call.
unsafe fn stream_rows(
    data: &[u8],
    rows: usize,
    rb: usize,
    nt: usize,
    optr: SendPtr<f32>,
    dot: impl Fn(&[u8], usize) -> f32 + Sync,
) {
    par_row_ranges(rows, stream_rows_per_task(rows), |r0, r1| {
        prefetch_start(data[r0 * rb..].as_ptr(), (r1 - r0) * rb);
        for r in r0..r1 {
            let row = &data[r * rb..(r + 1) * rb];
            for t in 0..nt {
                let v = dot(row, t);
                // SAFETY: t < nt and r < r1 ≤ rows, so in bounds of the nt·rows elements
                // (our contract); `par_row_ranges` gives each task disjoint rows r0..r1, so
                // this element has no other reader or writer.
                unsafe { *optr.ptr().add(t * rows + r) = v };
            }
        }
    });
}

/// Prefetches the first [`PREFETCH_BYTES`] of a task's `len`-byte stream at `p`; the
/// kernel's own prefetches cover the rest.
fn prefetch_start(p: *const u8, len: usize) {
    super::prefetch_range(p, len.min(PREFETCH_BYTES));
}

/// `out[t·rows + r] = W[r] · x[t·cols ..]` for `n_tokens = x.len() / cols`, at the
/// process's SIMD level ([`Simd::current`]).
pub fn matmul(
    w: &WeightView,
    x: &[f32],
    out: &mut [f32],
    scratch: &mut Scratch,
) -> Result<(), KernelError> {
    matmul_with(Simd::current(), w, x, out, scratch)
}

/// [`matmul`] at an explicit SIMD level (clamped to what the CPU has).
pub fn matmul_with(
    simd: Simd,
    w: &WeightView,
    x: &[f32],
    out: &mut [f32],
    scratch: &mut Scratch,
) -> Result<(), KernelError> {
    let simd = simd.clamp();
    w.validate()?;
    let (rows, cols) = (w.rows(), w.cols());
    if cols == 0 || !x.len().is_multiple_of(cols) {
        return Err(KernelError::NotMultiple {
            what: "activation length",
            value: x.len(),
            multiple: cols,
        });
    }
    let nt = x.len() / cols;
    // Checked: the output is written through a raw pointer, so the product must not wrap.
    let n_out = nt
        .checked_mul(rows)
        .unwrap_or_else(|| panic!("matmul: {nt} tokens × {rows} rows overflows usize"));
    check_len("matmul output", out.len(), n_out, "f32")?;
    if nt == 0 || rows == 0 {
        return Ok(());
    }
    let optr = SendPtr(out.as_mut_ptr());
    let n_tasks = rows.div_ceil(ROWS_PER_TASK);
    // `f(r, t0, v)` fills `v[k]` with row `r` · token `t0 + k`; run over all outputs,
    // parallel over row chunks, at most 64 tokens per call.
    let run = |f: &(dyn Fn(usize, usize, &mut [f32]) + Sync)| {
        (0..n_tasks).into_par_iter().for_each(|task| {
            let mut vals = [0f32; 64];
            let r0 = task * ROWS_PER_TASK;
            let r1 = (r0 + ROWS_PER_TASK).min(rows);
            for r in r0..r1 {
                let mut t0 = 0;
                while t0 < nt {
                    let t1 = (t0 + 64).min(nt);
                    let v = &mut vals[..t1 - t0];
                    f(r, t0, v);
                    for (k, &val) in v.iter().enumerate() {
                        // SAFETY: t0 + k < nt and r < rows, and `out.len() == nt·rows`
                        // (checked above), so the element is in bounds. Each task owns rows
                        // r0..r1 (disjoint task ranges), so no other task writes or reads
                        // it, and `out` is not touched otherwise until `run` returns.
                        unsafe { *optr.ptr().add((t0 + k) * rows + r) = val };
                    }
                    t0 = t1;
                }
            }
        });
    };
    match *w {
        WeightView::I2S { data, by4, .. } => {
            grow(&mut scratch.q8, nt * cols);
            grow(&mut scratch.act_scales, nt);
            grow(&mut scratch.act_sums, nt);
            // Token by token (the tokens of a prompt in parallel).
            scratch.q8[..nt * cols]
                .par_chunks_mut(cols)
                .zip(x.par_chunks(cols))
                .zip(scratch.act_scales[..nt].par_iter_mut())
                .zip(scratch.act_sums[..nt].par_iter_mut())
                .for_each(|(((q, x), scale), sum)| {
                    (*scale, *sum) = i2s::quantize_row_i8_s_with(simd, x, q);
                });
            let scale = i2s::scale(data, rows * cols);
            #[cfg(target_arch = "x86_64")]
            if simd == Simd::Avx512 && i2s_vnni::has_vnni() && cols <= i2s_vnni::MAX_COLS {
                // SAFETY: `simd` is clamped and `has_vnni` detected VNNI, as tested here;
                // the view was validated, the scratch rows were filled for all nt tokens
                // just above, and `optr` is `out` (nt·rows, checked), unused until we return.
                unsafe { matmul_i2s_vnni(data, by4, rows, cols, nt, scale, scratch, optr) };
                return Ok(());
            }
            let (q8, scales, sums) = (
                &scratch.q8[..],
                &scratch.act_scales[..],
                &scratch.act_sums[..],
            );
            let rb = cols / 4;
            run(&|r, t0, v| {
                let row = &data[r * rb..(r + 1) * rb];
                for (k, o) in v.iter_mut().enumerate() {
                    let t = t0 + k;
                    // SAFETY: `simd` was clamped on entry; `row` is cols/4 bytes, `q` cols.
                    let dot = unsafe { i2s_dot(simd, row, &q8[t * cols..(t + 1) * cols]) };
                    *o = i2s::finish(dot, sums[t], scales[t], scale);
                }
            });
        }
        // F16/F32 weights with two or more tokens: ggml hands these to tinyBLAS
        // (`llamafile_sgemm`, see [`sgemm`]) with the f32 activations as they are.
        WeightView::F16 { data, .. } | WeightView::F32 { data, .. } if sgemm::accepts(nt, cols) => {
            let ty = if matches!(w, WeightView::F16 { .. }) {
                sgemm::AType::F16
            } else {
                sgemm::AType::F32
            };
            let toks = sgemm::pack_tokens(simd, x, cols, &mut scratch.sgemm_tokens);
            par_row_ranges(rows, sgemm_rows(nt, cols), |r0, r1| {
                sgemm::rows_with(simd, ty, data, (r0, r1), &toks, |r, t, v| {
                    // SAFETY: r0 ≤ r < r1 ≤ rows and t < nt, and `out.len() == nt·rows`
                    // (checked above); `par_row_ranges` gives each task disjoint rows, so
                    // no other task touches this element.
                    unsafe { *optr.ptr().add(t * rows + r) = v };
                });
            });
        }
        // Otherwise (one token, or cols % 16 != 0) ggml's `vec_dot` loop: F16 rounds each
        // activation row to f16 first (`vec_dot_type`), then `ggml_vec_dot_f16`.
        // Rows are read as one stream (the tied head: 656 MB per token), with prefetch.
        WeightView::F16 { data, .. } => {
            grow(&mut scratch.xh, nt * cols);
            dot::round_to_f16(x, &mut scratch.xh[..nt * cols]);
            let xh = &scratch.xh[..nt * cols];
            let tok = |t: usize| t * cols..(t + 1) * cols;
            // On a Zen 4, the activations also as f16, half the bytes the loop loads
            // (`dot::vec_dot_f16_halves_stream_with`); the same bits.
            if Simd::zen4() && simd.clamp() >= Simd::Avx2 {
                grow(&mut scratch.xh16, nt * cols);
                dot::f16_bits(xh, &mut scratch.xh16[..nt * cols]);
                let x16 = &scratch.xh16[..nt * cols];
                // SAFETY: the view was validated (rows·cols f16 in `data`), `xh` and `x16`
                // hold nt rows of cols, and `optr` is `out`: nt·rows f32 (checked above),
                // unused until we return.
                unsafe {
                    stream_rows(data, rows, cols * 2, nt, optr, |row, t| {
                        dot::vec_dot_f16_halves_stream_with(simd, row, &xh[tok(t)], &x16[tok(t)])
                    })
                }
            } else {
                // SAFETY: as above, without `x16`.
                unsafe {
                    stream_rows(data, rows, cols * 2, nt, optr, |row, t| {
                        dot::vec_dot_f16_stream_with(simd, row, &xh[tok(t)])
                    })
                }
            }
        }
        // F32 as F16, without the rounding.
        WeightView::F32 { data, .. } => {
            // SAFETY: as for F16 (rows·cols f32 in the validated `data`).
            unsafe {
                stream_rows(data, rows, cols * 4, nt, optr, |row, t| {
                    dot::vec_dot_f32_stream_with(simd, row, &x[t * cols..(t + 1) * cols])
                })
            };
        }
        WeightView::TQ1 { data, by4, .. } | WeightView::TQ2 { data, by4, .. } => {
            let nbk = cols / QK_K;
            grow(&mut scratch.q8k, nt * nbk);
            // Token by token (the tokens of a prompt in parallel).
            scratch.q8k[..nt * nbk]
                .par_chunks_mut(nbk)
                .zip(x.par_chunks(cols))
                .for_each(|(y, x)| q8k::quantize_row_q8_k(x, y));
            let is_tq1 = matches!(w, WeightView::TQ1 { .. });
            #[cfg(target_arch = "x86_64")]
            if simd == Simd::Avx512 && tq_vnni::available() {
                let fmt = if is_tq1 {
                    tq_vnni::Format::Tq1
                } else {
                    tq_vnni::Format::Tq2
                };
                // SAFETY: `simd` is clamped and `available` detected VNNI and VBMI, as tested
                // here; the view was validated (cols % 256 == 0, rows·row_bytes bytes), the
                // Q8_K rows were filled for all nt tokens just above, and `optr` is `out`
                // (nt·rows, checked), unused until we return.
                unsafe { matmul_tq_vnni(fmt, data, by4, rows, cols, nt, scratch, optr) };
                return Ok(());
            }
            let ys = &scratch.q8k[..nt * nbk];
            let rb = if is_tq1 {
                tq1::row_bytes(cols)
            } else {
                tq2::row_bytes(cols)
            };
            if nt == 1 && simd != Simd::Scalar {
                // One token (decode): the rows as one stream, prefetched ahead.
                par_row_ranges(rows, stream_rows_per_task(rows), |r0, r1| {
                    prefetch_start(data[r0 * rb..].as_ptr(), (r1 - r0) * rb);
                    for r in r0..r1 {
                        let row = &data[r * rb..(r + 1) * rb];
                        let v = if is_tq1 {
                            tq1::vec_dot_q8k_stream_with(simd, row, ys)
                        } else {
                            tq2::vec_dot_q8k_stream_with(simd, row, ys)
                        };
                        // SAFETY: r < r1 ≤ rows and `out.len() == rows` (nt = 1, checked);
                        // `par_row_ranges` gives each task disjoint rows.
                        unsafe { *optr.ptr().add(r) = v };
                    }
                });
                return Ok(());
            }
            run(&|r, t0, v| {
                let row = &data[r * rb..(r + 1) * rb];
                for (k, o) in v.iter_mut().enumerate() {
                    let y = &ys[(t0 + k) * nbk..(t0 + k + 1) * nbk];
                    *o = if is_tq1 {
                        tq1::vec_dot_q8k_with(simd, row, y)
                    } else {
                        tq2::vec_dot_q8k_with(simd, row, y)
                    };
                }
            });
        }
    }
    Ok(())
}

/// I2_S on AVX-512 VNNI ([`i2s_vnni`]), activations already in `scratch.q8`, scales and
/// sums: tokens whose i16 lanes cannot wrap go through the exact VNNI kernels — four rows
/// per call for a single such token (decode, [`i2s_vnni::x86::dot_rows4`], from `by4` when
/// there is one, the last rows of a task one by one), unpacked panels for several
/// (prefill) — and the others through ggml's wrap-exact dot, row by row. Same bits either
/// way.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL/VNNI ([`i2s_vnni::has_vnni`] and a clamped
/// [`Simd::Avx512`]); `data` is a validated I2_S view of `rows × cols` (`cols % 128 == 0`,
/// `cols ≤ MAX_COLS`, at least `rows·cols/4` bytes) and `by4`, if any, holds those rows'
/// `rows·cols/4` bytes in [`i2s_vnni::interleave4`]'s layout; `scratch.q8`, `act_scales` and
/// `act_sums` hold `nt` quantized rows; `optr` points to `nt·rows` writable f32 that nothing
/// else accesses during the call.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_i2s_vnni(
    data: &[u8],
    by4: Option<&[u8]>,
    rows: usize,
    cols: usize,
    nt: usize,
    scale: f32,
    scratch: &mut Scratch,
    optr: SendPtr<f32>,
) {
    use i2s_vnni::x86;
    grow(&mut scratch.q8p, nt * cols);
    grow(&mut scratch.wrap_free, nt);
    // Token by token (the tokens of a prompt in parallel): which cannot wrap, and those in
    // pair order, in token order.
    let q8 = &scratch.q8[..nt * cols];
    scratch.wrap_free[..nt]
        .par_iter_mut()
        .zip(q8.par_chunks(cols))
        .for_each(|(ok, q)| *ok = i2s_vnni::cannot_wrap(q));
    scratch.fast.clear();
    scratch.slow.clear();
    for (t, &ok) in scratch.wrap_free[..nt].iter().enumerate() {
        if ok {
            scratch.fast.push(t);
        } else {
            scratch.slow.push(t);
        }
    }
    scratch.q8p[..scratch.fast.len() * cols]
        .par_chunks_mut(cols)
        .zip(scratch.fast.par_iter())
        .for_each(|(qp, &t)| i2s_vnni::to_pair_order(&q8[t * cols..(t + 1) * cols], qp));
    let (q8, q8p, scales, sums) = (
        &scratch.q8[..],
        &scratch.q8p[..],
        &scratch.act_scales[..],
        &scratch.act_sums[..],
    );
    let (fast, slow) = (&scratch.fast[..], &scratch.slow[..]);
    let rb = cols / 4;
    // Whole groups of four rows per task, so a task's rows start a group of `by4`.
    let per_task = if fast.len() >= 2 {
        PANEL_ROWS
    } else {
        stream_rows_per_task(rows).next_multiple_of(4)
    };
    par_row_ranges(rows, per_task, |r0, r1| {
        let store = |t: usize, r: usize, dot: i32| {
            let v = i2s::finish(dot, sums[t], scales[t], scale);
            // SAFETY: t is an entry of `fast` or `slow`, so < nt; every use passes
            // r0 ≤ r < r1 ≤ rows (gemm_panel emits r < r1 − r0, offset by r0), and `optr`
            // has nt·rows elements (our contract). `par_row_ranges` gives tasks disjoint
            // rows, so no other task touches this element.
            unsafe { *optr.ptr().add(t * rows + r) = v };
        };
        if fast.len() == 1 {
            // Rows r..r + 4 from r = r0, a multiple of four: a group of `by4`, whose rows
            // past the last whole group sit where they do in `data`.
            let src = by4.unwrap_or(data);
            prefetch_start(src[r0 * rb..].as_ptr(), (r1 - r0) * rb);
            let mut r = r0;
            while r + 4 <= r1 {
                let p = src[r * rb..].as_ptr();
                // SAFETY: as for `dot_row` below, for rows r..r + 4 ≤ r1 ≤ rows:
                // `src[r·rb..]` holds their 4·cols/4 bytes (validated view, or `by4` of
                // `rows·cols/4` bytes, our contract), in `interleave4`'s layout for `by4`.
                let dots = unsafe {
                    if by4.is_some() {
                        x86::dot_rows4::<true>(p, q8p.as_ptr(), cols)
                    } else {
                        x86::dot_rows4::<false>(p, q8p.as_ptr(), cols)
                    }
                };
                for (k, dot) in dots.into_iter().enumerate() {
                    store(fast[0], r + k, dot);
                }
                r += 4;
            }
            for r in r..r1 {
                // SAFETY: VNNI is present (our contract); `src.len() ≥ rows·cols/4`, so
                // `src[r·rb..]` holds the row's cols/4 bytes (a row past the last group,
                // not interleaved), and q8p holds ≥ nt·cols ≥ cols values (row 0 = the one
                // fast token); cols % 128 == 0, ≤ MAX_COLS.
                store(fast[0], r, unsafe {
                    x86::dot_row(src[r * rb..].as_ptr(), q8p.as_ptr(), cols)
                });
            }
        } else if fast.len() >= 2 {
            PANEL.with(|panel| {
                let mut panel = panel.borrow_mut();
                grow(&mut panel, (r1 - r0) * cols);
                // SAFETY: VNNI: as for `dot_row` above. `data[r0·rb..]` holds rows r0..r1,
                // (r1−r0)·cols/4 bytes (validated view); the panel was grown to
                // (r1−r0)·cols bytes and is this thread's own (thread-local, borrowed
                // mutably); q8p holds ≥ nt·cols ≥ fast.len()·cols values; cols % 128 == 0.
                unsafe {
                    x86::unpack_panel(data[r0 * rb..].as_ptr(), r1 - r0, cols, panel.as_mut_ptr());
                    x86::gemm_panel(
                        panel.as_ptr(),
                        r1 - r0,
                        q8p.as_ptr(),
                        fast.len(),
                        cols,
                        |r, f, dot| store(fast[f], r0 + r, dot),
                    );
                }
            });
        }
        for &t in slow {
            let q = &q8[t * cols..(t + 1) * cols];
            for r in r0..r1 {
                // SAFETY: AVX-512 is present (our contract); the row is cols/4 bytes, `q`
                // cols values.
                let dot = unsafe { i2s_dot(Simd::Avx512, &data[r * rb..(r + 1) * rb], q) };
                store(t, r, dot);
            }
        }
    });
}

/// ggml's wrap-exact I2_S dot ([`i2s::vec_dot_i2_i8_with`] without its per-call clamp and
/// checks: this runs once per output element).
///
/// # Safety
/// `simd` is supported by this CPU (a [`Simd::clamp`]ed level), and `row.len() ≥
/// q.len()/4`.
#[inline(always)]
unsafe fn i2s_dot(simd: Simd, row: &[u8], q: &[i8]) -> i32 {
    match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller guarantees the level; `row` covers the (q.len()/128)·32 bytes
        // the kernel reads.
        Simd::Avx512 => unsafe { i2s::x86::vec_dot_i2_i8_avx512(row, q) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as for Avx512.
        Simd::Avx2 => unsafe { i2s::x86::vec_dot_i2_i8_avx2(row, q) },
        _ => i2s::vec_dot_i2_i8_scalar(row, q),
    }
}

/// TQ1_0/TQ2_0 on AVX-512 VNNI ([`tq_vnni`]), activations already in `scratch.q8k`: one
/// token streams through the packed rows four at a time ([`tq_vnni::x86::tq1_dot_rows`],
/// [`tq_vnni::x86::tq2_dot_rows`], or [`tq_vnni::x86::tq2_dot_pairs`] from `by4`), a task's
/// last ones one at a time ([`tq_vnni::x86::tq1_dot_row`], [`tq_vnni::x86::tq2_dot_row`]);
/// several are paired and meet each panel of rows unpacked once
/// ([`tq_vnni::x86::gemm_panel`]). ggml's bits either way.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL/VNNI/VBMI and GFNI ([`tq_vnni::available`] and a clamped
/// [`Simd::Avx512`]); `data` is a validated view of `rows × cols` in `fmt`
/// (`cols % 256 == 0`, at least `rows·(cols/256)·fmt.block_bytes()` bytes) and `by4`, if
/// any, holds as many in [`tq_vnni::interleave4`]'s layout; `scratch.q8k`
/// holds `nt` quantized rows of `cols/256` blocks; `optr` points to `nt·rows` writable f32
/// that nothing else accesses during the call.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_tq_vnni(
    fmt: tq_vnni::Format,
    data: &[u8],
    by4: Option<&[u8]>,
    rows: usize,
    cols: usize,
    nt: usize,
    scratch: &mut Scratch,
    optr: SendPtr<f32>,
) {
    use tq_vnni::{x86, PAIR_LINES, PANEL_BLOCK};
    let nb = cols / QK_K;
    let rb = nb * fmt.block_bytes();
    let ys = &scratch.q8k[..nt * nb];
    if let (1, tq_vnni::Format::Tq1, Some(copy)) = (nt, fmt, by4) {
        let nl = tq_vnni::tq1_copy_acts_len(nb);
        grow(&mut scratch.tq_lines, nl);
        tq_vnni::tq1_copy_acts(ys, &mut scratch.tq_lines[..nl]);
        let acts = &scratch.tq_lines[..nl];
        let cb = tq_vnni::tq1_code_bytes(nb);
        // Whole groups of four rows per task, so a task's rows start a group of the copy;
        // its rows past the last whole group (the matrix's last rows) are groups of one.
        let per_task = stream_rows_per_task(rows).next_multiple_of(TQ_ROWS);
        par_row_ranges(rows, per_task, |r0, r1| {
            prefetch_start(copy[r0 * cb..].as_ptr(), (r1 - r0) * cb);
            let mut r = r0;
            while r < r1 {
                let n = if r + TQ_ROWS <= r1 { TQ_ROWS } else { 1 };
                let (c, d) = tq_vnni::tq1_rows_at(rows, nb, r);
                let (c, d, a) = (copy[c..].as_ptr(), copy[d..].as_ptr(), acts.as_ptr());
                // SAFETY: VNNI/VBMI/GFNI are present (our contract); rows r..r + n are a
                // group of `interleave4`'s TQ1_0 layout (r is a multiple of four, and a
                // group of one lies past the last whole group of four), whose codes
                // (n·cb bytes) and scales (2·nb·n) lie in `copy` (copy_len bytes, our
                // contract) at `tq1_rows_at`'s offsets; `acts` holds tq1_copy_acts_len(nb)
                // lines.
                let v = unsafe {
                    if n == TQ_ROWS {
                        x86::tq1_dot_quint_pairs(c, d, a, nb)
                    } else {
                        [x86::tq1_dot_quint_row(c, d, a, nb), 0.0, 0.0, 0.0]
                    }
                };
                for (k, v) in v[..n].iter().enumerate() {
                    // SAFETY: r + k < r1 ≤ rows = the elements of `optr` (nt = 1);
                    // `par_row_ranges` gives tasks disjoint rows.
                    unsafe { *optr.ptr().add(r + k) = *v };
                }
                r += n;
            }
        });
        return;
    }
    if nt == 1 {
        let nl = fmt.decode_len(nb);
        grow(&mut scratch.tq_lines, nl);
        tq_vnni::decode_acts(fmt, ys, &mut scratch.tq_lines[..nl]);
        let acts = &scratch.tq_lines[..nl];
        // From here `by4` is TQ2_0's, if any (TQ1_0's copy is read above). Whole groups of
        // TQ_ROWS = 4 rows per task, so a task's rows start a group of `by4`; its rows past
        // the last whole group sit where they do in `data`.
        let src = by4.unwrap_or(data);
        let per_task = stream_rows_per_task(rows).next_multiple_of(TQ_ROWS);
        let pairs = fmt == tq_vnni::Format::Tq2 && by4.is_some();
        par_row_ranges(rows, per_task, |r0, r1| {
            // Where the task's first rows begin (a hint: TQ2_0's `by4` holds their codes
            // at their group's offset).
            let first = if pairs {
                tq_vnni::tq2_group_at(rows, nb, r0 / 4).0
            } else {
                r0 * rb
            };
            prefetch_start(src[first..].as_ptr(), (r1 - r0) * rb);
            let mut r0 = r0;
            while r0 + TQ_ROWS <= r1 {
                let at = src[r0 * rb..].as_ptr();
                let a = acts.as_ptr();
                // SAFETY: as for the single rows below, for rows r0..r0 + TQ_ROWS ≤ r1
                // (in `interleave4`'s layout when from `by4`). For TQ2_0's, group r0/4 <
                // rows/4 (r0 + 4 ≤ rows), whose 256·nb code and 8·nb scale bytes lie in
                // `by4`'s rows·66·nb at `tq2_group_at`'s offsets.
                let v = unsafe {
                    match (fmt, by4.is_some()) {
                        (tq_vnni::Format::Tq1, _) => x86::tq1_dot_rows::<TQ_ROWS>(at, a, nb),
                        (tq_vnni::Format::Tq2, false) => x86::tq2_dot_rows::<TQ_ROWS>(at, a, nb),
                        (tq_vnni::Format::Tq2, true) => {
                            let (qs, ds) = tq_vnni::tq2_group_at(rows, nb, r0 / 4);
                            x86::tq2_dot_pairs(src[qs..].as_ptr(), src[ds..].as_ptr(), a, nb)
                        }
                    }
                };
                for (k, v) in v.into_iter().enumerate() {
                    // SAFETY: as below, for row r0 + k < r1.
                    unsafe { *optr.ptr().add(r0 + k) = v };
                }
                r0 += TQ_ROWS;
            }
            for r in r0..r1 {
                let row = src[r * rb..].as_ptr();
                // SAFETY: VNNI/VBMI/GFNI are present (our contract); `src[r·rb..]` holds
                // the row's nb blocks (validated view or `by4`, r < rows; a row past the
                // last group, not interleaved) and `acts` decode_len(nb) lines for this
                // format.
                let v = unsafe {
                    match fmt {
                        tq_vnni::Format::Tq1 => x86::tq1_dot_row(row, acts.as_ptr(), nb),
                        tq_vnni::Format::Tq2 => x86::tq2_dot_row(row, acts.as_ptr(), nb),
                    }
                };
                // SAFETY: r0 ≤ r < r1 ≤ rows and `optr` has nt·rows = rows elements;
                // `par_row_ranges` gives tasks disjoint rows.
                unsafe { *optr.ptr().add(r) = v };
            }
        });
        return;
    }
    let np = nt.div_ceil(2);
    grow(&mut scratch.tq_lines, np * nb * PAIR_LINES);
    scratch.tq_lines[..np * nb * PAIR_LINES]
        .par_chunks_exact_mut(nb * PAIR_LINES)
        .enumerate()
        .for_each(|(p, lines)| {
            let b = (2 * p + 1 < nt).then(|| &ys[(2 * p + 1) * nb..(2 * p + 2) * nb]);
            tq_vnni::pair_acts(fmt, &ys[2 * p * nb..(2 * p + 1) * nb], b, lines);
        });
    let acts = &scratch.tq_lines[..np * nb * PAIR_LINES];
    par_row_ranges(rows, PANEL_ROWS, |r0, r1| {
        PANEL.with(|panel| {
            PANEL_XD.with(|xd| {
                let (mut panel, mut xd) = (panel.borrow_mut(), xd.borrow_mut());
                grow(&mut panel, (r1 - r0) * nb * PANEL_BLOCK);
                grow(&mut xd, (r1 - r0) * nb);
                // SAFETY: VNNI/VBMI: our contract. `data[r0·rb..]` holds rows r0..r1
                // ((r1−r0)·rb bytes, validated view); the panel and xd buffers were grown
                // to (r1−r0)·nb·256 bytes and (r1−r0)·nb f32 and are this thread's own
                // (thread-local, borrowed mutably); `acts` holds np·nb·PAIR_LINES lines for
                // nt tokens.
                unsafe {
                    x86::unpack_panel(
                        fmt,
                        data[r0 * rb..].as_ptr(),
                        r1 - r0,
                        nb,
                        panel.as_mut_ptr(),
                        xd.as_mut_ptr(),
                    );
                    x86::gemm_panel(
                        panel.as_ptr(),
                        xd.as_ptr(),
                        r1 - r0,
                        nb,
                        acts.as_ptr(),
                        nt,
                        |r, t, v| {
                            // SAFETY: gemm_panel emits r < r1 − r0 and t < nt, so
                            // t·rows + r0 + r < nt·rows, the size of `optr` (our
                            // contract); tasks own disjoint rows.
                            *optr.ptr().add(t * rows + r0 + r) = v
                        },
                    );
                }
            })
        })
    });
}
