//! Which implementation answers, and the one path that opens it.
//!
//! A **probe spec** names an implementation wherever one is chosen (`--engine`, `--reference`,
//! `--probe`, a case's `engine`/`reference` keys, `models.toml`'s `engines`):
//!
//! | spec | what runs |
//! |---|---|
//! | `engine` | bitprobe's Rust engine, in-process (or `bitprobe serve-engine` for bench) |
//! | `oracle`, `bitnet.cpp-2024` | the vendored bitnet.cpp (crates.io `bitnet-cpp-sys` 0.0.5) + our patches, `bitprobe-oracle` |
//! | `bitnet.cpp-2026` | today's bitnet.cpp (crates.io `bitnet-llm-sys` 1.0.2) + its patches, `bitprobe-oracle-2026` |
//! | a name from `probes.toml` | `[probe.NAME]`: `command = [...]`, optional `env`, `description`, `timeout`, `available_if` |
//! | `cmd:PROGRAM ARG…` | any command speaking the wire protocol (docs/wire-protocol.md) |
//!
//! Every probe but `engine` runs out of process: a crash, a hang (the [`Watchdog`]) or a
//! malformed frame is an error naming the probe and the request, and the next request
//! starts it again.

use probe::wire::{Launch, RemoteProbe, Watchdog};
use probe::{OpenRequest, Probe};
use serde::Deserialize;
use std::collections::BTreeMap;
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
    #[error("{0} is not a regular file (a FIFO, device or folder): give a GGUF file")]
    NotAFile(PathBuf),
    #[error("{path}: {source}")]
    Gguf {
        path: PathBuf,
        source: engine::gguf::GgufError,
    },
    #[error(transparent)]
    Forge(#[from] engine::forge::ForgeError),
    #[error(transparent)]
    Probe(#[from] probe::Error),
    #[error("{0}")]
    NoServer(String),
    #[error("{0}")]
    Spec(String),
}

impl ModelSpec {
    /// The model file, forging it first when it is a preset.
    pub fn resolve(&self) -> Result<PathBuf, OpenError> {
        match self {
            ModelSpec::Preset { name, seed } => Ok(engine::forge::forged(name, *seed)?),
            ModelSpec::Path(p) => {
                let meta = std::fs::metadata(p).map_err(|_| OpenError::Missing(p.clone()))?;
                if !meta.is_file() {
                    return Err(OpenError::NotAFile(p.clone()));
                }
                Ok(p.clone())
            }
        }
    }
}

/// Checks a model file with bitprobe's own validating GGUF reader, so a broken file gets the
/// reader's precise error (key, tensor, byte offset) before any reference aborts on it.
pub fn validate_model(path: &Path) -> Result<(), OpenError> {
    let meta = std::fs::metadata(path).map_err(|_| OpenError::Missing(path.to_path_buf()))?;
    if !meta.is_file() {
        return Err(OpenError::NotAFile(path.to_path_buf()));
    }
    engine::gguf::GgufFile::open(path)
        .map(|_| ())
        .map_err(|source| OpenError::Gguf {
            path: path.to_path_buf(),
            source,
        })
}

/// A bitnet.cpp build served by its own binary (two ggml copies cannot share a process).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reference {
    /// The vendored 2024 tree (`bitnet-cpp-sys` 0.0.5) plus our patches: the default.
    Bitnet2024,
    /// Today's tree (`bitnet-llm-sys` 1.0.2) plus its build patches.
    Bitnet2026,
}

