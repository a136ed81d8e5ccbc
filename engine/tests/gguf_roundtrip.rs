//! GGUF writer → reader round trips: every metadata value type, every weight type the forge
//! writes, alignment, versions, typed getters.

use engine::gguf::{
    GgmlType, GgufArray, GgufError, GgufFile, GgufValue, GgufValueType, GgufWriter,
};

fn all_scalar_values() -> Vec<(&'static str, GgufValue)> {
    vec![
        ("t.u8", GgufValue::U8(200)),
        ("t.i8", GgufValue::I8(-100)),
        ("t.u16", GgufValue::U16(60_000)),
        ("t.i16", GgufValue::I16(-30_000)),
        ("t.u32", GgufValue::U32(4_000_000_000)),
        ("t.i32", GgufValue::I32(-2_000_000_000)),
        ("t.f32", GgufValue::F32(1e-5)),
        ("t.bool", GgufValue::Bool(true)),
        ("t.str", GgufValue::Str("héllo ĠGGUF".into())),
        ("t.u64", GgufValue::U64(u64::MAX - 7)),
        ("t.i64", GgufValue::I64(i64::MIN + 3)),
        ("t.f64", GgufValue::F64(-2.5e300)),
    ]
}

fn all_array_values() -> Vec<(&'static str, GgufArray)> {
    vec![
        ("a.u8", GgufArray::U8(vec![0, 1, 255])),
        ("a.i8", GgufArray::I8(vec![-128, 0, 127])),
        ("a.u16", GgufArray::U16(vec![1, 65535])),
        ("a.i16", GgufArray::I16(vec![-32768, 32767])),
        ("a.u32", GgufArray::U32(vec![7, 8, 9])),
        ("a.i32", GgufArray::I32(vec![1, 3, -1])),
        ("a.f32", GgufArray::F32(vec![0.5, -0.0, f32::MAX])),
        ("a.bool", GgufArray::Bool(vec![true, false, true])),
        (
            "a.str",
            GgufArray::Str(vec!["Ġt he".into(), String::new(), "<|eot_id|>".into()]),
        ),
        ("a.u64", GgufArray::U64(vec![u64::MAX])),
        ("a.i64", GgufArray::I64(vec![i64::MIN, 0])),
        ("a.f64", GgufArray::F64(vec![1.0 / 3.0])),
        ("a.empty", GgufArray::F32(vec![])),
        (
            "a.nested",
            GgufArray::Array(vec![
                GgufArray::U32(vec![1, 2]),
                GgufArray::Str(vec!["x".into()]),
                GgufArray::Array(vec![GgufArray::Bool(vec![false])]),
            ]),
        ),
    ]
}

