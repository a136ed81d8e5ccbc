//! `bitprobe inspect`: every tiny preset inspects cleanly; the warnings appear where the
//! files call for them (and only there); malformed files are errors that say what and where,
//! never panics.

use engine::gguf::{GgmlType, GgufFile, GgufValue, GgufWriter};
use harness::inspect::{inspect, Inspection, WarningKind};
use std::path::{Path, PathBuf};
use std::process::Command;

fn scratch(test: &str) -> PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bitprobe-inspect-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn kinds(r: &Inspection) -> Vec<WarningKind> {
    r.warnings.iter().map(|w| w.kind).collect()
}

/// Copies a GGUF file, replacing metadata values and tensor data.
fn rewrite(
    src: &Path,
    dst: &Path,
    meta: &[(&str, GgufValue)],
    data: &dyn Fn(&str, &[u8]) -> Vec<u8>,
) {
    let f = GgufFile::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        let v = meta.iter().find(|(o, _)| *o == k).map_or(v, |(_, o)| o);
        w.add_kv(k, v.clone()).unwrap();
    }
    for t in f.tensors() {
        w.add_tensor(
            &t.name,
            &t.dims,
            t.ty,
            data(&t.name, f.tensor_data(t).unwrap()),
        )
        .unwrap();
    }
    w.write_file(dst).unwrap();
}

#[test]
fn every_tiny_preset_inspects_cleanly() {
    let tiny: Vec<_> = engine::forge::presets()
        .iter()
        .filter(|p| p.name.starts_with("tiny"))
        .collect();
    assert!(tiny.len() >= 10);
    for p in tiny {
        let path = engine::forge::forged(p.name, 1).unwrap();
        let r = inspect(&path).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(r.header.tensor_count, f.tensors().len());
        assert_eq!(r.header.file_size, std::fs::metadata(&path).unwrap().len());
        // 2 layers × 7 ternary projections, each exactly ternary×scale.
        assert_eq!(r.ternary.len(), 14, "{}", p.name);
        for t in &r.ternary {
            assert_eq!(
                t.other, 0,
                "{}: {} has values off the ternary grid",
                p.name, t.name
            );
            assert!((t.minus + t.zero + t.plus - 1.0).abs() < 1e-9);
            assert!(
                t.minus > 0.25 && t.zero > 0.25 && t.plus > 0.25,
                "{}: {t:?}",
                p.name
            );
            assert!(t.scale > 0.0 && t.scale.is_finite());
            assert_eq!(t.ty, p.weights.ggml_type().name().to_uppercase());
        }
        // attn_norm, attn_sub_norm, ffn_norm, ffn_sub_norm per layer, and output_norm.
        assert_eq!(r.norms.len(), 9, "{}", p.name);
        assert_eq!(r.embeddings.len(), 1);
        assert!(r.embeddings[0].std > 0.0);
        let expected: Vec<WarningKind> = if p.small_gamma {
            vec![WarningKind::NormGamma]
        } else {
            vec![]
        };
        assert_eq!(kinds(&r), expected, "{}: {:#?}", p.name, r.warnings);
        let text = harness::inspect::render(&r);
        assert!(text.contains("blk.1.ffn_down.weight"));
    }
}

#[test]
fn small_gammas_are_named_as_trained_values() {
    let r = inspect(&engine::forge::forged("tiny-smallgamma-i2s", 1).unwrap()).unwrap();
    let w = &r.warnings[0];
    assert_eq!(w.kind, WarningKind::NormGamma);
    assert!(
        w.message
            .starts_with("attn_norm gammas far from 1: RMS 0.0150 in 2 of 2 tensors"),
        "{}",
        w.message
    );
    assert!(
        w.message.contains("trained values, not corruption"),
        "{}",
        w.message
    );
    let attn: Vec<_> = r
        .norms
        .iter()
        .filter(|n| n.name.ends_with(".attn_norm.weight"))
        .collect();
    assert!(attn.iter().all(|n| n.rms < 0.02 && n.rms > 0.01));
    assert!(r
        .norms
        .iter()
        .filter(|n| n.name.ends_with(".ffn_norm.weight"))
        .all(|n| (1.2..1.5).contains(&n.rms)));
}

