//! The faulty computations of the known-bug gallery (compiled only with the `faults`
//! feature). Each mirrors the correct kernel it replaces step for step, so the injected bug
//! is the only difference: the I2_S faults quantize activations with the real
//! `quantize_row_i8_s` and finish with the real `finish`; the attention faults reuse the
//! real f16 dots, softmax arithmetic and `kqv` summation order.

use super::Fault;
use crate::gguf::GgmlType;
use crate::kernels::attention::{bytes_of, kqv, AttnShape, KqvOrder};
use crate::kernels::dot::{self, reduce16};
use crate::kernels::matmul::WeightView;
use crate::kernels::rope::rope_cache;
use crate::kernels::softmax::{soft_max_ext_row_with, v_expf};
use crate::kernels::{sgemm, Simd};
use crate::model::Model;
use crate::quant::i2s;
use half::f16;
use rayon::prelude::*;

/// `EmbdTransposed`: `x[i][j] = table[j·n_vocab + tokens[i]]`, the `[n_vocab, n_embd]`
/// table read as if it were `[n_embd, n_vocab]`.
pub(super) fn embed_transposed(m: &Model, tokens: &[u32], x: &mut [f32]) {
    let (d, nv) = (m.hp.n_embd, m.hp.n_vocab);
    let table = m.bytes(&m.token_embd);
    let at = |i: usize| match m.token_embd.ty {
        GgmlType::F16 => f16::from_le_bytes([table[2 * i], table[2 * i + 1]]).to_f32(),
        _ => f32::from_le_bytes([
            table[4 * i],
            table[4 * i + 1],
            table[4 * i + 2],
            table[4 * i + 3],
        ]),
    };
    for (row, &t) in x.chunks_exact_mut(d).zip(tokens) {
        for (j, o) in row.iter_mut().enumerate() {
            *o = at(j * nv + t as usize);
        }
    }
}

/// `Layernorm`: `(x − mean) / sqrt(var + eps) · gamma`, as ggml's `ggml_compute_forward_norm_f32`
/// computes LayerNorm (sums in double) — the norm a BitNet model does not use.
pub(super) fn layer_norm_rows(x: &[f32], gamma: &[f32], eps: f32, out: &mut [f32], width: usize) {
    for (xr, or) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let mean = (xr.iter().map(|&v| v as f64).sum::<f64>() / width as f64) as f32;
        let mut sum2 = 0f64;
        for (o, &v) in or.iter_mut().zip(xr) {
            *o = v - mean;
            sum2 += (*o * *o) as f64;
        }
        let scale = 1.0f32 / ((sum2 / width as f64) as f32 + eps).sqrt();
        for (o, &g) in or.iter_mut().zip(gamma) {
            *o = *o * scale * g;
        }
    }
}

/// `RopeInterleaved`: the same angles and the same fused update as
/// [`crate::kernels::rope::rope_neox`], applied to adjacent pairs (2i, 2i+1) — llama.cpp's
/// non-NEOX layout. Position 0 is the identity in both layouts.
pub(super) fn rope_interleaved(x: &mut [f32], head_dim: usize, pos: u32, n_rot: usize, base: f32) {
    let mut cache = vec![(0f32, 0f32); n_rot / 2];
    rope_cache(pos as i32, n_rot, base, &mut cache);
    for head in x.chunks_exact_mut(head_dim) {
        for (i, &(cos, sin)) in cache.iter().enumerate() {
            let (x0, x1) = (head[2 * i], head[2 * i + 1]);
            head[2 * i] = x0.mul_add(cos, -(x1 * sin));
            head[2 * i + 1] = x0.mul_add(sin, x1 * cos);
        }
    }
}

/// The ternary weight a faulty decoder reads for value `i` of a packed I2_S row.
#[inline]
fn weight_at(fault: Fault, row: &[u8], i: usize) -> i32 {
    match fault {
        Fault::I2sBlock256 => {
            // Blocks of 256 values / 64 bytes: byte j holds values j, j+64, j+128, j+192.
            let (blk, j) = (i / 256, i % 256);
            ((row[blk * 64 + j % 64] >> (6 - 2 * (j / 64))) & 3) as i32 - 1
        }
        Fault::I2sBitOrder => {
            let (blk, j) = (i / i2s::BLOCK, i % i2s::BLOCK);
            ((row[blk * i2s::BLOCK_BYTES + j % 32] >> (2 * (j / 32))) & 3) as i32 - 1
        }
        Fault::I2sCodeMap => [-2, -1, 1, 2][i2s::code_at(row, i) as usize],
        _ => i2s::code_at(row, i) as i32 - 1,
    }
}