#[test]
fn every_metadata_type_round_trips_in_order() {
    let mut w = GgufWriter::new();
    let mut expected: Vec<(String, GgufValue)> = Vec::new();
    for (k, v) in all_scalar_values() {
        w.add_kv(k, v.clone()).unwrap();
        expected.push((k.to_string(), v));
    }
    for (k, a) in all_array_values() {
        w.add_arr(k, a.clone()).unwrap();
        expected.push((k.to_string(), GgufValue::Array(a)));
    }
    let f = GgufFile::from_bytes(w.into_bytes().unwrap()).unwrap();
    assert_eq!(f.version(), 3);
    let got: Vec<(String, GgufValue)> = f
        .metadata()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    assert_eq!(got, expected);

    // Typed getters.
    assert_eq!(f.get_u8("t.u8").unwrap(), 200);
    assert_eq!(f.get_i8("t.i8").unwrap(), -100);
    assert_eq!(f.get_u16("t.u16").unwrap(), 60_000);
    assert_eq!(f.get_i16("t.i16").unwrap(), -30_000);
    assert_eq!(f.get_u32("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(f.get_i32("t.i32").unwrap(), -2_000_000_000);
    assert_eq!(f.get_f32("t.f32").unwrap(), 1e-5);
    assert!(f.get_bool("t.bool").unwrap());
    assert_eq!(f.get_str("t.str").unwrap(), "héllo ĠGGUF");
    assert_eq!(f.get_u64("t.u64").unwrap(), u64::MAX - 7);
    assert_eq!(f.get_i64("t.i64").unwrap(), i64::MIN + 3);
    assert_eq!(f.get_f64("t.f64").unwrap(), -2.5e300);
    assert_eq!(f.get_arr_i32("a.i32").unwrap(), &[1, 3, -1]);
    assert_eq!(f.get_arr_str("a.str").unwrap()[2], "<|eot_id|>");
    assert_eq!(
        f.get_arr("a.nested").unwrap().elem_type(),
        GgufValueType::Array
    );
    assert_eq!(f.get_arr("a.empty").unwrap().len(), 0);
}

#[test]
fn typed_getters_name_key_and_types_on_mismatch() {
    let mut w = GgufWriter::new();
    w.add_str("general.name", "x").unwrap();
    w.add_arr("tokenizer.ggml.tokens", GgufArray::Str(vec!["a".into(); 3]))
        .unwrap();
    let f = GgufFile::from_bytes(w.into_bytes().unwrap()).unwrap();

    let e = f.get_u32("general.name").unwrap_err().to_string();
    assert!(
        e.contains("'general.name'") && e.contains("expected u32") && e.contains("found str"),
        "{e}"
    );
    let e = f
        .get_arr_i32("tokenizer.ggml.tokens")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("expected arr[i32]") && e.contains("found arr[str,3]"),
        "{e}"
    );
    let e = f.get_f32("nope.key").unwrap_err();
    assert!(
        matches!(e, GgufError::MissingKey(ref k) if k == "nope.key"),
        "{e}"
    );
    assert!(f
        .tensor_bytes("blk.0.attn_q.weight")
        .unwrap_err()
        .to_string()
        .contains("blk.0.attn_q.weight"));
}

/// Deterministic filler bytes (no RNG dependency needed here).
fn filler(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

#[test]
fn every_forge_weight_type_round_trips() {
    // (type, dims, expected size): I2_S n/4 + 32; TQ1_0 54 B and TQ2_0 66 B per 256 values.
    let cases: Vec<(GgmlType, Vec<u64>, usize)> = vec![
        (GgmlType::F32, vec![7], 28),
        (GgmlType::F16, vec![256, 3], 1536),
        (GgmlType::I2_S, vec![256, 4], 256 * 4 / 4 + 32),
        (GgmlType::I2_S, vec![128, 1], 64),
        (GgmlType::TQ1_0, vec![512, 2], 4 * 54),
        (GgmlType::TQ2_0, vec![256, 3], 3 * 66),
        (GgmlType::F32, vec![2, 3, 4, 5], 480),
    ];
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "bitnet").unwrap();
    for (i, (ty, dims, size)) in cases.iter().enumerate() {
        assert_eq!(
            ty.tensor_data_size(dims),
            Some(*size as u64),
            "{ty} {dims:?}"
        );
        w.add_tensor(&format!("t{i}"), dims, *ty, filler(*size, i as u8))
            .unwrap();
    }
    let bytes = w.into_bytes().unwrap();
    let f = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(f.data_offset() % 32, 0);
    assert_eq!(f.tensors().len(), cases.len());
    for (i, (ty, dims, size)) in cases.iter().enumerate() {
        let t = f.tensor(&format!("t{i}")).unwrap();
        assert_eq!((&t.dims, t.ty, t.size), (dims, *ty, *size as u64));
        assert_eq!(t.offset % 32, 0);
        assert_eq!(f.tensor_data(t).unwrap(), filler(*size, i as u8).as_slice());
    }
}

#[test]
fn lazy_tensors_and_file_io_round_trip_through_mmap() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bitprobe-gguf-rt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lazy.gguf");
    let mut w = GgufWriter::new();
    w.add_u32("x.n", 3).unwrap();
    w.add_tensor_with("lazy", &[128, 2], GgmlType::I2_S, || filler(96, 9))
        .unwrap();
    let n = w.write_file(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.file_size(), n);
    assert_eq!(f.tensor_bytes("lazy").unwrap(), filler(96, 9).as_slice());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lazy_tensor_of_wrong_size_fails_the_write() {
    let mut w = GgufWriter::new();
    w.add_tensor_with("bad", &[8], GgmlType::F32, || vec![0; 31])
        .unwrap();
    let e = w.into_bytes().unwrap_err().to_string();
    assert!(
        e.contains("tensor bad") && e.contains("31") && e.contains("32"),
        "{e}"
    );
}

#[test]
fn writer_rejects_duplicates_and_wrong_sizes() {
    let mut w = GgufWriter::new();
    w.add_u32("k", 1).unwrap();
    assert!(matches!(w.add_u32("k", 2), Err(GgufError::DuplicateKey(_))));
    w.add_tensor("t", &[4], GgmlType::F32, vec![0; 16]).unwrap();
    assert!(matches!(
        w.add_tensor("t", &[4], GgmlType::F32, vec![0; 16]),
        Err(GgufError::DuplicateTensor(_))
    ));
    let e = w
        .add_tensor("u", &[4], GgmlType::F32, vec![0; 15])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tensor u") && e.contains("15") && e.contains("16"),
        "{e}"
    );
    // I2_S rows must be whole 128-value blocks.
    assert!(matches!(
        w.add_tensor("v", &[64, 2], GgmlType::I2_S, vec![0; 64]),
        Err(GgufError::RowNotMultiple { .. })
    ));
}

