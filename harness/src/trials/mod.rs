//! Case files → named trials, and the one [`check`] every trial goes through. Trials read
//! the judgements of [`crate::judge`] (through the shared diffs in [`Runs`]); none of them
//! decides a verdict of its own.
//!
//! Trial names are stable strings, so `cargo test -- blk.3`, `--exact` and nextest filters
//! select them:
//!
//! | trial | what it checks |
//! |---|---|
//! | `case::<file>` | the case file parses (only present when it does not) |
//! | `tokenize::<file>::<NNN>` | one input: engine, oracle (and truth) ids agree, round trip |
//! | `stage::<file>::<prompt>::<blk.N.stage>` | that stage at every prompt position |
//! | `logits::<file>::<prompt>::pos<N>` | logits at position N: top-1, KL, NMSE |
//! | `decode::<file>::<prompt>` | each greedy step through the KV cache: stages and logits |
//! | `exact::<file>::<prompt>` | a case with `exact = true`: every value bit-exact with the reference; a failure names the first that is not |
//! | `tokens::<file>::<prompt>` | an engine that only generates: its greedy tokens against the reference's, a near-tie excused by the reference's margin |
//! | `meta::<file>::<prompt>::<check>::<probe>` | causality, prefill-vs-decode, determinism |
//! | `snapshot::<file>` | the engine's tokens, stage hashes/RMS, top-5 and greedy tokens |
//! | `snapshot::<file>::metrics` | engine-vs-oracle metrics, rounded to the decade |
//! | `gallery::<file>` | with an injected fault, the harness fails first at the expected stage |
//! | `answer::<file>::<prompt>::<probe>` | a prompt with an `answer`: that probe's greedy continuation is the answer then EOS, each token by at least `[answers] min_margin` |
//!
//! The engine under test and the reference are the case's `engine` and `reference` specs.
//! Each trial compares at the finest level both declare (their capabilities); a trial one
//! of them cannot give is *ignored* with the reason, never passed.

mod answer;
mod gallery;
mod meta;
pub mod tokenize;

pub use answer::greedy_text;
pub use gallery::{gallery_run, render as render_gallery, GalleryResult};
pub use tokenize::{truth, Tokenized};

use crate::case::{Case, CaseError, Prompt};
use crate::diff::DiffReport;
use crate::judge::{Judged, Phase, Side, Site};
use crate::probes::ProbeSpec;
use crate::runs::Runs;
use probe::StageId;
use std::fmt::Write as _;
use std::sync::Arc;

/// What the user asked of the oracle (`BITPROBE_ORACLE=off` skips its trials).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OracleMode {
    On,
    Off,
}

impl OracleMode {
    pub fn from_env() -> OracleMode {
        match std::env::var("BITPROBE_ORACLE").as_deref() {
            Ok("off" | "0" | "no" | "false") => OracleMode::Off,
            _ => OracleMode::On,
        }
    }
}

#[derive(Clone, Debug)]
pub enum Kind {
    CaseError(CaseError),
    Tokenize {
        input: usize,
    },
    Stage {
        prompt: usize,
        stage: StageId,
    },
    Logits {
        prompt: usize,
        position: u32,
    },
    Decode {
        prompt: usize,
    },
    Tokens {
        prompt: usize,
    },
    Exact {
        prompt: usize,
    },
    Meta {
        prompt: usize,
        check: Meta,
        side: Side,
    },
    Snapshot,
    SnapshotMetrics,
    Gallery,
    /// `probe` indexes the case's `[answers] probes`.
    Answer {
        prompt: usize,
        probe: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Meta {
    Causality,
    PrefillVsDecode,
    Determinism,
}

impl Meta {
    fn name(self) -> &'static str {
        match self {
            Meta::Causality => "causality",
            Meta::PrefillVsDecode => "prefill_vs_decode",
            Meta::Determinism => "determinism",
        }
    }
}

/// One trial: a name, what to check, and whether it is ignored (with the reason).
#[derive(Clone, Debug)]
pub struct TrialSpec {
    pub name: String,
    pub case: Option<Arc<Case>>,
    pub kind: Kind,
    /// Shown next to the name (`[expected deviation]`).
    pub label: Option<String>,
    pub ignored: Option<String>,
}

/// A trial's verdict.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Pass,
    Fail(String),
    Ignored(String),
}

