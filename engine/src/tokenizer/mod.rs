//! Tokenizers: text ↔ token ids for a `gpt2` (byte-level BPE) vocab, two ways.
//!
//! - [`Tokenizer`] follows the GGUF as llama.cpp reads it (`llm_load_vocab` and
//!   `llama_tokenize_internal` in the vendored `src/llama.cpp` / `src/llama-vocab.cpp`), so
//!   engine-vs-oracle comparisons are like for like: the BPE model and the pre-tokenizer are
//!   the `tokenizers` crate's, configured from the vocab ([`Vocab`]) and from
//!   `tokenizer.ggml.pre` ([`PreType`], with llama.cpp's default when the key is absent);
//!   special tokens are cut out of the text the way llama.cpp does it
//!   (`tokenizer_st_partition`), and pieces are rendered as `llama_token_to_piece` renders
//!   them. [`Tokenizer::from_file`] reads a `tokenizer.json` instead.
//! - [`truth::Truth`] is the tokenizer the model was trained with (tiktoken over the Llama-3
//!   ranks), independent of the above: the reference both are held to.
//!
//! BOS is never added twice by the tokenizer itself: [`Tokenizer::encode`] prepends it when
//! asked (and when the vocab wants one, as llama.cpp does); text that already starts with
//! `<|begin_of_text|>` and is parsed with specials gets a second one, exactly as in llama.cpp.
//! [`Tokenizer::encode_chat`] is the way to tokenize the Llama-3 chat template with one BOS.

pub mod byte_level;
mod chat;
mod error;
mod pre;
pub mod truth;

use std::collections::HashSet;
use std::path::Path;

use tokenizers::models::bpe::BPE;

use crate::gguf::GgufFile;

pub use byte_level::{byte_to_char, char_to_byte, encode_bytes};
pub use chat::llama3_chat;
pub use error::TokenizerError;
pub use pre::{pre_tokenizer, PreType, DEFAULT_REGEXES, LLAMA3_REGEX};

/// GGUF `tokenizer.ggml.token_type` values (`enum llama_token_type` in `include/llama.h`).
pub mod token_type {
    pub const UNDEFINED: i32 = 0;
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// Token attributes (`enum llama_token_attr`), the form llama.cpp works with after loading.
mod attr {
    pub const UNKNOWN: u32 = 1 << 0;
    pub const UNUSED: u32 = 1 << 1;
    pub const NORMAL: u32 = 1 << 2;
    pub const CONTROL: u32 = 1 << 3;
    pub const USER_DEFINED: u32 = 1 << 4;
    pub const BYTE: u32 = 1 << 5;

    /// The attribute `llm_load_vocab` gives a token type (unknown types: undefined, 0).
    pub fn from_type(t: i32) -> u32 {
        use super::token_type as tt;
        match t {
            tt::UNKNOWN => UNKNOWN,
            tt::UNUSED => UNUSED,
            tt::NORMAL => NORMAL,
            tt::CONTROL => CONTROL,
            tt::USER_DEFINED => USER_DEFINED,
            tt::BYTE => BYTE,
            _ => 0,
        }
    }
}

/// The GGUF keys a `gpt2` vocab is read from.
pub mod keys {
    pub const MODEL: &str = "tokenizer.ggml.model";
    pub const PRE: &str = "tokenizer.ggml.pre";
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
    pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    pub const MERGES: &str = "tokenizer.ggml.merges";
    pub const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
    pub const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
    pub const EOT_ID: &str = "tokenizer.ggml.eot_token_id";
    pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
}

/// llama.cpp's BOS and EOS for a `gpt2` vocab whose GGUF names none (`llm_load_vocab`: a
/// GPT-2 leftover, kept so the engine adds what the oracle adds).
const GPT2_DEFAULT_BOS_EOS: u32 = 11;

/// A `gpt2` vocabulary as the GGUF stores it: the input of [`Tokenizer::from_vocab`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vocab {
    /// `tokenizer.ggml.tokens`: GPT-2 byte-to-unicode spellings; specials verbatim.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` ([`token_type`]); empty when the key is absent (all normal).
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: `"left right"`, highest priority first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.pre`; `None` when the key is absent.
    pub pre: Option<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`.
    pub eot: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
}

