//! TQ1_0 and TQ2_0 matmul kernels on AVX-512 VNNI: the results of ggml's
//! `ggml_vec_dot_tq1_0_q8_K` / `ggml_vec_dot_tq2_0_q8_K` (ggml-quants.c, the `__AVX2__`
//! branch the oracle runs), bit for bit, streaming one token through the packed weights
//! (decode) or applying unpacked panels of weights to many tokens (prefill).
//!
//! ## What ggml computes
//!
//! Per block `b` of a row (256 weights with codes `c ∈ 0..=3` — TQ1_0 trits are 0..=2, a
//! TQ2_0 file may hold a 3, which ggml reads as +2 — against one Q8_K block of quants `q`
//! and sums `bsums`) ggml's AVX2 code forms eight i32 lanes (see [`super::q8k::tq_lanes`])
//!
//! `L_l = Σ_{i : (i mod 32)/4 = l} c_i·q_i − (bsums[2l] + bsums[2l+1])`, `l = 0..8`,
//!
//! then `sumf_l = (float)L_l · (y.d · x.d) + sumf_l` (a rounded product, then a rounded
//! add: the oracle's clang does not fuse them) block after block, and returns
//! `hsum_float_8(sumf)`.
//!
//! ## Why the integer part may be computed in any order
//!
//! ggml reaches `L_l` in i16 arithmetic. Every `vpmaddubsw` pair is at most
//! `2·3·128 = 768` in magnitude (it never saturates), an i16 lane adds eight such pairs
//! (≤ 6144) and subtracts one bsum (`|bsum| ≤ 16·128 = 2048`): every partial sum stays
//! within ±8192, so no i16 step wraps and ggml's lanes are the exact integers `L_l`.
//! (TQ1_0's codes are at most 2, which only lowers the bounds.) Any exact computation of
//! `L_l` gives the same integers: here `vpdpbusd` sums byte products into i32 lanes, and
//! the lanes of one block never exceed `256·3·128 + 8·2048` in magnitude. Only the float
//! steps need ggml's order, and they get it: per block, per lane, in block order, one
//! `vcvtdq2ps`, one `vmulps` by `y.d·x.d` (the f32 product of the two scales) and one
//! `vaddps`, then `hsum_float_8`. So every result equals ggml's, whatever the weights and
//! activations: unlike I2_S ([`super::i2s_vnni`]) no activation row needs a fallback.
//!
//! ## Where the products land
//!
//! `vpdpbusd` sums the four byte products of each dword into one i32 lane: byte `4k..4k+4`
//! of a 64-byte vector goes to lane `k`. The kernels arrange codes and quants so that dword
//! `k` only ever holds products of ggml lane `k mod 8`; folding lanes `k` and `k + 8` then
//! gives `L_l` (the negated bsums start in lanes 0..8). How the codes come out of the
//! packed bytes decides the quant order:
//!
//! - TQ2_0 ([`x86::tq2_dot_row`]): the 64 packed bytes shifted by `2l` and masked give
//!   values `32l + m` (bytes `m < 32`) and `128 + 32l + m` (bytes `32 + m`): plane `l`
//!   meets quants `[q[32l..][..32], q[128 + 32l..][..32]]`. From a model's copy
//!   ([`interleave4`], [`x86::tq2_dot_pairs`]) a vector holds 32 code bytes of each of two
//!   rows and meets one half of that line in both halves: dwords 0..8 are one row's ggml
//!   lanes and 8..16 the other's, with nothing to fold.
//! - TQ1_0 ([`x86::tq1_dot_row`]): the 52 packed bytes (`qs[48]`, `qh[4]`) with `qh`
//!   copied into dwords 12..15 go through a 256-entry table ([`TQ1_LUT`]) giving trits
//!   1..4 of a byte packed two bits each and ggml's own formula for trit 0 — exactly ggml's
//!   `((b·3ⁿ mod 256)·3) >> 8` for every byte value, checked exhaustively in the tests.
//!   Plane `n` holds trit `n` of every byte: bytes `m < 32` are values `32n + m`, bytes
//!   `32 + m'` of `qs[32..48]` values `160 + 16n + m'` (ggml lane `m'/4` for even `n`,
//!   `4 + m'/4` for odd `n`, so odd planes move them to dwords 12..15), and plane 0 takes
//!   the qh trits transposed into dwords 12..15 (trit `n` of `qh[j]` at byte `4n + j`:
//!   value `240 + 4n + j`, lane `4 + n`). Quants are zero wherever a plane holds nothing.
//!   Decoding, not memory, bounds it, so the driver hands it four rows at a time
//!   ([`x86::tq1_dot_rows`]) to overlap their decoding. From a model's copy
//!   ([`interleave4`], [`x86::tq1_dot_quint_pairs`]) a byte holds the trits of one value of
//!   five blocks (`t₀ + 3t₁ + 9t₂ + 27t₃ + 84t₄`): the byte's top six bits give `t₄` and
//!   `84t₄` (two `vpermb`), one lookup of the rest in a 128-entry table ([`TQ1_DIGITS`])
//!   the other four, and a vector decodes into 32 values of each of five blocks of each of
//!   two rows, in value order, meeting quant halves in value order — four `vpdpbusd` per
//!   block, no lane moves, three byte permutes per 320 trits, no lanes to fold.
//! - Prefill ([`x86::gemm_panel`]) unpacks each row once to one code byte per weight in
//!   32-value slices (TQ2_0 in slice order 0, 4, 1, 5, 2, 6, 3, 7 as its planes come out,
//!   TQ1_0 in value order), and pairs tokens: a 64-byte quant line holds one slice of two
//!   tokens, the 32 code bytes are broadcast to both halves, so lanes 0..8 and 8..16 of
//!   one accumulator are the lanes of two outputs and one vector op does the float step
//!   of both.

use super::q8k::{BlockQ8K, QK_K};

/// 64 bytes on a 64-byte boundary: the unit of every activation load of these kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct Line(pub [u8; 64]);

impl Default for Line {
    fn default() -> Self {
        Line([0; 64])
    }
}

impl Line {
    fn put_i8(&mut self, at: usize, q: &[i8]) {
        for (d, &s) in self.0[at..at + q.len()].iter_mut().zip(q) {
            *d = s as u8;
        }
    }

    fn put_u32(&mut self, lane: usize, v: u32) {
        self.0[4 * lane..4 * lane + 4].copy_from_slice(&v.to_le_bytes());
    }
}

/// The two ternary formats of these kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// TQ1_0, 54 bytes per block.
    Tq1,
    /// TQ2_0, 66 bytes per block.
    Tq2,
}

impl Format {
    /// Packed bytes per 256-weight block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Format::Tq1 => super::tq1::BLOCK_BYTES,
            Format::Tq2 => super::tq2::BLOCK_BYTES,
        }
    }

    /// Code planes (64-byte quant lines) per block of the decode kernel.
    pub const fn planes(self) -> usize {
        match self {
            Format::Tq1 => 5,
            Format::Tq2 => 4,
        }
    }

    /// Lines per block of one token's decode activations ([`decode_acts`]): the planes,
    /// then the negated bsums.
    pub const fn decode_lines(self) -> usize {
        self.planes() + 1
    }

    /// Lines of one token's decode activations for `nb` blocks ([`decode_acts`]): the
    /// `y.d` of every block (16 per line), then [`Format::decode_lines`] per block.
    pub const fn decode_len(self, nb: usize) -> usize {
        nb.div_ceil(16) + nb * self.decode_lines()
    }

    /// The value slice (32 values) held by each 32-byte slice of an unpacked block.
    pub const fn slice_order(self) -> [usize; 8] {
        match self {
            Format::Tq1 => [0, 1, 2, 3, 4, 5, 6, 7],
            Format::Tq2 => [0, 4, 1, 5, 2, 6, 3, 7],
        }
    }
}

/// Lines per (token pair, block) of prefill activations ([`pair_acts`]): eight quant lines,
/// the negated bsums of both tokens, their `d`s.
pub const PAIR_LINES: usize = 10;

/// Bytes of one unpacked block in a panel: one code byte per weight.
pub const PANEL_BLOCK: usize = QK_K;

/// `−(bsums[2l] + bsums[2l+1])` for `l` in 0..8: what ggml subtracts from lane `l`.
pub fn neg_bsum_lanes(y: &BlockQ8K) -> [i32; 8] {
    std::array::from_fn(|l| -(y.bsums[2 * l] as i32 + y.bsums[2 * l + 1] as i32))
}

/// One token's activations for the decode kernels: first the `y.d` of every block (f32,
/// 16 per line), then per block `fmt.planes()` quant lines in the order the kernel's code
/// planes come out (see the module documentation; zeros where a plane holds nothing) and
/// a line of `[−B_0..−B_7]` (i32, bytes 0..32). `out` holds `fmt.decode_len(y.len())`
/// lines.
pub fn decode_acts(fmt: Format, y: &[BlockQ8K], out: &mut [Line]) {
    let nl = fmt.decode_lines();
    assert_eq!(
        out.len(),
        fmt.decode_len(y.len()),
        "TQ decode activations: line count"
    );
    block_lines(y, out, nl, |yb, lines| {
        let q = &yb.qs;
        match fmt {
            Format::Tq2 => {
                for l in 0..4 {
                    lines[l].put_i8(0, &q[32 * l..32 * l + 32]);
                    lines[l].put_i8(32, &q[128 + 32 * l..128 + 32 * l + 32]);
                }
            }
            Format::Tq1 => {
                for n in 0..5 {
                    lines[n].put_i8(0, &q[32 * n..32 * n + 32]);
                    let tail = &q[160 + 16 * n..160 + 16 * n + 16];
                    // Even planes keep qs[32..48] in dwords 8..11, odd planes in 12..15.
                    lines[n].put_i8(if n % 2 == 0 { 32 } else { 48 }, tail);
                }
                lines[0].put_i8(48, &q[240..256]);
            }
        }
    });
}