/// Whether a trial runs a probe other than our in-process engine (`BITPROBE_ORACLE=off`
/// ignores those).
fn needs_oracle(case: &Case, k: &Kind) -> bool {
    match k {
        Kind::Tokenize { .. }
        | Kind::Stage { .. }
        | Kind::Logits { .. }
        | Kind::Decode { .. }
        | Kind::Exact { .. }
        | Kind::Tokens { .. } => true,
        Kind::SnapshotMetrics | Kind::Gallery => true,
        Kind::Meta { side, .. } => !case.spec(*side).is_engine(),
        Kind::Answer { probe, .. } => !case.answers.probes[*probe].is_engine(),
        Kind::CaseError(_) | Kind::Snapshot => false,
    }
}

/// Whether the engine was built with fault injection (the `faults` feature; tests always are).
pub fn faults_built() -> bool {
    !engine::faults::Fault::NAMES.is_empty()
}

/// Expands a loaded case (or its error) into trials. Needs the model's layer count and each
/// prompt's token count, which it gets from the engine (cheap; cached).
pub fn expand(case: Result<Case, CaseError>, runs: &Runs, oracle: OracleMode) -> Vec<TrialSpec> {
    let case = match case {
        Ok(c) => Arc::new(c),
        Err(e) => {
            return vec![TrialSpec {
                name: format!("case::{}", e.id),
                case: None,
                kind: Kind::CaseError(e),
                label: None,
                ignored: None,
            }]
        }
    };
    let id = case.id.clone();
    let mut out = Vec::new();
    let mut push = |name: String, kind: Kind, label: Option<String>| {
        let ignored = case
            .unavailable
            .clone()
            .or_else(|| case.ignore.clone())
            .or_else(|| match &kind {
                Kind::Answer { probe, .. } => case.answers.probes[*probe].unavailable(),
                _ => case.engine.unavailable(),
            })
            .or_else(|| case.reference.unavailable())
            .or_else(|| {
                (case.fault.is_some() && !faults_built())
                    .then(|| "needs the faults feature".to_string())
            })
            .or_else(|| {
                (oracle == OracleMode::Off && needs_oracle(&case, &kind))
                    .then(|| "BITPROBE_ORACLE=off".to_string())
            })
            .or_else(|| capability_gap(&case, &kind, runs, oracle))
            .or_else(|| {
                (matches!(kind, Kind::Exact { .. })
                    && std::env::var("BITPROBE_LLAMAFILE").is_ok_and(|v| v == "off"))
                .then(|| {
                    "BITPROBE_LLAMAFILE=off makes the engine sum in another order on purpose: exactness does not apply".to_string()
                })
            });
        out.push(TrialSpec {
            name,
            case: Some(case.clone()),
            kind,
            label,
            ignored,
        });
    };

    if case.expect.is_some() {
        push(format!("gallery::{id}"), Kind::Gallery, None);
        return out;
    }
    if let Some(t) = &case.tokenize {
        for (i, input) in t.inputs.iter().enumerate() {
            let dev = t.known_deviations.iter().any(|d| &d.input == input);
            push(
                format!("tokenize::{id}::{i:03}"),
                Kind::Tokenize { input: i },
                dev.then(|| "expected deviation".into()),
            );
        }
    }
    // Shapes for the per-stage and per-position trials come from the engine.
    let (n_layer, positions) = match shape_of(&case, runs) {
        Ok((n_layer, positions, n_ctx)) => {
            // Values that parse but cannot run on this model: one failing trial that says
            // where, instead of dozens of identical runtime failures.
            if let Some(message) = runnable(&case, n_layer, &positions, n_ctx) {
                return vec![TrialSpec {
                    name: format!("case::{id}"),
                    case: None,
                    kind: Kind::CaseError(CaseError {
                        id: id.clone(),
                        file: case.file.clone(),
                        message,
                    }),
                    label: None,
                    ignored: None,
                }];
            }
            (n_layer, positions)
        }
        Err(e) => {
            // Without shapes we cannot name per-stage trials; one trial reports why.
            if !case.prompts.is_empty() {
                let reason = case.unavailable.clone();
                out.push(TrialSpec {
                    name: format!("stage::{id}::load"),
                    case: Some(case.clone()),
                    kind: Kind::CaseError(CaseError {
                        id: id.clone(),
                        file: case.file.clone(),
                        message: e,
                    }),
                    label: None,
                    ignored: reason,
                });
            }
            return out;
        }
    };
    for (pi, p) in case.prompts.iter().enumerate() {
        let stages: &[probe::Stage] = if case.compare { &case.stages } else { &[] };
        for stage in stages {
            let layers: Vec<Option<u32>> = if stage.is_per_layer() {
                (0..n_layer)
                    .filter(|l| case.layers.as_ref().is_none_or(|ls| ls.contains(l)))
                    .map(Some)
                    .collect()
            } else {
                vec![None]
            };
            for layer in layers {
                let sid = StageId::new(*stage, layer);
                push(
                    format!("stage::{id}::{}::{sid}", p.id),
                    Kind::Stage {
                        prompt: pi,
                        stage: sid,
                    },
                    None,
                );
            }
        }
        for pos in 0..if case.compare { positions[pi] } else { 0 } {
            push(
                format!("logits::{id}::{}::pos{pos}", p.id),
                Kind::Logits {
                    prompt: pi,
                    position: pos as u32,
                },
                None,
            );
        }
        if p.decode > 0 && case.compare {
            // Step by step through the KV cache where both can be teacher-forced; token by
            // token where the engine only generates.
            let kind = match (
                caps_of(runs, &case, &case.engine, oracle),
                caps_of(runs, &case, &case.reference, oracle),
            ) {
                (Some(a), Some(b)) if !full_decode(&a) && a.generate && full_decode(&b) => {
                    Kind::Tokens { prompt: pi }
                }
                _ => Kind::Decode { prompt: pi },
            };
            let name = match kind {
                Kind::Tokens { .. } => format!("tokens::{id}::{}", p.id),
                _ => format!("decode::{id}::{}", p.id),
            };
            push(name, kind, None);
        }
        if case.exact && case.compare {
            push(
                format!("exact::{id}::{}", p.id),
                Kind::Exact { prompt: pi },
                None,
            );
        }
        let m = &case.metamorphic;
        for (on, check) in [
            (m.causality, Meta::Causality),
            (m.prefill_vs_decode, Meta::PrefillVsDecode),
            (m.determinism, Meta::Determinism),
        ] {
            if on {
                for side in [Side::A, Side::B] {
                    push(
                        format!(
                            "meta::{id}::{}::{}::{}",
                            p.id,
                            check.name(),
                            case.spec(side)
                        ),
                        Kind::Meta {
                            prompt: pi,
                            check,
                            side,
                        },
                        None,
                    );
                }
            }
        }
    }
    for (pi, p) in case.prompts.iter().enumerate() {
        if p.answer.is_none() {
            continue;
        }
        for (k, spec) in case.answers.probes.iter().enumerate() {
            push(
                format!("answer::{id}::{}::{}", p.id, spec.label()),
                Kind::Answer {
                    prompt: pi,
                    probe: k,
                },
                None,
            );
        }
    }
    if case.snapshot && !case.prompts.is_empty() {
        // The engine-alone snapshot is of bitprobe's engine; the metrics snapshot records
        // any pair (for two real implementations: how far apart they are, stage by stage).
        if case.engine.is_engine() {
            push(format!("snapshot::{id}"), Kind::Snapshot, None);
        }
        if case.compare {
            push(
                format!("snapshot::{id}::metrics"),
                Kind::SnapshotMetrics,
                None,
            );
        }
    }
    out
}

