//! `bitprobe sweep`: every model of a `models.toml` through its case files, one receipt and
//! two reports (Markdown, self-contained HTML) per run, and the regressions against a
//! baseline receipt.
//!
//! Per model: forge or find the file and hash it, once; then per engine of its `engines`
//! (default: ours alone) — one result per (model, engine) pair — open the engine and the
//! reference (a failure is that pair's error row, and the sweep goes on), run every trial of
//! its cases exactly as `cargo test` would with the case re-aimed at the model and the pair
//! (snapshot trials excepted: the baseline receipt plays their part), then collect the
//! per-stage worst NMSE, the first divergence, tokenizer parity, and engine/reference speed
//! (where both can generate). The receipt gets the implementations × models matrix, and,
//! with a baseline, the trend of the earlier runs.

pub mod baseline;
pub mod models;
pub mod receipt;
pub mod report;

use crate::case::{self, Case};
use crate::diff::DiffReport;
use crate::judge::{self, Judged, Phase, Site, Worst};
use crate::probes::{ModelSpec, ProbeSpec};
use crate::runs::Runs;
use crate::trials::{self, Kind, OracleMode, Outcome, TrialSpec};
use models::{ModelEntry, ModelsFile};
use probe::Probe;
use receipt::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// What to sweep.
#[derive(Clone, Debug)]
pub struct SweepRequest {
    pub models: ModelsFile,
    pub cases_dir: PathBuf,
    /// Switch this engine fault on for every model (needs the `faults` feature).
    pub inject_fault: Option<String>,
    /// Trials run at once within a model (each holds its own probes).
    pub jobs: usize,
    pub speed: SpeedSettings,
    /// Only models whose name contains this.
    pub only: Option<String>,
}

/// Progress, for a bar on a terminal or plain lines elsewhere.
pub enum Event<'a> {
    ModelStart {
        index: usize,
        of: usize,
        name: &'a str,
    },
    /// The model's trials are expanded: this many will run.
    Trials {
        count: usize,
    },
    TrialDone,
    /// Measuring speed.
    Speed,
    ModelDone {
        index: usize,
        of: usize,
        result: &'a ModelResult,
    },
}

