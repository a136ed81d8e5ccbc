//! The pre-tokenizers built with the `tokenizers` crate cut text exactly where llama.cpp
//! does. Two of llama.cpp's regexes never reach a regex engine: `unicode_regex_split_custom`
//! runs hand-written scanners for them (`unicode_regex_split_custom_llama3` and `_gpt2` in
//! the vendored `src/unicode.cpp`). Both are ported below line for line (character classes
//! from the `regex` crate's Unicode tables, so only the scanning logic is under test) and
//! compared with our `Split` sequence on the starter inputs and on random strings.

use std::sync::OnceLock;

use engine::tokenizer::{pre_tokenizer, PreType, DEFAULT_REGEXES};
use proptest::prelude::*;
use regex::Regex;
use tokenizers::{
    OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, PreTokenizerWrapper,
};

/// `codepoint_flags` for a position: `None` is llama.cpp's OUT_OF_RANGE (all flags clear);
/// every code point in range has some category, so `defined` (`as_uint() != 0`) holds.
#[derive(Clone, Copy, Default)]
struct Flags {
    letter: bool,
    number: bool,
    whitespace: bool,
    defined: bool,
}

fn flags(c: Option<char>) -> Flags {
    static CLASSES: OnceLock<[Regex; 3]> = OnceLock::new();
    let [l, n, s] =
        CLASSES.get_or_init(|| [r"^\p{L}$", r"^\p{N}$", r"^\s$"].map(|r| Regex::new(r).unwrap()));
    let Some(c) = c else { return Flags::default() };
    let mut buf = [0u8; 4];
    let c = &*c.encode_utf8(&mut buf);
    Flags {
        letter: l.is_match(c),
        number: n.is_match(c),
        whitespace: s.is_match(c),
        defined: true,
    }
}

/// A piece's view of the code points (`_get_cpt` / `_get_flags`).
struct Piece<'a> {
    cpts: &'a [char],
    ini: usize,
    end: usize,
}

impl Piece<'_> {
    fn cpt(&self, pos: usize) -> Option<char> {
        (self.ini <= pos && pos < self.end).then(|| self.cpts[pos])
    }
    fn flags(&self, pos: usize) -> Flags {
        flags(self.cpt(pos))
    }
}

/// `_add_token`: emit the code points since the last cut, return how many.
fn add(out: &mut Vec<usize>, prev: &mut usize, end: usize) -> usize {
    let len = end - *prev;
    if len > 0 {
        out.push(len);
    }
    *prev = end;
    len
}

fn lower(c: Option<char>) -> Option<char> {
    c.map(|c| c.to_lowercase().next().unwrap_or(c))
}

