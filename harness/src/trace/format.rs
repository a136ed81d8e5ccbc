//! The trace format's types: the manifest, one stage file, and the errors of reading one.

use crate::tolerance::WeightType;
use probe::{ModelInfo, Token};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `format` of a trace manifest.
pub const FORMAT: &str = "bitprobe-trace";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// The manifest's file name.
pub const MANIFEST: &str = "trace.json";

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// (Not `#[source]`: the message already carries serde's words, and a chain printer
    /// would print them twice.)
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error(transparent)]
    Probe(#[from] probe::Error),
}

pub(super) fn io_err(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> TraceError {
    let path = path.to_path_buf();
    move |source| TraceError::Io {
        action,
        path,
        source,
    }
}

pub(super) fn format_err(path: &Path, message: impl Into<String>) -> TraceError {
    TraceError::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// `trace.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    #[serde(default)]
    pub probe: String,
    #[serde(default)]
    pub implementation: String,
    #[serde(default)]
    pub model: Option<ModelRef>,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub add_bos: Option<bool>,
    #[serde(default)]
    pub parse_special: Option<bool>,
    #[serde(default)]
    pub chat: Option<bool>,
    pub tokens: Vec<Token>,
    #[serde(default)]
    pub decode: Vec<DecodeRecord>,
    #[serde(default)]
    pub generated: Vec<Token>,
    #[serde(default)]
    pub weight_type: Option<WeightType>,
    #[serde(default)]
    pub info: Option<ModelInfo>,
    #[serde(default)]
    pub raw: bool,
    #[serde(default)]
    pub files: Option<Vec<String>>,
}

/// The model file a trace was made from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRef {
    pub path: String,
    pub bytes: u64,
    pub blake3: String,
}

/// One decode step: the token fed at `position` and the token chosen from its logits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecodeRecord {
    pub step: u32,
    pub position: u32,
    pub input: Token,
    pub chosen: Token,
}

/// When a stage tensor was computed, as written in a stage file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TracePhase {
    #[default]
    Prompt,
    Decode,
}

/// One stage file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub stage: String,
    #[serde(default)]
    pub phase: TracePhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    pub position: u32,
    #[serde(default)]
    pub layer: Option<u32>,
    pub shape: Vec<usize>,
    /// Required without values; with values bitprobe computes it (and checks a given one).
    #[serde(default)]
    pub blake3: Option<String>,
    #[serde(default)]
    pub rms: Option<f64>,
    #[serde(default)]
    pub mean: Option<f64>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default)]
    pub nan: Option<usize>,
    #[serde(default)]
    pub pos_inf: Option<usize>,
    #[serde(default)]
    pub neg_inf: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}