/// Runs the sweep. Never stops at a broken model: its row carries the error.
pub fn run(req: &SweepRequest, progress: &(dyn Fn(Event) + Sync)) -> Receipt {
    let started = std::time::SystemTime::now();
    let t0 = Instant::now();
    let all_cases: Vec<(String, PathBuf)> = case::discover(&req.cases_dir)
        .into_iter()
        .map(|f| (case::case_id(&f, &req.cases_dir), f))
        .collect();
    let entries: Vec<&ModelEntry> = req
        .models
        .models
        .iter()
        .filter(|m| {
            req.only
                .as_ref()
                .is_none_or(|o| m.name.contains(o.as_str()))
        })
        .collect();
    let of: usize = entries.iter().map(|e| e.engines.len().max(1)).sum();
    let mut results = Vec::new();
    let mut index = 0;
    for entry in &entries {
        let model = prepare_model(req, entry, &all_cases);
        for (k, engine) in entry.engines.iter().enumerate() {
            index += 1;
            let name = pair_name(&entry.name, &engine.label());
            progress(Event::ModelStart {
                index,
                of,
                name: &name,
            });
            let r = run_pair(req, entry, engine, &model, k == 0, progress);
            progress(Event::ModelDone {
                index,
                of,
                result: &r,
            });
            results.push(r);
        }
    }
    let distinct = |f: fn(&ModelResult) -> &str| {
        results
            .iter()
            .map(f)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    let mut summary = Summary {
        models: distinct(|m| m.name.as_str()),
        engines: distinct(|m| m.engine.as_str()),
        results: results.len(),
        ..Default::default()
    };
    for m in &results {
        match m.status {
            Status::Pass => summary.passed += 1,
            Status::Fail => summary.failed += 1,
            Status::Error => summary.errors += 1,
            Status::Skipped => summary.skipped += 1,
        }
        summary.trials += m.counts.pass + m.counts.fail;
        summary.trials_failed += m.counts.fail;
    }
    let src = oracle::source_info();
    Receipt {
        schema: SCHEMA.into(),
        schema_version: SCHEMA_VERSION,
        started: humantime::format_rfc3339_seconds(started).to_string(),
        finished: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        duration_seconds: t0.elapsed().as_secs_f64(),
        bitprobe: build_info(),
        machine: machine(),
        oracle: OracleSource {
            package: src.package.into(),
            tree_sha256: src.tree_sha256.into(),
            patches: src
                .patches
                .iter()
                .map(|(n, s)| Patch {
                    name: n.to_string(),
                    sha256: s.to_string(),
                })
                .collect(),
        },
        settings: Settings {
            models_file: req.models.file.display().to_string(),
            cases_dir: req.cases_dir.display().to_string(),
            injected_fault: req.inject_fault.clone(),
            speed: req.speed,
        },
        summary,
        comparison: None,
        matrix: matrix(&results),
        models: results,
        trend: Vec::new(),
    }
}

/// Attaches the comparison with a baseline and counts its regressions. Unless a trend is
/// already attached ([`attach_trend`]), the trend is read from the baseline's series: the
/// receipts in the folders next to the baseline's, when the baseline is a run folder's
/// `receipt.json` (as the default baseline, the newest run next to `--out`, is), else the
/// baseline alone.
pub fn attach_baseline(r: &mut Receipt, base: &Receipt, base_path: &Path, speed_drop: f64) {
    let c = baseline::compare(r, base, base_path, speed_drop);
    r.summary.regressions = c.regressions.len();
    r.comparison = Some(c);
    if r.trend.is_empty() {
        let series = (base_path.file_name() == Some(std::ffi::OsStr::new("receipt.json")))
            .then(|| base_path.parent().and_then(Path::parent))
            .flatten();
        r.trend = match series {
            Some(dir) => baseline::trend_in(dir, None),
            None => Vec::new(),
        };
        if r.trend.is_empty() {
            r.trend = vec![baseline::trend_point(base, base_path)];
        }
    }
}

/// Attaches the trend over the runs kept next to `out` (every `*/receipt.json` in its parent
/// folder but `out`'s own), oldest first.
pub fn attach_trend(r: &mut Receipt, out: &Path) {
    if let Some(dir) = out.parent() {
        r.trend = baseline::trend_in(dir, Some(out));
    }
}

/// The implementations × models matrix of a run's results.
pub fn matrix(results: &[ModelResult]) -> Matrix {
    let mut models: Vec<String> = Vec::new();
    let mut engines: Vec<String> = Vec::new();
    for m in results {
        if !models.contains(&m.name) {
            models.push(m.name.clone());
        }
        if !engines.contains(&m.engine) {
            engines.push(m.engine.clone());
        }
    }
    let rows = engines
        .into_iter()
        .map(|engine| MatrixRow {
            cells: models
                .iter()
                .map(|model| {
                    results
                        .iter()
                        .find(|m| &m.name == model && m.engine == engine)
                        .map(|m| MatrixCell {
                            status: m.status,
                            reference: m.reference.clone(),
                            first_divergence: m.first_divergence.as_ref().map(|d| Location {
                                stage: d.stage.clone(),
                                phase: d.phase.clone(),
                                position: d.position,
                            }),
                            decode_ratio: m.speed.as_ref().map(|s| s.decode_ratio),
                            note: match m.status {
                                Status::Error | Status::Skipped => m.error.clone(),
                                Status::Fail if m.first_divergence.is_none() => {
                                    m.first_failure.clone()
                                }
                                _ => None,
                            }
                            .map(|n| clip(n.lines().next().unwrap_or(""), 200)),
                        })
                })
                .collect(),
            engine,
        })
        .collect();
    Matrix { models, rows }
}

fn blank(entry: &ModelEntry, engine: &ProbeSpec) -> ModelResult {
    let (preset, seed) = match &entry.spec {
        ModelSpec::Preset { name, seed } => (Some(name.clone()), Some(*seed)),
        ModelSpec::Path(_) => (None, None),
    };
    ModelResult {
        name: entry.name.clone(),
        engine: engine.label(),
        reference: entry.reference.label(),
        source: entry.spec.to_string(),
        preset,
        seed,
        file: None,
        sha256: None,
        bytes: None,
        arch: None,
        weight_type: None,
        n_layer: None,
        threads: entry.threads,
        tokenizer: entry.tokenizer.clone(),
        status: Status::Error,
        error: None,
        seconds: 0.0,
        counts: Counts::default(),
        first_divergence: None,
        first_failure: None,
        stages: Vec::new(),
        logits: None,
        tokenizer_parity: None,
        speed: None,
        speed_error: None,
        cases: Vec::new(),
    }
}

/// A model made ready once for all its engines: its case files and its file (forged for a
/// preset) with the file's hash; or why it cannot run.
struct Prepared {
    seconds: f64,
    outcome: Result<PreparedModel, (Status, String)>,
    /// Known even when a later step fails.
    file: Option<PathBuf>,
    sha256: Option<(String, u64)>,
}

struct PreparedModel {
    files: Vec<PathBuf>,
    path: PathBuf,
}

fn prepare_model(
    req: &SweepRequest,
    entry: &ModelEntry,
    all_cases: &[(String, PathBuf)],
) -> Prepared {
    let t0 = Instant::now();
    let mut p = Prepared {
        seconds: 0.0,
        outcome: Err((Status::Error, String::new())),
        file: None,
        sha256: None,
    };
    p.outcome = (|| {
        if let Some(why) = &entry.unavailable {
            return Err((Status::Skipped, why.clone()));
        }
        let files = models::cases_for(entry, all_cases, &req.models.file)
            .map_err(|e| (Status::Error, e.0))?;
        let path = entry
            .spec
            .resolve()
            .map_err(|e| (Status::Error, format!("cannot get the model file: {e}")))?;
        p.file = Some(path.clone());
        let h = sha256_file(&path).map_err(|e| {
            (
                Status::Error,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        p.sha256 = Some(h);
        Ok(PreparedModel { files, path })
    })();
    p.seconds = t0.elapsed().as_secs_f64();
    p
}

fn run_pair(
    req: &SweepRequest,
    entry: &ModelEntry,
    engine: &ProbeSpec,
    prepared: &Prepared,
    first: bool,
    progress: &(dyn Fn(Event) + Sync),
) -> ModelResult {
    let t0 = Instant::now();
    let mut r = blank(entry, engine);
    r.file = prepared.file.as_ref().map(|p| p.display().to_string());
    if let Some((hex, n)) = &prepared.sha256 {
        r.sha256 = Some(hex.clone());
        r.bytes = Some(*n);
    }
    // Forging and hashing are shared by the model's engines: the first pair's time has them.
    let shared = if first { prepared.seconds } else { 0.0 };
    let finish = |mut r: ModelResult| {
        r.seconds = shared + t0.elapsed().as_secs_f64();
        r
    };
    let (files, path) = match &prepared.outcome {
        Ok(m) => (&m.files, &m.path),
        Err((status, why)) => {
            r.status = *status;
            r.error = Some(why.clone());
            return finish(r);
        }
    };

    // The cases, re-aimed at this model and this engine.
    let mut cases: Vec<Result<Case, case::CaseError>> = Vec::new();
    for f in files {
        cases.push(
            case::load(f, &req.cases_dir)
                .map(|c| retarget(c, entry, engine, path, req.inject_fault.as_deref())),
        );
    }
    let runs = Runs::default();
    // Both probes must open before any trial: a model either side cannot load is an error row.
    let probe_case = cases.iter().find_map(|c| c.as_ref().ok()).cloned();
    if let Some(c) = &probe_case {
        for kind in [&c.engine, &c.reference] {
            match runs.lease(c, kind) {
                Ok(p) => {
                    if r.arch.is_none() {
                        let info = p.info();
                        r.arch = Some(info.arch.clone());
                        r.weight_type =
                            Some(crate::tolerance::governing_type(&info.weight_types).to_string());
                        r.n_layer = Some(info.n_layer);
                    }
                }
                Err(e) => {
                    r.error = Some(format!("{kind} cannot open the model: {e}"));
                    return finish(r);
                }
            }
        }
    }

    let mut specs: Vec<TrialSpec> = Vec::new();
    for c in cases {
        specs.extend(
            trials::expand(c, &runs, OracleMode::On)
                .into_iter()
                .filter(|t| !matches!(t.kind, Kind::Snapshot | Kind::SnapshotMetrics)),
        );
    }
    progress(Event::Trials { count: specs.len() });
    // Plain worker threads, as libtest runs trials. Not a rayon pool: a trial blocked on a
    // diff another trial is computing must not be the thread that computation's own rayon
    // kernels steal work onto (it would wait on itself).
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<Outcome>>> =
        specs.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..req.jobs.clamp(1, specs.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(t) = specs.get(i) else { break };
                // A panic in one trial is that trial's failure, never the sweep's end.
                let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    trials::check(&runs, t)
                }))
                .unwrap_or_else(|p| Outcome::Fail(format!("panicked: {}", panic_text(&p))));
                *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(out);
                progress(Event::TrialDone);
            });
        }
    });
    let outcomes: Vec<Outcome> = slots
        .into_iter()
        .map(|s| {
            s.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or(Outcome::Fail("internal: trial not run".into()))
        })
        .collect();

    // Per-trial verdicts with the metrics they judged.
    let mut by_case: BTreeMap<String, Vec<TrialResult>> = BTreeMap::new();
    for (t, o) in specs.iter().zip(&outcomes) {
        let (verdict, message) = match o {
            Outcome::Pass => (Verdict::Pass, None),
            Outcome::Fail(m) => (Verdict::Fail, Some(clip(m, 1500))),
            Outcome::Ignored(m) => (Verdict::Ignored, Some(m.clone())),
        };
        match verdict {
            Verdict::Pass => r.counts.pass += 1,
            Verdict::Fail => r.counts.fail += 1,
            Verdict::Ignored => r.counts.ignored += 1,
        }
        if verdict == Verdict::Fail && r.first_failure.is_none() {
            r.first_failure = Some(format!(
                "{}: {}",
                t.name,
                message
                    .as_deref()
                    .and_then(|m| m.lines().next())
                    .unwrap_or("")
            ));
        }
        let (nmse, kl, bit_exact) = trial_metrics(&runs, t);
        let at = trial_location(&runs, t);
        let id = t
            .case
            .as_ref()
            .map_or_else(|| t.name.clone(), |c| c.id.clone());
        by_case.entry(id).or_default().push(TrialResult {
            name: t.name.clone(),
            verdict,
            message,
            nmse,
            kl,
            bit_exact,
            at,
        });
    }
    r.cases = by_case
        .into_iter()
        .map(|(id, trials)| CaseResult { id, trials })
        .collect();

    // What the diffs say, over every compared prompt.
    let mut diffs: Vec<(&Case, &crate::case::Prompt, Arc<DiffReport>)> = Vec::new();
    let cases_ok: Vec<Arc<Case>> = {
        let mut v: Vec<Arc<Case>> = specs.iter().filter_map(|t| t.case.clone()).collect();
        v.dedup_by(|a, b| a.id == b.id);
        v
    };
    for c in &cases_ok {
        if !c.compare {
            continue;
        }
        for p in &c.prompts {
            if let Ok(d) = runs.diff(c, p) {
                diffs.push((c, p, d));
            }
        }
    }
    r.first_divergence = diffs.iter().find_map(|(c, p, d)| {
        d.first_divergence().map(|fd| FirstDivergence {
            case: c.id.clone(),
            prompt: p.id.clone(),
            stage: fd.site.to_string(),
            phase: fd.phase.to_string(),
            position: fd.position,
            detail: d.describe(fd),
        })
    });
    let all = || diffs.iter().flat_map(|(_, _, d)| d.judged.iter());
    r.stages = stage_worst(all());
    let l = judge::logits_summary(all());
    r.logits = (l.positions > 0).then(|| LogitsSummary {
        positions: l.positions,
        top1_agree: l.top1_agree,
        worst_kl: finite(l.worst_kl),
        worst_nmse: finite(l.worst_nmse),
    });
    r.tokenizer_parity = tokenizer_parity(&runs, &cases_ok);
    r.status = if r.counts.fail == 0 {
        Status::Pass
    } else {
        Status::Fail
    };

    if entry.speed {
        if let Some(c) = &probe_case {
            progress(Event::Speed);
            match measure_speed(&runs, c, req.speed) {
                Ok(s) => r.speed = Some(s),
                Err(e) => r.speed_error = Some(e),
            }
        }
    }
    finish(r)
}

