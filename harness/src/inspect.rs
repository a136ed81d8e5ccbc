//! `bitprobe inspect`: what a GGUF file holds, and what in it trips people up.
//!
//! [`inspect`] reads a file with the engine's validating reader ([`GgufFile`]) and returns an
//! [`Inspection`]: the header, the metadata (long arrays summarized), the tensor table, and
//! weight statistics — per norm tensor (`*_norm.weight`) mean/std/min/max/RMS, per ternary
//! tensor its scale and the share of −1/0/+1, per embedding mean/std. Every float tensor is
//! scanned in full for NaN/Inf; nothing is sampled (the statistics work on raw bits and
//! 2-bit codes, so the 1.2 GB 2B-4T-shaped file takes about a second).
//!
//! [`Warning`]s say what a finding *means* — they never change anything:
//! - no `tokenizer.ggml.pre`, measured: with a Llama-3-sized vocab the engine's GGUF-mode
//!   tokenizer (which follows llama.cpp, so it stands for the oracle) and the trained
//!   tokenizer (`truth`) run over the built-in probe strings (`cases/tokenizer/inputs.json`);
//! - norm gammas far from 1 (trained values in the real 2B-4T, `BITNET_NOTES.md` §2);
//! - an architecture the oracle does not know;
//! - NaN/Inf in a float tensor (or an I2_S / TQ scale);
//! - I2_S code 3, which `quantize_i2_s` never writes and the dot reads as +2.
//!
//! I2_S rows that are not a multiple of 128 cannot be warned about here: the reader refuses
//! such a file ([`GgufError::RowNotMultiple`]), and [`InspectError::I2sRows`] says why that
//! is fatal for both probes.

use engine::gguf::{GgmlType, GgufArray, GgufError, GgufFile, GgufValue, TensorInfo, QK_K};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The built-in tokenizer probe strings (the starter set of `cases/tokenizer`).
pub const PROBE_STRINGS: &str = include_str!("../../cases/tokenizer/inputs.json");

/// Architectures the oracle loads: `bitnet` (vendored bitnet.cpp), `bitnet-b1.58` and
/// `bitnet-25` (added by `oracle/patches/0002-arch-bitnet-b1.58.patch`).
pub const ORACLE_ARCHS: [&str; 3] = ["bitnet", "bitnet-b1.58", "bitnet-25"];

/// A norm's gammas count as "far from 1" outside this RMS range.
pub const GAMMA_RMS_RANGE: (f64, f64) = (0.1, 10.0);

/// The vocabulary size of Llama 3 (128 000 ranked tokens + 256 specials).
const LLAMA3_N_VOCAB: usize = 128_256;

/// Arrays longer than this are summarized (type, length, first items).
const ARRAY_SHOWN: usize = 8;

/// Why a file could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(
        "{source}. bitnet.cpp packs and multiplies I2_S in blocks of 128 values along a row \
         (QK_I2_S in ggml-bitnet-mad.cpp), so neither probe can run this tensor"
    )]
    I2sRows { source: GgufError },
    #[error("tensor {tensor}: {message}")]
    Tensor { tensor: String, message: String },
}

/// Everything `bitprobe inspect` reports about one file.
#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    pub path: String,
    pub header: Header,
    pub metadata: Vec<MetaEntry>,
    pub tensors: Vec<TensorRow>,
    pub norms: Vec<NormStats>,
    pub ternary: Vec<TernaryStats>,
    pub embeddings: Vec<EmbeddingStats>,
    /// The tokenizer measurement behind the missing-`tokenizer.ggml.pre` warning, when run.
    pub tokenizer_measurement: Option<TokenizerMeasurement>,
    pub warnings: Vec<Warning>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Header {
    pub version: u32,
    pub alignment: u64,
    pub tensor_count: usize,
    pub kv_count: usize,
    /// Byte offset of the data section.
    pub data_offset: u64,
    pub file_size: u64,
}

/// One metadata pair; arrays longer than 8 are summarized as `{len, first}`.
#[derive(Clone, Debug, Serialize)]
pub struct MetaEntry {
    pub key: String,
    /// `u32`, `str`, `arr[str,128256]`, …
    #[serde(rename = "type")]
    pub ty: String,
    pub value: serde_json::Value,
}

#[derive(Clone, Debug, Serialize)]
pub struct TensorRow {
    pub name: String,
    /// ggml type, upper case (`I2_S`, `F16`).
    #[serde(rename = "type")]
    pub ty: String,
    /// Dimensions in ggml order: `shape[0]` (ne0) is the row length.
    pub shape: Vec<u64>,
    pub bytes: u64,
    /// Offset from the start of the data section.
    pub offset: u64,
}

