//! `bitprobe sweep`: every model of models.toml through its cases.

use crate::*;

/// `2026-11-22T101500Z`: a sortable folder name without colons.
pub(crate) fn utc_stamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(':', "")
}

/// The newest `receipt.json` in a folder next to `out` (not `out` itself).
pub(crate) fn previous_receipt(out: &std::path::Path) -> Option<PathBuf> {
    let parent = out.parent()?;
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for e in std::fs::read_dir(parent).ok()?.flatten() {
        let dir = e.path();
        if dir == out || !dir.is_dir() {
            continue;
        }
        let r = dir.join("receipt.json");
        if let Ok(t) = r.metadata().and_then(|m| m.modified()) {
            if best.as_ref().is_none_or(|(bt, _)| t > *bt) {
                best = Some((t, r));
            }
        }
    }
    best.map(|(_, p)| p.canonicalize().unwrap_or(p))
}

pub(crate) fn sweep(mut a: SweepArgs) -> Result<ExitCode> {
    let root = harness::snapshot::workspace_root();
    let models_file = a.models.take().unwrap_or_else(|| root.join("models.toml"));
    let cases_dir = a.cases.take().unwrap_or_else(|| root.join("cases"));
    use harness::sweep::{self, receipt::Status, Event};
    use indicatif::{ProgressBar, ProgressStyle};
    use std::io::IsTerminal;

    let models = sweep::models::load(&models_file).map_err(anyhow::Error::msg)?;
    if !cases_dir.is_dir() {
        bail!(
            "cases folder {} does not exist (give one with --cases)",
            cases_dir.display()
        );
    }
    if let Some(f) = &a.inject_fault {
        if !harness::trials::faults_built() {
            bail!("--inject-fault {f}: this bitprobe was built without fault injection; build with `cargo build -p harness --release --features faults`");
        }
        engine::faults::Fault::from_name(f).map_err(|e| {
            anyhow::anyhow!(
                "--inject-fault: {e}; known: {}",
                engine::faults::Fault::NAMES.join(", ")
            )
        })?;
    }
    if !(0.0..1.0).contains(&a.speed_tolerance) {
        bail!("--speed-tolerance must be in [0, 1), e.g. 0.1 for 10%");
    }
    if a.reps == 0 || a.prompt_tokens == 0 || a.decode_tokens == 0 {
        bail!("--reps, --prompt-tokens and --decode-tokens must be at least 1");
    }
    let out = a.out.clone().unwrap_or_else(|| {
        harness::snapshot::workspace_root()
            .join("target/bitprobe-sweep")
            .join(utc_stamp())
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let baseline_path = match a.baseline.as_deref() {
        Some("none") => None,
        Some(p) => {
            let p = PathBuf::from(p);
            Some(if p.is_dir() {
                p.join("receipt.json")
            } else {
                p
            })
        }
        None => previous_receipt(&out),
    };
    // Read the baseline first: a bad one is a usage error before a long run, not after.
    let baseline = match &baseline_path {
        Some(p) => Some(sweep::baseline::load(p).map_err(anyhow::Error::msg)?),
        None => None,
    };

    let req = sweep::SweepRequest {
        models,
        cases_dir: cases_dir.clone(),
        inject_fault: a.inject_fault.clone(),
        jobs: a
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        speed: sweep::receipt::SpeedSettings {
            prompt_tokens: a.prompt_tokens,
            decode_tokens: a.decode_tokens,
            reps: a.reps,
        },
        only: a.only.clone(),
    };
    let mut req = req;
    if a.no_speed {
        for m in &mut req.models.models {
            m.speed = false;
        }
    }
    let tty = std::io::stderr().is_terminal();
    let bar = if tty {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:.bold} {msg:24} [{bar:32}] {pos}/{len} trials {elapsed_precise}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let selected = req
        .models
        .models
        .iter()
        .filter(|m| a.only.as_ref().is_none_or(|o| m.name.contains(o.as_str())))
        .count();
    if selected == 0 {
        bail!(
            "no model in {} has a name containing {:?}",
            models_file.display(),
            a.only.as_deref().unwrap_or("")
        );
    }
    eprintln!(
        "sweep: {selected} {} from {} → {}",
        if selected == 1 { "model" } else { "models" },
        models_file.display(),
        out.display()
    );
    if let Some(p) = &baseline_path {
        eprintln!("sweep: baseline {}", p.display());
    }
    let progress = |ev: Event| match ev {
        Event::ModelStart { index, of, name } => {
            bar.set_prefix(format!("[{index}/{of}]"));
            bar.set_message(name.to_string());
            bar.set_length(0);
            bar.set_position(0);
        }
        Event::Trials { count } => bar.set_length(count as u64),
        Event::TrialDone => bar.inc(1),
        Event::Speed => bar.set_message(format!("{} (speed)", bar.message())),
        Event::ModelDone {
            index,
            of,
            result: m,
        } => {
            let speed = m.speed.as_ref().map_or(String::new(), |s| {
                format!(
                    "; prefill {:.2}×, decode {:.2}×",
                    s.prefill_ratio, s.decode_ratio
                )
            });
            let what = match m.status {
                Status::Pass | Status::Fail => format!(
                    "{} ({} pass, {} fail, {} ignored){}{speed}",
                    m.status.as_str(),
                    m.counts.pass,
                    m.counts.fail,
                    m.counts.ignored,
                    m.first_divergence
                        .as_ref()
                        .map_or(String::new(), |d| format!(
                            "; first divergence {} at {}",
                            d.stage, d.phase
                        )),
                ),
                Status::Error | Status::Skipped => format!(
                    "{}: {}",
                    m.status.as_str(),
                    m.error.as_deref().unwrap_or("")
                ),
            };
            let line = format!(
                "sweep: [{index}/{of}] {}: {what} in {:.1} s",
                m.display_name(),
                m.seconds
            );
            if tty {
                bar.println(line);
            } else {
                eprintln!("{line}");
            }
        }
    };
    let mut receipt = sweep::run(&req, &progress);
    bar.finish_and_clear();
    if let (Some(b), Some(p)) = (&baseline, &baseline_path) {
        // Also attaches the trend: the baseline's series of runs.
        sweep::attach_baseline(&mut receipt, b, p, a.speed_tolerance);
    }
    if receipt.trend.is_empty() {
        // No baseline (`--baseline none`): the trend is still the runs kept next to --out.
        sweep::attach_trend(&mut receipt, &out);
    }
    let write = |name: &str, text: String| -> Result<PathBuf> {
        let p = out.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    };
    write(
        "receipt.json",
        serde_json::to_string_pretty(&receipt)? + "\n",
    )?;
    write("report.md", sweep::report::markdown(&receipt))?;
    let html = write("report.html", sweep::report::html(&receipt))?;
    let s = &receipt.summary;
    let bad = match &receipt.comparison {
        Some(c) => {
            for g in sweep::baseline::groups(&c.regressions) {
                eprintln!(
                    "regression: {}: {}; {}",
                    g.model,
                    g.counts_text(),
                    g.lead(&receipt)
                );
            }
            eprintln!(
                "sweep: {} against {}",
                match (c.regressions.len(), c.improvements.len()) {
                    (1, f) => format!("1 regression, {f} fixed"),
                    (r, f) => format!("{r} regressions, {f} fixed"),
                },
                c.baseline
            );
            !c.regressions.is_empty()
        }
        None => {
            eprintln!("sweep: no baseline; failures count as regressions on a first run");
            s.failed + s.errors > 0
        }
    };
    eprintln!("sweep: {}", sweep::report::summary_line(&receipt));
    eprintln!(
        "sweep: wrote {}/{{receipt.json, report.md}} and {}",
        out.display(),
        html.display()
    );
    Ok(if bad {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
