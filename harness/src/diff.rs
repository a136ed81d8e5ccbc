//! Engine against oracle on one prompt: every captured (position, layer, stage) compared, and
//! the **first divergence** in evaluation order named.
//!
//! Both probes are fed the oracle's tokens, so stage differences isolate the model; a
//! tokenization difference is reported first, as its own divergence (`tokenize`). Decode
//! steps are teacher-forced with the oracle's greedy tokens so every step stays comparable.

use crate::compare::{compare, compare_logits, LogitsMetrics, TensorMetrics};
use crate::tolerance::{governing_type, ToleranceOverrides};
use probe::{
    Capture, Forward, GenerateRequest, Generation, Probe, Stage, StageId, StageTensor, Token,
};
use serde::Serialize;
use std::collections::HashMap;

/// What to run.
#[derive(Clone, Debug)]
pub struct DiffRequest {
    pub text: String,
    pub add_bos: bool,
    pub parse_special: bool,
    pub chat: bool,
    /// Decode steps after the prompt (teacher-forced with the oracle's greedy tokens).
    pub decode: usize,
    pub stages: Vec<Stage>,
    pub layers: Option<Vec<u32>>,
}

/// When a row was computed: in the prompt pass, or at decode step `n` (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Prompt,
    Decode(u32),
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Phase::Prompt => f.write_str("prompt"),
            Phase::Decode(n) => write!(f, "decode step {n}"),
        }
    }
}

/// One compared tensor.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub phase: Phase,
    pub position: u32,
    #[serde(serialize_with = "ser_display")]
    pub stage: StageId,
    pub shape: Vec<usize>,
    pub metrics: Option<TensorMetrics>,
    pub nmse_limit: f64,
    pub pass: bool,
    /// Why the row failed (or could not be compared).
    pub note: Option<String>,
}

fn ser_display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl Row {
    /// Sort key: phase, then stage in evaluation order, then position.
    pub fn key(&self) -> (Phase, (u32, usize), u32) {
        (self.phase, self.stage.eval_key(), self.position)
    }

    pub fn summary(&self) -> String {
        match &self.metrics {
            Some(m) => format!(
                "{} pos {} {}: nmse {:.3e} (limit {:.0e}), cos {:.6}, max|Δ| {:.3e}{}{}",
                self.phase,
                self.position,
                self.stage,
                m.nmse,
                self.nmse_limit,
                m.cosine,
                m.max_abs,
                if m.bit_exact { ", bit-exact" } else { "" },
                self.note
                    .as_ref()
                    .map(|n| format!(" — {n}"))
                    .unwrap_or_default()
            ),
            None => format!(
                "{} pos {} {}: {}",
                self.phase,
                self.position,
                self.stage,
                self.note.as_deref().unwrap_or("")
            ),
        }
    }
}

/// Logits compared at one position.
#[derive(Clone, Debug, Serialize)]
pub struct LogitsRow {
    pub phase: Phase,
    pub position: u32,
    pub metrics: LogitsMetrics,
    pub kl_limit: f64,
    pub pass: bool,
    pub note: Option<String>,
}

/// Where engine and oracle first part.
#[derive(Clone, Debug, Serialize)]
pub struct Divergence {
    pub phase: Phase,
    pub position: u32,
    /// `blk.3.attn_q`, `result_output`, `tokenize`, or `decode` (a greedy token differs).
    pub stage: String,
    pub detail: String,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at {}, position {}: {}",
            self.stage, self.phase, self.position, self.detail
        )
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct DiffReport {
    pub engine_tokens: Vec<Token>,
    pub oracle_tokens: Vec<Token>,
    pub weight_type: String,
    pub rows: Vec<Row>,
    pub logits: Vec<LogitsRow>,
    /// Oracle greedy tokens and the engine's choices at the same (teacher-forced) steps.
    pub oracle_greedy: Vec<Token>,
    pub engine_greedy: Vec<Token>,
    pub first_divergence: Option<Divergence>,
}