/// Teacher-forced decoding with step logits: what a `decode::` trial needs.
fn full_decode(c: &probe::Capabilities) -> bool {
    c.generate && c.teacher_forced && c.decode_logits
}

/// A probe's capabilities, unless asking would run a probe the user switched off (or it
/// cannot be opened: the trial then fails with the open error itself).
fn caps_of(
    runs: &Runs,
    case: &Case,
    spec: &ProbeSpec,
    oracle: OracleMode,
) -> Option<probe::Capabilities> {
    if oracle == OracleMode::Off && !spec.is_engine() {
        return None;
    }
    runs.caps(case, spec).ok()
}

/// Why a trial cannot be run with these two probes (what one of them does not give).
fn capability_gap(case: &Case, kind: &Kind, runs: &Runs, oracle: OracleMode) -> Option<String> {
    let (a, b) = (
        caps_of(runs, case, &case.engine, oracle)?,
        caps_of(runs, case, &case.reference, oracle)?,
    );
    let (la, lb) = (case.engine.label(), case.reference.label());
    let lacks = |what: &str, ha: bool, hb: bool| -> Option<String> {
        match (ha, hb) {
            (true, true) => None,
            (false, _) if !a.forward && !a.tokenize && a.generate => {
                Some(format!("{la} gives tokens only (no {what})"))
            }
            (false, _) => Some(format!("{la} gives no {what}")),
            (_, false) => Some(format!("{lb} gives no {what}")),
        }
    };
    match kind {
        Kind::Tokenize { .. } => lacks("tokenization", a.tokenize, b.tokenize),
        Kind::Stage { stage, .. } => lacks("forward pass", a.forward, b.forward).or_else(|| {
            lacks(
                &format!("{} tensors", stage.stage),
                a.stages.contains(&stage.stage),
                b.stages.contains(&stage.stage),
            )
        }),
        // Without a forward pass, the prompt rows come with a generation's step logits.
        Kind::Logits { prompt, .. } => {
            let from_generation =
                case.prompts[*prompt].decode > 0 && full_decode(&a) && full_decode(&b);
            lacks(
                "per-position logits",
                a.forward || from_generation,
                b.forward || from_generation,
            )
        }
        Kind::Decode { .. } => lacks(
            "teacher-forced decode with step logits",
            full_decode(&a),
            full_decode(&b),
        ),
        Kind::Tokens { .. } => lacks("generation", a.generate, b.generate && b.decode_logits),
        Kind::Meta { side, check, .. } => {
            let (c, l) = match side {
                Side::A => (&a, &la),
                Side::B => (&b, &lb),
            };
            let ok = match check {
                Meta::Causality | Meta::Determinism => c.forward,
                Meta::PrefillVsDecode => c.forward && full_decode(c),
            };
            (!ok).then(|| format!("{l} cannot run the {} check", check.name()))
        }
        Kind::SnapshotMetrics => lacks("forward pass", a.forward, b.forward),
        _ => None,
    }
}