/// Statistics of a norm's gammas (`*_norm.weight`).
#[derive(Clone, Debug, Serialize)]
pub struct NormStats {
    pub name: String,
    pub n: u64,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    pub rms: f64,
}

/// A ternary projection: its scale and how its values split over −1/0/+1.
#[derive(Clone, Debug, Serialize)]
pub struct TernaryStats {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub n: u64,
    /// I2_S: the tensor's one f32 scale. TQ1_0/TQ2_0: the mean block `d` (see
    /// `scale_min`/`scale_max`). F16/F32: max |w|.
    pub scale: f64,
    pub scale_min: f64,
    pub scale_max: f64,
    /// Shares of −1, 0, +1 (of all values).
    pub minus: f64,
    pub zero: f64,
    pub plus: f64,
    /// Values that are none of −1/0/+1 (·scale): I2_S code 3, or float values off the
    /// ternary grid. An F16/F32 projection with `other > 0` is not ternary×scale.
    pub other: u64,
}

/// Token embedding / output head statistics.
#[derive(Clone, Debug, Serialize)]
pub struct EmbeddingStats {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub n: u64,
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

/// The engine's GGUF-mode tokenizer against the trained tokenizer over the probe strings.
#[derive(Clone, Debug, Serialize)]
pub struct TokenizerMeasurement {
    pub total: usize,
    pub differ: usize,
    /// Up to three differing strings: (text, GGUF-mode ids, trained ids).
    pub examples: Vec<(String, Vec<u32>, Vec<u32>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    NoPreTokenizer,
    NormGamma,
    UnknownArch,
    NonFinite,
    I2sCode3,
}

#[derive(Clone, Debug, Serialize)]
pub struct Warning {
    pub kind: WarningKind,
    pub message: String,
}

/// Inspects the GGUF file at `path`. Malformed files give an error naming what and where.
pub fn inspect(path: &Path) -> Result<Inspection, InspectError> {
    let f = GgufFile::open(path).map_err(|e| match e {
        GgufError::RowNotMultiple { ty: "i2_s", .. } => InspectError::I2sRows { source: e },
        e => InspectError::Gguf(e),
    })?;
    let header = Header {
        version: f.version(),
        alignment: f.alignment(),
        tensor_count: f.tensors().len(),
        kv_count: f.metadata().count(),
        data_offset: f.data_offset(),
        file_size: f.file_size(),
    };
    let metadata = f
        .metadata()
        .map(|(k, v)| MetaEntry {
            key: k.to_string(),
            ty: v.type_description(),
            value: value_json(v),
        })
        .collect();
    let tensors = f
        .tensors()
        .iter()
        .map(|t| TensorRow {
            name: t.name.clone(),
            ty: t.ty.name().to_uppercase(),
            shape: t.dims.clone(),
            bytes: t.size,
            offset: t.offset,
        })
        .collect();

    let mut report = Inspection {
        path: path.display().to_string(),
        header,
        metadata,
        tensors,
        norms: Vec::new(),
        ternary: Vec::new(),
        embeddings: Vec::new(),
        tokenizer_measurement: None,
        warnings: Vec::new(),
    };
    let mut non_finite: Vec<String> = Vec::new();
    let mut code3: Vec<String> = Vec::new();
    for t in f.tensors() {
        let data = f.tensor_data(t)?;
        let ty = t.ty.name().to_uppercase();
        let n = t.n_elements();
        if let Some(kind) = FloatKind::of(t.ty) {
            let s = float_stats(kind, data);
            if s.non_finite() > 0 {
                non_finite.push(format!(
                    "{} ({ty}): {} NaN, {} +Inf, {} −Inf of {n} values",
                    t.name, s.nan, s.pos_inf, s.neg_inf
                ));
            }
            if t.name.ends_with("_norm.weight") {
                report.norms.push(NormStats {
                    name: t.name.clone(),
                    n,
                    mean: s.mean(),
                    std: s.std(),
                    min: s.min,
                    max: s.max,
                    rms: s.rms(),
                });
            } else if is_embedding(&t.name) {
                report.embeddings.push(EmbeddingStats {
                    name: t.name.clone(),
                    ty,
                    n,
                    mean: s.mean(),
                    std: s.std(),
                    min: s.min,
                    max: s.max,
                });
            } else if is_projection(&t.name) {
                report
                    .ternary
                    .push(float_ternary(t, kind, data, s.max_abs_bits));
            }
            continue;
        }
        let stats = match t.ty {
            GgmlType::I2_S => i2s_ternary(t, data)?,
            GgmlType::TQ2_0 => tq_ternary(t, data, TqKind::Tq2)?,
            GgmlType::TQ1_0 => tq_ternary(t, data, TqKind::Tq1)?,
            _ => continue,
        };
        if !(stats.scale_min.is_finite() && stats.scale_max.is_finite()) {
            non_finite.push(format!(
                "{} ({ty}): scale is not finite ({} … {})",
                t.name, stats.scale_min, stats.scale_max
            ));
        }
        if t.ty == GgmlType::I2_S && stats.other > 0 {
            code3.push(format!("{} ({} values)", t.name, stats.other));
        }
        report.ternary.push(stats);
    }

    warn_arch(&f, &mut report.warnings);
    warn_pre_tokenizer(&f, &mut report);
    warn_gammas(&report.norms, &mut report.warnings);
    if !non_finite.is_empty() {
        report.warnings.push(Warning {
            kind: WarningKind::NonFinite,
            message: format!(
                "NaN/Inf stored in {} tensor(s): {}. These are in the file, not produced by \
                 either engine: every forward pass that reads them gives NaN/Inf in both probes.",
                non_finite.len(),
                non_finite.join("; ")
            ),
        });
    }
    if !code3.is_empty() {
        report.warnings.push(Warning {
            kind: WarningKind::I2sCode3,
            message: format!(
                "I2_S code 3 in {}. quantize_i2_s never writes it (codes are 0/1/2 for −1/0/+1); \
                 bitnet.cpp's ggml_vec_dot_i2_i8_s reads it as +2, and so does the engine. \
                 The file was packed by something other than bitnet.cpp's quantizer.",
                code3.join(", ")
            ),
        });
    }
    Ok(report)
}

fn is_embedding(name: &str) -> bool {
    matches!(name, "token_embd.weight" | "output.weight")
}

/// `blk.N.{attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down}.weight`: the seven
/// ternary projections.
fn is_projection(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("blk.") else {
        return false;
    };
    let Some((_, tail)) = rest.split_once('.') else {
        return false;
    };
    matches!(
        tail,
        "attn_q.weight"
            | "attn_k.weight"
            | "attn_v.weight"
            | "attn_output.weight"
            | "ffn_gate.weight"
            | "ffn_up.weight"
            | "ffn_down.weight"
    )
}

/// A metadata value as JSON, long arrays summarized.
fn value_json(v: &GgufValue) -> serde_json::Value {
    use serde_json::json;
    match v {
        GgufValue::U8(x) => json!(x),
        GgufValue::I8(x) => json!(x),
        GgufValue::U16(x) => json!(x),
        GgufValue::I16(x) => json!(x),
        GgufValue::U32(x) => json!(x),
        GgufValue::I32(x) => json!(x),
        GgufValue::F32(x) => json!(f32_json(*x)),
        GgufValue::Bool(x) => json!(x),
        GgufValue::Str(x) => json!(x),
        GgufValue::U64(x) => json!(x),
        GgufValue::I64(x) => json!(x),
        GgufValue::F64(x) => json!(x),
        GgufValue::Array(a) => array_json(a),
    }
}

/// An f32 as the f64 with the same shortest decimal form (1e-5, not 9.999999747378752e-6).
fn f32_json(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

fn array_json(a: &GgufArray) -> serde_json::Value {
    use serde_json::json;
    let take = if a.len() > ARRAY_SHOWN { 5 } else { a.len() };
    fn first<T: Serialize>(v: &[T], n: usize) -> serde_json::Value {
        json!(&v[..n])
    }
    let items = match a {
        GgufArray::U8(v) => first(v, take),
        GgufArray::I8(v) => first(v, take),
        GgufArray::U16(v) => first(v, take),
        GgufArray::I16(v) => first(v, take),
        GgufArray::U32(v) => first(v, take),
        GgufArray::I32(v) => first(v, take),
        GgufArray::F32(v) => first(
            &v[..take].iter().map(|x| f32_json(*x)).collect::<Vec<_>>(),
            take,
        ),
        GgufArray::Bool(v) => first(v, take),
        GgufArray::Str(v) => first(v, take),
        GgufArray::U64(v) => first(v, take),
        GgufArray::I64(v) => first(v, take),
        GgufArray::F64(v) => first(v, take),
        GgufArray::Array(v) => serde_json::Value::Array(v[..take].iter().map(array_json).collect()),
    };
    if a.len() > ARRAY_SHOWN {
        json!({ "len": a.len(), "first": items })
    } else {
        items
    }
}

// ---------------------------------------------------------------------------------------------
// Float tensors: statistics straight from the raw bits.

/// The float storage types, read bit by bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FloatKind {
    F32,
    F16,
    BF16,
}

impl FloatKind {
    fn of(t: GgmlType) -> Option<FloatKind> {
        match t {
            GgmlType::F32 => Some(FloatKind::F32),
            GgmlType::F16 => Some(FloatKind::F16),
            GgmlType::BF16 => Some(FloatKind::BF16),
            _ => None,
        }
    }
}

/// f16 → f32 for all 65 536 bit patterns (histogram bins, TQ block scales).
fn f16_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|b| half::f16::from_bits(b).to_f32())
            .collect()
    })
}