impl Vocab {
    /// The vocab under `tokenizer.ggml.*`. Tokens and merges are required (llama.cpp refuses
    /// a `gpt2` vocab without merges); the other keys are optional, but present with the
    /// wrong type is an error naming the key.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Vocab, TokenizerError> {
        let model = gguf.get_str(keys::MODEL)?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(model.to_string()));
        }
        let has = |key: &str| gguf.get(key).is_some();
        Ok(Vocab {
            tokens: gguf.get_arr_str(keys::TOKENS)?.to_vec(),
            token_types: if has(keys::TOKEN_TYPE) {
                gguf.get_arr_i32(keys::TOKEN_TYPE)?.to_vec()
            } else {
                Vec::new()
            },
            merges: gguf.get_arr_str(keys::MERGES)?.to_vec(),
            pre: has(keys::PRE)
                .then(|| gguf.get_str(keys::PRE).map(str::to_string))
                .transpose()?,
            bos: has(keys::BOS_ID)
                .then(|| gguf.get_u32(keys::BOS_ID))
                .transpose()?,
            eos: has(keys::EOS_ID)
                .then(|| gguf.get_u32(keys::EOS_ID))
                .transpose()?,
            eot: has(keys::EOT_ID)
                .then(|| gguf.get_u32(keys::EOT_ID))
                .transpose()?,
            add_bos: has(keys::ADD_BOS)
                .then(|| gguf.get_bool(keys::ADD_BOS))
                .transpose()?,
        })
    }
}

/// Where a [`Tokenizer`]'s pre-tokenization comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A GGUF vocab, pre-tokenized as llama.cpp does for this `tokenizer.ggml.pre`.
    Gguf(PreType),
    /// A `tokenizer.json`, pre-tokenized as it says.
    Json,
}

/// A piece of input text after special-token partitioning.
enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

/// A byte-level BPE tokenizer that behaves as llama.cpp does on the same vocab.
pub struct Tokenizer {
    /// BPE model and pre-tokenizer; holds no added tokens of its own in GGUF mode, and is
    /// told to treat a `tokenizer.json`'s added tokens as text (partitioning is ours).
    hf: tokenizers::Tokenizer,
    /// Token text by id (GGUF spelling).
    tokens: Vec<String>,
    /// `llama_token_attr` by id.
    attrs: Vec<u32>,
    /// Control, user-defined and unknown tokens, longest text first
    /// (`vocab.cache_special_tokens`).
    specials: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    add_bos: bool,
    source: Source,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("n_vocab", &self.tokens.len())
            .field("source", &self.source)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eot", &self.eot)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

impl Tokenizer {
    /// The tokenizer llama.cpp builds from this GGUF vocab (`llm_load_vocab`).
    pub fn from_vocab(vocab: &Vocab) -> Result<Tokenizer, TokenizerError> {
        let pre = PreType::from_gguf(vocab.pre.as_deref())?;
        let n = vocab.tokens.len();
        if u32::try_from(n).is_err() {
            return Err(TokenizerError::TooManyTokens(n));
        }
        if !vocab.token_types.is_empty() && vocab.token_types.len() != n {
            return Err(TokenizerError::TokenTypesLength {
                tokens: n,
                types: vocab.token_types.len(),
            });
        }
        // llm_load_vocab: an empty token becomes "[EMPTY_<id>]"; no token types: all normal.
        let tokens: Vec<String> = vocab
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if t.is_empty() {
                    format!("[EMPTY_{i}]")
                } else {
                    t.clone()
                }
            })
            .collect();
        let mut attrs: Vec<u32> = if vocab.token_types.is_empty() {
            vec![attr::NORMAL; n]
        } else {
            vocab
                .token_types
                .iter()
                .map(|&t| attr::from_type(t))
                .collect()
        };

        let mut ids: tokenizers::models::bpe::Vocab = Default::default();
        ids.reserve(n);
        for (i, t) in tokens.iter().enumerate() {
            if let Some(first) = ids.insert(t.clone(), i as u32) {
                return Err(TokenizerError::DuplicateToken {
                    token: t.clone(),
                    first,
                    second: i as u32,
                });
            }
        }

        let merges = parse_merges(&vocab.merges, &ids);
        let bpe = BPE::builder()
            .vocab_and_merges(ids.clone(), merges)
            .ignore_merges(pre.ignore_merges())
            .build()
            .map_err(|e| TokenizerError::Build(e.to_string()))?;
        let mut hf = tokenizers::Tokenizer::new(bpe);
        hf.with_pre_tokenizer(Some(pre_tokenizer(pre)?));

