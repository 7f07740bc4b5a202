//! A Hugging Face dataset split as users get it: JSON lines as `datasets`' `to_json` writes them, or
//! the Hub's Parquet files (one or several shards). Which splits and fields each task reads:
//! docs/reference.md §9.1.
//!
//! For split `S` of directory `D` the files are, in this order of preference (shards in name order):
//! `D/S.jsonl` or `D/S.json`; `D/S.parquet`, `D/S-*.parquet`, `D/data/S-*.parquet` (the Hub's own
//! layout) or `D/S/*.parquet` (the Hub's converted layout). A split found both as JSON lines and
//! as Parquet is refused rather than guessed at.

use crate::error::InputError;
use serde_json::{Map, Value};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// One row of a split and where it came from.
pub struct Row {
    pub value: Map<String, Value>,
    /// `FILE line N` (JSON lines) or `FILE row N` (Parquet), 1-based.
    pub origin: String,
}

impl Row {
    /// An input error about this row.
    pub fn error(&self, what: &str) -> InputError {
        InputError(format!("{}: {what}", self.origin))
    }

    pub fn get(&self, name: &str) -> Result<&Value, InputError> {
        self.value.get(name).ok_or_else(|| self.error(&format!("no field {name}")))
    }

    pub fn string(&self, name: &str) -> Result<String, InputError> {
        let value = self.get(name)?;
        value
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| self.error(&format!("field {name} is {value}, not a string")))
    }

    /// A list of strings.
    pub fn strings(&self, name: &str) -> Result<Vec<String>, InputError> {
        string_list(self.get(name)?)
            .ok_or_else(|| self.error(&format!("field {name} is not a list of strings")))
    }

    /// The list of strings `name.inner` (e.g. SQuAD's `answers.text`).
    pub fn nested_strings(&self, name: &str, inner: &str) -> Result<Vec<String>, InputError> {
        let outer = self.get(name)?;
        outer
            .get(inner)
            .and_then(string_list)
            .ok_or_else(|| self.error(&format!("field {name}.{inner} is missing or not a list of strings")))
    }
}

fn string_list(value: &Value) -> Option<Vec<String>> {
    value.as_array()?.iter().map(|v| v.as_str().map(str::to_string)).collect()
}

/// The files holding `split` in `dir`; empty when there are none.
pub fn split_files(dir: &Path, split: &str) -> Result<Vec<PathBuf>, InputError> {
    let json: Vec<PathBuf> = ["jsonl", "json"]
        .iter()
        .map(|ext| dir.join(format!("{split}.{ext}")))
        .filter(|p| p.is_file())
        .collect();
    let mut parquet = Vec::new();
    let single = dir.join(format!("{split}.parquet"));
    if single.is_file() {
        parquet.push(single);
    }
    parquet.extend(matching(dir, &format!("{split}-"), ".parquet"));
    parquet.extend(matching(&dir.join("data"), &format!("{split}-"), ".parquet"));
    parquet.extend(matching(&dir.join(split), "", ".parquet"));
    match (json.len(), parquet.is_empty()) {
        (0, _) => Ok(parquet),
        (1, true) => Ok(json),
        _ => Err(InputError(format!(
            "{}: split {split} is in several forms ({}); keep one",
            dir.display(),
            json.iter().chain(&parquet).map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Files of `dir` named `<prefix>*<suffix>`, in name order.
fn matching(dir: &Path, prefix: &str, suffix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
        .collect();
    found.sort();
    found
}

/// Every row of `split` in `dir`, in file order.
pub fn read_split(dir: &Path, split: &str) -> Result<Vec<Row>, InputError> {
    let files = split_files(dir, split)?;
    if files.is_empty() {
        return Err(InputError(format!(
            "{}: no {split} split: expected {split}.jsonl (datasets' to_json) or {split}-*.parquet (the Hub's files)",
            dir.display()
        )));
    }
    let mut rows = Vec::new();
    for file in &files {
        if file.extension().is_some_and(|e| e == "parquet") {
            read_parquet(file, &mut rows)?;
        } else {
            read_json_lines(file, &mut rows)?;
        }
    }
    Ok(rows)
}

fn read_json_lines(path: &Path, rows: &mut Vec<Row>) -> Result<(), InputError> {
    let file = File::open(path).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let origin = format!("{} line {}", path.display(), i + 1);
        let line = line.map_err(|e| InputError(format!("{origin}: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(value)) => rows.push(Row { value, origin }),
            Ok(other) => {
                return Err(InputError(format!("{origin}: a {} where a JSON object belongs", kind(&other))))
            }
            Err(e) => return Err(InputError(format!("{origin}: not JSON: {e}"))),
        }
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

fn read_parquet(path: &Path, rows: &mut Vec<Row>) -> Result<(), InputError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let bad = |e: &dyn std::fmt::Display| {
        InputError(format!("{}: not a readable Parquet file: {e}", path.display()))
    };
    let file = File::open(path).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    let reader = SerializedFileReader::new(file).map_err(|e| bad(&e))?;
    for (i, row) in reader.get_row_iter(None).map_err(|e| bad(&e))?.enumerate() {
        let origin = format!("{} row {}", path.display(), i + 1);
        let row = row.map_err(|e| InputError(format!("{origin}: {e}")))?;
        match row.to_json_value() {
            Value::Object(value) => rows.push(Row { value, origin }),
            other => return Err(InputError(format!("{origin}: a {} where a record belongs", kind(&other)))),
        }
    }
    Ok(())
}
