//! Proof that `oracle/patches/0002-arch-bitnet-b1.58.patch` leaves `bitnet` models
//! bit-identical (issue 3).
//!
//! build.rs compiles the UNPATCHED `3rdparty/llama.cpp/src/llama.cpp` of the vendored source
//! (the only file the patch touches) with the exact command CMake used for the patched copy
//! (from `compile_commands.json`), swaps that object into a copy of the patched `libllama.a`
//! with `ar`, and links `src/identity_dump.cpp` against both libraries. Each tool decodes a
//! prompt as one batch with logits at every position, then one more token through the KV
//! cache, and writes every tensor the eval callback is offered (every graph node, raw bytes)
//! and every logits row. Here both run on forged `bitnet` models of every weight type and
//! their outputs must be the same bytes.

use std::path::Path;
use std::process::Command;

const STOCK: &str = env!("BITPROBE_IDENTITY_DUMP_STOCK");
const PATCHED: &str = env!("BITPROBE_IDENTITY_DUMP_PATCHED");

/// Whether there is anything to prove: build.rs builds the tools only for a 2024-layout tree,
/// whose patch set changes llama.cpp; a 2026-layout `BITNET_CPP_DIR` gets empty paths.
fn tools_built() -> bool {
    if STOCK.is_empty() {
        eprintln!(
            "skipped: {} has no patch to llama.cpp to prove neutral",
            oracle::implementation()
        );
        return false;
    }
    true
}

/// Runs one tool; returns the dump's bytes and the tensor count it reports.
fn dump(tool: &str, model: &Path, out: &Path) -> (Vec<u8>, usize) {
    let o = Command::new(tool)
        .arg(model)
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(
        o.status.success(),
        "{tool} {}: {} {}",
        model.display(),
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    let tensors = stdout
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{tool}: {stdout}"));
    (std::fs::read(out).unwrap(), tensors)
}

#[test]
fn patch_0002_leaves_bitnet_models_bit_identical() {
    if !tools_built() {
        return;
    }
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bitprobe-patch-identity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut dumps: Vec<Vec<u8>> = Vec::new();
    for preset in ["tiny-f32", "tiny-f16", "tiny-i2s", "tiny-tq1", "tiny-tq2"] {
        let model = engine::forge::forged(preset, 1).unwrap();
        let (stock, n_stock) = dump(STOCK, &model, &dir.join(format!("{preset}.stock")));
        let (patched, n_patched) = dump(PATCHED, &model, &dir.join(format!("{preset}.patched")));
        eprintln!(
            "{preset}: {n_stock} tensors, {} bytes; identical: {}",
            stock.len(),
            stock == patched
        );
        // Non-trivial: a 2-layer model's graph has well over 100 nodes for the two decodes,
        // and the dump holds the logits of every position.
        assert!(n_stock >= 100, "{preset}: only {n_stock} tensors dumped");
        assert!(
            stock.len() > 1 << 20,
            "{preset}: only {} bytes dumped",
            stock.len()
        );
        assert_eq!(n_stock, n_patched, "{preset}: the graphs differ in size");
        if let Some(i) = stock.iter().zip(&patched).position(|(a, b)| a != b) {
            panic!(
                "{preset}: dumps differ first at byte {i} of {}",
                stock.len()
            );
        }
        assert_eq!(stock.len(), patched.len(), "{preset}");
        if !dumps.contains(&stock) {
            dumps.push(stock);
        }
    }
    // The dumps carry each model's own numbers: f32, f16, i2_s and the TQ pair all differ
    // (tq1_0 and tq2_0 store the same ternary weights exactly and share the Q8_K activation
    // path, so those two dumps coincide).
    assert_eq!(dumps.len(), 4, "distinct dumps over the five weight types");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The stock tool really is the unpatched code: it does not know arch `bitnet-b1.58`.
#[test]
fn the_stock_library_is_unpatched() {
    if !tools_built() {
        return;
    }
    let model = engine::forge::forged("tiny158-i2s", 1).unwrap();
    let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "bitprobe-patch-identity-158-{}",
        std::process::id()
    ));
    let stock = Command::new(STOCK).arg(&model).arg(&out).output().unwrap();
    assert!(
        !stock.status.success(),
        "the stock library loaded a bitnet-b1.58 model"
    );
    let patched = Command::new(PATCHED)
        .arg(&model)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        patched.status.success(),
        "{}",
        String::from_utf8_lossy(&patched.stderr)
    );
    let _ = std::fs::remove_file(&out);
}
