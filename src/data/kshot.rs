//! The k-shot split generator, byte-identical to LM-BFF's `tools/generate_k_shot_data.py`
//! (and its `k-shot-1k-test` mode from LM-Kernel-FT/MeZO); docs/reference.md §2.
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
use std::io::Write;
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

/// One raw file, read once. Splits work on permutations of row indices, which draw the same
/// random numbers as shuffling the rows themselves and need no copies of the text.
struct RawFile {
    /// GLUE-style header line (kept with its newline).
    header: Option<String>,
    /// Data rows as written back: GLUE lines as read, or CSV records re-serialised.
    rows: Vec<String>,
    /// Balanced-sampling label of each row, as an index into `label_names`.
    labels: Vec<usize>,
    /// The row order that persists across seeds: only CoLA's lists are shuffled in place.
    order: Vec<usize>,
}

struct Loaded {
    train: RawFile,
    /// (output file stem, file): `test`, or `test_matched` and `test_mismatched`.
    evals: Vec<(String, RawFile)>,
    /// Label values in no particular order (groups are ordered per split).
    label_names: Vec<String>,
    glue: bool,
    /// CoLA: pool and eval lists are the loaded lists themselves (accumulating shuffles).
    aliased: bool,
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
            let dir = write_split(config, task, data, seed).inspect_err(|_| {
                // A failed write (a full disk) leaves no `.partial` directory behind.
                let _ = std::fs::remove_dir_all(partial_split_dir(config, task, seed));
            })?;
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

/// Interns label values; the index of a value is its first-seen order across files.
#[derive(Default)]
struct LabelNames(Vec<String>);

impl LabelNames {
    fn id(&mut self, value: String) -> usize {
        match self.0.iter().position(|v| *v == value) {
            Some(i) => i,
            None => {
                self.0.push(value);
                self.0.len() - 1
            }
        }
    }
}

fn load(data_dir: &Path, task: &str) -> Result<Loaded> {
    let dir = data_dir.join(task);
    let registered = tasks::task_by_dir(task);
    let mut names = LabelNames::default();
    if GLUE_TASKS.contains(&task) {
        let label = match task {
            "CoLA" => Column::Index(1),
            "MRPC" => Column::Index(0),
            _ => Column::Last,
        };
        let sts_b = task == "STS-B";
        let known = registered.filter(|_| !sts_b).map(|t| t.labels);
        let mut glue = |name: &str| -> Result<RawFile> {
            let path = dir.join(name);
            let text = read(&path)?;
            let mut rows = tsv::lines(&text);
            let header = if task == "CoLA" { None } else { Some(rows.remove(0)) };
            let first_line = if header.is_some() { 2 } else { 1 };
            let labels = rows
                .iter()
                .enumerate()
                .map(|(i, row)| {
                    let value = glue_label(&path, first_line + i, row, label, sts_b)?;
                    if let Some(labels) = known.filter(|l| !l.contains(&value.as_str())) {
                        return Err(InputError(format!(
                            "{}: line {}: unknown label '{value}' for {task} (labels: {})",
                            path.display(),
                            first_line + i,
                            labels.join(", ")
                        )));
                    }
                    Ok(names.id(value))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let order = (0..rows.len()).collect();
            Ok(RawFile { header, rows, labels, order })
        };
        let train = glue("train.tsv")?;
        let eval_names: &[&str] = if task == "MNLI" { &["dev_matched", "dev_mismatched"] } else { &["dev"] };
        let evals = eval_names
            .iter()
            .map(|n| Ok((n.replace("dev", "test"), glue(&format!("{n}.tsv"))?)))
            .collect::<Result<_>>()?;
        Ok(Loaded { train, evals, label_names: names.0, glue: true, aliased: task == "CoLA" })
    } else {
        let columns = match registered.map(|t| t.layout) {
            Some(Layout::Csv { columns, .. }) => Some(columns),
            _ => None,
        };
        let mut csv_file = |name: &str| -> Result<RawFile> {
            let path = dir.join(name);
            let records = csv::parse(&path, &read(&path)?)?;
            let width = columns.unwrap_or(records[0].cells.len());
            let mut rows = Vec::with_capacity(records.len());
            let mut labels = Vec::with_capacity(records.len());
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
                let label = csv_label(&path, r, task)?;
                // pandas parsed the label column as int64 and writes it back as a plain integer.
                let label_text = label.to_string();
                let mut cells: Vec<Option<&str>> = r.cells.iter().map(|c| c.as_deref()).collect();
                cells[0] = Some(&label_text);
                let mut row = String::new();
                csv::write_record(&mut row, &cells);
                rows.push(row);
                labels.push(names.id(label_text));
            }
            let order = (0..rows.len()).collect();
            Ok(RawFile { header: None, rows, labels, order })
        };
        let train = csv_file("train.csv")?;
        let test = csv_file("test.csv")?;
        Ok(Loaded {
            train,
            evals: vec![("test".into(), test)],
            label_names: names.0,
            glue: false,
            aliased: false,
        })
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

/// The label used for balanced sampling: the label field of the stripped line (docs/reference.md §2.2).
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

/// Row indices grouped by label, groups in order of the label's first appearance in `order`.
fn group_by_label(order: &[usize], labels: &[usize], label_count: usize) -> Vec<Vec<usize>> {
    let mut group_of = vec![usize::MAX; label_count];
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &row in order {
        let label = labels[row];
        if group_of[label] == usize::MAX {
            group_of[label] = groups.len();
            groups.push(Vec::new());
        }
        groups[group_of[label]].push(row);
    }
    groups
}

fn split_dir(config: &KshotConfig, task: &str, seed: u32) -> PathBuf {
    config.out_dir.join(config.mode.dir_name()).join(task).join(format!("{}-{seed}", config.k))
}

/// Where a split is written before it is complete (hidden, so that loops over `K-SEED`
/// directories never pick it up).
fn partial_split_dir(config: &KshotConfig, task: &str, seed: u32) -> PathBuf {
    split_dir(config, task, seed).with_file_name(format!(".{}-{seed}.partial", config.k))
}

fn write_split(config: &KshotConfig, task: &str, data: &mut Loaded, seed: u32) -> Result<PathBuf> {
    let k = config.k;
    let dev_ratio = if config.mode == Mode::KShot10x { 11 } else { 2 };
    let final_dir = split_dir(config, task, seed);
    let partial = partial_split_dir(config, task, seed);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))?;
    }
    std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let extension = if data.glue { "tsv" } else { "csv" };
    let write = |stem: &str,
                 header: Option<&str>,
                 file: &RawFile,
                 rows: &mut dyn Iterator<Item = usize>|
     -> Result<()> {
        let path = partial.join(format!("{stem}.{extension}"));
        let written = (|| -> std::io::Result<()> {
            let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
            out.write_all(header.unwrap_or("").as_bytes())?;
            for row in rows {
                out.write_all(file.rows[row].as_bytes())?;
            }
            out.into_inner().map_err(|e| e.into_error())?.sync_all()
        })();
        written.with_context(|| format!("writing {}", path.display()))
    };

    // The train pool: CoLA shuffles its loaded list, the others a copy.
    let mut rng = RandomState::new(seed);
    let mut fresh;
    let pool = if data.aliased {
        &mut data.train.order
    } else {
        fresh = (0..data.train.rows.len()).collect::<Vec<_>>();
        &mut fresh
    };
    rng.shuffle(pool);
    let pool = pool.clone();

    for (stem, file) in data.evals.iter_mut() {
        let mut fresh;
        let order = if data.aliased {
            &mut file.order
        } else {
            fresh = (0..file.rows.len()).collect::<Vec<_>>();
            &mut fresh
        };
        let cap_1k = config.mode == Mode::KShot1kTest && order.len() > 1000;
        let kept = if !cap_1k {
            order.len()
        } else if data.glue {
            // GLUE-style: re-seed the global RNG with 42 and shuffle the lines in place.
            RandomState::new(42).shuffle(order);
            1000
        } else {
            // pandas' sample(1000, random_state=42): the first 1000 of a seed-42 permutation.
            *order = RandomState::new(42).permutation(order.len());
            1000
        };
        let kept: Vec<usize> = order[..kept].to_vec();
        write(stem, file.header.as_deref(), file, &mut kept.into_iter())?;
    }

    let groups = group_by_label(&pool, &data.train.labels, data.label_names.len());
    for group in &groups {
        if group.len() < k {
            let label = &data.label_names[data.train.labels[group[0]]];
            log::warn!(
                "{task} seed {seed}: label {label} has {} training examples, fewer than k = {k}",
                group.len()
            );
        }
    }
    let slice = |from: usize, to: usize| {
        groups.iter().flat_map(move |g| g[from.min(g.len())..to.min(g.len())].iter().copied())
    };
    let header = data.train.header.as_deref();
    write("train", header, &data.train, &mut slice(0, k))?;
    let dev = if task == "MNLI" { "dev_matched" } else { "dev" };
    write(dev, header, &data.train, &mut slice(k, dev_ratio * k))?;

    crate::fsio::sync_tree(&partial)?;
    crate::fsio::rename_synced(&partial, &final_dir)?;
    log::debug!("wrote {}", final_dir.display());
    Ok(final_dir)
}
