//! The GGUF-mode tokenizer on a small hand-built vocab: reading `tokenizer.ggml.*` keys,
//! llama.cpp's BOS rules, special-token partitioning per token type, and pieces per type.

use engine::gguf::{GgufFile, GgufWriter};
use engine::tokenizer::{
    encode_bytes, pre_tokenizer, token_type as tt, PreType, Tokenizer, TokenizerError, Vocab,
};

/// 256 byte tokens, a few merges, then specials of each type.
fn toy_vocab(pre: Option<&str>) -> Vocab {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| encode_bytes(&[b])).collect();
    let mut token_types = vec![tt::NORMAL; 256];
    let mut merges = Vec::new();
    for (a, b) in [
        ("h", "e"),
        ("l", "l"),
        ("he", "ll"),
        ("hell", "o"),
        ("Ġ", "w"),
        ("Ġw", "o"),
        ("a", "b"),
    ] {
        merges.push(format!("{a} {b}"));
        tokens.push(format!("{a}{b}"));
        token_types.push(tt::NORMAL);
    }
    for (text, ty) in [
        ("<|begin_of_text|>", tt::CONTROL),
        ("<|eot_id|>", tt::CONTROL),
        ("<tool>", tt::USER_DEFINED),
        ("bcd", tt::USER_DEFINED),
        ("<|unused|>", tt::UNUSED),
        ("<0x41>", tt::BYTE),
        ("€uro", tt::NORMAL),
        ("", tt::NORMAL),
    ] {
        tokens.push(text.to_string());
        token_types.push(ty);
    }
    Vocab {
        tokens,
        token_types,
        merges,
        pre: pre.map(str::to_string),
        bos: Some(263),
        eos: None,
        eot: None,
        add_bos: None,
    }
}

fn id(t: &Tokenizer, text: &str) -> u32 {
    t.token_id(text)
        .unwrap_or_else(|| panic!("no token {text:?}"))
}

fn gguf_of(v: &Vocab, model: &str) -> GgufFile {
    let mut w = GgufWriter::new();
    w.add_str("tokenizer.ggml.model", model).unwrap();
    w.add_arr("tokenizer.ggml.tokens", v.tokens.clone())
        .unwrap();
    w.add_arr("tokenizer.ggml.token_type", v.token_types.clone())
        .unwrap();
    if !v.merges.is_empty() {
        w.add_arr("tokenizer.ggml.merges", v.merges.clone())
            .unwrap();
    }
    if let Some(pre) = &v.pre {
        w.add_str("tokenizer.ggml.pre", pre).unwrap();
    }
    if let Some(bos) = v.bos {
        w.add_u32("tokenizer.ggml.bos_token_id", bos).unwrap();
    }
    if let Some(add) = v.add_bos {
        w.add_bool("tokenizer.ggml.add_bos_token", add).unwrap();
    }
    GgufFile::from_bytes(w.into_bytes().unwrap()).unwrap()
}

#[test]
fn vocab_reads_back_from_gguf_keys() {
    let mut v = toy_vocab(Some("llama-bpe"));
    v.add_bos = Some(false);
    let read = Vocab::from_gguf(&gguf_of(&v, "gpt2")).unwrap();
    assert_eq!(read, v);
    let t = Tokenizer::from_gguf(&gguf_of(&v, "gpt2")).unwrap();
    assert!(!t.add_bos());
}

#[test]
fn gguf_errors_name_the_key() {
    let err = Vocab::from_gguf(&gguf_of(&toy_vocab(None), "llama")).unwrap_err();
    assert!(
        matches!(err, TokenizerError::UnsupportedModel(ref m) if m == "llama"),
        "{err}"
    );
    let mut no_merges = toy_vocab(None);
    no_merges.merges.clear();
    let err = Vocab::from_gguf(&gguf_of(&no_merges, "gpt2")).unwrap_err();
    assert!(err.to_string().contains("tokenizer.ggml.merges"), "{err}");
    let err = Tokenizer::from_vocab(&toy_vocab(Some("qwen2"))).unwrap_err();
    assert!(err.to_string().contains("qwen2"), "{err}");
    let mut short = toy_vocab(None);
    short.token_types.pop();
    assert!(matches!(
        Tokenizer::from_vocab(&short),
        Err(TokenizerError::TokenTypesLength { .. })
    ));
}

#[test]
fn bos_follows_llama_cpp_add_bos_rules() {
    // llama-bpe: add_bos defaults to true; one BOS, only when asked.
    let t = Tokenizer::from_vocab(&toy_vocab(Some("llama-bpe"))).unwrap();
    let hello = t.encode("hello", false, false).unwrap();
    assert_eq!(hello, [id(&t, "hello")]);
    assert_eq!(t.encode("hello", true, false).unwrap(), [263, hello[0]]);
    // Key absent: a gpt2 vocab adds no BOS unless tokenizer.ggml.add_bos_token says so.
    let t = Tokenizer::from_vocab(&toy_vocab(None)).unwrap();
    assert_eq!(t.encode("hello", true, false).unwrap(), hello);
    let mut v = toy_vocab(None);
    v.add_bos = Some(true);
    let t = Tokenizer::from_vocab(&v).unwrap();
    assert_eq!(t.encode("hello", true, false).unwrap(), [263, hello[0]]);
    // No BOS key: llama.cpp's gpt2 default id 11.
    v.bos = None;
    let t = Tokenizer::from_vocab(&v).unwrap();
    assert_eq!(t.bos(), Some(11));
    assert_eq!(t.encode("hello", true, false).unwrap(), [11, hello[0]]);
}

