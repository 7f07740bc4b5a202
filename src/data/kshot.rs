//! The k-shot split generator, byte-identical to LM-BFF's `tools/generate_k_shot_data.py`
//! (and its `k-shot-1k-test` mode from LM-Kernel-FT/MeZO); data spec §2.
//!
//! For each seed (outer loop, in the given order) and task (inner loop): shuffle the train pool
//! with MT19937 seeded by the seed, write the test files (capped to a seed-42 random 1000 in
//! `k-shot-1k-test` mode), then take, per label in order of first appearance in the shuffled pool,
//! the first k examples for train and the next k (10k in `k-shot-10x`) for dev.
//!
//! Reproduced quirks: CoLA's pool and eval lists are the loaded lists themselves, so their
//! shuffles accumulate over seeds; GLUE-style lines are copied byte for byte (a last line without
//! a newline runs into the next one); CSV files are re-serialised the pandas way.
//!
//! Every `K-SEED` directory is written under a temporary name and renamed when complete.

use super::csv::{self, CsvRecord};
use super::mt19937::RandomState;
use super::tasks::{self, Column, Layout};
use super::tsv;
use crate::error::InputError;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// Which files to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// LM-BFF: dev = next k per label; test = the original eval file (lines as read).
    KShot,
    /// dev = next 10k per label.
    KShot10x,
    /// LM-Kernel-FT / MeZO: test files with more than 1000 items cut to a seed-42 random 1000.
    KShot1kTest,
}

impl Mode {
    pub fn dir_name(self) -> &'static str {
        match self {
            Mode::KShot => "k-shot",
            Mode::KShot10x => "k-shot-10x",
            Mode::KShot1kTest => "k-shot-1k-test",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "k-shot" => Ok(Mode::KShot),
            "k-shot-10x" => Ok(Mode::KShot10x),
            "k-shot-1k-test" => Ok(Mode::KShot1kTest),
            _ => Err(format!("unknown mode '{s}': expected k-shot, k-shot-10x or k-shot-1k-test")),
        }
    }
}

/// The reference tool's default tasks and seeds, in its order.
pub const DEFAULT_TASKS: &[&str] = &[
    "SST-2", "sst-5", "mr", "cr", "mpqa", "subj", "trec", "CoLA", "MRPC", "QQP", "STS-B", "MNLI", "SNLI",
    "QNLI", "RTE",
];
pub const DEFAULT_SEEDS: &[u32] = &[100, 13, 21, 42, 87];

/// GLUE-style tasks by the generator's (case-sensitive) rule; every other name is a CSV task.
const GLUE_TASKS: &[&str] = &["MNLI", "MRPC", "QNLI", "QQP", "RTE", "SNLI", "SST-2", "STS-B", "WNLI", "CoLA"];

#[derive(Debug, Clone)]
pub struct KshotConfig {
    /// The `original/` directory with one directory per task.
    pub data_dir: PathBuf,
    /// Output root; files go to `OUT/MODE/TASK/K-SEED/`.
    pub out_dir: PathBuf,
    pub mode: Mode,
    pub k: usize,
    /// Task directory names, as the reference takes them (`SST-2`, `sst-5`, `CoLA`).
    pub tasks: Vec<String>,
    pub seeds: Vec<u32>,
}

/// A GLUE-style file split into header and data lines (each with its original line number).
struct GlueFile {
    path: PathBuf,
    header: Option<String>,
    lines: Vec<(usize, String)>,
}

enum Loaded {
    Glue { train: GlueFile, evals: Vec<(String, GlueFile)>, label: Column, sts_b: bool },
    Csv { train: Vec<CsvRecord>, test: Vec<CsvRecord>, train_path: PathBuf },
}

/// Runs the generator; returns the completed `K-SEED` directories. `on_split` is called after
/// each one (for progress display).
pub fn generate(config: &KshotConfig, on_split: &dyn Fn(&Path)) -> Result<Vec<PathBuf>> {
    let mut tasks: Vec<&str> = Vec::new();
    for t in &config.tasks {
        if !tasks.contains(&t.as_str()) {
            tasks.push(t);
        }
    }
    // Everything is loaded before anything is written, so bad input leaves no output.
    let mut loaded: Vec<(&str, Loaded)> =
        tasks.iter().map(|&t| Ok((t, load(&config.data_dir, t)?))).collect::<Result<_>>()?;
    let mut done = Vec::new();
    for &seed in &config.seeds {
        for (task, data) in &mut loaded {
            let dir = write_split(config, task, data, seed)?;
            on_split(&dir);
            done.push(dir);
        }
    }
    Ok(done)
}

fn read(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    let text =
        String::from_utf8(bytes).map_err(|e| InputError(format!("{}: not UTF-8: {e}", path.display())))?;
    if text.trim().is_empty() {
        return Err(InputError(format!("{}: file is empty", path.display())).into());
    }
    Ok(text)
}

