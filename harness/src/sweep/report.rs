//! `report.md` and `report.html` from a receipt: regressions first (by where they start),
//! then the implementations × models matrix, the standing failures (every failing result,
//! new or old, with how long it has failed), fixed ones, the trend over the kept runs, a
//! summary table (result × verdict × first divergence × speed ratio), and per-result details.
//!
//! The HTML is one self-contained file: inline CSS, inline SVG charts, no script, no font,
//! no image or link that leaves the file, so it opens the same offline and in a mail
//! attachment. Each result's chart plots the worst engine-vs-reference NMSE per stage in
//! evaluation order on a log scale, prompt and decode, against the tolerance in force; the
//! trend draws one sparkline per result and metric.

use super::receipt::*;
use std::fmt::Write as _;

/// `1 model`, `2 models`, `0 regressions`.
pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else if word.ends_with('s') || word.ends_with('x') {
        format!("{n} {word}es")
    } else {
        format!("{n} {word}s")
    }
}

/// A duration people read: `0.2 s`, `4.7 s`, `42 s`, `3 min 05 s`, `1 h 02 min`.
pub fn seconds(x: f64) -> String {
    if !x.is_finite() || x < 0.0 {
        return "? s".into();
    }
    if x < 10.0 {
        format!("{x:.1} s")
    } else if x < 100.0 {
        format!("{x:.0} s")
    } else if x < 3600.0 {
        let t = x.round() as u64;
        format!("{} min {:02} s", t / 60, t % 60)
    } else {
        let t = (x / 60.0).round() as u64;
        format!("{} h {:02} min", t / 60, t % 60)
    }
}

/// Regressions listed one by one per result in the reports (the receipt has them all).
const MAX_LISTED: usize = 20;
/// Trial names listed per group of failures with one cause.
const MAX_GROUP_TRIALS: usize = 50;

fn listed(changes: &[Change]) -> Vec<Change> {
    let mut seen: std::collections::HashMap<(&str, &str), usize> = Default::default();
    changes
        .iter()
        .filter(|c| {
            let n = seen
                .entry((c.model.as_str(), c.engine.as_str()))
                .or_default();
            *n += 1;
            *n <= MAX_LISTED
        })
        .cloned()
        .collect()
}

fn sci(x: Option<f64>) -> String {
    match x {
        None => "–".into(),
        Some(0.0) => "0".into(),
        Some(v) => format!("{v:.2e}"),
    }
}

fn ratio(x: f64) -> String {
    format!("{x:.2}×")
}

fn worst_nmse(m: &ModelResult) -> Option<f64> {
    m.stages
        .iter()
        .flat_map(|s| [s.worst_nmse_prompt, s.worst_nmse_decode])
        .flatten()
        .fold(None, |a, x| Some(a.map_or(x, |a: f64| a.max(x))))
}

fn exact_label(m: &ModelResult) -> String {
    if m.stages.is_empty() {
        return "–".into();
    }
    if m.stages.iter().all(|s| s.bit_exact) {
        "bit-exact".into()
    } else if m.stages.iter().any(|s| s.non_finite) {
        "non-finite".into()
    } else {
        sci(worst_nmse(m))
    }
}

fn divergence_label(m: &ModelResult) -> String {
    match (&m.first_divergence, m.status) {
        (Some(d), _) => format!(
            "{} @ {} pos {} ({} / {})",
            d.stage, d.phase, d.position, d.case, d.prompt
        ),
        (None, Status::Error | Status::Skipped) => m.error.clone().unwrap_or_default(),
        (None, Status::Fail) => m
            .first_failure
            .clone()
            .unwrap_or_else(|| "a trial failed".into()),
        (None, Status::Pass) => "none".into(),
    }
}

fn speed_cells(m: &ModelResult) -> (String, String) {
    match &m.speed {
        Some(s) => (ratio(s.prefill_ratio), ratio(s.decode_ratio)),
        None => ("–".into(), "–".into()),
    }
}

/// `3 models: 1 pass, 0 fail, 1 error, 1 skipped · 24 trials, 0 failed · 0 regressions`;
/// with more than one engine, `1 model × 2 engines = 2 results: …`.
pub fn headline(r: &Receipt) -> String {
    let s = &r.summary;
    let what = if s.engines > 1 {
        format!(
            "{} × {} = {}",
            plural(s.models, "model"),
            plural(s.engines, "engine"),
            plural(s.result_count(), "result")
        )
    } else {
        plural(s.models, "model")
    };
    format!(
        "{what}: {} pass, {} fail, {}, {} skipped · {}, {} failed · {}",
        s.passed,
        s.failed,
        plural(s.errors, "error"),
        s.skipped,
        plural(s.trials, "trial"),
        s.trials_failed,
        plural(s.regressions, "regression"),
    )
}

/// The headline and the run's duration: one line for a terminal (`sweep: …`).
pub fn summary_line(r: &Receipt) -> String {
    format!("{}; took {}", headline(r), seconds(r.duration_seconds))
}

fn rev(r: &Receipt) -> String {
    match (&r.bitprobe.git_revision, r.bitprobe.git_dirty) {
        (Some(h), Some(true)) => format!("{} (with uncommitted changes)", &h[..h.len().min(12)]),
        (Some(h), _) => h[..h.len().min(12)].to_string(),
        (None, _) => "unknown revision".into(),
    }
}

fn oracle_line(r: &Receipt) -> String {
    let patches: Vec<String> = r
        .oracle
        .patches
        .iter()
        .map(|p| format!("{} ({})", p.name, &p.sha256[..p.sha256.len().min(12)]))
        .collect();
    format!(
        "{}, tree sha256 {}, patched by {}",
        r.oracle.package,
        &r.oracle.tree_sha256[..r.oracle.tree_sha256.len().min(16)],
        if patches.is_empty() {
            "nothing".into()
        } else {
            patches.join(", ")
        }
    )
}

fn machine_line(r: &Receipt) -> String {
    let m = &r.machine;
    format!(
        "{} · {} cores · {} · {}",
        m.cpu_model,
        m.cores,
        m.memory_mib.map_or("memory unknown".into(), |x| format!(
            "{:.1} GiB",
            x as f64 / 1024.0
        )),
        m.cpu_flags.join(" ")
    )
}