impl DiffReport {
    pub fn pass(&self) -> bool {
        self.first_divergence.is_none()
    }

    /// The two rows evaluated just before `row` at the same phase and position.
    pub fn preceding(&self, row: &Row) -> Vec<&Row> {
        let mut before: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| {
                r.phase == row.phase
                    && r.position == row.position
                    && r.stage.eval_key() < row.stage.eval_key()
            })
            .collect();
        before.sort_by_key(|r| r.stage.eval_key());
        before.into_iter().rev().take(2).rev().collect()
    }

    pub fn first_failing_row(&self) -> Option<&Row> {
        self.rows.iter().filter(|r| !r.pass).min_by_key(|r| r.key())
    }
}

/// Runs both probes and compares everything.
pub fn run_diff(
    engine: &mut dyn Probe,
    oracle: &mut dyn Probe,
    req: &DiffRequest,
    tol: &ToleranceOverrides,
) -> probe::Result<DiffReport> {
    let (text, add_bos, parse_special) = if req.chat {
        (
            engine::tokenizer::llama3_chat(&[("user", req.text.as_str())], true),
            false,
            true,
        )
    } else {
        (req.text.clone(), req.add_bos, req.parse_special)
    };
    let oracle_tokens = oracle.tokenize(&text, add_bos, parse_special)?;
    let engine_tokens = engine.tokenize(&text, add_bos, parse_special)?;
    if oracle_tokens.is_empty() {
        return Err(probe::Error::InvalidRequest(format!(
            "prompt {:?} tokenizes to nothing",
            req.text
        )));
    }
    let capture = Capture {
        stages: req.stages.clone(),
        layers: req.layers.clone(),
        positions: None,
    };
    let weight_type = governing_type(&oracle.info().weight_types);

    let (ef, of) = (
        engine.forward(&oracle_tokens, &capture)?,
        oracle.forward(&oracle_tokens, &capture)?,
    );
    let mut rows = compare_stages(Phase::Prompt, &ef.stages, &of.stages, tol, &weight_type);
    let mut logits = compare_all_logits(Phase::Prompt, 0, &ef, &of, tol, &weight_type);

    let (mut oracle_greedy, mut engine_greedy) = (Vec::new(), Vec::new());
    if req.decode > 0 {
        let mut g = GenerateRequest::greedy(oracle_tokens.clone(), req.decode + 1);
        g.capture = capture.clone();
        g.keep_logits = true;
        let og = oracle.generate(&g)?;
        g.forced = Some(og.steps.iter().map(|s| s.input).collect());
        let eg = engine.generate(&g)?;
        compare_generations(&eg, &og, tol, &weight_type, &mut rows, &mut logits);
        oracle_greedy = og.tokens.clone();
        engine_greedy = std::iter::once(eg.first)
            .chain(eg.steps.iter().map(|s| s.chosen))
            .collect();
    }
    rows.sort_by_key(|r| r.key());
    let mut report = DiffReport {
        engine_tokens,
        oracle_tokens,
        weight_type,
        rows,
        logits,
        oracle_greedy,
        engine_greedy,
        first_divergence: None,
    };
    report.first_divergence = first_divergence(&report);
    Ok(report)
}