#[test]
fn a_missing_pre_tokenizer_is_measured() {
    let r = inspect(&engine::forge::forged("small-llama3-nopre-i2s", 1).unwrap()).unwrap();
    assert_eq!(
        kinds(&r),
        vec![
            WarningKind::NoPreTokenizer,
            WarningKind::Bitnet2026PromptLimit
        ],
        "{:#?}",
        r.warnings
    );
    // Its 1536-row I2_S matrices crash today's bitnet.cpp well inside the 2048 context.
    let w = &r.warnings[1].message;
    assert!(
        w.contains("bitnet.cpp-2026") && w.contains("though its context is 2048"),
        "{w}"
    );
    let m = r
        .tokenizer_measurement
        .as_ref()
        .expect("a Llama-3 vocab is measured");
    let inputs: Vec<String> = serde_json::from_str(harness::inspect::PROBE_STRINGS).unwrap();
    assert_eq!(m.total, inputs.len());
    assert!(m.differ > 0 && m.differ < m.total, "{m:?}");
    let msg = &r.warnings[0].message;
    assert!(
        msg.contains(&format!(
            "{} of the {} built-in probe strings tokenize differently from the trained tokenizer",
            m.differ, m.total
        )),
        "{msg}"
    );
    // The leading example is the familiar one: "don't" splits in three without the Llama-3 regex.
    assert_eq!(m.examples[0].0, "don't");
    assert_eq!((m.examples[0].1.len(), m.examples[0].2.len()), (3, 2));

    // The same vocabulary with the key: no tokenizer warning, nothing measured.
    let r = inspect(&engine::forge::forged("small-llama3-i2s", 1).unwrap()).unwrap();
    assert_eq!(
        kinds(&r),
        vec![WarningKind::Bitnet2026PromptLimit],
        "{:#?}",
        r.warnings
    );
    assert!(r.tokenizer_measurement.is_none());
}

