//! The GGUF-mode tokenizer on the real Llama-3 vocabulary (the forge's conversion of the
//! pinned ranks file: 128 000 tokens in GPT-2 spelling, 280 147 merges, 256 control tokens)
//! against truth, the tokenizer the model was trained with.
//!
//! - `tokenizer.ggml.pre = llama-bpe`: equal to truth on every starter input
//!   (`cases/tokenizer/inputs.json`), with and without BOS and special parsing.
//! - key absent (as in microsoft's 2B-4T GGUF): llama.cpp's default pre-tokenizer; the number
//!   of starter inputs that then tokenize differently from truth is pinned here.
//!
//! Run with `--nocapture` to see the deviating inputs.

use std::sync::OnceLock;

use engine::forge::vocab as forge_vocab;
use engine::tokenizer::truth::{self, Truth};
use engine::tokenizer::{llama3_chat, Tokenizer, Vocab, LLAMA3_REGEX};
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, SplitDelimiterBehavior,
};

/// Starter inputs whose ids under the default pre-tokenizer differ from truth
/// (parse_special off, no BOS). Update together with `cases/tokenizer/inputs.json`.
const DEFAULT_PRE_DEVIATIONS: usize = 79;

fn inputs() -> &'static [String] {
    static INPUTS: OnceLock<Vec<String>> = OnceLock::new();
    INPUTS.get_or_init(|| {
        serde_json::from_str(include_str!("../../cases/tokenizer/inputs.json")).unwrap()
    })
}

/// The forge's Llama-3 vocab as GGUF keys, with `tokenizer.ggml.pre` set to `pre`.
fn gguf_vocab(pre: Option<&str>) -> Vocab {
    let v = forge_vocab::llama3().expect("Llama-3 vocab (run scripts/setup.sh)");
    Vocab {
        tokens: v.tokens.clone(),
        token_types: v.token_types.clone(),
        merges: v.merges.clone(),
        pre: pre.map(str::to_string),
        bos: Some(v.bos),
        eos: Some(v.eos),
        eot: None,
        add_bos: None,
    }
}

fn llama_bpe() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_vocab(&gguf_vocab(Some("llama-bpe"))).unwrap())
}

fn no_pre() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_vocab(&gguf_vocab(None)).unwrap())
}

fn truth() -> &'static Truth {
    static T: OnceLock<Truth> = OnceLock::new();
    T.get_or_init(|| {
        Truth::from_ranks_file(forge_vocab::assets_dir().join(forge_vocab::LLAMA3_ASSET)).unwrap()
    })
}

/// Pieces as readable strings, for failure messages.
fn show(pieces: Vec<Vec<u8>>) -> Vec<String> {
    pieces
        .into_iter()
        .map(|p| String::from_utf8_lossy(&p).into_owned())
        .collect()
}

#[test]
fn converted_vocab_has_the_llama3_shape() {
    let v = gguf_vocab(None);
    assert_eq!(v.tokens.len(), 128_256);
    assert_eq!(v.merges.len(), 280_147);
    assert_eq!(v.tokens[128_000..], truth::special_names()[..]);
    assert_eq!(truth().n_vocab(), 128_256);
}

#[test]
fn llama_cpp_test_vectors() {
    for (text, ids) in [
        ("Hello world", [9906, 1917]),
        (" Hello world", [22691, 1917]),
    ] {
        assert_eq!(
            llama_bpe().encode(text, false, false).unwrap(),
            ids,
            "llama-bpe {text:?}"
        );
        assert_eq!(
            no_pre().encode(text, false, false).unwrap(),
            ids,
            "no pre {text:?}"
        );
        assert_eq!(
            truth().encode(text, false, false).unwrap(),
            ids,
            "truth {text:?}"
        );
    }
}

