//! Malformed GGUF input: one test per class of damage, each asserting the typed error and
//! that its message says what and where; every prefix of a valid file fails cleanly; and a
//! property test that random byte damage never panics.

use engine::gguf::{GgmlType, GgufError, GgufFile, GgufWriter};
use proptest::prelude::*;

/// Hand-assembles GGUF bytes, including ones the writer refuses to produce.
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    fn u32(&mut self, v: u32) -> &mut Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Raw {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn kv_str(&mut self, k: &str, v: &str) -> &mut Raw {
        self.str(k).u32(8).str(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Raw {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    fn pad_to(&mut self, align: usize) -> &mut Raw {
        self.0.resize(self.0.len().div_ceil(align) * align, 0);
        self
    }
    fn bytes(&mut self, n: usize) -> &mut Raw {
        self.0.extend(std::iter::repeat_n(0xabu8, n));
        self
    }
    fn parse(&self) -> Result<GgufFile, GgufError> {
        GgufFile::from_bytes(self.0.clone())
    }
}

fn err(r: &Raw) -> (GgufError, String) {
    let e = r.parse().expect_err("malformed input must be rejected");
    let s = e.to_string();
    (e, s)
}

/// A small valid file: a few kvs of assorted types and three tensors, the last one ending
/// exactly at the end of the file (32 bytes of F32, so no trailing padding).
fn small_valid_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_str("general.architecture", "bitnet").unwrap();
    w.add_u32("bitnet.block_count", 2).unwrap();
    w.add_f32("bitnet.rope.freq_base", 500000.0).unwrap();
    w.add_bool("tokenizer.ggml.add_bos_token", true).unwrap();
    w.add_arr(
        "tokenizer.ggml.tokens",
        vec!["a".to_string(), "Ġb".to_string()],
    )
    .unwrap();
    w.add_arr("tokenizer.ggml.token_type", vec![1i32, 3])
        .unwrap();
    w.add_tensor(
        "blk.0.attn_q.weight",
        &[128, 2],
        GgmlType::I2_S,
        vec![7; 96],
    )
    .unwrap();
    w.add_tensor(
        "blk.0.ffn_up.weight",
        &[256, 1],
        GgmlType::TQ2_0,
        vec![9; 66],
    )
    .unwrap();
    w.add_tensor("output_norm.weight", &[8], GgmlType::F32, vec![1; 32])
        .unwrap();
    w.into_bytes().unwrap()
}

#[test]
fn the_small_valid_file_is_valid() {
    let bytes = small_valid_file();
    let f = GgufFile::from_bytes(bytes.clone()).unwrap();
    let last = f.tensor("output_norm.weight").unwrap();
    assert_eq!(
        f.data_offset() + last.offset + last.size,
        bytes.len() as u64
    );
}

#[test]
fn bad_magic() {
    let mut r = Raw::header(3, 0, 0);
    r.0[..4].copy_from_slice(b"GGML");
    let (e, s) = err(&r);
    assert!(
        matches!(e, GgufError::BadMagic { found: 0x4c4d_4747 }),
        "{e:?}"
    );
    assert!(
        s.contains("bad magic 0x4c4d4747 at byte 0") && s.contains("'GGUF'"),
        "{s}"
    );
}

#[test]
fn unsupported_versions() {
    for v in [0, 1, 4, 0xffff_ffff] {
        let (e, s) = err(&Raw::header(v, 0, 0));
        assert!(
            matches!(e, GgufError::UnsupportedVersion(x) if x == v),
            "{e:?}"
        );
        assert!(s.contains(&format!("unsupported version {v}")), "{s}");
    }
}

#[test]
fn truncated_header_names_field_offset_and_size() {
    let r = Raw(Raw::header(3, 0, 0).0[..12].to_vec());
    let (e, s) = err(&r);
    assert!(matches!(e, GgufError::Truncated { .. }), "{e:?}");
    assert_eq!(
        s,
        "gguf: truncated header: need 8 bytes at offset 8 reading tensor count, file has 12"
    );
}

#[test]
fn every_prefix_of_a_valid_file_is_an_error() {
    let bytes = small_valid_file();
    for cut in 0..bytes.len() {
        let r = GgufFile::from_bytes(bytes[..cut].to_vec());
        assert!(
            r.is_err(),
            "prefix of {cut} of {} bytes was accepted",
            bytes.len()
        );
    }
}

#[test]
fn string_longer_than_file() {
    let mut r = Raw::header(3, 0, 1);
    r.str("general.name").u32(8).u64(1 << 40);
    r.0.extend_from_slice(b"short");
    let (e, s) = err(&r);
    assert!(
        matches!(e, GgufError::StringPastEnd { len, .. } if len == 1 << 40),
        "{e:?}"
    );
    assert!(
        s.contains("metadata key 'general.name': string length 1099511627776 at offset 48 runs past end of file (size 61)"),
        "{s}"
    );

    // A key string itself running past the end.
    let mut r = Raw::header(3, 0, 1);
    r.u64(1000).bytes(20);
    let (_, s) = err(&r);
    assert!(s.contains("metadata key #0: string length 1000"), "{s}");
}

#[test]
fn absurd_counts_are_rejected_before_allocating() {
    let (e, s) = err(&Raw::header(3, 0, u64::MAX));
    assert!(matches!(e, GgufError::CountTooLarge { .. }), "{e:?}");
    assert!(s.contains("metadata kv count 18446744073709551615"), "{s}");

    let (_, s) = err(&Raw::header(3, 1 << 60, 0));
    assert!(s.contains("tensor count 1152921504606846976"), "{s}");

    // An array whose length cannot fit.
    let mut r = Raw::header(3, 0, 1);
    r.str("tokenizer.ggml.tokens")
        .u32(9)
        .u32(8)
        .u64(u64::MAX / 2);
    let (e, s) = err(&r);
    assert!(matches!(e, GgufError::CountTooLarge { .. }), "{e:?}");
    assert!(
        s.contains("metadata key 'tokenizer.ggml.tokens': array length"),
        "{s}"
    );

    let mut r = Raw::header(3, 0, 1);
    r.str("x").u32(9).u32(12).u64(1 << 62);
    assert!(matches!(err(&r).0, GgufError::CountTooLarge { .. }));
}

#[test]
fn unknown_value_type_and_bad_bool() {
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(13).u32(0);
    let (e, s) = err(&r);
    assert!(
        matches!(e, GgufError::UnknownValueType { type_id: 13, .. }),
        "{e:?}"
    );
    assert!(s.contains("metadata key 'k'"), "{s}");

    let mut r = Raw::header(3, 0, 1);
    r.str("b").u32(7);
    r.0.push(2);
    assert!(matches!(err(&r).0, GgufError::InvalidBool { byte: 2, .. }));
}

#[test]
fn nesting_is_bounded() {
    let mut r = Raw::header(3, 0, 1);
    r.str("deep").u32(9);
    for _ in 0..100 {
        r.u32(9).u64(1);
    }
    r.u32(4).u64(0);
    assert!(matches!(err(&r).0, GgufError::NestingTooDeep { .. }));
}

#[test]
fn duplicate_keys_and_tensors() {
    let mut r = Raw::header(3, 0, 2);
    r.kv_str("a", "x").kv_str("a", "y");
    assert!(matches!(err(&r).0, GgufError::DuplicateKey(k) if k == "a"));

    let mut r = Raw::header(3, 2, 0);
    r.tensor("t", &[8], 0, 0)
        .tensor("t", &[8], 0, 32)
        .pad_to(32)
        .bytes(64);
    assert!(matches!(err(&r).0, GgufError::DuplicateTensor(n) if n == "t"));
}

#[test]
fn tensor_data_outside_the_file() {
    // Offset far beyond the end.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("blk.3.attn_q.weight", &[8], 0, 1 << 20).pad_to(32);
    let start = r.0.len();
    r.bytes(32);
    let (e, s) = err(&r);
    assert!(matches!(e, GgufError::DataOutOfBounds { .. }), "{e:?}");
    let end = start + (1 << 20) + 32;
    let size = start + 32;
    assert_eq!(
        s,
        format!("gguf: tensor blk.3.attn_q.weight: data ends at byte {end}, file has {size}")
    );

    // Size (I2_S: n/4 + 32) one byte longer than what is there.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("blk.0.ffn_down.weight", &[256, 4], 36, 0)
        .pad_to(32);
    let start = r.0.len();
    r.bytes(256 + 31);
    let (_, s) = err(&r);
    assert!(
        s.contains(&format!(
            "data ends at byte {}, file has {}",
            start + 288,
            start + 287
        )),
        "{s}"
    );

    // Offsets that overflow u64 arithmetic.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[8], 0, u64::MAX - 31).pad_to(32);
    assert!(matches!(err(&r).0, GgufError::DataOutOfBounds { .. }));

    // Misaligned offsets.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("t", &[1], 0, 4).pad_to(32).bytes(64);
    assert!(matches!(
        err(&r).0,
        GgufError::MisalignedOffset { offset: 4, .. }
    ));
}

#[test]
fn unknown_tensor_type() {
    let mut r = Raw::header(3, 1, 0);
    r.tensor("X", &[8], 77, 0).pad_to(32).bytes(64);
    let (e, s) = err(&r);
    assert!(
        matches!(e, GgufError::UnknownTensorType { type_id: 77, .. }),
        "{e:?}"
    );
    assert_eq!(s, "gguf: tensor X: unknown type id 77");
}

#[test]
fn shape_and_size_mismatches() {
    // 40 elements of Q4_0 (block 32).
    let mut r = Raw::header(3, 1, 0);
    r.tensor("X", &[40], 2, 0).pad_to(32).bytes(64);
    let (e, s) = err(&r);
    assert!(matches!(e, GgufError::NotBlockMultiple { .. }), "{e:?}");
    assert_eq!(
        s,
        "gguf: tensor X: shape [40] has 40 elements, not a multiple of block size 32 of type q4_0"
    );

    // TQ2_0 with rows of 128 (a multiple of 256 in total, but not per row).
    let mut r = Raw::header(3, 1, 0);
    r.tensor("X", &[128, 2], 35, 0).pad_to(32).bytes(128);
    assert!(matches!(
        err(&r).0,
        GgufError::RowNotMultiple {
            row: 128,
            multiple: 256,
            ..
        }
    ));

    // I2_S rows must be whole 128-value blocks.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("X", &[100, 4], 36, 0).pad_to(32).bytes(200);
    let (_, s) = err(&r);
    assert!(
        s.contains("rows of 100 elements, not a multiple of 128 as type i2_s requires"),
        "{s}"
    );

    // Element counts that overflow.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("X", &[1 << 32, 1 << 32], 0, 0).pad_to(32);
    assert!(matches!(err(&r).0, GgufError::ShapeOverflow { .. }));

    // Too many dimensions.
    let mut r = Raw::header(3, 1, 0);
    r.tensor("X", &[1, 1, 1, 1, 1], 0, 0).pad_to(32).bytes(32);
    assert!(matches!(
        err(&r).0,
        GgufError::TooManyDims { n_dims: 5, .. }
    ));
}

#[test]
fn bad_alignment_value_and_type() {
    let mut r = Raw::header(3, 0, 1);
    r.str("general.alignment").u32(4).u32(48);
    assert!(matches!(err(&r).0, GgufError::BadAlignment { value: 48 }));
    let mut r = Raw::header(3, 0, 1);
    r.str("general.alignment").u32(4).u32(0);
    assert!(matches!(err(&r).0, GgufError::BadAlignment { value: 0 }));
    let mut r = Raw::header(3, 0, 1);
    r.kv_str("general.alignment", "32");
    assert!(matches!(err(&r).0, GgufError::WrongType { .. }));
}

#[test]
fn empty_and_tiny_inputs() {
    for n in 0..24 {
        assert!(GgufFile::from_bytes(vec![0; n]).is_err());
    }
    // Header only, no kvs or tensors: valid.
    let f = Raw::header(3, 0, 0).parse().unwrap();
    assert_eq!(f.tensors().len(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random byte damage to a valid file (overwrites, plus an optional cut) must give Ok or
    /// Err, never a panic; when Ok, every tensor view must be inside the file.
    #[test]
    fn mutated_bytes_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = small_valid_file();
        for (i, b) in edits {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        if let Some(c) = cut {
            let c = c.index(bytes.len());
            bytes.truncate(c);
        }
        if let Ok(f) = GgufFile::from_bytes(bytes) {
            for t in f.tensors() {
                prop_assert!(f.tensor_data(t).is_ok());
            }
        }
    }

    /// Damage concentrated on the header's length and count fields (the dangerous ones).
    #[test]
    fn mutated_lengths_never_panic(pos in 0usize..120, v in any::<u64>()) {
        let mut bytes = small_valid_file();
        let end = (pos + 8).min(bytes.len());
        let src = v.to_le_bytes();
        bytes[pos..end].copy_from_slice(&src[..end - pos]);
        let _ = GgufFile::from_bytes(bytes);
    }
}