impl Reference {
    pub fn binary_name(self) -> &'static str {
        match self {
            Reference::Bitnet2024 => "bitprobe-oracle",
            Reference::Bitnet2026 => "bitprobe-oracle-2026",
        }
    }

    /// The spec that names it.
    pub fn spec_name(self) -> &'static str {
        match self {
            Reference::Bitnet2024 => "bitnet.cpp-2024",
            Reference::Bitnet2026 => "bitnet.cpp-2026",
        }
    }

    /// Where its server binary is: `$BITPROBE_ORACLE_BIN` / `$BITPROBE_ORACLE_2026_BIN`, else
    /// next to the running executable (or one folder up, for test binaries in
    /// `target/<profile>/deps`).
    pub fn binary(self) -> Result<PathBuf, OpenError> {
        let var = match self {
            Reference::Bitnet2024 => "BITPROBE_ORACLE_BIN",
            Reference::Bitnet2026 => "BITPROBE_ORACLE_2026_BIN",
        };
        if let Some(p) = std::env::var_os(var) {
            return Ok(PathBuf::from(p));
        }
        let exe = std::env::current_exe()
            .map_err(|e| OpenError::NoServer(format!("cannot locate myself: {e}")))?;
        let name = format!("{}{}", self.binary_name(), std::env::consts::EXE_SUFFIX);
        let mut tried = Vec::new();
        for dir in exe.ancestors().skip(1).take(2) {
            let candidate = dir.join(&name);
            if candidate.is_file() {
                return Ok(candidate);
            }
            tried.push(candidate.display().to_string());
        }
        let build = match self {
            Reference::Bitnet2024 => "cargo build -p harness --bin bitprobe-oracle",
            Reference::Bitnet2026 => "scripts/setup.sh, then cargo build -p oracle-2026",
        };
        Err(OpenError::NoServer(format!(
            "the {} server binary was not found (looked at {}): build it with `{build}`, or set {var}",
            self.spec_name(),
            tried.join(", ")
        )))
    }
}

/// The longest prompt today's bitnet.cpp (`bitnet.cpp-2026`) can prefill in one batch on a
/// model before it overflows its stack, at `threads` threads. Its new I2_S matmul path
/// (`ggml.c` ≈ 13261, taken for 4 or more tokens) puts `float tmp[rows × (n − n % 4)]` on
/// the stack, rows being one thread's share of the matrix. Measured on small-llama3-i2s (1536
/// rows) at 1 thread with an 8 MiB stack: 1363 tokens run, 1364 crash (SIGSEGV); this
/// formula — `4·⌊(S − 64 KiB) / (16·R_t)⌋ + 3`, S the stack limit, R_t the busiest thread's
/// rows (ggml splits rows in multiples of 4) — gives 1355, a little on the safe side. `None`:
/// no I2_S tensor (the path is not taken), or no stack limit to hit.
pub fn bitnet2026_prompt_limit(model: &engine::gguf::GgufFile, threads: usize) -> Option<usize> {
    let rows = model
        .tensors()
        .iter()
        .filter(|t| t.ty == engine::gguf::GgmlType::I2_S && t.dims.len() == 2)
        .map(|t| t.dims[1] as usize)
        .max()?;
    // The server inherits our soft stack limit; threads other than the first get glibc's
    // default: the same limit, or 2 MiB when it is unlimited.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut lim) } == 0;
    let stack = match (ok, lim.rlim_cur) {
        (false, _) => 8 << 20,
        (true, libc::RLIM_INFINITY) if threads == 1 => return None,
        (true, libc::RLIM_INFINITY) => 2 << 20,
        (true, s) => s as usize,
    };
    Some(stack_prompt_limit(rows, threads, stack))
}

/// [`bitnet2026_prompt_limit`] for a matrix of `rows` rows, `threads` threads and a stack of
/// `stack` bytes.
fn stack_prompt_limit(rows: usize, threads: usize, stack: usize) -> usize {
    let threads = threads.max(1);
    let ceil4 = |x: usize| x.div_ceil(4) * 4;
    let busiest = (0..threads)
        .map(|i| ceil4((i + 1) * rows / threads) - ceil4(i * rows / threads))
        .max()
        .unwrap_or(rows)
        .max(1);
    4 * (stack.saturating_sub(64 << 10) / (16 * busiest)) + 3
}

/// A warning for a prompt of `n_tokens` that `spec` cannot take on `model` (today's
/// bitnet.cpp's stack overflow), to print before running it.
pub fn prompt_warning(
    spec: &ProbeSpec,
    model: &Path,
    threads: usize,
    n_tokens: usize,
) -> Option<String> {
    if *spec != ProbeSpec::Reference(Reference::Bitnet2026) {
        return None;
    }
    let file = engine::gguf::GgufFile::open(model).ok()?;
    let limit = bitnet2026_prompt_limit(&file, threads)?;
    (n_tokens > limit).then(|| {
        format!(
            "bitnet.cpp-2026 overflows its stack on prompts over about {limit} tokens for this model at {threads} thread(s) (a rows × tokens float array on the stack in its I2_S matmul, ggml.c ≈ 13261); this prompt has {n_tokens}: expect it to crash (SIGSEGV). More threads or a larger `ulimit -s` raise the limit"
        )
    })
}

