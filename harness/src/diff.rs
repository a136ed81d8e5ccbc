//! Two probes on one prompt: every captured (position, layer, stage) and every logits row
//! judged ([`crate::judge`]), and the **first divergence** in evaluation order named.
//!
//! A is the implementation under test, B the reference. Both are fed B's tokens, so stage
//! differences isolate the model; a tokenization difference is judged first, on its own
//! (`tokenize`). Decode steps are teacher-forced with B's greedy tokens so every step stays
//! comparable.

use crate::case::Prompt;
use crate::judge::{self, Judged, Labels, Phase, Site};
use crate::tolerance::{governing_type, ToleranceOverrides, WeightType};
use probe::{Capture, Forward, GenerateRequest, Generation, Probe, Stage, StageTensor, Token};
use serde::Serialize;
use std::collections::HashMap;

/// What to run.
#[derive(Clone, Debug)]
pub struct DiffRequest {
    pub prompt: Prompt,
    pub stages: Vec<Stage>,
    pub layers: Option<Vec<u32>>,
}

/// Everything two probes were judged on for one prompt.
#[derive(Clone, Debug, Serialize)]
pub struct DiffReport {
    pub labels: Labels,
    /// The prompt as A and as B tokenize it (both are fed B's).
    pub tokens_a: Vec<Token>,
    pub tokens_b: Vec<Token>,
    pub weight_type: WeightType,
    /// Every judgement, in evaluation order ([`Judged::key`]).
    pub judged: Vec<Judged>,
    /// B's greedy tokens, and A's choices at the same (teacher-forced) steps.
    pub greedy_a: Vec<Token>,
    pub greedy_b: Vec<Token>,
}

impl DiffReport {
    pub fn new(
        labels: Labels,
        tokens_a: Vec<Token>,
        tokens_b: Vec<Token>,
        weight_type: WeightType,
        mut judged: Vec<Judged>,
    ) -> DiffReport {
        judged.extend(judge::tokens(&tokens_a, &tokens_b));
        judged.sort_by_key(|j| j.key());
        DiffReport {
            labels,
            tokens_a,
            tokens_b,
            weight_type,
            judged,
            greedy_a: Vec::new(),
            greedy_b: Vec::new(),
        }
    }

    /// The earliest failure, in evaluation order.
    pub fn first_divergence(&self) -> Option<&Judged> {
        judge::first_failure(&self.judged)
    }

    pub fn pass(&self) -> bool {
        self.first_divergence().is_none()
    }

    /// The stage judgements.
    pub fn stages(&self) -> impl Iterator<Item = &Judged> {
        self.judged
            .iter()
            .filter(|j| matches!(j.site, Site::Stage(_)))
    }

    /// The logits judgements.
    pub fn logits(&self) -> impl Iterator<Item = &Judged> {
        self.judged.iter().filter(|j| j.site == Site::Logits)
    }

    /// The two stages evaluated just before `j` at the same phase and position.
    pub fn preceding(&self, j: &Judged) -> Vec<&Judged> {
        let mut before: Vec<&Judged> = self
            .stages()
            .filter(|r| {
                r.phase == j.phase && r.position == j.position && r.site.order() < j.site.order()
            })
            .collect();
        before.sort_by_key(|r| r.site.order());
        before.into_iter().rev().take(2).rev().collect()
    }

    /// `blk.0.attn_q at prompt, position 3: …`: a divergence as one line.
    pub fn describe(&self, j: &Judged) -> String {
        let detail = match j.site {
            Site::Stage(_) => j.summary(&self.labels),
            _ => j.note(&self.labels).unwrap_or_default(),
        };
        format!(
            "{} at {}, position {}: {detail}",
            j.site, j.phase, j.position
        )
    }

    /// The report as JSON, with the first divergence spelled out.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["pass"] = self.pass().into();
        v["first_divergence"] = match self.first_divergence() {
            None => serde_json::Value::Null,
            Some(j) => serde_json::json!({
                "stage": j.site.to_string(),
                "phase": j.phase.to_string(),
                "position": j.position,
                "detail": self.describe(j),
            }),
        };
        v
    }
}

/// Runs both probes and judges everything. `a` is under test, `b` the reference.
pub fn run_diff(
    a: &mut dyn Probe,
    b: &mut dyn Probe,
    labels: Labels,
    req: &DiffRequest,
    tol: &ToleranceOverrides,
) -> probe::Result<DiffReport> {
    let tokens_b = req.prompt.tokenize(b)?;
    let tokens_a = req.prompt.tokenize(a)?;
    if tokens_b.is_empty() {
        return Err(probe::Error::InvalidRequest(format!(
            "prompt {:?} tokenizes to nothing",
            req.prompt.text
        )));
    }
    let capture = Capture {
        stages: req.stages.clone(),
        layers: req.layers.clone(),
        positions: None,
    };
    let weight_type = governing_type(&b.info().weight_types);

    let (fa, fb) = (
        a.forward(&tokens_b, &capture)?,
        b.forward(&tokens_b, &capture)?,
    );
    let mut judged = judge_stages(Phase::Prompt, &fa.stages, &fb.stages, tol, weight_type);
    judged.extend(judge_all_logits(
        Phase::Prompt,
        0,
        &fa,
        &fb,
        tol,
        weight_type,
    ));

    let (mut greedy_a, mut greedy_b) = (Vec::new(), Vec::new());
    if req.prompt.decode > 0 {
        let mut g = GenerateRequest::greedy(tokens_b.clone(), req.prompt.decode + 1);
        g.capture = capture.clone();
        g.keep_logits = true;
        let gb = b.generate(&g)?;
        g.forced = Some(gb.steps.iter().map(|s| s.input).collect());
        let ga = a.generate(&g)?;
        judged.extend(judge_generations(&ga, &gb, tol, weight_type));
        greedy_b = gb.tokens.clone();
        greedy_a = std::iter::once(ga.first)
            .chain(ga.steps.iter().map(|s| s.chosen))
            .collect();
    }
    let mut report = DiffReport::new(labels, tokens_a, tokens_b, weight_type, judged);
    report.greedy_a = greedy_a;
    report.greedy_b = greedy_b;
    Ok(report)
}

