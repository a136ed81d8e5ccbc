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
//! Work is split over output rows in fixed chunks on rayon; each element is computed by
//! one call whose order depends on nothing but the data, so results do not depend on the
//! thread count or the chunking. Each task walks its weight rows once and applies each row
//! to every token while it is hot in L1 (prefill re-uses the weight traffic; decode reads
//! each weight byte once and is memory-bandwidth bound).

use super::{check_len, KernelError, SendPtr, Simd};
use super::{dot, sgemm};
use crate::quant::q8k::{self, BlockQ8K, QK_K};
use crate::quant::{i2s, tq1, tq2};
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
    },
    /// TQ1_0 blocks, row after row (`cols % 256 == 0`).
    TQ1 {
        data: &'a [u8],
        rows: usize,
        cols: usize,
    },
    /// TQ2_0 blocks, row after row (`cols % 256 == 0`).
    TQ2 {
        data: &'a [u8],
        rows: usize,
        cols: usize,
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
    pub fn needed_bytes(&self) -> usize {
        let (rows, cols) = (self.rows(), self.cols());
        match self {
            WeightView::F32 { .. } => rows * cols * 4,
            WeightView::F16 { .. } => rows * cols * 2,
            WeightView::I2S { .. } => rows * cols / 4 + 4,
            WeightView::TQ1 { .. } => rows * tq1::row_bytes(cols),
            WeightView::TQ2 { .. } => rows * tq2::row_bytes(cols),
        }
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

    /// Checks block multiples and that the data is long enough.
    pub fn validate(&self) -> Result<(), KernelError> {
        let cols = self.cols();
        let block = match self {
            WeightView::I2S { .. } => i2s::BLOCK,
            WeightView::TQ1 { .. } | WeightView::TQ2 { .. } => QK_K,
            _ => 1,
        };
        if cols % block != 0 {
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
        Ok(())
    }
}

/// Buffers re-used across calls: converted activations. Grows to the largest call seen,
/// then allocates nothing.
#[derive(Default, Debug)]
pub struct Scratch {
    q8: Vec<i8>,
    act_scales: Vec<f32>,
    act_sums: Vec<i32>,
    xh: Vec<f32>,
    q8k: Vec<BlockQ8K>,
}

fn grow<T: Clone + Default>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

/// Weight rows per rayon task.
const ROWS_PER_TASK: usize = 32;

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
    if cols == 0 || x.len() % cols != 0 {
        return Err(KernelError::NotMultiple {
            what: "activation length",
            value: x.len(),
            multiple: cols,
        });
    }
    let nt = x.len() / cols;
    check_len("matmul output", out.len(), nt * rows, "f32")?;
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
                        // SAFETY: (t0+k, r) is written by this task only; in bounds.
                        unsafe { *optr.ptr().add((t0 + k) * rows + r) = val };
                    }
                    t0 = t1;
                }
            }
        });
    };
    match *w {
        WeightView::I2S { data, .. } => {
            grow(&mut scratch.q8, nt * cols);
            grow(&mut scratch.act_scales, nt);
            grow(&mut scratch.act_sums, nt);
            for t in 0..nt {
                let (s, sum) = i2s::quantize_row_i8_s_with(
                    simd,
                    &x[t * cols..(t + 1) * cols],
                    &mut scratch.q8[t * cols..(t + 1) * cols],
                );
                scratch.act_scales[t] = s;
                scratch.act_sums[t] = sum;
            }
            let scale = i2s::scale(data, rows * cols);
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
                    let dot = i2s_dot(simd, row, &q8[t * cols..(t + 1) * cols]);
                    *o = i2s::finish(dot, sums[t], scales[t], scale);
                }
            });
        }
        // F16/F32 weights with two or more tokens: ggml hands these to tinyBLAS
        // (`llamafile_sgemm`, see [`sgemm`]) with the f32 activations as they are.
        WeightView::F16 { data, .. } if sgemm::accepts(nt, cols) => {
            run(&|r, t0, v| {
                let row = &data[r * cols * 2..(r + 1) * cols * 2];
                for (k, o) in v.iter_mut().enumerate() {
                    let t = t0 + k;
                    *o = sgemm::dot_f16_with(simd, row, &x[t * cols..(t + 1) * cols]);
                }
            });
        }
        WeightView::F32 { data, .. } if sgemm::accepts(nt, cols) => {
            run(&|r, t0, v| {
                let row = &data[r * cols * 4..(r + 1) * cols * 4];
                for (k, o) in v.iter_mut().enumerate() {
                    let t = t0 + k;
                    *o = sgemm::dot_f32_with(simd, row, &x[t * cols..(t + 1) * cols]);
                }
            });
        }
        // Otherwise (one token, or cols % 16 != 0) ggml's `vec_dot` loop: F16 rounds each
        // activation row to f16 first (`vec_dot_type`), then `ggml_vec_dot_f16`.
        WeightView::F16 { data, .. } => {
            grow(&mut scratch.xh, nt * cols);
            dot::round_to_f16(x, &mut scratch.xh[..nt * cols]);
            let xh = &scratch.xh[..nt * cols];
            let rb = cols * 2;
            run(&|r, t0, v| {
                let row = &data[r * rb..(r + 1) * rb];
                let xt = |t: usize| &xh[t * cols..(t + 1) * cols];
                for (k, o) in v.iter_mut().enumerate() {
                    *o = dot::vec_dot_f16_with(simd, row, xt(t0 + k));
                }
            });
        }
        WeightView::F32 { data, .. } => {
            let rb = cols * 4;
            run(&|r, t0, v| {
                let row = &data[r * rb..(r + 1) * rb];
                for (k, o) in v.iter_mut().enumerate() {
                    let t = t0 + k;
                    *o = dot::vec_dot_f32_with(simd, row, &x[t * cols..(t + 1) * cols]);
                }
            });
        }
        WeightView::TQ1 { data, .. } | WeightView::TQ2 { data, .. } => {
            let nbk = cols / QK_K;
            grow(&mut scratch.q8k, nt * nbk);
            for t in 0..nt {
                q8k::quantize_row_q8_k(
                    &x[t * cols..(t + 1) * cols],
                    &mut scratch.q8k[t * nbk..(t + 1) * nbk],
                );
            }
            let ys = &scratch.q8k[..nt * nbk];
            let is_tq1 = matches!(w, WeightView::TQ1 { .. });
            let rb = if is_tq1 {
                tq1::row_bytes(cols)
            } else {
                tq2::row_bytes(cols)
            };
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

#[inline(always)]
fn i2s_dot(simd: Simd, row: &[u8], q: &[i8]) -> i32 {
    match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `simd` was clamped to what the CPU supports.
        Simd::Avx512 => unsafe { i2s::x86::vec_dot_i2_i8_avx512(row, q) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { i2s::x86::vec_dot_i2_i8_avx2(row, q) },
        _ => i2s::vec_dot_i2_i8_scalar(row, q),
    }
}