/// The case as this model runs it.
fn retarget(
    mut c: Case,
    entry: &ModelEntry,
    engine: &ProbeSpec,
    path: &Path,
    fault: Option<&str>,
) -> Case {
    c.model = ModelSpec::Path(path.to_path_buf());
    // `exact = true` is the claim that the case's engine mirrors its reference bit for bit
    // (ours mirrors bitnet.cpp); another pair is judged by the tolerances alone.
    c.exact &= c.engine == *engine && c.reference == entry.reference;
    c.engine = engine.clone();
    c.reference = entry.reference.clone();
    c.unavailable = None;
    c.threads = entry.threads;
    c.tokenizer = crate::case::TokenizerChoice::parse(&entry.tokenizer);
    if let Some(f) = fault {
        c.fault = Some(f.to_string());
    }
    c
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn clip(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_string()
    } else {
        format!("{}…", &s[..s.floor_char_boundary(n)])
    }
}

/// The worst NMSE / KL a trial judged, from the shared diff (no recomputation), with the
/// one NaN policy of [`judge::Worst`]: a non-finite value reports no number.
fn trial_metrics(runs: &Runs, t: &TrialSpec) -> (Option<f64>, Option<f64>, Option<bool>) {
    let Some(c) = &t.case else {
        return (None, None, None);
    };
    let prompt = match &t.kind {
        Kind::Stage { prompt, .. } | Kind::Logits { prompt, .. } | Kind::Decode { prompt } => {
            *prompt
        }
        _ => return (None, None, None),
    };
    let Ok(d) = runs.diff(c, &c.prompts[prompt]) else {
        return (None, None, None);
    };
    let stage_worst = |f: &dyn Fn(&Judged) -> bool| {
        let rows: Vec<&Judged> = d.stages().filter(|j| f(j)).collect();
        let s = judge::worst_by_stage(rows.iter().copied());
        let worst = s
            .iter()
            .flat_map(|x| x.prompt.into_iter().chain(x.decode))
            .map(Worst::value)
            .fold(None, |acc: Option<f64>, x| {
                Some(acc.map_or(x, |a| a.max(x)))
            });
        let exact =
            (!rows.is_empty()).then(|| rows.iter().all(|j| j.measure.bit_exact() == Some(true)));
        (worst.and_then(finite), exact)
    };
    match &t.kind {
        Kind::Stage { stage, .. } => {
            let (n, e) =
                stage_worst(&|j| j.phase == Phase::Prompt && j.site == Site::Stage(*stage));
            (n, None, e)
        }
        Kind::Logits { position, .. } => {
            let l = judge::logits_summary(
                d.logits()
                    .filter(|l| l.phase == Phase::Prompt && l.position == *position),
            );
            if l.positions == 0 {
                (None, None, None)
            } else {
                (finite(l.worst_nmse), finite(l.worst_kl), None)
            }
        }
        Kind::Decode { .. } => {
            let (n, e) = stage_worst(&|j| j.phase != Phase::Prompt);
            let l = judge::logits_summary(d.logits().filter(|l| l.phase != Phase::Prompt));
            (
                n,
                (l.positions > 0).then_some(l.worst_kl).and_then(finite),
                e,
            )
        }
        _ => (None, None, None),
    }
}