/// The lines of one token's activations the TQ decode kernels read: the `y.d` of every block
/// (16 per line), then `nl` lines per block, zeroed, the first `nl − 1` filled by
/// `quants(block, lines)` and the last `[−B_0..−B_7]` (i32, bytes 0..32).
fn block_lines(
    y: &[BlockQ8K],
    out: &mut [Line],
    nl: usize,
    quants: impl Fn(&BlockQ8K, &mut [Line]),
) {
    let (ds, blocks) = out.split_at_mut(y.len().div_ceil(16));
    ds.fill(Line::default());
    for (b, yb) in y.iter().enumerate() {
        ds[b / 16].put_u32(b % 16, yb.d.to_bits());
    }
    for (yb, lines) in y.iter().zip(blocks.chunks_exact_mut(nl)) {
        lines.fill(Line::default());
        quants(yb, &mut lines[..nl - 1]);
        for (l, v) in neg_bsum_lanes(yb).into_iter().enumerate() {
            lines[nl - 1].put_u32(l, v as u32);
        }
    }
}

/// Lines per block of one token's activations for the TQ1_0 copy's kernel
/// ([`tq1_copy_acts`]): four quant lines, then the negated bsums.
pub const TQ1_COPY_LINES: usize = 5;

/// Lines of [`tq1_copy_acts`] for `nb` blocks: the `y.d` of every block (16 per line), then
/// [`TQ1_COPY_LINES`] per block.
pub const fn tq1_copy_acts_len(nb: usize) -> usize {
    nb.div_ceil(16) + nb * TQ1_COPY_LINES
}

/// One token's activations for the TQ1_0 copy's kernels ([`x86::tq1_dot_quint_pairs`],
/// [`x86::tq1_dot_quint_row`]): as [`decode_acts`] (the `y.d`s,
/// then per block its quant lines and `[−B_0..−B_7]`), with the quants in value order,
/// `q[64v..64v + 64]` in line `v`. `out` holds [`tq1_copy_acts_len`]`(y.len())` lines.
pub fn tq1_copy_acts(y: &[BlockQ8K], out: &mut [Line]) {
    assert_eq!(
        out.len(),
        tq1_copy_acts_len(y.len()),
        "TQ1_0 copy activations: line count"
    );
    block_lines(y, out, TQ1_COPY_LINES, |yb, lines| {
        for (v, line) in lines.iter_mut().enumerate() {
            line.put_i8(0, &yb.qs[64 * v..64 * v + 64]);
        }
    });
}

/// Activations of tokens `a` and `b` (`None`: a dummy token of zeros) for the prefill tile:
/// per block, eight lines `[slice of a | slice of b]` in `fmt.slice_order()`, then
/// `[−B of a | −B of b]` (i32) and `[a.d × 8 | b.d × 8]` (f32). `out` holds
/// `a.len()·PAIR_LINES` lines.
pub fn pair_acts(fmt: Format, a: &[BlockQ8K], b: Option<&[BlockQ8K]>, out: &mut [Line]) {
    assert_eq!(
        out.len(),
        a.len() * PAIR_LINES,
        "TQ pair activations: line count"
    );
    if let Some(b) = b {
        assert_eq!(a.len(), b.len(), "TQ pair activations: block counts differ");
    }
    let order = fmt.slice_order();
    for (i, lines) in out.chunks_exact_mut(PAIR_LINES).enumerate() {
        lines.fill(Line::default());
        for (half, y) in [Some(&a[i]), b.map(|b| &b[i])].into_iter().enumerate() {
            let Some(y) = y else { continue };
            for (k, &s) in order.iter().enumerate() {
                lines[k].put_i8(32 * half, &y.qs[32 * s..32 * s + 32]);
            }
            for (l, v) in neg_bsum_lanes(y).into_iter().enumerate() {
                lines[8].put_u32(8 * half + l, v as u32);
                lines[9].put_u32(8 * half + l, y.d.to_bits());
            }
        }
    }
}

/// ggml's trit `n` of a TQ1_0 byte: `((b·3ⁿ mod 256)·3) >> 8` (`dequantize_row_tq1_0`).
pub const fn tq1_trit(b: u8, n: u32) -> u8 {
    let q = b.wrapping_mul(3u8.pow(n));
    ((q as u16 * 3) >> 8) as u8
}

/// The table of the TQ1_0 kernels, indexed by a packed byte: its trits 1..4 two bits
/// each (`t1 | t2 << 2 | t3 << 4 | t4 << 6`). Trit 0 the kernels compute as ggml does.
pub static TQ1_LUT: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let v = b as u8;
        t[b] = tq1_trit(v, 1) | tq1_trit(v, 2) << 2 | tq1_trit(v, 3) << 4 | tq1_trit(v, 4) << 6;
        b += 1;
    }
    t
};

/// The table of the TQ1_0 copy's kernels ([`x86::tq1_dot_quint_pairs`]), indexed by a number
/// `x < 81`: its four base-3 digits two bits each (`t0 | t1 << 2 | t2 << 4 | t3 << 6` for
/// `x = t0 + 3·t1 + 9·t2 + 27·t3`); zero past 80.
pub static TQ1_DIGITS: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut x = 0;
    while x < 81 {
        t[x] = ((x % 3) | ((x / 3 % 3) << 2) | ((x / 9 % 3) << 4) | ((x / 27) << 6)) as u8;
        x += 1;
    }
    t
};

/// What a quint byte of [`interleave4`]'s TQ1_0 layout adds per unit of its fifth trit:
/// byte `= x + 84·t₄` with `x = t₀ + 3t₁ + 9t₂ + 27t₃ < 81`, so the three `t₄` fall in
/// 0..84, 84..168, 168..252 and the byte's top six bits tell them apart.
pub const QUINT_STEP: u8 = 84;

/// `t₄` of a quint byte by its top six bits (`byte >> 2`).
pub static QUINT_T4: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        t[i] = (4 * i / QUINT_STEP as usize) as u8;
        i += 1;
    }
    t
};

/// `84·t₄` of a quint byte by its top six bits: the byte minus this is `x`.
pub static QUINT_BASE: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        t[i] = QUINT_T4[i] * QUINT_STEP;
        i += 1;
    }
    t
};

/// Bytes of [`interleave4`]'s copy of `rows` rows of `cols` weights in `fmt`: TQ2_0's is as
/// long as the rows; TQ1_0's holds [`tq1_code_bytes`] and the `nb` scales of every row.
pub const fn copy_len(fmt: Format, rows: usize, cols: usize) -> usize {
    let nb = cols / QK_K;
    match fmt {
        Format::Tq1 => rows * (tq1_code_bytes(nb) + 2 * nb),
        Format::Tq2 => rows * nb * Format::Tq2.block_bytes(),
    }
}

/// Code bytes of one row of `nb` blocks in [`interleave4`]'s TQ1_0 layout: 256 per *quint*
/// (five consecutive blocks, five trits to a byte), 64 per block past the last whole quint
/// (four trits to a byte).
pub const fn tq1_code_bytes(nb: usize) -> usize {
    256 * (nb / 5) + 64 * (nb % 5)
}

/// Where the rows from `r0` of [`interleave4`]'s TQ1_0 layout of `rows` rows of `nb` blocks
/// keep their codes and their scales: byte offsets.
pub const fn tq1_rows_at(rows: usize, nb: usize, r0: usize) -> (usize, usize) {
    let cb = tq1_code_bytes(nb);
    (cb * r0, cb * rows + 2 * nb * r0)
}

/// TQ1_0 or TQ2_0 rows (`rows` of `cols/256` blocks) rewritten into `out`
/// ([`copy_len`] bytes) in the layout the decode kernels read four rows at a time as *one*
/// stream, as [`super::i2s_vnni::interleave4`] for I2_S and for the same reason.
///
/// - TQ2_0 (read by [`x86::tq2_dot_pairs`]): two rows to a vector, see [`pair_tq2`]; rows
///   past the last whole group of four stay as they are, at the same offsets.
/// - TQ1_0 (read by [`x86::tq1_dot_quint_pairs`], the last `rows mod 4` rows by
///   [`x86::tq1_dot_quint_row`]): the trits re-packed so that one vector decodes into five
///   blocks' quants of two rows, see [`quint_tq1`].
pub fn interleave4(fmt: Format, rows_data: &[u8], rows: usize, cols: usize, out: &mut [u8]) {
    assert!(
        cols.is_multiple_of(QK_K),
        "interleave4: {cols} columns, not whole blocks"
    );
    let nb = cols / QK_K;
    match fmt {
        Format::Tq1 => quint_tq1(rows_data, rows, nb, out),
        Format::Tq2 => pair_tq2(rows_data, rows, nb, out),
    }
}

