//! Case files: `cases/**/*.toml`, one behaviour per file. The schema is documented with a
//! commented example in `cases/README.md`; this module is its single parser.
//!
//! A file that does not parse becomes a [`CaseError`] carrying `file:line:col` and the fix,
//! which the test binary turns into one failing trial while every other file still runs.

use crate::judge::{Phase, Site};
use crate::probes::{ModelSpec, ProbeSpec, Registry};
use crate::tolerance::ToleranceOverrides;
use probe::{Stage, StageId};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A parsed case file.
#[derive(Clone, Debug)]
pub struct Case {
    /// Path relative to the cases root without `.toml` (`smoke/tiny-i2s`): the name used in
    /// trial names and snapshot suffixes.
    pub id: String,
    pub file: PathBuf,
    pub description: String,
    pub model: ModelSpec,
    /// Why this case's model is unavailable (path absent): its trials are ignored with this.
    pub unavailable: Option<String>,
    /// `ignore = "reason"`: every trial of the case is ignored with this reason (an engine
    /// that cannot load this model at all, recorded as such).
    pub ignore: Option<String>,
    pub threads: usize,
    /// The implementation under test (`engine = "SPEC"`, default our engine) and the one it
    /// is judged against (`reference = "SPEC"`, default the vendored bitnet.cpp).
    pub engine: ProbeSpec,
    pub reference: ProbeSpec,
    /// Base watchdog deadline in seconds for out-of-process probes (`timeout = N`).
    pub timeout: Option<f64>,
    pub tokenizer: TokenizerChoice,
    pub fault: Option<String>,
    pub prompts: Vec<Prompt>,
    /// Compare engine with oracle (stage, logits, decode trials); off for cases that only
    /// run metamorphic or tokenizer checks.
    pub compare: bool,
    pub stages: Vec<Stage>,
    pub layers: Option<Vec<u32>>,
    /// Where `[compare] layers` is declared (`file:line:col`).
    pub layers_at: Option<String>,
    pub tolerance: ToleranceOverrides,
    pub tokenize: Option<TokenizeSpec>,
    pub metamorphic: Metamorphic,
    pub snapshot: bool,
    /// The engine must be bit-exact with the reference (it mirrors it): `exact::` trials,
    /// whose failure names the first value that is not.
    pub exact: bool,
    /// For gallery cases: the harness must fail, first at this stage.
    pub expect: Option<Expect>,
    /// Who must give each prompt's `answer`, and how confidently (`[answers]`).
    pub answers: Answers,
}

/// `[answers]`: the probes that must answer every prompt's `answer` (default the engine and
/// the reference), and the smallest top-2 logit margin allowed at an answer position.
#[derive(Clone, Debug, PartialEq)]
pub struct Answers {
    pub probes: Vec<ProbeSpec>,
    /// The expected token's logit minus the largest other, at every answer position (EOS
    /// included), teacher-forced; probes without logits are judged on their tokens only.
    pub min_margin: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct Prompt {
    pub id: String,
    pub text: String,
    pub add_bos: bool,
    pub parse_special: bool,
    pub chat: bool,
    /// Greedy decode steps compared through the KV cache (0 = none).
    pub decode: usize,
    /// `answer = " Paris."`: the greedy continuation every answering probe must give, then
    /// EOS (`answer::` trials; see [`Answers`]).
    pub answer: Option<String>,
    /// Where the prompt is declared (`file:line:col`), for errors found once the model is known.
    pub at: Option<String>,
}

impl Prompt {
    /// A plain prompt: BOS added, specials not parsed, no chat template, no decode.
    pub fn text(text: &str) -> Prompt {
        Prompt {
            id: "prompt".into(),
            text: text.into(),
            add_bos: true,
            parse_special: false,
            chat: false,
            decode: 0,
            answer: None,
            at: None,
        }
    }

    /// The text a probe tokenizes and how: the one place the chat template is applied (it
    /// brings its own BOS and special tokens).
    pub fn tokenizer_input(&self) -> (String, bool, bool) {
        if self.chat {
            let text = engine::tokenizer::llama3_chat(&[("user", self.text.as_str())], true);
            (text, false, true)
        } else {
            (self.text.clone(), self.add_bos, self.parse_special)
        }
    }

