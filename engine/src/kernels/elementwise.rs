//! Small elementwise steps of the forward pass, each the ggml op it mirrors.

use crate::gguf::GgmlType;
use half::f16;
use rayon::prelude::*;

/// `x[i] = token_embd[tokens[i]]` as f32 (`ggml_get_rows`: F16 rows are converted with
/// `ggml_fp16_to_fp32`, exact). `d` values per row.
pub fn get_rows(ty: GgmlType, table: &[u8], d: usize, tokens: &[u32], x: &mut [f32]) {
    for (row, &t) in x.chunks_exact_mut(d).zip(tokens) {
        let t = t as usize;
        match ty {
            GgmlType::F16 => {
                let src = &table[t * d * 2..(t + 1) * d * 2];
                for (o, c) in row.iter_mut().zip(src.chunks_exact(2)) {
                    *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            _ => {
                let src = &table[t * d * 4..(t + 1) * d * 4];
                for (o, c) in row.iter_mut().zip(src.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        }
    }
}

/// RMSNorm·gamma of each `width`-long row ([`super::norm::rms_norm`]), the rows (the tokens
/// of a prompt) in parallel.
pub fn rms_norm_rows(x: &[f32], gamma: &[f32], eps: f32, out: &mut [f32], width: usize) {
    x.par_chunks_exact(width)
        .zip(out.par_chunks_exact_mut(width))
        .for_each(|(xr, or)| super::norm::rms_norm(xr, gamma, eps, or));
}

/// `x += y` (`ggml_add` of the residual).
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `x *= s` when a `<w>.scale` tensor exists (`ggml_mul` by a one-element tensor).
pub fn scale(x: &mut [f32], s: Option<f32>) {
    if let Some(s) = s {
        x.iter_mut().for_each(|v| *v *= s);
    }
}

/// f32 → f16 into the KV cache (`ggml_cpy` to an F16 view: round to nearest even).
pub fn store_f16(src: &[f32], dst: &mut [f16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f16::from_f32(s);
    }
}