/// An I2_S matmul with one fault: `out[t·rows + r] = W[r] · x[t]`. Weights are decoded
/// (faultily) to integers; each activation row is quantized by the real
/// `quantize_row_i8_s` and each element finished by the real [`i2s::finish`], so with a
/// correct decoder this equals [`crate::kernels::matmul::matmul`] bit for bit (the integer
/// dot is exact). `NoActQuant` instead takes the f32 dot of the weights with the raw
/// activations, times the scale.
pub(super) fn matmul_i2s(fault: Fault, w: &WeightView, x: &[f32], out: &mut [f32]) {
    let WeightView::I2S {
        data, rows, cols, ..
    } = *w
    else {
        unreachable!("called for I2_S weights only")
    };
    assert!(
        fault != Fault::I2sBlock256 || cols % 256 == 0,
        "fault i2s_block_256 needs rows of whole 256-value blocks, got {cols}"
    );
    let nt = x.len() / cols;
    let scale = match fault {
        Fault::I2sScaleIgnored => 1.0,
        Fault::I2sScaleInverted => 1.0 / i2s::scale(data, rows * cols),
        _ => i2s::scale(data, rows * cols),
    };
    let mut q = vec![0i8; nt * cols];
    let act: Vec<(f32, i32)> = (0..nt)
        .map(|t| {
            i2s::quantize_row_i8_s(
                &x[t * cols..(t + 1) * cols],
                &mut q[t * cols..(t + 1) * cols],
            )
        })
        .collect();
    let rb = i2s::row_bytes(cols);
    let per_row: Vec<Vec<f32>> = (0..rows)
        .into_par_iter()
        .map(|r| {
            let row = &data[r * rb..(r + 1) * rb];
            let mut wr: Vec<i32> = (0..cols).map(|i| weight_at(fault, row, i)).collect();
            if fault == Fault::I2sBlockNegated && r == 0 {
                wr[..i2s::BLOCK].iter_mut().for_each(|w| *w = -*w);
            }
            (0..nt)
                .map(|t| {
                    if fault == Fault::NoActQuant {
                        let xt = &x[t * cols..(t + 1) * cols];
                        return wr.iter().zip(xt).map(|(&w, &v)| w as f32 * v).sum::<f32>() * scale;
                    }
                    let qt = &q[t * cols..(t + 1) * cols];
                    // Σ code·q with code = w + 1, as `ggml_vec_dot_i2_i8_s` sums codes.
                    let dot: i32 = wr.iter().zip(qt).map(|(&w, &v)| (w + 1) * v as i32).sum();
                    let (s, sum) = act[t];
                    i2s::finish(dot, sum, s, scale)
                })
                .collect()
        })
        .collect();
    for (r, vals) in per_row.iter().enumerate() {
        for (t, &v) in vals.iter().enumerate() {
            out[t * rows + r] = v;
        }
    }
}

