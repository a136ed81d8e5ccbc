//! Truth: the tokenizer BitNet b1.58 2B-4T was trained with, as a reference independent of
//! our BPE and of llama.cpp's.
//!
//! Meta's Llama-3 tokenizer is tiktoken: rank-based byte-pair encoding over
//! `tokenizer.model` (128 000 lines `base64(token) rank`), text first cut by the split pattern
//! below, then 256 special tokens from id 128 000. This module runs `tiktoken-rs`'s
//! `CoreBPE` (a vendored copy of tiktoken's Rust core, with fancy-regex) over the pinned ranks
//! file (`llama_models/llama3/tokenizer.model` from PyPI `llama-models` 0.3.0, sha256
//! 82e9d319…1b55; see BITNET_NOTES §4).
//!
//! The `tiktoken` crate (3.1.4) embeds a `llama3` encoding whose ranks are byte-identical to
//! that file (its `encodings/llama3.tiktoken.zst` decompresses to the same sha256), but it
//! uses the Llama 3.1 special names, only 8 of the 256 specials, and a rewritten pattern
//! that emulates `\s+(?!\S)` without lookahead; we load the pinned asset instead.

use std::collections::HashSet;
use std::path::Path;

use base64::Engine as _;
use rustc_hash::FxHashMap;
use tiktoken_rs::CoreBPE;

use super::TokenizerError;

/// The training split pattern, `Tokenizer.pat_str` in `llama_models/llama3/tokenizer.py`
/// (llama-models 0.3.0, line 55). Note `(?i:'s…)` also matches `'ſ` (U+017F folds to `s`),
/// which llama.cpp's `unicode_regex_split_custom_llama3` does not.
pub const TRUTH_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Ranked (ordinary) tokens: ids 0..128000.
pub const N_RANKED: u32 = 128_000;
/// Special tokens: ids 128000..128256.
pub const N_SPECIAL: u32 = 256;
/// `<|begin_of_text|>`.
pub const BOS: u32 = 128_000;
/// `<|end_of_text|>`.
pub const EOS: u32 = 128_001;
/// `<|eot_id|>`.
pub const EOT: u32 = 128_009;

/// The name of special token `N_RANKED + i` (i < 256), with the original Llama 3 names
/// bitnet.cpp lists (BITNET_NOTES §4), not tokenizer.py's later Llama 3.1 names.
pub fn special_name(i: u32) -> String {
    match i {
        0 => "<|begin_of_text|>".into(),
        1 => "<|end_of_text|>".into(),
        2..=5 => format!("<|reserved_special_token_{}|>", i - 2),
        6 => "<|start_header_id|>".into(),
        7 => "<|end_header_id|>".into(),
        8 => "<|reserved_special_token_4|>".into(),
        9 => "<|eot_id|>".into(),
        _ => format!("<|reserved_special_token_{}|>", i - 5),
    }
}

/// All 256 special names, by id − 128000.
pub fn special_names() -> Vec<String> {
    (0..N_SPECIAL).map(special_name).collect()
}

/// Token bytes by rank from a tiktoken ranks file; ranks must be 0, 1, 2, … in order.
pub fn load_ranks(path: impl AsRef<Path>) -> Result<Vec<Vec<u8>>, TokenizerError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| TokenizerError::File {
        action: "read ranks file",
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let bad = |line: usize, message: String| TokenizerError::Ranks {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut ranks = Vec::with_capacity(N_RANKED as usize);
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
        let (b64, rank) = line
            .split_once(' ')
            .ok_or_else(|| bad(i + 1, "expected 'base64 rank'".into()))?;
        let rank: usize = rank
            .trim()
            .parse()
            .map_err(|_| bad(i + 1, format!("rank {rank:?} is not a number")))?;
        if rank != ranks.len() {
            return Err(bad(i + 1, format!("rank {rank}, expected {}", ranks.len())));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| bad(i + 1, format!("base64: {e}")))?;
        ranks.push(bytes);
    }
    Ok(ranks)
}