/// `unicode_regex_split_custom_llama3`, line for line.
fn custom_llama3(cpts: &[char], offsets: &[usize]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut start = 0;
    for &len in offsets {
        let p = Piece {
            cpts,
            ini: start,
            end: start + len,
        };
        start += len;
        let mut prev = p.ini;
        let mut pos = p.ini;
        while pos < p.end {
            let cpt = p.cpt(pos);
            let f = p.flags(pos);
            // (?i:'s|'t|'re|'ve|'m|'ll|'d)
            if cpt == Some('\'') && pos + 1 < p.end {
                let next = lower(p.cpt(pos + 1));
                if matches!(next, Some('s' | 't' | 'm' | 'd')) {
                    pos += add(&mut out, &mut prev, pos + 2);
                    continue;
                }
                if pos + 2 < p.end {
                    let next2 = lower(p.cpt(pos + 2));
                    if matches!(
                        (next, next2),
                        (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
                    ) {
                        pos += add(&mut out, &mut prev, pos + 3);
                        continue;
                    }
                }
            }
            // [^\r\n\p{L}\p{N}]?\p{L}+
            if !(cpt == Some('\r') || cpt == Some('\n') || f.number)
                && (f.letter || p.flags(pos + 1).letter)
            {
                pos += 1;
                while p.flags(pos).letter {
                    pos += 1;
                }
                add(&mut out, &mut prev, pos);
                continue;
            }
            // \p{N}{1,3}
            if f.number {
                let mut ini = pos;
                while p.flags(pos).number {
                    pos += 1;
                    if pos - ini >= 3 {
                        add(&mut out, &mut prev, pos);
                        ini = pos;
                    }
                }
                add(&mut out, &mut prev, pos);
                continue;
            }
            // <space>?[^\s\p{L}\p{N}]+[\r\n]*
            let mut f2 = if cpt == Some(' ') {
                p.flags(pos + 1)
            } else {
                f
            };
            if !(f2.whitespace || f2.letter || f2.number) && f.defined {
                pos += usize::from(cpt == Some(' '));
                while !(f2.whitespace || f2.letter || f2.number) && f2.defined {
                    pos += 1;
                    f2 = p.flags(pos);
                }
                while matches!(p.cpt(pos), Some('\r' | '\n')) {
                    pos += 1;
                }
                add(&mut out, &mut prev, pos);
                continue;
            }
            let mut n_ws = 0;
            let mut last_rn = 0;
            while p.flags(pos + n_ws).whitespace {
                if matches!(p.cpt(pos + n_ws), Some('\r' | '\n')) {
                    last_rn = pos + n_ws + 1;
                }
                n_ws += 1;
            }
            // \s*[\r\n]+
            if last_rn > 0 {
                pos = last_rn;
                add(&mut out, &mut prev, pos);
                continue;
            }
            // \s+(?!\S)
            if n_ws > 1 && p.cpt(pos + n_ws).is_some() {
                pos += n_ws - 1;
                add(&mut out, &mut prev, pos);
                continue;
            }
            // \s+
            if n_ws > 0 {
                pos += n_ws;
                add(&mut out, &mut prev, pos);
                continue;
            }
            pos += 1;
            add(&mut out, &mut prev, pos);
        }
    }
    out
}

/// `unicode_regex_split_custom_gpt2`, line for line.
fn custom_gpt2(cpts: &[char], offsets: &[usize]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut start = 0;
    for &len in offsets {
        let p = Piece {
            cpts,
            ini: start,
            end: start + len,
        };
        start += len;
        let mut prev = p.ini;
        let mut pos = p.ini;
        while pos < p.end {
            let cpt = p.cpt(pos);
            let f = p.flags(pos);
            // 's|'t|'re|'ve|'m|'ll|'d
            if cpt == Some('\'') && pos + 1 < p.end {
                let next = p.cpt(pos + 1);
                if matches!(next, Some('s' | 't' | 'm' | 'd')) {
                    pos += add(&mut out, &mut prev, pos + 2);
                    continue;
                }
                if pos + 2 < p.end {
                    let next2 = p.cpt(pos + 2);
                    if matches!(
                        (next, next2),
                        (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))
                    ) {
                        pos += add(&mut out, &mut prev, pos + 3);
                        continue;
                    }
                }
            }
            let mut f2 = if cpt == Some(' ') {
                p.flags(pos + 1)
            } else {
                f
            };
            // <space>?\p{L}+
            if f2.letter {
                pos += usize::from(cpt == Some(' '));
                while f2.letter {
                    pos += 1;
                    f2 = p.flags(pos);
                }
                add(&mut out, &mut prev, pos);
                continue;
            }
            // <space>?\p{N}+
            if f2.number {
                pos += usize::from(cpt == Some(' '));
                while f2.number {
                    pos += 1;
                    f2 = p.flags(pos);
                }
                add(&mut out, &mut prev, pos);
                continue;
            }
            // <space>?[^\s\p{L}\p{N}]+
            if !(f2.whitespace || f2.letter || f2.number) && f2.defined {
                pos += usize::from(cpt == Some(' '));
                while !(f2.whitespace || f2.letter || f2.number) && f2.defined {
                    pos += 1;
                    f2 = p.flags(pos);
                }
                add(&mut out, &mut prev, pos);
                continue;
            }
            let mut n_ws = 0;
            while p.flags(pos + n_ws).whitespace {
                n_ws += 1;
            }
            // \s+(?!\S)
            if n_ws > 1 && p.cpt(pos + n_ws).is_some() {
                pos += n_ws - 1;
                add(&mut out, &mut prev, pos);
                continue;
            }
            // \s+
            if n_ws > 0 {
                pos += n_ws;
                add(&mut out, &mut prev, pos);
                continue;
            }
            pos += 1;
            add(&mut out, &mut prev, pos);
        }
    }
    out
}

/// `unicode_regex_split_stl`: matches and the gaps between them, as piece lengths.
fn stl_split(cpts: &[char], re: &Regex, offsets: &[usize]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut start = 0;
    for &len in offsets {
        let piece: String = cpts[start..start + len].iter().collect();
        let n_chars = |s: &str| s.chars().count();
        let mut at = 0;
        for m in re.find_iter(&piece) {
            if m.start() > at {
                out.push(n_chars(&piece[at..m.start()]));
            }
            out.push(n_chars(m.as_str()));
            at = m.end();
        }
        if at < piece.len() {
            out.push(n_chars(&piece[at..]));
        }
        start += len;
    }
    out
}