/// Moments of the finite values, non-finite values counted apart, and the largest finite
/// |value| as its absolute bit pattern (monotonic in the value for IEEE floats).
#[derive(Clone, Copy, Debug)]
struct FloatStats {
    n: u64,
    sum: f64,
    sq: f64,
    min: f64,
    max: f64,
    nan: u64,
    pos_inf: u64,
    neg_inf: u64,
    max_abs_bits: u32,
}

impl FloatStats {
    fn new() -> Self {
        FloatStats {
            n: 0,
            sum: 0.0,
            sq: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            nan: 0,
            pos_inf: 0,
            neg_inf: 0,
            max_abs_bits: 0,
        }
    }
    fn non_finite(&self) -> u64 {
        self.nan + self.pos_inf + self.neg_inf
    }
    fn mean(&self) -> f64 {
        self.sum / self.n.max(1) as f64
    }
    fn rms(&self) -> f64 {
        (self.sq / self.n.max(1) as f64).sqrt()
    }
    fn std(&self) -> f64 {
        let m = self.mean();
        (self.sq / self.n.max(1) as f64 - m * m).max(0.0).sqrt()
    }
    #[inline(always)]
    fn finite(&mut self, v: f32, abs_bits: u32) {
        let v = v as f64;
        self.n += 1;
        self.sum += v;
        self.sq += v * v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.max_abs_bits = self.max_abs_bits.max(abs_bits);
    }
    /// `count` copies of the finite value `v`.
    fn finite_n(&mut self, v: f32, abs_bits: u32, count: u64) {
        let x = v as f64;
        self.n += count;
        self.sum += x * count as f64;
        self.sq += x * x * count as f64;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        self.max_abs_bits = self.max_abs_bits.max(abs_bits);
    }
    #[inline(always)]
    fn non_finite_value(&mut self, v: f32) {
        self.non_finite_n(v, 1)
    }
    #[inline(always)]
    fn non_finite_n(&mut self, v: f32, count: u64) {
        if v.is_nan() {
            self.nan += count;
        } else if v > 0.0 {
            self.pos_inf += count;
        } else {
            self.neg_inf += count;
        }
    }
}