/// Judges two captures of the same stages; a tensor on one side only fails.
pub fn judge_stages(
    phase: Phase,
    a: &[StageTensor],
    b: &[StageTensor],
    tol: &ToleranceOverrides,
    weight_type: WeightType,
) -> Vec<Judged> {
    let key = |t: &StageTensor| (t.stage, t.layer, t.position);
    let by_key: HashMap<_, &StageTensor> = a.iter().map(|t| (key(t), t)).collect();
    let mut seen = std::collections::HashSet::new();
    let limit = |t: &StageTensor| tol.resolve(t.stage, t.layer, weight_type).nmse;
    let mut out = Vec::with_capacity(b.len());
    for tb in b {
        seen.insert(key(tb));
        out.push(judge::tensor(
            phase,
            by_key.get(&key(tb)).copied(),
            Some(tb),
            limit(tb),
        ));
    }
    for ta in a.iter().filter(|t| !seen.contains(&key(t))) {
        out.push(judge::tensor(phase, Some(ta), None, limit(ta)));
    }
    out
}

fn judge_all_logits(
    phase: Phase,
    pos0: u32,
    a: &Forward,
    b: &Forward,
    tol: &ToleranceOverrides,
    wt: WeightType,
) -> Vec<Judged> {
    (0..b.n_tokens().min(a.n_tokens()))
        .map(|i| {
            judge::logits(
                phase,
                pos0 + i as u32,
                a.logits_at(i),
                b.logits_at(i),
                tol.logits(wt),
            )
        })
        .collect()
}

fn judge_generations(
    ga: &Generation,
    gb: &Generation,
    tol: &ToleranceOverrides,
    wt: WeightType,
) -> Vec<Judged> {
    let mut out = Vec::new();
    for (i, (sa, sb)) in ga.steps.iter().zip(&gb.steps).enumerate() {
        let phase = Phase::Decode(i as u32 + 1);
        out.extend(judge_stages(phase, &sa.stages, &sb.stages, tol, wt));
        if let (Some(la), Some(lb)) = (&sa.logits, &sb.logits) {
            out.push(judge::logits(phase, sb.position, la, lb, tol.logits(wt)));
        }
    }
    out
}

/// The row table (one line per compared tensor, in evaluation order) and the logits
/// summary, as `bitprobe diff` and `bitprobe trace-diff` print them.
pub fn render_rows_and_logits(r: &DiffReport, failures_only: bool) -> String {
    use crate::judge::{Measure, Outcome};
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<14} {:>4}  {:<22} {:>10} {:>10} {:>10}",
        "phase", "pos", "stage", "nmse", "cosine", "max|Δ|"
    );
    for row in r.stages().filter(|x| !(failures_only && x.pass())) {
        let (nmse, cos, max) = match row.measure.tensor() {
            Some(m) => (
                fmt_metric(m.nmse),
                format!("{:.6}", m.cosine),
                fmt_metric(m.max_abs),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let note = row
            .note(&r.labels)
            .map(|n| format!(": {n}"))
            .unwrap_or_default();
        let mark = match (&row.measure, &row.outcome) {
            (Measure::Tensor(m), Outcome::Pass) if m.bit_exact => "ok (bit-exact)".to_string(),
            (_, Outcome::Pass | Outcome::NearTie) => "ok".to_string(),
            (Measure::Tensor(_), Outcome::Fail(_)) => format!(
                "FAIL (limit {:.0e}){note}",
                row.limit.nmse.unwrap_or(f64::NAN)
            ),
            (_, Outcome::Fail(_)) => format!("FAIL{note}"),
        };
        let _ = writeln!(
            s,
            "{:<14} {:>4}  {:<22} {nmse:>10} {cos:>10} {max:>10}  {mark}",
            row.phase.to_string(),
            row.position,
            row.site.to_string()
        );
    }
    let _ = writeln!(s);
    let sum = judge::logits_summary(r.logits());
    let _ = writeln!(
        s,
        "logits    top-1 agree at {}/{} positions, worst KL {}",
        sum.top1_agree,
        sum.positions,
        fmt_metric(sum.worst_kl)
    );
    for l in r.logits().filter(|l| l.outcome != Outcome::Pass) {
        let _ = writeln!(
            s,
            "          {} pos {}: {}",
            l.phase,
            l.position,
            l.note(&r.labels)
                .unwrap_or_else(|| "outside tolerance".into())
        );
    }
    s
}

/// Rounds for display in tables.
pub fn fmt_metric(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else {
        format!("{x:.2e}")
    }
}
