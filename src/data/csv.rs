//! CSV with pandas' semantics, as LM-BFF reads (`pd.read_csv(path, header=None)`) and writes
//! (`to_csv(header=False, index=False)`) the non-GLUE tasks.
//!
//! Hand-written rather than the `csv` crate because byte-identical splits depend on pandas'
//! particular choices, which a general CSV library makes differently: blank and whitespace-only
//! lines are skipped, `\r`, `\n` and `\r\n` all end a record, a quote only opens a quoted field at
//! the start of a field, the default NA strings (also when quoted) become missing cells that are
//! written back empty, and the writer quotes a field for `,`, `"` or `\n` but not for a bare `\r`.

use crate::error::InputError;
use std::path::Path;

/// One parsed record: the cells in order, `None` for missing (NA) cells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvRecord {
    /// 1-based line of the file where the record starts.
    pub line: usize,
    pub cells: Vec<Option<String>>,
}

/// pandas' default `na_values` (pandas 2.x).
const NA_STRINGS: &[&str] = &[
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A",
    "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
];

fn is_na(cell: &str) -> bool {
    NA_STRINGS.contains(&cell)
}

/// Parses `text` (the contents of `path`, named in errors) into records.
pub fn parse(path: &Path, text: &str) -> Result<Vec<CsvRecord>, InputError> {
    let mut records = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    while chars.peek().is_some() {
        // Skip blank and whitespace-only lines.
        let rest: String = chars.clone().take_while(|&c| c != '\n' && c != '\r').collect();
        if rest.chars().all(|c| c == ' ' || c == '\t') {
            for _ in 0..rest.chars().count() {
                chars.next();
            }
            if chars.next() == Some('\r') && chars.peek() == Some(&'\n') {
                chars.next();
            }
            line += 1;
            continue;
        }
        let start_line = line;
        let mut cells = Vec::new();
        let mut cell = String::new();
        let mut quoted_cell = false;
        loop {
            let c = chars.next();
            match c {
                None => {
                    cells.push(finish(cell, quoted_cell));
                    break;
                }
                Some('"') if cell.is_empty() && !quoted_cell => {
                    quoted_cell = true;
                    loop {
                        match chars.next() {
                            None => {
                                return Err(InputError(format!(
                                    "{}: line {start_line}: quoted field never closed (EOF inside string)",
                                    path.display()
                                )))
                            }
                            Some('"') if chars.peek() == Some(&'"') => {
                                chars.next();
                                cell.push('"');
                            }
                            Some('"') => break,
                            Some(c) => {
                                if c == '\n' || (c == '\r' && chars.peek() != Some(&'\n')) {
                                    line += 1;
                                }
                                cell.push(c);
                            }
                        }
                    }
                }
                Some(',') => {
                    cells.push(finish(std::mem::take(&mut cell), quoted_cell));
                    quoted_cell = false;
                }
                Some('\n') => {
                    line += 1;
                    cells.push(finish(cell, quoted_cell));
                    break;
                }
                Some('\r') => {
                    if chars.peek() == Some(&'\n') {
                        chars.next();
                    }
                    line += 1;
                    cells.push(finish(cell, quoted_cell));
                    break;
                }
                Some(c) => cell.push(c),
            }
        }
        records.push(CsvRecord { line: start_line, cells });
    }
    Ok(records)
}

fn finish(cell: String, _quoted: bool) -> Option<String> {
    // pandas applies na_values to quoted cells too.
    (!is_na(&cell)).then_some(cell)
}

/// Appends one record as pandas writes it, with `\n` line terminator.
pub fn write_record(out: &mut String, cells: &[Option<&str>]) {
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let cell = cell.unwrap_or("");
        if cell.contains([',', '"', '\n']) {
            out.push('"');
            out.push_str(&cell.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(cell);
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(text: &str) -> Vec<Vec<Option<String>>> {
        parse(Path::new("t.csv"), text).unwrap().into_iter().map(|r| r.cells).collect()
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn quotes_commas_and_na() {
        let text = "0,\"mr text 03, with comma\"\n1,\"quoted test 0\"\n\n  \n2,NA\r\n3,\"say \"\"hi\"\"\"\r4,\"two\nlines\"\n5,\n6, spaced \n";
        let rows = cells(text);
        assert_eq!(rows[0], [s("0"), s("mr text 03, with comma")]);
        assert_eq!(rows[1], [s("1"), s("quoted test 0")]);
        assert_eq!(rows[2], [s("2"), None]);
        assert_eq!(rows[3], [s("3"), s("say \"hi\"")]);
        assert_eq!(rows[4], [s("4"), s("two\nlines")]);
        assert_eq!(rows[5], [s("5"), None]);
        assert_eq!(rows[6], [s("6"), s(" spaced ")]);
        let lines: Vec<usize> = parse(Path::new("t"), text).unwrap().iter().map(|r| r.line).collect();
        assert_eq!(lines, [1, 2, 5, 6, 7, 9, 10]);
    }

    #[test]
    fn round_trip_as_pandas_writes() {
        let text = "0,\"mr text 03, with comma\"\n0,\"quoted test 0\"\n1,NA\n2,\"a \"\"b\"\"\"\n3,\"x\ny\"\n4,cr\rhere\n";
        let mut out = String::new();
        for r in parse(Path::new("t"), text).unwrap() {
            let cells: Vec<Option<&str>> = r.cells.iter().map(|c| c.as_deref()).collect();
            write_record(&mut out, &cells);
        }
        // The bare \r ends a record on reading, so "here" is its own record.
        assert_eq!(
            out,
            "0,\"mr text 03, with comma\"\n0,quoted test 0\n1,\n2,\"a \"\"b\"\"\"\n3,\"x\ny\"\n4,cr\nhere\n"
        );
        let mut bare_cr = String::new();
        write_record(&mut bare_cr, &[Some("1"), Some("a\rb")]);
        assert_eq!(bare_cr, "1,a\rb\n");
    }

    #[test]
    fn unclosed_quote_names_file_and_line() {
        let e = parse(Path::new("data/mr/train.csv"), "0,ok\n1,\"never closed\n2,x\n").unwrap_err();
        assert_eq!(e.to_string(), "data/mr/train.csv: line 2: quoted field never closed (EOF inside string)");
    }
}
