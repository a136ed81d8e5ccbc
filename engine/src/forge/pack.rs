//! Packing float weights into bitnet.cpp's ternary layouts: I2_S, TQ1_0, TQ2_0.
//!
//! Each function mirrors a quantizer of the vendored source line by line (thresholds,
//! rounding and bit order included), so a file the forge writes holds exactly the bytes
//! bitnet.cpp's own quantizer would have produced from the same floats. Unpacking (the
//! engine's job) lives in `engine::quant`; the tests carry their own straightforward
//! unpackers.

// `n % k == 0` rather than `is_multiple_of` (stable only since 1.87; MSRV is 1.85).
#![allow(clippy::manual_is_multiple_of)]

use half::f16;

/// Values per I2_S block (`QK_I2` in `bitnet/src/ggml-bitnet-mad.cpp`).
pub const QK_I2: usize = 128;
/// Values per TQ1_0 / TQ2_0 block (`QK_K` in ggml-common.h).
pub const QK_K: usize = 256;
/// Bytes per TQ1_0 block: `qs[48]`, `qh[4]`, `d` (f16) — `block_tq1_0` in ggml-common.h.
pub const TQ1_0_BLOCK_BYTES: usize = 54;
/// Bytes per TQ2_0 block: `qs[64]`, `d` (f16) — `block_tq2_0` in ggml-common.h.
pub const TQ2_0_BLOCK_BYTES: usize = 66;

/// Packs a whole tensor (`values.len()` = rows × cols, row-major) as I2_S.
///
/// Mirrors `quantize_i2_s` in `bitnet/src/ggml-bitnet-mad.cpp`:
/// - scale = max |x| over the whole tensor, taken in double;
/// - code 1 (→ 0) where |x| < 1e-6, else 2 (→ +1) if x·scale > 0, else 0 (→ −1);
/// - blocks of 128 values → 32 bytes; value j of a block goes to byte j % 32 at shift
///   6 − 2·(j / 32), i.e. byte j holds values j, j+32, j+64, j+96 at shifts 6, 4, 2, 0;
/// - then the scale as f32 at byte n/4, zero padding to n/4 + 32 bytes in total (the size
///   `ggml_nbytes` reports for I2_S).
///
/// # Panics
/// If `values.len()` is not a multiple of 128 (`quantize_i2_s` would silently drop the tail).
pub fn pack_i2s(values: &[f32]) -> Vec<u8> {
    let n = values.len();
    assert!(
        n % QK_I2 == 0,
        "I2_S packs whole 128-value blocks, got {n} values"
    );
    let max = values
        .iter()
        .fold(0f64, |m, &x| m.max((f64::from(x)).abs()));
    let i2_scale = max;
    let mut out = vec![0u8; n / 4 + 32];
    for (block, chunk) in values.chunks_exact(QK_I2).enumerate() {
        for (j, &x) in chunk.iter().enumerate() {
            let code: u8 = if f64::from(x).abs() < 1e-6 {
                1
            } else if f64::from(x) * i2_scale > 0.0 {
                2
            } else {
                0
            };
            let group_idx = j / 32;
            let group_pos = j % 32;
            out[block * 32 + group_pos] |= code << (6 - 2 * group_idx);
        }
    }
    out[n / 4..n / 4 + 4].copy_from_slice(&(i2_scale as f32).to_le_bytes());
    out
}

/// `((uint16_t)q * 256 + (243 - 1)) / 243`: a base-3 number scaled to the byte range with
/// ceiling division (243 = 3^5), as in `quantize_row_tq1_0_ref`.
fn ceil_div_243(q: u8) -> u8 {
    (u16::from(q) * 256).div_ceil(243) as u8
}

/// `lroundf(x * id) + 1`: a value's trit code 0, 1, 2 for −1, 0, +1 (C's `lroundf` rounds
/// half away from zero, like `f32::round`).
fn trit(x: f32, id: f32) -> u8 {
    ((x * id).round() as i32 + 1) as u8
}