        // Special ids: gpt2 defaults, then the GGUF keys when in range (llama.cpp warns about
        // and ignores an out-of-range id).
        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        let default = in_range(Some(GPT2_DEFAULT_BOS_EOS));
        let bos = in_range(vocab.bos).or(default);
        let eos = in_range(vocab.eos).or(default);
        // llm_load_vocab's EOT / EOM auto-detection by text when no id is given; a token
        // found this way is forced to control.
        const EOT_TEXTS: [&str; 7] = [
            "<|eot_id|>",
            "<|im_end|>",
            "<|end|>",
            "<end_of_turn>",
            "<|endoftext|>",
            "<EOT>",
            "<｜end▁of▁sentence｜>",
        ];
        let eot = in_range(vocab.eot);
        let detected_eot = match eot {
            Some(_) => None,
            None => EOT_TEXTS.iter().find_map(|t| ids.get(*t).copied()),
        };
        for id in detected_eot
            .into_iter()
            .chain(ids.get("<|eom_id|>").copied())
        {
            attrs[id as usize] = attr::CONTROL;
        }
        let eot = eot.or(detected_eot);
        let add_bos = vocab.add_bos.unwrap_or(pre.add_bos_default());
        Ok(Tokenizer::assemble(
            hf,
            tokens,
            attrs,
            bos,
            eos,
            eot,
            add_bos,
            Source::Gguf(pre),
        ))
    }

    /// The tokenizer of a GGUF file's `tokenizer.ggml.*` keys.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::from_vocab(&Vocab::from_gguf(gguf)?)
    }

    /// A byte-level BPE `tokenizer.json` (what a `gpt2` GGUF is converted from), its
    /// normalizer and pre-tokenizer as written. Added tokens marked special count as control
    /// tokens, other added tokens as user-defined, as `convert_hf_to_gguf.py` types them.
    /// BOS is `<|begin_of_text|>` (else `<s>`), added by [`Tokenizer::encode`] when the file
    /// has a post-processor.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer, TokenizerError> {
        let path = path.as_ref();
        let mut hf = tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::File {
            action: "read tokenizer.json",
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        // Special-token partitioning is done here, as llama.cpp does it; the tokenizers
        // crate must only see plain text.
        hf.set_encode_special_tokens(true);
        let n = hf.get_vocab_size(true);
        let added = hf.get_added_tokens_decoder();
        let mut tokens = Vec::with_capacity(n);
        let mut attrs = Vec::with_capacity(n);
        for id in 0..n as u32 {
            tokens.push(
                hf.id_to_token(id)
                    .unwrap_or_else(|| format!("[EMPTY_{id}]")),
            );
            attrs.push(match added.get(&id) {
                Some(t) if t.special => attr::CONTROL,
                Some(_) => attr::USER_DEFINED,
                None => attr::NORMAL,
            });
        }
        let bos = ["<|begin_of_text|>", "<s>"]
            .iter()
            .find_map(|t| hf.token_to_id(t));
        let eos = ["<|end_of_text|>", "</s>"]
            .iter()
            .find_map(|t| hf.token_to_id(t));
        let eot = hf.token_to_id("<|eot_id|>");
        let add_bos = bos.is_some() && hf.get_post_processor().is_some();
        Ok(Tokenizer::assemble(
            hf,
            tokens,
            attrs,
            bos,
            eos,
            eot,
            add_bos,
            Source::Json,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        hf: tokenizers::Tokenizer,
        tokens: Vec<String>,
        attrs: Vec<u32>,
        bos: Option<u32>,
        eos: Option<u32>,
        eot: Option<u32>,
        add_bos: bool,
        source: Source,
    ) -> Tokenizer {
        // vocab.cache_special_tokens: control, user-defined and unknown tokens, longest first.
        let mut specials: Vec<u32> = (0..tokens.len() as u32)
            .filter(|&id| {
                attrs[id as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .collect();
        specials.sort_by_key(|&id| std::cmp::Reverse(tokens[id as usize].len()));
        Tokenizer {
            hf,
            tokens,
            attrs,
            specials,
            bos,
            eos,
            eot,
            add_bos,
            source,
        }
    }

    /// Token ids for `text`, as `llama_tokenize(text, add_special, parse_special)` gives them.
    ///
    /// - `add_special`: prepend BOS if the vocab wants one (`tokenizer.ggml.add_bos_token`,
    ///   else llama.cpp's default for the pre-type: yes for `llama-bpe`, no when the key is
    ///   absent; see [`Tokenizer::add_bos`]). Never more than one BOS is *added*.
    /// - `parse_special`: control tokens written in the text become their ids; when false
    ///   they are plain text. User-defined tokens are matched either way (llama.cpp does).
    pub fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = Vec::new();
        if add_special && self.add_bos {
            ids.extend(self.bos);
        }
        for fragment in self.partition(text, parse_special) {
            match fragment {
                Fragment::Token(id) => ids.push(id),
                Fragment::Text(t) => {
                    let enc =
                        self.hf
                            .encode_fast(t, false)
                            .map_err(|e| TokenizerError::Encode {
                                text: t.to_string(),
                                message: e.to_string(),
                            })?;
                    ids.extend_from_slice(enc.get_ids());
                }
            }
        }
        Ok(ids)
    }

    /// `tokenizer_st_partition`: cut each special token out of the text, longest tokens
    /// first, each one through every text fragment left so far. Control and unknown tokens
    /// only when `parse_special`. (llama.cpp's LSTRIP/RSTRIP attributes are only set for
    /// some models by name, never for a `gpt2` Llama-3 vocab, and are not mirrored.)
    fn partition<'t>(&self, text: &'t str, parse_special: bool) -> Vec<Fragment<'t>> {
        let mut fragments = if text.is_empty() {
            Vec::new()
        } else {
            vec![Fragment::Text(text)]
        };
        for &id in &self.specials {
            if !parse_special && self.attrs[id as usize] & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let special = self.tokens[id as usize].as_str();
            if !fragments
                .iter()
                .any(|f| matches!(f, Fragment::Text(t) if t.contains(special)))
            {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(mut rest) = fragment else {
                    next.push(fragment);
                    continue;
                };
                while let Some(at) = rest.find(special) {
                    if at > 0 {
                        next.push(Fragment::Text(&rest[..at]));
                    }
                    next.push(Fragment::Token(id));
                    rest = &rest[at + special.len()..];
                }
                if !rest.is_empty() {
                    next.push(Fragment::Text(rest));
                }
            }
            fragments = next;
        }
        fragments
    }

    /// The bytes token `id` stands for, as `llama_token_to_piece(id, special)` renders them:
    /// normal tokens byte-decoded from their GPT-2 spelling; control and unknown tokens as
    /// their text when `special`, else nothing; user-defined tokens as their text; byte,
    /// unused and undefined tokens (and ids outside the vocab) as nothing.
    pub fn piece(&self, id: u32, special: bool) -> Vec<u8> {
        let (Some(text), Some(&a)) = (self.tokens.get(id as usize), self.attrs.get(id as usize))
        else {
            return Vec::new();
        };
        if a & (attr::CONTROL | attr::UNKNOWN) != 0 {
            return if special {
                text.as_bytes().to_vec()
            } else {
                Vec::new()
            };
        }
        if a & attr::USER_DEFINED != 0 {
            return text.as_bytes().to_vec();
        }
        if a & attr::NORMAL != 0 {
            return decode_gpt2_text(text);
        }
        Vec::new()
    }

    /// [`Tokenizer::piece`] of each id, with `special = true` (how llama.cpp fills its
    /// token-to-piece cache, and what the oracle's pieces show).
    pub fn pieces(&self, ids: &[u32]) -> Vec<Vec<u8>> {
        ids.iter().map(|&id| self.piece(id, true)).collect()
    }

    /// The pieces concatenated, invalid UTF-8 replaced. No clean-up of spaces (llama.cpp's
    /// `llama_detokenize` removes spaces before punctuation; this does not), so
    /// `decode(encode(x)) == x`.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = self.pieces(ids).concat();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The Llama-3 chat template ([`llama3_chat`]) tokenized with specials parsed and no
    /// BOS added, so the template's own `<|begin_of_text|>` is the only one.
    pub fn encode_chat(
        &self,
        messages: &[(&str, &str)],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        self.encode(&llama3_chat(messages, add_generation_prompt), false, true)
    }

    /// Whether `encode(_, add_special = true, _)` prepends BOS (`vocab.tokenizer_add_bos`).
    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// `<|eot_id|>` (from `tokenizer.ggml.eot_token_id`, else found by text as llama.cpp does).
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    /// The token's text as the vocab spells it.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of the token spelled `text` (GPT-2 spelling for normal tokens).
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.hf.token_to_id(text)
    }

    pub fn source(&self) -> Source {
        self.source
    }
}

