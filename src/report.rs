//! Results over seeds: the reference's `tools/gather_result.py` for training runs and kernel
//! solves alike.
//!
//! The papers report, per task and configuration, the mean (std) over the five data seeds of the
//! test metric at the best dev metric, where "best" searches a hyper-parameter grid separately
//! for each seed. So runs are grouped by task and **tag** = every config value except the seeds
//! and the grid keys; within a group, each seed keeps its run with the best dev metric (ties: the
//! first in sorted path order, as the reference's `max(sorted(runs))`); the report is the mean
//! and population std (numpy's default) of the kept runs' test metrics.
//!
//! Runs are found as
//! * training run directories: `config.json` (the resolved config) + `results.json` (`best_dev`,
//!   `test`), as `mezo train` writes them;
//! * solve results: one JSON file with its config embedded (`config`, `best_dev`, `test`), as
//!   `mezo solve --out` writes it.
//!
//! Config values are flattened to dotted keys (`train.lr`, `kernel.seed`). Seeds are the keys
//! named `seed` or `*_seed`; grid keys are matched by their last component ([`GRID_KEYS`] plus
//! the caller's); paths and the data fingerprint, which differ per run or seed (`out_dir`,
//! `data_dir`, `fingerprint`, `kernels`), and bookkeeping (`program`, `ranks`) are no part of the
//! tag. The k of a k-shot data directory
//! (`.../16-42`) stays in the tag as `data_dir.k`.
//!
//! Runs of MeZO's large-model tasks (their config has `data.large`) are selected and reported by
//! the task's metric (`eval_accuracy`, or `eval_f1` for SQuAD and DROP); their seeds are the run
//! seed and `train_set_seed`.

use crate::data::tasks;
use crate::error::InputError;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Hyper-parameters a grid searches, by last key component: the reference gather's list
/// (learning rate, batch size, eval steps, max steps, f0 scaling, kernel regularisation, γ, λ)
/// in this program's names, plus MeZO's ε and weight decay.
pub const GRID_KEYS: &[&str] = &[
    "lr",
    "eps",
    "weight_decay",
    "batch_size",
    "steps",
    "eval_every",
    "reg",
    "reg_grid",
    "f0_scaling",
    "kernel_gamma",
    "kernel_lambda",
];

/// Keys that are never part of a tag: per-run paths, the data fingerprint (which differs with the
/// data seed) and bookkeeping.
const UNTAGGED: &[&str] =
    &["out_dir", "out", "data_dir", "fingerprint", "kernels", "program", "ranks", "seconds_by_rank"];

/// One finished run.
#[derive(Debug, Clone)]
pub struct Run {
    /// The results file.
    pub path: PathBuf,
    pub task: String,
    /// The flattened config.
    pub config: BTreeMap<String, Value>,
    pub dev: BTreeMap<String, f64>,
    pub test: BTreeMap<String, f64>,
}

/// What to gather.
#[derive(Debug, Clone, Default)]
pub struct GatherConfig {
    /// Run directories, solve result files, or directories searched for them.
    pub paths: Vec<PathBuf>,
    /// (key, value): a run is kept if, for every key, its value is one of the given values.
    pub conditions: Vec<(String, String)>,
    /// More grid keys besides [`GRID_KEYS`].
    pub grid_keys: Vec<String>,
}

/// The best run of one seed.
#[derive(Debug, Clone, Serialize)]
pub struct SeedResult {
    pub seed: String,
    pub best_run: PathBuf,
    pub runs: usize,
    pub dev: f64,
    pub test: BTreeMap<String, f64>,
}

/// One (task, tag) group.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub task: String,
    pub tag: BTreeMap<String, Value>,
    /// The dev metric that picks each seed's run.
    pub selection_metric: String,
    pub seeds: Vec<SeedResult>,
    /// Mean and population std over seeds of each test metric.
    pub test_mean: BTreeMap<String, f64>,
    pub test_std: BTreeMap<String, f64>,
}

