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
