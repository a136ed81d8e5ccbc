//! Trace folders: one probe's stage tensors on disk, and the first divergence between two.
//!
//! [`record`] runs one probe over a prompt with [`Capture::all`] and writes a folder;
//! [`read`] loads one; [`trace_diff`] compares two the way `bitprobe diff` compares two live
//! probes, and gives the same report ([`DiffReport`], built with [`diff::compare_stages`] and
//! [`diff::first_divergence`]). Folder B plays the oracle's part: it is the reference NMSE is
//! measured against. Two engine versions, the engine and the oracle, or a third-party engine
//! that writes this format can be compared without running anything again.
//!
//! # Format, version 1
//!
//! A trace is a folder with a manifest `trace.json` and one JSON file per stage tensor, plus
//! with `--raw` the tensor's f32 values as a `.npy` file. Fields marked **required** are all a
//! third-party writer must provide; bitprobe writes every field. `docs/trace-format.md` says
//! the same for writers in other languages, with the shape of every stage.
//!
//! `trace.json`:
//!
//! | field | | meaning |
//! |---|---|---|
//! | `format` | **required** | `"bitprobe-trace"` |
//! | `version` | **required** | `1` |
//! | `tokens` | **required** | prompt token ids, BOS included |
//! | `files` | optional | stage JSON file names; absent = every `*.json` but `trace.json` |
//! | `decode` | optional | decode steps: `[{step, position, input, chosen}]`, step 1-based |
//! | `generated` | optional | greedy tokens: the first, then each step's `chosen` |
//! | `weight_type` | optional | `I2_S`, `TQ1_0`, `TQ2_0`, `F16`, `F32`: picks the tolerances (default `F32`) |
//! | `probe`, `implementation` | optional | who computed it (`engine`, `engine 0.1.0`) |
//! | `model` | optional | `{path, bytes, blake3}` of the GGUF file |
//! | `prompt`, `add_bos`, `parse_special`, `chat` | optional | how the prompt was tokenized |
//! | `info` | optional | the probe's `probe::ModelInfo` |
//! | `raw` | optional | whether `.npy` data was written |
//!
//! One stage file, named `pos0003.blk.1.attn_q.json` by bitprobe (any name will do):
//!
//! | field | | meaning |
//! |---|---|---|
//! | `stage` | **required** | `blk.N.<stage>` or a global stage (`inp_embd`, `result_norm`, `result_output`); names as in `probe::Stage` |
//! | `position` | **required** | absolute token position, 0 = first prompt token |
//! | `shape` | **required** | row-major dimensions (`attn_q`: `[n_head, head_dim]`) |
//! | `blake3` | **required** | blake3 of the values as little-endian f32 bytes, lowercase hex |
//! | `phase` | optional | `"prompt"` (default) or `"decode"` |
//! | `step` | required for `decode` | decode step, 1-based |
//! | `layer` | optional | must agree with `stage` |
//! | `data` | optional | `.npy` file in the folder (NPY v1.0–3.0, `'<f4'`, C order); absent = `<stem>.npy` if it exists; checked against `blake3` |
//! | `rms`, `mean`, `min`, `max` | optional | over the finite values (`null` when none) |
//! | `nan`, `pos_inf`, `neg_inf` | optional | counts |
//!
//! Tensors are the ones `probe::Probe::forward` captures: per position, the prompt pass in one
//! batch from an empty KV cache; decode steps one token at a time through the cache. When
//! both folders have data for every tensor, `trace-diff` reports NMSE, cosine and max |Δ|
//! against the tolerances, exactly as `diff`; otherwise it compares hashes only — a row is
//! bit-exact or not — and says so (two implementations agree bit for bit only where their
//! arithmetic is identical, so a hash difference alone does not mean a bug).

use crate::diff::{self, DiffReport, Phase, Row};
use crate::tolerance::{governing_type, ToleranceOverrides};
use probe::{Capture, GenerateRequest, ModelInfo, Probe, StageId, StageTensor, Stats, Token};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
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
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error(transparent)]
    Probe(#[from] probe::Error),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TraceError {
    let path = path.to_path_buf();
    move |source| TraceError::Io {
        action,
        path,
        source,
    }
}

