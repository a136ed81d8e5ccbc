//! The engine's tokenizer modes on the official-2B-4T-like GGUF (no tokenizer.ggml.pre):
//! GGUF mode follows the file as llama.cpp reads it (and so deviates from the trained
//! tokenizer where bitnet.cpp does); truth mode is the trained tokenizer on every input.

use engine::forge::vocab::{assets_dir, LLAMA3_ASSET};
use engine::tokenizer::truth::Truth;
use probe::{OpenRequest, Probe};

fn inputs() -> Vec<String> {
    serde_json::from_str(include_str!("../../cases/tokenizer/inputs.json")).unwrap()
}

#[test]
fn truth_mode_equals_the_trained_tokenizer_on_every_input() {
    let model = engine::forge::forged("small-llama3-nopre-i2s", 1).unwrap();
    let truth = Truth::from_ranks_file(assets_dir().join(LLAMA3_ASSET)).unwrap();
    let mut gguf = engine::EngineProbe::open(&OpenRequest::new(&model)).unwrap();
    let mut tm =
        engine::EngineProbe::open(&OpenRequest::new(&model).option("tokenizer", "truth")).unwrap();
    let mut deviating = 0;
    for text in inputs() {
        for ps in [false, true] {
            let t = truth.encode(&text, true, ps).unwrap();
            assert_eq!(
                tm.tokenize(&text, true, ps).unwrap(),
                t,
                "truth mode on {text:?} (parse_special {ps})"
            );
            deviating += (gguf.tokenize(&text, true, ps).unwrap() != t) as usize;
        }
    }
    // GGUF mode without the pre key deviates on 79 + 69 of the 2 × 233 (input, setting) pairs,
    // as recorded in cases/tokenizer/llama3-nopre.toml.
    assert_eq!(deviating, 79 + 69);
}

#[test]
fn truth_mode_refuses_a_vocab_that_is_not_llama3() {
    let model = engine::forge::forged("tiny-i2s", 1).unwrap();
    let e = engine::EngineProbe::open(&OpenRequest::new(&model).option("tokenizer", "truth"))
        .err()
        .unwrap();
    assert!(e.to_string().contains("128256"), "{e}");
}
