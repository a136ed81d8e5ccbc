//! `receipt.json`: everything one sweep found, machine-readable and schema-versioned.
//!
//! The schema is `docs/receipt.schema.json` (JSON Schema 2020-12); a test validates a real
//! receipt against it. Bump [`SCHEMA_VERSION`] on any incompatible change and update the
//! schema file with it. Non-finite numbers (an NMSE of ∞, a NaN) are written as `null`.
//!
//! Version 2 runs each model once per engine (`models.toml` `engines`): a [`ModelResult`] is
//! one (model, engine) pair, named by `name` (the model) and `engine` (the probe's label),
//! judged against `reference`; the speed figures are `engine` and `reference`; regressions
//! name the engine; and the receipt carries the implementations × models [`Matrix`] and the
//! [`TrendPoint`]s of the earlier runs. A version-1 receipt reads as version 2 with every
//! result's engine `engine` and reference `oracle` (the fields it lacks take their defaults).

use serde::{Deserialize, Serialize};

pub const SCHEMA: &str = "bitprobe.sweep.receipt";
pub const SCHEMA_VERSION: u32 = 2;
/// Versions [`super::baseline::load`] reads.
pub const READABLE_VERSIONS: [u32; 2] = [1, 2];

/// The engine label of a version-1 result (it had no other).
pub fn default_engine() -> String {
    "engine".into()
}