/// Compares two captures of the same stages; rows missing on either side fail.
pub fn compare_stages(
    phase: Phase,
    engine: &[StageTensor],
    oracle: &[StageTensor],
    tol: &ToleranceOverrides,
    weight_type: &str,
) -> Vec<Row> {
    let key = |t: &StageTensor| (t.stage, t.layer, t.position);
    let by_key: HashMap<_, &StageTensor> = engine.iter().map(|t| (key(t), t)).collect();
    let mut rows = Vec::with_capacity(oracle.len());
    let mut seen = std::collections::HashSet::new();
    for o in oracle {
        seen.insert(key(o));
        let limit = tol.resolve(o.stage, o.layer, weight_type).nmse;
        let mut row = Row {
            phase,
            position: o.position,
            stage: o.id(),
            shape: o.shape.clone(),
            metrics: None,
            nmse_limit: limit,
            pass: false,
            note: None,
        };
        match by_key.get(&key(o)) {
            None => row.note = Some("the engine did not produce this stage".into()),
            Some(e) if e.data.len() != o.data.len() => {
                row.note = Some(format!(
                    "shape differs: engine {:?}, oracle {:?}",
                    e.shape, o.shape
                ))
            }
            Some(e) => {
                let m = compare(&e.data, &o.data);
                if let Some(bad) = m.non_finite_failure() {
                    row.note = Some(bad);
                } else {
                    row.pass = m.nmse <= limit;
                }
                row.metrics = Some(m);
            }
        }
        rows.push(row);
    }
    for e in engine.iter().filter(|e| !seen.contains(&key(e))) {
        rows.push(Row {
            phase,
            position: e.position,
            stage: e.id(),
            shape: e.shape.clone(),
            metrics: None,
            nmse_limit: 0.0,
            pass: false,
            note: Some("the oracle did not produce this stage".into()),
        });
    }
    rows
}

/// Engine against oracle logits at one position, judged against the logits tolerance (also
/// used by `trace-diff` on two traces' `result_output` tensors).
pub fn logits_row(
    phase: Phase,
    position: u32,
    e: &[f32],
    o: &[f32],
    tol: &ToleranceOverrides,
    wt: &str,
) -> LogitsRow {
    let m = compare_logits(e, o);
    let lt = tol.logits(wt);
    let mut note = None;
    let mut pass = m.kl <= lt.kl && m.nmse <= lt.nmse;
    if !m.top1_agree() {
        // A near-tie: the oracle's top-2 margin is small enough that the measured logit
        // difference (max|Δ|) explains the flip. Passes only while KL and NMSE do; reported.
        let tie = m.margin_oracle <= 2.0 * m.max_abs;
        pass &= tie;
        note =
            Some(format!(
            "top-1 differs: engine {} (margin {:.2e}), oracle {} (margin {:.2e}, max|Δ| {:.2e}){}",
            m.top1_engine,
            m.margin_engine,
            m.top1_oracle,
            m.margin_oracle,
            m.max_abs,
            if tie { " — a near-tie" } else { " — not a near-tie" }
        ));
    } else if !pass {
        note = Some(format!(
            "KL {:.3e} (limit {:.0e}), nmse {:.3e} (limit {:.0e})",
            m.kl, lt.kl, m.nmse, lt.nmse
        ));
    }
    if e.iter().chain(o).any(|x| x.is_nan()) {
        pass = false;
        note = Some("NaN in logits".into());
    }
    LogitsRow {
        phase,
        position,
        metrics: m,
        kl_limit: lt.kl,
        pass,
        note,
    }
}

fn compare_all_logits(
    phase: Phase,
    pos0: u32,
    e: &Forward,
    o: &Forward,
    tol: &ToleranceOverrides,
    wt: &str,
) -> Vec<LogitsRow> {
    (0..o.n_tokens().min(e.n_tokens()))
        .map(|i| {
            logits_row(
                phase,
                pos0 + i as u32,
                e.logits_at(i),
                o.logits_at(i),
                tol,
                wt,
            )
        })
        .collect()
}

fn compare_generations(
    eg: &Generation,
    og: &Generation,
    tol: &ToleranceOverrides,
    wt: &str,
    rows: &mut Vec<Row>,
    logits: &mut Vec<LogitsRow>,
) {
    for (i, (es, os)) in eg.steps.iter().zip(&og.steps).enumerate() {
        let phase = Phase::Decode(i as u32 + 1);
        rows.extend(compare_stages(phase, &es.stages, &os.stages, tol, wt));
        if let (Some(el), Some(ol)) = (&es.logits, &os.logits) {
            logits.push(logits_row(phase, os.position, el, ol, tol, wt));
        }
    }
}

