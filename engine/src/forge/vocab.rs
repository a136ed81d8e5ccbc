//! Vocabularies for forged models, in the form llama.cpp's `gpt2` (byte-level BPE) tokenizer
//! reads: tokens as GPT-2 byte-to-unicode strings, merges as `"left right"`, token types
//! (1 normal, 3 control), BOS/EOS ids.
//!
//! - [`byte_level`]: 256 byte tokens, 238 merges trained on a small embedded English text
//!   (`corpus.txt`) so tokenization is interesting, then `<|begin_of_text|>` and
//!   `<|end_of_text|>` as control tokens at the end. llama.cpp refuses a `gpt2` vocab without
//!   a merges key (`llm_load_vocab`: "cannot find tokenizer merges in model file").
//! - [`llama3`]: the real Llama-3 vocabulary (128 000 ranked tokens from the pinned
//!   `tokenizer.model`, merges recovered from the ranks, 256 specials from id 128 000).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use super::ForgeError;

/// GGUF `tokenizer.ggml.token_type` of ordinary tokens (`LLAMA_TOKEN_TYPE_NORMAL`).
pub const TOKEN_TYPE_NORMAL: i32 = 1;
/// GGUF `tokenizer.ggml.token_type` of special tokens (`LLAMA_TOKEN_TYPE_CONTROL`).
pub const TOKEN_TYPE_CONTROL: i32 = 3;

/// File name of the Llama-3 ranks file in the asset cache.
pub const LLAMA3_ASSET: &str = "llama3-tokenizer.model";
/// Ranked (non-special) tokens in the Llama-3 vocabulary.
pub const LLAMA3_N_RANKED: usize = 128_000;
/// Special tokens after the ranked ones.
pub const LLAMA3_N_SPECIAL: usize = 256;
/// Merges recovered from the Llama-3 ranks (the count in Meta's `tokenizer.json`).
pub const LLAMA3_N_MERGES: usize = 280_147;

/// Merges trained for the byte-level toy vocabulary: vocab = 256 + 238 + 2 specials = 496
/// tokens, which keeps tiny-f32 (F32 embeddings) under 5 MB.
pub const BYTE_LEVEL_MERGES: usize = 238;

/// A vocabulary ready to be written as `tokenizer.ggml.*` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    /// Token texts in GPT-2 byte-to-unicode form (specials verbatim), by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` per id.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: `"left right"`, highest priority first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: u32,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: u32,
}

/// Bytes in GPT-2 byte-to-unicode form (`tokenizer::byte_level`, shared with the tokenizer).
pub fn bytes_to_gpt2(bytes: &[u8]) -> String {
    crate::tokenizer::byte_level::encode_bytes(bytes)
}

/// The byte-level toy vocabulary (cached; deterministic).
pub fn byte_level() -> Arc<Vocab> {
    static VOCAB: OnceLock<Arc<Vocab>> = OnceLock::new();
    VOCAB
        .get_or_init(|| {
            Arc::new(train_byte_level(
                include_str!("corpus.txt"),
                BYTE_LEVEL_MERGES,
            ))
        })
        .clone()
}

/// Splits text into pre-tokens roughly like the Llama-3 regex: ` ?letters`, ` ?digits{1,3}`,
/// ` ?punctuation`, whitespace runs.
fn pretokenize(text: &str) -> Vec<&[u8]> {
    #[derive(PartialEq, Clone, Copy)]
    enum Class {
        Alpha,
        Digit,
        Space,
        Other,
    }
    let class = |b: u8| {
        if b.is_ascii_alphabetic() || b >= 0x80 {
            Class::Alpha
        } else if b.is_ascii_digit() {
            Class::Digit
        } else if b.is_ascii_whitespace() {
            Class::Space
        } else {
            Class::Other
        }
    };
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let mut c = class(bytes[i]);
        // A single space attaches to the following word/number/punctuation.
        if bytes[i] == b' ' && i + 1 < bytes.len() && class(bytes[i + 1]) != Class::Space {
            i += 1;
            c = class(bytes[i]);
        }
        let mut len = 0;
        while i < bytes.len() && class(bytes[i]) == c && !(c == Class::Digit && len == 3) {
            // Leave a space before a word for that word.
            if c == Class::Space
                && i + 1 < bytes.len()
                && bytes[i] == b' '
                && class(bytes[i + 1]) != Class::Space
                && i > start
            {
                break;
            }
            i += 1;
            len += 1;
        }
        if i == start {
            i += 1;
        }
        out.push(&bytes[start..i]);
    }
    out
}