/// The trained Llama-3 tokenizer.
pub struct Truth {
    bpe: CoreBPE,
    /// Token bytes by id (ranked tokens, then the special names).
    decoder: Vec<Vec<u8>>,
    specials: Vec<String>,
}

impl std::fmt::Debug for Truth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Truth")
            .field("n_vocab", &self.decoder.len())
            .finish()
    }
}

impl Truth {
    /// Truth over the ranks file at `path` (the pinned `llama3-tokenizer.model`).
    pub fn from_ranks_file(path: impl AsRef<Path>) -> Result<Truth, TokenizerError> {
        Truth::from_ranks(load_ranks(path)?)
    }

    /// Truth over token bytes by rank; specials follow the last rank.
    pub fn from_ranks(ranks: Vec<Vec<u8>>) -> Result<Truth, TokenizerError> {
        let n =
            u32::try_from(ranks.len()).map_err(|_| TokenizerError::TooManyTokens(ranks.len()))?;
        let encoder: FxHashMap<Vec<u8>, u32> = ranks.iter().cloned().zip(0..).collect();
        let specials = special_names();
        let special_encoder: FxHashMap<String, u32> = specials.iter().cloned().zip(n..).collect();
        let bpe = CoreBPE::new(encoder, special_encoder, TRUTH_PATTERN)
            .map_err(|e| TokenizerError::Build(format!("tiktoken: {e}")))?;
        let mut decoder = ranks;
        decoder.extend(specials.iter().map(|s| s.as_bytes().to_vec()));
        Ok(Truth {
            bpe,
            decoder,
            specials,
        })
    }

    /// Token ids for `text`, as Meta's `Tokenizer.encode(text, bos=add_bos, eos=False,
    /// allowed_special="all" if parse_special else set(), disallowed_special=())`: with
    /// `parse_special` every special name in the text is its id, else all text is ordinary.
    pub fn encode(
        &self,
        text: &str,
        add_bos: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = Vec::new();
        if add_bos {
            ids.push(self.bos());
        }
        if parse_special {
            let allowed: HashSet<&str> = self.specials.iter().map(String::as_str).collect();
            let (enc, _) = self
                .bpe
                .encode(text, &allowed)
                .map_err(|e| TokenizerError::Encode {
                    text: text.to_string(),
                    message: e.message,
                })?;
            ids.extend(enc);
        } else {
            ids.extend(self.bpe.encode_ordinary(text));
        }
        Ok(ids)
    }

    /// The Llama-3 chat template tokenized with specials and no added BOS.
    pub fn encode_chat(
        &self,
        messages: &[(&str, &str)],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        self.encode(
            &super::llama3_chat(messages, add_generation_prompt),
            false,
            true,
        )
    }

    /// The bytes of each token (specials as their names; unknown ids as nothing).
    pub fn pieces(&self, ids: &[u32]) -> Vec<Vec<u8>> {
        ids.iter()
            .map(|&id| self.decoder.get(id as usize).cloned().unwrap_or_default())
            .collect()
    }

    /// The pieces concatenated, invalid UTF-8 replaced.
    pub fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.pieces(ids).concat()).into_owned()
    }

    pub fn bos(&self) -> u32 {
        (self.decoder.len() - self.specials.len()) as u32
    }

    pub fn n_vocab(&self) -> usize {
        self.decoder.len()
    }

    /// Token bytes by rank (ids below 128000).
    pub fn ranks(&self) -> &[Vec<u8>] {
        &self.decoder[..self.decoder.len() - self.specials.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_names_follow_bitnet_notes() {
        let names = special_names();
        assert_eq!(names.len(), 256);
        assert_eq!(names[0], "<|begin_of_text|>");
        assert_eq!(names[8], "<|reserved_special_token_4|>");
        assert_eq!(names[(EOT - N_RANKED) as usize], "<|eot_id|>");
        assert_eq!(names[10], "<|reserved_special_token_5|>");
        assert_eq!(names[255], "<|reserved_special_token_250|>");
    }
}
