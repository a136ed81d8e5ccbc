//! `bitprobe sweep` end to end on a tiny model run by two engines (ours, and the numpy example
//! with its ReLU² bug): the receipt validates against its JSON schema, the HTML report is
//! self-contained, a broken model is a row (not the end of the sweep), each (model, engine)
//! pair is its own result and matrix cell, a second run against the first has no
//! regressions but still lists the standing failures, an injected engine fault and a
//! speed-ratio drop are listed as regressions (by where they start) with exit code 1, the
//! trend covers the kept runs, and a version-1 receipt still serves as a baseline. The
//! reports' wording, chart and failure grouping are checked on a hand-made receipt.

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

/// Evaluation order of a trial from its name alone (`stage::…::blk.1.l_out`,
/// `logits::…::pos3`, `decode::…`): phase, site, position — how regressions must be listed.
fn start_order(trial: &str) -> (u32, (u8, (u32, usize)), u32) {
    let last = trial.rsplit("::").next().unwrap();
    if trial.starts_with("stage::") {
        let site = harness::case::parse_site(last).expect("a stage");
        (0, site.order(), 0)
    } else if trial.starts_with("logits::") {
        let pos: u32 = last.trim_start_matches("pos").parse().unwrap();
        (0, harness::judge::Site::Logits.order(), pos)
    } else {
        (1, (0, (0, 0)), 0)
    }
}