fn float_stats(kind: FloatKind, data: &[u8]) -> FloatStats {
    let mut s = FloatStats::new();
    match kind {
        FloatKind::F32 => {
            for b in data.chunks_exact(4) {
                let bits = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                let v = f32::from_bits(bits);
                if v.is_finite() {
                    s.finite(v, bits & 0x7fff_ffff);
                } else {
                    s.non_finite_value(v);
                }
            }
        }
        FloatKind::F16 | FloatKind::BF16 => {
            // A 16-bit float has 65 536 possible values: count each bit pattern once, then
            // take the moments over the histogram. One increment per value instead of float
            // arithmetic keeps the 328 M-value 2B-4T embedding well under a second, and the
            // sums come out the same whatever the order of the values.
            let mut hist = vec![0u64; 1 << 16];
            for b in data.chunks_exact(2) {
                hist[u16::from_le_bytes([b[0], b[1]]) as usize] += 1;
            }
            let table = f16_table();
            let exp_mask = if kind == FloatKind::F16 {
                0x7c00
            } else {
                0x7f80
            };
            for (bits, &count) in hist.iter().enumerate().filter(|(_, c)| **c > 0) {
                let v = match kind {
                    FloatKind::F16 => table[bits],
                    _ => f32::from_bits((bits as u32) << 16),
                };
                if bits & exp_mask != exp_mask {
                    s.finite_n(v, bits as u32 & 0x7fff, count);
                } else {
                    s.non_finite_n(v, count);
                }
            }
        }
    }
    if s.n == 0 {
        (s.min, s.max) = (f64::NAN, f64::NAN);
    }
    s
}