/// The earliest failure: tokens, then each phase in order — stages in evaluation order
/// (lowest position first), then that phase's logits.
pub fn first_divergence(r: &DiffReport) -> Option<Divergence> {
    if r.engine_tokens != r.oracle_tokens {
        let i = r
            .engine_tokens
            .iter()
            .zip(&r.oracle_tokens)
            .take_while(|(a, b)| a == b)
            .count();
        return Some(Divergence {
            phase: Phase::Prompt,
            position: i as u32,
            stage: "tokenize".into(),
            detail: format!(
                "engine tokens {:?} vs oracle {:?} (from index {i})",
                &r.engine_tokens[i..r.engine_tokens.len().min(i + 4)],
                &r.oracle_tokens[i..r.oracle_tokens.len().min(i + 4)]
            ),
        });
    }
    let mut phases: Vec<Phase> = r
        .rows
        .iter()
        .map(|x| x.phase)
        .chain(r.logits.iter().map(|x| x.phase))
        .collect();
    phases.sort();
    phases.dedup();
    for phase in phases {
        if let Some(row) = r
            .rows
            .iter()
            .filter(|x| x.phase == phase && !x.pass)
            .min_by_key(|x| x.key())
        {
            return Some(Divergence {
                phase,
                position: row.position,
                stage: row.stage.to_string(),
                detail: row.summary(),
            });
        }
        if let Some(l) = r
            .logits
            .iter()
            .filter(|x| x.phase == phase && !x.pass)
            .min_by_key(|x| x.position)
        {
            return Some(Divergence {
                phase,
                position: l.position,
                stage: "result_output".into(),
                detail: l.note.clone().unwrap_or_default(),
            });
        }
    }
    None
}

/// The row table (one line per compared tensor, in evaluation order) and the logits
/// summary, as `bitprobe diff` and `bitprobe trace-diff` print them.
pub fn render_rows_and_logits(r: &DiffReport, failures_only: bool) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<14} {:>4}  {:<22} {:>10} {:>10} {:>10}",
        "phase", "pos", "stage", "nmse", "cosine", "max|Δ|"
    );
    for row in r.rows.iter().filter(|x| !(failures_only && x.pass)) {
        let (nmse, cos, max) = match &row.metrics {
            Some(m) => (
                fmt_metric(m.nmse),
                format!("{:.6}", m.cosine),
                fmt_metric(m.max_abs),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let note = row
            .note
            .as_ref()
            .map(|n| format!(": {n}"))
            .unwrap_or_default();
        let mark = match (&row.metrics, row.pass) {
            (Some(m), true) if m.bit_exact => "ok (bit-exact)".to_string(),
            (_, true) => "ok".to_string(),
            (Some(_), false) => format!("FAIL (limit {:.0e}){note}", row.nmse_limit),
            (None, false) => format!("FAIL{note}"),
        };
        let _ = writeln!(
            s,
            "{:<14} {:>4}  {:<22} {nmse:>10} {cos:>10} {max:>10}  {mark}",
            row.phase.to_string(),
            row.position,
            row.stage.to_string()
        );
    }
    let _ = writeln!(s);
    let agree = r.logits.iter().filter(|l| l.metrics.top1_agree()).count();
    let worst_kl = r.logits.iter().map(|l| l.metrics.kl).fold(0.0, f64::max);
    let _ = writeln!(
        s,
        "logits    top-1 agree at {agree}/{} positions, worst KL {}",
        r.logits.len(),
        fmt_metric(worst_kl)
    );
    for l in r.logits.iter().filter(|l| !l.pass) {
        let _ = writeln!(
            s,
            "          {} pos {}: {}",
            l.phase,
            l.position,
            l.note.as_deref().unwrap_or("outside tolerance")
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