#[test]
fn specials_partition_by_type_longest_first() {
    let t = Tokenizer::from_vocab(&toy_vocab(Some("llama-bpe"))).unwrap();
    let (bot, eot, tool, bcd) = (
        id(&t, "<|begin_of_text|>"),
        id(&t, "<|eot_id|>"),
        id(&t, "<tool>"),
        id(&t, "bcd"),
    );
    // Control tokens only with parse_special; user-defined ones always (tokenizer_st_partition).
    assert_eq!(
        t.encode("<|eot_id|><tool>", false, true).unwrap(),
        [eot, tool]
    );
    let plain = t.encode("<|eot_id|><tool>", false, false).unwrap();
    assert_eq!(*plain.last().unwrap(), tool);
    assert!(!plain.contains(&eot));
    // Longest special first over the whole text: "<tool>" (6 bytes) before "bcd" (3).
    assert_eq!(t.encode("abcd", false, false).unwrap(), [id(&t, "a"), bcd]);
    assert_eq!(
        t.encode("<|begin_of_text|><|begin_of_text|>", true, true)
            .unwrap(),
        [bot, bot, bot]
    );
    assert_eq!(
        t.eot(),
        Some(eot),
        "EOT found by its text, as llama.cpp does"
    );
}

#[test]
fn pieces_follow_token_to_piece_per_type() {
    let t = Tokenizer::from_vocab(&toy_vocab(Some("llama-bpe"))).unwrap();
    assert_eq!(t.piece(id(&t, "Ġwo"), true), b" wo");
    assert_eq!(t.piece(id(&t, "<|eot_id|>"), true), b"<|eot_id|>");
    assert!(t.piece(id(&t, "<|eot_id|>"), false).is_empty());
    assert_eq!(t.piece(id(&t, "<tool>"), false), b"<tool>");
    assert!(t.piece(id(&t, "<|unused|>"), true).is_empty());
    assert!(t.piece(id(&t, "<0x41>"), true).is_empty());
    // A normal token outside the byte alphabet renders as llama_decode_text does.
    assert_eq!(
        t.piece(id(&t, "€uro"), true),
        "[UNK_BYTE_0xe282ac€uro]uro".as_bytes()
    );
    // An empty token is renamed, as llm_load_vocab does.
    assert_eq!(
        t.token_text(t.n_vocab() as u32 - 1),
        Some(format!("[EMPTY_{}]", t.n_vocab() - 1).as_str())
    );
    assert!(t.piece(u32::MAX, true).is_empty());
    let ids = t.encode("hello world<tool>", false, false).unwrap();
    assert_eq!(t.decode(&ids), "hello world<tool>");
}

#[test]
fn tokenizer_json_agrees_with_the_same_vocab_from_gguf() {
    use tokenizers::models::bpe::BPE;
    use tokenizers::AddedToken;

    let v = toy_vocab(Some("llama-bpe"));
    let n_normal = v.tokens.len() - 8;
    let ids: tokenizers::models::bpe::Vocab =
        v.tokens[..n_normal].iter().cloned().zip(0..).collect();
    let merges = v
        .merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.into(), b.into()))
                .unwrap()
        })
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(ids, merges)
        .ignore_merges(true)
        .build()
        .unwrap();
    let mut hf = tokenizers::Tokenizer::new(bpe);
    hf.with_pre_tokenizer(Some(pre_tokenizer(PreType::Llama3).unwrap()));
    hf.add_special_tokens(&[
        AddedToken::from("<|begin_of_text|>", true),
        AddedToken::from("<|eot_id|>", true),
    ]);
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bitprobe-tokenizer-{}.json", std::process::id()));
    hf.save(&path, false).unwrap();
    let from_json = Tokenizer::from_file(&path).unwrap();
    std::fs::remove_file(&path).ok();

    let mut gguf_vocab = v.clone();
    gguf_vocab.tokens.truncate(n_normal + 2);
    gguf_vocab.token_types.truncate(n_normal + 2);
    let from_gguf = Tokenizer::from_vocab(&gguf_vocab).unwrap();
    for text in [
        "hello world",
        "hello<|eot_id|> wo",
        "",
        "<|begin_of_text|>hi  \n\n x'll",
    ] {
        for special in [false, true] {
            let a = from_json.encode(text, false, special).unwrap();
            assert_eq!(
                a,
                from_gguf.encode(text, false, special).unwrap(),
                "{text:?} {special}"
            );
            assert_eq!(from_json.decode(&a), text);
        }
    }
    assert_eq!(from_json.bos(), Some(id(&from_gguf, "<|begin_of_text|>")));
    assert!(!from_json.add_bos(), "no post-processor, no BOS");
}

#[test]
fn unknown_path_is_an_error_naming_it() {
    let err = Tokenizer::from_file("/nonexistent/tokenizer.json").unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/tokenizer.json"),
        "{err}"
    );
}