/// One model's facts, one line each, shared by both reports.
fn model_facts(m: &ModelResult) -> Vec<String> {
    let mut f = vec![
        format!("model {}: {}", m.name, m.source),
        format!(
            "engine under test: {} · reference: {}",
            m.engine, m.reference
        ),
    ];
    if let Some(file) = &m.file {
        f.push(format!(
            "file: {file} ({} bytes, sha256 {})",
            m.bytes.unwrap_or(0),
            m.sha256.as_deref().unwrap_or("?")
        ));
    }
    if let (Some(a), Some(w), Some(l)) = (&m.arch, &m.weight_type, m.n_layer) {
        f.push(format!(
            "arch {a}, weights {w}, {}, {}, tokenizer {}",
            plural(l as usize, "layer"),
            plural(m.threads, "thread"),
            m.tokenizer
        ));
    }
    f.push(format!(
        "verdict: {} ({} pass, {} fail, {} ignored) in {}",
        m.status.as_str(),
        m.counts.pass,
        m.counts.fail,
        m.counts.ignored,
        seconds(m.seconds)
    ));
    if let Some(e) = &m.error {
        f.push(format!("error: {e}"));
    }
    if let Some(d) = &m.first_divergence {
        f.push(format!(
            "first divergence: {} at {}, position {} ({} / {}): {}",
            d.stage, d.phase, d.position, d.case, d.prompt, d.detail
        ));
    }
    if let Some(l) = &m.logits {
        f.push(format!(
            "logits: top-1 agree {}/{}, worst KL {}, worst NMSE {}",
            l.top1_agree,
            l.positions,
            sci(l.worst_kl),
            sci(l.worst_nmse)
        ));
    }
    if let Some(t) = &m.tokenizer_parity {
        let truth = match (t.engine_eq_truth, t.oracle_eq_truth) {
            (Some(e), Some(x)) => {
                format!(", {} = truth {e}, {} = truth {x}", m.engine, m.reference)
            }
            _ => String::new(),
        };
        f.push(format!(
            "tokenizer parity over {}: {} = {} {}{truth}",
            plural(t.comparisons, "input×mode comparison"),
            m.engine,
            m.reference,
            t.engine_eq_oracle
        ));
    }
    match (&m.speed, &m.speed_error) {
        (Some(s), _) => f.push(format!(
            "speed ({} prompt tokens, {} decode, median of {}): prefill {} {:.1} vs {} {:.1} tok/s ({}), decode {:.1} vs {:.1} tok/s ({})",
            s.prompt_tokens,
            s.decode_tokens,
            s.reps,
            m.engine,
            s.engine.prefill_tok_s,
            m.reference,
            s.reference.prefill_tok_s,
            ratio(s.prefill_ratio),
            s.engine.decode_tok_s,
            s.reference.decode_tok_s,
            ratio(s.decode_ratio)
        )),
        (None, Some(e)) => f.push(format!("speed: not measured: {e}")),
        _ => {}
    }
    f
}

// ------------------------------------------------------------------------------------------
// What both reports show, computed once.

/// A failing result (fail or error), whether or not it is new.
struct Standing<'a> {
    m: &'a ModelResult,
    /// How long it has failed, from the trend (or the baseline).
    since: String,
    /// Its first divergence, first failure or error.
    what: String,
}

fn failing(s: Status) -> bool {
    matches!(s, Status::Fail | Status::Error)
}

/// Every result that fails now, with how many runs in a row it has failed.
fn standing(r: &Receipt) -> Vec<Standing<'_>> {
    r.models
        .iter()
        .filter(|m| failing(m.status))
        .map(|m| {
            let regressed = r.comparison.as_ref().is_some_and(|c| {
                c.regressions
                    .iter()
                    .any(|x| x.model == m.name && x.engine == m.engine)
            });
            // Earlier runs, newest first, while this pair failed in them.
            let history: Vec<(&str, Option<Status>)> = r
                .trend
                .iter()
                .rev()
                .map(|p| {
                    (
                        p.started.as_str(),
                        p.results
                            .iter()
                            .find(|x| x.model == m.name && x.engine == m.engine)
                            .map(|x| x.status),
                    )
                })
                .collect();
            let streak = history
                .iter()
                .take_while(|(_, s)| s.is_some_and(failing))
                .count();
            let since = if r.trend.is_empty() {
                "no earlier run to compare with".to_string()
            } else if streak == 0 {
                format!(
                    "new in this run{}",
                    if regressed { " (a regression)" } else { "" }
                )
            } else {
                let first = history[streak - 1].0;
                format!(
                    "failing in {} (since {first}{}){}",
                    if streak == history.len() {
                        format!("every kept run: {}", plural(streak + 1, "run"))
                    } else {
                        format!("the last {}", plural(streak + 1, "run"))
                    },
                    if streak == history.len() {
                        " or earlier"
                    } else {
                        ""
                    },
                    if regressed {
                        "; it regressed further"
                    } else {
                        ""
                    }
                )
            };
            Standing {
                m,
                since,
                what: divergence_label(m),
            }
        })
        .collect()
}

/// Failed trials with one cause: the same first divergence of their prompt, or the same
/// message.
struct FailGroup<'a> {
    /// The shared cause, one line.
    key: String,
    /// The trials and each one's own first line.
    trials: Vec<(&'a TrialResult, String)>,
    /// The rest of the message the trials share (their first divergence, reproduce line).
    shared: String,
}

const FIRST_DIVERGENCE_LINE: &str = "first divergence of this prompt: ";

fn fail_groups(m: &ModelResult) -> Vec<FailGroup<'_>> {
    let mut groups: Vec<FailGroup> = Vec::new();
    let mut failures: Vec<&TrialResult> = m
        .cases
        .iter()
        .flat_map(|c| &c.trials)
        .filter(|t| t.verdict == Verdict::Fail)
        .collect();
    // Where they start, so the group that starts first comes first.
    failures.sort_by_key(|t| (t.at.is_none(), t.at.as_ref().map(Location::order)));
    for t in failures {
        let msg = t.message.as_deref().unwrap_or("");
        // A comparison failure: its own lines, then its prompt's first divergence and the
        // rest (the stages before it, the reproduce line), which its prompt's trials share.
        let marker = format!("\n{FIRST_DIVERGENCE_LINE}");
        let (key, own, shared) = match msg.find(&marker) {
            Some(i) => {
                let shared = &msg[i + 1..];
                let fd = shared[FIRST_DIVERGENCE_LINE.len()..]
                    .lines()
                    .next()
                    .unwrap_or("");
                (
                    format!("first divergence: {fd}"),
                    msg[..i].to_string(),
                    shared.to_string(),
                )
            }
            None => {
                let (head, rest) = msg.split_once('\n').unwrap_or((msg, ""));
                (head.to_string(), String::new(), rest.to_string())
            }
        };
        match groups.iter_mut().find(|g| g.key == key) {
            Some(g) => {
                if g.shared != shared {
                    g.shared.clear();
                }
                g.trials.push((t, own));
            }
            None => groups.push(FailGroup {
                key,
                trials: vec![(t, own)],
                shared,
            }),
        }
    }
    groups
}

