//! Engines from outside, through the wire protocol: `bitprobe conformance` on a good probe and
//! on deliberately broken ones (the `broken_probe` example), a generate-only probe's
//! token-level verdict, and the example numpy engine judged by `diff` (with and without its
//! injected bug). Every run that could hang has a short watchdog and a bounded wall time.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn root() -> PathBuf {
    harness::snapshot::workspace_root()
}

#[test]
fn conformance_names_each_defect_in_one_line_and_never_hangs() {
    let bin = broken_probe();
    for (defect, failing) in [
        ("wrong-blob-count", "forward"),
        ("wrong-shape", "stages"),
        ("crash-in-forward", "forward"),
        ("hang", "forward"),
        ("non-causal", "causality"),
    ] {
        let spec = format!("cmd:{} --defect {defect}", bin.display());
        let (o, took) = bitprobe(&["conformance", &spec, "--timeout", "3"]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(1), "{defect}: {}", text(&o));
        let fails: Vec<&str> = out
            .lines()
            .filter(|l| l.trim_start().starts_with("FAIL"))
            .collect();
        assert_eq!(fails.len(), 1, "{defect}: one line per defect:\n{out}");
        assert!(
            fails[0].split_whitespace().nth(1) == Some(failing),
            "{defect}: expected the {failing} check to fail:\n{out}"
        );
        assert!(took < Duration::from_secs(60), "{defect}: took {took:?}");
    }
    for good in ["none", "generate-only"] {
        let spec = format!("cmd:{} --defect {good}", bin.display());
        let (o, _) = bitprobe(&["conformance", &spec, "--timeout", "10"]);
        assert_eq!(o.status.code(), Some(0), "{good}: {}", text(&o));
    }
}

#[test]
fn a_hanging_probe_fails_the_diff_in_bounded_time_naming_probe_and_request() {
    let spec = format!("cmd:{} --defect hang", broken_probe().display());
    let (o, took) = bitprobe(&[
        "diff",
        "--engine",
        &spec,
        "--preset",
        "tiny-i2s",
        "-p",
        "Hello",
        "--timeout",
        "2",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("broken_probe --defect hang did not answer the forward of 5 tokens within 2.")
            && err.contains("the watchdog stopped it"),
        "{err}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
fn a_generate_only_probe_gets_a_token_level_verdict() {
    let spec = format!("cmd:{} --defect generate-only", broken_probe().display());
    let (o, _) = bitprobe(&[
        "diff",
        "--engine",
        &spec,
        "--preset",
        "tiny-i2s",
        "-p",
        "Hello world",
        "-n",
        "6",
        "--json",
    ]);
    // bitprobe's engine under a generate-only banner: tokens agree with bitnet.cpp.
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let judged = r["judged"].as_array().unwrap();
    let generated = judged
        .iter()
        .filter(|j| j["measure"]["kind"] == "generated")
        .count();
    assert_eq!(generated, 7, "every generated token judged: {r}");
    assert!(
        judged.iter().all(|j| j["site"]["kind"] == "decode"),
        "no stage or logits rows for a tokens-only probe"
    );
    let not = r["not_compared"].as_array().unwrap();
    assert!(
        not.iter()
            .any(|n| n.as_str().unwrap().contains("stages and logits")),
        "{not:?}"
    );

    // In a case, its stage and logits trials are ignored with the reason; its tokens are a trial.
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bitprobe-genonly-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("genonly.toml");
    std::fs::write(
        &file,
        format!(
            "model = {{ preset = \"tiny-i2s\" }}\nengine = \"{spec}\"\n[compare]\nstages = [\"attn_q\"]\n[[prompts]]\nid = \"p\"\ntext = \"Hello world\"\ndecode = 6\n"
        ),
    )
    .unwrap();
    std::env::set_var("BITPROBE_ORACLE_BIN", env!("CARGO_BIN_EXE_bitprobe-oracle"));
    let runs = harness::runs::Runs::default();
    let trials = harness::trials::expand(
        harness::case::load(&file, &dir),
        &runs,
        harness::trials::OracleMode::On,
    );
    let stage = trials
        .iter()
        .find(|t| t.name.starts_with("stage::"))
        .unwrap();
    assert_eq!(
        stage.ignored.as_deref(),
        Some(
            format!(
                "{} gives tokens only (no forward pass)",
                "broken_probe --defect generate-only"
            )
            .as_str()
        )
    );
    let tokens = trials
        .iter()
        .find(|t| t.name == "tokens::genonly::p")
        .expect("a tokens trial");
    assert_eq!(
        harness::trials::check(&runs, tokens),
        harness::trials::Outcome::Pass
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_example_numpy_engine_passes_and_its_bug_is_localized() {
    let engine = format!(
        "cmd:python3 {}",
        root().join("adapters/python/example_engine.py").display()
    );
    let (o, _) = bitprobe(&[
        "diff",
        "--engine",
        &engine,
        "--preset",
        "tiny-i2s",
        "-p",
        "The capital of France is",
        "-n",
        "8",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("verdict   PASS"));

    let buggy = format!("{engine} --bug relu2");
    let (o, _) = bitprobe(&[
        "diff",
        "--engine",
        &buggy,
        "--preset",
        "tiny-i2s",
        "-p",
        "The capital of France is",
        "-n",
        "8",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        r["first_divergence"]["stage"], "blk.0.ffn_sub_out",
        "{}",
        r["first_divergence"]
    );
    assert_eq!(r["first_divergence"]["phase"], "prompt");

    let (o, _) = bitprobe(&["conformance", &engine]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn the_python_adapter_tests_pass() {
    // adapters/python/tests: the wire library, the GGUF reader, the example engine and the
    // ik_llama.cpp and pytritium adapters, against these bitprobe binaries.
    let out = Command::new("python3")
        .args([
            "-m",
            "unittest",
            "discover",
            "-s",
            "adapters/python/tests",
            "-p",
            "test_*.py",
        ])
        .current_dir(root())
        .env("BITPROBE_BIN", env!("CARGO_BIN_EXE_bitprobe"))
        .env("BITPROBE_ORACLE_BIN", env!("CARGO_BIN_EXE_bitprobe-oracle"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\nOK"), "{err}");
}
