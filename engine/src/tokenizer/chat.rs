//! The Llama-3 chat template.

/// The Llama-3 chat format: `<|begin_of_text|>`, then per message
/// `<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>`, then, with
/// `add_generation_prompt`, an open assistant header. Content is trimmed of ASCII
/// whitespace at both ends, as llama.cpp's `llama_chat_apply_template_internal` ("llama3")
/// and Meta's Jinja template (`| trim`) do. The BOS is part of the text: tokenize it with
/// `add_special = false` and `parse_special = true` (`Tokenizer::encode_chat`).
pub fn llama3_chat(messages: &[(&str, &str)], add_generation_prompt: bool) -> String {
    let mut s = String::from("<|begin_of_text|>");
    for (role, content) in messages {
        s.push_str("<|start_header_id|>");
        s.push_str(role);
        s.push_str("<|end_header_id|>\n\n");
        s.push_str(content.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b'));
        s.push_str("<|eot_id|>");
    }
    if add_generation_prompt {
        s.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_one_turn_with_generation_prompt() {
        assert_eq!(
            llama3_chat(&[("user", " Hi there\n")], true),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(llama3_chat(&[], false), "<|begin_of_text|>");
    }
}