/// Matrix cell text: verdict, first divergence, decode ratio, or why it did not run.
fn cell_text(c: &MatrixCell, show_reference: bool) -> String {
    let mut t = c.status.as_str().to_string();
    if show_reference {
        write!(t, " vs {}", c.reference).ok();
    }
    if let Some(d) = &c.first_divergence {
        write!(t, " · {} @ {} pos {}", d.stage, d.phase, d.position).ok();
    }
    if let Some(r) = c.decode_ratio {
        write!(t, " · decode {}", ratio(r)).ok();
    }
    if let Some(n) = &c.note {
        let n: String = if n.chars().count() > 80 {
            format!("{}…", n.chars().take(80).collect::<String>())
        } else {
            n.clone()
        };
        write!(t, " · {n}").ok();
    }
    t
}

fn mixed_references(mx: &Matrix) -> bool {
    let refs: std::collections::BTreeSet<&str> = mx
        .rows
        .iter()
        .flat_map(|r| r.cells.iter().flatten())
        .map(|c| c.reference.as_str())
        .collect();
    refs.len() > 1
}

fn matrix_note(mx: &Matrix) -> String {
    let refs: std::collections::BTreeSet<&str> = mx
        .rows
        .iter()
        .flat_map(|r| r.cells.iter().flatten())
        .map(|c| c.reference.as_str())
        .collect();
    format!(
        "Rows are the engines under test, columns the models; each cell is judged against {} — the verdict, the first divergence (site @ phase, position) and the decode tok/s ratio engine / reference when measured.",
        if refs.len() == 1 {
            refs.iter().next().copied().unwrap_or("the reference").to_string()
        } else {
            "the reference it names".to_string()
        }
    )
}

/// One pair's series over the trend's runs and this one, oldest first (`None`: not run then).
struct Series {
    name: String,
    model: String,
    engine: String,
    points: Vec<Option<TrendResult>>,
}

fn trend_series(r: &Receipt) -> Vec<Series> {
    r.models
        .iter()
        .map(|m| Series {
            name: m.display_name(),
            model: m.name.clone(),
            engine: m.engine.clone(),
            points: r
                .trend
                .iter()
                .map(|p| {
                    p.results
                        .iter()
                        .find(|x| x.model == m.name && x.engine == m.engine)
                        .cloned()
                })
                .chain(std::iter::once(Some(TrendResult::of(m))))
                .collect(),
        })
        .collect()
}

fn trend_value_text(p: &Option<TrendResult>, nmse: bool) -> String {
    match p {
        None => "·".into(),
        Some(x) if x.status == Status::Error => "error".into(),
        Some(x) if x.status == Status::Skipped => "skipped".into(),
        Some(x) if nmse => {
            if x.non_finite {
                "non-finite".into()
            } else {
                sci(x.worst_nmse)
            }
        }
        Some(x) => x.trials_failed.to_string(),
    }
}