/// The trits (0..=2) of `n` consecutive TQ1_0 blocks at `src`, 256 per block in value order:
/// [`super::tq1::decode_block`]'s, by the prefill's vector unpacking ([`x86::unpack_panel`])
/// where it runs (a model's copy is made only there; it took a third of a 2B-4T load scalar).
fn tq1_codes(src: &[u8], n: usize) -> Vec<u8> {
    let bb = Format::Tq1.block_bytes();
    assert!(
        src.len() >= n * bb,
        "tq1_codes: {n} blocks, {} bytes",
        src.len()
    );
    let mut codes = vec![0u8; n * QK_K];
    #[cfg(target_arch = "x86_64")]
    if available() {
        let mut xd = vec![0f32; n];
        // SAFETY: the CPU has what the kernels need (`available`); `src` holds the n blocks'
        // n·54 bytes (asserted), `codes` n·256 bytes and `xd` n f32, separate buffers.
        unsafe {
            x86::unpack_panel(
                Format::Tq1,
                src.as_ptr(),
                1,
                n,
                codes.as_mut_ptr(),
                xd.as_mut_ptr(),
            )
        };
        return codes;
    }
    for (b, c) in src.chunks_exact(bb).zip(codes.chunks_exact_mut(QK_K)) {
        c.copy_from_slice(&super::tq1::decode_block(b).0);
    }
    codes
}

/// [`interleave4`] for TQ1_0. A row's *quint* `q` (blocks `5q..5q + 5`) is 256 bytes, byte
/// `j` holding the trits of value `j` of the five blocks as `t₀ + 3t₁ + 9t₂ + 27t₃ + 84t₄`
/// (`tₙ` of block `5q + n`, [`QUINT_STEP`]); a block `k` past the last whole quint is 64
/// bytes, byte `j` holding its values `j`, `64 + j`, `128 + j`, `192 + j` as
/// `t₀ + 3t₁ + 9t₂ + 27t₃`. The trits are ggml's (`dequantize_row_tq1_0`,
/// [`super::tq1::decode_block`]) for every byte value. The rows go in groups of four, the
/// last `rows mod 4` rows each a group of one; a group's codes start at [`tq1_rows_at`]`.0`
/// (per quint, then per block past the quints, all its rows' units together). A group of
/// one holds its row's units as they are; a group of four gives each unit (of rows 0..4,
/// `4·unit` bytes) first to rows 0 and 1, then to rows 2 and 3, in vectors of 32 bytes of
/// each of the pair (`[row 0's bytes 32u..32u + 32 | row 1's]`, u = 0, 1, …). Every row's
/// `nb` scales (f16, in block order) follow all the codes, row after row.
fn quint_tq1(rows_data: &[u8], rows: usize, nb: usize, out: &mut [u8]) {
    use rayon::prelude::*;
    let bb = Format::Tq1.block_bytes();
    let rb = nb * bb;
    let cb = tq1_code_bytes(nb);
    assert!(
        rows_data.len() >= rows * rb && out.len() == copy_len(Format::Tq1, rows, nb * QK_K),
        "interleave4: {rows} rows of {nb} TQ1_0 blocks need {} bytes in and {} out, got {} \
         and {}",
        rows * rb,
        copy_len(Format::Tq1, rows, nb * QK_K),
        rows_data.len(),
        out.len()
    );
    let (codes, scales) = out.split_at_mut(rows * cb);
    let full = rows / 4 * 4;
    // Groups of four rows, then the others one by one: (first row, rows) of each.
    let groups: Vec<(usize, usize)> = (0..full)
        .step_by(4)
        .map(|r0| (r0, 4))
        .chain((full..rows).map(|r| (r, 1)))
        .collect();
    let mut dsts = Vec::with_capacity(groups.len());
    let mut rest = codes;
    for &(_, n) in &groups {
        let (d, t) = rest.split_at_mut(n * cb);
        dsts.push(d);
        rest = t;
    }
    groups.into_par_iter().zip(dsts).for_each(|((r0, n), dst)| {
        let trits = tq1_codes(&rows_data[r0 * rb..][..n * rb], n * nb);
        // Block `b` of the group's row `r`: its 256 trits in value order.
        let block = |r: usize, b: usize| -> &[u8; QK_K] {
            trits[QK_K * (r * nb + b)..][..QK_K].try_into().unwrap()
        };
        let nq = nb / 5;
        // Each row's bytes whole (a group of one keeps them so), then paired.
        let mut plain = vec![0u8; dst.len()];
        let (quints, tail) = plain.split_at_mut(256 * nq * n);
        for (i, o) in quints.chunks_exact_mut(256).enumerate() {
            let (q, r) = (i / n, i % n);
            let t = [0, 1, 2, 3, 4].map(|k| block(r, 5 * q + k));
            for (j, o) in o.iter_mut().enumerate() {
                *o = t[0][j] + 3 * t[1][j] + 9 * t[2][j] + 27 * t[3][j] + QUINT_STEP * t[4][j];
            }
        }
        for (i, o) in tail.chunks_exact_mut(64).enumerate() {
            let (k, r) = (i / n, i % n);
            let t = block(r, 5 * nq + k);
            for (j, o) in o.iter_mut().enumerate() {
                *o = t[j] + 3 * t[64 + j] + 9 * t[128 + j] + 27 * t[192 + j];
            }
        }
        if n == 1 {
            dst.copy_from_slice(&plain);
            return;
        }
        // A unit (a quint's 256 bytes per row, or a block's 64) of rows 0..4 in turn
        // becomes, per pair of rows (0, 1), (2, 3), vectors of 32 bytes of each.
        let pair_up = |src: &[u8], dst: &mut [u8], unit: usize| {
            for p in 0..2 {
                for u in 0..unit / 32 {
                    for h in 0..2 {
                        let at = 2 * unit * p + 64 * u + 32 * h;
                        let from = unit * (2 * p + h) + 32 * u;
                        dst[at..at + 32].copy_from_slice(&src[from..from + 32]);
                    }
                }
            }
        };
        let (pq, pt) = plain.split_at(256 * nq * n);
        let (dq, dt) = dst.split_at_mut(256 * nq * n);
        for (src, dst) in pq.chunks_exact(1024).zip(dq.chunks_exact_mut(1024)) {
            pair_up(src, dst, 256);
        }
        for (src, dst) in pt.chunks_exact(256).zip(dt.chunks_exact_mut(256)) {
            pair_up(src, dst, 64);
        }
    });
    for (r, d) in scales
        .chunks_exact_mut(2 * nb.max(1))
        .enumerate()
        .take(rows)
    {
        for (b, d) in d.chunks_exact_mut(2).enumerate() {
            d.copy_from_slice(&rows_data[r * rb + b * bb + bb - 2..][..2]);
        }
    }
}

/// Where group `g` (rows `4g..4g + 4`) of [`interleave4`]'s TQ2_0 layout of `rows` rows of
/// `nb` blocks keeps its codes (`256·nb` bytes) and its scales (`8·nb`): their byte
/// offsets.
pub const fn tq2_group_at(rows: usize, nb: usize, g: usize) -> (usize, usize) {
    (256 * nb * g, 256 * nb * (rows / 4) + 8 * nb * g)
}

/// [`interleave4`] for TQ2_0: per group of four rows A, B, C, D and block `b`, the codes as
/// four 64-byte vectors `[A.qs[..32] | B.qs[..32]]`, `[A.qs[32..] | B.qs[32..]]`, the same
/// for C and D; every group's codes first, then every group's scales (`A.d, B.d, C.d,
/// D.d` of each block), then the rows past the last whole group at their own offsets
/// ([`tq2_group_at`]).
fn pair_tq2(rows_data: &[u8], rows: usize, nb: usize, out: &mut [u8]) {
    use rayon::prelude::*;
    let bb = Format::Tq2.block_bytes();
    let rb = nb * bb;
    let (n, groups) = super::interleave_sizes(rows_data, rows, rb, out);
    let (qs, rest) = out.split_at_mut(groups * 256 * nb);
    let (ds, tail) = rest.split_at_mut(groups * 8 * nb);
    qs.par_chunks_mut((256 * nb).max(1))
        .zip(ds.par_chunks_mut((8 * nb).max(1)))
        .enumerate()
        .for_each(|(g, (q, d))| {
            let src = &rows_data[4 * g * rb..4 * (g + 1) * rb];
            for b in 0..nb {
                for k in 0..4 {
                    let x = &src[k * rb + b * bb..][..bb];
                    let (pair, half) = (k / 2, k % 2);
                    let v = 256 * b + 128 * pair + 32 * half;
                    q[v..v + 32].copy_from_slice(&x[..32]);
                    q[v + 64..v + 96].copy_from_slice(&x[32..64]);
                    d[8 * b + 2 * k..8 * b + 2 * k + 2].copy_from_slice(&x[64..66]);
                }
            }
        });
    tail.copy_from_slice(&rows_data[4 * groups * rb..n]);
}

/// Whether this CPU runs these kernels: AVX-512 F/BW/VL with VNNI (`vpdpbusd`), VBMI
/// (`vpermi2b`, the TQ1_0 tables) and GFNI (`vgf2p8affineqb`, two-bit fields of a byte),
/// checked once. (Zen 4 and Intel since Ice Lake have them all.)
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            super::i2s_vnni::has_vnni()
                && std::arch::is_x86_feature_detected!("avx512vbmi")
                && std::arch::is_x86_feature_detected!("gfni")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Rows per register tile of [`x86::gemm_panel`].