#[test]
fn llama_bpe_equals_truth_on_all_starter_inputs() {
    assert!(inputs().len() >= 150);
    let mut diffs = Vec::new();
    for text in inputs() {
        for add_bos in [false, true] {
            for parse_special in [false, true] {
                let ours = llama_bpe().encode(text, add_bos, parse_special).unwrap();
                let want = truth().encode(text, add_bos, parse_special).unwrap();
                if ours != want {
                    diffs.push(format!(
                        "{text:?} (bos {add_bos}, special {parse_special}):\n  ours  {:?}\n  truth {:?}",
                        show(llama_bpe().pieces(&ours)),
                        show(truth().pieces(&want))
                    ));
                }
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}

#[test]
fn default_pre_deviates_from_truth_as_measured() {
    let mut deviating = Vec::new();
    for text in inputs() {
        let ours = no_pre().encode(text, false, false).unwrap();
        let want = truth().encode(text, false, false).unwrap();
        if ours != want {
            println!(
                "{text:?}\n  default {:?}\n  truth   {:?}",
                show(no_pre().pieces(&ours)),
                show(truth().pieces(&want))
            );
            deviating.push(text.as_str());
        }
    }
    println!(
        "{} of {} starter inputs deviate from truth without tokenizer.ggml.pre",
        deviating.len(),
        inputs().len()
    );
    assert_eq!(no_pre().encode("don't", false, false).unwrap().len(), 3);
    assert_eq!(truth().encode("don't", false, false).unwrap().len(), 2);
    assert_eq!(
        deviating.len(),
        DEFAULT_PRE_DEVIATIONS,
        "deviating inputs: {deviating:?}"
    );
}

#[test]
fn decode_inverts_encode_on_all_starter_inputs() {
    for text in inputs() {
        for parse_special in [false, true] {
            for tok in [llama_bpe(), no_pre()] {
                let ids = tok.encode(text, false, parse_special).unwrap();
                assert_eq!(
                    &tok.decode(&ids),
                    text,
                    "{:?} special {parse_special}",
                    tok.source()
                );
            }
            let ids = truth().encode(text, false, parse_special).unwrap();
            assert_eq!(&truth().decode(&ids), text, "truth special {parse_special}");
        }
    }
}

#[test]
fn special_tokens_parse_only_when_asked_and_bos_is_prepended_as_llama_cpp_does() {
    let t = llama_bpe();
    // llama.cpp prepends BOS without looking at the text: two BOS here, as in the oracle.
    let ids = t.encode("<|begin_of_text|>hi", true, true).unwrap();
    assert_eq!(ids[..2], [128_000, 128_000]);
    assert_eq!(
        ids,
        truth().encode("<|begin_of_text|>hi", true, true).unwrap()
    );
    // As text, the special's name is ordinary tokens.
    let ids = t.encode("<|begin_of_text|>hi", false, false).unwrap();
    assert!(ids.iter().all(|&id| id < 128_000), "{ids:?}");
    assert_eq!(t.encode("<|eot_id|>", false, true).unwrap(), [128_009]);
    assert_eq!(t.eot(), Some(128_009));
    // Without tokenizer.ggml.pre (and no add_bos_token key) llama.cpp adds no BOS at all.
    assert!(t.add_bos());
    assert!(!no_pre().add_bos());
    assert_eq!(
        no_pre().encode("hi", true, false).unwrap(),
        no_pre().encode("hi", false, false).unwrap()
    );
}

#[test]
fn pieces_render_control_tokens_as_their_text() {
    let t = llama_bpe();
    let ids = t
        .encode("<|start_header_id|>user<|end_header_id|>\n\n", false, true)
        .unwrap();
    assert_eq!(
        show(t.pieces(&ids)),
        ["<|start_header_id|>", "user", "<|end_header_id|>", "\n\n"]
    );
    assert_eq!(t.piece(128_009, true), b"<|eot_id|>");
    assert!(t.piece(128_009, false).is_empty());
    assert_eq!(t.piece(22691, false), b" Hello");
    assert_eq!(t.pieces(&[128_000]), truth().pieces(&[128_000]));
}

#[test]
fn chat_template_tokenizes_with_exactly_one_bos() {
    let messages = [
        ("system", "You are helpful."),
        ("user", "What is the capital of France?"),
    ];
    let ids = llama_bpe().encode_chat(&messages, true).unwrap();
    assert_eq!(ids[0], 128_000);
    assert_eq!(ids.iter().filter(|&&id| id == 128_000).count(), 1);
    assert_eq!(ids, truth().encode_chat(&messages, true).unwrap());
    assert_eq!(no_pre().encode_chat(&messages, true).unwrap()[0], 128_000);
    assert!(
        llama3_chat(&messages, true).ends_with("<|start_header_id|>assistant<|end_header_id|>\n\n")
    );
}

/// Where llama.cpp's Llama-3 scanner and the training pattern part: `(?i:'s)` also matches
/// `'ſ` (U+017F folds to `s`); llama.cpp's `unicode_tolower` check does not. The words
/// differ, but no Llama-3 token spans `ſ|t`, so the ids agree on this input.
#[test]
fn long_s_contraction_splits_differently_but_encodes_the_same() {
    let words = |pattern: &str, text: &str| -> Vec<String> {
        let split = Split::new(
            SplitPattern::Regex(pattern.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .unwrap();
        let mut s = PreTokenizedString::from(text);
        split.pre_tokenize(&mut s).unwrap();
        s.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(w, _, _)| w.to_string())
            .collect()
    };
    assert_eq!(words(LLAMA3_REGEX, "it'ſt"), ["it", "'ſt"]);
    assert_eq!(words(truth::TRUTH_PATTERN, "it'ſt"), ["it", "'ſ", "t"]);
    assert_eq!(
        llama_bpe().encode("it'ſt", false, false).unwrap(),
        truth().encode("it'ſt", false, false).unwrap()
    );
}
