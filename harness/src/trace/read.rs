//! Reading a trace folder.

use super::format::*;
use super::npy::read_npy;
use crate::judge::Phase;
use probe::StageId;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A trace folder loaded into memory.
#[derive(Clone, Debug)]
pub struct Trace {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub tensors: Vec<TracedTensor>,
    /// What was skipped while reading (stray JSON files).
    pub warnings: Vec<String>,
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
    pub(super) fn key(&self) -> (Phase, StageId, u32) {
        (self.phase, self.id, self.position)
    }
}

impl Trace {
    /// Whether every tensor has its values (so NMSE and friends can be computed).
    pub fn has_data(&self) -> bool {
        self.tensors.iter().all(|t| t.data.is_some())
    }
}

pub(super) fn read_manifest(dir: &Path) -> Result<Manifest, TraceError> {
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

pub(super) fn list_stage_files(dir: &Path) -> Result<Vec<String>, TraceError> {
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
    let listed = manifest.files.is_some();
    let mut tensors = Vec::with_capacity(names.len());
    let mut warnings = Vec::new();
    let mut seen = HashMap::new();
    for name in names {
        let path = dir.join(&name);
        let text = std::fs::read_to_string(&path).map_err(io_err("read", &path))?;
        // Without a `files` list every *.json is a candidate: one that is not a stage record
        // (no "stage" key) is someone else's file, skipped with a warning.
        if !listed
            && !serde_json::from_str::<serde_json::Value>(&text)
                .is_ok_and(|v| v.get("stage").is_some())
        {
            warnings.push(format!(
                "{name}: not a stage file (no \"stage\" field), skipped; list the stage files in trace.json \"files\" to be explicit"
            ));
            continue;
        }
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
            (TracePhase::Prompt, Some(s)) => {
                return Err(format_err(
                    &path,
                    format!("has \"step\": {s} but no \"phase\" (which defaults to \"prompt\"): a decode-step tensor needs \"phase\": \"decode\""),
                ))
            }
            (TracePhase::Prompt, None) => Phase::Prompt,
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
                let found = probe::blake3_f32(&data);
                if let Some(want) = r.blake3.as_ref().filter(|w| **w != found) {
                    return Err(format_err(
                        &p,
                        format!("values do not hash to the blake3 in {name}: {name} says {want}, the values hash to {found}"),
                    ));
                }
                Some(data)
            }
        };
        let blake3 = match (r.blake3, &data) {
            (Some(h), _) => h,
            (None, Some(d)) => probe::blake3_f32(d),
            (None, None) => {
                return Err(format_err(
                    &path,
                    "no \"blake3\" and no values (.npy): give one of them",
                ))
            }
        };
        let t = TracedTensor {
            phase,
            id,
            position: r.position,
            shape: r.shape,
            blake3,
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
        warnings,
    })
}