/// A probe from `probes.toml` or `cmd:`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct External {
    pub name: String,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub description: String,
    /// Working directory: the folder of the `probes.toml` that declares it (so its relative
    /// paths work from anywhere), or the current one for `cmd:`.
    pub dir: Option<PathBuf>,
    /// Base deadline in seconds (see [`Watchdog::scaled`]).
    pub timeout: Option<u64>,
    /// A command that says whether this machine can run the probe at all (a GPU, a build
    /// step that was skipped): run once, in `dir`; if it cannot start or exits non-zero, the
    /// cases that use the probe are ignored with its reason (see [`ProbeSpec::unavailable`]).
    pub available_if: Option<Vec<String>>,
}

/// Which implementation answers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ProbeSpec {
    /// bitprobe's Rust engine.
    Engine,
    /// A bitnet.cpp build.
    Reference(Reference),
    /// Anything else that speaks the wire protocol.
    External(External),
}

impl ProbeSpec {
    /// The default reference: the vendored 2024 bitnet.cpp (see the README for why).
    pub const ORACLE: ProbeSpec = ProbeSpec::Reference(Reference::Bitnet2024);

    /// Parses a spec (see the module docs); names are looked up in `registry`.
    pub fn parse(s: &str, registry: &Registry) -> Result<ProbeSpec, String> {
        let s = s.trim();
        match s {
            "engine" => return Ok(ProbeSpec::Engine),
            "oracle" | "bitnet.cpp" | "bitnet.cpp-2024" => return Ok(ProbeSpec::ORACLE),
            "bitnet.cpp-2026" => return Ok(ProbeSpec::Reference(Reference::Bitnet2026)),
            _ => {}
        }
        if let Some(cmd) = s.strip_prefix("cmd:") {
            let command = split_words(cmd)?;
            if command.is_empty() {
                return Err("`cmd:` needs a program: cmd:PROGRAM ARG…".into());
            }
            return Ok(ProbeSpec::External(External {
                name: format!("cmd:{}", cmd.trim()),
                command,
                env: Vec::new(),
                description: String::new(),
                dir: None,
                timeout: None,
                available_if: None,
            }));
        }
        match registry.probes.get(s) {
            Some(e) => Ok(ProbeSpec::External(e.clone())),
            None => Err(format!(
                "unknown probe '{s}': use engine, oracle, bitnet.cpp-2024, bitnet.cpp-2026, cmd:PROGRAM ARG…, or a name from {} ({})",
                registry.source(),
                if registry.probes.is_empty() {
                    "none declared".to_string()
                } else {
                    registry.probes.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            )),
        }
    }

    /// The name reports and trial names use: `engine`, `oracle` (the default reference, the
    /// name the suite has always used), `bitnet.cpp-2026`, a `probes.toml` name, `cmd:…`.
    pub fn label(&self) -> String {
        match self {
            ProbeSpec::Engine => "engine".into(),
            ProbeSpec::Reference(Reference::Bitnet2024) => "oracle".into(),
            ProbeSpec::Reference(r) => r.spec_name().into(),
            ProbeSpec::External(e) if e.name.starts_with("cmd:") => short_name(&e.command),
            ProbeSpec::External(e) => e.name.clone(),
        }
    }

    /// The spec as a user writes it (round-trips through [`ProbeSpec::parse`]).
    pub fn spec(&self) -> String {
        match self {
            ProbeSpec::External(e) => e.name.clone(),
            other => other.label(),
        }
    }

    pub fn is_engine(&self) -> bool {
        *self == ProbeSpec::Engine
    }

    /// Why this machine cannot run the probe, from its `available_if` command (run once per
    /// process; `None`: it can, or nothing was declared). The reason names the probe, the
    /// command and what it said, for a case's *ignored, because…*.
    pub fn unavailable(&self) -> Option<String> {
        use std::collections::HashMap;
        use std::sync::{Mutex, OnceLock};
        let ProbeSpec::External(e) = self else {
            return None;
        };
        let command = e.available_if.as_ref()?;
        /// (command, folder) → why not, for each check already run.
        type Checked = HashMap<(Vec<String>, Option<PathBuf>), Option<String>>;
        static SEEN: OnceLock<Mutex<Checked>> = OnceLock::new();
        let key = (command.clone(), e.dir.clone());
        let mut seen = SEEN
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        seen.entry(key)
            .or_insert_with(|| {
                availability(command, e.dir.as_deref()).err().map(|why| {
                    format!(
                        "probe {} cannot run on this machine: `{}` {why}",
                        e.name,
                        command.join(" ")
                    )
                })
            })
            .clone()
    }

    /// The engine's options (tokenizer, fault) apply to our engine only.
    pub fn takes_engine_options(&self) -> bool {
        self.is_engine()
    }

    fn launch(&self, watchdog: Watchdog) -> Result<Launch, OpenError> {
        match self {
            ProbeSpec::Engine => {
                let me = std::env::current_exe()
                    .map_err(|e| OpenError::NoServer(format!("cannot locate myself: {e}")))?;
                Ok(Launch::new("engine", me, &["serve-engine"]).watchdog(watchdog))
            }
            ProbeSpec::Reference(r) => {
                let label = match r {
                    Reference::Bitnet2024 => "bitnet.cpp oracle".to_string(),
                    other => other.spec_name().to_string(),
                };
                Ok(Launch::new(&label, r.binary()?, &[]).watchdog(watchdog))
            }
            ProbeSpec::External(e) => {
                let (program, args) = e
                    .command
                    .split_first()
                    .ok_or_else(|| OpenError::Spec(format!("probe {}: empty command", e.name)))?;
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let program = resolve_program(program, e.dir.as_deref());
                let mut l = Launch::new(&self.label(), program, &args)
                    .watchdog(e.timeout.map_or(watchdog, |t| Watchdog::scaled(t as f64)));
                l.env = e.env.clone();
                l.dir = e.dir.clone();
                Ok(l)
            }
        }
    }
}

impl fmt::Display for ProbeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// A program path with a folder in it (`adapters/x/bin`) is relative to the probe's folder
/// (the probes.toml's), not to wherever bitprobe runs; a bare name is looked up on PATH.
fn resolve_program(program: &str, dir: Option<&Path>) -> PathBuf {
    match dir {
        Some(d) if program.contains('/') && Path::new(program).is_relative() => d.join(program),
        _ => PathBuf::from(program),
    }
}

/// Runs an `available_if` command (at most a minute): `Err` says why it failed — it could
/// not start, was killed, or exited non-zero with its last line of output.
fn availability(command: &[String], dir: Option<&Path>) -> Result<(), String> {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let (program, args) = command.split_first().ok_or("is empty")?;
    let mut cmd = Command::new(resolve_program(program, dir));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().map_err(|e| {
        format!("cannot start: {e} (scripts/setup.sh installs the probes in probes.toml)")
    })?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("did not finish within 60 s".into());
            }
            Err(e) => return Err(format!("cannot be waited for: {e}")),
        }
    };
    if status.success() {
        return Ok(());
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let last = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_string())
    };
    let said = last(&out.stdout)
        .or_else(|| last(&out.stderr))
        .map_or(String::new(), |l| format!(": {l}"));
    Err(format!("failed ({status}){said}"))
}