#[test]
fn a_missing_pre_tokenizer_on_a_toy_vocab_is_a_plain_warning() {
    let dir = scratch("nopre-toy");
    let src = engine::forge::forged("tiny-i2s", 1).unwrap();
    let f = GgufFile::open(&src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata().filter(|(k, _)| *k != "tokenizer.ggml.pre") {
        w.add_kv(k, v.clone()).unwrap();
    }
    for t in f.tensors() {
        w.add_tensor(&t.name, &t.dims, t.ty, f.tensor_data(t).unwrap().to_vec())
            .unwrap();
    }
    let dst = dir.join("nopre.gguf");
    w.write_file(&dst).unwrap();
    let r = inspect(&dst).unwrap();
    assert_eq!(kinds(&r), vec![WarningKind::NoPreTokenizer]);
    assert!(
        r.warnings[0].message.contains("not Llama-3-sized"),
        "{}",
        r.warnings[0].message
    );
    assert!(r.tokenizer_measurement.is_none());
}

#[test]
fn nan_inf_and_unknown_arch_are_named() {
    let dir = scratch("nan");
    let src = engine::forge::forged("tiny-f32", 1).unwrap();
    let dst = dir.join("nan.gguf");
    rewrite(
        &src,
        &dst,
        &[("general.architecture", GgufValue::Str("llama".into()))],
        &|name, data| {
            let mut d = data.to_vec();
            if name == "blk.1.attn_v.weight" {
                d[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
                d[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
                d[12..16].copy_from_slice(&f32::NEG_INFINITY.to_le_bytes());
            }
            d
        },
    );
    let r = inspect(&dst).unwrap();
    assert_eq!(
        kinds(&r),
        vec![WarningKind::UnknownArch, WarningKind::NonFinite],
        "{:#?}",
        r.warnings
    );
    assert!(
        r.warnings[0].message.contains("'llama'") && r.warnings[0].message.contains("bitnet-b1.58")
    );
    assert!(
        r.warnings[1]
            .message
            .contains("blk.1.attn_v.weight (F32): 2 NaN, 0 +Inf, 1 −Inf"),
        "{}",
        r.warnings[1].message
    );
}

#[test]
fn i2s_code_3_is_explained() {
    let dir = scratch("code3");
    let src = engine::forge::forged("tiny-i2s", 1).unwrap();
    let dst = dir.join("code3.gguf");
    rewrite(&src, &dst, &[], &|name, data| {
        let mut d = data.to_vec();
        if name == "blk.0.attn_q.weight" {
            d[0] = 0xff; // four values with code 3
        }
        d
    });
    let r = inspect(&dst).unwrap();
    assert_eq!(kinds(&r), vec![WarningKind::I2sCode3]);
    assert!(
        r.warnings[0]
            .message
            .contains("blk.0.attn_q.weight (4 values)"),
        "{}",
        r.warnings[0].message
    );
    assert_eq!(
        r.ternary
            .iter()
            .find(|t| t.name == "blk.0.attn_q.weight")
            .unwrap()
            .other,
        4
    );
}

#[test]
fn malformed_files_are_errors_not_panics() {
    let dir = scratch("malformed");
    let good = std::fs::read(engine::forge::forged("tiny-i2s", 1).unwrap()).unwrap();
    let data_offset = GgufFile::from_bytes(good.clone()).unwrap().data_offset() as usize;
    // Every cut through the header, and a few through the data section.
    let mut cuts: Vec<usize> = (0..data_offset.min(4096)).step_by(7).collect();
    cuts.extend([
        data_offset,
        data_offset + 1000,
        good.len() / 2,
        good.len() - 1,
    ]);
    let path = dir.join("cut.gguf");
    for cut in cuts {
        std::fs::write(&path, &good[..cut]).unwrap();
        let e = inspect(&path).expect_err(&format!("a file cut at byte {cut} is an error"));
        assert!(e.to_string().starts_with("gguf: "), "cut {cut}: {e}");
    }
    std::fs::write(&path, &good[..good.len() - 1]).unwrap();
    let e = inspect(&path).unwrap_err().to_string();
    assert!(
        e.contains("output_norm.weight") && e.contains("data ends at byte"),
        "{e}"
    );

    let mut bad = good.clone();
    bad[..4].copy_from_slice(b"GGML");
    std::fs::write(&path, &bad).unwrap();
    let e = inspect(&path).unwrap_err().to_string();
    assert!(e.contains("bad magic") && e.contains("at byte 0"), "{e}");

    let e = inspect(&dir.join("absent.gguf")).unwrap_err().to_string();
    assert!(
        e.contains("cannot open") && e.contains("absent.gguf"),
        "{e}"
    );
}

#[test]
fn i2s_rows_not_a_multiple_of_128_are_explained() {
    // Rewrite blk.0.attn_q.weight's ne0 from 256 to 192 in the header: the reader refuses it.
    let dir = scratch("rows");
    let mut bytes = std::fs::read(engine::forge::forged("tiny-i2s", 1).unwrap()).unwrap();
    let name = b"blk.0.attn_q.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    assert_eq!(
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()),
        2,
        "n_dims"
    );
    assert_eq!(
        u64::from_le_bytes(bytes[at + 4..at + 12].try_into().unwrap()),
        256,
        "ne0"
    );
    bytes[at + 4..at + 12].copy_from_slice(&192u64.to_le_bytes());
    let path = dir.join("rows.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let e = inspect(&path).unwrap_err();
    assert!(
        matches!(e, harness::inspect::InspectError::I2sRows { .. }),
        "{e:?}"
    );
    let e = e.to_string();
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("192") && e.contains("QK_I2_S"),
        "{e}"
    );
    assert_eq!(GgmlType::I2_S.row_multiple(), 128);
}

#[test]
fn the_cli_exits_2_on_a_malformed_file_and_prints_json() {
    let dir = scratch("cli");
    let path = dir.join("bad.gguf");
    std::fs::write(&path, b"GGUF\x03\x00\x00\x00\xff").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bitprobe"))
        .arg("inspect")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: inspecting ") && stderr.contains("truncated header"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));

    let out = Command::new(env!("CARGO_BIN_EXE_bitprobe"))
        .args(["inspect", "--preset", "tiny-smallgamma-i2s", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["header"]["version"], 3);
    assert_eq!(j["warnings"][0]["kind"], "norm_gamma");
    assert_eq!(
        j["metadata"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["key"] == "tokenizer.ggml.tokens")
            .unwrap()["value"]["len"],
        496
    );
}