    /// The prompt's tokens as `p` gives them.
    pub fn tokenize(&self, p: &mut dyn probe::Probe) -> probe::Result<Vec<probe::Token>> {
        let (text, add_bos, parse_special) = self.tokenizer_input();
        p.tokenize(&text, add_bos, parse_special)
    }
}

/// The engine's tokenizer: the GGUF vocabulary as llama.cpp reads it, the trained Llama-3
/// tokenizer ("truth"), or a `tokenizer.json` file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TokenizerChoice {
    Gguf,
    Truth,
    File(PathBuf),
}

impl TokenizerChoice {
    pub fn parse(s: &str) -> TokenizerChoice {
        match s {
            "gguf" => TokenizerChoice::Gguf,
            "truth" => TokenizerChoice::Truth,
            path => TokenizerChoice::File(PathBuf::from(path)),
        }
    }
}

impl std::fmt::Display for TokenizerChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenizerChoice::Gguf => f.write_str("gguf"),
            TokenizerChoice::Truth => f.write_str("truth"),
            TokenizerChoice::File(p) => write!(f, "{}", p.display()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct TokenizeSpec {
    pub inputs: Vec<String>,
    /// Which parse_special settings each input is tokenized with.
    pub parse_special: Vec<bool>,
    pub add_bos: bool,
    /// Compare with the trained tokenizer (tiktoken over the Llama-3 ranks) too.
    pub truth: bool,
    pub round_trip: bool,
    pub known_deviations: Vec<KnownDeviation>,
    /// Inputs whose ids are pinned (llama.cpp's own test vectors): every probe must give them.
    pub expected: Vec<ExpectedIds>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedIds {
    pub input: String,
    pub ids: Vec<u32>,
}

/// A recorded, expected difference from the trained tokenizer. The trial still runs and
/// fails the moment the deviation disappears or changes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownDeviation {
    /// `oracle` (the reference) or `engine`.
    pub probe: DeviationProbe,
    pub input: String,
    #[serde(default)]
    pub parse_special: Option<bool>,
    /// The deviating ids as recorded; when given, a change in them fails the trial too.
    #[serde(default)]
    pub ids: Option<Vec<u32>>,
    pub reason: String,
}

/// Which side a known tokenizer deviation belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviationProbe {
    Engine,
    #[serde(alias = "reference")]
    Oracle,
}

impl std::fmt::Display for DeviationProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviationProbe::Engine => "engine",
            DeviationProbe::Oracle => "oracle",
        })
    }
}

#[derive(Clone, Debug, Default)]
pub struct Metamorphic {
    /// A prefix's logits equal the same positions of the longer prompt.
    pub causality: bool,
    /// Prefill of the whole prompt vs one token at a time through the KV cache.
    pub prefill_vs_decode: bool,
    /// Two runs give the same bits.
    pub determinism: bool,
}

/// What a gallery case expects the harness to report.
#[derive(Clone, Debug, PartialEq)]
pub struct Expect {
    /// The first divergence the harness must name, e.g. `blk.0.attn_q`, `tokenize`.
    pub first_divergence: Site,
    /// Where it must show; `None` = anywhere.
    pub phase: Option<ExpectPhase>,
    /// The position it must show at (prompt position, or a decode step's position).
    pub position: Option<u32>,
    /// The first stage that must not be bit-exact (for faults that stay under the tolerance
    /// where they start and are only caught downstream, e.g. `blk.0.attn_q`).
    pub first_inexact: Option<Site>,
}

/// `prompt`, `decode` (any step) or `decode step N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectPhase {
    Prompt,
    AnyDecode,
    Step(u32),
}

impl ExpectPhase {
    pub fn parse(s: &str) -> Option<ExpectPhase> {
        match s {
            "prompt" => Some(ExpectPhase::Prompt),
            "decode" => Some(ExpectPhase::AnyDecode),
            _ => s
                .strip_prefix("decode step ")
                .and_then(|n| n.parse().ok())
                .map(ExpectPhase::Step),
        }
    }

    pub fn matches(self, p: Phase) -> bool {
        match (self, p) {
            (ExpectPhase::Prompt, Phase::Prompt) => true,
            (ExpectPhase::AnyDecode, Phase::Decode(_)) => true,
            (ExpectPhase::Step(n), Phase::Decode(m)) => n == m,
            _ => false,
        }
    }
}

