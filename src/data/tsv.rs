//! The two ways LM-BFF reads GLUE-style `.tsv` files.
//!
//! The split generator treats a file as text lines with Python's universal newlines (`\r\n`,
//! `\r` and `\n` all end a line and become `\n`; each line keeps its ending) and writes the lines
//! back byte for byte. The processors split records on newlines and fields on tabs, with no
//! quoting at all.

/// Lines with Python universal-newline semantics; each keeps its `\n` (the last one may have none).
pub fn lines(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' | b'\r' => {
                let mut line = String::with_capacity(i - start + 1);
                line.push_str(&text[start..i]);
                line.push('\n');
                out.push(line);
                i += if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < bytes.len() {
        out.push(text[start..].to_string());
    }
    out
}

/// Tab-separated fields of one line, without its line ending (processor semantics).
pub fn fields(line: &str) -> Vec<&str> {
    line.trim_end_matches(['\n', '\r']).split('\t').collect()
}

/// Drops a leading UTF-8 byte-order mark, as the processors' `utf-8-sig` reading does.
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn universal_newlines_keep_endings() {
        assert_eq!(lines("a\tb\r\nc\rd\ne"), ["a\tb\n", "c\n", "d\n", "e"]);
        assert_eq!(lines("x\n\n"), ["x\n", "\n"]);
        assert!(lines("").is_empty());
    }

    #[test]
    fn fields_keep_quotes_and_spaces() {
        assert_eq!(fields("it 's good . \t1\n"), ["it 's good . ", "1"]);
        assert_eq!(fields("\"a, b\"\tx"), ["\"a, b\"", "x"]);
        assert_eq!(strip_bom("\u{feff}sentence\tlabel"), "sentence\tlabel");
    }
}
