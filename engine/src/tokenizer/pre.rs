//! Pre-tokenizers: how llama.cpp cuts text into words before BPE, per `tokenizer.ggml.pre`.
//!
//! The regex lists are copied from `llm_tokenizer_bpe::llm_tokenizer_bpe` in the vendored
//! `src/llama-vocab.cpp`. `unicode_regex_split` (`src/unicode.cpp`) applies them in order,
//! each one cutting the pieces the previous one left, and keeps both the matches and the
//! text between them as pieces: exactly a `tokenizers` `Split` with
//! `SplitDelimiterBehavior::Isolated` per regex, chained in a `Sequence`.
//!
//! Two of the regexes never reach a regex engine in llama.cpp: `unicode_regex_split_custom`
//! recognises their exact strings and runs hand-written scanners instead
//! (`unicode_regex_split_custom_llama3`, `_gpt2`). Their behaviour equals the regexes below
//! under a backtracking engine (fancy-regex, as tiktoken uses), given the same Unicode
//! tables; `engine/tests/tokenizer_pre.rs` ports both scanners and checks the splits agree.
//! The others run through `std::regex` on a "collapsed" text (one byte per code point:
//! ASCII as is, other letters/numbers/punctuation as one marker byte each), which for
//! `\p{P}`, `\p{N}` and `[0-9]` selects the same code points as Unicode classes do.
//! Known residual difference: llama.cpp's flag tables (`src/unicode-data.cpp`, generated
//! from Python's `unicodedata`) and the `regex` crate's tables may be of different Unicode
//! versions, so code points assigned in between classify differently.

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

use super::TokenizerError;

/// `LLAMA_VOCAB_PRE_TYPE_LLAMA3` (`tokenizer.ggml.pre` = `llama3`, `llama-v3`, `llama-bpe`):
/// llama.cpp's adaptation of the Llama-3 `tokenizer.json` regex, case-insensitive
/// contractions spelled out as `'[sS]`… (llama.cpp PR 6920). `unicode_regex_split_custom`
/// runs `unicode_regex_split_custom_llama3` for it, whose `unicode_tolower` agrees with
/// `[sS]` here. (The training pattern's `(?i:'s…)` also accepts `'ſ` (U+017F, which folds
/// to `s`); llama.cpp does not: see `TRUTH_PATTERN` in `truth.rs`.)
pub const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `LLAMA_VOCAB_PRE_TYPE_DEFAULT` (key absent or `default`): four regexes in sequence.
/// 1. runs of punctuation and `$+<=>^~|` (`std::regex` on the collapsed text);
/// 2. the GPT-2 regex, run by `unicode_regex_split_custom_gpt2`. llama.cpp's string lacks
///    the final `|\s+`, but the scanner implements it (its comment shows the full regex),
///    so it is written out here;
/// 3. runs of numbers (`std::regex`, collapsed);
/// 4. ASCII digit triples, left to right (`std::wregex`).
///
/// Because (1) isolates every apostrophe first, (2) never sees a contraction: "don't"
/// becomes "don" "'" "t", three tokens where the trained tokenizer has two.
pub const DEFAULT_REGEXES: [&str; 4] = [
    r"[\p{P}\$\+<=>\^~\|]+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];

/// The pre-tokenizer types this engine knows, as llama.cpp maps `tokenizer.ggml.pre`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreType {
    /// `LLAMA_VOCAB_PRE_TYPE_DEFAULT`: key absent, or `default`.
    Default,
    /// `LLAMA_VOCAB_PRE_TYPE_LLAMA3`: `llama3`, `llama-v3`, `llama-bpe`.
    Llama3,
}

impl PreType {
    /// The type llama.cpp's `llm_load_vocab` picks for `tokenizer.ggml.pre` (`None`: key
    /// absent, which llama.cpp warns about and treats as `default`).
    pub fn from_gguf(pre: Option<&str>) -> Result<PreType, TokenizerError> {
        match pre {
            None | Some("") | Some("default") => Ok(PreType::Default),
            Some("llama3" | "llama-v3" | "llama-bpe") => Ok(PreType::Llama3),
            Some(other) => Err(TokenizerError::UnsupportedPre(other.to_string())),
        }
    }

    /// The regexes `unicode_regex_split` applies, in order.
    pub fn regexes(self) -> &'static [&'static str] {
        match self {
            PreType::Default => &DEFAULT_REGEXES,
            PreType::Llama3 => std::slice::from_ref(&LLAMA3_REGEX),
        }
    }

    /// `vocab.tokenizer_ignore_merges`: a word that is itself a token is emitted whole,
    /// without running merges (set for LLAMA3 in `llm_load_vocab`).
    pub fn ignore_merges(self) -> bool {
        self == PreType::Llama3
    }

    /// `vocab.tokenizer_add_bos` before `tokenizer.ggml.add_bos_token` overrides it: true for
    /// LLAMA3, false for a `gpt2` vocab otherwise (`llm_load_vocab`).
    pub fn add_bos_default(self) -> bool {
        self == PreType::Llama3
    }
}

/// The `tokenizers` pre-tokenizer for `pre`: one isolating `Split` per llama.cpp regex, then
/// the byte-level spelling (no prefix space, no regex of its own).
pub fn pre_tokenizer(pre: PreType) -> Result<PreTokenizerWrapper, TokenizerError> {
    let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
    for re in pre.regexes() {
        let split = Split::new(
            SplitPattern::Regex((*re).to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| TokenizerError::Regex {
            regex: (*re).to_string(),
            message: e.to_string(),
        })?;
        steps.push(split.into());
    }
    steps.push(ByteLevel::new(false, false, false).into());
    Ok(Sequence::new(steps).into())
}