/// Why a case cannot run on its model (layers it does not have, prompts that tokenize to
/// nothing or outgrow the context), with the place in the case file.
fn runnable(case: &Case, n_layer: u32, positions: &[usize], n_ctx: usize) -> Option<String> {
    let place = |at: &Option<String>| {
        at.clone()
            .unwrap_or_else(|| case.file.display().to_string())
    };
    if let Some(l) = case.layers.iter().flatten().find(|&&l| l >= n_layer) {
        return Some(format!(
            "{}: layers: layer {l} does not exist; the model has {n_layer} (0..{})\nfix: list layers below {n_layer}, or drop `layers` for all",
            place(&case.layers_at),
            n_layer.saturating_sub(1)
        ));
    }
    for (p, &n) in case.prompts.iter().zip(positions) {
        if n == 0 {
            return Some(format!(
                "{}: prompt '{}' tokenizes to nothing (add_bos = {})\nfix: give text that has tokens, or add_bos = true",
                place(&p.at),
                p.id,
                p.add_bos
            ));
        }
        if n + p.decode > n_ctx {
            return Some(format!(
                "{}: prompt '{}': {n} tokens + decode {} exceed the context of {n_ctx}\nfix: decode at most {}",
                place(&p.at),
                p.id,
                p.decode,
                n_ctx.saturating_sub(n)
            ));
        }
    }
    None
}