#[test]
fn custom_alignment_is_written_and_honoured() {
    let mut w = GgufWriter::new();
    w.set_alignment(64).unwrap();
    w.add_tensor("a", &[3], GgmlType::F32, filler(12, 1))
        .unwrap();
    w.add_tensor("b", &[5], GgmlType::F32, filler(20, 2))
        .unwrap();
    let f = GgufFile::from_bytes(w.into_bytes().unwrap()).unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.get_u32("general.alignment").unwrap(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.tensor("b").unwrap().offset, 64);
    assert_eq!(f.tensor_bytes("b").unwrap(), filler(20, 2).as_slice());
    assert!(GgufWriter::new().set_alignment(48).is_err());
}

#[test]
fn version_2_files_are_read() {
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "bitnet").unwrap();
    w.add_tensor("t", &[8], GgmlType::F16, filler(16, 3))
        .unwrap();
    let mut bytes = w.into_bytes().unwrap();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let f = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(f.version(), 2);
    assert_eq!(f.get_str("general.architecture").unwrap(), "bitnet");
}

#[test]
fn writer_output_is_deterministic() {
    let make = || {
        let mut w = GgufWriter::new();
        for (k, v) in all_scalar_values() {
            w.add_kv(k, v).unwrap();
        }
        w.add_tensor("t", &[256], GgmlType::TQ2_0, filler(66, 5))
            .unwrap();
        w.into_bytes().unwrap()
    };
    assert_eq!(make(), make());
}

#[test]
fn ggml_type_table_matches_vendored_ggml() {
    // Ids from ggml.h; sizes from type_traits / ggml-common.h.
    let table: &[(u32, &str, u64, u64)] = &[
        (0, "f32", 1, 4),
        (1, "f16", 1, 2),
        (2, "q4_0", 32, 18),
        (3, "q4_1", 32, 20),
        (6, "q5_0", 32, 22),
        (7, "q5_1", 32, 24),
        (8, "q8_0", 32, 34),
        (9, "q8_1", 32, 36),
        (10, "q2_K", 256, 84),
        (11, "q3_K", 256, 110),
        (12, "q4_K", 256, 144),
        (13, "q5_K", 256, 176),
        (14, "q6_K", 256, 210),
        (15, "q8_K", 256, 292),
        (16, "iq2_xxs", 256, 66),
        (17, "iq2_xs", 256, 74),
        (18, "iq3_xxs", 256, 98),
        (19, "iq1_s", 256, 50),
        (20, "iq4_nl", 32, 18),
        (21, "iq3_s", 256, 110),
        (22, "iq2_s", 256, 82),
        (23, "iq4_xs", 256, 136),
        (24, "i8", 1, 1),
        (25, "i16", 1, 2),
        (26, "i32", 1, 4),
        (27, "i64", 1, 8),
        (28, "f64", 1, 8),
        (29, "iq1_m", 256, 56),
        (30, "bf16", 1, 2),
        (31, "q4_0_4x4", 32, 18),
        (32, "q4_0_4x8", 32, 18),
        (33, "q4_0_8x8", 32, 18),
        (34, "tq1_0", 256, 54),
        (35, "tq2_0", 256, 66),
        (36, "i2_s", 1, 1),
        (37, "i8_s", 1, 1),
        (38, "tl1", 1, 1),
        (39, "tl2", 1, 1),
    ];
    for &(id, name, bs, ts) in table {
        let t = GgmlType::from_id(id).unwrap_or_else(|| panic!("id {id}"));
        assert_eq!(
            (t.id(), t.name(), t.block_size(), t.type_size()),
            (id, name, bs, ts)
        );
    }
    assert_eq!(GgmlType::ALL.len(), table.len());
    for id in [4, 5, 40, 77, u32::MAX] {
        assert!(GgmlType::from_id(id).is_none(), "{id}");
    }
    // ggml_nbytes: I2_S is n/4 + 32, whatever block_size says.
    assert_eq!(
        GgmlType::I2_S.data_size(2560 * 6912),
        Some(2560 * 6912 / 4 + 32)
    );
    assert_eq!(GgmlType::Q4_0.data_size(33), None);
    assert_eq!(GgmlType::F32.data_size(u64::MAX), None);
}

