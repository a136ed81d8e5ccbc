//! What the case harness promises its users, checked through the same library calls the
//! `cases` test binary makes: new files need no code, broken files fail alone and say where,
//! absent models are ignored with the reason, and a known deviation cannot silently rot.

use harness::case;
use harness::runs::Runs;
use harness::trials::{self, Kind, OracleMode, Outcome};
use std::path::{Path, PathBuf};

fn setup() -> PathBuf {
    std::env::set_var("BITPROBE_ORACLE_BIN", env!("CARGO_BIN_EXE_bitprobe-oracle"));
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "bitprobe-cases-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("new")).unwrap();
    dir
}

fn expand_dir(root: &Path, runs: &Runs) -> Vec<trials::TrialSpec> {
    case::discover(root)
        .iter()
        .flat_map(|f| trials::expand(case::load(f, root), runs, OracleMode::On))
        .collect()
}

#[test]
fn a_dropped_in_file_gets_trials_and_a_broken_one_fails_alone() {
    let root = setup();
    std::fs::write(
        root.join("new/hello.toml"),
        "description = \"x\"\nmodel = { preset = \"tiny-i2s\" }\n[[prompts]]\nid = \"hi\"\ntext = \"Hello\"\ndecode = 2\n",
    )
    .unwrap();
    std::fs::write(
        root.join("new/broken.toml"),
        "model = { preset = \"tiny-i2s\" }\n[[prompts]]\nid = 3\n",
    )
    .unwrap();
    let runs = Runs::default();
    let t = expand_dir(&root, &runs);
    let names: Vec<&str> = t.iter().map(|t| t.name.as_str()).collect();
    assert!(
        names.contains(&"stage::new/hello::hi::blk.1.ffn_down"),
        "{names:?}"
    );
    assert!(names.contains(&"logits::new/hello::hi::pos0"));
    assert!(names.contains(&"decode::new/hello::hi"));
    assert!(names.contains(&"snapshot::new/hello"));
    let broken: Vec<_> = t.iter().filter(|t| t.name.contains("broken")).collect();
    assert_eq!(broken.len(), 1, "a broken file is exactly one trial");
    assert_eq!(broken[0].name, "case::new/broken");
    match trials::check(&runs, broken[0]) {
        Outcome::Fail(m) => assert!(m.contains("broken.toml:3:6") && m.contains("fix:"), "{m}"),
        o => panic!("broken case must fail, got {o:?}"),
    }
    // The good file's trials run and pass against the oracle.
    let stage = t
        .iter()
        .find(|t| t.name == "stage::new/hello::hi::blk.0.attn_q")
        .unwrap();
    assert_eq!(trials::check(&runs, stage), Outcome::Pass);
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn an_absent_model_path_ignores_its_trials_with_the_reason() {
    let root = setup();
    std::fs::write(
        root.join("new/real.toml"),
        "model = { path = \"/models/absent-2b4t.gguf\" }\n[[prompts]]\nid = \"p\"\ntext = \"Paris\"\n",
    )
    .unwrap();
    let runs = Runs::default();
    let t = expand_dir(&root, &runs);
    assert!(!t.is_empty());
    for x in &t {
        let why = x
            .ignored
            .as_deref()
            .unwrap_or_else(|| panic!("{} must be ignored", x.name));
        assert!(why.contains("/models/absent-2b4t.gguf"), "{why}");
        assert!(matches!(trials::check(&runs, x), Outcome::Ignored(_)));
    }
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn removing_a_known_deviation_fails_naming_the_input() {
    let root = setup();
    let real = harness::snapshot::workspace_root().join("cases/tokenizer");
    std::fs::copy(real.join("inputs.json"), root.join("new/inputs.json")).unwrap();
    let text = std::fs::read_to_string(real.join("llama3-nopre.toml")).unwrap();
    // Drop the first recorded deviation (an oracle deviation on "don't"-like input).
    let start = text
        .find("[[tokenize.known_deviation]]")
        .expect("the case records deviations");
    let end = start
        + 1
        + text[start + 1..]
            .find("[[tokenize.known_deviation]]")
            .unwrap();
    let removed = &text[start..end];
    let input_line = removed.lines().find(|l| l.starts_with("input = ")).unwrap();
    let input: String = toml::from_str::<toml::Table>(input_line).unwrap()["input"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(
        root.join("new/nopre.toml"),
        format!("{}{}", &text[..start], &text[end..]),
    )
    .unwrap();

    let runs = Runs::default();
    let c = case::load(&root.join("new/nopre.toml"), &root).unwrap();
    let idx = c
        .tokenize
        .as_ref()
        .unwrap()
        .inputs
        .iter()
        .position(|i| *i == input)
        .unwrap();
    let t = trials::expand(Ok(c), &runs, OracleMode::On);
    let trial = t
        .iter()
        .find(|t| matches!(t.kind, Kind::Tokenize { input } if input == idx))
        .unwrap();
    match trials::check(&runs, trial) {
        Outcome::Fail(m) => {
            assert!(
                m.contains(&format!("{input:?}")),
                "message must name the input {input:?}: {m}"
            );
            assert!(m.contains("oracle ≠ truth"), "{m}");
        }
        o => panic!("removing the deviation for {input:?} must fail, got {o:?}"),
    }
    std::fs::remove_dir_all(&root).ok();
}
