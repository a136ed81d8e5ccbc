//! A sweep against an earlier one: what broke, what got worse, what got fixed.
//!
//! Results are matched by (model name, engine label) — a version-1 baseline's results are all
//! engine `engine` — and trials by name. Regressions (exit code 1):
//! - a model that ran before now errors out;
//! - a trial that passed, or did not exist, now fails;
//! - a trial's NMSE or KL got worse by more than a decade ([`DECADE`]); a bit-exact or zero
//!   value counts as [`FLOOR`], so leaving bit-exactness for anything above 1e-11 counts;
//! - the engine/reference speed ratio (prefill or decode) dropped by more than the allowed share
//!   (10% by default), in its median and in every repetition ([`speed_dropped`]).
//!
//! Fixed failures and recovered models are reported as improvements. Regressions are listed
//! by where they start ([`start_key`]): a model that no longer loads first, then phase, stage
//! in evaluation order and position, then speed.

use super::receipt::{
    Change, ChangeKind, Comparison, ModelResult, Receipt, Status, TrendPoint, TrendResult, Verdict,
};
use std::collections::HashMap;
use std::path::Path;

/// Runs a trend keeps, newest last.
pub const TREND_RUNS: usize = 30;

/// Worse by more than this factor is a regression.
pub const DECADE: f64 = 10.0;
/// What a zero (bit-exact) metric counts as when judging "worse by a decade".
pub const FLOOR: f64 = 1e-12;

/// Reads a receipt, naming the file and what to do when it is not one.
pub fn load(path: &Path) -> Result<Receipt, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("baseline {}: cannot read: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("baseline {}: not JSON: {e}", path.display()))?;
    let version = v.get("schema_version").and_then(|x| x.as_u64());
    if v.get("schema").and_then(|x| x.as_str()) != Some(super::receipt::SCHEMA) {
        return Err(format!(
            "baseline {}: not a bitprobe sweep receipt (no \"schema\": \"{}\")",
            path.display(),
            super::receipt::SCHEMA
        ));
    }
    if !version.is_some_and(|v| super::receipt::READABLE_VERSIONS.contains(&(v as u32))) {
        return Err(format!(
            "baseline {}: receipt schema version {} but this bitprobe reads versions {:?} (and writes {}); run with --baseline none once to start a new series",
            path.display(),
            version.map_or("?".to_string(), |x| x.to_string()),
            super::receipt::READABLE_VERSIONS,
            super::receipt::SCHEMA_VERSION
        ));
    }
    serde_json::from_value(v)
        .map_err(|e| format!("baseline {}: malformed receipt: {e}", path.display()))
}

fn worse(now: Option<f64>, before: Option<f64>, had_metric_before: bool) -> bool {
    if !had_metric_before {
        return false;
    }
    // `None` where a metric was expected means a non-finite value: the worst there is.
    match (now, before) {
        (None, Some(_)) => true,
        (Some(n), Some(b)) => n > b.max(FLOOR) * DECADE,
        _ => false,
    }
}

/// A speed ratio dropped: its median fell by more than `allowed`, and so did every
/// repetition — even this run's best is more than `allowed` below the baseline's worst. On a
/// busy machine single repetitions swing by tens of percent and whole runs shift by 10–15%
/// (measured: two sweeps minutes apart on tiny models, where a token takes well under a
/// millisecond), so a median alone would cry wolf.
fn speed_dropped(r: f64, range: [f64; 2], base: f64, base_range: [f64; 2], allowed: f64) -> bool {
    r < base * (1.0 - allowed) && range[1] < base_range[0] * (1.0 - allowed)
}

fn fmt(x: Option<f64>) -> String {
    x.map_or("non-finite".to_string(), |v| {
        if v == 0.0 {
            "0 (bit-exact)".to_string()
        } else {
            format!("{v:.3e}")
        }
    })
}

/// Regressions of one (model, engine) pair, counted by kind, with the first of them.
#[derive(Clone, Debug)]
pub struct Group<'a> {
    /// The pair as people read it: `tiny-i2s`, or `tiny-i2s · numpy-example` for an engine
    /// other than ours.
    pub model: String,
    pub model_name: &'a str,
    pub engine: &'a str,
    pub counts: Vec<(ChangeKind, usize)>,
    pub first: &'a Change,
}