fn format_err(path: &Path, message: impl Into<String>) -> TraceError {
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
    pub weight_type: Option<String>,
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
    pub blake3: String,
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

// ---------------------------------------------------------------------------------------------
// Writing.

/// What to trace.
#[derive(Clone, Debug)]
pub struct TraceRequest {
    pub text: String,
    pub add_bos: bool,
    pub parse_special: bool,
    /// Wrap the text in the Llama-3 chat template (one BOS, specials parsed).
    pub chat: bool,
    /// Greedy decode steps after the prompt.
    pub decode: usize,
    /// Also write each tensor's values as `.npy`.
    pub raw: bool,
}

/// Runs `probe` over the request with every stage captured and writes the trace to `out`
/// (created if missing; a previous trace there is replaced; any other non-empty folder is
/// refused). `probe_name` is `engine`, `oracle` or a third party's name.
pub fn record(
    probe: &mut dyn Probe,
    probe_name: &str,
    model: &Path,
    req: &TraceRequest,
    out: &Path,
) -> Result<Manifest, TraceError> {
    let (text, add_bos, parse_special) = if req.chat {
        (
            engine::tokenizer::llama3_chat(&[("user", req.text.as_str())], true),
            false,
            true,
        )
    } else {
        (req.text.clone(), req.add_bos, req.parse_special)
    };
    let tokens = probe.tokenize(&text, add_bos, parse_special)?;
    if tokens.is_empty() {
        return Err(probe::Error::InvalidRequest(format!(
            "prompt {:?} tokenizes to nothing",
            req.text
        ))
        .into());
    }
    prepare_dir(out)?;
    let mut files = Vec::new();
    let fwd = probe.forward(&tokens, &Capture::all())?;
    for t in &fwd.stages {
        files.push(write_stage(out, Phase::Prompt, t, req.raw)?);
    }
    let (mut decode, mut generated) = (Vec::new(), Vec::new());
    if req.decode > 0 {
        // The prompt's stages are in `fwd` already: capture only the decode positions.
        let n = tokens.len() as u32;
        let mut g = GenerateRequest::greedy(tokens.clone(), req.decode + 1);
        g.capture = Capture::all().with_positions(n..n + req.decode as u32);
        g.keep_logits = true;
        let gen = probe.generate(&g)?;
        for (i, s) in gen.steps.iter().enumerate() {
            let step = i as u32 + 1;
            for t in &s.stages {
                files.push(write_stage(out, Phase::Decode(step), t, req.raw)?);
            }
            decode.push(DecodeRecord {
                step,
                position: s.position,
                input: s.input,
                chosen: s.chosen,
            });
        }
        generated = gen.tokens.clone();
    }
    let info = probe.info().clone();
    let (bytes, blake3) = hash_file(model)?;
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        probe: probe_name.into(),
        implementation: info.implementation.clone(),
        model: Some(ModelRef {
            path: model.display().to_string(),
            bytes,
            blake3,
        }),
        prompt: Some(req.text.clone()),
        add_bos: Some(add_bos),
        parse_special: Some(parse_special),
        chat: Some(req.chat),
        tokens,
        decode,
        generated,
        weight_type: Some(governing_type(&info.weight_types)),
        info: Some(info),
        raw: req.raw,
        files: Some(files),
    };
    let path = out.join(MANIFEST);
    let json = serde_json::to_string_pretty(&manifest).map_err(|source| TraceError::Json {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&path, json + "\n").map_err(io_err("write", &path))?;
    Ok(manifest)
}

/// Makes `out` ready: created if missing; a previous trace's files removed; refused when it
/// holds anything else.
fn prepare_dir(out: &Path) -> Result<(), TraceError> {
    let manifest = out.join(MANIFEST);
    if manifest.is_file() {
        let old = read_manifest(out)?;
        let names = match old.files {
            Some(f) => f,
            None => list_stage_files(out)?,
        };
        for name in names.iter().filter(|n| is_plain_name(n)) {
            for f in [out.join(name), out.join(name).with_extension("npy")] {
                if f.is_file() {
                    std::fs::remove_file(&f).map_err(io_err("remove", &f))?;
                }
            }
        }
        std::fs::remove_file(&manifest).map_err(io_err("remove", &manifest))?;
    } else if out.is_dir() {
        let mut entries = std::fs::read_dir(out).map_err(io_err("list", out))?;
        if entries.next().is_some() {
            return Err(format_err(
                out,
                "folder is not empty and holds no trace.json: refusing to write a trace into it",
            ));
        }
    }
    std::fs::create_dir_all(out).map_err(io_err("create", out))
}

fn is_plain_name(name: &str) -> bool {
    Path::new(name).file_name().is_some_and(|f| f == name)
}

/// Writes one stage tensor (and its `.npy` with `raw`); returns the JSON file name.
fn write_stage(out: &Path, phase: Phase, t: &StageTensor, raw: bool) -> Result<String, TraceError> {
    let stem = format!("pos{:04}.{}", t.position, t.id());
    let stats = Stats::of(&t.data);
    let finite = |x: f32| x.is_finite().then_some(x as f64);
    let data = if raw {
        let name = format!("{stem}.npy");
        let path = out.join(&name);
        write_npy(&path, &t.shape, &t.data).map_err(io_err("write", &path))?;
        Some(name)
    } else {
        None
    };
    let record = StageRecord {
        stage: t.id().to_string(),
        phase: match phase {
            Phase::Prompt => TracePhase::Prompt,
            Phase::Decode(_) => TracePhase::Decode,
        },
        step: match phase {
            Phase::Prompt => None,
            Phase::Decode(s) => Some(s),
        },
        position: t.position,
        layer: t.layer,
        shape: t.shape.clone(),
        blake3: t.blake3(),
        rms: (stats.len > stats.non_finite()).then_some(stats.rms),
        mean: (stats.len > stats.non_finite()).then_some(stats.mean),
        min: finite(stats.min),
        max: finite(stats.max),
        nan: Some(stats.nan),
        pos_inf: Some(stats.pos_inf),
        neg_inf: Some(stats.neg_inf),
        data,
    };
    let name = format!("{stem}.json");
    let path = out.join(&name);
    let json = serde_json::to_string_pretty(&record).map_err(|source| TraceError::Json {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&path, json + "\n").map_err(io_err("write", &path))?;
    Ok(name)
}

/// Size and blake3 of a file, streamed.
fn hash_file(path: &Path) -> Result<(u64, String), TraceError> {
    let mut f = std::fs::File::open(path).map_err(io_err("open", path))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, h.finalize().to_hex().to_string()))
}