/// The text between a heading (`## X` or `<h2 …>X`) and the next one.
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let at = doc
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in:\n{doc}"));
    let rest = &doc[at + heading.len()..];
    let end = ["\n## ", "<h2"]
        .iter()
        .filter_map(|h| rest.find(h))
        .min()
        .unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn sweep_receipt_reports_and_regressions() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bitprobe-sweep-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cases = dir.join("cases");
    std::fs::create_dir_all(cases.join("mini")).unwrap();
    std::fs::write(
        cases.join("mini/hello.toml"),
        "description = \"one short prompt, a few decode steps\"\nexact = true\nmodel = { preset = \"tiny-f32\" }\n\n[compare]\nstages = [\"attn_q\", \"ffn_sub_out\", \"l_out\", \"result_output\"]\n\n[[prompts]]\nid = \"hello\"\ntext = \"Hello world\"\ndecode = 3\n",
    )
    .unwrap();
    let garbage = dir.join("not-a-model.gguf");
    std::fs::write(&garbage, b"this is not a GGUF file").unwrap();
    let models = dir.join("models.toml");
    // tiny-i2s runs with two engines: ours, and the numpy example engine of adapters/python
    // with its ReLU²-for-SiLU bug (probes.toml), which must fail at blk.0.ffn_sub_out.
    std::fs::write(
        &models,
        format!(
            "[defaults]\ncases = [\"mini/*\"]\n\n[[model]]\npreset = \"tiny-i2s\"\nengines = [\"engine\", \"numpy-example-relu2\"]\n\n[[model]]\nname = \"broken\"\npath = \"{}\"\nspeed = false\n\n[[model]]\nname = \"absent\"\npath = \"{}\"\n",
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
    let run = |out: &str, extra: &[&str]| {
        sweep(
            &args(out, extra)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
    };

    // Run 1: no baseline. The broken model is an error row; the sweep still finishes.
    let o = run("1", &["--baseline", "none"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a first run with a broken model exits 1:\n{}",
        text(&o)
    );
    let r1 = read_json(&runs.join("1/receipt.json"));
    assert_schema_valid(&r1);
    assert_eq!(r1["schema_version"], 2);
    let models_out = r1["models"].as_array().unwrap();
    assert_eq!(models_out.len(), 4, "tiny-i2s × 2 engines, broken, absent");
    let m0 = &models_out[0];
    assert_eq!(
        (
            m0["name"].as_str(),
            m0["engine"].as_str(),
            m0["reference"].as_str()
        ),
        (Some("tiny-i2s"), Some("engine"), Some("oracle"))
    );
    assert_eq!(m0["status"], "pass", "{}", text(&o));
    assert!(m0["counts"]["pass"].as_u64().unwrap() > 10);
    assert!(m0["stages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["bit_exact"] == true));
    assert!(m0["speed"]["decode_ratio"].as_f64().unwrap() > 0.0);
    assert_eq!(m0["sha256"].as_str().unwrap().len(), 64);
    // The same model with the numpy engine: its own result, failing where its bug is.
    let m1 = &models_out[1];
    assert_eq!(
        (m1["name"].as_str(), m1["engine"].as_str()),
        (Some("tiny-i2s"), Some("numpy-example-relu2"))
    );
    assert_eq!(m1["status"], "fail", "{m1}");
    // `exact = true` binds the pair the case was written for (our engine, bitnet.cpp) only.
    let trial_names = |m: &serde_json::Value| -> Vec<String> {
        m["cases"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| c["trials"].as_array().unwrap())
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(trial_names(m0).iter().any(|n| n.starts_with("exact::")));
    assert!(!trial_names(m1).iter().any(|n| n.starts_with("exact::")));
    assert_eq!(
        m1["sha256"], m0["sha256"],
        "one model file for both engines"
    );
    assert_eq!(m1["first_divergence"]["stage"], "blk.0.ffn_sub_out", "{m1}");
    assert_eq!(m1["first_divergence"]["phase"], "prompt");
    // Its speed is measured against the reference through its own server.
    assert!(
        m1["speed"]["decode_ratio"]
            .as_f64()
            .is_some_and(|x| x > 0.0),
        "speed {} / {}",
        m1["speed"],
        m1["speed_error"]
    );
    assert_eq!(models_out[2]["status"], "error");
    assert!(
        models_out[2]["error"]
            .as_str()
            .unwrap()
            .contains("not-a-model.gguf"),
        "{}",
        models_out[2]["error"]
    );
    assert_eq!(models_out[3]["status"], "skipped");
    assert!(models_out[3]["error"]
        .as_str()
        .unwrap()
        .contains("nowhere.gguf"));
    assert_eq!(
        (
            r1["summary"]["models"].as_u64(),
            r1["summary"]["engines"].as_u64(),
            r1["summary"]["results"].as_u64()
        ),
        (Some(3), Some(2), Some(4))
    );
    // The implementations × models matrix: engines down, models across.
    let mx = &r1["matrix"];
    assert_eq!(
        mx["models"],
        serde_json::json!(["tiny-i2s", "broken", "absent"])
    );
    assert_eq!(mx["rows"][0]["engine"], "engine");
    assert_eq!(mx["rows"][1]["engine"], "numpy-example-relu2");
    assert_eq!(mx["rows"][0]["cells"][0]["status"], "pass");
    assert_eq!(mx["rows"][0]["cells"][1]["status"], "error");
    assert_eq!(mx["rows"][1]["cells"][0]["status"], "fail");
    assert_eq!(
        mx["rows"][1]["cells"][0]["first_divergence"]["stage"],
        "blk.0.ffn_sub_out"
    );
    assert!(mx["rows"][1]["cells"][0]["decode_ratio"].as_f64().unwrap() > 0.0);
    assert!(mx["rows"][1]["cells"][1].is_null(), "not run on broken");
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
    assert!(html.contains("Implementations × models"), "{html}");
    let md = std::fs::read_to_string(runs.join("1/report.md")).unwrap();
    assert!(
        md.contains("| tiny-i2s | pass |")
            && md.contains("| tiny-i2s · numpy-example-relu2 | fail |")
            && md.contains("| broken | error |")
            && md.contains("| absent | skipped |"),
        "{md}"
    );
    let matrix_md = section(&md, "## Implementations × models");
    assert!(
        matrix_md.contains("| numpy-example-relu2 | fail · blk.0.ffn_sub_out @ prompt pos"),
        "{matrix_md}"
    );

    // Run 2: the baseline defaults to run 1; nothing changed, so no regression. Without
    // speed figures: two tiny-model timings on a loaded machine can differ a hundredfold
    // (seen: a 3.48× decode ratio, then 0.02×), and this test must not depend on the load.
    let o = run("2", &["--no-speed"]);
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
    // Both failing results are still listed, though neither is a regression now.
    let md = std::fs::read_to_string(runs.join("2/report.md")).unwrap();
    let standing = section(&md, "## Standing failures");
    assert!(
        standing.contains("| broken | error |")
            && standing.contains("| tiny-i2s · numpy-example-relu2 | fail |"),
        "{standing}"
    );
    assert_eq!(r2["trend"].as_array().unwrap().len(), 1, "{}", r2["trend"]);

    // Run 3: an injected engine fault is a regression of our engine's pair only, listed
    // before the summary, by where each starts.
    let o = run(
        "3",
        &[
            "--baseline",
            &runs.join("2").display().to_string(),
            "--inject-fault",
            "relu2_for_silu",
            "--no-speed",
        ],
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
    assert!(
        regs.iter().all(|x| x["engine"] == "engine"),
        "the fault is in our engine; the numpy pair fails as before: {regs:?}"
    );
    assert_eq!(
        r3["models"][0]["first_divergence"]["stage"], "blk.0.ffn_sub_out",
        "{}",
        r3["models"][0]["first_divergence"]
    );
    let md = std::fs::read_to_string(runs.join("3/report.md")).unwrap();
    let (reg, matrix, summary) = (
        md.find("## Regressions").unwrap(),
        md.find("## Implementations × models").unwrap(),
        md.find("## Summary").unwrap(),
    );
    assert!(
        reg < matrix && matrix < summary && md[reg..matrix].contains("new failure"),
        "{md}"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("regression: tiny-i2s: "),
        "{}",
        text(&o)
    );
    let html = std::fs::read_to_string(runs.join("3/report.html")).unwrap();
    assert_self_contained(&html);
    let (reg, matrix, summary) = (
        html.find("Regressions").unwrap(),
        html.find("Implementations × models").unwrap(),
        html.find("Summary").unwrap(),
    );
    assert!(reg < matrix && matrix < summary);
    assert_eq!(r3["trend"].as_array().unwrap().len(), 2, "{}", r3["trend"]);

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
    let o = run("4", &["--baseline", &fast_path.display().to_string()]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a 1000× speed-ratio drop must be a regression:\n{}",
        text(&o)
    );
    let r4 = read_json(&runs.join("4/receipt.json"));
    assert_schema_valid(&r4);
    let regs = r4["comparison"]["regressions"].as_array().unwrap();
    // (The numpy pair's own ratio is not doctored; on a loaded machine it may swing either way.)
    assert_eq!(
        regs.iter()
            .filter(|x| x["kind"] == "speed_drop" && x["engine"] == "engine")
            .count(),
        2,
        "{regs:?}"
    );
    assert_eq!(
        r4["trend"].as_array().unwrap().len(),
        1,
        "a lone baseline file"
    );

    // Run 5: a version-1 receipt (before engines) is still a baseline: its results are our
    // engine's. One of its trials failed then, so this run lists it as fixed for that pair.
    let mut v1 = r1.clone();
    v1["schema_version"] = 1.into();
    for k in ["matrix", "trend"] {
        v1.as_object_mut().unwrap().remove(k);
    }
    for k in ["engines", "results"] {
        v1["summary"].as_object_mut().unwrap().remove(k);
    }
    let mut ms = v1["models"].as_array().unwrap().clone();
    ms.retain(|m| m["engine"] == "engine");
    for m in &mut ms {
        let m = m.as_object_mut().unwrap();
        m.remove("engine");
        m.remove("reference");
        if let Some(s) = m.get_mut("speed").and_then(|s| s.as_object_mut()) {
            let r = s.remove("reference").unwrap();
            s.insert("oracle".into(), r);
        }
        for c in m["cases"].as_array_mut().unwrap() {
            for t in c["trials"].as_array_mut().unwrap() {
                t.as_object_mut().unwrap().remove("at");
            }
        }
    }
    let fixed_trial = ms[0]["cases"][0]["trials"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    ms[0]["cases"][0]["trials"][0]["verdict"] = "fail".into();
    ms[0]["cases"][0]["trials"][0]["message"] = "it failed once".into();
    v1["models"] = ms.into();
    let v1_path = dir.join("v1-baseline.json");
    std::fs::write(&v1_path, serde_json::to_string(&v1).unwrap()).unwrap();
    let o = run(
        "5",
        &["--baseline", &v1_path.display().to_string(), "--no-speed"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r5 = read_json(&runs.join("5/receipt.json"));
    assert_schema_valid(&r5);
    let fixed = r5["comparison"]["improvements"].as_array().unwrap();
    assert!(
        fixed.iter().any(|x| x["kind"] == "fixed"
            && x["model"] == "tiny-i2s"
            && x["engine"] == "engine"
            && x["what"] == fixed_trial.as_str()),
        "{fixed:?}"
    );

    // A baseline that is not a receipt is a usage error, before any work.
    let o = run("6", &["--baseline", &models.display().to_string()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("models.toml"),
        "{}",
        text(&o)
    );

    // An engine no probe answers to: the file, line and column, before any work.
    let bad = dir.join("bad-models.toml");
    std::fs::write(
        &bad,
        "[[model]]\npreset = \"tiny-i2s\"\ncases = [\"mini/*\"]\nengines = [\"engine\", \"no-such-probe\"]\n",
    )
    .unwrap();
    let o = sweep(&[
        "--models",
        &bad.display().to_string(),
        "--cases",
        &cases.display().to_string(),
        "--out",
        &runs.join("7").display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("bad-models.toml:4:22")
            && String::from_utf8_lossy(&o.stderr).contains("no-such-probe"),
        "{}",
        text(&o)
    );

    std::fs::remove_dir_all(&dir).ok();
}

/// Issue 17's sweep bullets on real runs of one model (our engine) and a broken file: a
/// model that keeps failing is listed every run, regressions are listed by where they start,
/// the HTML shows the trend over the kept runs, and failed trials with one cause are one
/// collapsed group.
#[test]
fn standing_failures_sorted_regressions_trend_and_grouped_failures() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bitprobe-sweep-17-{}", std::process::id()));
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
            "[defaults]\ncases = [\"mini/*\"]\nspeed = false\n\n[[model]]\npreset = \"tiny-i2s\"\n\n[[model]]\nname = \"broken\"\npath = \"{}\"\n",
            garbage.display()
        ),
    )
    .unwrap();
    let runs = dir.join("runs");
    let run = |out: &str, extra: &[&str]| {
        let mut a = vec![
            "--models".to_string(),
            models.display().to_string(),
            "--cases".into(),
            cases.display().to_string(),
            "--out".into(),
            runs.join(out).display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        sweep(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = run("1", &["--baseline", "none"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // Run 2: the broken model is no longer a regression, and still listed, with its history.
    let o = run("2", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let md = std::fs::read_to_string(runs.join("2/report.md")).unwrap();
    let standing = section(&md, "## Standing failures");
    assert!(
        standing.contains("| broken | error |")
            && standing.contains("failing in every kept run: 2 runs")
            && !standing.contains("| tiny-i2s |"),
        "{standing}"
    );
    let html = std::fs::read_to_string(runs.join("2/report.html")).unwrap();
    assert!(
        section(&html, "Standing failures").contains("not-a-model.gguf"),
        "{html}"
    );

    // Run 3: an injected fault fails many trials of tiny-i2s.
    let o = run(
        "3",
        &[
            "--baseline",
            &runs.join("2").display().to_string(),
            "--inject-fault",
            "relu2_for_silu",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let r3 = read_json(&runs.join("3/receipt.json"));
    assert_schema_valid(&r3);
    // Listed by where they start: phase, stage in evaluation order, position (not in the
    // order the trials were expanded, stage by stage across layers).
    let regs = r3["comparison"]["regressions"].as_array().unwrap();
    let names: Vec<&str> = regs.iter().map(|x| x["what"].as_str().unwrap()).collect();
    let order: Vec<_> = names.iter().map(|n| start_order(n)).collect();
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "regressions not in evaluation order: {names:#?}"
    );
    assert!(names[0].ends_with("::blk.0.ffn_sub_out"), "{names:#?}");
    let html = std::fs::read_to_string(runs.join("3/report.html")).unwrap();
    assert_self_contained(&html);
    // The trend over the kept runs: 1, 2 and this one, a sparkline per result and metric.
    let trend = section(&html, "Trend over 3 runs");
    assert_eq!(trend.matches("<svg class=\"spark\"").count(), 4, "{trend}");
    assert!(
        trend.contains("0, 0, "),
        "tiny-i2s failed no trial before: {trend}"
    );
    // The failed trials of the one prompt share its first divergence: one collapsed group
    // with the count, its shared message once.
    let failed = r3["models"][0]["counts"]["fail"].as_u64().unwrap();
    assert!(failed > 1);
    let results = &html[html.find("id=\"m-tiny-i2s\"").unwrap()..];
    let ours = &results[..results.find("id=\"m-broken\"").unwrap()];
    assert_eq!(
        ours.matches("<details class=\"failgroup\"").count(),
        1,
        "{ours}"
    );
    assert!(ours.contains(&format!("×{failed}</span>")), "{ours}");
    assert_eq!(
        ours.matches("reproduce: bitprobe diff").count(),
        1,
        "{ours}"
    );

    std::fs::remove_dir_all(&dir).ok();
}

/// A receipt made by hand (nothing run): one model, two layers, a prompt and a decode series
/// with the same values at one stage, and 126 failed trials that share one message.
fn hand_made_receipt() -> serde_json::Value {
    let stages: Vec<serde_json::Value> = [
        "inp_embd",
        "blk.0.attn_norm",
        "blk.0.attn_q",
        "blk.0.ffn_sub_out",
        "blk.0.l_out",
        "blk.1.attn_norm",
        "blk.1.attn_q",
        "blk.1.ffn_sub_out",
        "blk.1.l_out",
        "result_norm",
        "result_output",
    ]
    .iter()
    .enumerate()
    .map(|(i, s)| {
        serde_json::json!({
            "stage": s, "worst_nmse_prompt": 1e-9 * (i + 1) as f64,
            "worst_nmse_decode": 1e-9 * (i + 1) as f64, "bit_exact": false,
            "nmse_limit": 1e-4, "non_finite": false
        })
    })
    .collect();
    let trials: Vec<serde_json::Value> = (0..126)
        .map(|i| {
            serde_json::json!({
                "name": format!("stage::smoke/x::p::blk.{i}.attn_q"), "verdict": "fail",
                "message": "cannot open oracle on /m.gguf: the server died (signal 6)",
                "nmse": null, "kl": null, "bit_exact": null
            })
        })
        .collect();
    let model = serde_json::json!({
        "name": "only", "engine": "engine", "reference": "oracle", "source": "preset tiny-i2s (seed 1)",
        "preset": "tiny-i2s", "seed": 1, "file": "/m.gguf", "sha256": null, "bytes": 10,
        "arch": "bitnet", "weight_type": "I2_S", "n_layer": 2, "threads": 1, "tokenizer": "gguf",
        "status": "fail", "error": null, "seconds": 0.04,
        "counts": {"pass": 0, "fail": 126, "ignored": 0},
        "first_divergence": null,
        "first_failure": "stage::smoke/x::p::blk.0.attn_q: cannot open oracle",
        "logits": null, "tokenizer_parity": null, "speed": null, "speed_error": null
    });
    let mut model = model;
    model["stages"] = stages.into();
    model["cases"] = serde_json::json!([{"id": "smoke/x", "trials": trials}]);
    let head = serde_json::json!({
        "schema": "bitprobe.sweep.receipt", "schema_version": 2,
        "started": "2026-01-02T03:04:05Z", "finished": "2026-01-02T03:04:05Z",
        "duration_seconds": 0.2,
        "bitprobe": {"version": "0.1.0", "git_revision": null, "git_dirty": null, "faults_built": false},
        "machine": {"cpu_model": "cpu", "cpu_flags": [], "cores": 2, "memory_mib": null, "os": "linux", "arch": "x86_64"},
        "oracle": {"package": "bitnet-cpp-sys-0.0.5", "tree_sha256": "unknown", "patches": []},
        "comparison": null,
        "matrix": {"models": [], "rows": []},
        "trend": []
    });
    let mut r = head;
    r["settings"] = serde_json::json!({"models_file": "m.toml", "cases_dir": "cases", "injected_fault": null,
        "speed": {"prompt_tokens": 8, "decode_tokens": 8, "reps": 1}});
    r["summary"] = serde_json::json!({"models": 1, "engines": 1, "results": 1, "passed": 0, "failed": 1,
        "errors": 0, "skipped": 0, "trials": 126, "trials_failed": 126, "regressions": 0});
    r["models"] = serde_json::json!([model]);
    r
}

#[test]
fn reports_say_it_right() {
    let r: harness::sweep::receipt::Receipt = serde_json::from_value(hand_made_receipt()).unwrap();
    let md = harness::sweep::report::markdown(&r);
    let html = harness::sweep::report::html(&r);
    assert_self_contained(&html);
    // One model is "1 model"; a fifth of a second is not "0 s"; one thread is not "thread(s)".
    for doc in [&md, &html] {
        assert!(doc.contains("1 model:"), "{doc}");
        assert!(!doc.contains("1 models"), "{doc}");
        assert!(doc.contains("took 0.2 s"), "{doc}");
        assert!(!doc.contains("took 0 s"), "{doc}");
        assert!(
            doc.contains("1 thread,") && !doc.contains("thread(s)"),
            "{doc}"
        );
        assert!(doc.contains("0 regressions"), "{doc}");
    }
    // A failing model is a standing failure even on a first run.
    assert!(
        section(&md, "## Standing failures").contains("| only | fail |"),
        "{md}"
    );
    // 126 trials that failed with one message: one collapsed group with its count, the
    // message once.
    assert_eq!(
        html.matches("the server died (signal 6)").count(),
        1,
        "the shared message is repeated"
    );
    assert_eq!(html.matches("class=\"failgroup\"").count(), 1);
    assert!(html.contains("×126"), "no count on the group");
    assert!(md.contains("×126"), "{md}");

    // The chart: every stage named on the x axis (not only in tooltips), the prompt series
    // drawn after (on top of) the decode series, with marks that differ, and a legend that
    // says so.
    let svg = &html[html.find("<svg class=\"chart\"").expect("a chart")..];
    let svg = &svg[..svg.find("</svg>").unwrap()];
    for name in ["attn_norm", "attn_q", "ffn_sub_out", "l_out", "inp_embd"] {
        assert!(
            svg.contains(&format!(">{name}</text>")),
            "stage {name} has no label on the x axis"
        );
    }
    for layer in ["blk.0", "blk.1"] {
        assert!(svg.contains(&format!(">{layer}</text>")), "{layer}");
    }
    let (decode, prompt) = (
        svg.find("class=\"series-decode\"")
            .expect("a decode series"),
        svg.find("class=\"series-prompt\"")
            .expect("a prompt series"),
    );
    assert!(
        decode < prompt,
        "the prompt series must be drawn last, on top"
    );
    assert!(
        svg.contains("drawn on top"),
        "the legend must say which is on top"
    );
    assert!(svg.contains("stroke-dasharray=\"6,3\""), "decode is dashed");
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