pub const TILE_ROWS: usize = 4;
/// Token pairs per register tile of [`x86::gemm_panel`].
pub const TILE_PAIRS: usize = 3;

#[cfg(target_arch = "x86_64")]
pub mod x86 {
    use super::{Format, Line, PAIR_LINES, PANEL_BLOCK, TQ1_LUT};
    use crate::kernels::{prefetch, prefetch_stream, PREFETCH_BYTES};
    use crate::quant::q8k::hsum_float_8;
    use std::arch::x86_64::*;

    /// `hsum_float_8` of a vector of eight lanes.
    ///
    /// # Safety
    /// The CPU has AVX (always inlined into the kernels below, which have AVX-512).
    #[inline(always)]
    unsafe fn hsum8(v: __m256) -> f32 {
        let mut l = [0f32; 8];
        _mm256_storeu_ps(l.as_mut_ptr(), v);
        hsum_float_8(&l)
    }

    /// The f16 at `p` (two little-endian bytes, unaligned), as f32.
    ///
    /// # Safety
    /// `p` points to two readable bytes; the CPU has F16C (inlined into the kernels below).
    #[inline(always)]
    unsafe fn f16_at(p: *const u8) -> f32 {
        let h = std::ptr::read_unaligned(p as *const u16);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
    }

    /// ggml's float step of one block: fold lanes `k` and `k + 8`, then
    /// `sumf = (float)L · d + sumf` on eight lanes, unfused.
    ///
    /// # Safety
    /// The CPU has AVX-512 F (inlined into the kernels below). Register-only.
    #[inline(always)]
    unsafe fn block_step(acc: __m512i, d: f32, sumf: __m256) -> __m256 {
        let l = _mm256_add_epi32(
            _mm512_castsi512_si256(acc),
            _mm512_extracti64x4_epi64::<1>(acc),
        );
        _mm256_add_ps(
            _mm256_mul_ps(_mm256_cvtepi32_ps(l), _mm256_set1_ps(d)),
            sumf,
        )
    }

