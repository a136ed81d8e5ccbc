//! Weight and activation formats the engine reads, mirroring bitnet.cpp bit for bit.
//!
//! - [`i2s`]: bitnet.cpp's I2_S ternary weights (GGUF type 36) and the int8 activation
//!   quantizer that goes with them (`quantize_row_i8_s`).
//! - [`i2s_vnni`]: the same I2_S integer dots on AVX-512 VNNI, for activation rows whose
//!   i16 lanes provably cannot wrap; unpack-once panels for prefill.
//! - [`tq1`], [`tq2`]: ggml's TQ1_0 / TQ2_0 ternary blocks (types 34 / 35).
//! - [`tq_vnni`]: their dots on AVX-512 VNNI, ggml's results bit for bit: decode streams
//!   and unpack-once panels for prefill.
//! - [`q8k`]: ggml's Q8_K activation blocks, the `vec_dot_type` of TQ1_0 and TQ2_0.
//!
//! All functions take raw little-endian byte slices straight from the mmap (unaligned).

// Loops index like the C they mirror.
#![allow(clippy::needless_range_loop)]

pub mod i2s;
pub mod i2s_vnni;
pub mod q8k;
pub mod tq1;
pub mod tq2;
pub mod tq_vnni;

/// ggml's `nearest_int(fval)` (ggml-quants.c): `fval + 12582912.f` (1.5·2²³), then the low
/// mantissa bits — a round-half-to-even of `fval` for |fval| ≤ 4194303.
///
/// Callers pass the product already rounded to f32 (`nearest_int(x * s)`, as the C
/// writes it). The oracle is built by clang, whose default `-ffp-contract=on` only fuses
/// within one source expression; the product is `nearest_int`'s argument, so it is rounded
/// before the add (checked in the oracle's object: `quantize_row_i8_s` and
/// `quantize_row_q8_K_ref` emit `vmulps`/`vmulss` then `vaddps`/`vaddss`, no `vfmadd`). A
/// GCC build (`-ffp-contract=fast`) would fuse them and round the exact product instead.
#[inline(always)]
pub fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12582912.0f32;
    ((val.to_bits() & 0x007f_ffff) as i32) - 0x0040_0000
}

/// f16 (raw little-endian bits) at element `i` of `bytes`, as f32.
#[inline(always)]
pub(crate) fn f16_at(bytes: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])).to_f32()
}

/// `interleave4`'s size check: `rows` rows of `rb` bytes need `rows·rb` bytes of input and
/// exactly as many of output. Returns that length and the number of whole groups of four.
pub(crate) fn interleave_sizes(
    rows_data: &[u8],
    rows: usize,
    rb: usize,
    out: &[u8],
) -> (usize, usize) {
    let n = rows * rb;
    assert!(
        rows_data.len() >= n && out.len() == n,
        "interleave4: {rows} rows of {rb} bytes need {n} bytes in and out, got {} and {}",
        rows_data.len(),
        out.len()
    );
    (n, rows / 4)
}

/// The machinery of [`i2s_vnni::interleave4`] (the TQ layouts of [`tq_vnni::interleave4`]
/// are not one run per group of rows): `rows` rows of
/// `rb` bytes from `rows_data` into `out` (as long), each group of four consecutive rows
/// (`4·rb` bytes, in parallel) rewritten by `group(src, dst)`, the rows past the last whole
/// group copied as they are.
pub(crate) fn interleave_groups_of_four(
    rows_data: &[u8],
    rows: usize,
    rb: usize,
    out: &mut [u8],
    group: impl Fn(&[u8], &mut [u8]) + Sync,
) {
    use rayon::prelude::*;
    let (n, groups) = interleave_sizes(rows_data, rows, rb, out);
    out.par_chunks_mut(4 * rb.max(1))
        .take(groups)
        .enumerate()
        .for_each(|(g, dst)| group(&rows_data[4 * g * rb..4 * (g + 1) * rb], dst));
    out[4 * groups * rb..].copy_from_slice(&rows_data[4 * groups * rb..n]);
}
