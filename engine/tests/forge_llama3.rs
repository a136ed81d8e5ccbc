//! The Llama-3 vocabulary conversion and the small-llama3 presets. These need the asset
//! `llama3-tokenizer.model` that scripts/setup.sh installs; without it they fail (never skip)
//! with a message saying so.

use engine::forge::vocab::{self, LLAMA3_N_MERGES};
use engine::forge::{forged, ForgeError};
use engine::gguf::{GgmlType, GgufFile};

fn llama3() -> std::sync::Arc<vocab::Vocab> {
    vocab::llama3().unwrap_or_else(|e| panic!("{e}"))
}

fn forged_or_fail(name: &str) -> std::path::PathBuf {
    forged(name, 1).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn missing_asset_error_says_to_run_setup() {
    let e = ForgeError::MissingAsset {
        path: "/nowhere/llama3-tokenizer.model".into(),
    };
    let s = e.to_string();
    assert!(
        s.contains("/nowhere/llama3-tokenizer.model") && s.contains("scripts/setup.sh"),
        "{s}"
    );
}

#[test]
fn llama3_vocab_matches_the_reference() {
    let v = llama3();
    assert_eq!(v.tokens.len(), 128_256);
    assert_eq!(v.token_types.len(), 128_256);
    assert_eq!(v.merges.len(), LLAMA3_N_MERGES);
    assert_eq!(LLAMA3_N_MERGES, 280_147);
    // llama.cpp's test vectors: "Hello world" → 9906 1917; " Hello world" → 22691 1917.
    assert_eq!(v.tokens[9906], "Hello");
    assert_eq!(v.tokens[1917], "Ġworld");
    assert_eq!(v.tokens[22691], "ĠHello");
    // The first merges of Llama 3 as in Meta's tokenizer.json: rank 256 "  ", rank 257
    // "    " (three splits, by the ranks of their pieces), rank 258 "in", rank 259 " t".
    assert_eq!(
        &v.merges[..6],
        &["Ġ Ġ", "Ġ ĠĠĠ", "ĠĠ ĠĠ", "ĠĠĠ Ġ", "i n", "Ġ t"]
    );
    let specials = [
        (128_000, "<|begin_of_text|>"),
        (128_001, "<|end_of_text|>"),
        (128_002, "<|reserved_special_token_0|>"),
        (128_005, "<|reserved_special_token_3|>"),
        (128_006, "<|start_header_id|>"),
        (128_007, "<|end_header_id|>"),
        (128_008, "<|reserved_special_token_4|>"),
        (128_009, "<|eot_id|>"),
        (128_010, "<|reserved_special_token_5|>"),
        (128_255, "<|reserved_special_token_250|>"),
    ];
    for (id, name) in specials {
        assert_eq!(v.tokens[id], name, "id {id}");
    }
    assert!(v.token_types[..128_000].iter().all(|&t| t == 1));
    assert!(v.token_types[128_000..].iter().all(|&t| t == 3));
    assert_eq!((v.bos, v.eos), (128_000, 128_001));
    let unique: std::collections::HashSet<&String> = v.tokens.iter().collect();
    assert_eq!(unique.len(), v.tokens.len());
}

#[test]
fn small_llama3_presets_carry_the_vocab() {
    let path = forged_or_fail("small-llama3-i2s");
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(
        f.get_arr_str("tokenizer.ggml.tokens").unwrap().len(),
        128_256
    );
    assert_eq!(
        f.get_arr_str("tokenizer.ggml.merges").unwrap().len(),
        280_147
    );
    assert_eq!(f.get_str("tokenizer.ggml.pre").unwrap(), "llama-bpe");
    assert_eq!(f.get_u32("tokenizer.ggml.bos_token_id").unwrap(), 128_000);
    assert_eq!(f.get_u32("tokenizer.ggml.eos_token_id").unwrap(), 128_001);
    let emb = f.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (emb.dims.as_slice(), emb.ty),
        (&[512u64, 128_256][..], GgmlType::F16)
    );
    let down = f.tensor("blk.3.ffn_down.weight").unwrap();
    assert_eq!(
        (down.dims.as_slice(), down.ty),
        (&[1536u64, 512][..], GgmlType::I2_S)
    );
    assert_eq!(down.size, 1536 * 512 / 4 + 32);

    let nopre = GgufFile::open(forged_or_fail("small-llama3-nopre-i2s")).unwrap();
    assert!(nopre.get("tokenizer.ggml.pre").is_none());
    // Same weights as the preset with the key: only the metadata differs.
    assert_eq!(
        nopre.tensor_bytes("blk.0.attn_q.weight").unwrap(),
        f.tensor_bytes("blk.0.attn_q.weight").unwrap()
    );
}