/// Layer count, each prompt's token count and the context, from the engine.
fn shape_of(case: &Case, runs: &Runs) -> Result<(u32, Vec<usize>, usize), String> {
    if let Some(why) = &case.unavailable {
        return Err(why.clone());
    }
    let mut e = runs.lease(case, &ProbeSpec::Engine)?;
    let n_layer = e.info().n_layer;
    let n_ctx = e.info().n_ctx as usize;
    let mut counts = Vec::new();
    for p in &case.prompts {
        counts.push(
            p.tokenize(e.as_mut())
                .map_err(|e| format!("prompt '{}': {e}", p.id))?
                .len(),
        );
    }
    Ok((n_layer, counts, n_ctx))
}

/// The one check every trial goes through.
pub fn check(runs: &Runs, t: &TrialSpec) -> Outcome {
    if let Some(why) = &t.ignored {
        return Outcome::Ignored(why.clone());
    }
    let case = match (&t.kind, &t.case) {
        (Kind::CaseError(e), _) => return Outcome::Fail(e.message.clone()),
        (_, Some(c)) => c,
        (_, None) => return Outcome::Fail("internal: trial without a case".into()),
    };
    let r = match &t.kind {
        Kind::CaseError(_) => unreachable!(),
        Kind::Tokenize { input } => tokenize::check_tokenize(runs, case, *input),
        Kind::Stage { prompt, stage } => with_diff(runs, case, *prompt, |d| {
            check_stage(case, &case.prompts[*prompt], d, *stage)
        }),
        Kind::Logits { prompt, position } => with_diff(runs, case, *prompt, |d| {
            check_logits(case, &case.prompts[*prompt], d, *position)
        }),
        Kind::Decode { prompt } => with_diff(runs, case, *prompt, |d| {
            check_decode(case, &case.prompts[*prompt], d)
        }),
        Kind::Tokens { prompt } => with_diff(runs, case, *prompt, |d| {
            check_tokens(case, &case.prompts[*prompt], d)
        }),
        Kind::Exact { prompt } => with_diff(runs, case, *prompt, |d| {
            check_exact(case, &case.prompts[*prompt], d)
        }),
        Kind::Meta {
            prompt,
            check,
            side,
        } => meta::check_meta(runs, case, &case.prompts[*prompt], *check, case.spec(*side)),
        Kind::Snapshot => crate::snapshot::engine_text(runs, case)
            .and_then(|text| crate::snapshot::assert(case, None, &text)),
        Kind::SnapshotMetrics => crate::snapshot::metrics_text(runs, case)
            .and_then(|text| crate::snapshot::assert(case, Some("metrics"), &text)),
        Kind::Gallery => gallery::check_gallery(runs, case),
        Kind::Answer { prompt, probe } => answer::check_answer(
            runs,
            case,
            &case.prompts[*prompt],
            &case.answers.probes[*probe],
        ),
    };
    match r {
        Ok(()) => Outcome::Pass,
        Err(m) => Outcome::Fail(m),
    }
}

fn with_diff(
    runs: &Runs,
    case: &Case,
    prompt: usize,
    f: impl FnOnce(&DiffReport) -> Result<(), String>,
) -> Result<(), String> {
    let d = runs.diff(case, &case.prompts[prompt])?;
    f(&d)
}