/// A short name for a `cmd:` probe: the script an interpreter runs (`example_engine.py`), or
/// the program's file name, with any `--flag value` arguments after it.
fn short_name(command: &[String]) -> String {
    const INTERPRETERS: [&str; 6] = ["python3", "python", "sh", "bash", "node", "env"];
    let file = |s: &str| {
        std::path::Path::new(s)
            .file_name()
            .map_or(s.to_string(), |f| f.to_string_lossy().into_owned())
    };
    let skip = usize::from(
        command
            .first()
            .is_some_and(|c| INTERPRETERS.contains(&file(c).as_str()))
            // `python3 -c CODE` is named by its interpreter, `python3 engine.py` by its file.
            && command.get(1).is_some_and(|a| !a.starts_with('-')),
    );
    let mut words = command[skip..].iter();
    let mut name = words.next().map_or_else(String::new, |w| file(w));
    for w in words {
        name.push(' ');
        name.push_str(w);
    }
    name
}

/// Splits `cmd:` text into words: whitespace separates, '…' and "…" quote, \ escapes.
fn split_words(s: &str) -> Result<Vec<String>, String> {
    let (mut out, mut cur, mut any) = (Vec::new(), String::new(), false);
    let mut chars = s.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') | (None, '\\') => match chars.next() {
                Some(n) => cur.push(n),
                None => return Err(format!("`cmd:{s}` ends with a backslash")),
            },
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if quote.is_some() {
        return Err(format!("`cmd:{s}` has an unclosed quote"));
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// The probes declared in a `probes.toml`.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    pub file: Option<PathBuf>,
    pub probes: BTreeMap<String, External>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    #[serde(default)]
    probe: BTreeMap<String, RawExternal>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExternal {
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    timeout: Option<u64>,
    #[serde(default)]
    available_if: Option<Vec<String>>,
}

impl Registry {
    /// `$BITPROBE_PROBES`, else `probes.toml` at the workspace root; an absent file is an
    /// empty registry, a broken one an error with file:line:col.
    pub fn load_default() -> Result<Registry, String> {
        let path = std::env::var_os("BITPROBE_PROBES")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::snapshot::workspace_root().join("probes.toml"));
        if !path.exists() {
            return Ok(Registry::default());
        }
        Registry::load(&path)
    }

    /// The default registry, loaded once per process.
    pub fn global() -> Result<&'static Registry, String> {
        static R: std::sync::OnceLock<Result<Registry, String>> = std::sync::OnceLock::new();
        R.get_or_init(Registry::load_default)
            .as_ref()
            .map_err(Clone::clone)
    }

    pub fn load(path: &Path) -> Result<Registry, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let raw: RawRegistry = toml::from_str(&text).map_err(|e| {
            let place = e.span().map_or(String::new(), |s| {
                let before = &text[..s.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before
                    .rfind('\n')
                    .map_or(before.len(), |i| before.len() - i - 1)
                    + 1;
                format!(":{line}:{col}")
            });
            format!("{}{place}: {}", path.display(), e.message().trim())
        })?;
        let dir = path.parent().map(Path::to_path_buf);
        let mut probes = BTreeMap::new();
        for (name, p) in raw.probe {
            if p.command.is_empty() {
                return Err(format!(
                    "{}: [probe.{name}] has an empty command",
                    path.display()
                ));
            }
            if p.available_if.as_ref().is_some_and(Vec::is_empty) {
                return Err(format!(
                    "{}: [probe.{name}] has an empty available_if: give a command, or remove the key",
                    path.display()
                ));
            }
            if matches!(
                name.as_str(),
                "engine" | "oracle" | "bitnet.cpp" | "bitnet.cpp-2024" | "bitnet.cpp-2026"
            ) || name.starts_with("cmd:")
            {
                return Err(format!(
                    "{}: [probe.{name}]: that name is built in; choose another",
                    path.display()
                ));
            }
            probes.insert(
                name.clone(),
                External {
                    name,
                    command: p.command,
                    env: p.env.into_iter().collect(),
                    description: p.description,
                    dir: dir.clone(),
                    timeout: p.timeout,
                    available_if: p.available_if,
                },
            );
        }
        Ok(Registry {
            file: Some(path.to_path_buf()),
            probes,
        })
    }

    fn source(&self) -> String {
        self.file
            .as_ref()
            .map_or("probes.toml".to_string(), |f| f.display().to_string())
    }
}