/// A file of at least `HUGE_PAGE_MIN_FILE` bytes: one F32 tensor of a known pattern.
fn large_file(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
    let n = (engine::gguf::HUGE_PAGE_MIN_FILE as usize) / 4 + 1024;
    let data: Vec<u8> = (0..n as u32)
        .flat_map(|i| (i ^ 0x5a5a).to_le_bytes())
        .collect();
    let path = dir.join("large.gguf");
    let mut w = GgufWriter::new();
    w.add_u32("x.n", 7).unwrap();
    let d = data.clone();
    w.add_tensor_with("big", &[n as u64], GgmlType::F32, move || d)
        .unwrap();
    w.write_file(&path).unwrap();
    (path, data)
}

#[test]
fn huge_page_loads_read_the_same_image_as_the_map() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bitprobe-gguf-huge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (path, data) = large_file(&dir);
    let mapped = GgufFile::open(&path).unwrap();
    assert!(mapped.file_size() >= engine::gguf::HUGE_PAGE_MIN_FILE);
    for f in [
        GgufFile::open_in_huge_pages(&path).unwrap(),
        GgufFile::copy_into_huge_pages(&path).unwrap(),
    ] {
        assert_eq!(f.bytes(), mapped.bytes());
        assert_eq!(f.tensor_bytes("big").unwrap(), data.as_slice());
        assert_eq!(f.get("x.n"), Some(&GgufValue::U32(7)));
        // Whatever the kernel granted, the share is a share; on Linux it is known.
        let share = f.huge_page_share();
        assert_eq!(share.is_some(), cfg!(target_os = "linux"), "{share:?}");
        assert!(share.is_none_or(|s| (0.0..=1.0).contains(&s)), "{share:?}");
    }
    // The copy starts on a 2 MiB boundary, so every 2 MiB of it can be one huge page.
    let copy = GgufFile::copy_into_huge_pages(&path).unwrap();
    assert_eq!(copy.bytes().as_ptr() as usize % (2 << 20), 0);
    // A small file keeps the plain map (nothing copied): same image.
    let small = dir.join("small.gguf");
    let mut w = GgufWriter::new();
    w.add_tensor_with("t", &[128, 2], GgmlType::I2_S, || filler(96, 3))
        .unwrap();
    w.write_file(&small).unwrap();
    let f = GgufFile::open_in_huge_pages(&small).unwrap();
    assert_eq!(f.bytes(), std::fs::read(&small).unwrap().as_slice());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn huge_page_loads_name_the_file_they_cannot_read() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bitprobe-gguf-huge-err-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("missing.gguf");
    for e in [
        GgufFile::open_in_huge_pages(&missing).unwrap_err(),
        GgufFile::copy_into_huge_pages(&missing).unwrap_err(),
    ] {
        assert!(matches!(e, GgufError::Io { .. }), "{e:?}");
        assert!(e.to_string().contains("missing.gguf"), "{e}");
    }
    for e in [
        GgufFile::open_in_huge_pages(&dir).unwrap_err(),
        GgufFile::copy_into_huge_pages(&dir).unwrap_err(),
    ] {
        assert!(matches!(e, GgufError::NotAFile(_)), "{e:?}");
    }
    // Not GGUF: the copy is parsed like the map.
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"GGUF\x03\0\0\0").unwrap();
    let e = GgufFile::copy_into_huge_pages(&junk)
        .unwrap_err()
        .to_string();
    let m = GgufFile::open(&junk).unwrap_err().to_string();
    assert_eq!(e, m);
    std::fs::remove_dir_all(&dir).unwrap();
}