/// `bitprobe diff …` that reproduces a prompt's comparison exactly: the model, both probes,
/// the prompt (in a file under `target/bitprobe-repro/` when it is long or not one line),
/// how it is tokenized, the decode steps, stages, layers, threads, tolerances, tokenizer and
/// fault — everything that changes the verdict.
pub fn repro(case: &Case, p: &Prompt) -> String {
    let mut cmd = String::from("bitprobe diff");
    match &case.model {
        crate::probes::ModelSpec::Preset { name, seed } => {
            write!(cmd, " --preset {name} --preset-seed {seed}").ok();
        }
        crate::probes::ModelSpec::Path(path) => {
            write!(cmd, " --model {}", shell_quote(&path.display().to_string())).ok();
        }
    }
    if !case.engine.is_engine() {
        write!(cmd, " --engine {}", shell_quote(&case.engine.spec())).ok();
    }
    if case.reference != ProbeSpec::ORACLE {
        write!(cmd, " --reference {}", shell_quote(&case.reference.spec())).ok();
    }
    if p.text.len() > 120 || p.text.contains('\n') {
        let dir = crate::snapshot::workspace_root().join("target/bitprobe-repro");
        let file = dir.join(format!("{}__{}.txt", case.id.replace('/', "__"), p.id));
        let written = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&file, &p.text));
        match written {
            Ok(()) => write!(
                cmd,
                " --prompt-file {}",
                shell_quote(&file.display().to_string())
            ),
            Err(_) => write!(cmd, " --prompt {}", shell_quote(&p.text)),
        }
        .ok();
    } else {
        write!(cmd, " --prompt {}", shell_quote(&p.text)).ok();
    }
    if !p.add_bos {
        cmd.push_str(" --no-bos");
    }
    if p.parse_special {
        cmd.push_str(" --parse-special");
    }
    if p.chat {
        cmd.push_str(" --chat");
    }
    if p.decode > 0 {
        write!(cmd, " --decode {}", p.decode).ok();
    }
    if case.stages.len() != probe::Stage::ALL.len() {
        let names: Vec<&str> = case.stages.iter().map(|s| s.name()).collect();
        write!(cmd, " --stages {}", names.join(",")).ok();
    }
    if let Some(layers) = &case.layers {
        let l: Vec<String> = layers.iter().map(u32::to_string).collect();
        write!(cmd, " --layers {}", l.join(",")).ok();
    }
    write!(cmd, " -t {}", case.threads).ok();
    if let Some(t) = case.timeout {
        write!(cmd, " --timeout {t}").ok();
    }
    if let Some(n) = case.tolerance.nmse {
        write!(cmd, " --nmse {n:e}").ok();
    }
    if let Some(k) = case.tolerance.kl {
        write!(cmd, " --kl {k:e}").ok();
    }
    for (stage, o) in &case.tolerance.stages {
        if let Some(n) = o.nmse {
            write!(cmd, " --stage-nmse {stage}={n:e}").ok();
        }
    }
    if case.tokenizer != crate::case::TokenizerChoice::Gguf {
        write!(
            cmd,
            " --tokenizer {}",
            shell_quote(&case.tokenizer.to_string())
        )
        .ok();
    }
    if let Some(f) = &case.fault {
        write!(cmd, " --inject-fault {f}").ok();
    }
    cmd
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Every value bit-exact: the engine mirrors the reference, so any difference — even one no
/// tolerance would notice — is named at its first (phase, position, layer, stage).
fn check_exact(case: &Case, p: &Prompt, d: &DiffReport) -> Result<(), String> {
    match crate::judge::first_inexact(&d.judged) {
        None if d.stages().next().is_some() => Ok(()),
        None => Err("no stage values were compared: exactness needs a forward pass with stages on both sides".into()),
        Some(j) => {
            let mut m = format!(
                "not bit-exact: the first value that differs is {}",
                d.describe(j)
            );
            if let Some(f) = d.first_failure() {
                write!(m, "\nand the first over its limit: {}", d.describe(f)).ok();
            } else {
                m.push_str("\n(every value is within its tolerance: only bit-exactness catches this)");
            }
            write!(m, "\nreproduce: {}", repro(case, p)).ok();
            Err(m)
        }
    }
}

fn check_tokens(case: &Case, p: &Prompt, d: &DiffReport) -> Result<(), String> {
    let generated: Vec<&Judged> = d.judged.iter().filter(|j| j.site == Site::Decode).collect();
    if generated.is_empty() {
        return Err(format!(
            "no generated tokens were compared ({})",
            d.not_compared.join("; ")
        ));
    }
    match generated.iter().find(|j| !j.pass()) {
        None => Ok(()),
        Some(bad) => Err(divergence_message(
            case,
            p,
            d,
            format!(
                "greedy tokens: {} {:?} vs {} {:?}\n{}",
                d.labels.a,
                d.greedy_a,
                d.labels.b,
                d.greedy_b,
                d.describe(bad)
            ),
        )),
    }
}

