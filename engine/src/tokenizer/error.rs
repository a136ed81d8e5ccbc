//! `TokenizerError`: building or running a tokenizer. Messages name the GGUF key, file,
//! token or line involved.

use std::path::PathBuf;

use crate::gguf::GgufError;

/// A tokenizer build or encode failure.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A GGUF key the vocab needs is missing or has the wrong type (the inner error names it).
    #[error("tokenizer: {0}")]
    Gguf(#[from] GgufError),

    #[error("tokenizer: tokenizer.ggml.model is '{0}'; only 'gpt2' (byte-level BPE) is supported")]
    UnsupportedModel(String),

    #[error("tokenizer: tokenizer.ggml.pre '{0}' is not a pre-tokenizer this engine knows (known: default, llama3, llama-v3, llama-bpe)")]
    UnsupportedPre(String),

    #[error("tokenizer: tokenizer.ggml.token_type has {types} entries, tokenizer.ggml.tokens has {tokens}")]
    TokenTypesLength { tokens: usize, types: usize },

    #[error("tokenizer: token '{token}' appears twice, at ids {first} and {second}")]
    DuplicateToken {
        token: String,
        first: u32,
        second: u32,
    },

    #[error("tokenizer: vocab has {0} tokens, more than a u32 id can address")]
    TooManyTokens(usize),

    #[error("tokenizer: regex {regex:?} does not compile: {message}")]
    Regex { regex: String, message: String },

    #[error("tokenizer: building the BPE model: {0}")]
    Build(String),

    #[error("tokenizer: cannot {action} {path}: {message}")]
    File {
        action: &'static str,
        path: PathBuf,
        message: String,
    },

    #[error("tokenizer: {path}:{line}: {message}")]
    Ranks {
        path: PathBuf,
        line: usize,
        message: String,
    },

    #[error("tokenizer: encoding {text:?}: {message}")]
    Encode { text: String, message: String },

    #[error("tokenizer: token id {id} is outside the vocab ({n_vocab} tokens)")]
    BadId { id: u32, n_vocab: usize },
}