/// Where a trial starts, from the shared diff: its first failing value in evaluation order,
/// or, when it passes, the first value it judges.
fn trial_location(runs: &Runs, t: &TrialSpec) -> Option<Location> {
    let c = t.case.as_ref()?;
    type Covers = Box<dyn Fn(&Judged) -> bool>;
    let (prompt, covers): (usize, Covers) = match &t.kind {
        Kind::Stage { prompt, stage } => {
            let stage = *stage;
            (
                *prompt,
                Box::new(move |j: &Judged| {
                    j.phase == Phase::Prompt && j.site == Site::Stage(stage)
                }),
            )
        }
        Kind::Logits { prompt, position } => {
            let position = *position;
            (
                *prompt,
                Box::new(move |j: &Judged| {
                    j.phase == Phase::Prompt && j.site == Site::Logits && j.position == position
                }),
            )
        }
        Kind::Decode { prompt } => (
            *prompt,
            Box::new(|j: &Judged| {
                j.phase != Phase::Prompt && matches!(j.site, Site::Stage(_) | Site::Logits)
            }),
        ),
        Kind::Tokens { prompt } => (*prompt, Box::new(|j: &Judged| j.site == Site::Decode)),
        // Bit-exactness: where the first value that is not starts.
        Kind::Exact { prompt } => (
            *prompt,
            Box::new(|j: &Judged| j.measure.bit_exact() == Some(false)),
        ),
        _ => return None,
    };
    let d = runs.diff(c, c.prompts.get(prompt)?).ok()?;
    let mine = || d.judged.iter().filter(|j| covers(j));
    let j = mine()
        .filter(|j| !j.pass())
        .min_by_key(|j| j.key())
        .or_else(|| mine().min_by_key(|j| j.key()))?;
    Some(Location {
        stage: j.site.to_string(),
        phase: j.phase.to_string(),
        position: j.position,
    })
}