/// The failure message shared by stage/logits/decode trials: what failed here, then the
/// prompt's first divergence with the two stages before it, then the command to reproduce.
fn divergence_message(case: &Case, p: &Prompt, d: &DiffReport, headline: String) -> String {
    let mut m = headline;
    if let Some(fd) = d.first_divergence() {
        write!(m, "\nfirst divergence of this prompt: {}", d.describe(fd)).ok();
        if matches!(fd.site, Site::Stage(_)) {
            for prev in d.preceding(fd) {
                write!(m, "\n  before it: {}", prev.summary(&d.labels)).ok();
            }
        }
    }
    if let Some(r) = crate::judge::first_inexact(&d.judged) {
        write!(
            m,
            "\nfirst stage that is not bit-exact: {}",
            r.summary(&d.labels)
        )
        .ok();
    }
    write!(m, "\nreproduce: {}", repro(case, p)).ok();
    m
}

fn check_stage(case: &Case, p: &Prompt, d: &DiffReport, stage: StageId) -> Result<(), String> {
    let rows: Vec<&Judged> = d
        .stages()
        .filter(|r| r.phase == Phase::Prompt && r.site == Site::Stage(stage))
        .collect();
    if rows.is_empty() {
        return Err(format!(
            "no {stage} rows were compared (did a probe skip the stage?)"
        ));
    }
    match rows.iter().filter(|r| !r.pass()).min_by_key(|r| r.position) {
        None => Ok(()),
        Some(bad) => Err(divergence_message(
            case,
            p,
            d,
            format!("{stage} fails: {}", bad.summary(&d.labels)),
        )),
    }
}

fn check_logits(case: &Case, p: &Prompt, d: &DiffReport, position: u32) -> Result<(), String> {
    let row = d
        .logits()
        .find(|l| l.phase == Phase::Prompt && l.position == position)
        .ok_or_else(|| {
            format!(
                "no logits at position {position} (the prompt has {} tokens)",
                d.tokens_b.len()
            )
        })?;
    if row.pass() {
        return Ok(());
    }
    let m = row.measure.logits();
    Err(divergence_message(
        case,
        p,
        d,
        format!(
            "logits at position {position}: {} · top-5 overlap {}/5 · max|Δ| {:.3e}",
            row.note(&d.labels)
                .unwrap_or_else(|| "outside tolerance".into()),
            m.map_or(0, |m| m.top5_overlap),
            m.map_or(f64::NAN, |m| m.max_abs)
        ),
    ))
}

fn check_decode(case: &Case, p: &Prompt, d: &DiffReport) -> Result<(), String> {
    let decode = |j: &&Judged| matches!(j.phase, Phase::Decode(_)) && !j.pass();
    let bad_row = d.stages().filter(decode).min_by_key(|r| r.key());
    let bad_logits = d.logits().filter(decode).min_by_key(|l| l.phase);
    let steps = d.greedy_b.len();
    let same = d
        .greedy_b
        .iter()
        .zip(&d.greedy_a)
        .take_while(|(a, b)| a == b)
        .count();
    // A greedy token may differ only at a near-tie, which the logits rows already judge.
    if bad_row.is_none() && bad_logits.is_none() {
        return Ok(());
    }
    let mut head = format!("greedy tokens agree for {same} of {steps}");
    if same < steps {
        write!(
            head,
            "; token {same}: {} {} vs {} {}",
            d.labels.a,
            d.greedy_a.get(same).map_or("-".into(), |t| t.to_string()),
            d.labels.b,
            d.greedy_b[same]
        )
        .ok();
    }
    if let Some(r) = bad_row {
        write!(head, "\nfirst failing stage: {}", r.summary(&d.labels)).ok();
    }
    if let Some(l) = bad_logits {
        write!(
            head,
            "\nfirst failing logits: {} pos {}: {}",
            l.phase,
            l.position,
            l.note(&d.labels).unwrap_or_default()
        )
        .ok();
    }
    Err(divergence_message(case, p, d, head))
}
