//! Case files → named trials, and the one [`check`] every trial goes through.
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
//! | `meta::<file>::<prompt>::<check>::<probe>` | causality, prefill-vs-decode, determinism |
//! | `snapshot::<file>` | the engine's tokens, stage hashes/RMS, top-5 and greedy tokens |
//! | `snapshot::<file>::metrics` | engine-vs-oracle metrics, rounded to the decade |
//! | `gallery::<file>` | with an injected fault, the harness fails first at the expected stage |

use crate::case::{Case, CaseError, Prompt};
use crate::compare::{compare, compare_logits, decade, sig, top_k};
use crate::diff::{DiffReport, Divergence, Phase, Row};
use crate::probes::ProbeKind;
use crate::runs::{tokenize_prompt, Runs};
use probe::{Capture, GenerateRequest, StageId, Token};
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
    Meta {
        prompt: usize,
        check: Meta,
        probe: ProbeKind,
    },
    Snapshot,
    SnapshotMetrics,
    Gallery,
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

fn needs_oracle(k: &Kind) -> bool {
    match k {
        Kind::Tokenize { .. } | Kind::Stage { .. } | Kind::Logits { .. } | Kind::Decode { .. } => {
            true
        }
        Kind::SnapshotMetrics | Kind::Gallery => true,
        Kind::Meta { probe, .. } => *probe == ProbeKind::Oracle,
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
            .or_else(|| {
                (case.fault.is_some() && !faults_built())
                    .then(|| "needs the faults feature".to_string())
            })
            .or_else(|| {
                (oracle == OracleMode::Off && needs_oracle(&kind))
                    .then(|| "BITPROBE_ORACLE=off".to_string())
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
        Ok(s) => s,
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
            push(
                format!("decode::{id}::{}", p.id),
                Kind::Decode { prompt: pi },
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
                for probe in [ProbeKind::Engine, ProbeKind::Oracle] {
                    push(
                        format!("meta::{id}::{}::{}::{probe}", p.id, check.name()),
                        Kind::Meta {
                            prompt: pi,
                            check,
                            probe,
                        },
                        None,
                    );
                }
            }
        }
    }
    if case.snapshot && !case.prompts.is_empty() {
        push(format!("snapshot::{id}"), Kind::Snapshot, None);
        push(
            format!("snapshot::{id}::metrics"),
            Kind::SnapshotMetrics,
            None,
        );
    }
    out
}

/// Layer count and each prompt's token count, from the engine.
fn shape_of(case: &Case, runs: &Runs) -> Result<(u32, Vec<usize>), String> {
    if let Some(why) = &case.unavailable {
        return Err(why.clone());
    }
    let mut e = runs.lease(case, ProbeKind::Engine)?;
    let n_layer = e.info().n_layer;
    let mut counts = Vec::new();
    for p in &case.prompts {
        counts.push(
            tokenize_prompt(e.as_mut(), p)
                .map_err(|e| format!("prompt '{}': {e}", p.id))?
                .len(),
        );
    }
    Ok((n_layer, counts))
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
        Kind::Tokenize { input } => check_tokenize(runs, case, *input),
        Kind::Stage { prompt, stage } => with_diff(runs, case, *prompt, |d| {
            check_stage(case, &case.prompts[*prompt], d, *stage)
        }),
        Kind::Logits { prompt, position } => with_diff(runs, case, *prompt, |d| {
            check_logits(case, &case.prompts[*prompt], d, *position)
        }),
        Kind::Decode { prompt } => with_diff(runs, case, *prompt, |d| {
            check_decode(case, &case.prompts[*prompt], d)
        }),
        Kind::Meta {
            prompt,
            check,
            probe,
        } => check_meta(runs, case, &case.prompts[*prompt], *check, *probe),
        Kind::Snapshot => {
            snapshot_engine(runs, case).and_then(|text| crate::snapshot::assert(case, None, &text))
        }
        Kind::SnapshotMetrics => snapshot_metrics(runs, case)
            .and_then(|text| crate::snapshot::assert(case, Some("metrics"), &text)),
        Kind::Gallery => check_gallery(runs, case),
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

/// `bitprobe diff …` that reproduces a prompt's comparison.
pub fn repro(case: &Case, p: &Prompt) -> String {
    let model = match &case.model {
        crate::probes::ModelSpec::Preset { name, seed } => {
            format!("--preset {name} --preset-seed {seed}")
        }
        crate::probes::ModelSpec::Path(path) => {
            format!("--model {}", shell_quote(&path.display().to_string()))
        }
    };
    let mut cmd = format!("bitprobe diff {model} --prompt {}", shell_quote(&p.text));
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
    if let Some(f) = &case.fault {
        write!(cmd, " --inject-fault {f}").ok();
    }
    cmd
}

fn shell_quote(s: &str) -> String {
    let s = if s.len() > 120 {
        format!("{}…", &s[..s.floor_char_boundary(120)])
    } else {
        s.to_string()
    };
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The failure message shared by stage/logits/decode trials: what failed here, then the
/// prompt's first divergence with the two stages before it, then the command to reproduce.
fn divergence_message(case: &Case, p: &Prompt, d: &DiffReport, headline: String) -> String {
    let mut m = headline;
    if let Some(fd) = &d.first_divergence {
        write!(m, "\nfirst divergence of this prompt: {fd}").ok();
        if let Some(row) = d.rows.iter().find(|r| {
            r.stage.to_string() == fd.stage && r.position == fd.position && r.phase == fd.phase
        }) {
            for prev in d.preceding(row) {
                write!(m, "\n  before it: {}", prev.summary()).ok();
            }
        }
    }
    if let Some(r) = d
        .rows
        .iter()
        .filter(|r| r.metrics.is_some_and(|m| !m.bit_exact))
        .min_by_key(|r| r.key())
    {
        write!(m, "\nfirst stage that is not bit-exact: {}", r.summary()).ok();
    }
    write!(m, "\nreproduce: {}", repro(case, p)).ok();
    m
}

fn check_stage(case: &Case, p: &Prompt, d: &DiffReport, stage: StageId) -> Result<(), String> {
    let rows: Vec<&Row> = d
        .rows
        .iter()
        .filter(|r| r.phase == Phase::Prompt && r.stage == stage)
        .collect();
    if rows.is_empty() {
        return Err(format!(
            "no {stage} rows were compared (did a probe skip the stage?)"
        ));
    }
    match rows.iter().filter(|r| !r.pass).min_by_key(|r| r.position) {
        None => Ok(()),
        Some(bad) => Err(divergence_message(
            case,
            p,
            d,
            format!("{stage} fails: {}", bad.summary()),
        )),
    }
}

fn check_logits(case: &Case, p: &Prompt, d: &DiffReport, position: u32) -> Result<(), String> {
    let row = d
        .logits
        .iter()
        .find(|l| l.phase == Phase::Prompt && l.position == position)
        .ok_or_else(|| {
            format!(
                "no logits at position {position} (the prompt has {} tokens)",
                d.oracle_tokens.len()
            )
        })?;
    if row.pass {
        return Ok(());
    }
    let m = &row.metrics;
    Err(divergence_message(
        case,
        p,
        d,
        format!(
            "logits at position {position}: {} · top-5 overlap {}/5 · max|Δ| {:.3e}",
            row.note.as_deref().unwrap_or("outside tolerance"),
            m.top5_overlap,
            m.max_abs
        ),
    ))
}

fn check_decode(case: &Case, p: &Prompt, d: &DiffReport) -> Result<(), String> {
    let bad_row = d
        .rows
        .iter()
        .filter(|r| matches!(r.phase, Phase::Decode(_)) && !r.pass)
        .min_by_key(|r| r.key());
    let bad_logits = d
        .logits
        .iter()
        .filter(|l| matches!(l.phase, Phase::Decode(_)) && !l.pass)
        .min_by_key(|l| l.phase);
    let steps = d.oracle_greedy.len();
    let same = d
        .oracle_greedy
        .iter()
        .zip(&d.engine_greedy)
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
            "; token {same}: engine {} vs oracle {}",
            d.engine_greedy[same], d.oracle_greedy[same]
        )
        .ok();
    }
    if let Some(r) = bad_row {
        write!(head, "\nfirst failing stage: {}", r.summary()).ok();
    }
    if let Some(l) = bad_logits {
        write!(
            head,
            "\nfirst failing logits: {} pos {}: {}",
            l.phase,
            l.position,
            l.note.as_deref().unwrap_or("")
        )
        .ok();
    }
    Err(divergence_message(case, p, d, head))
}

// ------------------------------------------------------------------------------------------
// Tokenizer trials.

/// The trained Llama-3 tokenizer (tiktoken over the ranks asset), loaded once.
pub fn truth() -> Result<&'static engine::tokenizer::truth::Truth, String> {
    use engine::forge::vocab::{assets_dir, LLAMA3_ASSET};
    static T: std::sync::OnceLock<Result<engine::tokenizer::truth::Truth, String>> =
        std::sync::OnceLock::new();
    T.get_or_init(|| {
        engine::tokenizer::truth::Truth::from_ranks_file(assets_dir().join(LLAMA3_ASSET))
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| e.clone())
}

fn pieces_around(p: &mut dyn probe::Probe, ids: &[Token], at: usize) -> String {
    let lo = at.saturating_sub(2);
    let hi = (at + 3).min(ids.len());
    let pieces = p.pieces(&ids[lo..hi]).unwrap_or_default();
    let shown: Vec<String> = ids[lo..hi]
        .iter()
        .zip(
            pieces
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .chain(std::iter::repeat(String::new())),
        )
        .map(|(id, s)| format!("{id}:{s:?}"))
        .collect();
    format!("[{}{}]", if lo > 0 { "…, " } else { "" }, shown.join(", "))
}

fn first_diff(a: &[Token], b: &[Token]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn check_tokenize(runs: &Runs, case: &Case, input: usize) -> Result<(), String> {
    let spec = case
        .tokenize
        .as_ref()
        .expect("tokenize trials come from [tokenize]");
    let text = &spec.inputs[input];
    let mut e = runs.lease(case, ProbeKind::Engine)?;
    let mut o = runs.lease(case, ProbeKind::Oracle)?;
    let mut problems = Vec::new();
    for &ps in &spec.parse_special {
        let ei = e
            .tokenize(text, spec.add_bos, ps)
            .map_err(|x| format!("engine: {x}"))?;
        let oi = o
            .tokenize(text, spec.add_bos, ps)
            .map_err(|x| format!("oracle: {x}"))?;
        let ti = if spec.truth {
            Some(
                truth()?
                    .encode(text, spec.add_bos, ps)
                    .map_err(|e| format!("truth: {e}"))?,
            )
        } else {
            None
        };
        let mode = format!("parse_special={ps}");
        let dev = |probe: &str| {
            spec.known_deviations.iter().find(|d| {
                d.probe == probe && &d.input == text && d.parse_special.is_none_or(|x| x == ps)
            })
        };
        match &ti {
            None => {
                if ei != oi {
                    let at = first_diff(&ei, &oi);
                    problems.push(format!(
                        "{mode}: engine ≠ oracle from index {at}: engine {} vs oracle {}",
                        pieces_around(e.as_mut(), &ei, at),
                        pieces_around(o.as_mut(), &oi, at)
                    ));
                }
            }
            Some(ti) => {
                let who = format!(
                    "engine {} truth, oracle {} truth, engine {} oracle",
                    if ei == *ti { "=" } else { "≠" },
                    if oi == *ti { "=" } else { "≠" },
                    if ei == oi { "=" } else { "≠" }
                );
                let oracle_dev = dev("oracle");
                for (name, ids, probe) in [("oracle", &oi, &mut o), ("engine", &ei, &mut e)] {
                    let recorded = dev(name);
                    // In GGUF mode the engine follows the file as llama.cpp reads it, so it may
                    // deviate where the oracle's deviation is recorded — exactly as the oracle.
                    let like_for_like = name == "engine"
                        && case.tokenizer == "gguf"
                        && oracle_dev.is_some()
                        && ei == oi;
                    match (ids != ti, recorded) {
                        (true, None) if !like_for_like => {
                            let at = first_diff(ids, ti);
                            problems.push(format!(
                                "{mode}: {who}. {name} from index {at}: {} vs truth {:?}",
                                pieces_around(probe.as_mut(), ids, at),
                                &ti[at.min(ti.len())..(at + 3).min(ti.len())],
                            ));
                        }
                        (false, Some(d)) => problems.push(format!(
                            "{mode}: {who}. The known deviation of {name} on {:?} has disappeared: remove it from {} (reason was: {})",
                            d.input,
                            case.file.display(),
                            d.reason
                        )),
                        _ => {}
                    }
                }
                if like_for_like_broken(case, oracle_dev.is_some(), &ei, &oi) {
                    problems.push(format!("{mode}: {who}. The oracle deviates as recorded; the engine (GGUF mode) must match it"));
                }
            }
        }
        for x in spec.expected.iter().filter(|x| &x.input == text) {
            for (name, ids) in [
                ("engine", Some(&ei)),
                ("oracle", Some(&oi)),
                ("truth", ti.as_ref()),
            ] {
                let Some(ids) = ids else { continue };
                let body: &[Token] = if spec.add_bos && ids.first() == e.info().bos.as_ref() {
                    &ids[1..]
                } else {
                    ids
                };
                if body != x.ids.as_slice() {
                    problems.push(format!(
                        "{mode}: {name} gives {body:?}, the pinned ids are {:?}",
                        x.ids
                    ));
                }
            }
        }
        if let Some(ti) = &ti {
            for d in spec
                .known_deviations
                .iter()
                .filter(|d| &d.input == text && d.parse_special.is_none_or(|x| x == ps))
            {
                let got = if d.probe == "engine" { &ei } else { &oi };
                if let Some(want) = &d.ids {
                    if got != want && got != ti {
                        problems.push(format!(
                            "{mode}: the known deviation of {} on {:?} changed: recorded {want:?}, now {got:?}",
                            d.probe, d.input
                        ));
                    }
                }
            }
        }
        if spec.round_trip {
            let body: Vec<Token> = ei
                .iter()
                .copied()
                .filter(|t| Some(*t) != e.info().bos || !spec.add_bos)
                .collect();
            let back = e
                .detokenize(&body)
                .map_err(|x| format!("engine detokenize: {x}"))?;
            if &back != text && !(ps && contains_special_text(text)) {
                problems.push(format!("{mode}: engine round trip gives {back:?}"));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("input {input} {text:?}:\n{}", problems.join("\n")))
    }
}

/// Where the oracle's deviation from truth is recorded, a GGUF-mode engine must equal it.
fn like_for_like_broken(case: &Case, oracle_deviates: bool, ei: &[Token], oi: &[Token]) -> bool {
    oracle_deviates && case.tokenizer == "gguf" && ei != oi
}

fn contains_special_text(s: &str) -> bool {
    s.contains("<|")
}

// ------------------------------------------------------------------------------------------
// Metamorphic checks: properties one probe must have on its own.

/// KL limit between a whole-prompt prefill and the same tokens fed one at a time. Not zero:
/// bitnet.cpp itself takes different matmul paths for one row and for many (llamafile's
/// sgemm vs ggml's vec_dot), and the int8 activation quantization of ternary models turns
/// ~1e-8 differences into flipped roundings. Worst observed, by the oracle itself:
/// 1.9e-3 (small-llama3-i2s, "story" prompt); limit = that × 10, rounded up.
const PREFILL_VS_DECODE_KL: f64 = 2e-2;

fn check_meta(
    runs: &Runs,
    case: &Case,
    p: &Prompt,
    check: Meta,
    kind: ProbeKind,
) -> Result<(), String> {
    let mut pr = runs.lease(case, kind)?;
    let tokens = tokenize_prompt(pr.as_mut(), p).map_err(|e| e.to_string())?;
    let n = tokens.len();
    let err = |e: probe::Error| format!("{kind}: {e}");
    match check {
        Meta::Determinism => {
            let cap = Capture::all();
            let a = pr.forward(&tokens, &cap).map_err(err)?;
            let b = pr.forward(&tokens, &cap).map_err(err)?;
            if probe::blake3_f32(&a.logits) != probe::blake3_f32(&b.logits) {
                return Err(format!(
                    "{kind}: two forward passes over the same tokens gave different logits bits"
                ));
            }
            for (x, y) in a.stages.iter().zip(&b.stages) {
                if x.blake3() != y.blake3() {
                    return Err(format!(
                        "{kind}: {} at position {} differs between two identical runs",
                        x.id(),
                        x.position
                    ));
                }
            }
            Ok(())
        }
        Meta::Causality => {
            if n < 2 {
                return Err(format!(
                    "prompt '{}' has {n} token(s); causality needs at least 2",
                    p.id
                ));
            }
            let k = n / 2;
            // Same prefix, different continuation: positions < k must not notice.
            let mut other = tokens.clone();
            let nv = pr.info().n_vocab;
            for t in other.iter_mut().skip(k) {
                *t = (*t + 7) % nv;
            }
            let a = pr.forward(&tokens, &Capture::none()).map_err(err)?;
            let b = pr.forward(&other, &Capture::none()).map_err(err)?;
            for i in 0..k {
                let m = compare(b.logits_at(i), a.logits_at(i));
                if !m.bit_exact {
                    return Err(format!(
                        "{kind}: logits at position {i} changed when tokens from position {k} on changed (nmse {:.3e}, max|Δ| {:.3e}): attention sees the future",
                        m.nmse, m.max_abs
                    ));
                }
            }
            Ok(())
        }
        Meta::PrefillVsDecode => {
            let all = pr.forward(&tokens, &Capture::none()).map_err(err)?;
            let mut g = GenerateRequest::greedy(tokens[..1].to_vec(), n);
            g.forced = Some(tokens[1..].to_vec());
            g.keep_logits = true;
            let gen = pr.generate(&g).map_err(err)?;
            let mut rows: Vec<&[f32]> = vec![gen.prefill.logits_at(0)];
            rows.extend(gen.steps.iter().filter_map(|s| s.logits.as_deref()));
            for (i, step) in rows.iter().enumerate().take(n) {
                let m = compare_logits(step, all.logits_at(i));
                // A top-1 flip is a near-tie when the logits moved enough to explain it.
                let near_tie = m.margin_oracle <= 2.0 * m.max_abs;
                if (!m.top1_agree() && !near_tie) || m.kl > PREFILL_VS_DECODE_KL {
                    return Err(format!(
                        "{kind}: position {i}: one-token-at-a-time decode vs whole-prompt prefill: top-1 {} vs {} (margins {:.3e} / {:.3e}), KL {:.3e} (limit {:.0e})",
                        m.top1_engine, m.top1_oracle, m.margin_engine, m.margin_oracle, m.kl, PREFILL_VS_DECODE_KL
                    ));
                }
            }
            Ok(())
        }
    }
}

// ------------------------------------------------------------------------------------------
// Gallery: a case with an injected fault must fail, first at the expected stage.

/// What one gallery case gave: the fault, where the harness first saw it, where it should.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GalleryResult {
    /// The case id (`gallery/i2s_block_256`).
    pub case: String,
    pub fault: String,
    /// The expected first divergence (`blk.0.attn_q`) and phase (`prompt`, `decode`, `decode step 2`).
    pub expected: String,
    pub expected_phase: Option<String>,
    /// The prompt whose diff is reported: the first that diverged (else the first prompt).
    pub prompt: String,
    /// The harness's first divergence, when it saw one.
    pub reported: Option<Divergence>,
    /// NMSE at the reported row (stage or logits); none for `tokenize`.
    pub nmse: Option<f64>,
    /// The first stage (in evaluation order) whose values are not bit-exact, and its NMSE:
    /// the sharpest localization while the engine is otherwise bit-exact.
    pub first_inexact: Option<String>,
    pub first_inexact_nmse: Option<f64>,
    pub expected_inexact: Option<String>,
    /// Whether the prompt phase passed (the KV-cache fault must leave it clean).
    pub prompt_clean: bool,
    /// Detected and localized where expected.
    pub pass: bool,
}

impl GalleryResult {
    pub fn detected(&self) -> bool {
        self.reported.is_some()
    }
}

/// Runs one gallery case (a case with `fault` and `[expect]`): every prompt's diff, the first
/// divergence of the first prompt that diverges, judged against the expectation.
pub fn gallery_run(runs: &Runs, case: &Case) -> Result<GalleryResult, String> {
    let expect = case
        .expect
        .as_ref()
        .ok_or_else(|| format!("{}: a gallery case needs [expect]", case.file.display()))?;
    let mut found = None;
    for p in &case.prompts {
        let d = runs.diff(case, p)?;
        if d.first_divergence.is_some() {
            found = Some((p, d));
            break;
        }
    }
    let prompt = found.as_ref().map_or_else(
        || {
            case.prompts
                .first()
                .map(|p| p.id.clone())
                .unwrap_or_default()
        },
        |(p, _)| p.id.clone(),
    );
    let mut r = GalleryResult {
        case: case.id.clone(),
        fault: case.fault.clone().unwrap_or_default(),
        expected: expect.first_divergence.clone(),
        expected_phase: expect.phase.clone(),
        prompt,
        reported: None,
        nmse: None,
        first_inexact: None,
        first_inexact_nmse: None,
        expected_inexact: expect.first_inexact.clone(),
        prompt_clean: true,
        pass: false,
    };
    let Some((_, d)) = found else { return Ok(r) };
    if let Some(x) = d
        .rows
        .iter()
        .filter(|x| x.metrics.as_ref().is_some_and(|m| !m.bit_exact))
        .min_by_key(|x| x.key())
    {
        r.first_inexact = Some(x.stage.to_string());
        r.first_inexact_nmse = x.metrics.as_ref().map(|m| {
            if m.non_finite_failure().is_some() {
                f64::NAN
            } else {
                m.nmse
            }
        });
    }
    let fd = d.first_divergence.clone().expect("found diverges");
    r.prompt_clean = fd.phase != Phase::Prompt;
    r.nmse = d
        .rows
        .iter()
        .find(|x| {
            x.phase == fd.phase && x.position == fd.position && x.stage.to_string() == fd.stage
        })
        .and_then(|x| {
            x.metrics.as_ref().map(|m| {
                if m.non_finite_failure().is_some() {
                    f64::NAN
                } else {
                    m.nmse
                }
            })
        })
        .or_else(|| {
            (fd.stage == "result_output")
                .then(|| {
                    d.logits
                        .iter()
                        .find(|l| l.phase == fd.phase && l.position == fd.position)
                        .map(|l| l.metrics.nmse)
                })
                .flatten()
        });
    let phase_ok = match expect.phase.as_deref() {
        None => true,
        Some("prompt") => fd.phase == Phase::Prompt,
        Some("decode") => matches!(fd.phase, Phase::Decode(_)),
        Some(s) => s == fd.phase.to_string(),
    };
    let inexact_ok = expect
        .first_inexact
        .as_ref()
        .is_none_or(|want| r.first_inexact.as_ref() == Some(want));
    r.pass = fd.stage == expect.first_divergence && phase_ok && inexact_ok;
    r.reported = Some(fd);
    Ok(r)
}

fn check_gallery(runs: &Runs, case: &Case) -> Result<(), String> {
    let r = gallery_run(runs, case)?;
    match &r.reported {
        _ if r.pass => Ok(()),
        None => Err(format!(
            "fault {:?} was not detected: every stage and logit stayed within tolerance on {} prompt(s)",
            r.fault,
            case.prompts.len()
        )),
        Some(fd) => {
            let p = case.prompts.iter().find(|p| p.id == r.prompt).expect("reported prompt exists");
            Err(format!(
                "fault {:?} detected but localized wrongly: expected {} ({}){}, the harness named {fd}; first stage not bit-exact: {}\nreproduce: {}",
                r.fault,
                r.expected,
                r.expected_phase.as_deref().unwrap_or("any phase"),
                r.expected_inexact.as_ref().map(|s| format!(", first not bit-exact at {s}")).unwrap_or_default(),
                r.first_inexact.as_deref().unwrap_or("none"),
                repro(case, p)
            ))
        }
    }
}

// ------------------------------------------------------------------------------------------
// Snapshots.

fn snapshot_engine(runs: &Runs, case: &Case) -> Result<String, String> {
    let mut s = String::new();
    writeln!(s, "model: {}", case.model).ok();
    for p in &case.prompts {
        let r = runs.engine_run(case, p)?;
        writeln!(s, "\n## prompt {}: {:?}", p.id, clip(&p.text, 80)).ok();
        writeln!(s, "tokens: {:?}", r.tokens).ok();
        if !r.greedy.is_empty() {
            writeln!(s, "greedy: {:?}", r.greedy).ok();
        }
        // One line per stage: hash over every position's bytes, RMS over all positions.
        let mut ids: Vec<StageId> = r.forward.stages.iter().map(|t| t.id()).collect();
        ids.sort_by_key(|i| i.eval_key());
        ids.dedup();
        for id in ids {
            let data: Vec<f32> = r
                .forward
                .stages
                .iter()
                .filter(|t| t.id() == id)
                .flat_map(|t| t.data.iter().copied())
                .collect();
            let st = probe::Stats::of(&data);
            writeln!(
                s,
                "{:<22} blake3 {}  rms {}",
                id.to_string(),
                &probe::blake3_f32(&data)[..12],
                sig(st.rms, 4)
            )
            .ok();
        }
        let nv = r.forward.n_vocab as usize;
        for (i, row) in r.forward.logits.chunks_exact(nv).enumerate() {
            writeln!(s, "top5 pos {i:<3} {:?}", top_k(row, 5)).ok();
        }
    }
    Ok(s)
}

fn snapshot_metrics(runs: &Runs, case: &Case) -> Result<String, String> {
    let mut s = String::new();
    writeln!(s, "model: {}", case.model).ok();
    writeln!(
        s,
        "worst NMSE per stage over positions, rounded to the decade"
    )
    .ok();
    for p in &case.prompts {
        let d = runs.diff(case, p)?;
        writeln!(s, "\n## prompt {}", p.id).ok();
        writeln!(
            s,
            "tokens engine = oracle: {}",
            d.engine_tokens == d.oracle_tokens
        )
        .ok();
        let mut by: std::collections::BTreeMap<(Phase, (u32, usize)), (String, f64, bool)> =
            Default::default();
        for r in &d.rows {
            let phase = if r.phase == Phase::Prompt {
                Phase::Prompt
            } else {
                Phase::Decode(0)
            };
            let e =
                by.entry((phase, r.stage.eval_key()))
                    .or_insert((r.stage.to_string(), 0.0, true));
            if let Some(m) = &r.metrics {
                e.1 = e.1.max(m.nmse);
                e.2 &= m.bit_exact;
            }
        }
        for ((phase, _), (name, worst, exact)) in by {
            let tag = if phase == Phase::Prompt {
                ""
            } else {
                " (decode)"
            };
            let v = if exact {
                "bit-exact".to_string()
            } else {
                decade(worst)
            };
            writeln!(s, "{:<22} {v}{tag}", name).ok();
        }
        let worst_kl = d.logits.iter().map(|l| l.metrics.kl).fold(0.0, f64::max);
        let agree = d.logits.iter().filter(|l| l.metrics.top1_agree()).count();
        writeln!(
            s,
            "logits: top-1 agree {agree}/{}, worst KL {}",
            d.logits.len(),
            decade(worst_kl)
        )
        .ok();
        if !d.oracle_greedy.is_empty() {
            writeln!(s, "greedy: oracle {:?}", d.oracle_greedy).ok();
        }
    }
    Ok(s)
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}