/// Finds the runs under `config.paths`, keeps those meeting the conditions, groups them.
pub fn gather(config: &GatherConfig) -> Result<Vec<Group>> {
    let mut runs = Vec::new();
    for path in &config.paths {
        find_runs(path, &mut runs)?;
    }
    runs.sort_by(|a, b| a.path.cmp(&b.path));
    runs.dedup_by(|a, b| a.path == b.path);
    let runs: Vec<Run> = runs.into_iter().filter(|r| meets(r, &config.conditions)).collect();
    Ok(group(&runs, &config.grid_keys))
}

fn meets(run: &Run, conditions: &[(String, String)]) -> bool {
    let mut by_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (k, v) in conditions {
        by_key.entry(k).or_default().push(v);
    }
    by_key.iter().all(|(key, values)| {
        run.config
            .iter()
            .filter(|(k, _)| k == key || k.ends_with(&format!(".{key}")))
            .any(|(_, v)| values.iter().any(|want| equals(v, want)))
            || (*key == "task" && values.contains(&run.task.as_str()))
    })
}

/// Whether a config value is `want`: numbers compare as numbers (`1e-6` = `0.000001`), other
/// values as their text (strings without quotes).
fn equals(value: &Value, want: &str) -> bool {
    match (value.as_f64(), want.parse::<f64>()) {
        (Some(a), Ok(b)) => a == b,
        _ => render(value) == want,
    }
}

