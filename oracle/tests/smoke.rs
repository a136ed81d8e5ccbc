//! Phase-1 smoke test: the vendored bitnet.cpp links, loads a forged model and tokenizes.

use oracle::Model;

#[test]
fn loads_forged_tiny_i2s_and_tokenizes() {
    let path = engine::forge::forged("tiny-i2s", 1).expect("forge tiny-i2s");
    let model = Model::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(model.n_vocab() > 256, "n_vocab {}", model.n_vocab());
    let tokens = model.tokenize("Hello world", false, false).unwrap();
    eprintln!(
        "{}: n_vocab {}, \"Hello world\" -> {tokens:?}",
        path.display(),
        model.n_vocab()
    );
    assert!(!tokens.is_empty());
    let with_bos = model.tokenize("Hello world", true, false).unwrap();
    assert_eq!(
        with_bos.len(),
        tokens.len() + 1,
        "{with_bos:?} vs {tokens:?}"
    );
    assert_eq!(&with_bos[1..], &tokens[..]);
}

#[test]
fn missing_model_is_a_load_error() {
    let err = Model::load(std::path::Path::new("/nonexistent/model.gguf"))
        .err()
        .unwrap();
    assert!(matches!(err, probe::Error::Load { .. }), "{err}");
}

#[test]
fn garbage_model_is_a_load_error_with_bitnet_cpp_words() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("oracle-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("garbage.gguf");
    std::fs::write(&path, b"not a gguf file at all").unwrap();
    let err = Model::load(&path).err().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let probe::Error::Load { message, .. } = &err else {
        panic!("{err}")
    };
    assert!(!message.is_empty(), "{err}");
}
