//! A run directory and who owns it.
//!
//! A run directory belongs to one run configuration ([`RunConfig`], written once as
//! `config.json`) and to one writer at a time (`.lock`, an advisory lock held by rank 0 for the
//! whole run and released by the kernel however the process ends). Opening one decides what the
//! command does with it:
//!
//! * a new or empty directory: a fresh run;
//! * a run of the same configuration: it continues (a MeZO run resumes from its trajectory, a run
//!   whose last step is recorded finishes its evaluation and outputs) or, if `results.json` is
//!   there, is reported as finished and not trained again;
//! * a run of another configuration: refused, naming the fields that differ, unless the user asks
//!   to replace it (`overwrite`);
//! * anything else (a file, a directory with other contents): refused, never touched.
//!
//! Same configuration means equal field by field, except the fields that do not change the
//! numbers a run produces, or change them only by rounding ([`MAY_DIFFER`]).

use crate::dist::Dist;
use crate::error::InputError;
use crate::fsio::Lock;
use crate::model::nn::LoraConfig;
use crate::model::Dtype;
use crate::optim::zo::Rng;
use crate::train::{Parallel, TrainConfig};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const CONFIG: &str = "config.json";
pub const RESULTS: &str = "results.json";
pub const TRAJECTORY: &str = "trajectory.jsonl";
pub const METRICS: &str = "metrics.jsonl";
const LOCK: &str = ".lock";

/// Everything that decides a run's numbers, as `config.json` records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    /// The mezo version that started the run.
    pub program: String,
    /// `mezo`, `adam` or `sgd`.
    pub optimizer: String,
    /// MeZO's perturbation stream (absent for backprop runs).
    pub rng: Option<Rng>,
    pub ranks: usize,
    pub load: LoadRecord,
    pub train: TrainConfig,
    pub data: DataRecord,
}

/// How the model was loaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadRecord {
    pub model: PathBuf,
    pub dtype: Dtype,
    pub num_labels: Option<i64>,
    pub init_seed: i64,
    pub lora: Option<LoraConfig>,
    pub num_prefix: Option<i64>,
}

/// The task and data, with a fingerprint of the examples' contents (so that another data
/// directory with the same files is the same data, and edited files under the same path are not).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataRecord {
    pub task: String,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub fingerprint: Option<String>,
    pub tokenizer: PathBuf,
    pub few_shot_type: String,
    pub template: String,
    pub mapping: Vec<(String, String)>,
    pub lengths: String,
    pub truncate_head: bool,
    pub seed: u32,
    /// MeZO's large-model tasks: the sampling, prompt and loss settings (absent for LM-BFF
    /// tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub large: Option<serde_json::Value>,
}

/// Fields that may differ between a run and the command that continues it: where the run is
/// (`out_dir`, paths of the same content), what only the program version, memory use or
/// bookkeeping depends on, and how passes are batched (rounding only).
pub const MAY_DIFFER: &[&str] = &[
    "program",
    "ranks",
    "train.out_dir",
    "train.paired_pass",
    "train.stash",
    "train.eval_batch_size",
    "train.micro_batch_size",
    "train.check_every",
    "train.save_model",
    "data.data_dir",
    "data.tokenizer",
];

impl RunConfig {
    /// The dotted names of the fields in which `recorded` differs from `self`, leaving out
    /// [`MAY_DIFFER`] (but keeping `ranks` when each rank is a direction, the data directory
    /// when the recorded run has no data fingerprint, and the evaluation batch size on the
    /// large-model tasks, whose dev loss is a mean of per-batch means).
    pub fn differences(&self, recorded: &serde_json::Value) -> Vec<String> {
        let mine = flatten(&serde_json::to_value(self).expect("a run config serialises"));
        let theirs = flatten(recorded);
        let by_directions = self.train.parallel == Parallel::Directions;
        let fingerprinted = recorded["data"]["fingerprint"].is_string();
        let large = self.data.large.is_some();
        let ignored = |key: &str| {
            MAY_DIFFER.contains(&key)
                && (key != "ranks" || !by_directions)
                && (key != "data.data_dir" || fingerprinted)
                && (key != "train.eval_batch_size" || !large)
        };
        let mut keys: Vec<String> = mine
            .keys()
            .chain(theirs.keys())
            .filter(|k| !ignored(k) && mine.get(*k) != theirs.get(*k))
            .cloned()
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

/// `{"a": {"b": 1}}` -> `{"a.b": 1}`; arrays and scalars are leaves.
fn flatten(value: &serde_json::Value) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut out = std::collections::BTreeMap::new();
    crate::report::flatten("", value, &mut out);
    out
}

/// What the command asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// `--out DIR`: start, or continue a run of the same configuration.
    Start,
    /// `--out DIR --overwrite`: start over, replacing a run of any configuration.
    Overwrite,
    /// `--resume DIR`: continue; the directory must hold a run.
    Resume,
}

/// What the directory holds for this command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Nothing yet: a fresh run (`config.json` written).
    Fresh,
    /// A run of this configuration that has not finished.
    Unfinished,
    /// A run of this configuration with its results.
    Finished,
}

/// An open run directory, locked by rank 0 until dropped.
#[derive(Debug)]
pub struct RunDir {
    pub path: PathBuf,
    pub state: State,
    /// Whether this command created the directory (and may remove it if the run fails before
    /// its first step is recorded).
    pub created: bool,
    _lock: Option<Lock>,
}

