//! `report.md` and `report.html` from a receipt: regressions first, then a summary table
//! (model × verdict × first divergence × speed ratio), then per-model details.
//!
//! The HTML is one self-contained file: inline CSS, inline SVG charts, no script, no font,
//! no image or link that leaves the file, so it opens the same offline and in a mail
//! attachment. Each model's chart plots the worst engine-vs-oracle NMSE per stage in
//! evaluation order on a log scale, prompt and decode, against the tolerance in force.

use super::receipt::*;
use std::fmt::Write as _;

/// Regressions listed one by one per model in the reports (the receipt has them all).
const MAX_LISTED: usize = 20;

fn listed(changes: &[Change]) -> Vec<Change> {
    let mut seen: std::collections::HashMap<&str, usize> = Default::default();
    changes
        .iter()
        .filter(|c| {
            let n = seen.entry(c.model.as_str()).or_default();
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

fn headline(r: &Receipt) -> String {
    let s = &r.summary;
    format!(
        "{} models: {} pass, {} fail, {} error, {} skipped · {} trials, {} failed · {} regression{}",
        s.models,
        s.passed,
        s.failed,
        s.errors,
        s.skipped,
        s.trials,
        s.trials_failed,
        s.regressions,
        if s.regressions == 1 { "" } else { "s" }
    )
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
    let mut f = vec![format!("source: {}", m.source)];
    if let Some(file) = &m.file {
        f.push(format!(
            "file: {file} ({} bytes, sha256 {})",
            m.bytes.unwrap_or(0),
            m.sha256.as_deref().unwrap_or("?")
        ));
    }
    if let (Some(a), Some(w), Some(l)) = (&m.arch, &m.weight_type, m.n_layer) {
        f.push(format!(
            "arch {a}, weights {w}, {l} layers, {} thread(s), tokenizer {}",
            m.threads, m.tokenizer
        ));
    }
    f.push(format!(
        "verdict: {} ({} pass, {} fail, {} ignored) in {:.1} s",
        m.status.as_str(),
        m.counts.pass,
        m.counts.fail,
        m.counts.ignored,
        m.seconds
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
            (Some(e), Some(x)) => format!(", engine = truth {e}, oracle = truth {x}"),
            _ => String::new(),
        };
        f.push(format!(
            "tokenizer parity over {} input×mode comparisons: engine = oracle {}{truth}",
            t.comparisons, t.engine_eq_oracle
        ));
    }
    match (&m.speed, &m.speed_error) {
        (Some(s), _) => f.push(format!(
            "speed ({} prompt tokens, {} decode, median of {}): prefill engine {:.1} vs oracle {:.1} tok/s ({}), decode {:.1} vs {:.1} tok/s ({})",
            s.prompt_tokens,
            s.decode_tokens,
            s.reps,
            s.engine.prefill_tok_s,
            s.oracle.prefill_tok_s,
            ratio(s.prefill_ratio),
            s.engine.decode_tok_s,
            s.oracle.decode_tok_s,
            ratio(s.decode_ratio)
        )),
        (None, Some(e)) => f.push(format!("speed: not measured: {e}")),
        _ => {}
    }
    f
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
        "- models: {} · cases: {} · took {:.0} s",
        r.settings.models_file, r.settings.cases_dir, r.duration_seconds
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
                    "| model | regressions | where to look first |\n|---|---|---|"
                );
                for g in super::baseline::groups(&c.regressions) {
                    let _ = writeln!(
                        o,
                        "| {} | {} | {} |",
                        md_cell(g.model),
                        g.counts_text(),
                        md_cell(&g.lead(r))
                    );
                }
                let _ = writeln!(
                    o,
                    "\nThe first {} per model (all of them are in receipt.json):\n",
                    MAX_LISTED
                );
                let _ = writeln!(o, "| kind | model | what | detail |\n|---|---|---|---|");
                for x in listed(&c.regressions) {
                    let _ = writeln!(
                        o,
                        "| {} | {} | `{}` | {} |",
                        x.kind.label(),
                        md_cell(&x.model),
                        md_cell(&x.what),
                        md_cell(&x.detail)
                    );
                }
                o.push('\n');
            }
            if !c.improvements.is_empty() {
                let _ = writeln!(o, "## Fixed ({})\n", c.improvements.len());
                let _ = writeln!(o, "| kind | model | what | detail |\n|---|---|---|---|");
                for x in &c.improvements {
                    let _ = writeln!(
                        o,
                        "| {} | {} | `{}` | {} |",
                        x.kind.label(),
                        md_cell(&x.model),
                        md_cell(&x.what),
                        md_cell(&x.detail)
                    );
                }
                o.push('\n');
            }
        }
    }
    let _ = writeln!(o, "## Summary\n");
    let _ = writeln!(o, "| model | verdict | trials pass/fail/ignored | first divergence | worst NMSE | prefill ratio | decode ratio | time |");
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
    for m in &r.models {
        let (p, d) = speed_cells(m);
        let _ = writeln!(
            o,
            "| {} | {} | {}/{}/{} | {} | {} | {p} | {d} | {:.1} s |",
            md_cell(&m.name),
            m.status.as_str(),
            m.counts.pass,
            m.counts.fail,
            m.counts.ignored,
            md_cell(&divergence_label(m)),
            exact_label(m),
            m.seconds
        );
    }
    let _ = writeln!(
        o,
        "\nRatios are engine / oracle tok/s (above 1: the engine is faster).\n"
    );
    let _ = writeln!(o, "## Models\n");
    for m in &r.models {
        let _ = writeln!(o, "### {}\n", m.name);
        for fact in model_facts(m) {
            let _ = writeln!(o, "- {}", md_cell(&fact));
        }
        let failures: Vec<&TrialResult> = m
            .cases
            .iter()
            .flat_map(|c| &c.trials)
            .filter(|t| t.verdict == Verdict::Fail)
            .collect();
        if !failures.is_empty() {
            let _ = writeln!(o, "\nFailed trials ({}; first 20):\n", failures.len());
            for t in failures.iter().take(20) {
                let _ = writeln!(
                    o,
                    "- `{}`: {}",
                    t.name,
                    md_cell(
                        t.message
                            .as_deref()
                            .and_then(|m| m.lines().next())
                            .unwrap_or("")
                    )
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

/// An anchor id from a model name.
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
.box{border-radius:6px;padding:8px 12px;margin:10px 0}.bad{background:#fdecea;border:1px solid #f2b8b5}.good{background:#e8f5ec;border:1px solid #b5dcc2}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;background:#f1f3f6;padding:0 3px;border-radius:3px}
details{margin:6px 0}summary{cursor:pointer;color:#2a5db0}
.facts{margin:4px 0 8px 18px;padding:0}.facts li{margin:1px 0}
svg{background:#fff;border:1px solid #d8dde3;border-radius:4px}
";

fn verdict_span(s: Status) -> String {
    format!("<span class=\"{}\">{}</span>", s.as_str(), s.as_str())
}

fn changes_table(o: &mut String, changes: &[Change]) {
    let _ = writeln!(
        o,
        "<table><tr><th>kind</th><th>model</th><th>what</th><th>detail</th></tr>"
    );
    for x in changes {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td><a href=\"#{}\">{}</a></td><td><code>{}</code></td><td>{}</td></tr>",
            esc(x.kind.label()),
            anchor(&x.model),
            esc(&x.model),
            esc(&x.what),
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
        "<div>models: {} · cases: {} · took {:.0} s</div>",
        esc(&r.settings.models_file),
        esc(&r.settings.cases_dir),
        r.duration_seconds
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
            let _ = writeln!(o, "<h2>Regressions ({})</h2>", c.regressions.len());
            if c.regressions.is_empty() {
                let _ = writeln!(
                    o,
                    "<div class=\"box good\">No regressions against the baseline.</div>"
                );
            } else {
                let _ = writeln!(o, "<div class=\"box bad\"><table><tr><th>model</th><th>regressions</th><th>where to look first</th></tr>");
                for g in super::baseline::groups(&c.regressions) {
                    let _ = writeln!(
                        o,
                        "<tr><td><a href=\"#{}\">{}</a></td><td>{}</td><td>{}</td></tr>",
                        anchor(g.model),
                        esc(g.model),
                        esc(&g.counts_text()),
                        esc(&g.lead(r))
                    );
                }
                let _ = writeln!(o, "</table><details><summary>The first {MAX_LISTED} per model (all are in receipt.json)</summary>");
                changes_table(&mut o, &listed(&c.regressions));
                let _ = writeln!(o, "</details></div>");
            }
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
    }

    let _ = writeln!(o, "<h2>Summary</h2>\n<table><tr><th>model</th><th>verdict</th><th>trials pass / fail / ignored</th><th>first divergence</th><th>worst NMSE</th><th>prefill ratio</th><th>decode ratio</th><th>time</th></tr>");
    for m in &r.models {
        let (p, d) = speed_cells(m);
        let _ = writeln!(
            o,
            "<tr><td><a href=\"#{}\">{}</a></td><td>{}</td><td class=\"num\">{} / {} / {}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{p}</td><td class=\"num\">{d}</td><td class=\"num\">{:.1} s</td></tr>",
            anchor(&m.name),
            esc(&m.name),
            verdict_span(m.status),
            m.counts.pass,
            m.counts.fail,
            m.counts.ignored,
            esc(&divergence_label(m)),
            esc(&exact_label(m)),
            m.seconds
        );
    }
    let _ = writeln!(o, "</table><div class=\"meta\">Ratios are engine / oracle tok/s (above 1: the engine is faster).</div>");

    let _ = writeln!(o, "<h2>Models</h2>");
    for m in &r.models {
        let _ = writeln!(
            o,
            "<h3 id=\"{}\">{} — {}</h3><ul class=\"facts\">",
            anchor(&m.name),
            esc(&m.name),
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
                .filter(|x| x.model == m.name)
                .cloned()
                .collect();
            if !mine.is_empty() {
                let _ = writeln!(o, "<details class=\"box bad\"><summary><b>{} regression(s) of this model</b></summary>", mine.len());
                changes_table(&mut o, &listed(&mine));
                let _ = writeln!(o, "</details>");
            }
        }
        if !m.stages.is_empty() {
            o.push_str(&chart(m));
            let _ = writeln!(o, "<details><summary>Worst NMSE per stage ({} stages)</summary><table><tr><th>stage</th><th>prompt</th><th>decode</th><th>limit</th><th>bit-exact</th></tr>", m.stages.len());
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
        let failures: Vec<&TrialResult> = m
            .cases
            .iter()
            .flat_map(|c| &c.trials)
            .filter(|t| t.verdict == Verdict::Fail)
            .collect();
        if !failures.is_empty() {
            let _ = writeln!(o, "<details open><summary>Failed trials ({})</summary><table><tr><th>trial</th><th>message</th></tr>", failures.len());
            for t in failures.iter().take(50) {
                let _ = writeln!(o, "<tr><td><code>{}</code></td><td><pre style=\"white-space:pre-wrap;margin:0;font-size:12px\">{}</pre></td></tr>", esc(&t.name), esc(t.message.as_deref().unwrap_or("")));
            }
            if failures.len() > 50 {
                let _ = writeln!(
                    o,
                    "<tr><td colspan=\"2\">… {} more in receipt.json</td></tr>",
                    failures.len() - 50
                );
            }
            let _ = writeln!(o, "</table></details>");
        }
    }
    let _ = writeln!(o, "</body></html>");
    o
}

/// The NMSE chart of one model: stages in evaluation order on x, log10 NMSE on y; bit-exact
/// values sit on the bottom line (labelled "bit-exact"), non-finite ones on the top.
fn chart(m: &ModelResult) -> String {
    const W: f64 = 1060.0;
    const H: f64 = 300.0;
    const L: f64 = 70.0;
    const R: f64 = 16.0;
    const T: f64 = 26.0;
    const B: f64 = 44.0;
    let floor = -12.0f64; // log10 of the "bit-exact" line
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
    let n = m.stages.len().max(1);
    let x = |i: usize| L + (W - L - R) * (i as f64 + 0.5) / n as f64;
    let y = |lg: f64| T + (H - T - B) * (top - lg.clamp(floor, top)) / (top - floor);
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
        "<svg width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"worst NMSE by stage for {}\" font-family=\"system-ui,sans-serif\" font-size=\"11\">",
        esc(&m.name)
    );
    // Decade grid.
    let step = if top - floor > 10.0 { 2 } else { 1 };
    let mut d = floor as i32;
    while d as f64 <= top - 1.0 {
        let yy = y(d as f64);
        let label = if d as f64 == floor {
            "bit-exact".to_string()
        } else {
            format!("1e{d}")
        };
        let _ = writeln!(s, "<line x1=\"{L}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#e6e9ee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#55606d\">{label}</text>", W - R, L - 6.0, yy + 4.0);
        d += step;
    }
    let ytop = y(top);
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#b3261e\">non-finite</text>",
        L - 6.0,
        ytop + 4.0
    );
    // Layer boundaries and labels.
    let mut last_layer: Option<String> = None;
    for (i, st) in m.stages.iter().enumerate() {
        let layer = st
            .stage
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .map(|l| format!("blk.{l}"));
        let group = layer.clone().unwrap_or_else(|| st.stage.clone());
        if last_layer.as_ref() != Some(&group) {
            let xx = x(i) - (W - L - R) / n as f64 / 2.0;
            let _ = writeln!(s, "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{T}\" y2=\"{}\" stroke=\"#cfd5dc\" stroke-dasharray=\"2,3\"/>", H - B);
            let short = group
                .strip_prefix("result_")
                .map_or(group.clone(), |r| r.to_string());
            let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{}\" fill=\"#55606d\" transform=\"rotate(35 {:.1} {})\">{}</text>", xx + 2.0, H - B + 14.0, xx + 2.0, H - B + 14.0, esc(&short));
            last_layer = Some(group);
        }
    }
    // Tolerance in force: a dashed step line.
    let mut path = String::new();
    for (i, st) in m.stages.iter().enumerate() {
        let half = (W - L - R) / n as f64 / 2.0;
        let yy = y(lg(st.nmse_limit));
        let _ = write!(
            path,
            "{}{:.1},{yy:.1} L{:.1},{yy:.1} ",
            if i == 0 { "M" } else { "L" },
            x(i) - half,
            x(i) + half
        );
    }
    let _ = writeln!(
        s,
        "<path d=\"{path}\" fill=\"none\" stroke=\"#9aa3ad\" stroke-dasharray=\"5,4\"/>"
    );
    // Series: prompt and decode.
    for (name, is_prompt, color, pick) in [
        (
            "prompt",
            true,
            "#2a5db0",
            (|s: &StageWorst| s.worst_nmse_prompt) as fn(&StageWorst) -> Option<f64>,
        ),
        ("decode", false, "#e07b00", |s: &StageWorst| {
            s.worst_nmse_decode
        }),
    ] {
        let mut line = String::new();
        let mut dots = String::new();
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
            let _ = writeln!(
                dots,
                "<circle cx=\"{:.1}\" cy=\"{yy:.1}\" r=\"3\" fill=\"{}\"><title>{} {name}: NMSE {label} (limit {:.0e})</title></circle>",
                x(i),
                if v.is_none() { "#b3261e" } else { color },
                esc(&st.stage),
                st.nmse_limit
            );
        }
        if !line.is_empty() {
            let _ = writeln!(s, "<path d=\"{line}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" opacity=\"0.8\"/>");
        }
        s.push_str(&dots);
    }
    // Legend.
    let lx = W - R - 330.0;
    let _ = writeln!(
        s,
        "<g transform=\"translate({lx},12)\"><circle cx=\"0\" cy=\"0\" r=\"3\" fill=\"#2a5db0\"/><text x=\"8\" y=\"4\">prompt</text><circle cx=\"70\" cy=\"0\" r=\"3\" fill=\"#e07b00\"/><text x=\"78\" y=\"4\">decode</text><line x1=\"140\" x2=\"165\" y1=\"0\" y2=\"0\" stroke=\"#9aa3ad\" stroke-dasharray=\"5,4\"/><text x=\"171\" y=\"4\">tolerance</text><text x=\"238\" y=\"4\" fill=\"#55606d\">(worst NMSE, log)</text></g>"
    );
    let _ = writeln!(s, "<text x=\"{L}\" y=\"14\" font-weight=\"600\">engine vs oracle: worst NMSE per stage</text>");
    let _ = writeln!(s, "</svg>");
    s
}