// ---------------------------------------------------------------------------------------------
// NPY.
//
// Written and read by hand: NPY is a 10-byte preamble, a Python-literal header dict padded to
// a multiple of 64 bytes, then the raw values (numpy's `numpy/lib/format.py` documents it).
// For one dtype in C order that is twenty lines; `npyz` / `ndarray-npy` would add a
// dependency tree (ndarray, num-traits, …) for them.

const NPY_MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Writes `data` as an NPY v1.0 file of little-endian f32 with the given shape.
pub fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> std::io::Result<()> {
    let dims = match shape {
        [d] => format!("{d},"),
        _ => shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({dims}), }}");
    // Preamble (magic, version, u16 length) + header + '\n' is a multiple of 64.
    let total = (10 + header.len() + 1).div_ceil(64) * 64;
    header.extend(std::iter::repeat_n(' ', total - 10 - header.len() - 1));
    header.push('\n');
    let mut out = Vec::with_capacity(total + data.len() * 4);
    out.extend_from_slice(NPY_MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let mut f = std::fs::File::create(path)?;
    f.write_all(&out)
}

/// Reads an NPY file (v1.0, 2.0 or 3.0) of little-endian f32 in C order: (shape, values).
pub fn read_npy(path: &Path) -> Result<(Vec<usize>, Vec<f32>), TraceError> {
    let bytes = std::fs::read(path).map_err(io_err("read", path))?;
    let bad = |m: &str| format_err(path, format!("not an f32 NPY file: {m}"));
    if bytes.len() < 10 || &bytes[..6] != NPY_MAGIC {
        return Err(bad("no \\x93NUMPY magic"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(&format!("NPY version {v}"))),
    };
    let header = bytes
        .get(start..start + hlen)
        .ok_or_else(|| bad("header runs past the end"))?;
    let header = std::str::from_utf8(header)
        .map_err(|_| bad("header is not text"))?
        .replace('"', "'");
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}':"))? + key.len() + 3;
        Some(header[i..].trim_start())
    };
    let descr = field("descr").ok_or_else(|| bad("no 'descr'"))?;
    if !descr.starts_with("'<f4'") {
        return Err(bad(&format!(
            "dtype {}; expected '<f4'",
            descr.split(',').next().unwrap_or(descr)
        )));
    }
    if !field("fortran_order").is_some_and(|v| v.starts_with("False")) {
        return Err(bad("fortran_order must be False"));
    }
    let shape_text = field("shape").ok_or_else(|| bad("no 'shape'"))?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split_once(')'))
        .map(|(s, _)| s)
        .ok_or_else(|| bad("shape is not a tuple"))?;
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad(&format!("shape entry '{s}'"))))
        .collect::<Result<_, _>>()?;
    let n: usize = shape.iter().product();
    let body = &bytes[start + hlen..];
    if body.len() != n * 4 {
        return Err(bad(&format!(
            "shape {shape:?} needs {} data bytes, file has {}",
            n * 4,
            body.len()
        )));
    }
    let data = body
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((shape, data))
}