/// llama.cpp's `unicode_regex_split` for a pre-type, with the custom scanners.
fn llama_cpp_split(pre: PreType, text: &str) -> Vec<String> {
    let cpts: Vec<char> = text.chars().collect();
    let mut offsets = vec![cpts.len()];
    match pre {
        PreType::Llama3 => offsets = custom_llama3(&cpts, &offsets),
        PreType::Default => {
            offsets = stl_split(&cpts, &Regex::new(DEFAULT_REGEXES[0]).unwrap(), &offsets);
            offsets = custom_gpt2(&cpts, &offsets);
            offsets = stl_split(&cpts, &Regex::new(DEFAULT_REGEXES[2]).unwrap(), &offsets);
            offsets = stl_split(&cpts, &Regex::new(DEFAULT_REGEXES[3]).unwrap(), &offsets);
        }
    }
    let mut words = Vec::new();
    let mut start = 0;
    for len in offsets.into_iter().filter(|&l| l > 0) {
        words.push(cpts[start..start + len].iter().collect());
        start += len;
    }
    words
}

/// Our pre-tokenizer's words, as slices of the original text.
fn our_split(pre: PreType, text: &str) -> Vec<String> {
    static BUILT: OnceLock<[PreTokenizerWrapper; 2]> = OnceLock::new();
    let built = BUILT
        .get_or_init(|| [PreType::Llama3, PreType::Default].map(|p| pre_tokenizer(p).unwrap()));
    let pt = &built[usize::from(pre == PreType::Default)];
    let mut s = PreTokenizedString::from(text);
    pt.pre_tokenize(&mut s).unwrap();
    s.get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(_, (a, b), _)| text[a..b].to_string())
        .collect()
}

fn inputs() -> Vec<String> {
    serde_json::from_str(include_str!("../../cases/tokenizer/inputs.json")).unwrap()
}

#[test]
fn split_sequence_matches_llama_cpp_scanners_on_starter_inputs() {
    for pre in [PreType::Llama3, PreType::Default] {
        for text in inputs() {
            assert_eq!(
                our_split(pre, &text),
                llama_cpp_split(pre, &text),
                "{pre:?} on {text:?}"
            );
        }
    }
}

#[test]
fn default_pre_splits_contractions_and_digit_runs_like_llama_cpp() {
    let words = |t: &str| our_split(PreType::Default, t);
    assert_eq!(words("don't"), ["don", "'", "t"]);
    assert_eq!(words("1234567"), ["123", "456", "7"]);
    assert_eq!(words(" 12 ab!!"), [" ", "12", " ab", "!!"]);
    let words3 = |t: &str| our_split(PreType::Llama3, t);
    assert_eq!(words3("don't"), ["don", "'t"]);
    assert_eq!(words3("I'M 1234567"), ["I", "'M", " ", "123", "456", "7"]);
    assert_eq!(words3("a\n\n b"), ["a", "\n\n", " b"]);
}

const ALPHABET: &[char] = &[
    ' ', ' ', ' ', '\n', '\r', '\t', '\u{b}', '\u{85}', '\u{a0}', '\u{2028}', '\u{3000}', 'a', 'Z',
    's', 'S', 't', 'T', 'l', 'L', 'e', 'r', 'v', 'm', 'd', 'D', '\'', '1', '2', '9', '٣', '²', 'Ⅻ',
    '.', '!', ',', '$', '+', '`', '-', '_', '<', '|', '>', 'é', 'ǅ', 'ſ', '中', 'ク', 'ម', '្',
    '😀', '\u{200d}', '\u{301}', '\u{fe0f}', '€', '°', '“', '¿', '\u{feff}', '\u{ad}', '\u{7f}',
    '\u{e000}', '\u{378}',
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn split_sequence_matches_llama_cpp_scanners_on_random_text(
        idx in proptest::collection::vec(0..ALPHABET.len(), 0..32)
    ) {
        let text: String = idx.iter().map(|&i| ALPHABET[i]).collect();
        for pre in [PreType::Llama3, PreType::Default] {
            prop_assert_eq!(our_split(pre, &text), llama_cpp_split(pre, &text), "{:?} on {:?}", pre, text);
        }
    }
}