/// How `spec` is started out of process (our engine through `bitprobe serve-engine`).
pub fn launch_of(spec: &ProbeSpec, watchdog: Watchdog) -> Result<Launch, OpenError> {
    spec.launch(watchdog)
}

/// A probe that can move between threads (the pool hands them out).
pub type SharedProbe = Box<dyn Probe + Send>;

/// Opens `spec` on a model file: the engine in-process, everything else out of process.
/// The file is validated with bitprobe's reader first.
pub fn open(
    spec: &ProbeSpec,
    model: &Path,
    threads: usize,
    options: &[(&str, &str)],
    watchdog: Watchdog,
) -> Result<SharedProbe, OpenError> {
    validate_model(model)?;
    let mut req = OpenRequest::new(model).threads(threads);
    if spec.takes_engine_options() {
        for (k, v) in options {
            req = req.option(k, v);
        }
    }
    Ok(match spec {
        ProbeSpec::Engine => Box::new(engine::EngineProbe::open(&req)?),
        other => Box::new(RemoteProbe::launch(other.launch(watchdog)?, req)?),
    })
}

/// Opens `spec` in a child process even when it is our engine (`bitprobe serve-engine`), so
/// every side can be measured alike (bench: peak RSS).
pub fn open_remote(
    spec: &ProbeSpec,
    model: &Path,
    threads: usize,
    watchdog: Watchdog,
) -> Result<RemoteProbe, OpenError> {
    validate_model(model)?;
    let req = OpenRequest::new(model).threads(threads);
    Ok(RemoteProbe::launch(spec.launch(watchdog)?, req)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_round_trip() {
        let mut r = Registry::default();
        r.probes.insert(
            "tritium".into(),
            External {
                name: "tritium".into(),
                command: vec!["python3".into(), "t.py".into()],
                env: vec![],
                description: String::new(),
                dir: None,
                timeout: None,
                available_if: None,
            },
        );
        for (s, label) in [
            ("engine", "engine"),
            ("oracle", "oracle"),
            ("bitnet.cpp-2024", "oracle"),
            ("bitnet.cpp-2026", "bitnet.cpp-2026"),
            ("tritium", "tritium"),
            (
                "cmd:python3 adapters/python/example_engine.py --bug relu2",
                "example_engine.py --bug relu2",
            ),
            ("cmd:python3 -c 'import time'", "python3 -c import time"),
        ] {
            let p = ProbeSpec::parse(s, &r).unwrap();
            assert_eq!(p.label(), label);
            assert_eq!(ProbeSpec::parse(&p.spec(), &r).unwrap(), p);
        }
        let ProbeSpec::External(e) =
            ProbeSpec::parse(r#"cmd:python3 "my engine.py" --bug 'a b' x\ y"#, &r).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            e.command,
            ["python3", "my engine.py", "--bug", "a b", "x y"]
        );
        let err = ProbeSpec::parse("nope", &r).unwrap_err();
        assert!(err.contains("tritium") && err.contains("cmd:"), "{err}");
        assert!(ProbeSpec::parse("cmd:", &r).is_err());
        assert!(ProbeSpec::parse("cmd:a 'b", &r)
            .unwrap_err()
            .contains("unclosed"));
    }

    #[test]
    fn registry_errors_name_the_place() {
        let dir = std::env::temp_dir().join(format!("bitprobe-reg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("probes.toml");
        std::fs::write(&f, "[probe.x]\ncommand = \"not a list\"\n").unwrap();
        let e = Registry::load(&f).unwrap_err();
        assert!(e.contains("probes.toml:2:"), "{e}");
        std::fs::write(&f, "[probe.oracle]\ncommand = [\"a\"]\n").unwrap();
        assert!(Registry::load(&f).unwrap_err().contains("built in"));
        std::fs::write(
            &f,
            "[probe.mine]\ncommand = [\"python3\", \"m.py\"]\nenv = { A = \"1\" }\n",
        )
        .unwrap();
        let r = Registry::load(&f).unwrap();
        assert_eq!(r.probes["mine"].dir.as_deref(), Some(dir.as_path()));
        assert_eq!(
            r.probes["mine"].env,
            vec![("A".to_string(), "1".to_string())]
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn available_if_says_why_a_probe_cannot_run() {
        let with = |cmd: &[&str]| {
            ProbeSpec::External(External {
                name: "gpu-thing".into(),
                command: vec!["x".into()],
                env: vec![],
                description: String::new(),
                dir: Some(std::env::temp_dir()),
                timeout: None,
                available_if: Some(cmd.iter().map(|s| s.to_string()).collect()),
            })
        };
        assert_eq!(with(&["true"]).unavailable(), None);
        let why = with(&["sh", "-c", "echo checking; echo no Vulkan device; exit 3"])
            .unavailable()
            .unwrap();
        assert!(
            why.contains("gpu-thing") && why.contains("no Vulkan device") && why.contains('3'),
            "{why}"
        );
        let why = with(&["target/not-built/bitprobe-x", "--gpu"])
            .unavailable()
            .unwrap();
        assert!(why.contains("cannot start"), "{why}");
        assert_eq!(ProbeSpec::Engine.unavailable(), None);
    }

    #[test]
    fn the_2026_stack_limit_matches_what_was_measured() {
        // small-llama3-i2s (widest I2_S matrix: 1536 rows), 1 thread, 8 MiB: 1363 tokens ran
        // and 1364 crashed; the estimate stays just below.
        let l = stack_prompt_limit(1536, 1, 8 << 20);
        assert!((1300..=1363).contains(&l), "{l}");
        // 4 MiB: 681 ran, 684 crashed.
        let l = stack_prompt_limit(1536, 1, 4 << 20);
        assert!((640..=681).contains(&l), "{l}");
        // 2 threads, 4 MiB: 1355 ran, 1368 crashed.
        let l = stack_prompt_limit(1536, 2, 4 << 20);
        assert!((1300..=1355).contains(&l), "{l}");
        // 2B-4T's FFN (6912 rows) at 1 thread: about 300 tokens.
        assert_eq!(stack_prompt_limit(6912, 1, 8 << 20), 303);
    }
}