/// Per stage over every compared prompt: the worst NMSE in the prompt and in decode steps.
fn stage_worst<'a>(judged: impl Iterator<Item = &'a Judged>) -> Vec<StageWorst> {
    let judged: Vec<&Judged> = judged.collect();
    let exact: BTreeMap<(u32, usize), bool> = judged
        .iter()
        .filter_map(|j| j.site.stage().map(|id| (id.eval_key(), *j)))
        .fold(BTreeMap::new(), |mut m, (k, j)| {
            *m.entry(k).or_insert(true) &= j.measure.bit_exact() == Some(true);
            m
        });
    judge::worst_by_stage(judged.iter().copied())
        .into_iter()
        .map(|s| {
            let non_finite = [s.prompt, s.decode].contains(&Some(Worst::NonFinite));
            StageWorst {
                stage: s.stage.to_string(),
                worst_nmse_prompt: s.prompt.map(Worst::value).and_then(finite),
                worst_nmse_decode: s.decode.map(Worst::value).and_then(finite),
                bit_exact: exact.get(&s.stage.eval_key()).copied().unwrap_or(false),
                nmse_limit: s.nmse_limit.unwrap_or(0.0),
                non_finite,
            }
        })
        .collect()
}

/// Engine vs oracle vs truth ids over every tokenizer input of the model's cases.
fn tokenizer_parity(runs: &Runs, cases: &[Arc<Case>]) -> Option<TokenizerParity> {
    let mut p = TokenizerParity::default();
    let mut any_truth = false;
    let (mut et, mut ot) = (0, 0);
    for c in cases {
        let Some(spec) = &c.tokenize else { continue };
        let (Ok(mut e), Ok(mut o)) = (runs.lease(c, &c.engine), runs.lease(c, &c.reference)) else {
            continue;
        };
        let truth = if spec.truth {
            trials::truth().ok()
        } else {
            None
        };
        any_truth |= truth.is_some();
        for text in &spec.inputs {
            for &ps in &spec.parse_special {
                let Ok(t) =
                    trials::Tokenized::of(e.as_mut(), o.as_mut(), truth, text, spec.add_bos, ps)
                else {
                    continue;
                };
                p.comparisons += 1;
                p.engine_eq_oracle += t.engine_eq_oracle() as usize;
                et += (t.engine_eq_truth() == Some(true)) as usize;
                ot += (t.oracle_eq_truth() == Some(true)) as usize;
            }
        }
    }
    if p.comparisons == 0 {
        return None;
    }
    if any_truth {
        p.engine_eq_truth = Some(et);
        p.oracle_eq_truth = Some(ot);
    }
    Some(p)
}

