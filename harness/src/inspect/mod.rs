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
pub const PROBE_STRINGS: &str = include_str!("../../../cases/tokenizer/inputs.json");

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
    /// Today's bitnet.cpp overflows its stack on long prompts with this file's I2_S matrices.
    Bitnet2026PromptLimit,
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
    warn_bitnet2026_prompt_limit(&f, &mut report.warnings);
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

mod render;
mod stats;
mod warnings;

pub use render::render;
#[cfg(test)]
use render::render_value;
use stats::*;
pub use warnings::measure_pre_tokenizer;
use warnings::*;

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