/// An F16/F32 projection held to the ternary grid {−s, 0, +s} with s = max |w|, compared
/// bit for bit (the forge and bitnet's converters store exactly ±s).
fn float_ternary(t: &TensorInfo, kind: FloatKind, data: &[u8], max_abs_bits: u32) -> TernaryStats {
    let mut counts = [0u64; 4]; // −1, 0, +1, other
    let mut tally = |bits: u32, abs: u32, sign: u32| {
        let i = if abs == 0 {
            1
        } else if abs == max_abs_bits {
            if bits & sign != 0 {
                0
            } else {
                2
            }
        } else {
            3
        };
        counts[i] += 1;
    };
    match kind {
        FloatKind::F32 => {
            for b in data.chunks_exact(4) {
                let bits = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                tally(bits, bits & 0x7fff_ffff, 0x8000_0000);
            }
        }
        FloatKind::F16 | FloatKind::BF16 => {
            for b in data.chunks_exact(2) {
                let bits = u16::from_le_bytes([b[0], b[1]]) as u32;
                tally(bits, bits & 0x7fff, 0x8000);
            }
        }
    }
    let scale = match kind {
        FloatKind::F32 => f32::from_bits(max_abs_bits),
        FloatKind::F16 => f16_table()[max_abs_bits as usize],
        FloatKind::BF16 => f32::from_bits(max_abs_bits << 16),
    } as f64;
    ternary_stats(t, counts, scale, scale, scale)
}

fn ternary_stats(
    t: &TensorInfo,
    counts: [u64; 4],
    scale: f64,
    scale_min: f64,
    scale_max: f64,
) -> TernaryStats {
    let n = t.n_elements();
    let share = |c: u64| c as f64 / n.max(1) as f64;
    TernaryStats {
        name: t.name.clone(),
        ty: t.ty.name().to_uppercase(),
        n,
        scale,
        scale_min,
        scale_max,
        minus: share(counts[0]),
        zero: share(counts[1]),
        plus: share(counts[2]),
        other: counts[3],
    }
}

// ---------------------------------------------------------------------------------------------
// Packed ternary tensors: counting 2-bit codes.

/// For each byte, how many of its four 2-bit fields hold code 0, 1, 2, 3, in 16-bit lanes
/// (lane c = count of code c). Where a code sits in the byte does not matter for counting,
/// so this serves I2_S (interleaved blocks of 128) and TQ2_0 (`qs`) alike.
fn code_count_table() -> &'static [u64; 256] {
    static TABLE: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = [0u64; 256];
        for (b, lanes) in t.iter_mut().enumerate() {
            for shift in [0, 2, 4, 6] {
                *lanes += 1u64 << (16 * ((b >> shift) & 3));
            }
        }
        t
    })
}

/// Code counts (0, 1, 2, 3) over packed bytes.
fn count_codes(packed: &[u8], totals: &mut [u64; 4]) {
    let table = code_count_table();
    // Each byte adds at most 4 to a 16-bit lane: flush before 65 535 / 4 bytes.
    for chunk in packed.chunks(16_000) {
        let lanes: u64 = chunk.iter().map(|&b| table[b as usize]).sum();
        for (c, total) in totals.iter_mut().enumerate() {
            *total += (lanes >> (16 * c)) & 0xffff;
        }
    }
}