// ---------------------------------------------------------------------------------------------
// Reading.

/// A trace folder loaded into memory.
#[derive(Clone, Debug)]
pub struct Trace {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub tensors: Vec<TracedTensor>,
}

/// One stage tensor of a trace; `data` when the trace has it.
#[derive(Clone, Debug)]
pub struct TracedTensor {
    pub phase: Phase,
    pub id: StageId,
    pub position: u32,
    pub shape: Vec<usize>,
    pub blake3: String,
    pub rms: Option<f64>,
    pub data: Option<Vec<f32>>,
    pub file: String,
}

impl TracedTensor {
    fn key(&self) -> (Phase, StageId, u32) {
        (self.phase, self.id, self.position)
    }
}

impl Trace {
    /// Whether every tensor has its values (so NMSE and friends can be computed).
    pub fn has_data(&self) -> bool {
        self.tensors.iter().all(|t| t.data.is_some())
    }
}

fn read_manifest(dir: &Path) -> Result<Manifest, TraceError> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(io_err("read", &path))?;
    let m: Manifest = serde_json::from_str(&text).map_err(|source| TraceError::Json {
        path: path.clone(),
        source,
    })?;
    if m.format != FORMAT {
        return Err(format_err(
            &path,
            format!("format '{}', expected '{FORMAT}'", m.format),
        ));
    }
    if m.version != VERSION {
        return Err(format_err(
            &path,
            format!(
                "format version {}; this bitprobe reads version {VERSION}",
                m.version
            ),
        ));
    }
    Ok(m)
}