/// A config value as text: strings without quotes.
fn render(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn last(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

fn is_seed(key: &str) -> bool {
    let l = last(key);
    l == "seed" || l.ends_with("_seed")
}

/// Groups runs by (task, tag), picks each seed's best dev run, averages over seeds.
pub fn group(runs: &[Run], extra_grid_keys: &[String]) -> Vec<Group> {
    let grid = |key: &str| {
        GRID_KEYS.contains(&last(key)) || extra_grid_keys.iter().any(|g| g == key || g == last(key))
    };
    let mut groups: BTreeMap<(String, String), Vec<&Run>> = BTreeMap::new();
    for run in runs {
        let tag = tag(run, &grid);
        groups
            .entry((run.task.clone(), serde_json::to_string(&tag).expect("JSON values")))
            .or_default()
            .push(run);
    }
    groups
        .into_iter()
        .map(|((task, tag), runs)| {
            // A large-model task's runs record their sampling and loss under `data.large`; their
            // metric is the task's (accuracy or F1).
            let large = runs[0].config.keys().any(|k| k.starts_with("data.large."));
            let registry = if large { None } else { tasks::task(&task).ok() };
            let selection = match registry {
                Some(t) => t.selection_metric(),
                None => crate::data::large::Task::parse(&task).map_or("acc", |t| t.metric()),
            };
            let selection_metric = format!("eval_{selection}");
            let test_keys: Vec<String> = registry
                .map(|t| t.metrics.iter().map(|m| format!("eval_{m}")).collect())
                .unwrap_or_else(|| vec![selection_metric.clone()]);
            // Runs are in sorted path order; a strictly better dev replaces the kept one.
            let mut by_seed: BTreeMap<String, (usize, &Run)> = BTreeMap::new();
            for run in runs {
                let seed = seed(run);
                let dev = |r: &Run| r.dev.get(&selection_metric).copied().unwrap_or(f64::NEG_INFINITY);
                match by_seed.get_mut(&seed) {
                    None => {
                        by_seed.insert(seed, (1, run));
                    }
                    Some((count, best)) => {
                        *count += 1;
                        if dev(run) > dev(best) {
                            *best = run;
                        }
                    }
                }
            }
            let seeds: Vec<SeedResult> = by_seed
                .into_iter()
                .map(|(seed, (runs, best))| SeedResult {
                    seed,
                    best_run: best.path.clone(),
                    runs,
                    dev: best.dev.get(&selection_metric).copied().unwrap_or(f64::NAN),
                    test: test_keys
                        .iter()
                        .filter_map(|k| best.test.get(k).map(|v| (k.clone(), *v)))
                        .collect(),
                })
                .collect();
            let mut test_mean = BTreeMap::new();
            let mut test_std = BTreeMap::new();
            for key in &test_keys {
                let values: Vec<f64> = seeds.iter().filter_map(|s| s.test.get(key).copied()).collect();
                if values.is_empty() {
                    continue;
                }
                let n = values.len() as f64;
                let mean = values.iter().sum::<f64>() / n;
                let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                test_mean.insert(key.clone(), mean);
                test_std.insert(key.clone(), var.sqrt());
            }
            Group {
                task,
                tag: serde_json::from_str(&tag).expect("written above"),
                selection_metric,
                seeds,
                test_mean,
                test_std,
            }
        })
        .collect()
}

fn tag(run: &Run, grid: &dyn Fn(&str) -> bool) -> BTreeMap<String, Value> {
    let mut tag: BTreeMap<String, Value> = run
        .config
        .iter()
        .filter(|(k, _)| !is_seed(k) && !grid(k) && !UNTAGGED.contains(&last(k)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // The k of a k-shot split directory (.../SST-2/16-42) is configuration; its seed is not.
    for (key, value) in &run.config {
        if last(key) == "data_dir" {
            if let Some(k) = value.as_str().and_then(kshot_k) {
                tag.insert(format!("{key}.k"), Value::from(k));
            }
        }
    }
    tag
}

/// `16` of a k-shot directory named `16-42`.
fn kshot_k(dir: &str) -> Option<String> {
    let name = Path::new(dir).file_name()?.to_str()?;
    let (k, seed) = name.split_once('-')?;
    (k.parse::<u64>().is_ok() && seed.parse::<u64>().is_ok()).then(|| k.to_string())
}

/// The seed identity of a run: every seed key and value.
fn seed(run: &Run) -> String {
    let parts: Vec<String> =
        run.config.iter().filter(|(k, _)| is_seed(k)).map(|(k, v)| format!("{k}={}", render(v))).collect();
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(",")
    }
}

/// Adds the runs at `path` (a run directory, a solve results file, or a directory holding them
/// anywhere below) to `out`.
pub fn find_runs(path: &Path, out: &mut Vec<Run>) -> Result<()> {
    if path.is_file() {
        let run = read_results(path)?.ok_or_else(|| {
            InputError(format!("{}: not a results file of mezo solve or mezo train", path.display()))
        })?;
        out.push(run);
        return Ok(());
    }
    if !path.is_dir() {
        bail!(InputError(format!("{}: no such file or directory", path.display())));
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("listing {}", path.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("listing {}", path.display()))?;
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            find_runs(&entry, out)?;
        } else if entry.extension().is_some_and(|e| e == "json") {
            if let Some(run) = read_results(&entry)? {
                out.push(run);
            }
        }
    }
    Ok(())
}

/// A results file: `results.json` beside a training `config.json`, or any JSON with `config`,
/// `best_dev` and `test` (mezo solve). `None` for other JSON files.
fn read_results(path: &Path) -> Result<Option<Run>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value = match serde_json::from_str::<Value>(&text) {
        Ok(value) => value,
        // A run's results file is written whole or not at all: a damaged one is worth stopping for.
        Err(e) if path.file_name().is_some_and(|n| n == "results.json") => {
            bail!(InputError(format!("{}: a damaged results file ({e})", path.display())))
        }
        Err(e) => {
            log::warn!("skipping {}: not JSON ({e})", path.display());
            return Ok(None);
        }
    };
    let (Some(dev), Some(test)) = (value.get("best_dev"), value.get("test")) else {
        return Ok(None);
    };
    let config = match value.get("config") {
        Some(c) => c.clone(),
        None => {
            let beside = path.with_file_name("config.json");
            if path.file_name().is_some_and(|n| n != "results.json") || !beside.is_file() {
                return Ok(None);
            }
            let text =
                std::fs::read_to_string(&beside).with_context(|| format!("reading {}", beside.display()))?;
            serde_json::from_str(&text).map_err(|e| InputError(format!("{}: {e}", beside.display())))?
        }
    };
    let mut flat = BTreeMap::new();
    flatten("", &config, &mut flat);
    let task = flat
        .iter()
        .find(|(k, _)| last(k) == "task")
        .and_then(|(_, v)| v.as_str())
        .map(str::to_string)
        .or_else(|| value.get("task").and_then(Value::as_str).map(str::to_string))
        .ok_or_else(|| InputError(format!("{}: its config names no task", path.display())))?;
    let metrics = |v: &Value| -> BTreeMap<String, f64> {
        v.as_object()
            .map(|m| m.iter().filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x))).collect())
            .unwrap_or_default()
    };
    Ok(Some(Run { path: path.to_owned(), task, config: flat, dev: metrics(dev), test: metrics(test) }))
}