/// I2_S: codes 0/1/2 are −1/0/+1 (`quantize_i2_s`); the f32 scale follows the n/4 packed
/// bytes.
fn i2s_ternary(t: &TensorInfo, data: &[u8]) -> Result<TernaryStats, InspectError> {
    let n = t.n_elements() as usize;
    if data.len() < n / 4 + 4 {
        return Err(InspectError::Tensor {
            tensor: t.name.clone(),
            message: format!(
                "I2_S data of {} bytes cannot hold {n} values and the scale ({} bytes)",
                data.len(),
                n / 4 + 4
            ),
        });
    }
    let mut codes = [0u64; 4];
    count_codes(&data[..n / 4], &mut codes);
    let scale = engine::quant::i2s::scale(data, n) as f64;
    Ok(ternary_stats(t, codes, scale, scale, scale))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TqKind {
    Tq1,
    Tq2,
}

/// TQ1_0 / TQ2_0: per 256-value block, codes (value = code − 1) and an f16 `d`.
fn tq_ternary(t: &TensorInfo, data: &[u8], kind: TqKind) -> Result<TernaryStats, InspectError> {
    use engine::quant::{tq1, tq2};
    let block_bytes = if kind == TqKind::Tq1 {
        tq1::BLOCK_BYTES
    } else {
        tq2::BLOCK_BYTES
    };
    let n_blocks = (t.n_elements() / QK_K) as usize;
    if data.len() < n_blocks * block_bytes {
        return Err(InspectError::Tensor {
            tensor: t.name.clone(),
            message: format!(
                "{} bytes cannot hold {n_blocks} blocks of {block_bytes}",
                data.len()
            ),
        });
    }
    let mut codes = [0u64; 4];
    let (mut dmin, mut dmax, mut dsum) = (f64::INFINITY, f64::NEG_INFINITY, 0f64);
    let table = f16_table();
    for b in data.chunks_exact(block_bytes).take(n_blocks) {
        let d = table[u16::from_le_bytes([b[block_bytes - 2], b[block_bytes - 1]]) as usize] as f64;
        (dmin, dmax, dsum) = (dmin.min(d), dmax.max(d), dsum + d);
        match kind {
            TqKind::Tq2 => count_codes(&b[..64], &mut codes),
            TqKind::Tq1 => {
                let (c, _) = tq1::decode_block(b);
                for &x in c.iter() {
                    codes[x.min(3) as usize] += 1;
                }
            }
        }
    }
    let mean = dsum / n_blocks.max(1) as f64;
    Ok(ternary_stats(t, codes, mean, dmin, dmax))
}

// ---------------------------------------------------------------------------------------------
// Warnings.

fn warn_arch(f: &GgufFile, warnings: &mut Vec<Warning>) {
    let known = ORACLE_ARCHS.join(", ");
    match f.get_str("general.architecture") {
        Ok(a) if ORACLE_ARCHS.contains(&a) => {}
        Ok(a) => warnings.push(Warning {
            kind: WarningKind::UnknownArch,
            message: format!(
                "architecture '{a}' is not one the oracle knows ({known}; the last two via \
                 oracle/patches): bitnet.cpp will refuse to load this file, so there is nothing \
                 to compare against. The engine refuses it too unless it is one of these."
            ),
        }),
        Err(e) => warnings.push(Warning {
            kind: WarningKind::UnknownArch,
            message: format!(
                "{e}: neither probe can tell which graph to build (the oracle knows {known})"
            ),
        }),
    }
}

fn warn_pre_tokenizer(f: &GgufFile, report: &mut Inspection) {
    use engine::tokenizer::keys;
    if f.get(keys::PRE).is_some() || f.get(keys::TOKENS).is_none() {
        return;
    }
    let n_vocab = f.get_arr(keys::TOKENS).map(|a| a.len()).unwrap_or(0);
    let base = "no tokenizer.ggml.pre: llama.cpp (and so bitnet.cpp) falls back to its default \
                pre-tokenizer, which is not the split regex the model was trained with";
    let message = if n_vocab != LLAMA3_N_VOCAB {
        format!("{base}. (Vocab of {n_vocab} tokens is not Llama-3-sized, so the gap was not measured.)")
    } else {
        match measure_pre_tokenizer(f) {
            Ok(m) => {
                let example = m
                    .examples
                    .first()
                    .map(|(t, g, tr)| {
                        format!(
                            " For example {t:?}: {} tokens {g:?} instead of {} {tr:?}.",
                            g.len(),
                            tr.len()
                        )
                    })
                    .unwrap_or_default();
                let msg = format!(
                    "{base}: {} of the {} built-in probe strings tokenize differently from the \
                     trained tokenizer.{example} microsoft's official 2B-4T GGUF lacks the key \
                     too. The engine follows bitnet.cpp here, so engine-vs-oracle comparisons \
                     are like for like, but prompts with contractions, tabs, newline runs, code \
                     or punctuation reach the model split differently from training \
                     (`bitprobe tokenize --compare` shows the pieces; the engine's `--tokenizer \
                     truth` uses the trained tokenizer).",
                    m.differ, m.total
                );
                report.tokenizer_measurement = Some(m);
                msg
            }
            Err(e) => format!("{base}. (Not measured: {e}.)"),
        }
    };
    report.warnings.push(Warning {
        kind: WarningKind::NoPreTokenizer,
        message,
    });
}

/// The engine's GGUF-mode tokenizer (which follows llama.cpp) against the trained Llama-3
/// tokenizer over [`PROBE_STRINGS`], without BOS or special-token parsing.
pub fn measure_pre_tokenizer(f: &GgufFile) -> Result<TokenizerMeasurement, String> {
    use engine::forge::vocab::{assets_dir, LLAMA3_ASSET};
    let inputs: Vec<String> =
        serde_json::from_str(PROBE_STRINGS).map_err(|e| format!("built-in probe strings: {e}"))?;
    let gguf =
        engine::tokenizer::Tokenizer::from_gguf(f).map_err(|e| format!("GGUF tokenizer: {e}"))?;
    let truth = engine::tokenizer::truth::Truth::from_ranks_file(assets_dir().join(LLAMA3_ASSET))
        .map_err(|e| format!("trained tokenizer: {e} (run scripts/setup.sh)"))?;
    let mut differ = Vec::new();
    for text in &inputs {
        let g = gguf.encode(text, false, false).map_err(|e| e.to_string())?;
        let t = truth
            .encode(text, false, false)
            .map_err(|e| e.to_string())?;
        if g != t {
            differ.push((text.clone(), g, t));
        }
    }
    let n = differ.len();
    // Lead with a familiar example: a contraction ("don't"), else file order.
    differ.sort_by_key(|(t, _, _)| !(t.contains("'") && t.starts_with(char::is_alphabetic)));
    differ.truncate(3);
    Ok(TokenizerMeasurement {
        total: inputs.len(),
        differ: n,
        examples: differ,
    })
}

/// Norm gammas far from 1, one warning per norm kind (`attn_norm`, `ffn_norm`, …).
fn warn_gammas(norms: &[NormStats], warnings: &mut Vec<Warning>) {
    let kind_of = |name: &str| -> String {
        let base = name.strip_suffix(".weight").unwrap_or(name);
        match base.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
            Some((_, k)) => k.to_string(),
            None => base.to_string(),
        }
    };
    let mut by_kind: BTreeMap<String, (Vec<&NormStats>, usize)> = BTreeMap::new();
    for n in norms {
        let e = by_kind.entry(kind_of(&n.name)).or_default();
        e.1 += 1;
        if !(GAMMA_RMS_RANGE.0..=GAMMA_RMS_RANGE.1).contains(&n.rms) {
            e.0.push(n);
        }
    }
    for (kind, (far, total)) in by_kind {
        if far.is_empty() {
            continue;
        }
        let lo = far.iter().map(|n| n.rms).fold(f64::INFINITY, f64::min);
        let hi = far.iter().map(|n| n.rms).fold(f64::NEG_INFINITY, f64::max);
        let context = if kind == "attn_norm" {
            "Such gammas are present in the real 2B-4T (attn_norm RMS ≈ 0.01–0.02, \
             BITNET_NOTES.md §2): these are trained values, not corruption"
        } else {
            "The real 2B-4T has far-from-1 attn_norm gammas as trained values: unusual gammas \
             are not by themselves corruption"
        };
        warnings.push(Warning {
            kind: WarningKind::NormGamma,
            message: format!(
                "{kind} gammas far from 1: RMS {} in {} of {total} tensors (outside {}–{}), first \
                 {}. {context}. bitnet.cpp uses them as stored; an engine that rescales them \
                 diverges from it at the {kind} stage.",
                if sig(lo) == sig(hi) {
                    sig(lo)
                } else {
                    format!("{}–{}", sig(lo), sig(hi))
                },
                far.len(),
                GAMMA_RMS_RANGE.0,
                GAMMA_RMS_RANGE.1,
                far[0].name,
            ),
        });
    }
}

