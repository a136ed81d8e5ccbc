//! `bitprobe sweep` end to end on a tiny model: the receipt validates against its JSON
//! schema, the HTML report is self-contained, a broken model is a row (not the end of the
//! sweep), a second run against the first has no regressions, and an injected engine fault
//! and a speed-ratio drop are listed as regressions with exit code 1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn sweep(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bitprobe"))
        .arg("sweep")
        .args(args)
        .output()
        .expect("run bitprobe sweep")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

fn assert_schema_valid(receipt: &serde_json::Value) {
    let schema = read_json(&root().join("docs/receipt.schema.json"));
    let v = jsonschema::validator_for(&schema).expect("the receipt schema is a valid JSON Schema");
    let errors: Vec<String> = v
        .iter_errors(receipt)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "receipt does not match docs/receipt.schema.json:\n{}",
        errors.join("\n")
    );
}

/// Nothing in the page may reach outside the file: no scripts, stylesheets, images, fonts,
/// frames or links with a scheme.
fn assert_self_contained(html: &str) {
    let lower = html.to_lowercase();
    for bad in [
        "http:", "https:", "<script", "<link", "<img", "<iframe", "<object", "<embed", "@import",
        "url(", "src=", "//cdn", "file:/",
    ] {
        assert!(!lower.contains(bad), "report.html contains {bad:?}");
    }
    for href in lower.split("href=\"").skip(1) {
        assert!(
            href.starts_with('#'),
            "report.html links outside itself: href=\"{}",
            &href[..href.len().min(60)]
        );
    }
    assert!(lower.contains("<svg"), "report.html has no chart");
}