// ------------------------------------------------------------------------------------------
// Markdown.

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub fn markdown(r: &Receipt) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# bitprobe sweep — {}\n", r.started);
    let _ = writeln!(o, "**{}**\n", headline(r));
    let _ = writeln!(
        o,
        "- bitprobe {} ({}){}",
        r.bitprobe.version,
        rev(r),
        if r.bitprobe.faults_built {
            ", built with fault injection"
        } else {
            ""
        }
    );
    let _ = writeln!(o, "- oracle: {}", oracle_line(r));
    let _ = writeln!(o, "- machine: {}", machine_line(r));
    let _ = writeln!(
        o,
        "- models: {} · cases: {} · took {}",
        r.settings.models_file,
        r.settings.cases_dir,
        seconds(r.duration_seconds)
    );
    if let Some(f) = &r.settings.injected_fault {
        let _ = writeln!(o, "- **injected engine fault: `{f}`**");
    }
    match &r.comparison {
        None => {
            let _ = writeln!(o, "- baseline: none (first run of a series)\n");
        }
        Some(c) => {
            let _ = writeln!(
                o,
                "- baseline: {} (started {})\n",
                c.baseline, c.baseline_started
            );
            let _ = writeln!(o, "## Regressions ({})\n", c.regressions.len());
            if c.regressions.is_empty() {
                let _ = writeln!(o, "None.\n");
            } else {
                let _ = writeln!(
                    o,
                    "Listed by where they start: phase, then stage in evaluation order, then position.\n"
                );
                let _ = writeln!(
                    o,
                    "| result | regressions | where to look first |\n|---|---|---|"
                );
                for g in super::baseline::groups(&c.regressions) {
                    let _ = writeln!(
                        o,
                        "| {} | {} | {} |",
                        md_cell(&g.model),
                        g.counts_text(),
                        md_cell(&g.lead(r))
                    );
                }
                let _ = writeln!(
                    o,
                    "\nThe first {} per result (all of them are in receipt.json):\n",
                    MAX_LISTED
                );
                let _ = writeln!(
                    o,
                    "| kind | result | what | starts at | detail |\n|---|---|---|---|---|"
                );
                for x in listed(&c.regressions) {
                    let _ = writeln!(
                        o,
                        "| {} | {} | `{}` | {} | {} |",
                        x.kind.label(),
                        md_cell(&x.display_name()),
                        md_cell(&x.what),
                        x.at.as_ref()
                            .map_or("–".to_string(), |a| md_cell(&a.to_string())),
                        md_cell(&x.detail)
                    );
                }
                o.push('\n');
            }
        }
    }

    // The implementations × models matrix.
    let mx = &r.matrix;
    if !mx.rows.is_empty() {
        let _ = writeln!(o, "## Implementations × models\n");
        let _ = writeln!(o, "{}\n", matrix_note(mx));
        let _ = write!(o, "| engine \\ model |");
        for m in &mx.models {
            let _ = write!(o, " {} |", md_cell(m));
        }
        let _ = write!(o, "\n|---|");
        for _ in &mx.models {
            let _ = write!(o, "---|");
        }
        o.push('\n');
        let mixed = mixed_references(mx);
        for row in &mx.rows {
            let _ = write!(o, "| {} |", md_cell(&row.engine));
            for c in &row.cells {
                let _ = write!(
                    o,
                    " {} |",
                    c.as_ref()
                        .map_or("not run".to_string(), |c| md_cell(&cell_text(c, mixed)))
                );
            }
            o.push('\n');
        }
        o.push('\n');
    }

    let st = standing(r);
    let _ = writeln!(o, "## Standing failures ({})\n", st.len());
    if st.is_empty() {
        let _ = writeln!(o, "None: every result passes (or was skipped).\n");
    } else {
        let _ = writeln!(
            o,
            "Every result that fails now, whether or not it is a regression.\n"
        );
        let _ = writeln!(o, "| result | verdict | since | what |\n|---|---|---|---|");
        for s in &st {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} |",
                md_cell(&s.m.display_name()),
                s.m.status.as_str(),
                md_cell(&s.since),
                md_cell(&s.what)
            );
        }
        o.push('\n');
    }

    if let Some(c) = &r.comparison {
        if !c.improvements.is_empty() {
            let _ = writeln!(o, "## Fixed ({})\n", c.improvements.len());
            let _ = writeln!(o, "| kind | result | what | detail |\n|---|---|---|---|");
            for x in &c.improvements {
                let _ = writeln!(
                    o,
                    "| {} | {} | `{}` | {} |",
                    x.kind.label(),
                    md_cell(&x.display_name()),
                    md_cell(&x.what),
                    md_cell(&x.detail)
                );
            }
            o.push('\n');
        }
    }

    if !r.trend.is_empty() {
        let _ = writeln!(o, "## Trend over {}\n", plural(r.trend.len() + 1, "run"));
        let _ = writeln!(
            o,
            "Oldest first, this run last (from {} to {}); `·`: not run then.\n",
            r.trend[0].started, r.started
        );
        let _ = writeln!(o, "| result | failed trials | worst NMSE |\n|---|---|---|");
        for s in trend_series(r) {
            let line = |nmse: bool| {
                s.points
                    .iter()
                    .map(|p| trend_value_text(p, nmse))
                    .collect::<Vec<_>>()
                    .join(" → ")
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} |",
                md_cell(&s.name),
                line(false),
                line(true)
            );
        }
        o.push('\n');
    }

    let _ = writeln!(o, "## Summary\n");
    let _ = writeln!(o, "| result | verdict | trials pass/fail/ignored | first divergence | worst NMSE | prefill ratio | decode ratio | time |");
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
    for m in &r.models {
        let (p, d) = speed_cells(m);
        let _ = writeln!(
            o,
            "| {} | {} | {}/{}/{} | {} | {} | {p} | {d} | {} |",
            md_cell(&m.display_name()),
            m.status.as_str(),
            m.counts.pass,
            m.counts.fail,
            m.counts.ignored,
            md_cell(&divergence_label(m)),
            exact_label(m),
            seconds(m.seconds)
        );
    }
    let _ = writeln!(
        o,
        "\nRatios are engine / reference tok/s (above 1: the engine is faster).\n"
    );
    let _ = writeln!(o, "## Results\n");
    for m in &r.models {
        let _ = writeln!(o, "### {}\n", m.display_name());
        for fact in model_facts(m) {
            let _ = writeln!(o, "- {}", md_cell(&fact));
        }
        let groups = fail_groups(m);
        if !groups.is_empty() {
            let _ = writeln!(
                o,
                "\nFailed trials: {} with {}:\n",
                m.counts.fail,
                plural(groups.len(), "cause")
            );
            for g in &groups {
                let names: Vec<String> = g
                    .trials
                    .iter()
                    .take(MAX_GROUP_TRIALS)
                    .map(|(t, _)| format!("`{}`", t.name))
                    .collect();
                let more = g.trials.len().saturating_sub(MAX_GROUP_TRIALS);
                let _ = writeln!(
                    o,
                    "- ×{} — {}: {}{}",
                    g.trials.len(),
                    md_cell(&g.key),
                    names.join(", "),
                    if more > 0 {
                        format!(" and {more} more (receipt.json)")
                    } else {
                        String::new()
                    }
                );
            }
        }
        if !m.stages.is_empty() {
            let _ = writeln!(o, "\n| stage | worst NMSE prompt | worst NMSE decode | limit | bit-exact |\n|---|---|---|---|---|");
            for s in &m.stages {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {:.0e} | {} |",
                    s.stage,
                    sci(s.worst_nmse_prompt),
                    sci(s.worst_nmse_decode),
                    s.nmse_limit,
                    if s.non_finite {
                        "non-finite"
                    } else if s.bit_exact {
                        "yes"
                    } else {
                        "no"
                    }
                );
            }
        }
        o.push('\n');
    }
    o
}

// ------------------------------------------------------------------------------------------
// HTML.

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// An anchor id from a result's name.
fn anchor(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("m-{s}")
}

