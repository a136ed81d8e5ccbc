//! `bitprobe gallery`: the known-bug gallery.

use crate::*;

pub(crate) fn gallery(a: GalleryArgs) -> Result<ExitCode> {
    use harness::trials::{faults_built, gallery_run, GalleryResult};
    if !faults_built() {
        eprintln!(
            "error: this bitprobe was built without fault injection; the gallery needs it:\n  \
             cargo build -p harness --release --features faults"
        );
        return Ok(ExitCode::from(2));
    }
    let cases = a.cases.clone().unwrap_or_else(|| {
        harness::snapshot::workspace_root()
            .join("cases")
            .join("gallery")
    });
    let root = cases.parent().unwrap_or(&cases).to_path_buf();
    let files = harness::case::discover(&cases);
    if files.is_empty() {
        bail!("no gallery cases (*.toml) in {}", cases.display());
    }
    let runs = harness::runs::Runs::default();
    let mut results: Vec<(GalleryResult, f64)> = Vec::new();
    let mut on_rows: Vec<OnRow> = Vec::new();
    for file in files {
        let case =
            harness::case::load(&file, &root).map_err(|e| anyhow::anyhow!("{}", e.message))?;
        let Some(fault) = case.fault.clone() else {
            bail!("{}: a gallery case needs `fault`", file.display())
        };
        if a.filter
            .as_ref()
            .is_some_and(|f| !fault.contains(f.as_str()))
        {
            continue;
        }
        if let Some(preset) = &a.on {
            on_rows.push(on_model(&runs, &case, preset, &a.prompt, a.decode)?);
            if !a.json {
                let r = on_rows.last().expect("just pushed");
                eprintln!("{:<22} {}", r.fault, r.says);
            }
            continue;
        }
        let t = std::time::Instant::now();
        let r = gallery_run(&runs, &case).map_err(|e| anyhow::anyhow!("{}: {e}", case.id))?;
        let secs = t.elapsed().as_secs_f64();
        if !a.json {
            eprintln!(
                "{:<22} {} ({secs:.1} s)",
                fault,
                if r.pass { "ok" } else { "FAIL" }
            );
        }
        results.push((r, secs));
    }
    if let Some(preset) = &a.on {
        return render_on(preset, &a, &on_rows, files_reference(&on_rows));
    }
    let all_pass = results.iter().all(|(r, _)| r.pass);
    if a.json {
        let rows: Vec<serde_json::Value> = results
            .iter()
            .map(|(r, secs)| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["detected"] = r.detected().into();
                v["seconds"] = (*secs).into();
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(if all_pass {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let rows: Vec<harness::trials::GalleryResult> = results.into_iter().map(|(r, _)| r).collect();
    print!("{}", harness::trials::render_gallery(&rows));
    Ok(if all_pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One fault run on another model (`--on`): what the faulty engine says, and what bitprobe
/// names.
#[derive(serde::Serialize)]
struct OnRow {
    fault: String,
    /// The faulty engine's greedy text.
    says: String,
    /// The reference's, on the same prompt (the same for every row).
    reference_says: String,
    result: harness::trials::GalleryResult,
}

fn files_reference(rows: &[OnRow]) -> String {
    rows.first()
        .map(|r| r.reference_says.clone())
        .unwrap_or_default()
}

/// A gallery case re-aimed at `preset` with one prompt: its fault, the texts, the diff.
fn on_model(
    runs: &harness::runs::Runs,
    case: &harness::case::Case,
    preset: &str,
    text: &str,
    decode: usize,
) -> Result<OnRow> {
    use harness::case::Prompt;
    use harness::probes::ModelSpec;
    engine::forge::preset(preset).map_err(|e| anyhow::anyhow!("--on: {e}"))?;
    let mut c = case.clone();
    c.model = ModelSpec::Preset {
        name: preset.to_string(),
        seed: 1,
    };
    c.id = format!("{}@{preset}", case.id);
    let mut p = Prompt::text(text);
    p.decode = decode;
    c.prompts = vec![p.clone()];
    let says = harness::trials::greedy_text(runs, &c, &ProbeSpec::Engine, &p, decode + 1)
        .map_err(anyhow::Error::msg)?;
    let reference_says = harness::trials::greedy_text(runs, &c, &c.reference, &p, decode + 1)
        .map_err(anyhow::Error::msg)?;
    let result =
        harness::trials::gallery_run(runs, &c).map_err(|e| anyhow::anyhow!("{}: {e}", c.id))?;
    Ok(OnRow {
        fault: case.fault.clone().unwrap_or_default(),
        says,
        reference_says,
        result,
    })
}

fn render_on(
    preset: &str,
    a: &GalleryArgs,
    rows: &[OnRow],
    reference_says: String,
) -> Result<ExitCode> {
    if a.json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{preset} · {:?} · the reference says {reference_says:?}\n",
        a.prompt
    );
    println!(
        "{:<22} {:<28} {:<54} nmse",
        "fault", "the faulty engine says", "first divergence bitprobe names"
    );
    let (mut changed, mut silent_but_named, mut unseen) = (0, 0, 0);
    for r in rows {
        let same = r.says == r.reference_says;
        let says = format!("{:?}{}", r.says, if same { " (same)" } else { "" });
        let named = r.result.reported.as_ref().map_or_else(
            || "— nothing: every value within tolerance".to_string(),
            |d| {
                format!(
                    "{} @ {} pos {}{}",
                    d.site,
                    d.phase,
                    d.position,
                    if r.result.within_tolerance {
                        " (bit-exactness only)"
                    } else {
                        ""
                    }
                )
            },
        );
        let nmse = r
            .result
            .nmse
            .map_or("-".to_string(), harness::diff::fmt_metric);
        println!("{:<22} {says:<28} {named:<54} {nmse}", r.fault);
        match (same, r.result.detected()) {
            (false, _) => changed += 1,
            (true, true) => silent_but_named += 1,
            (true, false) => unseen += 1,
        }
    }
    println!(
        "\n{changed} faults change what it says; {silent_but_named} leave the answer right and are named anyway; {unseen} leave no trace on this model (a fault of the other arch, or too small to matter)"
    );
    println!(
        "reproduce a row: bitprobe diff --preset {preset} -p {:?} -n {} --inject-fault FAULT",
        a.prompt, a.decode
    );
    Ok(ExitCode::SUCCESS)
}