fn load(data_dir: &Path, task: &str) -> Result<Loaded> {
    let dir = data_dir.join(task);
    if GLUE_TASKS.contains(&task) {
        let has_header = task != "CoLA";
        let glue = |name: &str| -> Result<GlueFile> {
            let path = dir.join(name);
            let text = read(&path)?;
            let mut lines: Vec<(usize, String)> =
                tsv::lines(&text).into_iter().enumerate().map(|(i, l)| (i + 1, l)).collect();
            let header = if has_header { Some(lines.remove(0).1) } else { None };
            Ok(GlueFile { path, header, lines })
        };
        let train = glue("train.tsv")?;
        let eval_names: &[&str] = if task == "MNLI" { &["dev_matched", "dev_mismatched"] } else { &["dev"] };
        let evals = eval_names
            .iter()
            .map(|n| Ok((n.replace("dev", "test"), glue(&format!("{n}.tsv"))?)))
            .collect::<Result<_>>()?;
        let label = match task {
            "CoLA" => Column::Index(1),
            "MRPC" => Column::Index(0),
            _ => Column::Last,
        };
        let loaded = Loaded::Glue { train, evals, label, sts_b: task == "STS-B" };
        validate_glue_labels(task, &loaded)?;
        Ok(loaded)
    } else {
        let columns = match tasks::task_by_dir(task).map(|t| t.layout) {
            Some(Layout::Csv { columns, .. }) => Some(columns),
            _ => None,
        };
        let csv_file = |name: &str| -> Result<(PathBuf, Vec<CsvRecord>)> {
            let path = dir.join(name);
            let records = csv::parse(&path, &read(&path)?)?;
            let width = columns.unwrap_or(records[0].cells.len());
            for r in &records {
                if r.cells.len() != width {
                    return Err(InputError(format!(
                        "{}: line {}: expected {width} columns, found {}",
                        path.display(),
                        r.line,
                        r.cells.len()
                    ))
                    .into());
                }
                csv_label(&path, r, task)?;
            }
            Ok((path, records))
        };
        let (train_path, train) = csv_file("train.csv")?;
        let (_, test) = csv_file("test.csv")?;
        Ok(Loaded::Csv { train, test, train_path })
    }
}

/// The integer label of a CSV record, checked against the task's labels when it is registered.
fn csv_label(path: &Path, record: &CsvRecord, task: &str) -> Result<i64, InputError> {
    let cell = record.cells[0].as_deref().unwrap_or("");
    let label: i64 = cell.trim().parse().map_err(|_| {
        InputError(format!("{}: line {}: label '{cell}' is not an integer", path.display(), record.line))
    })?;
    if let Some(t) = tasks::task_by_dir(task) {
        if !t.labels.contains(&label.to_string().as_str()) {
            return Err(InputError(format!(
                "{}: line {}: unknown label {label} for {task} (labels: {})",
                path.display(),
                record.line,
                t.labels.join(", ")
            )));
        }
    }
    Ok(label)
}

/// The label used for balanced sampling: the label field of the stripped line (spec §2.3).
fn glue_label(
    path: &Path,
    line_no: usize,
    line: &str,
    label: Column,
    sts_b: bool,
) -> Result<String, InputError> {
    let fields: Vec<&str> = line.trim().split('\t').collect();
    let at = |what: &str| format!("{}: line {line_no}: {what}", path.display());
    let value =
        label.get(&fields).filter(|_| fields.len() > 1).ok_or_else(|| InputError(at("no label column")))?;
    if sts_b {
        let score: f64 =
            value.parse().map_err(|_| InputError(at(&format!("score '{value}' is not a number"))))?;
        return Ok(if score < 2.5 { "0" } else { "1" }.to_string());
    }
    Ok(value.to_string())
}

fn validate_glue_labels(task: &str, loaded: &Loaded) -> Result<()> {
    let Loaded::Glue { train, evals, label, sts_b } = loaded else { return Ok(()) };
    let known = tasks::task_by_dir(task).filter(|_| !sts_b).map(|t| t.labels);
    for file in std::iter::once(train).chain(evals.iter().map(|(_, f)| f)) {
        for (line_no, line) in &file.lines {
            let value = glue_label(&file.path, *line_no, line, *label, *sts_b)?;
            if let Some(labels) = known {
                if !labels.contains(&value.as_str()) {
                    return Err(InputError(format!(
                        "{}: line {line_no}: unknown label '{value}' for {task} (labels: {})",
                        file.path.display(),
                        labels.join(", ")
                    ))
                    .into());
                }
            }
        }
    }
    Ok(())
}

/// Items of the shuffled pool grouped by label, groups in order of first appearance.
fn group_by_label<T>(items: Vec<(String, T)>) -> Vec<(String, Vec<T>)> {
    let mut groups: Vec<(String, Vec<T>)> = Vec::new();
    for (label, item) in items {
        match groups.iter_mut().find(|(l, _)| *l == label) {
            Some((_, g)) => g.push(item),
            None => groups.push((label, vec![item])),
        }
    }
    groups
}

