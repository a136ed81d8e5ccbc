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
    /// B's greedy tokens, and A's choices at the same (teacher-forced) steps — or, for an A
    /// that only generates, A's own free-running greedy tokens.
    pub greedy_a: Vec<Token>,
    pub greedy_b: Vec<Token>,
    /// What could not be compared, and why (a probe's capabilities): never a pass.
    pub not_compared: Vec<String>,
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
            not_compared: Vec::new(),
        }
    }

    /// The earliest failure, in evaluation order: where the verdict fails.
    pub fn first_failure(&self) -> Option<&Judged> {
        judge::first_failure(&self.judged)
    }

    /// Where the divergence starts: the earliest value on the path to the first failure that
    /// is clearly above a correct engine's noise floor ([`judge::origin`]); the first failure
    /// itself when nothing before it is. `None` when nothing fails.
    pub fn first_divergence(&self) -> Option<&Judged> {
        self.first_failure()
            .map(|f| judge::origin(&self.judged, f, self.weight_type))
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
        let line = |j: &Judged| {
            let detail = match j.site {
                Site::Stage(_) => j.summary(&self.labels),
                _ => j.note(&self.labels).unwrap_or_default(),
            };
            format!(
                "{} at {}, position {}: {detail}",
                j.site, j.phase, j.position
            )
        };
        match self.first_failure() {
            Some(f)
                if !std::ptr::eq(f, j)
                    && self.first_divergence().is_some_and(|o| std::ptr::eq(o, j)) =>
            {
                let floor = j.site.stage().map_or(f64::NAN, |id| {
                    crate::floors::floor(self.weight_type, id.stage, id.layer)
                });
                format!(
                    "{} — starts here, {:.1e}× a correct engine's worst there ({floor:.1e}); fails at {}",
                    line(j),
                    j.measure.nmse().unwrap_or(f64::NAN) / floor,
                    line(f)
                )
            }
            _ => line(j),
        }
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

/// The largest top-2 logit margin of the reference at which a different generated token is
/// a near-tie rather than a bug, when A gives tokens only (no logits to weigh the flip
/// against): the same measured margin as for logits ([`crate::tolerance::default_margin`]).
pub fn token_near_tie_margin(wt: WeightType) -> f64 {
    crate::tolerance::default_margin(wt)
}

/// Runs both probes and judges everything both can give. `a` is under test, `b` the
/// reference. Each level — tokens, stages, logits, decode steps — is compared where both
/// probes declare it; the rest is listed in `not_compared`. A probe that only generates gets
/// a token-level verdict: its free-running greedy tokens against B's, with B's margins.
pub fn run_diff(
    a: &mut dyn Probe,
    b: &mut dyn Probe,
    labels: Labels,
    req: &DiffRequest,
    tol: &ToleranceOverrides,
) -> probe::Result<DiffReport> {
    let (ca, cb) = (a.info().caps(), b.info().caps());
    let mut not_compared = Vec::new();
    let tokens_b = if cb.tokenize {
        req.prompt.tokenize(b)?
    } else if ca.tokenize {
        req.prompt.tokenize(a)?
    } else {
        return Err(probe::Error::InvalidRequest(format!(
            "neither {} nor {} can tokenize the prompt",
            labels.a, labels.b
        )));
    };
    let tokens_a = if ca.tokenize && cb.tokenize {
        req.prompt.tokenize(a)?
    } else {
        not_compared.push(format!(
            "tokenization: {} cannot tokenize; both were fed {}'s tokens",
            if ca.tokenize { &labels.b } else { &labels.a },
            if cb.tokenize { &labels.b } else { &labels.a },
        ));
        tokens_b.clone()
    };
    if tokens_b.is_empty() {
        return Err(probe::Error::InvalidRequest(format!(
            "prompt {:?} tokenizes to nothing",
            req.prompt.text
        )));
    }
    let weight_type = governing_type(&b.info().weight_types);
    let both = |s: &Stage| ca.stages.contains(s) && cb.stages.contains(s);
    let stages: Vec<Stage> = req.stages.iter().copied().filter(both).collect();
    let missing: Vec<&str> = req
        .stages
        .iter()
        .filter(|s| !both(s))
        .map(|s| s.name())
        .collect();
    let capture = Capture {
        stages: stages.clone(),
        layers: req.layers.clone(),
        positions: None,
    };

    let mut judged = Vec::new();
    if ca.forward && cb.forward {
        if !missing.is_empty() {
            not_compared.push(format!(
                "stages {}: {} gives {}, {} gives {}",
                missing.join(", "),
                labels.a,
                stage_list(&ca.stages),
                labels.b,
                stage_list(&cb.stages)
            ));
        }
        let (fa, fb) = (
            a.forward(&tokens_b, &capture)?,
            b.forward(&tokens_b, &capture)?,
        );
        judged.extend(judge_stages(
            Phase::Prompt,
            &fa.stages,
            &fb.stages,
            tol,
            weight_type,
        ));
        judged.extend(judge_all_logits(
            Phase::Prompt,
            0,
            &fa,
            &fb,
            tol,
            weight_type,
        ));
    }
    let no_forward = (!ca.forward || !cb.forward).then(|| {
        if ca.forward {
            labels.b.clone()
        } else {
            labels.a.clone()
        }
    });
    let mut prompt_rows_from_generation = false;

    let (mut greedy_a, mut greedy_b) = (Vec::new(), Vec::new());
    let steps = req.prompt.decode;
    let full = |c: &probe::Capabilities| c.generate && c.teacher_forced && c.decode_logits;
    if steps > 0 && full(&ca) && full(&cb) {
        let mut g = GenerateRequest::greedy(tokens_b.clone(), steps + 1);
        g.capture = if ca.decode_stages && cb.decode_stages {
            capture.clone()
        } else {
            not_compared.push("decode-step stages: a probe does not capture them".into());
            Capture::none()
        };
        g.keep_logits = true;
        let gb = b.generate(&g)?;
        g.forced = Some(gb.steps.iter().map(|s| s.input).collect());
        let ga = a.generate(&g)?;
        // Without a forward pass, the prompt rows come from the generation (every probe
        // that declares `decode_logits` returns them with `keep_logits`): judged first, so a
        // bug that shows at position 0 is named there, not at the first decode step.
        let n = tokens_b.len();
        if no_forward.is_some() && ga.prefill.n_tokens() == n && gb.prefill.n_tokens() == n {
            judged.extend(judge_all_logits(
                Phase::Prompt,
                0,
                &ga.prefill,
                &gb.prefill,
                tol,
                weight_type,
            ));
            prompt_rows_from_generation = true;
        }
        judged.extend(judge_generations(&ga, &gb, tol, weight_type));
        greedy_b = gb.tokens.clone();
        greedy_a = std::iter::once(ga.first)
            .chain(ga.steps.iter().map(|s| s.chosen))
            .collect();
    } else if steps > 0 && ca.generate && cb.generate && cb.decode_logits {
        // Token level: B with its logits at every step; A teacher-forced with B's tokens when
        // it can be (every step judged), else free-running (judged up to the first
        // difference, after which the two sequences part).
        let mut g = GenerateRequest::greedy(tokens_b.clone(), steps + 1);
        g.keep_logits = true;
        let gb = b.generate(&g)?;
        g.keep_logits = false;
        if ca.teacher_forced {
            g.forced = Some(gb.steps.iter().map(|s| s.input).collect());
        }
        let ga = a.generate(&g)?;
        judged.extend(judge_generated(
            &ga.tokens,
            &gb,
            tokens_b.len() as u32,
            token_near_tie_margin(weight_type),
            ca.teacher_forced,
        ));
        greedy_b = gb.tokens.clone();
        greedy_a = ga.tokens.clone();
        not_compared.push(if ca.teacher_forced {
            format!(
                "decode steps, stage by stage: {} gives no step logits or stages; its teacher-forced choices are judged instead, every step",
                labels.a
            )
        } else {
            format!(
                "decode steps, stage by stage: {} cannot be teacher-forced or give step logits; its free-running tokens are judged up to the first that differs",
                labels.a
            )
        });
    } else if steps > 0 {
        not_compared.push(format!(
            "generation: {} or {} cannot generate with logits",
            labels.a, labels.b
        ));
    }
    if let Some(who) = no_forward {
        not_compared.insert(
            0,
            if prompt_rows_from_generation {
                format!("stages: {who} gives no forward pass; the prompt's logits rows are judged from its generation")
            } else {
                format!("stages and logits: {who} gives no forward pass (tokens only)")
            },
        );
    }
    let mut report = DiffReport::new(labels, tokens_a, tokens_b, weight_type, judged);
    report.greedy_a = greedy_a;
    report.greedy_b = greedy_b;
    report.not_compared = not_compared;
    Ok(report)
}

/// Text of `ids` as `t` spells them (its `pieces`), EOS shown as `<EOS>`.
pub fn spell(t: &mut dyn Probe, ids: &[Token]) -> String {
    let eos = t.info().eos;
    let mut out = String::new();
    for &id in ids {
        if Some(id) == eos {
            out.push_str("<EOS>");
            continue;
        }
        match t.pieces(&[id]) {
            Ok(p) => out.push_str(&String::from_utf8_lossy(&p.concat())),
            Err(_) => out.push_str(&format!("<{id}>")),
        }
    }
    out
}

/// What `p` says, left to itself: greedy from `prompt` up to `max_tokens` or EOS, spelled by
/// `p` (or by `speller` when `p` has no tokenizer).
pub fn says(
    p: &mut dyn Probe,
    speller: Option<&mut dyn Probe>,
    prompt: &[Token],
    max_tokens: usize,
) -> probe::Result<String> {
    let mut g = GenerateRequest::greedy(prompt.to_vec(), max_tokens);
    g.stop_at_eos = true;
    let gen = p.generate(&g)?;
    Ok(match speller {
        Some(s) => spell(s, &gen.tokens),
        None => spell(p, &gen.tokens),
    })
}

fn stage_list(stages: &[Stage]) -> String {
    if stages.len() == Stage::ALL.len() {
        "all".into()
    } else if stages.is_empty() {
        "none".into()
    } else {
        stages
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A's generated tokens against B's, each judged against B's logits at the position that
/// chose it (token i is chosen at position `prompt_len − 1 + i`). Teacher-forced (`forced`:
/// A was fed B's tokens), every step is judged; free-running, up to the first difference,
/// after which the two follow different sequences.
pub fn judge_generated(
    a_tokens: &[Token],
    gb: &Generation,
    prompt_len: u32,
    near_tie_margin: f64,
    forced: bool,
) -> Vec<Judged> {
    let mut out = Vec::new();
    let n_vocab = gb.prefill.n_vocab as usize;
    // B's logits that chose token i: the prompt's last row, then each step's.
    let last = gb.prefill.n_tokens().saturating_sub(1);
    let rows = std::iter::once(gb.prefill.logits.get(last * n_vocab..(last + 1) * n_vocab))
        .chain(gb.steps.iter().map(|s| s.logits.as_deref()));
    for (i, ((&tb, ta), row)) in gb.tokens.iter().zip(a_tokens).zip(rows).enumerate() {
        let Some(row) = row else { break };
        let j = judge::generated(
            i as u32,
            (prompt_len + i as u32).saturating_sub(1),
            *ta,
            tb,
            row,
            near_tie_margin,
        );
        let differs = *ta != tb;
        out.push(j);
        if differs && !forced {
            break;
        }
    }
    out
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

/// The summary `bitprobe diff` prints by default: per stage the worst value over positions
/// (prompt, then decode steps), the logits, every near-tie excused, what could not be
/// compared, the greedy tokens, and the verdict with the first divergence.
pub fn render_summary(r: &DiffReport) -> String {
    use crate::judge::{Outcome, Worst};
    use std::fmt::Write;
    let mut s = String::new();
    let (la, lb) = (&r.labels.a, &r.labels.b);
    let show = |w: Option<Worst>| match w {
        None => "-".to_string(),
        Some(Worst::BitExact) => "bit-exact".to_string(),
        Some(Worst::Nmse(x)) => fmt_metric(x),
        Some(Worst::NonFinite) => "non-finite".to_string(),
    };
    let stages = judge::worst_by_stage(&r.judged);
    if !stages.is_empty() {
        let _ = writeln!(
            s,
            "{:<22} {:>11} {:>11} {:>8}  worst NMSE over positions",
            "stage", "prompt", "decode", "limit"
        );
        for st in &stages {
            let failing = r
                .stages()
                .any(|j| j.site == Site::Stage(st.stage) && !j.pass());
            let _ = writeln!(
                s,
                "{:<22} {:>11} {:>11} {:>8}{}",
                st.stage.to_string(),
                show(st.prompt),
                show(st.decode),
                st.nmse_limit.map_or("-".into(), |l| format!("{l:.0e}")),
                if failing { "  FAIL" } else { "" }
            );
        }
        let _ = writeln!(s);
    }
    let sum = judge::logits_summary(r.logits());
    if sum.positions > 0 {
        let _ = writeln!(
            s,
            "logits    top-1 agree at {}/{} positions, worst KL {}, worst NMSE {}",
            sum.top1_agree,
            sum.positions,
            fmt_metric(sum.worst_kl),
            fmt_metric(sum.worst_nmse)
        );
    }
    for j in r.judged.iter().filter(|j| j.outcome == Outcome::NearTie) {
        let _ = writeln!(
            s,
            "near-tie  {} pos {}: {}",
            j.phase,
            j.position,
            j.note(&r.labels).unwrap_or_default()
        );
    }
    for n in &r.not_compared {
        let _ = writeln!(s, "not compared  {n}");
    }
    if !r.greedy_b.is_empty() || !r.greedy_a.is_empty() {
        let _ = writeln!(s, "greedy    {lb} {:?}", r.greedy_b);
        let _ = writeln!(s, "          {la} {:?}", r.greedy_a);
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