/// Per-block absolute max and its inverse, as the TQ reference quantizers compute them.
fn block_scale(block: &[f32]) -> (f32, f32) {
    let amax = block.iter().fold(0f32, |m, &v| m.max(v.abs()));
    let id = if amax != 0.0 { 1.0 / amax } else { 0.0 };
    (amax, id)
}

/// Packs values as TQ1_0 (1.6875 bits per weight).
///
/// Mirrors `quantize_row_tq1_0_ref` in `3rdparty/llama.cpp/ggml/src/ggml-quants.c`: per
/// 256-value block, d = max |x|; the first 240 values go five per byte (base-3 digits, most
/// significant first, then scaled by 256/243 with ceiling division) — 32 bytes covering
/// values m + 32·n, then 16 bytes covering the next 80 values as m + 16·n — and the last 16
/// values four per byte in `qh` (value j + 4·m), shifted up one trit; then d as f16.
///
/// # Panics
/// If `values.len()` is not a multiple of 256.
pub fn pack_tq1_0(values: &[f32]) -> Vec<u8> {
    assert!(
        values.len() % QK_K == 0,
        "TQ1_0 packs whole 256-value blocks, got {} values",
        values.len()
    );
    let mut out = Vec::with_capacity(values.len() / QK_K * TQ1_0_BLOCK_BYTES);
    for x in values.chunks_exact(QK_K) {
        let (d, id) = block_scale(x);
        let mut qs = [0u8; 48];
        let mut qh = [0u8; 4];
        // 5 elements per byte, along 32 bytes
        let x0 = &x[..160];
        for m in 0..32 {
            let mut q: u8 = 0;
            for n in 0..5 {
                q = q * 3 + trit(x0[m + n * 32], id);
            }
            qs[m] = ceil_div_243(q);
        }
        // along 16 bytes
        let x1 = &x[160..240];
        for m in 0..16 {
            let mut q: u8 = 0;
            for n in 0..5 {
                q = q * 3 + trit(x1[m + n * 16], id);
            }
            qs[32 + m] = ceil_div_243(q);
        }
        // 4 elements per byte
        let x2 = &x[240..256];
        for (j, h) in qh.iter_mut().enumerate() {
            let mut q: u8 = 0;
            for m in 0..4 {
                q = q * 3 + trit(x2[j + m * 4], id);
            }
            // shift the first value to the most significant trit
            q *= 3;
            *h = ceil_div_243(q);
        }
        out.extend_from_slice(&qs);
        out.extend_from_slice(&qh);
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    }
    out
}

/// Packs values as TQ2_0 (2.0625 bits per weight).
///
/// Mirrors `quantize_row_tq2_0_ref` in `3rdparty/llama.cpp/ggml/src/ggml-quants.c`: per
/// 256-value block, d = max |x|; two 32-byte halves, byte m of half h holding values
/// 128·h + m + 32·n at bits 2n (n = 0..4), code = round(x/d) + 1; then d as f16.
///
/// # Panics
/// If `values.len()` is not a multiple of 256.
pub fn pack_tq2_0(values: &[f32]) -> Vec<u8> {
    assert!(
        values.len() % QK_K == 0,
        "TQ2_0 packs whole 256-value blocks, got {} values",
        values.len()
    );
    let mut out = Vec::with_capacity(values.len() / QK_K * TQ2_0_BLOCK_BYTES);
    for x in values.chunks_exact(QK_K) {
        let (d, id) = block_scale(x);
        let mut qs = [0u8; 64];
        for (half, xh) in x.chunks_exact(128).enumerate() {
            for m in 0..32 {
                let mut q = 0u8;
                for n in 0..4 {
                    q += (trit(xh[m + n * 32], id) & 3) << (2 * n);
                }
                qs[half * 32 + m] = q;
            }
        }
        out.extend_from_slice(&qs);
        out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    }
    out
}

/// Values as little-endian f32 bytes (GGML_TYPE_F32).
pub fn pack_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Values as little-endian f16 bytes (GGML_TYPE_F16), rounded to nearest even like
/// `GGML_FP32_TO_FP16`.
pub fn pack_f16(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect()
}