/// `tokenizer.ggml.merges` as `(left, right)` pairs for the BPE model, the way
/// `llm_load_vocab` splits them (at the first space after the first byte). Repeats keep
/// their first rank (`bpe_ranks.emplace`). Merges whose parts or result are not tokens are
/// dropped: `tokenizers` refuses them, and llama.cpp can apply such a merge only to produce
/// a symbol it must then spell in bytes, which a consistent vocab never needs.
fn parse_merges(merges: &[String], ids: &tokenizers::models::bpe::Vocab) -> Vec<(String, String)> {
    let mut seen: HashSet<(&str, &str)> = HashSet::with_capacity(merges.len());
    let mut out = Vec::with_capacity(merges.len());
    for m in merges {
        let Some(pos) = m
            .as_bytes()
            .iter()
            .skip(1)
            .position(|&b| b == b' ')
            .map(|p| p + 1)
        else {
            continue;
        };
        let (a, b) = (&m[..pos], &m[pos + 1..]);
        if !ids.contains_key(a) || !ids.contains_key(b) || !ids.contains_key(&format!("{a}{b}")) {
            continue;
        }
        if seen.insert((a, b)) {
            out.push((a.to_string(), b.to_string()));
        }
    }
    out
}

/// `llama_decode_text`: a GPT-2 spelled token back to bytes; a character outside the byte
/// table becomes `[UNK_BYTE_0x<utf8 hex><token text>]`, as in llama.cpp.
fn decode_gpt2_text(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
    out
}