const CSS: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1100px;color:#1d232b;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d8dde3;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
.meta{color:#55606d;font-size:13px}.meta div{margin:2px 0}
.headline{font-size:16px;font-weight:600;margin:12px 0}
table{border-collapse:collapse;width:100%;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #d8dde3;padding:4px 7px;text-align:left;vertical-align:top}
th{background:#f1f3f6}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.pass{color:#0a6b2f;font-weight:600}.fail{color:#b3261e;font-weight:600}.error{color:#8a4b00;font-weight:600}.skipped{color:#6b7480;font-weight:600}
td.c-pass{background:#e8f5ec}td.c-fail{background:#fdecea}td.c-error{background:#fdf1e3}td.c-skipped{background:#f1f3f6}
.box{border-radius:6px;padding:8px 12px;margin:10px 0}.bad{background:#fdecea;border:1px solid #f2b8b5}.good{background:#e8f5ec;border:1px solid #b5dcc2}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;background:#f1f3f6;padding:0 3px;border-radius:3px}
details{margin:6px 0}summary{cursor:pointer;color:#2a5db0}
details.failgroup{border:1px solid #f2b8b5;border-radius:6px;padding:4px 10px;background:#fffafa}
.count{display:inline-block;min-width:2.2em;font-weight:700;color:#b3261e}
pre.msg{white-space:pre-wrap;margin:4px 0;font-size:12px}
.facts{margin:4px 0 8px 18px;padding:0}.facts li{margin:1px 0}
svg{background:#fff;border:1px solid #d8dde3;border-radius:4px}
svg.spark{border:none;background:none;vertical-align:middle}
";

fn verdict_span(s: Status) -> String {
    format!("<span class=\"{}\">{}</span>", s.as_str(), s.as_str())
}

fn changes_table(o: &mut String, changes: &[Change]) {
    let _ = writeln!(
        o,
        "<table><tr><th>kind</th><th>result</th><th>what</th><th>starts at</th><th>detail</th></tr>"
    );
    for x in changes {
        let name = x.display_name();
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td><a href=\"#{}\">{}</a></td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            esc(x.kind.label()),
            anchor(&name),
            esc(&name),
            esc(&x.what),
            x.at.as_ref().map_or("–".to_string(), |a| esc(&a.to_string())),
            esc(&x.detail)
        );
    }
    let _ = writeln!(o, "</table>");
}

pub fn html(r: &Receipt) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>bitprobe sweep {}</title>\n<style>{CSS}</style></head><body>",
        esc(&r.started)
    );
    let _ = writeln!(o, "<h1>bitprobe sweep — {}</h1>", esc(&r.started));
    let _ = writeln!(o, "<div class=\"headline\">{}</div>", esc(&headline(r)));
    let _ = writeln!(o, "<div class=\"meta\">");
    let _ = writeln!(
        o,
        "<div>bitprobe {} ({}){}</div>",
        esc(&r.bitprobe.version),
        esc(&rev(r)),
        if r.bitprobe.faults_built {
            ", built with fault injection"
        } else {
            ""
        }
    );
    let _ = writeln!(o, "<div>oracle: {}</div>", esc(&oracle_line(r)));
    let _ = writeln!(o, "<div>machine: {}</div>", esc(&machine_line(r)));
    let _ = writeln!(
        o,
        "<div>models: {} · cases: {} · took {}</div>",
        esc(&r.settings.models_file),
        esc(&r.settings.cases_dir),
        esc(&seconds(r.duration_seconds))
    );
    if let Some(f) = &r.settings.injected_fault {
        let _ = writeln!(
            o,
            "<div><b>injected engine fault: <code>{}</code></b></div>",
            esc(f)
        );
    }
    match &r.comparison {
        None => {
            let _ = writeln!(o, "<div>baseline: none (first run of a series)</div></div>");
        }
        Some(c) => {
            let _ = writeln!(
                o,
                "<div>baseline: {} (started {})</div></div>",
                esc(&c.baseline),
                esc(&c.baseline_started)
            );
            let _ = writeln!(
                o,
                "<h2 id=\"regressions\">Regressions ({})</h2>",
                c.regressions.len()
            );
            if c.regressions.is_empty() {
                let _ = writeln!(
                    o,
                    "<div class=\"box good\">No regressions against the baseline.</div>"
                );
            } else {
                let _ = writeln!(o, "<div class=\"box bad\"><div class=\"meta\">Listed by where they start: phase, then stage in evaluation order, then position.</div><table><tr><th>result</th><th>regressions</th><th>where to look first</th></tr>");
                for g in super::baseline::groups(&c.regressions) {
                    let _ = writeln!(
                        o,
                        "<tr><td><a href=\"#{}\">{}</a></td><td>{}</td><td>{}</td></tr>",
                        anchor(&g.model),
                        esc(&g.model),
                        esc(&g.counts_text()),
                        esc(&g.lead(r))
                    );
                }
                let _ = writeln!(o, "</table><details><summary>The first {MAX_LISTED} per result (all are in receipt.json)</summary>");
                changes_table(&mut o, &listed(&c.regressions));
                let _ = writeln!(o, "</details></div>");
            }
        }
    }

    // The implementations × models matrix.
    let mx = &r.matrix;
    if !mx.rows.is_empty() {
        let _ = writeln!(o, "<h2 id=\"matrix\">Implementations × models</h2>");
        let _ = writeln!(o, "<div class=\"meta\">{}</div>", esc(&matrix_note(mx)));
        let _ = write!(o, "<table class=\"matrix\"><tr><th>engine \\ model</th>");
        for m in &mx.models {
            let _ = write!(o, "<th>{}</th>", esc(m));
        }
        let _ = writeln!(o, "</tr>");
        let mixed = mixed_references(mx);
        for row in &mx.rows {
            let _ = write!(o, "<tr><th>{}</th>", esc(&row.engine));
            for (c, model) in row.cells.iter().zip(&mx.models) {
                match c {
                    None => {
                        let _ = write!(o, "<td class=\"c-none\">not run</td>");
                    }
                    Some(c) => {
                        let mut t = String::new();
                        if mixed {
                            let _ = write!(t, " vs {}", esc(&c.reference));
                        }
                        if let Some(d) = &c.first_divergence {
                            let _ = write!(
                                t,
                                "<br><code>{}</code> @ {} pos {}",
                                esc(&d.stage),
                                esc(&d.phase),
                                d.position
                            );
                        }
                        if let Some(x) = c.decode_ratio {
                            let _ = write!(t, "<br>decode {}", esc(&ratio(x)));
                        }
                        if let Some(n) = &c.note {
                            let _ = write!(t, "<br><span class=\"meta\">{}</span>", esc(n));
                        }
                        let _ = write!(
                            o,
                            "<td class=\"c-{}\"><a href=\"#{}\">{}</a>{t}</td>",
                            c.status.as_str(),
                            anchor(&pair_name(model, &row.engine)),
                            verdict_span(c.status)
                        );
                    }
                }
            }
            let _ = writeln!(o, "</tr>");
        }
        let _ = writeln!(o, "</table>");
    }

    let st = standing(r);
    let _ = writeln!(
        o,
        "<h2 id=\"standing\">Standing failures ({})</h2>",
        st.len()
    );
    if st.is_empty() {
        let _ = writeln!(
            o,
            "<div class=\"box good\">None: every result passes (or was skipped).</div>"
        );
    } else {
        let _ = writeln!(o, "<div class=\"meta\">Every result that fails now, whether or not it is a regression.</div><table><tr><th>result</th><th>verdict</th><th>since</th><th>what</th></tr>");
        for s in &st {
            let name = s.m.display_name();
            let _ = writeln!(
                o,
                "<tr><td><a href=\"#{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                anchor(&name),
                esc(&name),
                verdict_span(s.m.status),
                esc(&s.since),
                esc(&s.what)
            );
        }
        let _ = writeln!(o, "</table>");
    }

    if let Some(c) = &r.comparison {
        if !c.improvements.is_empty() {
            let _ = writeln!(
                o,
                "<h2>Fixed ({})</h2><div class=\"box good\">",
                c.improvements.len()
            );
            changes_table(&mut o, &c.improvements);
            let _ = writeln!(o, "</div>");
        }
    }

    if !r.trend.is_empty() {
        let _ = writeln!(
            o,
            "<h2 id=\"trend\">Trend over {}</h2>",
            esc(&plural(r.trend.len() + 1, "run"))
        );
        let _ = writeln!(
            o,
            "<div class=\"meta\">Oldest first, this run last ({} to {}). Failed trials on a linear scale from 0; worst NMSE on a log scale (bottom: bit-exact, top: non-finite). A gap: not run then; a red mark: the result failed or errored in that run.</div>",
            esc(&r.trend[0].started),
            esc(&r.started)
        );
        let _ = writeln!(
            o,
            "<table class=\"trend\"><tr><th>result</th><th>failed trials</th><th>worst NMSE</th></tr>"
        );
        let starts: Vec<&str> = r
            .trend
            .iter()
            .map(|p| p.started.as_str())
            .chain(std::iter::once(r.started.as_str()))
            .collect();
        for s in trend_series(r) {
            let last = |nmse: bool| trend_value_text(s.points.last().unwrap_or(&None), nmse);
            let _ = writeln!(
                o,
                "<tr><td><a href=\"#{}\">{}</a></td><td>{} {}</td><td>{} {}</td></tr>",
                anchor(&s.name),
                esc(&s.name),
                sparkline(&s, &starts, false),
                esc(&last(false)),
                sparkline(&s, &starts, true),
                esc(&last(true))
            );
        }
        let _ = writeln!(o, "</table>");
    }

    let _ = writeln!(o, "<h2 id=\"summary\">Summary</h2>\n<table><tr><th>result</th><th>verdict</th><th>trials pass / fail / ignored</th><th>first divergence</th><th>worst NMSE</th><th>prefill ratio</th><th>decode ratio</th><th>time</th></tr>");
    for m in &r.models {
        let (p, d) = speed_cells(m);
        let name = m.display_name();
        let _ = writeln!(
            o,
            "<tr><td><a href=\"#{}\">{}</a></td><td>{}</td><td class=\"num\">{} / {} / {}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{p}</td><td class=\"num\">{d}</td><td class=\"num\">{}</td></tr>",
            anchor(&name),
            esc(&name),
            verdict_span(m.status),
            m.counts.pass,
            m.counts.fail,
            m.counts.ignored,
            esc(&divergence_label(m)),
            esc(&exact_label(m)),
            esc(&seconds(m.seconds))
        );
    }
    let _ = writeln!(o, "</table><div class=\"meta\">Ratios are engine / reference tok/s (above 1: the engine is faster).</div>");

    let _ = writeln!(o, "<h2>Results</h2>");
    for m in &r.models {
        let name = m.display_name();
        let _ = writeln!(
            o,
            "<h3 id=\"{}\">{} — {}</h3><ul class=\"facts\">",
            anchor(&name),
            esc(&name),
            verdict_span(m.status)
        );
        for fact in model_facts(m) {
            let _ = writeln!(o, "<li>{}</li>", esc(&fact));
        }
        let _ = writeln!(o, "</ul>");
        if let Some(c) = r.comparison.as_ref() {
            let mine: Vec<Change> = c
                .regressions
                .iter()
                .filter(|x| x.model == m.name && x.engine == m.engine)
                .cloned()
                .collect();
            if !mine.is_empty() {
                let _ = writeln!(
                    o,
                    "<details class=\"box bad\"><summary><b>{} of this result</b></summary>",
                    esc(&plural(mine.len(), "regression"))
                );
                changes_table(&mut o, &listed(&mine));
                let _ = writeln!(o, "</details>");
            }
        }
        if !m.stages.is_empty() {
            o.push_str(&chart(m));
            let _ = writeln!(o, "<details><summary>Worst NMSE per stage ({})</summary><table><tr><th>stage</th><th>prompt</th><th>decode</th><th>limit</th><th>bit-exact</th></tr>", esc(&plural(m.stages.len(), "stage")));
            for s in &m.stages {
                let _ = writeln!(
                    o,
                    "<tr><td><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{:.0e}</td><td>{}</td></tr>",
                    esc(&s.stage),
                    sci(s.worst_nmse_prompt),
                    sci(s.worst_nmse_decode),
                    s.nmse_limit,
                    if s.non_finite { "non-finite" } else if s.bit_exact { "yes" } else { "no" }
                );
            }
            let _ = writeln!(o, "</table></details>");
        }
        let groups = fail_groups(m);
        if !groups.is_empty() {
            let _ = writeln!(
                o,
                "<div class=\"failed\"><b>Failed trials: {} with {}</b>",
                m.counts.fail,
                esc(&plural(groups.len(), "cause"))
            );
            for g in &groups {
                let _ = writeln!(
                    o,
                    "<details class=\"failgroup\"><summary><span class=\"count\">×{}</span> {}</summary><table><tr><th>trial</th><th>its own line</th></tr>",
                    g.trials.len(),
                    esc(&g.key)
                );
                for (t, own) in g.trials.iter().take(MAX_GROUP_TRIALS) {
                    let _ = writeln!(
                        o,
                        "<tr><td><code>{}</code></td><td><pre class=\"msg\">{}</pre></td></tr>",
                        esc(&t.name),
                        esc(own)
                    );
                }
                if g.trials.len() > MAX_GROUP_TRIALS {
                    let _ = writeln!(
                        o,
                        "<tr><td colspan=\"2\">… {} more in receipt.json</td></tr>",
                        g.trials.len() - MAX_GROUP_TRIALS
                    );
                }
                let _ = writeln!(o, "</table>");
                if !g.shared.is_empty() {
                    let _ = writeln!(o, "<pre class=\"msg\">{}</pre>", esc(&g.shared));
                }
                let _ = writeln!(o, "</details>");
            }
            let _ = writeln!(o, "</div>");
        }
    }
    let _ = writeln!(o, "</body></html>");
    o
}

/// A small inline chart of one result across the trend's runs: failed trials (linear, from
/// 0) or worst NMSE (log10 from bit-exact at 1e-12 up to 10, non-finite on top).
fn sparkline(s: &Series, starts: &[&str], nmse: bool) -> String {
    const W: f64 = 150.0;
    const H: f64 = 26.0;
    const P: f64 = 4.0;
    let n = s.points.len().max(1);
    let x = |i: usize| {
        if n == 1 {
            W / 2.0
        } else {
            P + (W - 2.0 * P) * i as f64 / (n - 1) as f64
        }
    };
    let max_fail = s
        .points
        .iter()
        .flatten()
        .map(|p| p.trials_failed)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    // y of a point, or None when it has no value (not run, error, skipped, nothing compared).
    let y = |p: &TrendResult| -> Option<f64> {
        if matches!(p.status, Status::Error | Status::Skipped) {
            return None;
        }
        let frac = if nmse {
            if p.non_finite {
                1.0
            } else {
                let v = p.worst_nmse?;
                let lg = if v <= 0.0 {
                    -12.0
                } else {
                    v.log10().clamp(-12.0, 1.0)
                };
                (lg + 12.0) / 13.0
            }
        } else {
            p.trials_failed as f64 / max_fail
        };
        Some(H - P - (H - 2.0 * P) * frac)
    };
    let mut out = format!(
        "<svg class=\"spark\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{} of {} over {}\">",
        if nmse { "worst NMSE" } else { "failed trials" },
        esc(&s.name),
        plural(n, "run")
    );
    let _ = write!(
        out,
        "<line x1=\"{P}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#e6e9ee\"/>",
        W - P,
        H - P,
        H - P
    );
    // Line segments between consecutive runs that both have a value.
    let mut path = String::new();
    let mut pen_down = false;
    for (i, p) in s.points.iter().enumerate() {
        match p.as_ref().and_then(&y) {
            Some(yy) => {
                let _ = write!(
                    path,
                    "{}{:.1},{yy:.1} ",
                    if pen_down { "L" } else { "M" },
                    x(i)
                );
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    if !path.is_empty() {
        let _ = write!(
            out,
            "<path d=\"{path}\" fill=\"none\" stroke=\"#2a5db0\" stroke-width=\"1.3\"/>"
        );
    }
    for (i, p) in s.points.iter().enumerate() {
        let when = starts.get(i).copied().unwrap_or("");
        let Some(p) = p else { continue };
        let yy = y(p).unwrap_or(P);
        let color = match p.status {
            Status::Pass => "#2a5db0",
            Status::Fail => "#b3261e",
            Status::Error => "#8a4b00",
            Status::Skipped => "#9aa3ad",
        };
        let value = trend_value_text(&Some(p.clone()), nmse);
        let _ = write!(
            out,
            "<circle cx=\"{:.1}\" cy=\"{yy:.1}\" r=\"{}\" fill=\"{color}\"><title>{}: {} ({})</title></circle>",
            x(i),
            if i + 1 == n { 3.0 } else { 2.2 },
            esc(when),
            esc(&value),
            p.status.as_str()
        );
    }
    let _ = write!(
        out,
        "<desc>{} {} over {}: {}</desc></svg>",
        esc(&s.model),
        esc(&s.engine),
        plural(n, "run"),
        s.points
            .iter()
            .map(|p| trend_value_text(p, nmse))
            .collect::<Vec<_>>()
            .join(", ")
    );
    out
}

/// The part of a stage name people read on the axis: `attn_q` for `blk.3.attn_q`.
fn stage_short(stage: &str) -> &str {
    stage
        .strip_prefix("blk.")
        .and_then(|r| r.split_once('.'))
        .map_or(stage, |(_, s)| s)
}

/// The NMSE chart of one result: stages in evaluation order on x (each stage named, or, when
/// they are too dense, every layer named with the stage order given once underneath), log10
/// NMSE on y; bit-exact values sit on the bottom line (labelled "bit-exact"), non-finite ones
/// on the top. The decode series is drawn first, dashed with hollow squares; the prompt
/// series on top of it, solid with filled dots, so neither hides the other.
fn chart(m: &ModelResult) -> String {
    const W: f64 = 1060.0;
    const L: f64 = 70.0;
    const R: f64 = 16.0;
    const T: f64 = 40.0;
    const PLOT: f64 = 230.0;
    const CHAR: f64 = 6.2; // a label character at font-size 10–11, generously
    let floor = -12.0f64; // log10 of the "bit-exact" line
    let n = m.stages.len().max(1);
    let step = (W - L - R) / n as f64;
    // Every stage is named when the names fit side by side (rotated), else every layer.
    let name_stages = step >= 11.0;
    let longest = m
        .stages
        .iter()
        .map(|s| stage_short(&s.stage).chars().count())
        .max()
        .unwrap_or(0) as f64;
    let stage_band = if name_stages {
        longest * CHAR + 10.0
    } else {
        0.0
    };
    let y0 = T + PLOT; // the x axis
    let layer_row = y0 + stage_band + 16.0;
    let height = layer_row + 14.0;
    let vals: Vec<f64> = m
        .stages
        .iter()
        .flat_map(|s| [s.worst_nmse_prompt, s.worst_nmse_decode, Some(s.nmse_limit)])
        .flatten()
        .filter(|v| *v > 0.0)
        .collect();
    let top = vals
        .iter()
        .map(|v| v.log10().ceil())
        .fold(0.0f64, f64::max)
        .max(-2.0)
        + 1.0; // room for the non-finite row
    let x = |i: usize| L + step * (i as f64 + 0.5);
    let y = |lg: f64| T + PLOT * (top - lg.clamp(floor, top)) / (top - floor);
    let lg = |v: f64| {
        if v <= 0.0 {
            floor
        } else {
            v.log10().max(floor)
        }
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg class=\"chart\" width=\"{W}\" height=\"{height:.0}\" viewBox=\"0 0 {W} {height:.0}\" role=\"img\" aria-label=\"worst NMSE by stage for {}\" font-family=\"system-ui,sans-serif\" font-size=\"11\">",
        esc(&m.display_name())
    );
    // Decade grid.
    let grid_step = if top - floor > 10.0 { 2 } else { 1 };
    let mut d = floor as i32;
    while d as f64 <= top - 1.0 {
        let yy = y(d as f64);
        let label = if d as f64 == floor {
            "bit-exact".to_string()
        } else {
            format!("1e{d}")
        };
        let _ = writeln!(s, "<line x1=\"{L}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#e6e9ee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#55606d\">{label}</text>", W - R, L - 6.0, yy + 4.0);
        d += grid_step;
    }
    let ytop = y(top);
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#b3261e\">non-finite</text>",
        L - 6.0,
        ytop + 4.0
    );
    // The x axis: a tick and a rotated name per stage when they fit.
    let _ = writeln!(
        s,
        "<line x1=\"{L}\" x2=\"{}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#9aa3ad\"/>",
        W - R
    );
    if name_stages {
        let _ = writeln!(
            s,
            "<g class=\"x-stages\" fill=\"#3b4652\" font-size=\"10\">"
        );
        for (i, st) in m.stages.iter().enumerate() {
            let xx = x(i);
            let _ = writeln!(
                s,
                "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{y0:.1}\" y2=\"{:.1}\" stroke=\"#9aa3ad\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" transform=\"rotate(-90 {:.1} {:.1})\">{}</text>",
                y0 + 4.0,
                xx + 3.5,
                y0 + 8.0,
                xx + 3.5,
                y0 + 8.0,
                esc(stage_short(&st.stage))
            );
        }
        let _ = writeln!(s, "</g>");
    }
    // Layer boundaries, and each layer's name centred under its stages; names that would
    // touch the previous one are left out (the boundary line stays).
    let mut groups: Vec<(String, usize, usize)> = Vec::new(); // (name, first, last)
    for (i, st) in m.stages.iter().enumerate() {
        let g = st
            .stage
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .map_or_else(|| st.stage.clone(), |l| format!("blk.{l}"));
        match groups.last_mut() {
            Some((name, _, last)) if *name == g => *last = i,
            _ => groups.push((g, i, i)),
        }
    }
    let _ = writeln!(s, "<g class=\"x-layers\" fill=\"#55606d\">");
    let mut free_from = f64::MIN;
    for (name, first, last) in &groups {
        let left = x(*first) - step / 2.0;
        let _ = writeln!(
            s,
            "<line x1=\"{left:.1}\" x2=\"{left:.1}\" y1=\"{T}\" y2=\"{:.1}\" stroke=\"#cfd5dc\" stroke-dasharray=\"2,3\"/>",
            layer_row - 10.0
        );
        let label = name.strip_prefix("result_").map_or(name.as_str(), |r| r);
        let centre = (x(*first) + x(*last)) / 2.0;
        let half = label.chars().count() as f64 * CHAR / 2.0;
        if centre - half >= free_from {
            let _ = writeln!(
                s,
                "<text x=\"{centre:.1}\" y=\"{layer_row:.1}\" text-anchor=\"middle\">{}</text>",
                esc(label)
            );
            free_from = centre + half + 6.0;
        }
    }
    let _ = writeln!(s, "</g>");
    // Tolerance in force: a dashed step line.
    let mut path = String::new();
    for (i, st) in m.stages.iter().enumerate() {
        let yy = y(lg(st.nmse_limit));
        let _ = write!(
            path,
            "{}{:.1},{yy:.1} L{:.1},{yy:.1} ",
            if i == 0 { "M" } else { "L" },
            x(i) - step / 2.0,
            x(i) + step / 2.0
        );
    }
    let _ = writeln!(
        s,
        "<path d=\"{path}\" fill=\"none\" stroke=\"#9aa3ad\" stroke-dasharray=\"5,4\"/>"
    );
    // Series: decode first, prompt on top of it.
    type Pick = fn(&StageWorst) -> Option<f64>;
    let series: [(&str, bool, &str, Pick); 2] = [
        ("decode", false, "#e07b00", |s: &StageWorst| {
            s.worst_nmse_decode
        }),
        ("prompt", true, "#2a5db0", |s: &StageWorst| {
            s.worst_nmse_prompt
        }),
    ];
    for (name, is_prompt, color, pick) in series {
        let mut line = String::new();
        let mut marks = String::new();
        for (i, st) in m.stages.iter().enumerate() {
            let v = pick(st);
            let compared = v.is_some() || (st.non_finite && is_prompt);
            if !compared {
                continue;
            }
            let yy = match v {
                Some(v) => y(lg(v)),
                None => ytop,
            };
            let _ = write!(
                line,
                "{}{:.1},{yy:.1} ",
                if line.is_empty() { "M" } else { "L" },
                x(i)
            );
            let label = match v {
                Some(0.0) => "bit-exact".to_string(),
                Some(v) => format!("{v:.3e}"),
                None => "non-finite".to_string(),
            };
            let title = format!(
                "<title>{} {name}: NMSE {label} (limit {:.0e})</title>",
                esc(&st.stage),
                st.nmse_limit
            );
            let fill = if v.is_none() { "#b3261e" } else { color };
            if is_prompt {
                let _ = writeln!(
                    marks,
                    "<circle cx=\"{:.1}\" cy=\"{yy:.1}\" r=\"2.6\" fill=\"{fill}\">{title}</circle>",
                    x(i)
                );
            } else {
                let _ = writeln!(
                    marks,
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"9\" height=\"9\" fill=\"none\" stroke=\"{fill}\" stroke-width=\"1.6\">{title}</rect>",
                    x(i) - 4.5,
                    yy - 4.5
                );
            }
        }
        let _ = writeln!(s, "<g class=\"series-{name}\">");
        if !line.is_empty() {
            let _ = writeln!(
                s,
                "<path d=\"{line}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"{}\"{}/>",
                if is_prompt { "1.5" } else { "2" },
                if is_prompt {
                    ""
                } else {
                    " stroke-dasharray=\"6,3\""
                }
            );
        }
        s.push_str(&marks);
        let _ = writeln!(s, "</g>");
    }
    // Title and legend.
    let _ = writeln!(
        s,
        "<text x=\"{L}\" y=\"16\" font-weight=\"600\">{} vs {}: worst NMSE per stage</text>",
        esc(&m.engine),
        esc(&m.reference)
    );
    let lx = L + 14.0;
    let _ = writeln!(
        s,
        "<g class=\"legend\" transform=\"translate({lx},30)\"><circle cx=\"0\" cy=\"0\" r=\"2.6\" fill=\"#2a5db0\"/><line x1=\"-8\" x2=\"8\" y1=\"0\" y2=\"0\" stroke=\"#2a5db0\" stroke-width=\"1.5\"/><text x=\"14\" y=\"4\">prompt (solid, drawn on top)</text><rect x=\"196\" y=\"-4.5\" width=\"9\" height=\"9\" fill=\"none\" stroke=\"#e07b00\" stroke-width=\"1.6\"/><line x1=\"188\" x2=\"213\" y1=\"0\" y2=\"0\" stroke=\"#e07b00\" stroke-width=\"2\" stroke-dasharray=\"6,3\"/><text x=\"219\" y=\"4\">decode steps (dashed, hollow squares, underneath)</text><line x1=\"548\" x2=\"573\" y1=\"0\" y2=\"0\" stroke=\"#9aa3ad\" stroke-dasharray=\"5,4\"/><text x=\"579\" y=\"4\">tolerance</text><text x=\"648\" y=\"4\" fill=\"#55606d\">(worst over positions, log scale)</text></g>"
    );
    let _ = writeln!(s, "</svg>");
    if !name_stages {
        // Too many stages to name each: the order within every layer, once.
        let mut order: Vec<&str> = Vec::new();
        for st in &m.stages {
            if st.stage.starts_with("blk.") {
                let short = stage_short(&st.stage);
                if !order.contains(&short) {
                    order.push(short);
                }
            }
        }
        if !order.is_empty() {
            let _ = writeln!(
                s,
                "<div class=\"meta\">Within each layer, left to right: {}.</div>",
                esc(&order.join(", "))
            );
        }
    }
    s
}