    /// ggml's float steps of two consecutive blocks (`a`, then `b`) at once: both folds in
    /// one vector (`[L_a | L_b]`), one conversion, one multiply by `[d_a × 8 | d_b × 8]`
    /// (`d = y.d · x.d`, from the two f16 `x.d` in `xd2` and the two f32 `y.d` at `yd`),
    /// then `sumf + a`, then `+ b`, in that order.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and F16C (inlined into the kernels below); `yd` points to two
    /// readable f32.
    #[inline(always)]
    unsafe fn pair_step(a: __m512i, b: __m512i, xd2: u32, yd: *const f32, sumf: __m256) -> __m256 {
        let l = _mm512_add_epi32(
            _mm512_shuffle_i64x2::<0b01_00_01_00>(a, b),
            _mm512_shuffle_i64x2::<0b11_10_11_10>(a, b),
        );
        let xd = _mm_cvtph_ps(_mm_cvtsi32_si128(xd2 as i32));
        let d = _mm_mul_ps(_mm_castpd_ps(_mm_load_sd(yd as *const f64)), xd);
        let dv = _mm512_permutexvar_ps(
            _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
            _mm512_castps128_ps512(d),
        );
        let g = _mm512_mul_ps(_mm512_cvtepi32_ps(l), dv);
        let sumf = _mm256_add_ps(_mm512_castps512_ps256(g), sumf);
        _mm256_add_ps(
            _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(g))),
            sumf,
        )
    }

    /// The raw f16 bits at `p` (unaligned).
    ///
    /// # Safety
    /// `p` points to two readable bytes.
    #[inline(always)]
    unsafe fn f16_bits(p: *const u8) -> u32 {
        std::ptr::read_unaligned(p as *const u16) as u32
    }

    /// The negated bsums of a decode block's last line (bytes 0..32) in lanes 0..8, zeros
    /// above.
    ///
    /// # Safety
    /// `tail` points to a readable [`Line`]; the CPU has AVX-512 F (inlined).
    #[inline(always)]
    unsafe fn neg_bsums(tail: *const Line) -> __m512i {
        _mm512_zextsi256_si512(_mm256_load_si256(tail as *const __m256i))
    }

    /// `vgf2p8affineqb` matrices taking bits `s, s + 1` of every byte to bits 0, 1 (row
    /// `7 − i` of the matrix selects the input bits of output bit `i`): `(x >> s) & 3`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F (inlined). Register-only.
    #[inline(always)]
    unsafe fn field(s: u32) -> __m512i {
        _mm512_set1_epi64((((1u64 << s) << 56) | ((1u64 << (s + 1)) << 48)) as i64)
    }

    /// The lanes of one TQ2_0 block (64 code bytes at `x`) against its decode lines `a`:
    /// `Σ code·q` per dword plus `[−B | 0]`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VNNI and GFNI (inlined into [`tq2_dot_row`]); `x` points to
    /// 64 readable bytes and `a` to 5 lines.
    #[inline(always)]
    unsafe fn tq2_block(x: *const u8, a: *const Line, f: &[__m512i; 3]) -> __m512i {
        let w = _mm512_loadu_si512(x as *const _);
        let ld = |k: usize| _mm512_load_si512(a.add(k) as *const _);
        let c0 = _mm512_and_si512(w, _mm512_set1_epi8(3));
        let acc0 = _mm512_dpbusd_epi32(neg_bsums(a.add(4)), c0, ld(0));
        let acc1 = _mm512_dpbusd_epi32(
            _mm512_setzero_si512(),
            _mm512_gf2p8affine_epi64_epi8::<0>(w, f[0]),
            ld(1),
        );
        let acc0 = _mm512_dpbusd_epi32(acc0, _mm512_gf2p8affine_epi64_epi8::<0>(w, f[1]), ld(2));
        let acc1 = _mm512_dpbusd_epi32(acc1, _mm512_gf2p8affine_epi64_epi8::<0>(w, f[2]), ld(3));
        _mm512_add_epi32(acc0, acc1)
    }

    /// One TQ2_0 row (`nb` blocks of 66 bytes at `row`) against one token's decode
    /// activations ([`super::decode_acts`] with [`Format::Tq2`]): ggml's dot, bit for bit.
    /// [`tq2_dot_rows`] of one row (the driver's last `rows mod 4` rows of a task).
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/VNNI and GFNI ([`super::available`]); `row` holds `66·nb`
    /// readable bytes (block `b` loads 64 bytes at `66b` and two at `66b + 64`) and `acts`
    /// `Format::Tq2.decode_len(nb)` lines.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,gfni,avx2,fma,f16c")]
    pub unsafe fn tq2_dot_row(row: *const u8, acts: *const Line, nb: usize) -> f32 {
        tq2_dot_rows::<1>(row, acts, nb)[0]
    }

    /// One TQ2_0 row's dot (as [`tq2_dot_row`]) for `R` consecutive rows (`66·nb` bytes
    /// apart from `rows`) at once, side by side, block pair by block pair: every row keeps
    /// its own float sum in ggml's order (bit for bit ggml's dot), and each step's
    /// activation lines serve the `R` rows. Prefetches the next `R` rows front to back
    /// (`prefetch_next`). (On the Xeon, two or four rows side by side, each prefetched in
    /// its own stream, had been slower than one: 11.0–11.2 → 10.1–10.5 tok/s. This form is
    /// not measured there.) Where a model holds its rows in [`super::interleave4`]'s layout,
    /// [`tq2_dot_pairs`] reads them instead.
    ///
    /// # Safety
    /// As [`tq2_dot_row`] for each of the `R` rows (`R·66·nb` bytes at `rows`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,gfni,avx2,fma,f16c")]
    pub unsafe fn tq2_dot_rows<const R: usize>(
        rows: *const u8,
        acts: *const Line,
        nb: usize,
    ) -> [f32; R] {
        const BB: usize = Format::Tq2.block_bytes();
        const LINES: usize = Format::Tq2.decode_lines();
        let f = [field(2), field(4), field(6)];
        let rb = BB * nb;
        let yd = acts as *const f32;
        let blocks = acts.add(nb.div_ceil(16));
        let at = |r: usize, b: usize| block_at(rows, rb, BB, r, b);
        let mut sumf = [_mm256_setzero_ps(); R];
        let mut b = 0;
        while b + 2 <= nb {
            prefetch_next::<R>(rows, rb, BB * b, 2 * BB);
            for (r, sumf) in sumf.iter_mut().enumerate() {
                let (xa, xb) = (at(r, b), at(r, b + 1));
                let acc_a = tq2_block(xa, blocks.add(LINES * b), &f);
                let acc_b = tq2_block(xb, blocks.add(LINES * (b + 1)), &f);
                let xd2 = f16_bits(xa.add(BB - 2)) | f16_bits(xb.add(BB - 2)) << 16;
                *sumf = pair_step(acc_a, acc_b, xd2, yd.add(b), *sumf);
            }
            b += 2;
        }
        if b < nb {
            for (r, sumf) in sumf.iter_mut().enumerate() {
                let x = at(r, b);
                let acc = tq2_block(x, blocks.add(LINES * b), &f);
                *sumf = block_step(acc, *yd.add(b) * f16_at(x.add(BB - 2)), *sumf);
            }
        }
        sumf.map(|v| hsum8(v))
    }

    /// [`tq2_dot_row`] of the four rows of one group of [`super::interleave4`]'s TQ2_0
    /// layout (`qs`, `ds` from [`super::tq2_group_at`]), bit for bit: two rows share every
    /// vector, row A's codes in bytes 0..32 and row B's in bytes 32..64, each half meeting
    /// the same 32 quants (an activation line's half broadcast to both), so an
    /// accumulator's dwords 0..8 are A's ggml lanes and 8..16 B's. No lanes are folded
    /// (the file-layout kernels fold dwords `k` and `k + 8` of each row), and one
    /// conversion, multiplication by `[A's d × 8 | B's d × 8]` and addition is the float
    /// step of both rows: per block, per lane, in block order, `sumf = (float)L·d + sumf`
    /// unfused, as ggml. On the EPYC the kernel's perf samples per F16-head sample went
    /// from 1.05–1.19 to 0.91–0.97 on one thread (`docs/performance.md`, "TQ2_0: two rows
    /// to a vector").
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/VNNI and GFNI ([`super::available`]); `qs` holds `256·nb`
    /// readable bytes and `ds` `8·nb`; `acts` as for [`tq2_dot_row`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,gfni,avx2,fma,f16c")]
    pub unsafe fn tq2_dot_pairs(
        qs: *const u8,
        ds: *const u8,
        acts: *const Line,
        nb: usize,
    ) -> [f32; 4] {
        const LINES: usize = Format::Tq2.decode_lines();
        let f = [field(2), field(4), field(6)];
        let yd = acts as *const f32;
        let blocks = acts.add(nb.div_ceil(16));
        let three = _mm512_set1_epi8(3);
        let idx = [
            _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
            _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3),
        ];
        let mut sumf = [_mm512_setzero_ps(); 2];
        for b in 0..nb {
            prefetch_ahead(qs.add(256 * b), 256);
            let a = blocks.add(LINES * b) as *const u8;
            let lo =
                |k: usize| _mm512_broadcast_i64x4(_mm256_load_si256(a.add(64 * k) as *const _));
            let hi = |k: usize| {
                _mm512_broadcast_i64x4(_mm256_load_si256(a.add(64 * k + 32) as *const _))
            };
            let xd = _mm_cvtph_ps(_mm_loadl_epi64(ds.add(8 * b) as *const __m128i));
            let d4 = _mm512_castps128_ps512(_mm_mul_ps(_mm_set1_ps(*yd.add(b)), xd));
            for (p, sumf) in sumf.iter_mut().enumerate() {
                let w0 = _mm512_loadu_si512(qs.add(256 * b + 128 * p) as *const _);
                let w1 = _mm512_loadu_si512(qs.add(256 * b + 128 * p + 64) as *const _);
                let mut acc0 = _mm512_dpbusd_epi32(lo(4), _mm512_and_si512(w0, three), lo(0));
                let mut acc1 =
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(w1, three), hi(0));
                for (k, f) in f.iter().enumerate() {
                    acc0 = _mm512_dpbusd_epi32(
                        acc0,
                        _mm512_gf2p8affine_epi64_epi8::<0>(w0, *f),
                        lo(k + 1),
                    );
                    acc1 = _mm512_dpbusd_epi32(
                        acc1,
                        _mm512_gf2p8affine_epi64_epi8::<0>(w1, *f),
                        hi(k + 1),
                    );
                }
                let l = _mm512_add_epi32(acc0, acc1);
                let dv = _mm512_permutexvar_ps(idx[p], d4);
                *sumf = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(l), dv), *sumf);
            }
        }
        pair_sums(sumf)
    }

    /// The four rows' results of a paired kernel's two accumulators (rows 0 and 1 in the
    /// halves of the first, rows 2 and 3 in the second): each half's eight ggml lanes summed
    /// as [`hsum8`] does for one row.
    ///
    /// # Safety
    /// The CPU has AVX-512 F (inlined). Register-only.
    #[inline(always)]
    unsafe fn pair_sums(sumf: [__m512; 2]) -> [f32; 4] {
        let half = |v: __m512, k: usize| {
            if k == 0 {
                _mm512_castps512_ps256(v)
            } else {
                _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))
            }
        };
        [
            hsum8(half(sumf[0], 0)),
            hsum8(half(sumf[0], 1)),
            hsum8(half(sumf[1], 0)),
            hsum8(half(sumf[1], 1)),
        ]
    }

    /// The prefetches of one step of a side-by-side kernel over `R` consecutive rows of `rb`
    /// bytes from `rows` that has read `done` bytes of each row and now reads `step` more
    /// (a block pair): the step's share of the *next* `R` rows (`R·rb` bytes on), taken in
    /// memory order, bytes `R·done .. R·(done + step)` of them (64 bytes apart, so
    /// consecutive steps leave no line out). One sequential stream: an AMD Zen 4's hardware
    /// prefetchers do not follow `R` interleaved streams, and prefetching the same lines in
    /// the interleaved order did not rescue them (`quant::i2s_vnni::x86::dot_rows4`;
    /// `docs/performance.md`, "The EPYC again"). A hint: it may reach past the matrix.
    #[inline(always)]
    fn prefetch_next<const R: usize>(rows: *const u8, rb: usize, done: usize, step: usize) {
        let (at, len) = (rows.wrapping_add(R * rb + R * done), R * step);
        let mut o = 0;
        while o < len {
            prefetch(at.wrapping_add(o));
            o += 64;
        }
    }

    /// The prefetches of one step of a kernel reading a group of [`super::interleave4`]'s
    /// layout, which reads `len` bytes from `p` now: those bytes [`PREFETCH_BYTES`] on, as
    /// every single-stream kernel prefetches (`kernels::prefetch_stream`: none on a Zen 4).
    #[inline(always)]
    fn prefetch_ahead(p: *const u8, len: usize) {
        let mut o = 0;
        while o < len {
            prefetch_stream(p.wrapping_add(PREFETCH_BYTES + o));
            o += 64;
        }
    }

    /// Block `b` of row `r` of the rows at `rows`, `rb` bytes apart (the file's layout).
    ///
    /// # Safety
    /// The block lies within the rows the caller's kernel may read (as `pointer::add`).
    #[inline(always)]
    unsafe fn block_at(rows: *const u8, rb: usize, bb: usize, r: usize, b: usize) -> *const u8 {
        rows.add(r * rb + bb * b)
    }

    /// The TQ1_0 table ([`TQ1_LUT`]) as four vectors: entries 0..64, 64..128, 128..192,
    /// 192..256.
    struct Lut([__m512i; 4]);

    /// # Safety
    /// The CPU has AVX-512 F (inlined into the kernels below); the loads read the
    /// 256-byte [`TQ1_LUT`].
    #[inline(always)]
    unsafe fn lut() -> Lut {
        let ld = |k: usize| _mm512_loadu_si512(TQ1_LUT.as_ptr().add(64 * k) as *const _);
        Lut([ld(0), ld(1), ld(2), ld(3)])
    }

    /// A TQ1_0 block's 52 code bytes at `x` with `qh` copied into dwords 12..15, decoded:
    /// (trits 1..4 packed by [`TQ1_LUT`], trit 0) of every byte. The table lookup is
    /// `vpermi2b` on the low seven bits, twice, the top bit choosing; trit 0 is ggml's own
    /// `avg_epu8` formula on the byte (its `>> 6 & 3` as one `vgf2p8affineqb`).
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VBMI and GFNI (inlined); `x` points to 52 readable bytes
    /// (the masked load touches nothing else).
    #[inline(always)]
    unsafe fn tq1_decode(lut: &Lut, x: *const u8) -> (__m512i, __m512i) {
        let raw = _mm512_maskz_loadu_epi8((1u64 << 52) - 1, x as *const i8);
        let v = _mm512_permutexvar_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 12, 12, 12),
            raw,
        );
        let p = _mm512_mask_blend_epi8(
            _mm512_movepi8_mask(v),
            _mm512_permutex2var_epi8(lut.0[0], v, lut.0[1]),
            _mm512_permutex2var_epi8(lut.0[2], v, lut.0[3]),
        );
        let q = _mm512_subs_epu8(v, _mm512_set1_epi8(1));
        let r = _mm512_avg_epu8(q, _mm512_avg_epu8(q, _mm512_setzero_si512()));
        (p, _mm512_gf2p8affine_epi64_epi8::<0>(r, field(6)))
    }

    /// Plane 0 of a decoded TQ1_0 block: trit 0 of every byte, except dwords 13..15
    /// (copies of qh), which take trits 1, 2, 3 of the qh bytes: with dword 12 (trit 0),
    /// trit `n` of `qh[j]` sits at byte `4n + j` of dwords 12..15.
    ///
    /// # Safety
    /// The CPU has AVX-512 F (inlined). Register-only.
    #[inline(always)]
    unsafe fn tq1_plane0(p: __m512i, t0: __m512i) -> __m512i {
        let sh = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 4);
        let qh = _mm512_and_si512(_mm512_srlv_epi32(p, sh), _mm512_set1_epi8(3));
        _mm512_mask_blend_epi32(0xE000, t0, qh)
    }

    /// The lanes of one TQ1_0 block (54 bytes at `x`) against its decode lines `a`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VNNI/VBMI and GFNI (inlined into [`tq1_dot_rows`]); `x`
    /// points to 52 readable bytes and `a` to 6 lines.
    #[inline(always)]
    unsafe fn tq1_block(x: *const u8, a: *const Line, lut: &Lut, f: &[__m512i; 3]) -> __m512i {
        let (p, t0) = tq1_decode(lut, x);
        // Odd planes: qs[32..48] moved to dwords 12..15 (their ggml lanes are 4..7).
        let po = _mm512_permutexvar_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 8, 9, 10, 11),
            p,
        );
        let ld = |k: usize| _mm512_load_si512(a.add(k) as *const _);
        let acc0 = _mm512_dpbusd_epi32(neg_bsums(a.add(5)), tq1_plane0(p, t0), ld(0));
        let acc1 = _mm512_dpbusd_epi32(
            _mm512_setzero_si512(),
            _mm512_and_si512(po, _mm512_set1_epi8(3)),
            ld(1),
        );
        let acc0 = _mm512_dpbusd_epi32(acc0, _mm512_gf2p8affine_epi64_epi8::<0>(p, f[0]), ld(2));
        let acc1 = _mm512_dpbusd_epi32(acc1, _mm512_gf2p8affine_epi64_epi8::<0>(po, f[1]), ld(3));
        let acc0 = _mm512_dpbusd_epi32(acc0, _mm512_gf2p8affine_epi64_epi8::<0>(p, f[2]), ld(4));
        _mm512_add_epi32(acc0, acc1)
    }

    /// One TQ1_0 row (`nb` blocks of 54 bytes at `row`) against one token's decode
    /// activations ([`super::decode_acts`] with [`Format::Tq1`]): ggml's dot, bit for bit.
    /// [`tq1_dot_rows`] of one row (the driver's last `rows mod 4` rows of a task).
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/VNNI/VBMI and GFNI ([`super::available`]); `row` holds
    /// `54·nb` readable bytes (block `b` reads 52 bytes at `54b` by a masked load and two at
    /// `54b + 52`) and `acts` `Format::Tq1.decode_len(nb)` lines.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni,avx2,fma,f16c")]
    pub unsafe fn tq1_dot_row(row: *const u8, acts: *const Line, nb: usize) -> f32 {
        tq1_dot_rows::<1>(row, acts, nb)[0]
    }

    /// One TQ1_0 row's dot (as [`tq1_dot_row`]) for `R` consecutive rows (`54·nb` bytes
    /// apart from `rows`) at once, block pair by block pair: every row keeps its own float
    /// sum in ggml's order (bit for bit ggml's dot), and the rows' independent decoding
    /// overlaps — TQ1_0 decode is bound by its decoding, not by memory. Prefetches the next
    /// `R` rows front to back (`prefetch_next`). Where a model holds its rows in
    /// [`super::interleave4`]'s layout, [`tq1_dot_quint_pairs`] reads them instead.
    ///
    /// # Safety
    /// As [`tq1_dot_row`] for each of the `R` rows (`R·54·nb` bytes at `rows`).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni,avx2,fma,f16c")]
    pub unsafe fn tq1_dot_rows<const R: usize>(
        rows: *const u8,
        acts: *const Line,
        nb: usize,
    ) -> [f32; R] {
        const BB: usize = Format::Tq1.block_bytes();
        const LINES: usize = Format::Tq1.decode_lines();
        let lut = lut();
        let f = [field(2), field(4), field(6)];
        let rb = BB * nb;
        let yd = acts as *const f32;
        let blocks = acts.add(nb.div_ceil(16));
        let at = |r: usize, b: usize| block_at(rows, rb, BB, r, b);
        let mut sumf = [_mm256_setzero_ps(); R];
        let mut b = 0;
        while b + 2 <= nb {
            prefetch_next::<R>(rows, rb, BB * b, 2 * BB);
            for (r, sumf) in sumf.iter_mut().enumerate() {
                let (xa, xb) = (at(r, b), at(r, b + 1));
                let acc_a = tq1_block(xa, blocks.add(LINES * b), &lut, &f);
                let acc_b = tq1_block(xb, blocks.add(LINES * (b + 1)), &lut, &f);
                let xd2 = f16_bits(xa.add(BB - 2)) | f16_bits(xb.add(BB - 2)) << 16;
                *sumf = pair_step(acc_a, acc_b, xd2, yd.add(b), *sumf);
            }
            b += 2;
        }
        if b < nb {
            for (r, sumf) in sumf.iter_mut().enumerate() {
                let x = at(r, b);
                let acc = tq1_block(x, blocks.add(LINES * b), &lut, &f);
                *sumf = block_step(acc, *yd.add(b) * f16_at(x.add(BB - 2)), *sumf);
            }
        }
        sumf.map(|v| hsum8(v))
    }

    /// The trits of one vector of a quint of the TQ1_0 copy (bytes `x + 84t₄`, `x = t₀ + 3t₁ +
    /// 9t₂ + 27t₃`, [`super::interleave4`]): `[t₀, t₁, t₂, t₃, t₄]`, one byte each. `t₄` and
    /// `84t₄` by the byte's top six bits ([`super::QUINT_T4`], [`super::QUINT_BASE`], a
    /// `vpermb` each), `x`'s digits from the 128-entry table ([`super::TQ1_DIGITS`], one
    /// `vpermi2b`), split by [`field`]. (Two comparisons and masked steps instead of the
    /// `vpermb`s: 11% slower in the criterion bench; a table per digit instead of the
    /// fields: 5% slower.)
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VBMI and GFNI (inlined). Register-only.
    #[inline(always)]
    unsafe fn quint_trits(w: __m512i, t: &[__m512i; 2], f: &[__m512i; 3]) -> [__m512i; 5] {
        // Bits 0..6 of each byte of `h` are the byte's bits 2..8, all `vpermb` looks at.
        let h = _mm512_srli_epi16(w, 2);
        let t4 =
            _mm512_permutexvar_epi8(h, _mm512_loadu_si512(super::QUINT_T4.as_ptr() as *const _));
        let step = _mm512_permutexvar_epi8(
            h,
            _mm512_loadu_si512(super::QUINT_BASE.as_ptr() as *const _),
        );
        let [a, b, c, d] = digit_trits(_mm512_sub_epi8(w, step), t, f);
        [a, b, c, d, t4]
    }

    /// The four base-3 digits of every byte `x < 81` of `x`, one byte each: the table
    /// ([`super::TQ1_DIGITS`]) and [`field`].
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VBMI and GFNI (inlined). Register-only.
    #[inline(always)]
    unsafe fn digit_trits(x: __m512i, t: &[__m512i; 2], f: &[__m512i; 3]) -> [__m512i; 4] {
        let p = _mm512_permutex2var_epi8(t[0], x, t[1]);
        [
            _mm512_and_si512(p, _mm512_set1_epi8(3)),
            _mm512_gf2p8affine_epi64_epi8::<0>(p, f[0]),
            _mm512_gf2p8affine_epi64_epi8::<0>(p, f[1]),
            _mm512_gf2p8affine_epi64_epi8::<0>(p, f[2]),
        ]
    }

    /// The lanes of the five blocks of one row's quint (256 bytes at `w`) against their
    /// decode lines (`a`: the first block's, [`super::tq1_copy_acts`]): per block
    /// `Σ code·q` per dword plus `[−B | 0]`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VNNI/VBMI and GFNI (inlined); `w` points to 256 readable
    /// bytes and `a` to five blocks' lines.
    #[inline(always)]
    unsafe fn quint_lanes(
        w: *const u8,
        a: *const Line,
        t: &[__m512i; 2],
        f: &[__m512i; 3],
    ) -> [__m512i; 5] {
        use super::TQ1_COPY_LINES as LINES;
        let line = |n: usize, v: usize| _mm512_load_si512(a.add(LINES * n + v) as *const _);
        let bsums = |n: usize| neg_bsums(a.add(LINES * n + 4));
        let mut acc = [bsums(0), bsums(1), bsums(2), bsums(3), bsums(4)];
        // Written out, not looped: the accumulators stay in registers.
        macro_rules! vector {
            ($v:literal) => {
                let x = _mm512_loadu_si512(w.add(64 * $v) as *const _);
                let [t0, t1, t2, t3, t4] = quint_trits(x, t, f);
                acc = [
                    _mm512_dpbusd_epi32(acc[0], t0, line(0, $v)),
                    _mm512_dpbusd_epi32(acc[1], t1, line(1, $v)),
                    _mm512_dpbusd_epi32(acc[2], t2, line(2, $v)),
                    _mm512_dpbusd_epi32(acc[3], t3, line(3, $v)),
                    _mm512_dpbusd_epi32(acc[4], t4, line(4, $v)),
                ];
            };
        }
        vector!(0);
        vector!(1);
        vector!(2);
        vector!(3);
        acc
    }

    /// The lanes of one block past a row's last quint (64 bytes at `w`, four trits to a
    /// byte) against its decode lines `a`, as [`quint_lanes`].
    ///
    /// # Safety
    /// As [`quint_lanes`], for 64 bytes at `w` and one block's lines at `a`.
    #[inline(always)]
    unsafe fn digit_lanes(
        w: *const u8,
        a: *const Line,
        t: &[__m512i; 2],
        f: &[__m512i; 3],
    ) -> __m512i {
        let line = |v: usize| _mm512_load_si512(a.add(v) as *const _);
        let tr = digit_trits(_mm512_loadu_si512(w as *const _), t, f);
        let acc0 = _mm512_dpbusd_epi32(neg_bsums(a.add(4)), tr[0], line(0));
        let acc1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), tr[1], line(1));
        let acc0 = _mm512_dpbusd_epi32(acc0, tr[2], line(2));
        let acc1 = _mm512_dpbusd_epi32(acc1, tr[3], line(3));
        _mm512_add_epi32(acc0, acc1)
    }

    /// How far ahead [`tq1_dot_quint_pairs`] prefetches its codes (`prefetcht0`, every line
    /// of the quint that far on). On the EPYC, alternating runs, one thread, kernel samples
    /// per F16-head sample: none 2.37–2.42, 2 KiB 1.52–1.55, 4 KiB 1.47–1.52, 8 KiB 1.53.
    /// Not measured on the Xeon.
    const QUINT_PREFETCH: usize = 4096;

    /// [`tq1_dot_row`] of the four rows of one group of [`super::interleave4`]'s TQ1_0
    /// layout (`codes`, `ds` from [`super::tq1_rows_at`]) against
    /// [`super::tq1_copy_acts`], bit for bit. Two rows share every vector: 32 bytes of row A
    /// (values `32u..32u + 32` of five blocks, or of one block past the last quint) and the
    /// same of row B, each half meeting the same 32 quants (an activation line's half
    /// broadcast to both), so an accumulator's dwords 0..8 are A's ggml lanes and 8..16
    /// B's, with nothing to fold, and one conversion, multiplication and addition is the
    /// float step of a block of both rows, each lane in ggml's order (`sumf = (float)L·d +
    /// sumf`, unfused, block after block), `d = y.d · x.d` as ggml forms it.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/VNNI/VBMI and GFNI ([`super::available`]); `codes` holds
    /// the group's `4·tq1_code_bytes(nb)` readable bytes and `ds` its rows' `8·nb`; `acts`
    /// `tq1_copy_acts_len(nb)` lines.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni,avx2,fma,f16c")]
    pub unsafe fn tq1_dot_quint_pairs(
        codes: *const u8,
        ds: *const u8,
        acts: *const Line,
        nb: usize,
    ) -> [f32; 4] {
        use super::TQ1_COPY_LINES as LINES;
        let t = [
            _mm512_loadu_si512(super::TQ1_DIGITS.as_ptr() as *const _),
            _mm512_loadu_si512(super::TQ1_DIGITS.as_ptr().add(64) as *const _),
        ];
        let f = [field(2), field(4), field(6)];
        let yd = acts as *const f32;
        let blocks = acts.add(nb.div_ceil(16)) as *const u8;
        let xd = |r: usize, b: usize| ds.add(2 * (r * nb + b));
        // 32 bytes at `p` (32-byte aligned) in both halves.
        let both = |p: *const u8| _mm512_broadcast_i64x4(_mm256_load_si256(p as *const _));
        // [d of row 2p × 8 | d of row 2p + 1 × 8] from their d of each block as a vector.
        let pair_d = |p: usize, d: &dyn Fn(usize) -> __m256| {
            _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                _mm512_castpd256_pd512(_mm256_castps_pd(d(2 * p))),
                _mm256_castps_pd(d(2 * p + 1)),
            ))
        };
        let mut sumf = [_mm512_setzero_ps(); 2];
        let (nq, nt) = (nb / 5, nb % 5);
        for q in 0..nq {
            let b0 = 5 * q;
            // The hardware prefetchers alone leave this kernel waiting on its loads.
            for i in 0..16 {
                prefetch(codes.wrapping_add(1024 * q + QUINT_PREFETCH + 64 * i));
            }
            // Block b0 + n's lines from byte `64·LINES·n` of `a`.
            let a = blocks.add(64 * LINES * b0);
            let y5 = _mm256_maskz_loadu_ps(0x1F, yd.add(b0));
            let d5 = |r: usize| {
                let x = _mm_maskz_loadu_epi16(0x1F, xd(r, b0) as *const _);
                _mm256_mul_ps(y5, _mm256_cvtph_ps(x))
            };
            for (p, sumf) in sumf.iter_mut().enumerate() {
                let w = codes.add(1024 * q + 512 * p);
                let bsums = |n: usize| both(a.add(64 * (LINES * n + 4)));
                let mut acc = [bsums(0), bsums(1), bsums(2), bsums(3), bsums(4)];
                // Written out, not looped: the accumulators stay in registers.
                macro_rules! vector {
                    ($u:literal) => {
                        let x = _mm512_loadu_si512(w.add(64 * $u) as *const _);
                        let [t0, t1, t2, t3, t4] = quint_trits(x, &t, &f);
                        let q = |n: usize| both(a.add(64 * LINES * n + 32 * $u));
                        acc = [
                            _mm512_dpbusd_epi32(acc[0], t0, q(0)),
                            _mm512_dpbusd_epi32(acc[1], t1, q(1)),
                            _mm512_dpbusd_epi32(acc[2], t2, q(2)),
                            _mm512_dpbusd_epi32(acc[3], t3, q(3)),
                            _mm512_dpbusd_epi32(acc[4], t4, q(4)),
                        ];
                    };
                }
                vector!(0);
                vector!(1);
                vector!(2);
                vector!(3);
                vector!(4);
                vector!(5);
                vector!(6);
                vector!(7);
                let d = pair_d(p, &d5);
                macro_rules! step {
                    ($n:literal) => {
                        let i = _mm512_setr_epi32(
                            $n,
                            $n,
                            $n,
                            $n,
                            $n,
                            $n,
                            $n,
                            $n,
                            $n + 8,
                            $n + 8,
                            $n + 8,
                            $n + 8,
                            $n + 8,
                            $n + 8,
                            $n + 8,
                            $n + 8,
                        );
                        let l = _mm512_cvtepi32_ps(acc[$n]);
                        *sumf = _mm512_add_ps(_mm512_mul_ps(l, _mm512_permutexvar_ps(i, d)), *sumf);
                    };
                }
                step!(0);
                step!(1);
                step!(2);
                step!(3);
                step!(4);
            }
        }
        let tail = codes.add(1024 * nq);
        for k in 0..nt {
            let b = 5 * nq + k;
            prefetch_ahead(tail.add(256 * k), 256);
            let a = blocks.add(64 * LINES * b);
            let d1 = |r: usize| _mm256_set1_ps(*yd.add(b) * f16_at(xd(r, b)));
            for (p, sumf) in sumf.iter_mut().enumerate() {
                let w = tail.add(256 * k + 128 * p);
                let half = |u: usize| {
                    let tr = digit_trits(_mm512_loadu_si512(w.add(64 * u) as *const _), &t, &f);
                    let q = |m: usize| both(a.add(64 * m + 32 * u));
                    let acc = _mm512_dpbusd_epi32(_mm512_setzero_si512(), tr[0], q(0));
                    let acc = _mm512_dpbusd_epi32(acc, tr[1], q(1));
                    let acc = _mm512_dpbusd_epi32(acc, tr[2], q(2));
                    _mm512_dpbusd_epi32(acc, tr[3], q(3))
                };
                let l = _mm512_add_epi32(_mm512_add_epi32(both(a.add(64 * 4)), half(0)), half(1));
                let l = _mm512_cvtepi32_ps(l);
                *sumf = _mm512_add_ps(_mm512_mul_ps(l, pair_d(p, &d1)), *sumf);
            }
        }
        pair_sums(sumf)
    }

    /// [`tq1_dot_row`] of a row past the last whole group of four of
    /// [`super::interleave4`]'s TQ1_0 layout (a group of one: `codes`, `ds` from
    /// [`super::tq1_rows_at`]), its bytes in value order, against [`super::tq1_copy_acts`],
    /// bit for bit: as [`tq1_dot_quint_pairs`] for one row, whose vectors hold 64 values of
    /// the row, so each block's lanes `k` and `k + 8` are folded before [`tq1_dot_rows`]'s
    /// float steps.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/VNNI/VBMI and GFNI ([`super::available`]); `codes` holds
    /// the row's `tq1_code_bytes(nb)` readable bytes and `ds` its `2·nb`; `acts`
    /// `tq1_copy_acts_len(nb)` lines.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni,avx2,fma,f16c")]
    pub unsafe fn tq1_dot_quint_row(
        codes: *const u8,
        ds: *const u8,
        acts: *const Line,
        nb: usize,
    ) -> f32 {
        use super::TQ1_COPY_LINES as LINES;
        let t = [
            _mm512_loadu_si512(super::TQ1_DIGITS.as_ptr() as *const _),
            _mm512_loadu_si512(super::TQ1_DIGITS.as_ptr().add(64) as *const _),
        ];
        let f = [field(2), field(4), field(6)];
        let yd = acts as *const f32;
        let blocks = acts.add(nb.div_ceil(16));
        let xd = |b: usize| ds.add(2 * b);
        let xd2 = |b: usize| std::ptr::read_unaligned(xd(b) as *const u32);
        let mut sumf = _mm256_setzero_ps();
        let (nq, nt) = (nb / 5, nb % 5);
        for q in 0..nq {
            let b0 = 5 * q;
            let l = quint_lanes(codes.add(256 * q), blocks.add(LINES * b0), &t, &f);
            sumf = pair_step(l[0], l[1], xd2(b0), yd.add(b0), sumf);
            sumf = pair_step(l[2], l[3], xd2(b0 + 2), yd.add(b0 + 2), sumf);
            sumf = block_step(l[4], *yd.add(b0 + 4) * f16_at(xd(b0 + 4)), sumf);
        }
        for k in 0..nt {
            let b = 5 * nq + k;
            let l = digit_lanes(codes.add(256 * nq + 64 * k), blocks.add(LINES * b), &t, &f);
            sumf = block_step(l, *yd.add(b) * f16_at(xd(b)), sumf);
        }
        hsum8(sumf)
    }

    /// Unpacks `n_rows` rows of `nb` blocks (consecutive, `fmt.block_bytes()·nb` bytes each,
    /// from `rows`) into one code byte per weight, [`PANEL_BLOCK`] bytes per block in
    /// `fmt.slice_order()` (`codes`), and each block's `x.d` as f32 (`xd`, `nb` per row).
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/VNNI/VBMI and GFNI ([`super::available`]); `rows` holds
    /// `n_rows·nb·fmt.block_bytes()` readable bytes (TQ2_0 blocks load 66 bytes, TQ1_0
    /// blocks 52 by a masked load plus 2), `codes` `n_rows·nb·256` writable bytes and `xd`
    /// `n_rows·nb` writable f32, none overlapping.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,gfni,avx2,fma,f16c")]
    pub unsafe fn unpack_panel(
        fmt: Format,
        rows: *const u8,
        n_rows: usize,
        nb: usize,
        codes: *mut u8,
        xd: *mut f32,
    ) {
        let m3 = _mm512_set1_epi8(3);
        let f = [field(2), field(4), field(6)];
        let bb = fmt.block_bytes();
        match fmt {
            Format::Tq2 => {
                for i in 0..n_rows * nb {
                    let (x, o) = (rows.add(bb * i), codes.add(PANEL_BLOCK * i));
                    let w = _mm512_loadu_si512(x as *const _);
                    _mm512_storeu_si512(o as *mut _, _mm512_and_si512(w, m3));
                    for (k, &fk) in f.iter().enumerate() {
                        _mm512_storeu_si512(
                            o.add(64 * (k + 1)) as *mut _,
                            _mm512_gf2p8affine_epi64_epi8::<0>(w, fk),
                        );
                    }
                    *xd.add(i) = f16_at(x.add(64));
                }
            }
            Format::Tq1 => {
                let lut = lut();
                for i in 0..n_rows * nb {
                    let (x, o) = (rows.add(bb * i), codes.add(PANEL_BLOCK * i));
                    let (p, t0) = tq1_decode(&lut, x);
                    let c = [
                        tq1_plane0(p, t0),
                        _mm512_and_si512(p, m3),
                        _mm512_gf2p8affine_epi64_epi8::<0>(p, f[0]),
                        _mm512_gf2p8affine_epi64_epi8::<0>(p, f[1]),
                        _mm512_gf2p8affine_epi64_epi8::<0>(p, f[2]),
                    ];
                    // Slices 0..5: bytes 0..32 of plane n (values 32n + m).
                    for (n, &cn) in c.iter().enumerate() {
                        _mm256_storeu_si256(
                            o.add(32 * n) as *mut __m256i,
                            _mm512_castsi512_si256(cn),
                        );
                    }
                    // Slices 5..8: bytes 32..48 of planes (0, 1), (2, 3), (4, qh trits).
                    let q2 = |v: __m512i| _mm512_extracti32x4_epi32::<2>(v);
                    let halves = [
                        (q2(c[0]), q2(c[1])),
                        (q2(c[2]), q2(c[3])),
                        (q2(c[4]), _mm512_extracti32x4_epi32::<3>(c[0])),
                    ];
                    for (k, (lo, hi)) in halves.into_iter().enumerate() {
                        _mm_storeu_si128(o.add(160 + 32 * k) as *mut __m128i, lo);
                        _mm_storeu_si128(o.add(176 + 32 * k) as *mut __m128i, hi);
                    }
                    *xd.add(i) = f16_at(x.add(52));
                }
            }
        }
    }

    /// `R × P` tile: rows `0..R` of a panel (`codes`, `xd`, `nb` blocks per row) against
    /// token pairs `0..P` (`acts`, [`PAIR_LINES`] lines per block): each output's eight
    /// float lanes after the last block, two outputs per vector (tokens `2p`, `2p + 1`).
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/VNNI (always inlined into [`gemm_panel`]); `codes`
    /// holds `R·nb·256` readable bytes, `xd` `R·nb` f32 and `acts` `P·nb·PAIR_LINES`
    /// lines: block `b` of row `r` is read at `(r·nb + b)·256` (32 bytes per slice), its
    /// `xd` at `r·nb + b`, and pair `p`'s lines at `(p·nb + b)·PAIR_LINES`.
    #[inline(always)]
    unsafe fn tile<const R: usize, const P: usize>(
        codes: *const u8,
        xd: *const f32,
        acts: *const Line,
        nb: usize,
    ) -> [[__m512; P]; R] {
        let mut sumf = [[_mm512_setzero_ps(); P]; R];
        for b in 0..nb {
            let mut acc = [[_mm512_setzero_si512(); P]; R];
            for p in 0..P {
                let nbs = _mm512_load_si512(acts.add((p * nb + b) * PAIR_LINES + 8) as *const _);
                for r in 0..R {
                    acc[r][p] = nbs;
                }
            }
            for k in 0..8 {
                let mut w = [_mm512_setzero_si512(); R];
                for r in 0..R {
                    w[r] = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                        codes.add((r * nb + b) * PANEL_BLOCK + 32 * k) as *const __m256i,
                    ));
                }
                for p in 0..P {
                    let a = _mm512_load_si512(acts.add((p * nb + b) * PAIR_LINES + k) as *const _);
                    for r in 0..R {
                        acc[r][p] = _mm512_dpbusd_epi32(acc[r][p], w[r], a);
                    }
                }
            }
            for r in 0..R {
                let xr = _mm512_set1_ps(*xd.add(r * nb + b));
                for p in 0..P {
                    let yd = _mm512_load_ps(acts.add((p * nb + b) * PAIR_LINES + 9) as *const f32);
                    let d = _mm512_mul_ps(yd, xr);
                    sumf[r][p] =
                        _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[r][p]), d), sumf[r][p]);
                }
            }
        }
        sumf
    }

    /// Every dot of an unpacked panel ([`unpack_panel`]: `n_rows` rows of `nb` blocks)
    /// with `n_tok` tokens given as `n_tok.div_ceil(2)` pairs ([`super::pair_acts`]; the
    /// second token of a last odd pair is a dummy): calls `emit(row, token, dot)` once for
    /// each `row < n_rows`, `token < n_tok`, in register tiles of
    /// [`super::TILE_ROWS`] rows × [`super::TILE_PAIRS`] pairs and smaller ones at the
    /// edges.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/VNNI ([`super::available`]); `codes` holds
    /// `n_rows·nb·256` readable bytes, `xd` `n_rows·nb` f32, and `acts`
    /// `n_tok.div_ceil(2)·nb·PAIR_LINES` lines. Every [`tile`] call is handed the panel at
    /// a row `r0` with `nr ≤ n_rows − r0` rows after it, and the pairs at `p0` with
    /// `np ≤ n_pairs − p0` after it.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn gemm_panel<F: FnMut(usize, usize, f32)>(
        codes: *const u8,
        xd: *const f32,
        n_rows: usize,
        nb: usize,
        acts: *const Line,
        n_tok: usize,
        mut emit: F,
    ) {
        const R: usize = super::TILE_ROWS;
        const P: usize = super::TILE_PAIRS;
        let n_pairs = n_tok.div_ceil(2);
        let mut out = |r: usize, p: usize, v: __m512| {
            let mut l = [0f32; 16];
            _mm512_storeu_ps(l.as_mut_ptr(), v);
            emit(
                r,
                2 * p,
                hsum_float_8(&[l[0], l[1], l[2], l[3], l[4], l[5], l[6], l[7]]),
            );
            if 2 * p + 1 < n_tok {
                emit(
                    r,
                    2 * p + 1,
                    hsum_float_8(&[l[8], l[9], l[10], l[11], l[12], l[13], l[14], l[15]]),
                );
            }
        };
        let mut p0 = 0;
        while p0 < n_pairs {
            let np = (n_pairs - p0).min(P);
            let a = acts.add(p0 * nb * PAIR_LINES);
            let mut r0 = 0;
            while r0 < n_rows {
                let nr = (n_rows - r0).min(R);
                let (c, x) = (codes.add(r0 * nb * PANEL_BLOCK), xd.add(r0 * nb));
                if nr == R && np == P {
                    let s = tile::<R, P>(c, x, a, nb);
                    for r in 0..R {
                        for p in 0..P {
                            out(r0 + r, p0 + p, s[r][p]);
                        }
                    }
                } else {
                    for r in 0..nr {
                        let (c, x) = (c.add(r * nb * PANEL_BLOCK), x.add(r * nb));
                        if np == P {
                            let s = tile::<1, P>(c, x, a, nb);
                            for p in 0..P {
                                out(r0 + r, p0 + p, s[0][p]);
                            }
                        } else {
                            for p in 0..np {
                                let s = tile::<1, 1>(c, x, a.add(p * nb * PAIR_LINES), nb);
                                out(r0 + r, p0 + p, s[0][0]);
                            }
                        }
                    }
                }
                r0 += nr;
            }
            p0 += np;
        }
    }
}