fn write_split(config: &KshotConfig, task: &str, data: &mut Loaded, seed: u32) -> Result<PathBuf> {
    let k = config.k;
    let dev_ratio = if config.mode == Mode::KShot10x { 11 } else { 2 };
    let final_dir = config.out_dir.join(config.mode.dir_name()).join(task).join(format!("{k}-{seed}"));
    let partial = final_dir.with_file_name(format!(".{k}-{seed}.partial"));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))?;
    }
    std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let write = |name: &str, content: &[u8]| -> Result<()> {
        let path = partial.join(name);
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))
    };
    let mut rng = RandomState::new(seed);
    let cap_1k = config.mode == Mode::KShot1kTest;
    let warn_short = |label: &str, have: usize| {
        if have < k {
            log::warn!("{task} seed {seed}: label {label} has {have} training examples, fewer than k = {k}");
        }
    };
    match data {
        Loaded::Glue { train, evals, label, sts_b } => {
            let train_path = train.path.clone();
            let header = train.header.clone();
            // CoLA's pool is the loaded list itself (accumulating shuffles); the others copy it.
            let mut copy;
            let pool = if task == "CoLA" {
                &mut train.lines
            } else {
                copy = train.lines.clone();
                &mut copy
            };
            rng.shuffle(pool);
            for (test_name, file) in evals.iter_mut() {
                let name = format!("{test_name}.tsv");
                let mut copy;
                let lines = if task == "CoLA" {
                    &mut file.lines
                } else {
                    copy = file.lines.clone();
                    &mut copy
                };
                let cap = if cap_1k && lines.len() > 1000 {
                    RandomState::new(42).shuffle(lines);
                    1000
                } else {
                    lines.len()
                };
                let kept = &lines[..cap];
                write(
                    &name,
                    glue_text(file.header.as_deref(), kept.iter().map(|(_, l)| l.as_str())).as_bytes(),
                )?;
            }
            let labelled = pool
                .iter()
                .map(|(n, l)| Ok((glue_label(&train_path, *n, l, *label, *sts_b)?, l.as_str())))
                .collect::<Result<Vec<_>, InputError>>()?;
            let groups = group_by_label(labelled);
            let header = header.as_deref();
            let slice = |from: usize, to: usize| {
                groups.iter().flat_map(move |(_, g)| g[from.min(g.len())..to.min(g.len())].iter().copied())
            };
            for (l, g) in &groups {
                warn_short(l, g.len());
            }
            write("train.tsv", glue_text(header, slice(0, k)).as_bytes())?;
            let dev_name = if task == "MNLI" { "dev_matched.tsv" } else { "dev.tsv" };
            write(dev_name, glue_text(header, slice(k, dev_ratio * k)).as_bytes())?;
        }
        Loaded::Csv { train, test, train_path } => {
            let mut pool: Vec<&CsvRecord> = train.iter().collect();
            rng.shuffle(&mut pool);
            let kept: Vec<&CsvRecord> = if cap_1k && test.len() > 1000 {
                RandomState::new(42).permutation(test.len())[..1000].iter().map(|&i| &test[i]).collect()
            } else {
                test.iter().collect()
            };
            write("test.csv", csv_text(kept.iter().copied()).as_bytes())?;
            let labelled = pool
                .into_iter()
                .map(|r| Ok((csv_label(train_path, r, task)?.to_string(), r)))
                .collect::<Result<Vec<_>, InputError>>()?;
            let groups = group_by_label(labelled);
            for (l, g) in &groups {
                warn_short(l, g.len());
            }
            let slice = |from: usize, to: usize| {
                groups.iter().flat_map(move |(_, g)| g[from.min(g.len())..to.min(g.len())].iter().copied())
            };
            write("train.csv", csv_text(slice(0, k)).as_bytes())?;
            write("dev.csv", csv_text(slice(k, dev_ratio * k)).as_bytes())?;
        }
    }
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).with_context(|| format!("replacing {}", final_dir.display()))?;
    }
    std::fs::rename(&partial, &final_dir)
        .with_context(|| format!("renaming {} to {}", partial.display(), final_dir.display()))?;
    log::debug!("wrote {}", final_dir.display());
    Ok(final_dir)
}

fn glue_text<'a>(header: Option<&str>, lines: impl Iterator<Item = &'a str>) -> String {
    let mut out = header.unwrap_or("").to_string();
    lines.for_each(|l| out.push_str(l));
    out
}

/// Records as pandas writes them back: the label column as a plain integer (it was parsed as
/// int64), the text cells as read.
fn csv_text<'a>(records: impl Iterator<Item = &'a CsvRecord>) -> String {
    let mut out = String::new();
    for r in records {
        // Labels were validated as integers when loading.
        let label = r.cells[0].as_deref().and_then(|c| c.trim().parse::<i64>().ok()).map(|l| l.to_string());
        let mut cells: Vec<Option<&str>> = r.cells.iter().map(|c| c.as_deref()).collect();
        cells[0] = label.as_deref();
        csv::write_record(&mut out, &cells);
    }
    out
}