/// Three significant digits in plain decimals: 0.0150, 1.31, 25.3.
fn sig(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let decimals = (2 - x.abs().log10().floor() as i32).max(0) as usize;
    format!("{x:.decimals$}")
}

// ---------------------------------------------------------------------------------------------
// Text rendering.

/// The human-readable report: header, metadata, tensor table, statistics, warnings.
pub fn render(r: &Inspection) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let h = &r.header;
    let _ = writeln!(s, "file        {}", r.path);
    let _ = writeln!(
        s,
        "header      GGUF v{} · alignment {} · {} tensors · {} kv · data at byte {} · {} bytes",
        h.version, h.alignment, h.tensor_count, h.kv_count, h.data_offset, h.file_size
    );
    let _ = writeln!(s, "\nmetadata");
    let kw = r.metadata.iter().map(|m| m.key.len()).max().unwrap_or(0);
    for m in &r.metadata {
        let _ = writeln!(
            s,
            "  {:<kw$}  {:<18} {}",
            m.key,
            m.ty,
            render_value(&m.value)
        );
    }
    let _ = writeln!(
        s,
        "\ntensors (shape in ggml order, ne0 first; offset from the data section)"
    );
    let nw = r
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        s,
        "  {:<nw$}  {:<6} {:<16} {:>12} {:>12}",
        "name", "type", "shape", "bytes", "offset"
    );
    for t in &r.tensors {
        let shape = format!("{:?}", t.shape);
        let _ = writeln!(
            s,
            "  {:<nw$}  {:<6} {:<16} {:>12} {:>12}",
            t.name, t.ty, shape, t.bytes, t.offset
        );
    }
    if !r.norms.is_empty() {
        let _ = writeln!(s, "\nnorm gammas");
        let _ = writeln!(
            s,
            "  {:<nw$}  {:>10} {:>10} {:>10} {:>10} {:>10}",
            "name", "mean", "std", "min", "max", "rms"
        );
        for n in &r.norms {
            let _ = writeln!(
                s,
                "  {:<nw$}  {:>10.4} {:>10.4} {:>10.4} {:>10.4} {:>10.4}",
                n.name, n.mean, n.std, n.min, n.max, n.rms
            );
        }
    }
    if !r.ternary.is_empty() {
        let _ = writeln!(
            s,
            "\nternary projections (share of −1 / 0 / +1; other = off the ternary grid)"
        );
        let _ = writeln!(
            s,
            "  {:<nw$}  {:<6} {:>11} {:>7} {:>7} {:>7} {:>8}",
            "name", "type", "scale", "−1", "0", "+1", "other"
        );
        for t in &r.ternary {
            let scale = if t.scale_min == t.scale_max {
                format!("{:.5}", t.scale)
            } else {
                format!("~{:.5}", t.scale)
            };
            let _ = writeln!(
                s,
                "  {:<nw$}  {:<6} {:>11} {:>6.1}% {:>6.1}% {:>6.1}% {:>8}",
                t.name,
                t.ty,
                scale,
                100.0 * t.minus,
                100.0 * t.zero,
                100.0 * t.plus,
                t.other
            );
        }
        if r.ternary.iter().any(|t| t.scale_min != t.scale_max) {
            let _ = writeln!(
                s,
                "  (~: TQ1_0/TQ2_0 have one scale per 256-value block; shown is the mean)"
            );
        }
    }
    if !r.embeddings.is_empty() {
        let _ = writeln!(s, "\nembeddings");
        for e in &r.embeddings {
            let _ = writeln!(
                s,
                "  {:<nw$}  {:<6} mean {:.5}  std {:.5}  min {:.4}  max {:.4}",
                e.name, e.ty, e.mean, e.std, e.min, e.max
            );
        }
    }
    let _ = writeln!(s);
    if r.warnings.is_empty() {
        let _ = writeln!(s, "warnings    none");
    }
    for w in &r.warnings {
        let _ = writeln!(s, "warning     {}", wrap(&w.message, 88, 12));
    }
    s
}