/// Adds the leaves of `value` to `out` under dotted names below `prefix` (`{"a": {"b": 1}}` gives
/// `a.b`); arrays and scalars are leaves.
pub(crate) fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(path: &str, config: Value, dev: f64, test: f64) -> Run {
        let mut flat = BTreeMap::new();
        flatten("", &config, &mut flat);
        Run {
            path: PathBuf::from(path),
            task: "sst-2".into(),
            config: flat,
            dev: BTreeMap::from([("eval_acc".into(), dev)]),
            test: BTreeMap::from([("eval_acc".into(), test)]),
        }
    }

    #[test]
    fn best_dev_per_seed_then_mean_and_population_std() {
        let c = |seed: u32, lr: f64, opt: &str| {
            json!({"data": {"task": "sst-2", "seed": seed, "data_dir": format!("d/SST-2/16-{seed}")},
                   "train": {"lr": lr, "seed": seed, "out_dir": format!("runs/{seed}-{lr}")}, "optimizer": opt})
        };
        let runs = vec![
            run("a", c(13, 1e-6, "mezo"), 0.80, 0.70),
            run("b", c(13, 1e-7, "mezo"), 0.90, 0.60),
            run("c", c(13, 1e-5, "mezo"), 0.90, 0.99), // tie on dev: "b" comes first
            run("d", c(42, 1e-6, "mezo"), 0.50, 0.80),
            run("e", c(42, 1e-6, "adam"), 0.95, 0.90),
        ];
        let groups = group(&runs, &[]);
        assert_eq!(groups.len(), 2);
        let adam = &groups[0];
        assert_eq!(adam.tag["optimizer"], "adam");
        assert_eq!(adam.tag["data.data_dir.k"], "16");
        assert!(!adam.tag.contains_key("train.lr") && !adam.tag.contains_key("data.seed"));
        let mezo = &groups[1];
        assert_eq!(mezo.seeds.len(), 2);
        assert_eq!(mezo.seeds[0].best_run, PathBuf::from("b"));
        assert_eq!(mezo.seeds[0].runs, 3);
        // Seeds 13 and 42: test 0.6 and 0.8 -> mean 0.7, population std 0.1.
        assert!((mezo.test_mean["eval_acc"] - 0.7).abs() < 1e-12);
        assert!((mezo.test_std["eval_acc"] - 0.1).abs() < 1e-12);
        let cond = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert!(
            meets(&runs[4], &cond(&[("optimizer", "adam")]))
                && !meets(&runs[0], &cond(&[("optimizer", "adam")]))
        );
        // A key given twice: either value; numbers compare as numbers; dotted or last component.
        let either = cond(&[("lr", "0.000001"), ("lr", "1e-7")]);
        assert!(meets(&runs[0], &either) && meets(&runs[1], &either) && !meets(&runs[2], &either));
        assert!(meets(&runs[0], &cond(&[("train.lr", "1e-6"), ("task", "sst-2")])));
        assert!(!meets(&runs[0], &cond(&[("no_such_key", "1")])));
        // With lr as an extra grid key removed from consideration, nothing changes; a grid key
        // given by the caller (optimizer) merges the adam and mezo runs into one group.
        let merged = group(&runs, &["optimizer".to_string()]);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].seeds[1].best_run, PathBuf::from("e"));
        assert_eq!(kshot_k("data/k-shot/SST-2/512-100"), Some("512".into()));
        assert_eq!(kshot_k("data/original/SST-2"), None);
    }
}
