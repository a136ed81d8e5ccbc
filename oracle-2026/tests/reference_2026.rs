//! What is particular to today's bitnet.cpp (`bitnet.cpp-2026`), checked in-process and on
//! the server binary: its `--version`, and the differences from the 2024 reference plus our
//! patch that the forge's `pin*` presets pin (see `build_bitnet_158` in the 2026 tree's
//! 3rdparty/llama.cpp/src/llama.cpp).

use oracle_2026::OracleProbe;
use probe::{Capture, OpenRequest, Probe};

fn forward(preset: &str) -> probe::Result<Vec<f32>> {
    let path = engine::forge::forged(preset, 1).unwrap_or_else(|e| panic!("forge {preset}: {e}"));
    let mut p = OracleProbe::open(&OpenRequest::new(path).threads(1))?;
    let tokens = p.tokenize("Hello world, the quick brown fox", true, false)?;
    Ok(p.forward(&tokens, &Capture::none())?.logits)
}

fn engine_forward(preset: &str) -> Vec<f32> {
    let path = engine::forge::forged(preset, 1).unwrap();
    let mut p = engine::engine_probe::EngineProbe::open(&OpenRequest::new(path).threads(1))
        .unwrap_or_else(|e| panic!("engine {preset}: {e}"));
    let tokens = p
        .tokenize("Hello world, the quick brown fox", true, false)
        .unwrap();
    p.forward(&tokens, &Capture::none()).unwrap().logits
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn version_names_the_tree_and_exactly_the_patches_applied() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bitprobe-oracle-2026"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    eprintln!("{text}");
    let src = oracle_2026::source_info();
    assert!(text.starts_with("bitnet.cpp-2026 (oracle-2026 "), "{text}");
    assert!(text.contains(&format!("tree-sha256: {}\n", src.tree_sha256)));
    let listed: Vec<&str> = text.lines().filter(|l| l.starts_with("patch: ")).collect();
    assert_eq!(listed.len(), src.patches.len(), "{text}");
    for ((name, sha), line) in src.patches.iter().zip(&listed) {
        assert_eq!(*line, format!("patch: {name} sha256={sha}"));
    }
    if src.package == "bitnet-llm-sys-1.0.2" {
        // The package ships include/bitnet-lut-kernels.h: the header patch is not applied.
        assert!(!text.contains("0002-"), "{text}");
    }
}

/// `build_bitnet_158` multiplies by `tok_embd` whatever the file holds: a model that differs
/// from tiny158-i2s only by an extra `output.weight` gives the same bits. The engine (like the
/// 2024 reference's patch) uses `output.weight`, so its logits move.
#[test]
fn untied_output_weight_is_loaded_but_not_used() {
    let tied = forward("tiny158-i2s").unwrap();
    let untied = forward("pin158-untied-i2s").unwrap();
    assert_eq!(bits(&tied), bits(&untied));
    assert_ne!(
        bits(&engine_forward("tiny158-i2s")),
        bits(&engine_forward("pin158-untied-i2s")),
        "the pin must matter to an implementation that uses output.weight"
    );
}

/// No `*.scale` tensor is created for `bitnet-b1.58`, so the loader's tensor count check
/// (`done_getting_tensors`) refuses a file that has them.
#[test]
fn scale_tensors_are_refused_under_bitnet_b158() {
    let err = forward("pin158-scales-i2s").unwrap_err();
    let probe::Error::Load { message, .. } = &err else {
        panic!("{err}")
    };
    assert!(message.contains("wrong number of tensors"), "{message}");
}

/// Under arch `bitnet` (`build_bitnet`) the scales are loaded and applied.
#[test]
fn scale_tensors_are_applied_under_bitnet() {
    let plain = forward("tiny-i2s").unwrap();
    let scaled = forward("pin-scales-i2s").unwrap();
    assert_eq!(plain.len(), scaled.len());
    assert_ne!(bits(&plain), bits(&scaled));
}