/// Attention with one fault, otherwise [`crate::kernels::attention::attention`]'s numerics
/// (same f16 score dots, softmax arithmetic and `kqv` order):
/// `GqaSequential` maps query head h to KV head h % n_head_kv; `CausalOffByOne` lets each
/// position also see the next cache slot; `SoftmaxNoMax` exponentiates scores without
/// subtracting the row max.
#[allow(clippy::too_many_arguments)]
pub(super) fn attention(
    fault: Fault,
    q: &[f32],
    k_cache: &[f16],
    v_cache: &[f16],
    n_past: usize,
    shape: AttnShape,
    n_kv: usize,
    out: &mut [f32],
) {
    let simd = Simd::current();
    let AttnShape {
        n_head,
        n_head_kv,
        head_dim,
    } = shape;
    let (qrow, kvrow) = (n_head * head_dim, n_head_kv * head_dim);
    let nt = q.len() / qrow;
    let group = n_head / n_head_kv;
    let slots = k_cache.len() / kvrow;
    let scale = 1.0f32 / (head_dim as f32).sqrt();
    let (kb, vb) = (bytes_of(k_cache), bytes_of(v_cache));
    let kq_sgemm = n_head == 1 && sgemm::accepts(nt, head_dim);
    let order = if sgemm::accepts(nt, n_kv) {
        KqvOrder::TinyBlas
    } else {
        KqvOrder::VecDotF16
    };
    out.par_chunks_mut(head_dim)
        .enumerate()
        .for_each(|(task, o)| {
            let (t, h) = (task / n_head, task % n_head);
            let kvh = if fault == Fault::GqaSequential {
                h % n_head_kv
            } else {
                h / group
            };
            let mut visible = n_past + t + 1;
            if fault == Fault::CausalOffByOne {
                visible = (visible + 1).min(n_kv).min(slots);
            }
            let krow = |j: usize| {
                &kb[2 * (j * kvrow + kvh * head_dim)..2 * (j * kvrow + (kvh + 1) * head_dim)]
            };
            let qt = &q[t * qrow + h * head_dim..t * qrow + (h + 1) * head_dim];
            let mut row = vec![0f32; visible];
            if kq_sgemm {
                for (j, s) in row.iter_mut().enumerate() {
                    *s = sgemm::dot_f16_with(simd, krow(j), qt);
                }
            } else {
                let mut qh = vec![0f32; head_dim];
                dot::round_to_f16(qt, &mut qh);
                for (j, s) in row.iter_mut().enumerate() {
                    *s = dot::vec_dot_f16_with(simd, krow(j), &qh);
                }
            }
            if fault == Fault::SoftmaxNoMax {
                soft_max_no_max_row(&mut row, scale, n_kv);
            } else {
                soft_max_ext_row_with(simd, &mut row, None, scale, n_kv);
            }
            if order == KqvOrder::VecDotF16 {
                dot::round_to_f16_in_place(&mut row);
            }
            let mut acc = Vec::new();
            kqv(
                simd,
                order,
                vb,
                kvrow,
                kvh * head_dim,
                head_dim,
                &row,
                n_kv,
                &mut acc,
                o,
            );
        });
}

/// [`soft_max_ext_row_with`] with the max taken as 0: `e = v_expf(w)` in chunks of 16 of
/// the `nc`-long row, `expf` for the rest, `p = e · (1/Σe)`. Equal to the real softmax up to
/// rounding while scores are small; once a scaled score passes ~88.7, `exp` is +inf and the
/// row becomes NaN.
fn soft_max_no_max_row(row: &mut [f32], scale: f32, nc: usize) {
    for w in row.iter_mut() {
        *w *= scale;
    }
    let full = row.len().min(nc & !15);
    let mut sum = 0f64;
    let mut i = 0;
    while i < full {
        let end = (i + 16).min(full);
        let mut lanes = [0f32; 16];
        for (l, &w) in lanes.iter_mut().zip(&row[i..end]) {
            *l = v_expf(w);
        }
        row[i..end].copy_from_slice(&lanes[..end - i]);
        sum += reduce16(&lanes) as f64;
        i += 16;
    }
    for w in row[full..].iter_mut() {
        let e = w.exp();
        sum += e as f64;
        *w = e;
    }
    let inv = (1.0 / sum) as f32;
    for w in row.iter_mut() {
        *w *= inv;
    }
}

/// RMSNorm with the sum of squares in f32 (ggml's `ggml_vec_norm`-style sum is a double):
/// the same formula as `kernels::norm::rms_norm`, one accumulator narrower.
pub(super) fn rms_norm_f32_rows(x: &[f32], gamma: &[f32], eps: f32, out: &mut [f32], width: usize) {
    for (xr, or) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let sum: f32 = xr.iter().map(|&v| v * v).sum();
        let scale = 1.0f32 / (sum / width as f32 + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(gamma) {
            *o = v * scale * g;
        }
    }
}

/// F32 → F16 rounding toward zero (truncating the mantissa) instead of to nearest even.
pub(super) fn store_f16_truncated(src: &[f32], dst: &mut [f16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        let r = f16::from_f32(s);
        // Round-to-nearest went up in magnitude when it lies beyond s: step one ulp back.
        *d = if r.to_f32().abs() > s.abs() && r.to_bits() & 0x7fff != 0 {
            f16::from_bits(r.to_bits() - 1)
        } else {
            r
        };
    }
}

/// SiLU in f64, rounded to f32 once.
pub(super) fn silu_f64(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        let v = v as f64;
        *o = (v / (1.0 + (-v).exp())) as f32;
    }
}