#[test]
fn sweep_receipt_reports_and_regressions() {
    let dir = std::env::temp_dir().join(format!("bitprobe-sweep-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cases = dir.join("cases");
    std::fs::create_dir_all(cases.join("mini")).unwrap();
    std::fs::write(
        cases.join("mini/hello.toml"),
        "description = \"one short prompt, a few decode steps\"\nmodel = { preset = \"tiny-f32\" }\n\n[compare]\nstages = [\"attn_q\", \"ffn_sub_out\", \"l_out\", \"result_output\"]\n\n[[prompts]]\nid = \"hello\"\ntext = \"Hello world\"\ndecode = 3\n",
    )
    .unwrap();
    let garbage = dir.join("not-a-model.gguf");
    std::fs::write(&garbage, b"this is not a GGUF file").unwrap();
    let models = dir.join("models.toml");
    std::fs::write(
        &models,
        format!(
            "[defaults]\ncases = [\"mini/*\"]\n\n[[model]]\npreset = \"tiny-i2s\"\n\n[[model]]\nname = \"broken\"\npath = \"{}\"\nspeed = false\n\n[[model]]\nname = \"absent\"\npath = \"{}\"\n",
            garbage.display(),
            dir.join("nowhere.gguf").display()
        ),
    )
    .unwrap();
    let runs = dir.join("runs");
    let common = |out: &str| -> Vec<String> {
        vec![
            "--models".into(),
            models.display().to_string(),
            "--cases".into(),
            cases.display().to_string(),
            "--out".into(),
            runs.join(out).display().to_string(),
            "--prompt-tokens".into(),
            "8".into(),
            "--decode-tokens".into(),
            "8".into(),
            "--reps".into(),
            "1".into(),
            // Tiny-model timings are noisy; this test checks the drop rule with a doctored
            // baseline below, not the machine's steadiness.
            "--speed-tolerance".into(),
            "0.9".into(),
        ]
    };
    let args = |out: &str, extra: &[&str]| {
        let mut v = common(out);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };

    // Run 1: no baseline. The broken model is an error row; the sweep still finishes.
    let a1 = args("1", &["--baseline", "none"]);
    let o = sweep(&a1.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        o.status.code(),
        Some(1),
        "a first run with a broken model exits 1:\n{}",
        text(&o)
    );
    let r1 = read_json(&runs.join("1/receipt.json"));
    assert_schema_valid(&r1);
    let models_out = r1["models"].as_array().unwrap();
    assert_eq!(models_out.len(), 3);
    assert_eq!(models_out[0]["status"], "pass", "{}", text(&o));
    assert!(models_out[0]["counts"]["pass"].as_u64().unwrap() > 10);
    assert!(models_out[0]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["bit_exact"] == true));
    assert!(models_out[0]["speed"]["decode_ratio"].as_f64().unwrap() > 0.0);
    assert_eq!(models_out[0]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(models_out[1]["status"], "error");
    assert!(
        models_out[1]["error"]
            .as_str()
            .unwrap()
            .contains("not-a-model.gguf"),
        "{}",
        models_out[1]["error"]
    );
    assert_eq!(models_out[2]["status"], "skipped");
    assert!(models_out[2]["error"]
        .as_str()
        .unwrap()
        .contains("nowhere.gguf"));
    assert_eq!(
        r1["oracle"]["patches"].as_array().unwrap().len(),
        std::fs::read_dir(root().join("oracle/patches"))
            .unwrap()
            .filter(|e| e
                .as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "patch")))
            .count()
    );
    let html = std::fs::read_to_string(runs.join("1/report.html")).unwrap();
    assert_self_contained(&html);
    assert!(html.contains("tiny-i2s") && html.contains("not-a-model.gguf"));
    let md = std::fs::read_to_string(runs.join("1/report.md")).unwrap();
    assert!(
        md.contains("| tiny-i2s | pass |")
            && md.contains("| broken | error |")
            && md.contains("| absent | skipped |"),
        "{md}"
    );

    // Run 2: the baseline defaults to run 1; nothing changed, so no regression. Without
    // speed figures: two tiny-model timings on a loaded machine can differ a hundredfold
    // (seen: a 3.48× decode ratio, then 0.02×), and this test must not depend on the load.
    let o = sweep(
        &args("2", &["--no-speed"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "a repeat run has no regressions:\n{}",
        text(&o)
    );
    let r2 = read_json(&runs.join("2/receipt.json"));
    assert_schema_valid(&r2);
    assert!(r2["comparison"]["baseline"]
        .as_str()
        .unwrap()
        .ends_with("receipt.json"));
    assert_eq!(
        r2["comparison"]["regressions"].as_array().unwrap().len(),
        0,
        "{}",
        r2["comparison"]
    );

    // Run 3: an injected engine fault is a regression, listed before the summary.
    let o = sweep(
        &args(
            "3",
            &[
                "--baseline",
                &runs.join("2").display().to_string(),
                "--inject-fault",
                "relu2_for_silu",
            ],
        )
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "an injected fault must be a regression:\n{}",
        text(&o)
    );
    let r3 = read_json(&runs.join("3/receipt.json"));
    assert_schema_valid(&r3);
    assert_eq!(r3["settings"]["injected_fault"], "relu2_for_silu");
    let regs = r3["comparison"]["regressions"].as_array().unwrap();
    assert!(
        regs.iter().any(|x| x["kind"] == "new_failure"
            && x["model"] == "tiny-i2s"
            && x["what"].as_str().unwrap().contains("ffn_sub_out")),
        "{regs:?}"
    );
    assert_eq!(
        r3["models"][0]["first_divergence"]["stage"], "blk.0.ffn_sub_out",
        "{}",
        r3["models"][0]["first_divergence"]
    );
    let md = std::fs::read_to_string(runs.join("3/report.md")).unwrap();
    let (reg, summary) = (
        md.find("## Regressions").unwrap(),
        md.find("## Summary").unwrap(),
    );
    assert!(
        reg < summary && md[reg..summary].contains("new failure"),
        "{md}"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("regression: tiny-i2s: "),
        "{}",
        text(&o)
    );
    let html = std::fs::read_to_string(runs.join("3/report.html")).unwrap();
    assert_self_contained(&html);
    assert!(html.find("Regressions").unwrap() < html.find("Summary").unwrap());

    // Run 4: against a baseline (run 1's figures) whose engine was a thousand times as fast
    // relative to the oracle: a drop whatever the machine's load does to this run.
    let mut fast = r1.clone();
    let s = &mut fast["models"][0]["speed"];
    for k in ["prefill_ratio", "decode_ratio"] {
        s[k] = (s[k].as_f64().unwrap() * 1000.0).into();
        let range = format!("{k}_range");
        for i in 0..2 {
            s[&range][i] = (s[&range][i].as_f64().unwrap() * 1000.0).into();
        }
    }
    let fast_path = dir.join("fast-baseline.json");
    std::fs::write(&fast_path, serde_json::to_string(&fast).unwrap()).unwrap();
    let o = sweep(
        &args("4", &["--baseline", &fast_path.display().to_string()])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "a 1000× speed-ratio drop must be a regression:\n{}",
        text(&o)
    );
    let r4 = read_json(&runs.join("4/receipt.json"));
    let regs = r4["comparison"]["regressions"].as_array().unwrap();
    assert_eq!(
        regs.iter().filter(|x| x["kind"] == "speed_drop").count(),
        2,
        "{regs:?}"
    );

    // A baseline that is not a receipt is a usage error, before any work.
    let o = sweep(
        &args("5", &["--baseline", &models.display().to_string()])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("models.toml"),
        "{}",
        text(&o)
    );

    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn default_models_file_parses_and_every_case_pattern_matches() {
    let root = root();
    let f = harness::sweep::models::load(&root.join("models.toml")).unwrap();
    let cases_dir = root.join("cases");
    let all: Vec<(String, PathBuf)> = harness::case::discover(&cases_dir)
        .into_iter()
        .map(|p| (harness::case::case_id(&p, &cases_dir), p))
        .collect();
    let mut archs = std::collections::BTreeSet::new();
    let mut types = std::collections::BTreeSet::new();
    for m in &f.models {
        harness::sweep::models::cases_for(m, &all, &f.file).unwrap();
        if let harness::probes::ModelSpec::Preset { name, .. } = &m.spec {
            let p = engine::forge::preset(name).unwrap();
            archs.insert(format!("{:?}", p.arch));
            types.insert(name.rsplit('-').next().unwrap().to_string());
        }
    }
    assert_eq!(archs.len(), 2, "both archs");
    for t in ["f32", "f16", "i2s", "tq1", "tq2"] {
        assert!(
            types.contains(t),
            "weight type {t} missing from models.toml"
        );
    }
}