impl std::fmt::Display for ExpectPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectPhase::Prompt => f.write_str("prompt"),
            ExpectPhase::AnyDecode => f.write_str("decode"),
            ExpectPhase::Step(n) => write!(f, "decode step {n}"),
        }
    }
}

/// Parses a site as reports print it: `tokenize`, `decode`, or a stage (`blk.0.attn_q`,
/// `result_output`).
pub fn parse_site(s: &str) -> Result<Site, String> {
    match s {
        "tokenize" => Ok(Site::Tokenize),
        "decode" => Ok(Site::Decode),
        _ => s.parse::<StageId>().map(Site::Stage),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    first_divergence: toml::Spanned<String>,
    #[serde(default)]
    phase: Option<toml::Spanned<String>>,
    #[serde(default)]
    position: Option<u32>,
    #[serde(default)]
    first_inexact: Option<toml::Spanned<String>>,
}

/// A case file that cannot be used, with the place and the fix.
#[derive(Clone, Debug, PartialEq)]
pub struct CaseError {
    pub id: String,
    pub file: PathBuf,
    pub message: String,
}

impl std::fmt::Display for CaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

// ----------------------------------------------------------------------------------------
// The TOML shape.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    #[serde(default)]
    description: String,
    model: RawModel,
    #[serde(default)]
    threads: Option<usize>,
    #[serde(default)]
    engine: Option<toml::Spanned<String>>,
    #[serde(default)]
    reference: Option<toml::Spanned<String>>,
    #[serde(default)]
    timeout: Option<toml::Spanned<f64>>,
    #[serde(default)]
    tokenizer: Option<String>,
    #[serde(default)]
    fault: Option<String>,
    #[serde(default)]
    prompts: Vec<toml::Spanned<RawPrompt>>,
    #[serde(default)]
    compare: Option<RawCompare>,
    #[serde(default)]
    tolerance: Option<toml::Spanned<ToleranceOverrides>>,
    #[serde(default)]
    tokenize: Option<RawTokenize>,
    #[serde(default)]
    metamorphic: Option<RawMetamorphic>,
    #[serde(default = "yes")]
    snapshot: bool,
    #[serde(default)]
    exact: bool,
    #[serde(default)]
    ignore: Option<String>,
    #[serde(default)]
    expect: Option<RawExpect>,
    #[serde(default)]
    answers: Option<RawAnswers>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAnswers {
    #[serde(default)]
    probes: Option<Vec<toml::Spanned<RawAnswerProbe>>>,
    #[serde(default)]
    min_margin: Option<toml::Spanned<f64>>,
}

/// `"SPEC"`, or `{ probe = "SPEC", presets = [...] }`: a probe that answers on those presets
/// only (the weight types it can load).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawAnswerProbe {
    Spec(String),
    On { probe: String, presets: Vec<String> },
}

