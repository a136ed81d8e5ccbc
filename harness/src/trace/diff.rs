//! `trace-diff`: two trace folders judged like two live probes, A under test and B the
//! reference.

use super::read::{Trace, TracedTensor};
use crate::diff::{judge_stages, DiffReport};
use crate::judge::{self, Judged, Labels, Outcome, Phase, Site};
use crate::tolerance::{ToleranceOverrides, WeightType};
use probe::{Stage, StageTensor};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

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

/// What to compare, as a case would say it.
#[derive(Clone, Debug, Default)]
pub struct TraceDiffOptions {
    /// Only these stages (`None`: every stage B has).
    pub stages: Option<Vec<Stage>>,
    /// Only these layers of per-layer stages.
    pub layers: Option<Vec<u32>>,
    /// Compare the prompt pass only: decode steps are neither compared nor required.
    pub prompt_only: bool,
    pub tolerance: ToleranceOverrides,
}

impl TraceDiffOptions {
    fn selected(&self, t: &TracedTensor) -> bool {
        let stage_ok = self.stages.as_ref().is_none_or(|s| s.contains(&t.id.stage));
        let layer_ok = match (t.id.layer, &self.layers) {
            (Some(l), Some(ls)) => ls.contains(&l),
            _ => true,
        };
        stage_ok && layer_ok && !(self.prompt_only && t.phase != Phase::Prompt)
    }
}

/// The report of `bitprobe trace-diff A B`: the same [`DiffReport`] as `bitprobe diff`.
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

/// Decode steps a trace has: the largest step of a tensor, or of the manifest's list.
fn steps(t: &Trace) -> u32 {
    t.tensors
        .iter()
        .filter_map(|x| match x.phase {
            Phase::Decode(s) => Some(s),
            Phase::Prompt => None,
        })
        .max()
        .unwrap_or(0)
        .max(t.manifest.decode.len() as u32)
}