/// Engine and reference tok/s on this model: one warm-up each, then `reps` alternating runs.
/// Both time themselves (prefill and decode seconds inside the probe), so a process boundary
/// does not count against either. Our engine runs in-process, every other probe through its
/// own server. Needs both to generate; the prompt ids come from the first of the two (or
/// our engine) that tokenizes.
fn measure_speed(runs: &Runs, case: &Case, s: SpeedSettings) -> Result<Speed, String> {
    let (ea, eb) = (case.engine.label(), case.reference.label());
    let ca = runs.caps(case, &case.engine)?;
    let cb = runs.caps(case, &case.reference)?;
    for (label, c) in [(&ea, &ca), (&eb, &cb)] {
        if !c.generate {
            return Err(format!("{label} cannot generate"));
        }
    }
    let mut e = runs.lease(case, &case.engine)?;
    let mut o = runs.lease(case, &case.reference)?;
    let n_ctx = e.info().n_ctx.min(o.info().n_ctx) as usize;
    let prompt_tokens = s
        .prompt_tokens
        .min(n_ctx.saturating_sub(s.decode_tokens + 2))
        .max(1);
    let prompt = if ca.tokenize {
        crate::bench::prompt_of(e.as_mut(), prompt_tokens)?
    } else if cb.tokenize {
        crate::bench::prompt_of(o.as_mut(), prompt_tokens)?
    } else {
        let mut ours = runs.lease(case, &ProbeSpec::Engine)?;
        crate::bench::prompt_of(ours.as_mut(), prompt_tokens)?
    };
    let once = |p: &mut dyn Probe| -> Result<(f64, f64), String> {
        let g = p
            .generate(&probe::GenerateRequest::greedy(
                prompt.clone(),
                s.decode_tokens + 1,
            ))
            .map_err(|e| e.to_string())?;
        if !(g.prefill_seconds > 0.0 && g.decode_seconds > 0.0) || g.steps.is_empty() {
            return Err("its generation reported no prefill/decode timings".into());
        }
        Ok((
            prompt.len() as f64 / g.prefill_seconds,
            g.steps.len() as f64 / g.decode_seconds,
        ))
    };
    once(e.as_mut()).map_err(|x| format!("{ea}: {x}"))?;
    once(o.as_mut()).map_err(|x| format!("{eb}: {x}"))?;
    let (mut ep, mut ed, mut op, mut od) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..s.reps.max(1) {
        let (a, b) = once(e.as_mut()).map_err(|x| format!("{ea}: {x}"))?;
        ep.push(a);
        ed.push(b);
        let (a, b) = once(o.as_mut()).map_err(|x| format!("{eb}: {x}"))?;
        op.push(a);
        od.push(b);
    }
    let med = |v: &[f64]| crate::bench::summarize(v).median;
    let ratios = |a: &[f64], b: &[f64]| {
        crate::bench::summarize(&a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<_>>())
    };
    let (pr, dr) = (ratios(&ep, &op), ratios(&ed, &od));
    Ok(Speed {
        prompt_tokens: prompt.len(),
        decode_tokens: s.decode_tokens,
        reps: s.reps,
        engine: ProbeSpeed {
            prefill_tok_s: med(&ep),
            decode_tok_s: med(&ed),
        },
        reference: ProbeSpeed {
            prefill_tok_s: med(&op),
            decode_tok_s: med(&od),
        },
        prefill_ratio: pr.median,
        decode_ratio: dr.median,
        prefill_ratio_range: [pr.min, pr.max],
        decode_ratio_range: [dr.min, dr.max],
    })
}

fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((h.finalize().iter().map(|b| format!("{b:02x}")).collect(), n))
}

fn build_info() -> BuildInfo {
    let root = crate::snapshot::workspace_root();
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(&root)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let revision = git(&["rev-parse", "HEAD"]);
    let dirty = revision
        .as_ref()
        .and_then(|_| git(&["status", "--porcelain", "--untracked-files=no"]))
        .map(|s| !s.is_empty());
    BuildInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        git_revision: revision,
        git_dirty: dirty,
        faults_built: trials::faults_built(),
    }
}

/// CPU model, the flags the kernels care about, cores and memory (Linux /proc; other systems
/// get what `std` knows).
pub fn machine() -> Machine {
    const FLAGS: &[&str] = &[
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512_vnni",
        "avx_vnni",
        "amx_int8",
    ];
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let have: Vec<String> = field("flags")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_mib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb / 1024);
    Machine {
        cpu_model: field("model name").unwrap_or_else(|| "unknown".into()),
        cpu_flags: FLAGS
            .iter()
            .filter(|f| have.iter().any(|h| h == *f))
            .map(|f| f.to_string())
            .collect(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_mib,
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
    }
}