/// `preset = "NAME"` or `preset = ["NAME", …]` (one case per preset).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawPresets {
    One(String),
    Many(Vec<String>),
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    preset: Option<toml::Spanned<RawPresets>>,
    #[serde(default)]
    seed: Option<u64>,
    path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrompt {
    id: String,
    #[serde(default)]
    text: Option<String>,
    /// Instead of text: the text repeated to at least this many characters (long prompts).
    #[serde(default)]
    repeat_to: Option<usize>,
    #[serde(default = "yes")]
    add_bos: bool,
    #[serde(default)]
    parse_special: bool,
    #[serde(default)]
    chat: bool,
    #[serde(default)]
    decode: usize,
    #[serde(default)]
    answer: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompare {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    stages: Option<Vec<toml::Spanned<String>>>,
    #[serde(default)]
    layers: Option<toml::Spanned<Vec<u32>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokenize {
    #[serde(default)]
    inputs: Vec<String>,
    /// A JSON array of strings, relative to the case file.
    #[serde(default)]
    inputs_file: Option<toml::Spanned<String>>,
    #[serde(default)]
    parse_special: Option<Vec<bool>>,
    #[serde(default = "yes")]
    add_bos: bool,
    #[serde(default)]
    truth: bool,
    #[serde(default = "yes")]
    round_trip: bool,
    #[serde(default)]
    known_deviation: Vec<KnownDeviation>,
    #[serde(default)]
    expected: Vec<ExpectedIds>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetamorphic {
    #[serde(default)]
    causality: bool,
    #[serde(default)]
    prefill_vs_decode: bool,
    #[serde(default)]
    determinism: bool,
}

/// `line:col` (1-based) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.chars().count(), |i| before[i + 1..].chars().count())
        + 1;
    (line, col)
}

/// Parses one case file. `root` is the cases folder (for the id). A file naming several
/// presets (`preset = ["a", "b"]`) is one case per preset, `<id>@<preset>`; this returns the
/// first (see [`load_all`]).
pub fn load(file: &Path, root: &Path) -> Result<Case, CaseError> {
    load_all(file, root).map(|mut cases| cases.swap_remove(0))
}

/// Every case one file declares: one, or one per preset of a preset list.
pub fn load_all(file: &Path, root: &Path) -> Result<Vec<Case>, CaseError> {
    let id = case_id(file, root);
    let err = |message: String| CaseError {
        id: id.clone(),
        file: file.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| err(format!("{}: cannot read: {e}", file.display())))?;
    let at = |span: std::ops::Range<usize>| {
        let (l, c) = line_col(&text, span.start);
        format!("{}:{l}:{c}", file.display())
    };
    let raw: RawCase = toml::from_str(&text).map_err(|e| {
        let place = e.span().map_or_else(|| file.display().to_string(), &at);
        err(format!(
            "{place}: {}\nfix: see the schema and commented example in cases/README.md",
            e.message().trim()
        ))
    })?;

    // Model: exactly one of preset(s) / path.
    let seed = raw.model.seed.unwrap_or(1);
    let mut models: Vec<(Option<&str>, ModelSpec, Option<String>)> = Vec::new();
    match (&raw.model.preset, &raw.model.path) {
        (Some(p), None) => {
            let names: Vec<&str> = match p.get_ref() {
                RawPresets::One(n) => vec![n.as_str()],
                RawPresets::Many(ns) if !ns.is_empty() => ns.iter().map(String::as_str).collect(),
                RawPresets::Many(_) => {
                    return Err(err(format!(
                        "{}: an empty preset list\nfix: name at least one preset",
                        at(p.span())
                    )))
                }
            };
            let many = matches!(p.get_ref(), RawPresets::Many(_));
            for name in names {
                let Ok(preset) = engine::forge::preset(name) else {
                    let names: Vec<_> = engine::forge::presets().iter().map(|p| p.name).collect();
                    return Err(err(format!(
                        "{}: unknown preset '{name}'\nfix: use one of {} (`bitprobe forge --list`)",
                        at(p.span()),
                        names.join(", ")
                    )));
                };
                models.push((
                    many.then_some(name),
                    ModelSpec::Preset {
                        name: name.to_string(),
                        seed,
                    },
                    preset_unavailable(preset, seed),
                ));
            }
        }
        (None, Some(path)) => {
            let p = expand_path(path, file);
            let why = (!p.exists()).then(|| format!("model file {} is absent", p.display()));
            models.push((None, ModelSpec::Path(p), why));
        }
        _ => {
            return Err(err(format!(
                "{}: [model] needs exactly one of `preset = \"NAME\"` (or a list) or `path = \"FILE\"`\nfix: see cases/README.md",
                file.display()
            )))
        }
    };
    let (_, model, unavailable) = models[0].clone();

    let mut prompts = Vec::new();
    for p in raw.prompts {
        let p_at = at(p.span());
        let p = p.into_inner();
        let text = match (p.text, p.repeat_to) {
            (Some(t), None) if !t.is_empty() => t,
            (Some(t), Some(n)) if !t.is_empty() => t.repeat(n.div_ceil(t.len())),
            _ => {
                return Err(err(format!(
                    "{p_at}: prompt '{}' needs a non-empty `text`",
                    p.id
                )))
            }
        };
        if prompts.iter().any(|q: &Prompt| q.id == p.id) {
            return Err(err(format!(
                "{p_at}: two prompts are named '{}'; ids must be unique",
                p.id
            )));
        }
        prompts.push(Prompt {
            id: p.id,
            text,
            add_bos: p.add_bos,
            parse_special: p.parse_special,
            chat: p.chat,
            decode: p.decode,
            answer: p.answer,
            at: Some(p_at),
        });
    }

    let (mut stages, mut layers, mut compare) = (Stage::ALL.to_vec(), None, true);
    let mut layers_at = None;
    if let Some(c) = raw.compare {
        compare = c.enabled;
        if let Some(names) = c.stages {
            stages = Vec::new();
            for n in names {
                if n.get_ref() == "all" {
                    stages.extend(Stage::ALL);
                    continue;
                }
                match Stage::from_name(n.get_ref()) {
                    Some(s) => stages.push(s),
                    None => {
                        return Err(err(format!(
                            "{}: unknown stage '{}'\nfix: use \"all\" or any of {}",
                            at(n.span()),
                            n.get_ref(),
                            Stage::valid_names()
                        )))
                    }
                }
            }
            stages.sort_by_key(|s| s.order());
            stages.dedup();
        }
        if let Some(l) = c.layers {
            layers_at = Some(at(l.span()));
            layers = Some(l.into_inner());
        }
    }

    let tolerance = match raw.tolerance {
        Some(t) => {
            let span = t.span();
            let t = t.into_inner();
            if let Err(m) = t.validate() {
                return Err(err(format!(
                    "{}: {m}\nfix: see the tolerance table in cases/README.md",
                    at(span)
                )));
            }
            t
        }
        None => ToleranceOverrides::default(),
    };

    let tokenize = match raw.tokenize {
        None => None,
        Some(t) => {
            let mut inputs = t.inputs;
            if let Some(f) = t.inputs_file {
                let path = file.parent().unwrap_or(Path::new(".")).join(f.get_ref());
                let data = std::fs::read_to_string(&path).map_err(|e| {
                    err(format!(
                        "{}: inputs_file {}: {e}",
                        at(f.span()),
                        path.display()
                    ))
                })?;
                let more: Vec<String> = serde_json::from_str(&data).map_err(|e| {
                    err(format!(
                        "{}: inputs_file {} is not a JSON array of strings: {e}",
                        at(f.span()),
                        path.display()
                    ))
                })?;
                inputs.extend(more);
            }
            for x in &t.expected {
                if !inputs.contains(&x.input) {
                    inputs.push(x.input.clone());
                }
            }
            for d in &t.known_deviation {
                if !inputs.contains(&d.input) {
                    return Err(err(format!(
                        "{}: known_deviation names input {:?}, which is not among this case's inputs",
                        file.display(),
                        d.input
                    )));
                }
            }
            Some(TokenizeSpec {
                inputs,
                parse_special: t.parse_special.unwrap_or_else(|| vec![false, true]),
                add_bos: t.add_bos,
                truth: t.truth,
                round_trip: t.round_trip,
                known_deviations: t.known_deviation,
                expected: t.expected,
            })
        }
    };

    let spec =
        |v: &Option<toml::Spanned<String>>, default: ProbeSpec| -> Result<ProbeSpec, CaseError> {
            match v {
                None => Ok(default),
                Some(v) => {
                    let registry = Registry::global().map_err(|m| err(m.clone()))?;
                    ProbeSpec::parse(v.get_ref(), registry)
                        .map_err(|m| err(format!("{}: {m}", at(v.span()))))
                }
            }
        };
    let engine_spec = spec(&raw.engine, ProbeSpec::Engine)?;
    let reference_spec = spec(&raw.reference, ProbeSpec::ORACLE)?;
    let timeout = match &raw.timeout {
        Some(t) if !(t.get_ref().is_finite() && *t.get_ref() > 0.0) => {
            return Err(err(format!(
                "{}: timeout must be a number of seconds > 0",
                at(t.span())
            )))
        }
        t => t.as_ref().map(|t| *t.get_ref()),
    };

    let expect = match raw.expect {
        None => None,
        Some(e) => {
            let site = |v: &toml::Spanned<String>| {
                parse_site(v.get_ref()).map_err(|m| {
                    err(format!(
                        "{}: [expect]: {m}\nfix: a stage (blk.0.attn_q, result_output), tokenize or decode",
                        at(v.span())
                    ))
                })
            };
            let phase = match &e.phase {
                None => None,
                Some(p) => Some(ExpectPhase::parse(p.get_ref()).ok_or_else(|| {
                    err(format!(
                        "{}: [expect] phase {:?}\nfix: \"prompt\", \"decode\" or \"decode step N\"",
                        at(p.span()),
                        p.get_ref()
                    ))
                })?),
            };
            Some(Expect {
                first_divergence: site(&e.first_divergence)?,
                phase,
                position: e.position,
                first_inexact: e.first_inexact.as_ref().map(site).transpose()?,
            })
        }
    };

    let metamorphic = raw
        .metamorphic
        .map(|m| Metamorphic {
            causality: m.causality,
            prefill_vs_decode: m.prefill_vs_decode,
            determinism: m.determinism,
        })
        .unwrap_or_default();

    let answers = {
        let raw_answers = raw.answers.unwrap_or(RawAnswers {
            probes: None,
            min_margin: None,
        });
        // (spec, the presets it answers on: None = all)
        let probes: Vec<(ProbeSpec, Option<Vec<String>>)> = match raw_answers.probes {
            None => vec![(engine_spec.clone(), None), (reference_spec.clone(), None)],
            Some(entries) => {
                let mut out = Vec::new();
                for e in entries {
                    let place = at(e.span());
                    let (name, presets) = match e.into_inner() {
                        RawAnswerProbe::Spec(n) => (n, None),
                        RawAnswerProbe::On { probe, presets } => (probe, Some(presets)),
                    };
                    let s =
                        ProbeSpec::parse(&name, Registry::global().map_err(|m| err(m.clone()))?)
                            .map_err(|m| err(format!("{place}: [answers] probes: {m}")))?;
                    for p in presets.iter().flatten() {
                        if !models.iter().any(|(n, _, _)| *n == Some(p.as_str())) {
                            return Err(err(format!(
                                "{place}: [answers] probes: {name} on preset '{p}', which this case does not run\nfix: name presets from the case's model = {{ preset = [...] }}"
                            )));
                        }
                    }
                    out.push((s, presets));
                }
                out
            }
        };
        let min_margin = match raw_answers.min_margin {
            Some(m) if !(m.get_ref().is_finite() && *m.get_ref() >= 0.0) => {
                return Err(err(format!(
                    "{}: [answers] min_margin must be a number ≥ 0 (a logit difference)",
                    at(m.span())
                )))
            }
            m => m.map(|m| *m.get_ref()),
        };
        (probes, min_margin)
    };
    let (answer_probes, min_margin) = answers;
    // The probes that answer on one preset (None: a path model or a single preset).
    let answers_on = |preset: Option<&str>| Answers {
        probes: answer_probes
            .iter()
            .filter(|(_, on)| match (on, preset) {
                (Some(on), Some(p)) => on.iter().any(|x| x == p),
                _ => true,
            })
            .map(|(s, _)| s.clone())
            .collect(),
        min_margin,
    };

    let first = Case {
        id: match models[0].0 {
            Some(name) => format!("{id}@{name}"),
            None => id.clone(),
        },
        file: file.to_path_buf(),
        description: raw.description,
        model,
        unavailable,
        threads: raw.threads.unwrap_or(1),
        engine: engine_spec,
        reference: reference_spec,
        timeout,
        tokenizer: raw
            .tokenizer
            .as_deref()
            .map_or(TokenizerChoice::Gguf, TokenizerChoice::parse),
        fault: raw.fault,
        prompts,
        compare,
        stages,
        layers,
        layers_at,
        tolerance,
        tokenize,
        metamorphic,
        snapshot: raw.snapshot,
        exact: raw.exact,
        ignore: raw.ignore,
        expect,
        answers: answers_on(models[0].0),
    };
    let mut cases = vec![first];
    for (name, model, unavailable) in models.iter().skip(1).cloned() {
        let mut c = cases[0].clone();
        c.id = format!("{id}@{}", name.unwrap_or_default());
        c.model = model;
        c.unavailable = unavailable;
        c.answers = answers_on(name);
        cases.push(c);
    }
    Ok(cases)
}

/// Why a preset cannot be forged on this machine: a trained preset whose model has not been
/// trained (its cases are ignored with this, like a case whose model file is absent).
fn preset_unavailable(p: &engine::forge::Preset, seed: u64) -> Option<String> {
    use engine::forge::trained;
    let dir = trained::trained_dir(seed);
    (p.vocab == engine::forge::VocabKind::Trained && !dir.join("model.txt").is_file()).then(|| {
        format!(
            "the trained model (seed {seed}) is not at {}: scripts/setup.sh trains seed 1; `python3 trainer/train.py --seed {seed}` any other",
            dir.display()
        )
    })
}

impl Case {
    /// The probe on one side: A the engine under test, B the reference.
    pub fn spec(&self, side: crate::judge::Side) -> &ProbeSpec {
        match side {
            crate::judge::Side::A => &self.engine,
            crate::judge::Side::B => &self.reference,
        }
    }

    /// The watchdog for this case's out-of-process probes.
    pub fn watchdog(&self) -> probe::wire::Watchdog {
        self.timeout.map_or_else(
            probe::wire::Watchdog::default,
            probe::wire::Watchdog::scaled,
        )
    }
}

/// `smoke/tiny-i2s` for `<root>/smoke/tiny-i2s.toml`.
pub fn case_id(file: &Path, root: &Path) -> String {
    let rel = file.strip_prefix(root).unwrap_or(file);
    rel.with_extension("").to_string_lossy().replace('\\', "/")
}

/// Expands `~` and `$VAR`/`${VAR}` and resolves relative paths against the case file.
pub(crate) fn expand_path(path: &str, case_file: &Path) -> PathBuf {
    let mut out = String::new();
    let mut rest = path;
    if let Some(r) = rest.strip_prefix("~/") {
        out.push_str(&std::env::var("HOME").unwrap_or_default());
        out.push('/');
        rest = r;
    }
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let braced = chars.peek() == Some(&'{');
        if braced {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                chars.next();
            } else {
                break;
            }
        }
        if braced && chars.peek() == Some(&'}') {
            chars.next();
        }
        out.push_str(&std::env::var(&name).unwrap_or_default());
    }
    let p = PathBuf::from(out);
    if p.is_absolute() {
        p
    } else {
        case_file.parent().unwrap_or(Path::new(".")).join(p)
    }
}