/// Deterministic BPE training: repeatedly merge the most frequent adjacent pair (ties broken
/// by the smaller pair of ids), skipping pairs whose concatenation is already a token (so
/// every merge creates a distinct token: llama.cpp asserts token texts are unique).
fn train_byte_level(corpus: &str, n_merges: usize) -> Vocab {
    let mut words: BTreeMap<&[u8], u64> = BTreeMap::new();
    for w in pretokenize(corpus) {
        *words.entry(w).or_default() += 1;
    }
    let mut seqs: Vec<(Vec<u32>, u64)> = words
        .iter()
        .map(|(w, &c)| (w.iter().map(|&b| u32::from(b)).collect(), c))
        .collect();
    let mut token_bytes: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let mut known: HashSet<Vec<u8>> = token_bytes.iter().cloned().collect();
    let mut merges = Vec::new();
    while merges.len() < n_merges {
        let mut counts: BTreeMap<(u32, u32), u64> = BTreeMap::new();
        for (s, c) in &seqs {
            for p in s.windows(2) {
                *counts.entry((p[0], p[1])).or_default() += c;
            }
        }
        let mut best: Option<((u32, u32), u64)> = None;
        for (&pair, &c) in &counts {
            let merged = [
                &token_bytes[pair.0 as usize][..],
                &token_bytes[pair.1 as usize][..],
            ]
            .concat();
            if known.contains(&merged) {
                continue;
            }
            if best.is_none_or(|(_, bc)| c > bc) {
                best = Some((pair, c));
            }
        }
        let Some(((a, b), _)) = best else { break };
        let merged = [&token_bytes[a as usize][..], &token_bytes[b as usize][..]].concat();
        merges.push(format!(
            "{} {}",
            bytes_to_gpt2(&token_bytes[a as usize]),
            bytes_to_gpt2(&token_bytes[b as usize])
        ));
        known.insert(merged.clone());
        token_bytes.push(merged);
        let id = (token_bytes.len() - 1) as u32;
        for (s, _) in &mut seqs {
            let mut out = Vec::with_capacity(s.len());
            let mut i = 0;
            while i < s.len() {
                if i + 1 < s.len() && s[i] == a && s[i + 1] == b {
                    out.push(id);
                    i += 2;
                } else {
                    out.push(s[i]);
                    i += 1;
                }
            }
            *s = out;
        }
    }
    let mut tokens: Vec<String> = token_bytes.iter().map(|t| bytes_to_gpt2(t)).collect();
    let mut token_types = vec![TOKEN_TYPE_NORMAL; tokens.len()];
    let bos = tokens.len() as u32;
    tokens.push("<|begin_of_text|>".to_string());
    tokens.push("<|end_of_text|>".to_string());
    token_types.extend([TOKEN_TYPE_CONTROL; 2]);
    Vocab {
        tokens,
        token_types,
        merges,
        bos,
        eos: bos + 1,
    }
}

/// The asset cache: `$BITPROBE_ASSETS`, else `<workspace root>/.cache/assets` (filled by
/// `scripts/setup.sh`).
pub fn assets_dir() -> PathBuf {
    match std::env::var_os("BITPROBE_ASSETS") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => super::workspace_root().join(".cache").join("assets"),
    }
}

/// The Llama-3 vocabulary from `<assets>/llama3-tokenizer.model` (cached in-process per path).
pub fn llama3() -> Result<Arc<Vocab>, ForgeError> {
    static CACHE: Mutex<Option<(PathBuf, Arc<Vocab>)>> = Mutex::new(None);
    let path = assets_dir().join(LLAMA3_ASSET);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((p, v)) = cache.as_ref() {
        if *p == path {
            return Ok(v.clone());
        }
    }
    let vocab = Arc::new(load_llama3(&path)?);
    *cache = Some((path, vocab.clone()));
    Ok(vocab)
}

fn load_llama3(path: &Path) -> Result<Vocab, ForgeError> {
    if !path.exists() {
        return Err(ForgeError::MissingAsset {
            path: path.to_path_buf(),
        });
    }
    // `base64(token bytes) rank` per line: the same reader the truth tokenizer uses.
    let ranked = crate::tokenizer::truth::load_ranks(path).map_err(|e| ForgeError::BadAsset {
        path: path.to_path_buf(),
        line: 0,
        reason: e.to_string(),
    })?;
    if ranked.len() != LLAMA3_N_RANKED {
        return Err(ForgeError::BadAsset {
            path: path.to_path_buf(),
            line: ranked.len(),
            reason: format!("{} ranked tokens, expected {LLAMA3_N_RANKED}", ranked.len()),
        });
    }
    let rank_of: HashMap<&[u8], u32> = ranked
        .iter()
        .enumerate()
        .map(|(r, t)| (t.as_slice(), r as u32))
        .collect();
    let strings: Vec<String> = ranked.iter().map(|t| bytes_to_gpt2(t)).collect();

    // Merges from ranks, as transformers' `TikTokenConverter.extract_vocab_merges_from_model`
    // (convert_slow_tokenizer.py) recovers them for Meta's tokenizer.json: for each token in
    // rank order, every split into two pieces that are both tokens, ordered by
    // (rank of left, rank of right). This gives the 280 147 merges of Llama 3.
    let mut merges = Vec::with_capacity(LLAMA3_N_MERGES);
    let mut local: Vec<(u32, u32)> = Vec::new();
    for tok in &ranked {
        if tok.len() < 2 {
            continue;
        }
        local.clear();
        for i in 1..tok.len() {
            if let (Some(&l), Some(&r)) = (rank_of.get(&tok[..i]), rank_of.get(&tok[i..])) {
                local.push((l, r));
            }
        }
        local.sort_unstable();
        for &(l, r) in &local {
            merges.push(format!("{} {}", strings[l as usize], strings[r as usize]));
        }
    }

    let mut tokens = strings;
    tokens.extend(crate::tokenizer::truth::special_names());
    let mut token_types = vec![TOKEN_TYPE_NORMAL; LLAMA3_N_RANKED];
    token_types.extend([TOKEN_TYPE_CONTROL; LLAMA3_N_SPECIAL]);
    Ok(Vocab {
        tokens,
        token_types,
        merges,
        bos: 128_000,
        eos: 128_001,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_bytes_map_space_and_newline() {
        assert_eq!(bytes_to_gpt2(b" the\n"), "\u{120}the\u{10a}");
        let all: Vec<u8> = (0..=255).collect();
        let distinct: HashSet<char> = bytes_to_gpt2(&all).chars().collect();
        assert_eq!(distinct.len(), 256);
    }

    #[test]
    fn pretokenizer_attaches_spaces_to_words() {
        let p: Vec<&str> = pretokenize("Hello world, 12345  x")
            .into_iter()
            .map(|b| std::str::from_utf8(b).unwrap())
            .collect();
        assert_eq!(p, ["Hello", " world", ",", " 123", "45", " ", " x"]);
    }
}