impl RunDir {
    /// Opens `path` for `config` (collective: rank 0 looks at the directory and takes the lock,
    /// every rank returns the same outcome).
    pub fn open(dist: &Dist, path: &Path, config: &RunConfig, intent: Intent) -> Result<RunDir> {
        let claimed = dist.on_root(|| claim(path, config, intent))?;
        let mut bytes = match &claimed {
            Some((state, created, _)) => serde_json::to_vec(&(state, created))?,
            None => Vec::new(),
        };
        dist.broadcast_bytes(&mut bytes, 0);
        let (state, created): (State, bool) = serde_json::from_slice(&bytes)?;
        Ok(RunDir { path: path.to_owned(), state, created, _lock: claimed.map(|(_, _, lock)| lock) })
    }
}

/// Rank 0's part of [`RunDir::open`].
fn claim(path: &Path, config: &RunConfig, intent: Intent) -> Result<(State, bool, Lock)> {
    if path.exists() && !path.is_dir() {
        anyhow::bail!(InputError(format!("--out {}: exists and is not a directory", path.display())));
    }
    if intent == Intent::Resume && !path.join(CONFIG).is_file() {
        anyhow::bail!(InputError(format!("--resume {}: not a run directory (no {CONFIG})", path.display())));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            InputError(format!("--out {}: creating {}: {e}", path.display(), parent.display()))
        })?;
    }
    let created = match std::fs::create_dir(path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => anyhow::bail!(InputError(format!("--out {}: {e}", path.display()))),
    };
    let lock = match Lock::try_acquire(&path.join(LOCK)) {
        Ok(Some(lock)) => lock,
        Ok(None) => anyhow::bail!(InputError(format!(
            "{}: another mezo process is writing this run (it holds {}); wait for it or choose another --out",
            path.display(),
            path.join(LOCK).display()
        ))),
        Err(e) => anyhow::bail!(InputError(format!("--out {}: {e:#}", path.display()))),
    };
    let state = decide(path, config, intent).inspect_err(|_| {
        if created {
            let _ = std::fs::remove_dir_all(path);
        }
    })?;
    Ok((state, created, lock))
}

fn decide(path: &Path, config: &RunConfig, intent: Intent) -> Result<State> {
    let config_path = path.join(CONFIG);
    let others: Vec<String> = std::fs::read_dir(path)
        .with_context(|| format!("reading {}", path.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != LOCK)
        .collect();
    if !config_path.is_file() {
        if !others.is_empty() {
            anyhow::bail!(InputError(format!(
                "--out {}: exists and is not a mezo run directory (no {CONFIG}, but {}); choose another --out",
                path.display(),
                others.join(", ")
            )));
        }
        write_config(path, config)?;
        return Ok(State::Fresh);
    }
    let recorded: serde_json::Value = std::fs::read_to_string(&config_path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .ok_or_else(|| InputError(format!("{}: not a readable run configuration", config_path.display())))?;
    if intent == Intent::Overwrite {
        log::warn!("--overwrite: replacing the run in {}", path.display());
        for name in others {
            let entry = path.join(&name);
            let removed =
                if entry.is_dir() { std::fs::remove_dir_all(&entry) } else { std::fs::remove_file(&entry) };
            removed.with_context(|| format!("removing {}", entry.display()))?;
        }
        write_config(path, config)?;
        return Ok(State::Fresh);
    }
    let differences = config.differences(&recorded);
    if !differences.is_empty() {
        let (run, now) = (flatten(&recorded), flatten(&serde_json::to_value(config)?));
        let show = |fields: &std::collections::BTreeMap<String, serde_json::Value>, k: &str| {
            fields.get(k).map_or("absent".into(), |v| v.to_string())
        };
        let fields: Vec<String> = differences
            .iter()
            .map(|k| format!("{k}: run {} / now {}", show(&run, k), show(&now, k)))
            .collect();
        let hint = match intent {
            Intent::Resume => "resume it with the settings it was started with",
            _ => "choose another --out, or --overwrite to replace it",
        };
        anyhow::bail!(InputError(format!(
            "{} holds a run of another configuration ({}); {hint}",
            path.display(),
            fields.join("; ")
        )));
    }
    if path.join(RESULTS).is_file() {
        return Ok(State::Finished);
    }
    if config.optimizer != "mezo" {
        anyhow::bail!(InputError(format!(
            "{} holds an unfinished {} run, which cannot be continued (only MeZO runs keep a trajectory); \
             --overwrite starts it over",
            path.display(),
            config.optimizer
        )));
    }
    if !path.join(TRAJECTORY).is_file() {
        // Stopped before its trajectory was created: nothing to continue from.
        return Ok(State::Fresh);
    }
    Ok(State::Unfinished)
}

fn write_config(path: &Path, config: &RunConfig) -> Result<()> {
    crate::fsio::write_atomic(&path.join(CONFIG), serde_json::to_string_pretty(config)?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattening_names_nested_fields() {
        let v = serde_json::json!({"a": {"b": 1, "c": [1, 2]}, "d": null});
        let flat = flatten(&v);
        assert_eq!(flat.keys().collect::<Vec<_>>(), ["a.b", "a.c", "d"]);
    }
}
