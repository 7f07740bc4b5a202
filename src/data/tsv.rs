//! The two ways LM-BFF reads GLUE-style `.tsv` files.
//!
//! The split generator treats a file as text lines with Python's universal newlines (`\r\n`,
//! `\r` and `\n` all end a line and become `\n`; each line keeps its ending) and writes the lines
//! back byte for byte. The processors split records on newlines and fields on tabs, with no
//! quoting at all.

/// Lines with Python universal-newline semantics; each keeps its `\n` (the last one may have none).
pub fn lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                current.push('\n');
                out.push(std::mem::take(&mut current));
            }
            '\n' => {
                current.push('\n');
                out.push(std::mem::take(&mut current));
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
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
