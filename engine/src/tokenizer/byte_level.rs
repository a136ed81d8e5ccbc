//! GPT-2's byte-to-unicode table: how a `gpt2` GGUF vocab spells raw bytes as printable
//! characters. Mirrors `unicode_byte_to_utf8_map` / `unicode_utf8_to_byte_map` in the
//! vendored `src/unicode.cpp` (itself `bytes_to_unicode` from OpenAI's GPT-2 `encoder.py`).

use std::sync::OnceLock;

/// The character byte `b` is spelled as: printable Latin-1 bytes (`!`..`~`, `¡`..`¬`,
/// `®`..`ÿ`) stand for themselves, the other 68 bytes map in order to U+0100, U+0101, …
pub fn byte_to_char(b: u8) -> char {
    table().0[b as usize]
}

/// The byte a GPT-2 unicode character stands for, `None` for any other character.
pub fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 0x200 {
        let b = table().1[cp as usize];
        (b >= 0).then_some(b as u8)
    } else {
        None
    }
}

/// `bytes` spelled in GPT-2 unicode form (what a `gpt2` vocab stores).
pub fn encode_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| byte_to_char(b)).collect()
}

fn is_printable(b: u8) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// (byte → char, code point below 0x200 → byte or -1).
fn table() -> &'static ([char; 256], [i16; 0x200]) {
    static TABLE: OnceLock<([char; 256], [i16; 0x200])> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut to_char = ['\0'; 256];
        let mut to_byte = [-1i16; 0x200];
        let mut n = 0u32;
        for b in 0..=255u8 {
            let cp = if is_printable(b) {
                b as u32
            } else {
                n += 1;
                255 + n
            };
            let c = char::from_u32(cp).expect("code points below 0x200 are chars");
            to_char[b as usize] = c;
            to_byte[cp as usize] = b as i16;
        }
        (to_char, to_byte)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_a_bijection_with_gpt2_spellings() {
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'\t'), 'ĉ');
        assert_eq!(byte_to_char(b'A'), 'A');
        assert_eq!(byte_to_char(0x00), '\u{100}');
        assert_eq!(byte_to_char(0xAD), 'Ń');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(char_to_byte('€'), None);
    }
}
