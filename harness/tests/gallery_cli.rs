//! The known-bug gallery through the `bitprobe` binary: `diff` on a forged tiny model exits
//! 0; with each gallery fault injected (`--inject-fault`, on that fault's case: its preset,
//! prompt and decode steps) it exits 1 and names the expected first divergence; and
//! `bitprobe gallery` runs. Test builds always have fault injection: the harness's
//! dev-dependency turns on `engine/faults`, and cargo builds the binary under test with it.

use harness::case;
use harness::probes::ModelSpec;
use harness::snapshot::workspace_root;
use std::process::Command;

fn bitprobe(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bitprobe"))
        .args(args)
        .output()
        .expect("bitprobe runs");
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        s(&out.stdout),
        s(&out.stderr),
    )
}

#[test]
fn diff_exits_0_on_a_forged_model_without_a_fault() {
    let (code, out, err) = bitprobe(&[
        "diff",
        "--preset",
        "tiny-i2s",
        "--prompt",
        "The capital of France is",
        "--decode",
        "2",
    ]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("verdict   PASS"), "{out}");
}

#[test]
fn diff_with_each_gallery_fault_is_localized_at_its_origin() {
    let root = workspace_root().join("cases");
    let files = case::discover(&root.join("gallery"));
    let mut names: Vec<String> = Vec::new();
    for file in files {
        let c = case::load(&file, &root).unwrap_or_else(|e| panic!("{}", e.message));
        let fault = c.fault.clone().expect("gallery cases inject a fault");
        let expect = c.expect.clone().expect("gallery cases have [expect]");
        let ModelSpec::Preset { name, seed } = &c.model else {
            panic!("{}: gallery cases use presets", c.id)
        };
        let p = &c.prompts[0];
        let (seed, decode) = (seed.to_string(), p.decode.to_string());
        let args = [
            "diff",
            "--preset",
            name,
            "--preset-seed",
            &seed,
            "--prompt",
            &p.text,
            "--decode",
            &decode,
            "--inject-fault",
            &fault,
            "--json",
        ];
        let (code, out, err) = bitprobe(&args);
        let report: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{fault}: {e}\n{out}\n{err}"));
        // A fault no tolerance sees (a case with `exact = true`) passes `diff`; the first
        // value that is not bit-exact is where it is.
        let (site, phase, position) = if c.exact {
            assert_eq!(code, 0, "{fault}: exit {code}\nstderr:\n{err}");
            let inexact = report["judged"]
                .as_array()
                .unwrap()
                .iter()
                .find(|j| j["measure"]["kind"] == "tensor" && j["measure"]["bit_exact"] == false)
                .unwrap_or_else(|| panic!("{fault}: every value bit-exact"))
                .clone();
            let phase = match &inexact["phase"] {
                serde_json::Value::String(s) => s.clone(),
                other => format!("decode step {}", other["decode"]),
            };
            (
                inexact["site"]["stage"].clone(),
                phase,
                inexact["position"].clone(),
            )
        } else {
            assert_eq!(code, 1, "{fault}: exit {code}\nstderr:\n{err}");
            let fd = &report["first_divergence"];
            (
                fd["stage"].clone(),
                fd["phase"].as_str().unwrap_or_default().to_string(),
                fd["position"].clone(),
            )
        };
        assert_eq!(site, expect.first_divergence.to_string(), "{fault}");
        if let Some(want) = expect.phase {
            let ok = match want {
                case::ExpectPhase::Prompt => phase == "prompt",
                case::ExpectPhase::AnyDecode => phase.starts_with("decode step "),
                case::ExpectPhase::Step(n) => phase == format!("decode step {n}"),
            };
            assert!(ok, "{fault}: expected phase {want}, got {phase}");
        }
        if let Some(want) = expect.position {
            assert_eq!(position, want, "{fault}: position");
        }
        names.push(fault);
    }
    names.sort();
    let mut all: Vec<String> = engine::faults::Fault::NAMES
        .iter()
        .map(|s| s.to_string())
        .collect();
    all.sort();
    assert_eq!(names, all, "every fault has exactly one gallery case");
}

#[test]
fn gallery_command_runs_and_passes() {
    let (code, out, err) = bitprobe(&["gallery", "i2s_"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("6/6 faults detected and localized as expected"),
        "{out}"
    );
}

#[test]
fn an_unknown_fault_is_a_usage_error() {
    let (code, _, err) = bitprobe(&[
        "diff",
        "--preset",
        "tiny-i2s",
        "--prompt",
        "Hi",
        "--inject-fault",
        "i2s_block_512",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("unknown fault 'i2s_block_512'") && err.contains("i2s_block_256"),
        "{err}"
    );
}

/// The gallery on the trained model (scripts/setup.sh trains it): what each faulty engine
/// says next to the reference's answer, and where bitprobe places the fault. A fault that
/// garbles the weights garbles the answer and is named at the first projection; a fault the
/// wide margins hide (SiLU for ReLU²) leaves " Paris." and is named anyway.
#[test]
fn gallery_on_the_trained_model_shows_what_each_fault_says() {
    let trained = engine::forge::trained::trained_dir(1).join("model.txt");
    assert!(
        trained.is_file(),
        "{} is missing: scripts/setup.sh trains the model",
        trained.display()
    );
    let (code, out, err) = bitprobe(&["gallery", "--on", "trained-i2s", "i2s_bit_order"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("the reference says \" Paris.<EOS>\""), "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with("i2s_bit_order"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        !row.contains("(same)") && row.contains("blk.0.attn_q @ prompt pos 0"),
        "{row}"
    );
    let (code, out, err) = bitprobe(&["gallery", "--on", "trained-i2s", "silu_for_relu2"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("silu_for_relu2"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains("\" Paris.<EOS>\" (same)") && row.contains("blk.0.ffn_sub_out"),
        "{row}"
    );
}