/// Word-wraps `text` at `width` columns, continuation lines indented by `indent`.
fn wrap(text: &str, width: usize, indent: usize) -> String {
    let mut out = String::new();
    let mut col = 0;
    for word in text.split(' ') {
        let w = word.chars().count();
        if col > 0 && col + 1 + w > width {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', indent));
            col = 0;
        } else if col > 0 {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += w;
    }
    out
}

fn render_value(v: &serde_json::Value) -> String {
    const MAX: usize = 100;
    let text = match v {
        serde_json::Value::Object(o) => match (o.get("len"), o.get("first")) {
            (Some(len), Some(first)) => {
                let items = first.to_string();
                format!("{}, … ({len} items)", items.trim_end_matches(']'))
            }
            _ => v.to_string(),
        },
        _ => v.to_string(),
    };
    if text.chars().count() > MAX {
        let cut: String = text.chars().take(MAX).collect();
        format!("{cut}… ({} chars)", text.chars().count())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_counts_are_per_field() {
        let mut c = [0u64; 4];
        // 0b00_01_10_11: one of each code; 0b10_10_10_10: four +1s.
        count_codes(&[0b0001_1011, 0b1010_1010], &mut c);
        assert_eq!(c, [1, 1, 5, 1]);
        let big = vec![0b1010_1010u8; 100_000];
        let mut c = [0u64; 4];
        count_codes(&big, &mut c);
        assert_eq!(
            c,
            [0, 0, 400_000, 0],
            "lanes are flushed before they overflow"
        );
    }

    #[test]
    fn projections_and_embeddings_by_name() {
        assert!(is_projection("blk.12.ffn_down.weight"));
        assert!(!is_projection("blk.1.ffn_norm.weight"));
        assert!(!is_projection("output.weight"));
        assert!(is_embedding("token_embd.weight"));
    }

    #[test]
    fn float_stats_count_non_finite_apart() {
        let vals = [1.0f32, -3.0, f32::NAN, f32::INFINITY];
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let s = float_stats(FloatKind::F32, &bytes);
        assert_eq!((s.n, s.nan, s.pos_inf, s.neg_inf), (2, 1, 1, 0));
        assert_eq!((s.min, s.max), (-3.0, 1.0));
        assert_eq!(f32::from_bits(s.max_abs_bits), 3.0);
        let h: Vec<u8> = [half::f16::from_f32(2.0), half::f16::NEG_INFINITY]
            .iter()
            .flat_map(|v| v.to_bits().to_le_bytes())
            .collect();
        let s = float_stats(FloatKind::F16, &h);
        assert_eq!((s.n, s.neg_inf, s.max), (1, 1, 2.0));
    }

    #[test]
    fn long_arrays_are_summarized() {
        let v = GgufValue::Array(GgufArray::U32((0..100).collect()));
        let j = value_json(&v);
        assert_eq!(j["len"], 100);
        assert_eq!(j["first"], serde_json::json!([0, 1, 2, 3, 4]));
        assert_eq!(render_value(&j), "[0,1,2,3,4, … (100 items)");
        assert_eq!(
            value_json(&GgufValue::Array(GgufArray::U8(vec![1, 2]))),
            serde_json::json!([1, 2])
        );
    }
}