fn list_stage_files(dir: &Path) -> Result<Vec<String>, TraceError> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err("list", dir))? {
        let e = e.map_err(io_err("list", dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") && name != MANIFEST {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Loads the trace in `dir`: the manifest, every stage file, and the `.npy` data where
/// present (checked against the file's blake3).
pub fn read(dir: &Path) -> Result<Trace, TraceError> {
    let manifest = read_manifest(dir)?;
    let names = match &manifest.files {
        Some(f) => f.clone(),
        None => list_stage_files(dir)?,
    };
    let mut tensors = Vec::with_capacity(names.len());
    let mut seen = HashMap::new();
    for name in names {
        let path = dir.join(&name);
        let text = std::fs::read_to_string(&path).map_err(io_err("read", &path))?;
        let r: StageRecord = serde_json::from_str(&text).map_err(|source| TraceError::Json {
            path: path.clone(),
            source,
        })?;
        let id: StageId = r.stage.parse().map_err(|e: String| format_err(&path, e))?;
        if r.layer.is_some() && r.layer != id.layer {
            return Err(format_err(
                &path,
                format!("layer {:?} disagrees with stage '{}'", r.layer, r.stage),
            ));
        }
        let phase = match (r.phase, r.step) {
            (TracePhase::Prompt, _) => Phase::Prompt,
            (TracePhase::Decode, Some(s)) if s >= 1 => Phase::Decode(s),
            (TracePhase::Decode, _) => {
                return Err(format_err(&path, "phase \"decode\" needs \"step\" ≥ 1"))
            }
        };
        let npy = match &r.data {
            Some(d) => Some(dir.join(d)),
            None => Some(path.with_extension("npy")).filter(|p| p.is_file()),
        };
        let data = match npy {
            None => None,
            Some(p) => {
                let (shape, data) = read_npy(&p)?;
                if shape.iter().product::<usize>() != r.shape.iter().product::<usize>() {
                    return Err(format_err(
                        &p,
                        format!("shape {shape:?}, but {name} says {:?}", r.shape),
                    ));
                }
                if probe::blake3_f32(&data) != r.blake3 {
                    return Err(format_err(
                        &p,
                        format!("values do not hash to the blake3 in {name}"),
                    ));
                }
                Some(data)
            }
        };
        let t = TracedTensor {
            phase,
            id,
            position: r.position,
            shape: r.shape,
            blake3: r.blake3,
            rms: r.rms,
            data,
            file: name,
        };
        if let Some(other) = seen.insert(t.key(), t.file.clone()) {
            return Err(format_err(
                &path,
                format!(
                    "same tensor ({phase}, {id}, position {}) as {other}",
                    t.position
                ),
            ));
        }
        tensors.push(t);
    }
    Ok(Trace {
        dir: dir.to_path_buf(),
        manifest,
        tensors,
    })
}

// ---------------------------------------------------------------------------------------------
// Comparing.

/// How two traces were compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareMode {
    /// Both have every tensor's values: NMSE, cosine, max |Δ| against the tolerances.
    Values,
    /// At least one has hashes only: each row is bit-exact or not, no tolerance applies.
    HashOnly,
}

/// Who one side of a trace-diff is.
#[derive(Clone, Debug, Serialize)]
pub struct TraceSide {
    pub dir: String,
    pub probe: String,
    pub implementation: String,
    pub model_blake3: Option<String>,
}

/// The report of `bitprobe trace-diff A B`: the same [`DiffReport`] as `bitprobe diff`, with
/// A in the engine's place and B (the reference) in the oracle's.
#[derive(Clone, Debug, Serialize)]
pub struct TraceDiff {
    pub a: TraceSide,
    pub b: TraceSide,
    pub mode: CompareMode,
    /// Things that make the comparison less meaningful (different models, prompts, …).
    pub warnings: Vec<String>,
    pub report: DiffReport,
}

impl TraceDiff {
    pub fn pass(&self) -> bool {
        self.report.pass()
    }
}

fn side(t: &Trace) -> TraceSide {
    TraceSide {
        dir: t.dir.display().to_string(),
        probe: t.manifest.probe.clone(),
        implementation: t.manifest.implementation.clone(),
        model_blake3: t.manifest.model.as_ref().map(|m| m.blake3.clone()),
    }
}

/// Compares trace `a` with reference `b`: rows in evaluation order, the first divergence as
/// [`diff::first_divergence`] names it. Decode steps are compared while both traces fed the
/// same token; the first step where they did not is itself the divergence (`decode`).
pub fn trace_diff(a: &Trace, b: &Trace, tol: &ToleranceOverrides) -> TraceDiff {
    let mut warnings = Vec::new();
    if let (Some(ma), Some(mb)) = (&a.manifest.model, &b.manifest.model) {
        if ma.blake3 != mb.blake3 {
            warnings.push(format!(
                "the traces come from different model files ({} vs {})",
                ma.path, mb.path
            ));
        }
    }
    if a.manifest.prompt.is_some()
        && b.manifest.prompt.is_some()
        && a.manifest.prompt != b.manifest.prompt
    {
        warnings.push(format!(
            "the prompts differ: {:?} vs {:?}",
            a.manifest.prompt.as_deref().unwrap_or(""),
            b.manifest.prompt.as_deref().unwrap_or("")
        ));
    }
    let weight_type = b
        .manifest
        .weight_type
        .clone()
        .or_else(|| a.manifest.weight_type.clone())
        .unwrap_or_else(|| "F32".into());
    let mode = if a.has_data() && b.has_data() {
        CompareMode::Values
    } else {
        CompareMode::HashOnly
    };

    // Decode steps both traces have; a shorter trace is not a divergence.
    let steps = |t: &Trace| {
        t.tensors
            .iter()
            .filter_map(|x| match x.phase {
                Phase::Decode(s) => Some(s),
                Phase::Prompt => None,
            })
            .max()
            .unwrap_or(0)
            .max(t.manifest.decode.len() as u32)
    };
    let (steps_a, steps_b) = (steps(a), steps(b));
    if steps_a != steps_b {
        warnings.push(format!(
            "A has {steps_a} decode steps, B {steps_b}: only the first {} are compared",
            steps_a.min(steps_b)
        ));
    }
    // The first decode step fed different tokens: it and every later step are incomparable.
    let input_mismatch = a
        .manifest
        .decode
        .iter()
        .zip(&b.manifest.decode)
        .find(|(x, y)| x.input != y.input || x.position != y.position);
    let comparable = |p: Phase| match p {
        Phase::Prompt => true,
        Phase::Decode(s) => {
            s <= steps_a.min(steps_b) && input_mismatch.is_none_or(|(x, _)| s < x.step)
        }
    };
    let mut by_phase: BTreeMap<Phase, (Vec<&TracedTensor>, Vec<&TracedTensor>)> = BTreeMap::new();
    for t in a.tensors.iter().filter(|t| comparable(t.phase)) {
        by_phase.entry(t.phase).or_default().0.push(t);
    }
    for t in b.tensors.iter().filter(|t| comparable(t.phase)) {
        by_phase.entry(t.phase).or_default().1.push(t);
    }
    let (mut rows, mut logits) = (Vec::new(), Vec::new());
    for (phase, (ta, tb)) in &by_phase {
        match mode {
            CompareMode::Values => {
                let (sa, sb) = (stage_tensors(ta), stage_tensors(tb));
                rows.extend(diff::compare_stages(*phase, &sa, &sb, tol, &weight_type));
                let out_a: HashMap<u32, &StageTensor> = sa
                    .iter()
                    .filter(|t| t.stage == probe::Stage::ResultOutput)
                    .map(|t| (t.position, t))
                    .collect();
                for o in sb.iter().filter(|t| t.stage == probe::Stage::ResultOutput) {
                    if let Some(e) = out_a
                        .get(&o.position)
                        .filter(|e| e.data.len() == o.data.len())
                    {
                        logits.push(diff::logits_row(
                            *phase,
                            o.position,
                            &e.data,
                            &o.data,
                            tol,
                            &weight_type,
                        ));
                    }
                }
            }
            CompareMode::HashOnly => rows.extend(hash_rows(*phase, ta, tb)),
        }
    }
    for r in &mut rows {
        if let Some(n) = &mut r.note {
            *n = n
                .replace("the engine did not", "A did not")
                .replace("the oracle did not", "B did not");
        }
    }
    rows.sort_by_key(|r| r.key());
    logits.sort_by_key(|l| (l.phase, l.position));
    let mut report = DiffReport {
        engine_tokens: a.manifest.tokens.clone(),
        oracle_tokens: b.manifest.tokens.clone(),
        weight_type,
        rows,
        logits,
        oracle_greedy: b.manifest.generated.clone(),
        engine_greedy: a.manifest.generated.clone(),
        first_divergence: None,
    };
    report.first_divergence = diff::first_divergence(&report);
    if let (None, Some((x, y))) = (&report.first_divergence, input_mismatch) {
        report.first_divergence = Some(diff::Divergence {
            phase: Phase::Decode(x.step),
            position: x.position.min(y.position),
            stage: "decode".into(),
            detail: format!(
                "decode step {} feeds token {} in A and {} in B (positions {} and {}): the traces \
                 were not teacher-forced, so this and later steps are not compared",
                x.step, x.input, y.input, x.position, y.position
            ),
        });
    }
    TraceDiff {
        a: side(a),
        b: side(b),
        mode,
        warnings,
        report,
    }
}

fn stage_tensors(ts: &[&TracedTensor]) -> Vec<StageTensor> {
    ts.iter()
        .map(|t| StageTensor {
            stage: t.id.stage,
            layer: t.id.layer,
            position: t.position,
            shape: t.shape.clone(),
            data: t.data.clone().unwrap_or_default(),
        })
        .collect()
}

/// Hash-only rows: bit-exact or not; tensors on one side only fail, as in `compare_stages`.
fn hash_rows(phase: Phase, a: &[&TracedTensor], b: &[&TracedTensor]) -> Vec<Row> {
    let by_key: HashMap<_, &&TracedTensor> = a.iter().map(|t| (t.key(), t)).collect();
    let b_keys: std::collections::HashSet<_> = b.iter().map(|t| t.key()).collect();
    let fmt_rms = |r: Option<f64>| r.map_or("?".to_string(), |x| format!("{x:.6e}"));
    let row = |t: &TracedTensor, pass: bool, note: Option<String>| Row {
        phase,
        position: t.position,
        stage: t.id,
        shape: t.shape.clone(),
        metrics: None,
        nmse_limit: 0.0,
        pass,
        note,
    };
    let mut rows = Vec::new();
    for tb in b {
        rows.push(match by_key.get(&tb.key()) {
            None => row(tb, false, Some("A did not produce this stage".into())),
            Some(ta) if ta.blake3 == tb.blake3 => row(tb, true, None),
            Some(ta) => row(
                tb,
                false,
                Some(format!(
                    "hash-only: blake3 differs (rms A {} vs B {})",
                    fmt_rms(ta.rms),
                    fmt_rms(tb.rms)
                )),
            ),
        });
    }
    for ta in a.iter().filter(|t| !b_keys.contains(&t.key())) {
        rows.push(row(ta, false, Some("B did not produce this stage".into())));
    }
    rows
}

/// The `bitprobe trace-diff` table: one row per (phase, position, stage), then the verdict.
pub fn render(d: &TraceDiff, failures_only: bool) -> String {
    use std::fmt::Write;
    let r = &d.report;
    let mut s = String::new();
    let who = |x: &TraceSide| {
        let probe = if x.probe.is_empty() {
            "?"
        } else {
            x.probe.as_str()
        };
        format!("{} ({probe}, {})", x.dir, x.implementation)
    };
    let _ = writeln!(s, "A         {}", who(&d.a));
    let _ = writeln!(s, "B         {}  (reference)", who(&d.b));
    let _ = writeln!(s, "tokens    A {:?}", r.engine_tokens);
    let _ = writeln!(s, "          B {:?}", r.oracle_tokens);
    let _ = writeln!(s, "weights   {}", r.weight_type);
    match d.mode {
        CompareMode::Values => {}
        CompareMode::HashOnly => {
            let _ = writeln!(
                s,
                "mode      HASH-ONLY: at least one trace has no values (written without --raw), so rows \
                 are bit-exact or not and no tolerance applies (two implementations agree bit for bit \
                 only where their arithmetic is identical). Trace both with --raw for NMSE and \
                 cosine."
            );
        }
    }
    for w in &d.warnings {
        let _ = writeln!(s, "warning   {w}");
    }
    let _ = writeln!(s);
    match d.mode {
        CompareMode::Values => s.push_str(&crate::diff::render_rows_and_logits(r, failures_only)),
        CompareMode::HashOnly => {
            let _ = writeln!(
                s,
                "{:<14} {:>4}  {:<22} {:>10}",
                "phase", "pos", "stage", "bit-exact"
            );
            for row in r.rows.iter().filter(|x| !(failures_only && x.pass)) {
                let mark = if row.pass {
                    "yes".to_string()
                } else {
                    format!("no   {}", row.note.as_deref().unwrap_or(""))
                };
                let _ = writeln!(
                    s,
                    "{:<14} {:>4}  {:<22} {mark:>10}",
                    row.phase.to_string(),
                    row.position,
                    row.stage.to_string()
                );
            }
            let _ = writeln!(s);
        }
    }
    if !r.oracle_greedy.is_empty() || !r.engine_greedy.is_empty() {
        let _ = writeln!(s, "greedy    A {:?}", r.engine_greedy);
        let _ = writeln!(s, "          B {:?}", r.oracle_greedy);
    }
    let label = if d.mode == CompareMode::HashOnly {
        " (hash-only)"
    } else {
        ""
    };
    match &r.first_divergence {
        None if d.mode == CompareMode::HashOnly => {
            let _ = writeln!(s, "verdict   PASS (hash-only): every tensor is bit-exact");
        }
        None => {
            let _ = writeln!(s, "verdict   PASS: A and B agree within tolerance");
        }
        Some(dv) => {
            let _ = writeln!(s, "verdict   FIRST DIVERGENCE{label}: {dv}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trips_and_pads_to_64() {
        let dir = std::env::temp_dir().join(format!("bitprobe-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for shape in [vec![5usize], vec![2, 3], vec![]] {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| i as f32 - 1.5).collect();
            let p = dir.join("x.npy");
            write_npy(&p, &shape, &data).unwrap();
            let bytes = std::fs::read(&p).unwrap();
            let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            assert_eq!((10 + hlen) % 64, 0);
            assert_eq!(bytes[10 + hlen - 1], b'\n');
            assert_eq!(read_npy(&p).unwrap(), (shape, data));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn npy_reader_reads_what_numpy_writes() {
        // numpy 2's `np.save(p, np.arange(5, dtype='<f4'))`: a header padded to 128 bytes.
        let dir = std::env::temp_dir().join(format!("bitprobe-npy-numpy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut h = "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }".to_string();
        h.extend(std::iter::repeat_n(' ', 117 - h.len()));
        h.push('\n');
        let mut b = NPY_MAGIC.to_vec();
        b.extend_from_slice(&[1, 0, 0x76, 0]);
        b.extend_from_slice(h.as_bytes());
        (0..5).for_each(|i| b.extend_from_slice(&(i as f32).to_le_bytes()));
        let p = dir.join("numpy.npy");
        std::fs::write(&p, b).unwrap();
        assert_eq!(
            read_npy(&p).unwrap(),
            (vec![5], vec![0.0, 1.0, 2.0, 3.0, 4.0])
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn npy_reader_rejects_other_dtypes() {
        let dir = std::env::temp_dir().join(format!("bitprobe-npy-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.npy");
        let mut h = "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }".to_string();
        h.extend(std::iter::repeat_n(' ', 128 - 10 - h.len() - 1));
        h.push('\n');
        let mut b = NPY_MAGIC.to_vec();
        b.extend_from_slice(&[1, 0]);
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(&1f64.to_le_bytes());
        std::fs::write(&p, b).unwrap();
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(e.contains("'<f8'") && e.contains("expected '<f4'"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