/// The reference label of a version-1 result.
pub fn default_reference() -> String {
    "oracle".into()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Receipt {
    /// Always [`SCHEMA`].
    pub schema: String,
    pub schema_version: u32,
    /// RFC 3339, UTC.
    pub started: String,
    pub finished: String,
    pub duration_seconds: f64,
    pub bitprobe: BuildInfo,
    pub machine: Machine,
    pub oracle: OracleSource,
    pub settings: Settings,
    pub summary: Summary,
    /// Against the baseline receipt, when there was one.
    pub comparison: Option<Comparison>,
    /// One per (model, engine) pair, models in `models.toml` order, each model's engines in
    /// the order listed.
    pub models: Vec<ModelResult>,
    /// Implementations (rows) × models (columns).
    #[serde(default)]
    pub matrix: Matrix,
    /// The earlier runs of the series, oldest first (this one not included): the receipts
    /// next to the baseline's run folder, or the baseline alone. Empty without a baseline.
    #[serde(default)]
    pub trend: Vec<TrendPoint>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BuildInfo {
    pub version: String,
    /// `git rev-parse HEAD` of the workspace, when it is a git checkout.
    pub git_revision: Option<String>,
    /// Uncommitted changes to tracked files.
    pub git_dirty: Option<bool>,
    /// Built with the `faults` feature (fault injection available).
    pub faults_built: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    /// The CPU flags that matter to the kernels (avx2, avx512f, avx512_vnni, f16c, …).
    pub cpu_flags: Vec<String>,
    pub cores: usize,
    pub memory_mib: Option<u64>,
    pub os: String,
    pub arch: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OracleSource {
    /// The crates.io package bitnet.cpp was vendored from (`bitnet-cpp-sys-0.0.5`).
    pub package: String,
    /// sha256 of the vendored source tree (as `scripts/setup.sh` verifies it).
    pub tree_sha256: String,
    /// `oracle/patches/*.patch`, in the order applied.
    pub patches: Vec<Patch>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Patch {
    pub name: String,
    pub sha256: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    pub models_file: String,
    pub cases_dir: String,
    /// An engine fault switched on for every model (the known-bug gallery's injection).
    pub injected_fault: Option<String>,
    pub speed: SpeedSettings,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct SpeedSettings {
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    /// Alternating engine/reference repetitions after one warm-up each; medians are reported.
    pub reps: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Distinct models.
    pub models: usize,
    /// Distinct engines (probe labels).
    #[serde(default)]
    pub engines: usize,
    /// (model, engine) pairs run: what `passed`, `failed`, `errors` and `skipped` count.
    #[serde(default)]
    pub results: usize,
    pub passed: usize,
    pub failed: usize,
    /// Models that could not be loaded or run (their error is in the row).
    pub errors: usize,
    pub skipped: usize,
    pub trials: usize,
    pub trials_failed: usize,
    /// Regressions against the baseline (0 without one).
    pub regressions: usize,
}

impl Summary {
    /// `results` for a version-1 receipt, which counted one result per model.
    pub fn result_count(&self) -> usize {
        if self.results == 0 {
            self.passed + self.failed + self.errors + self.skipped
        } else {
            self.results
        }
    }
}

/// A model's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every trial passed (ignored ones aside).
    Pass,
    /// At least one trial failed.
    Fail,
    /// The model could not be forged, read or opened by a probe.
    Error,
    /// Not run: its file is absent.
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Error => "error",
            Status::Skipped => "skipped",
        }
    }
}

/// One (model, engine) pair: the model's cases run with `engine` as the implementation under
/// test and `reference` as the one it is judged against.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelResult {
    /// The model's name (`models.toml`).
    pub name: String,
    /// The engine under test: its probe label (`engine`, `numpy-example`, `bitnet.cpp-2026`).
    #[serde(default = "default_engine")]
    pub engine: String,
    /// The reference it is judged against (`oracle` = the vendored bitnet.cpp).
    #[serde(default = "default_reference")]
    pub reference: String,
    /// `preset tiny-i2s (seed 1)` or the file path as given.
    pub source: String,
    pub preset: Option<String>,
    pub seed: Option<u64>,
    /// The GGUF file run (forged into the cache for presets).
    pub file: Option<String>,
    pub sha256: Option<String>,
    pub bytes: Option<u64>,
    pub arch: Option<String>,
    /// The type that governs the tolerances (`I2_S`, `TQ1_0`, `F16`, …).
    pub weight_type: Option<String>,
    pub n_layer: Option<u32>,
    pub threads: usize,
    pub tokenizer: String,
    pub status: Status,
    /// Why the model is `error` or `skipped`.
    pub error: Option<String>,
    pub seconds: f64,
    pub counts: Counts,
    /// The first (case, prompt) whose engine run parts from the reference, and where.
    pub first_divergence: Option<FirstDivergence>,
    /// The first failing trial and the first line of its message.
    pub first_failure: Option<String>,
    /// Worst NMSE per stage over every compared prompt and position, in evaluation order.
    pub stages: Vec<StageWorst>,
    pub logits: Option<LogitsSummary>,
    pub tokenizer_parity: Option<TokenizerParity>,
    pub speed: Option<Speed>,
    /// Why speed could not be measured.
    pub speed_error: Option<String>,
    pub cases: Vec<CaseResult>,
}

impl ModelResult {
    /// The pair as people read it: the model, and the engine when it is not our own.
    pub fn display_name(&self) -> String {
        pair_name(&self.name, &self.engine)
    }
}

/// `tiny-i2s` for our engine, `tiny-i2s · numpy-example` for any other.
pub fn pair_name(model: &str, engine: &str) -> String {
    if engine == "engine" {
        model.to_string()
    } else {
        format!("{model} · {engine}")
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Counts {
    pub pass: usize,
    pub fail: usize,
    pub ignored: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FirstDivergence {
    pub case: String,
    pub prompt: String,
    /// `blk.3.attn_q`, `result_output`, `tokenize` or `decode`.
    pub stage: String,
    /// `prompt` or `decode step N`.
    pub phase: String,
    pub position: u32,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageWorst {
    /// `blk.3.attn_q`, `inp_embd`, `result_output`, ….
    pub stage: String,
    /// `null` when the stage was not compared in this phase, or the value was not finite.
    pub worst_nmse_prompt: Option<f64>,
    pub worst_nmse_decode: Option<f64>,
    /// Every compared value had the same bits, in both phases.
    pub bit_exact: bool,
    /// The tolerance in force (the tightest over the cases).
    pub nmse_limit: f64,
    /// A value was NaN or ±Inf against a finite one.
    pub non_finite: bool,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct LogitsSummary {
    pub positions: usize,
    pub top1_agree: usize,
    pub worst_kl: Option<f64>,
    pub worst_nmse: Option<f64>,
}

/// Over every tokenizer input of the model's cases, in each `parse_special` mode.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct TokenizerParity {
    /// Input × mode comparisons made.
    pub comparisons: usize,
    pub engine_eq_oracle: usize,
    /// `null` when no case compares with the trained tokenizer.
    pub engine_eq_truth: Option<usize>,
    pub oracle_eq_truth: Option<usize>,
}

/// The engine under test against its reference, each timing itself (prefill and decode
/// seconds inside the probe), on the same prompt ids.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Speed {
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    pub reps: usize,
    pub engine: ProbeSpeed,
    /// Version 1 called it `oracle`.
    #[serde(alias = "oracle")]
    pub reference: ProbeSpeed,
    /// engine / reference (above 1: the engine is faster): the median of the per-repetition
    /// ratios (each repetition runs the engine, then the reference, back to back).
    pub prefill_ratio: f64,
    pub decode_ratio: f64,
    /// Smallest and largest per-repetition ratio: the run's own spread.
    pub prefill_ratio_range: [f64; 2],
    pub decode_ratio_range: [f64; 2],
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct ProbeSpeed {
    /// Medians over the repetitions.
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaseResult {
    /// Case id (`smoke/tiny-i2s`), run with this model.
    pub id: String,
    pub trials: Vec<TrialResult>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    Ignored,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrialResult {
    /// The trial's name as `cargo test` would call it for the case's own model.
    pub name: String,
    pub verdict: Verdict,
    /// Why it failed or was ignored (clipped).
    pub message: Option<String>,
    /// Stage, logits and decode trials: the worst NMSE they judged.
    pub nmse: Option<f64>,
    /// Logits and decode trials: the worst KL.
    pub kl: Option<f64>,
    pub bit_exact: Option<bool>,
    /// Where the trial starts: its first failing value when it fails, else the first value
    /// it judges. `null` for trials that judge no located value (tokenizer, metamorphic, a
    /// comparison that could not run).
    #[serde(default)]
    pub at: Option<Location>,
}

/// A place in the evaluation: the site (`blk.0.ffn_sub_out`, `result_output`, `tokenize`,
/// `decode`), the phase (`prompt`, `decode step N`) and the token position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub stage: String,
    pub phase: String,
    pub position: u32,
}

/// A [`Location`]'s sort key: (phase, (site kind, (stage order, layer)), position).
pub type LocationOrder = (u32, (u8, (u32, usize)), u32);

impl Location {
    /// Evaluation order: the phase (prompt, then decode steps), then the site (tokens,
    /// stages in evaluation order, logits, the decode token), then the position. A site or
    /// phase this bitprobe cannot read sorts after every known one.
    pub fn order(&self) -> LocationOrder {
        let phase = match self.phase.as_str() {
            "prompt" => 0,
            p => p
                .strip_prefix("decode step ")
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or(u32::MAX),
        };
        let site = crate::case::parse_site(&self.stage)
            .map(|s| s.order())
            .unwrap_or((u8::MAX, (0, 0)));
        (phase, site, self.position)
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at {}, position {}",
            self.stage, self.phase, self.position
        )
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    /// The baseline receipt's path.
    pub baseline: String,
    pub baseline_started: String,
    pub baseline_git_revision: Option<String>,
    pub regressions: Vec<Change>,
    /// Fixed failures and other good news (never affects the exit code).
    pub improvements: Vec<Change>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// The model ran before and now errors out.
    ModelError,
    /// A trial that passed (or did not exist) now fails.
    NewFailure,
    /// A metric got worse by more than a decade.
    MetricWorse,
    /// The engine/reference speed ratio dropped by more than the allowed share.
    SpeedDrop,
    /// A trial that failed now passes.
    Fixed,
    /// A model that errored now runs.
    ModelRecovered,
}

impl ChangeKind {
    pub fn label(self) -> &'static str {
        match self {
            ChangeKind::ModelError => "model error",
            ChangeKind::NewFailure => "new failure",
            ChangeKind::MetricWorse => "metric worse",
            ChangeKind::SpeedDrop => "speed drop",
            ChangeKind::Fixed => "fixed",
            ChangeKind::ModelRecovered => "model recovered",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Change {
    pub kind: ChangeKind,
    /// The model's name.
    pub model: String,
    /// The engine's label (version 1: always `engine`).
    #[serde(default = "default_engine")]
    pub engine: String,
    /// The trial or figure concerned.
    pub what: String,
    /// Before → after, in words and numbers.
    pub detail: String,
    /// Where the trial starts (its [`TrialResult::at`]); `null` for model errors, speed and
    /// trials without a located value. Regressions are listed in this order.
    #[serde(default)]
    pub at: Option<Location>,
}

impl Change {
    pub fn display_name(&self) -> String {
        pair_name(&self.model, &self.engine)
    }
}

/// The implementations × models matrix: one row per engine, one cell per model (`null`
/// where that engine was not run on that model).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Matrix {
    /// Column heads: model names, in `models.toml` order.
    pub models: Vec<String>,
    pub rows: Vec<MatrixRow>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MatrixRow {
    /// The engine's label.
    pub engine: String,
    /// One per column of [`Matrix::models`].
    pub cells: Vec<Option<MatrixCell>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MatrixCell {
    pub status: Status,
    /// The reference this cell was judged against.
    pub reference: String,
    /// Where the engine first parts from the reference (site and phase, with the position).
    pub first_divergence: Option<Location>,
    /// Decode tok/s, engine / reference, when measured.
    pub decode_ratio: Option<f64>,
    /// Why a cell is `error` or `skipped`, or its first failure when it fails without a
    /// located divergence.
    pub note: Option<String>,
}

/// One earlier run, as the trend needs it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrendPoint {
    pub started: String,
    /// The receipt it was read from.
    pub receipt: String,
    pub git_revision: Option<String>,
    pub results: Vec<TrendResult>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrendResult {
    pub model: String,
    pub engine: String,
    pub status: Status,
    pub trials_failed: usize,
    /// The worst per-stage NMSE over both phases (`null`: nothing compared, or non-finite).
    pub worst_nmse: Option<f64>,
    pub non_finite: bool,
}

impl TrendResult {
    /// What a run says about one pair now.
    pub fn of(m: &ModelResult) -> TrendResult {
        TrendResult {
            model: m.name.clone(),
            engine: m.engine.clone(),
            status: m.status,
            trials_failed: m.counts.fail,
            worst_nmse: m
                .stages
                .iter()
                .flat_map(|s| [s.worst_nmse_prompt, s.worst_nmse_decode])
                .flatten()
                .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x)))),
            non_finite: m.stages.iter().any(|s| s.non_finite),
        }
    }
}

/// `Some(x)` for finite `x`, else `None` (JSON has no ∞/NaN).
pub fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}