/// Every `*.toml` under `root` except README-like files, sorted.
pub fn discover(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "toml") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn errors_carry_line_col_and_fix() {
        let dir = std::env::temp_dir().join(format!("bitprobe-case-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = write(
            &dir,
            "bad.toml",
            "model = { preset = \"tiny-i2s\" }\n\n[compare]\nstagez = [1]\n",
        );
        let e = load(&f, &dir).unwrap_err();
        assert!(e.message.contains("bad.toml:4:1"), "{}", e.message);
        assert!(e.message.contains("stagez"), "{}", e.message);
        assert!(e.message.contains("fix:"), "{}", e.message);

        let f = write(
            &dir,
            "stage.toml",
            "model = { preset = \"tiny-i2s\" }\n[compare]\nstages = [\"attn_qq\"]\n",
        );
        let e = load(&f, &dir).unwrap_err();
        assert!(
            e.message.contains("stage.toml:3:11") && e.message.contains("attn_q,"),
            "{}",
            e.message
        );

        let f = write(&dir, "preset.toml", "model = { preset = \"tiny-nope\" }\n");
        let e = load(&f, &dir).unwrap_err();
        assert!(
            e.message.contains("preset.toml:1:20") && e.message.contains("tiny-i2s"),
            "{}",
            e.message
        );

        let f = write(
            &dir,
            "type.toml",
            "model = { preset = \"tiny-i2s\" }\nthreads = \"two\"\n",
        );
        let e = load(&f, &dir).unwrap_err();
        assert!(e.message.contains("type.toml:2:11"), "{}", e.message);

        let f = write(
            &dir,
            "absent.toml",
            "model = { path = \"/nonexistent/m.gguf\" }\n",
        );
        let c = load(&f, &dir).unwrap();
        assert!(c.unavailable.unwrap().contains("/nonexistent/m.gguf"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn path_expansion() {
        std::env::set_var("BITPROBE_TEST_DIR", "/models");
        assert_eq!(
            expand_path("$BITPROBE_TEST_DIR/x.gguf", Path::new("/c/a.toml")),
            PathBuf::from("/models/x.gguf")
        );
        assert_eq!(
            expand_path("rel.gguf", Path::new("/c/a.toml")),
            PathBuf::from("/c/rel.gguf")
        );
    }
}