impl Group<'_> {
    /// `new failure ×12, metric worse ×3`.
    pub fn counts_text(&self) -> String {
        self.counts
            .iter()
            .map(|(k, n)| format!("{} ×{n}", k.label()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Where to start reading: the pair's first divergence when it has one (the earliest
    /// stage in evaluation order), else the first regression listed.
    pub fn lead(&self, r: &super::receipt::Receipt) -> String {
        let fd = r
            .models
            .iter()
            .find(|m| m.name == self.model_name && m.engine == self.engine)
            .and_then(|m| m.first_divergence.as_ref());
        match fd {
            Some(d) if self.first.kind == ChangeKind::NewFailure => {
                format!(
                    "first divergence {} at {}, position {} ({} / {}): {}",
                    d.stage, d.phase, d.position, d.case, d.prompt, d.detail
                )
            }
            _ => format!(
                "{} {}: {}",
                self.first.kind.label(),
                self.first.what,
                self.first.detail
            ),
        }
    }
}

/// The regressions grouped by (model, engine), in the order they are listed.
pub fn groups(changes: &[Change]) -> Vec<Group<'_>> {
    let mut out: Vec<Group> = Vec::new();
    for c in changes {
        match out
            .iter_mut()
            .find(|g| g.model_name == c.model && g.engine == c.engine)
        {
            Some(g) => match g.counts.iter_mut().find(|(k, _)| *k == c.kind) {
                Some((_, n)) => *n += 1,
                None => g.counts.push((c.kind, 1)),
            },
            None => out.push(Group {
                model: c.display_name(),
                model_name: &c.model,
                engine: &c.engine,
                counts: vec![(c.kind, 1)],
                first: c,
            }),
        }
    }
    out
}

/// Where a regression starts, for listing: a model that no longer loads first, then located
/// changes by phase, stage (evaluation order) and position, then unlocated ones, then speed.
pub fn start_key(c: &Change) -> (u8, super::receipt::LocationOrder) {
    match (c.kind, &c.at) {
        (ChangeKind::ModelError, _) => (0, Default::default()),
        (ChangeKind::SpeedDrop, _) => (3, Default::default()),
        (_, Some(at)) => (1, at.order()),
        (_, None) => (2, Default::default()),
    }
}

/// Compares `now` with `base`; `speed_drop` is the allowed relative drop of a speed ratio.
pub fn compare(now: &Receipt, base: &Receipt, base_path: &Path, speed_drop: f64) -> Comparison {
    let mut regressions = Vec::new();
    let mut improvements = Vec::new();
    let base_models: HashMap<(&str, &str), &ModelResult> = base
        .models
        .iter()
        .map(|m| ((m.name.as_str(), m.engine.as_str()), m))
        .collect();
    for m in &now.models {
        let Some(b) = base_models.get(&(m.name.as_str(), m.engine.as_str())) else {
            continue;
        };
        let change = |kind, what: String, detail: String| Change {
            kind,
            model: m.name.clone(),
            engine: m.engine.clone(),
            what,
            detail,
            at: None,
        };
        let ran = |s: Status| matches!(s, Status::Pass | Status::Fail);
        if m.status == Status::Error && ran(b.status) {
            regressions.push(change(
                ChangeKind::ModelError,
                "model".into(),
                m.error.clone().unwrap_or_default(),
            ));
            continue;
        }
        if ran(m.status) && b.status == Status::Error {
            improvements.push(change(
                ChangeKind::ModelRecovered,
                "model".into(),
                format!("was: {}", b.error.clone().unwrap_or_default()),
            ));
        }
        if !ran(m.status) || !ran(b.status) {
            continue;
        }
        let before: HashMap<&str, &super::receipt::TrialResult> = b
            .cases
            .iter()
            .flat_map(|c| &c.trials)
            .map(|t| (t.name.as_str(), t))
            .collect();
        for t in m.cases.iter().flat_map(|c| &c.trials) {
            let prev = before.get(t.name.as_str());
            let first_line = |s: &Option<String>| {
                s.as_deref()
                    .and_then(|x| x.lines().next())
                    .unwrap_or("")
                    .to_string()
            };
            let new_failure =
                t.verdict == Verdict::Fail && prev.is_none_or(|p| p.verdict == Verdict::Pass);
            let located = |mut c: Change| {
                c.at = t.at.clone();
                c
            };
            match (t.verdict, prev.map(|p| p.verdict)) {
                (Verdict::Fail, Some(Verdict::Pass) | None) => regressions.push(located(change(
                    ChangeKind::NewFailure,
                    t.name.clone(),
                    format!(
                        "{}{}",
                        if prev.is_none() { "(new trial) " } else { "" },
                        first_line(&t.message)
                    ),
                ))),
                (Verdict::Pass, Some(Verdict::Fail)) => improvements.push(located(change(
                    ChangeKind::Fixed,
                    t.name.clone(),
                    format!("was: {}", first_line(&prev.unwrap().message)),
                ))),
                _ => {}
            }
            let Some(p) = prev else { continue };
            // A new failure is reported once, as such; metrics are judged where both ran.
            if new_failure || t.verdict == Verdict::Ignored || p.verdict == Verdict::Ignored {
                continue;
            }
            if worse(t.nmse, p.nmse, p.nmse.is_some() || p.bit_exact.is_some()) {
                regressions.push(located(change(
                    ChangeKind::MetricWorse,
                    t.name.clone(),
                    format!("NMSE {} → {}", fmt(p.nmse), fmt(t.nmse)),
                )));
            } else if worse(t.kl, p.kl, p.kl.is_some()) {
                regressions.push(located(change(
                    ChangeKind::MetricWorse,
                    t.name.clone(),
                    format!("KL {} → {}", fmt(p.kl), fmt(t.kl)),
                )));
            }
        }
        if let (Some(s), Some(bs)) = (&m.speed, &b.speed) {
            let pairs = [
                (
                    "prefill",
                    s.prefill_ratio,
                    s.prefill_ratio_range,
                    bs.prefill_ratio,
                    bs.prefill_ratio_range,
                ),
                (
                    "decode",
                    s.decode_ratio,
                    s.decode_ratio_range,
                    bs.decode_ratio,
                    bs.decode_ratio_range,
                ),
            ];
            for (what, r, range, br, brange) in pairs {
                if speed_dropped(r, range, br, brange, speed_drop) {
                    regressions.push(change(
                        ChangeKind::SpeedDrop,
                        format!("{what} speed ratio"),
                        format!(
                            "{}/{} {br:.2}× ({:.2}–{:.2}) → {r:.2}× ({:.2}–{:.2}): {:+.0}%, allowed −{:.0}%",
                            m.engine,
                            m.reference,
                            brange[0],
                            brange[1],
                            range[0],
                            range[1],
                            (r / br - 1.0) * 100.0,
                            speed_drop * 100.0
                        ),
                    ));
                }
            }
        }
    }
    // By where they start (a stable sort: equal places keep the order they were found in,
    // which is results as run, then trials as expanded).
    regressions.sort_by_key(start_key);
    Comparison {
        baseline: base_path.display().to_string(),
        baseline_started: base.started.clone(),
        baseline_git_revision: base.bitprobe.git_revision.clone(),
        regressions,
        improvements,
    }
}

/// What a receipt says for the trend.
pub fn trend_point(r: &Receipt, path: &Path) -> TrendPoint {
    TrendPoint {
        started: r.started.clone(),
        receipt: path.display().to_string(),
        git_revision: r.bitprobe.git_revision.clone(),
        results: r.models.iter().map(TrendResult::of).collect(),
    }
}

/// The trend over the runs in `dir`: every `*/receipt.json` this bitprobe can read (`skip`'s
/// aside), oldest first by start time, the newest [`TREND_RUNS`]. Unreadable files are left
/// out, never an error.
pub fn trend_in(dir: &Path, skip: Option<&Path>) -> Vec<TrendPoint> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let skip = skip.and_then(|s| s.canonicalize().ok());
    let mut points: Vec<TrendPoint> = Vec::new();
    for e in entries.flatten() {
        let run = e.path();
        if !run.is_dir() || (skip.is_some() && run.canonicalize().ok() == skip) {
            continue;
        }
        let file = run.join("receipt.json");
        if let Ok(r) = load(&file) {
            points.push(trend_point(&r, &file));
        }
    }
    points.sort_by(|a, b| a.started.cmp(&b.started).then(a.receipt.cmp(&b.receipt)));
    let extra = points.len().saturating_sub(TREND_RUNS);
    points.drain(..extra);
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decade_rule() {
        assert!(!worse(Some(0.0), Some(0.0), true));
        assert!(!worse(Some(5e-12), Some(0.0), true));
        assert!(worse(Some(2e-11), Some(0.0), true));
        assert!(!worse(Some(9e-3), Some(1e-3), true));
        assert!(worse(Some(1.1e-2), Some(1e-3), true));
        assert!(worse(None, Some(1e-3), true));
        assert!(!worse(Some(1.0), None, false));
    }

    #[test]
    fn speed_drop_needs_median_and_spread() {
        // 20% down, the best now 10.5% under the worst before: a drop.
        assert!(speed_dropped(0.8, [0.75, 0.85], 1.0, [0.95, 1.05], 0.1));
        // 20% down, but the runs' repetitions overlap: noise.
        assert!(!speed_dropped(0.8, [0.6, 0.97], 1.0, [0.95, 1.05], 0.1));
        // 14% down, ranges apart but by less than the allowance (measured between two runs).
        assert!(!speed_dropped(0.87, [0.86, 0.88], 1.01, [0.93, 1.11], 0.1));
        // 5% down, ranges apart: inside the allowance.
        assert!(!speed_dropped(0.95, [0.94, 0.96], 1.0, [0.99, 1.01], 0.1));
    }
}