/// Compares trace `a` with reference `b`: judged in evaluation order, the first divergence
/// as `bitprobe diff` names it.
///
/// Decode steps are compared while both traces fed the same token. At the first step fed
/// differently the comparison stops: when the token that was fed there was chosen at a
/// position whose logits were judged a near-tie, that is said (and is no failure; A chose
/// B's runner-up where B barely preferred its first), otherwise it is the divergence. A
/// trace with fewer decode steps than the reference fails unless `prompt_only`.
pub fn trace_diff(a: &Trace, b: &Trace, opts: &TraceDiffOptions) -> TraceDiff {
    let mut warnings: Vec<String> = a
        .warnings
        .iter()
        .map(|w| format!("A: {w}"))
        .chain(b.warnings.iter().map(|w| format!("B: {w}")))
        .collect();
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
        .or(a.manifest.weight_type)
        .unwrap_or(WeightType::F32);
    let mode = if a.has_data() && b.has_data() {
        CompareMode::Values
    } else {
        CompareMode::HashOnly
    };
    let labels = Labels::new("A", "B");
    let mut judged: Vec<Judged> = Vec::new();

    let (steps_a, steps_b) = (steps(a), steps(b));
    let compared_steps = if opts.prompt_only {
        0
    } else {
        steps_a.min(steps_b)
    };
    if !opts.prompt_only && steps_a < steps_b {
        // Less than the reference has is not a pass: the KV-cache path would go untested.
        let first_missing = steps_a + 1;
        let pos = b
            .manifest
            .decode
            .iter()
            .find(|d| d.step == first_missing)
            .map_or(0, |d| d.position);
        judged.push(Judged {
            phase: Phase::Decode(first_missing),
            site: Site::Decode,
            position: pos,
            shape: Vec::new(),
            measure: judge::Measure::Absent {
                missing: judge::Side::A,
            },
            limit: judge::Limit::default(),
            outcome: Outcome::Fail(judge::Failure::Absent),
        });
        warnings.push(format!(
            "A has {steps_a} decode steps, B has {steps_b}: trace A with at least --decode {steps_b}, or pass --prompt-only to compare the prompt pass alone"
        ));
    } else if steps_a > steps_b && !opts.prompt_only {
        warnings.push(format!(
            "A has {steps_a} decode steps, B {steps_b}: only the first {steps_b} are compared"
        ));
    }
    // The first decode step fed different tokens: it and every later step are incomparable.
    let input_mismatch = a
        .manifest
        .decode
        .iter()
        .zip(&b.manifest.decode)
        .find(|(x, y)| {
            x.step <= compared_steps && (x.input != y.input || x.position != y.position)
        });
    let comparable = |p: Phase| match p {
        Phase::Prompt => true,
        Phase::Decode(s) => s <= compared_steps && input_mismatch.is_none_or(|(x, _)| s < x.step),
    };
    let mut by_phase: BTreeMap<Phase, (Vec<&TracedTensor>, Vec<&TracedTensor>)> = BTreeMap::new();
    for t in a
        .tensors
        .iter()
        .filter(|t| comparable(t.phase) && opts.selected(t))
    {
        by_phase.entry(t.phase).or_default().0.push(t);
    }
    for t in b
        .tensors
        .iter()
        .filter(|t| comparable(t.phase) && opts.selected(t))
    {
        by_phase.entry(t.phase).or_default().1.push(t);
    }
    let logits_tol = opts.tolerance.logits(weight_type);
    for (phase, (ta, tb)) in &by_phase {
        match mode {
            CompareMode::Values => {
                let (sa, sb) = (stage_tensors(ta), stage_tensors(tb));
                judged.extend(judge_stages(*phase, &sa, &sb, &opts.tolerance, weight_type));
                let out_a: HashMap<u32, &StageTensor> = sa
                    .iter()
                    .filter(|t| t.stage == Stage::ResultOutput)
                    .map(|t| (t.position, t))
                    .collect();
                for o in sb.iter().filter(|t| t.stage == Stage::ResultOutput) {
                    if let Some(e) = out_a
                        .get(&o.position)
                        .filter(|e| e.data.len() == o.data.len())
                    {
                        judged.push(judge::logits(
                            *phase, o.position, &e.data, &o.data, logits_tol,
                        ));
                    }
                }
            }
            CompareMode::HashOnly => judged.extend(hash_rows(*phase, ta, tb)),
        }
    }
    if let Some((x, y)) = input_mismatch {
        // The token fed at step k was chosen from the logits one position earlier.
        let chosen_at = x.position.min(y.position).saturating_sub(1);
        let chooser = judged
            .iter()
            .find(|j| j.site == Site::Logits && j.position == chosen_at);
        let mut j = judge::decode_inputs(x.step, x.position.min(y.position), x.input, y.input);
        if chooser.is_some_and(|c| c.outcome == Outcome::NearTie) {
            j.outcome = Outcome::NearTie;
            let margin = chooser
                .and_then(|c| c.measure.logits())
                .map_or(f64::NAN, |m| m.margin_oracle);
            warnings.push(format!(
                "decode step {} feeds token {} in A and {} in B: they were chosen at position {chosen_at}, a near-tie in B (top-2 margin {margin:.2e}), so steps from {} on are not compared. To compare them, teacher-force A: feed B's decode[].input tokens ({}) instead of A's own choices",
                x.step,
                x.input,
                y.input,
                x.step,
                b.manifest.decode.iter().map(|d| d.input.to_string()).collect::<Vec<_>>().join(", ")
            ));
        }
        judged.push(j);
    }
    let mut report = DiffReport::new(
        labels,
        a.manifest.tokens.clone(),
        b.manifest.tokens.clone(),
        weight_type,
        judged,
    );
    report.greedy_a = a.manifest.generated.clone();
    report.greedy_b = b.manifest.generated.clone();
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

/// Hash-only judgements: bit-exact or not; a tensor on one side only fails.
fn hash_rows(phase: Phase, a: &[&TracedTensor], b: &[&TracedTensor]) -> Vec<Judged> {
    let by_key: HashMap<_, &&TracedTensor> = a.iter().map(|t| (t.key(), t)).collect();
    let b_keys: std::collections::HashSet<_> = b.iter().map(|t| t.key()).collect();
    let mut out = Vec::new();
    for tb in b {
        let ta = by_key.get(&tb.key());
        out.push(judge::hash(
            phase,
            tb.id,
            tb.position,
            &tb.shape,
            ta.map(|t| (t.blake3.as_str(), t.rms)),
            Some((tb.blake3.as_str(), tb.rms)),
        ));
    }
    for ta in a.iter().filter(|t| !b_keys.contains(&t.key())) {
        out.push(judge::hash(
            phase,
            ta.id,
            ta.position,
            &ta.shape,
            Some((ta.blake3.as_str(), ta.rms)),
            None,
        ));
    }
    out
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
    let _ = writeln!(s, "tokens    A {:?}", r.tokens_a);
    let _ = writeln!(s, "          B {:?}", r.tokens_b);
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
            for row in r.stages().filter(|x| !(failures_only && x.pass())) {
                let mark = if row.pass() {
                    "yes".to_string()
                } else {
                    format!("no   {}", row.note(&r.labels).unwrap_or_default())
                };
                let _ = writeln!(
                    s,
                    "{:<14} {:>4}  {:<22} {mark:>10}",
                    row.phase.to_string(),
                    row.position,
                    row.site.to_string()
                );
            }
            let _ = writeln!(s);
        }
    }
    if !r.greedy_b.is_empty() || !r.greedy_a.is_empty() {
        let _ = writeln!(s, "greedy    A {:?}", r.greedy_a);
        let _ = writeln!(s, "          B {:?}", r.greedy_b);
    }
    let label = if d.mode == CompareMode::HashOnly {
        " (hash-only)"
    } else {
        ""
    };
    match r.first_divergence() {
        None if d.mode == CompareMode::HashOnly => {
            let _ = writeln!(s, "verdict   PASS (hash-only): every tensor is bit-exact");
        }
        None => {
            let _ = writeln!(s, "verdict   PASS: A and B agree within tolerance");
        }
        Some(dv) => {
            let _ = writeln!(s, "verdict   FIRST DIVERGENCE{label}: {}", r.describe(dv));
        }
    }
    s
}
