//! Reading a k-shot split directory into examples, as LM-BFF's processors do: GLUE-style files
//! as tab-separated fields with no quoting (header row skipped by index), the other tasks through
//! the pandas-semantics CSV reader (missing text reads as "").

use super::csv;
use super::tasks::{Layout, Task};
use super::tsv;
use crate::error::InputError;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Dev,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::Test => "test",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Label {
    /// Index into the task's label list.
    Class(usize),
    /// STS-B similarity score.
    Score(f64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub text_a: String,
    pub text_b: Option<String>,
    pub label: Label,
}

impl Example {
    /// The example's sentences: text_a, then text_b if the task has one.
    pub fn sentences(&self) -> Vec<&str> {
        std::iter::once(self.text_a.as_str()).chain(self.text_b.as_deref()).collect()
    }
}

/// The file of `split` in a k-shot directory (`dev_matched.tsv` for MNLI's dev, and so on).
pub fn split_path(task: &Task, dir: &Path, split: Split) -> PathBuf {
    let stem = match split {
        Split::Train => "train",
        Split::Dev => task.dev_split,
        Split::Test => task.test_split,
    };
    dir.join(format!("{stem}.{}", task.extension()))
}

/// Reads one split of `task` from the k-shot directory `dir`.
pub fn load_split(task: &Task, dir: &Path, split: Split) -> Result<Vec<Example>, InputError> {
    let path = split_path(task, dir, split);
    let bytes = std::fs::read(&path).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    let text =
        String::from_utf8(bytes).map_err(|e| InputError(format!("{}: not UTF-8: {e}", path.display())))?;
    let examples = match task.layout {
        Layout::Glue { header, text_a, text_b, label } => {
            let mut out = Vec::new();
            for (i, line) in tsv::lines(tsv::strip_bom(&text)).iter().enumerate().skip(usize::from(header)) {
                let at = |what: String| InputError(format!("{}: line {}: {what}", path.display(), i + 1));
                let fields = tsv::fields(line);
                let get = |col: usize| fields.get(col).map(|s| s.to_string());
                let (Some(a), Some(label_text)) =
                    (get(text_a), label.get(&fields).filter(|_| fields.len() > 1))
                else {
                    // The QQP processor silently drops rows with too few fields.
                    if task.name == "qqp" {
                        continue;
                    }
                    return Err(at(format!(
                        "expected at least {} tab-separated fields, found {}",
                        text_a + 1,
                        fields.len()
                    )));
                };
                let b = match text_b {
                    Some(col) => Some(get(col).ok_or_else(|| at(format!("no text in field {col}")))?),
                    None => None,
                };
                out.push(Example { text_a: a, text_b: b, label: parse_label(task, label_text).map_err(at)? });
            }
            out
        }
        Layout::Csv { text_a, columns } => {
            let records = csv::parse(&path, &text)?;
            let mut out = Vec::new();
            for r in &records {
                let at = |what: String| InputError(format!("{}: line {}: {what}", path.display(), r.line));
                if r.cells.len() != columns {
                    return Err(at(format!("expected {columns} columns, found {}", r.cells.len())));
                }
                let label_text = r.cells[0].as_deref().unwrap_or("").trim();
                let label = parse_label(task, label_text).map_err(at)?;
                out.push(Example {
                    text_a: r.cells[text_a].clone().unwrap_or_default(),
                    text_b: None,
                    label,
                });
            }
            out
        }
    };
    if examples.is_empty() {
        return Err(InputError(format!("{}: no examples", path.display())));
    }
    Ok(examples)
}

fn parse_label(task: &Task, text: &str) -> Result<Label, String> {
    if task.regression {
        return text.parse().map(Label::Score).map_err(|_| format!("score '{text}' is not a number"));
    }
    // CSV labels are integers: "01" and "1" are the same class.
    let canonical = match task.layout {
        Layout::Csv { .. } => text.parse::<i64>().map(|v| v.to_string()).unwrap_or_else(|_| text.to_string()),
        Layout::Glue { .. } => text.to_string(),
    };
    task.labels.iter().position(|l| *l == canonical).map(Label::Class).ok_or_else(|| {
        format!("unknown label '{text}' for {} (labels: {})", task.name, task.labels.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tasks::task;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn glue_csv_and_regression_splits() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "train.tsv", "\u{feff}sentence\tlabel\nit 's good . \t1\n\"quoted, kept\"\t0\n");
        let sst = load_split(task("sst-2").unwrap(), d, Split::Train).unwrap();
        assert_eq!(sst[0], Example { text_a: "it 's good . ".into(), text_b: None, label: Label::Class(1) });
        assert_eq!(sst[1].text_a, "\"quoted, kept\"");

        let mnli = "h0\th1\th2\th3\th4\th5\th6\th7\ts1\ts2\tgold\n0\t1\t2\t3\t4\t5\t6\t7\tThe cat.\tA cat.\tneutral\n";
        write(d, "test_mismatched.tsv", mnli);
        let mm = load_split(task("mnli-mm").unwrap(), d, Split::Test).unwrap();
        assert_eq!(mm[0].sentences(), ["The cat.", "A cat."]);
        assert_eq!(mm[0].label, Label::Class(2));

        write(d, "dev.tsv", "h\th\th\th\th\th\th\th\th\n0\t0\t0\t0\t0\t0\tA\tB\t3.2\n");
        assert_eq!(load_split(task("sts-b").unwrap(), d, Split::Dev).unwrap()[0].label, Label::Score(3.2));

        write(d, "train.csv", "4,\"a, b\"\n1,NA\n");
        let sst5 = load_split(task("sst-5").unwrap(), d, Split::Train).unwrap();
        assert_eq!(sst5[0], Example { text_a: "a, b".into(), text_b: None, label: Label::Class(4) });
        assert_eq!(sst5[1].text_a, "");

        write(d, "test.csv", "3,\"Title\",\"desc\"\n");
        let ag = load_split(task("ag_news").unwrap(), d, Split::Test).unwrap();
        assert_eq!((ag[0].text_a.as_str(), ag[0].label), ("desc", Label::Class(2)));
    }

    #[test]
    fn bad_rows_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "train.tsv", "sentence\tlabel\ngood\t1\nbad\t7\n");
        let e = load_split(task("sst-2").unwrap(), d, Split::Train).unwrap_err().to_string();
        assert!(e.ends_with("train.tsv: line 3: unknown label '7' for sst-2 (labels: 0, 1)"), "{e}");
        write(d, "train.tsv", "sentence\tlabel\nno tab\n");
        let e = load_split(task("sst-2").unwrap(), d, Split::Train).unwrap_err().to_string();
        assert!(e.contains("line 2: expected at least 1 tab-separated fields, found 1"), "{e}");
        write(d, "train.tsv", "h\th\th\th\th\th\nshort\trow\n1\t2\t3\tq1\tq2\t1\n");
        assert_eq!(load_split(task("qqp").unwrap(), d, Split::Train).unwrap().len(), 1);
        let e = load_split(task("mr").unwrap(), d, Split::Dev).unwrap_err().to_string();
        assert!(e.contains("dev.csv") && e.contains("No such file"), "{e}");
        write(d, "dev.csv", "0,a,b\n");
        let e = load_split(task("mr").unwrap(), d, Split::Dev).unwrap_err().to_string();
        assert!(e.contains("dev.csv: line 1: expected 2 columns, found 3"), "{e}");
    }
}
