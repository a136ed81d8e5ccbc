//! Forge presets: listing, determinism, and the layout of every tiny preset as bitnet.cpp's
//! loader expects it (read back through our own GGUF reader).

use std::collections::BTreeSet;
use std::path::PathBuf;

use engine::forge::{self, forge_to, preset, presets, Arch, ForgeError, WeightType};
use engine::gguf::{GgmlType, GgufFile};
use half::f16;

fn temp_path(tag: &str) -> PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bitprobe-forge-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{tag}.gguf"))
}

fn forge_bytes(name: &str, seed: u64) -> Vec<u8> {
    let path = temp_path(&format!("{name}-{seed}"));
    forge_to(preset(name).unwrap(), seed, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    bytes
}

#[test]
fn every_preset_is_listed_with_a_description() {
    let mut names = BTreeSet::new();
    for p in presets() {
        assert!(names.insert(p.name), "duplicate preset {}", p.name);
        assert!(
            p.description.len() > 20,
            "{} has no real description",
            p.name
        );
        assert_eq!(p.n_embd % p.n_head, 0, "{}", p.name);
        assert_eq!(p.n_head % p.n_head_kv, 0, "{}", p.name);
        // Every projection row must be whole blocks of its type (TQ: 256, I2_S: 128).
        let row = p.weights.ggml_type().row_multiple() as u32;
        for d in [p.n_embd, p.n_ff] {
            assert_eq!(d % row, 0, "{}: {d} not a multiple of {row}", p.name);
        }
    }
    let expected = [
        "tiny-f32",
        "tiny-f16",
        "tiny-i2s",
        "tiny-tq1",
        "tiny-tq2",
        "tiny158-f32",
        "tiny158-f16",
        "tiny158-i2s",
        "tiny158-tq1",
        "tiny158-tq2",
        "tiny-gqa2-i2s",
        "tiny-smallgamma-i2s",
        "tiny-hot-i2s",
        "small-llama3-f32",
        "small-llama3-f16",
        "small-llama3-i2s",
        "small-llama3-tq1",
        "small-llama3-tq2",
        "small-llama3-nopre-i2s",
        "pin158-untied-i2s",
        "pin158-scales-i2s",
        "pin-scales-i2s",
        "2b4t-f32",
        "2b4t-f16",
        "2b4t-i2s",
        "2b4t-tq1",
        "2b4t-tq2",
        "trained-f32",
        "trained-f16",
        "trained-i2s",
        "trained-tq1",
        "trained-tq2",
    ];
    assert_eq!(names, expected.into_iter().collect());
}

#[test]
fn unknown_preset_error_lists_valid_names() {
    let e = preset("tiny-q4").unwrap_err();
    assert!(matches!(e, ForgeError::UnknownPreset { .. }));
    let s = e.to_string();
    assert!(
        s.contains("'tiny-q4'") && s.contains("tiny-i2s") && s.contains("2b4t-tq2"),
        "{s}"
    );
}

#[test]
fn forging_is_deterministic() {
    let a = forge_bytes("tiny-i2s", 7);
    let b = forge_bytes("tiny-i2s", 7);
    assert!(a == b, "same preset and seed gave different bytes");
    let c = forge_bytes("tiny-i2s", 8);
    assert_eq!(a.len(), c.len());
    assert!(a != c, "a different seed gave the same model");
}

fn expected_tensors(p: &forge::Preset) -> Vec<(String, Vec<u64>, GgmlType)> {
    let (e, kv, ff) = (
        u64::from(p.n_embd),
        u64::from(p.n_embd / p.n_head * p.n_head_kv),
        u64::from(p.n_ff),
    );
    let w = p.weights.ggml_type();
    let emb = if p.weights == WeightType::F32 {
        GgmlType::F32
    } else {
        GgmlType::F16
    };
    let mut out = vec![("token_embd.weight".to_string(), vec![e, 496], emb)];
    for i in 0..p.n_layer {
        let n = |s: &str| format!("blk.{i}.{s}.weight");
        out.extend([
            (n("attn_norm"), vec![e], GgmlType::F32),
            (n("attn_q"), vec![e, e], w),
            (n("attn_k"), vec![e, kv], w),
            (n("attn_v"), vec![e, kv], w),
            (n("attn_output"), vec![e, e], w),
            (n("attn_sub_norm"), vec![e], GgmlType::F32),
            (n("ffn_norm"), vec![e], GgmlType::F32),
            (n("ffn_gate"), vec![e, ff], w),
            (n("ffn_up"), vec![e, ff], w),
            (n("ffn_down"), vec![ff, e], w),
            (n("ffn_sub_norm"), vec![ff], GgmlType::F32),
        ]);
    }
    out.push(("output_norm.weight".to_string(), vec![e], GgmlType::F32));
    out
}

#[test]
fn every_tiny_preset_reads_back_with_the_loader_layout() {
    for p in presets().iter().filter(|p| p.name.starts_with("tiny")) {
        let bytes = forge_bytes(p.name, 1);
        assert!(
            bytes.len() < 5_000_000,
            "{} is {} bytes",
            p.name,
            bytes.len()
        );
        let f = GgufFile::from_bytes(bytes).unwrap();
        let arch = f.get_str("general.architecture").unwrap().to_string();
        let want_arch = if p.arch == Arch::Bitnet158 {
            "bitnet-b1.58"
        } else {
            "bitnet"
        };
        assert_eq!(arch, want_arch);
        assert!(p.name.starts_with("tiny158") == (arch == "bitnet-b1.58"));
        let k = |s: &str| format!("{arch}.{s}");
        assert_eq!(f.get_u32(&k("embedding_length")).unwrap(), 256);
        assert_eq!(f.get_u32(&k("block_count")).unwrap(), 2);
        assert_eq!(f.get_u32(&k("feed_forward_length")).unwrap(), 512);
        assert_eq!(f.get_u32(&k("attention.head_count")).unwrap(), 8);
        let kv_heads = if p.name == "tiny-gqa2-i2s" { 4 } else { 2 };
        assert_eq!(f.get_u32(&k("attention.head_count_kv")).unwrap(), kv_heads);
        assert_eq!(f.get_u32(&k("rope.dimension_count")).unwrap(), 32);
        assert_eq!(f.get_u32(&k("context_length")).unwrap(), 2048);
        assert_eq!(f.get_u32(&k("vocab_size")).unwrap(), 496);
        assert_eq!(f.get_f32(&k("rope.freq_base")).unwrap(), 500000.0);
        assert_eq!(
            f.get_f32(&k("attention.layer_norm_rms_epsilon")).unwrap(),
            1e-5
        );
        assert_eq!(
            f.get_u32("general.file_type").unwrap(),
            p.weights.file_type()
        );

        assert_eq!(f.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
        assert_eq!(f.get_str("tokenizer.ggml.pre").unwrap(), "llama-bpe");
        let tokens = f.get_arr_str("tokenizer.ggml.tokens").unwrap();
        let types = f.get_arr_i32("tokenizer.ggml.token_type").unwrap();
        let merges = f.get_arr_str("tokenizer.ggml.merges").unwrap();
        assert_eq!((tokens.len(), types.len()), (496, 496));
        assert_eq!(merges.len(), 238);
        assert_eq!(tokens[b'a' as usize], "a");
        assert_eq!(tokens[b' ' as usize], "Ġ");
        assert_eq!(tokens[b'\n' as usize], "Ċ");
        assert_eq!(f.get_u32("tokenizer.ggml.bos_token_id").unwrap(), 494);
        assert_eq!(f.get_u32("tokenizer.ggml.eos_token_id").unwrap(), 495);
        assert_eq!(tokens[494], "<|begin_of_text|>");
        assert_eq!(tokens[495], "<|end_of_text|>");
        assert_eq!(&types[493..], &[1, 3, 3]);
        assert!(f.get_bool("tokenizer.ggml.add_bos_token").unwrap());
        // Every merge joins two tokens into a third, all in the vocabulary.
        let set: BTreeSet<&str> = tokens.iter().map(String::as_str).collect();
        assert_eq!(set.len(), tokens.len(), "token texts must be unique");
        for m in merges {
            let (l, r) = m.split_once(' ').unwrap();
            assert!(
                set.contains(l) && set.contains(r) && set.contains(format!("{l}{r}").as_str()),
                "{m}"
            );
        }

        let got: Vec<(String, Vec<u64>, GgmlType)> = f
            .tensors()
            .iter()
            .map(|t| (t.name.clone(), t.dims.clone(), t.ty))
            .collect();
        let mut want = expected_tensors(p);
        if kv_heads == 4 {
            for t in &mut want {
                if t.0.contains("attn_k") || t.0.contains("attn_v") {
                    t.1[1] = 128;
                }
            }
        }
        assert_eq!(got, want, "{}", p.name);
    }
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn f16s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(2)
        .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}

/// Decodes I2_S the simple way (layout in BITNET_NOTES §3).
fn i2s(b: &[u8], n: usize) -> Vec<f32> {
    let s = f32::from_le_bytes(b[n / 4..n / 4 + 4].try_into().unwrap());
    (0..n)
        .map(|i| (f32::from((b[i / 128 * 32 + i % 32] >> (6 - 2 * (i % 128 / 32))) & 3) - 1.0) * s)
        .collect()
}

#[test]
fn all_storage_types_hold_the_same_model() {
    let f32m = GgufFile::from_bytes(forge_bytes("tiny-f32", 3)).unwrap();
    let f16m = GgufFile::from_bytes(forge_bytes("tiny-f16", 3)).unwrap();
    let i2sm = GgufFile::from_bytes(forge_bytes("tiny-i2s", 3)).unwrap();
    for t in f32m.tensors() {
        let reference = f32s(f32m.tensor_data(t).unwrap());
        let n = reference.len();
        let other16 = f16m.tensor_bytes(&t.name).unwrap();
        let other2 = i2sm.tensor_bytes(&t.name).unwrap();
        match f16m.tensor(&t.name).unwrap().ty {
            GgmlType::F16 => assert_eq!(f16s(other16), reference, "{}", t.name),
            _ => assert_eq!(f32s(other16), reference, "{}", t.name),
        }
        match i2sm.tensor(&t.name).unwrap().ty {
            GgmlType::I2_S => assert_eq!(i2s(other2, n), reference, "{}", t.name),
            GgmlType::F16 => assert_eq!(f16s(other2), reference, "{}", t.name),
            _ => assert_eq!(f32s(other2), reference, "{}", t.name),
        }
    }
}

#[test]
fn weights_have_the_intended_statistics() {
    let f = GgufFile::from_bytes(forge_bytes("tiny-f32", 5)).unwrap();
    let rms = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
    let emb = f32s(f.tensor_bytes("token_embd.weight").unwrap());
    assert!(
        (rms(&emb) - 0.125).abs() < 0.01,
        "embedding rms {}",
        rms(&emb)
    );
    let q = f32s(f.tensor_bytes("blk.0.attn_q.weight").unwrap());
    let scale = q.iter().fold(0f32, |m, x| m.max(x.abs()));
    let zeros = q.iter().filter(|&&x| x == 0.0).count() as f32 / q.len() as f32;
    assert!((zeros - 1.0 / 3.0).abs() < 0.02, "zeros {zeros}");
    let base = (1.5f32 / 256.0).sqrt();
    assert!(
        scale >= 0.79 * base && scale <= 1.21 * base,
        "scale {scale}"
    );
    assert!(q.iter().all(|&x| x == 0.0 || x.abs() == scale));
    let g = f32s(f.tensor_bytes("blk.1.ffn_norm.weight").unwrap());
    assert!((rms(&g) - 1.0).abs() < 0.05);

    let s = GgufFile::from_bytes(forge_bytes("tiny-smallgamma-i2s", 5)).unwrap();
    let attn = f32s(s.tensor_bytes("blk.0.attn_norm.weight").unwrap());
    let ffn = f32s(s.tensor_bytes("blk.0.ffn_norm.weight").unwrap());
    assert!(
        (rms(&attn) - 0.015).abs() < 0.002,
        "attn_norm rms {}",
        rms(&attn)
    );
    assert!((rms(&ffn) - 1.3).abs() < 0.05, "ffn_norm rms {}", rms(&ffn));

    let h = GgufFile::from_bytes(forge_bytes("tiny-hot-i2s", 5)).unwrap();
    let attn = f32s(h.tensor_bytes("blk.0.attn_norm.weight").unwrap());
    assert!(
        (rms(&attn) - 8.0).abs() < 0.3,
        "hot attn_norm rms {}",
        rms(&attn)
    );
}

#[test]
fn forged_caches_by_preset_seed_and_version() {
    let a = forge::forged("tiny-tq2", 11).unwrap();
    let name = a.file_name().unwrap().to_str().unwrap().to_string();
    let hash = forge::version_hash(preset("tiny-tq2").unwrap());
    assert_eq!(name, format!("tiny-tq2-s11-{hash}.gguf"));
    assert!(a.starts_with(forge::cache_dir()));
    // Concurrent callers all get the same complete file.
    let paths: Vec<PathBuf> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| forge::forged("tiny-tq2", 11).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(paths.iter().all(|p| *p == a));
    let f = GgufFile::open(&a).unwrap();
    assert_eq!(f.get_str("general.name").unwrap(), "tiny-tq2");
    assert_eq!(f.get_u64("bitprobe.forge.seed").unwrap(), 11);
    assert!(matches!(
        forge::forged("nope", 1),
        Err(ForgeError::UnknownPreset { .. })
    ));
}
