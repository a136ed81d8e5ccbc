//! Opening the two sides: a model spec (forge preset or path) → a file; a probe kind → a
//! running [`Probe`].
//!
//! The oracle always runs out of process (`bitprobe-oracle`, speaking `probe::wire`), so a
//! bitnet.cpp abort becomes an error value. The engine runs in-process by default, or out of
//! process (`bitprobe serve-engine`) when both sides must be measured alike (bench).

use probe::wire::RemoteProbe;
use probe::{OpenRequest, Probe};
use std::fmt;
use std::path::{Path, PathBuf};

/// Where a model comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ModelSpec {
    /// A forge preset and seed; the file is forged once and cached under `target/`.
    Preset { name: String, seed: u64 },
    /// A GGUF file on disk.
    Path(PathBuf),
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSpec::Preset { name, seed } => write!(f, "preset {name} (seed {seed})"),
            ModelSpec::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("model file {0} does not exist")]
    Missing(PathBuf),
    #[error(transparent)]
    Forge(#[from] engine::forge::ForgeError),
    #[error(transparent)]
    Probe(#[from] probe::Error),
    #[error("{0}")]
    NoOracle(String),
}

impl ModelSpec {
    /// The model file, forging it first when it is a preset.
    pub fn resolve(&self) -> Result<PathBuf, OpenError> {
        match self {
            ModelSpec::Preset { name, seed } => Ok(engine::forge::forged(name, *seed)?),
            ModelSpec::Path(p) if p.exists() => Ok(p.clone()),
            ModelSpec::Path(p) => Err(OpenError::Missing(p.clone())),
        }
    }
}

/// Which implementation answers.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// bitprobe's Rust engine.
    Engine,
    /// bitnet.cpp, out of process.
    Oracle,
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeKind::Engine => "engine",
            ProbeKind::Oracle => "oracle",
        })
    }
}

/// The `bitprobe-oracle` server binary: `$BITPROBE_ORACLE_BIN`, else next to the running
/// executable (or one folder up, for test binaries in `target/<profile>/deps`).
pub fn oracle_binary() -> Result<PathBuf, OpenError> {
    if let Some(p) = std::env::var_os("BITPROBE_ORACLE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()
        .map_err(|e| OpenError::NoOracle(format!("cannot locate myself: {e}")))?;
    let name = format!("bitprobe-oracle{}", std::env::consts::EXE_SUFFIX);
    let mut tried = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join(&name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        tried.push(candidate.display().to_string());
    }
    Err(OpenError::NoOracle(format!(
        "the oracle server binary was not found (looked at {}): build it with `cargo build -p harness --bin bitprobe-oracle`, or set BITPROBE_ORACLE_BIN",
        tried.join(", ")
    )))
}

/// Opens a probe on a model file.
pub fn open(
    kind: ProbeKind,
    model: &Path,
    threads: usize,
    options: &[(&str, &str)],
) -> Result<Box<dyn Probe>, OpenError> {
    let mut req = OpenRequest::new(model).threads(threads);
    for (k, v) in options {
        req = req.option(k, v);
    }
    Ok(match kind {
        ProbeKind::Engine => Box::new(engine::EngineProbe::open(&req)?),
        ProbeKind::Oracle => Box::new(RemoteProbe::spawn(
            "bitnet.cpp oracle",
            oracle_binary()?,
            &[],
            req,
        )?),
    })
}

/// Opens a probe in a child process: the oracle server, or the engine through
/// `<bitprobe> serve-engine` (so both can be measured alike, e.g. their peak RSS).
pub fn open_remote(
    kind: ProbeKind,
    bitprobe: &Path,
    model: &Path,
    threads: usize,
) -> Result<RemoteProbe, OpenError> {
    let req = OpenRequest::new(model).threads(threads);
    Ok(match kind {
        ProbeKind::Engine => RemoteProbe::spawn("engine", bitprobe, &["serve-engine"], req)?,
        ProbeKind::Oracle => RemoteProbe::spawn("bitnet.cpp oracle", oracle_binary()?, &[], req)?,
    })
}
