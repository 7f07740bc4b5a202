//! A training run's outputs and the copies of its weights: what the run directory receives as a
//! run goes (trajectory, metrics), the best-dev weights kept for the test evaluation (in memory or
//! on disk), and the end of the run. The optimiser updates the weights; the run only copies and
//! restores them, through [`Trained`], which brings pending updates up to date first.

use super::{
    read_trajectory, run_dir, Outcome, RecordedStep, Selection, Split, Summary, TornTail, TrainConfig,
    TrainTask, TrajectoryWriter,
};
use crate::dist::Dist;
use crate::error::InputError;
use crate::model::Model;
use crate::optim::fast::DeferredState;
use crate::optim::Trained;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Where copies of the trained tensors (best-dev weights, the final weights while test is
/// evaluated with the best) are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Stash {
    /// In host or device memory: one more copy of the trained tensors.
    Memory,
    /// In the run directory (`*.stash.safetensors`, removed at the end): for models whose extra
    /// copy would not fit.
    Disk,
    /// Disk when the trained tensors exceed 1 GiB, else memory.
    Auto,
}

/// A copy of the trained tensors, with where the optimiser's pending updates stood.
struct Snapshot {
    copy: Stored,
    pending: Option<DeferredState>,
}

enum Stored {
    Memory(Vec<Tensor>),
    Disk(PathBuf),
}

impl Snapshot {
    /// Copies the trained tensors (every rank holds the same weights; on disk, rank 0 writes,
    /// after pending updates are applied: each rank's rows stand where its own passes read them).
    fn take(trained: &dyn Trained, config: &TrainConfig, dist: &Dist, name: &str) -> Result<Snapshot> {
        let trainable = trained.params();
        let bytes: usize =
            trainable.iter().map(|t| t.tensor.numel() * t.tensor.kind().elt_size_in_bytes()).sum();
        let disk = match config.stash {
            Stash::Memory => false,
            Stash::Disk => true,
            Stash::Auto => bytes > 1 << 30,
        };
        let _guard = tch::no_grad_guard();
        if !disk {
            let copy = Stored::Memory(trainable.iter().map(|t| t.tensor.detach().copy()).collect());
            return Ok(Snapshot { copy, pending: trained.pending() });
        }
        trained.flush();
        let path = config.out_dir.join(format!("{name}.stash.safetensors"));
        if dist.is_root() {
            let tensors: Vec<(String, Tensor)> =
                trainable.iter().map(|t| (t.name.clone(), t.tensor.shallow_clone())).collect();
            crate::model::weights::save_file(&path, &tensors)?;
        }
        dist.barrier();
        Ok(Snapshot { copy: Stored::Disk(path), pending: trained.pending() })
    }

    /// Writes the copy back into the trained tensors.
    fn restore(&self, trained: &dyn Trained) -> Result<()> {
        let trainable = trained.params();
        let _guard = tch::no_grad_guard();
        match &self.copy {
            Stored::Memory(weights) => {
                for (t, w) in trainable.iter().zip(weights) {
                    t.tensor.shallow_clone().copy_(w);
                }
            }
            Stored::Disk(path) => {
                let stored: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)
                    .with_context(|| format!("reading {}", path.display()))?
                    .into_iter()
                    .collect();
                for t in trainable {
                    let w = stored
                        .get(&t.name)
                        .with_context(|| format!("{} lacks {}", path.display(), t.name))?;
                    t.tensor.shallow_clone().copy_(w);
                }
            }
        }
        if let Some(state) = &self.pending {
            trained.restore_pending(state);
        }
        Ok(())
    }

    fn discard(self, dist: &Dist) {
        if let (Stored::Disk(path), true) = (self.copy, dist.is_root()) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Where a step's time went, by phase, in seconds, on this rank: `batch` (drawing and encoding it),
/// `forward` (the passes, perturbed weights included), `collective` (waiting in all-reduces),
/// `update`, `io` (the trajectory line, synced), and `step` (the whole step but its `io`).
#[derive(Debug, Clone, Default)]
pub(super) struct Seconds(BTreeMap<&'static str, f64>);

impl Seconds {
    /// Adds the time since `since` to `phase`.
    pub(super) fn add(&mut self, phase: &'static str, since: std::time::Instant) {
        *self.0.entry(phase).or_default() += since.elapsed().as_secs_f64();
    }

    fn absorb(&mut self, other: &Seconds) {
        for (phase, seconds) in &other.0 {
            *self.0.entry(phase).or_default() += seconds;
        }
    }

    fn json(&self) -> serde_json::Value {
        self.0.iter().map(|(k, v)| (k.to_string(), microseconds(*v))).collect()
    }
}

/// Seconds rounded to microseconds, all that a step's timing can tell apart.
fn microseconds(seconds: f64) -> serde_json::Value {
    ((seconds * 1e6).round() / 1e6).into()
}

/// The phases whose per-rank totals end a MeZO run's metrics log, in this order.
const PHASES: [&str; 6] = ["batch", "forward", "collective", "update", "io", "step"];

/// The best dev evaluation so far: its step, metrics and a copy of the trained tensors.
type Best = Option<(usize, BTreeMap<String, f64>, Snapshot)>;

/// A training run's outputs as it goes: the trajectory (MeZO), the metrics log, the best-dev
/// weights, and at the end the model, the test evaluation and `results.json`. Rank 0 writes;
/// every rank holds a `Run` and takes part in the collective steps (evaluation, stashes).
pub(super) struct Run<'a> {
    dist: &'a Dist,
    config: &'a TrainConfig,
    trajectory: Option<TrajectoryWriter>,
    metrics: JsonLines,
    best: Best,
    /// The dev metric that selects the best weights.
    selection: Selection,
    /// This rank's time by phase over the steps this process ran.
    spent: Seconds,
}

impl<'a> Run<'a> {
    /// A backpropagation run: a metrics log, no trajectory.
    pub(super) fn first_order(
        dist: &'a Dist,
        config: &'a TrainConfig,
        selection: Selection,
    ) -> Result<Run<'a>> {
        create_dir(dist, &config.out_dir)?;
        let metrics = JsonLines::open(dist, config.out_dir.join(run_dir::METRICS), false)?;
        Ok(Run { dist, config, trajectory: None, metrics, best: None, selection, spent: Seconds::default() })
    }

    /// A MeZO run: a new trajectory starting with `header`, or (`resume`) the recorded one,
    /// verified, checked against `header` and continued; returns the recorded steps.
    pub(super) fn mezo(
        dist: &'a Dist,
        config: &'a TrainConfig,
        header: &serde_json::Value,
        resume: bool,
        selection: Selection,
    ) -> Result<(Run<'a>, Vec<RecordedStep>)> {
        let (recorded, trajectory) = if resume {
            let found = read_trajectory(&config.out_dir, TornTail::Repair)?;
            let mut expected = header.clone();
            if found.header.get("steps").is_none() {
                // Written before headers recorded the step count.
                expected.as_object_mut().expect("an object").remove("steps");
            }
            if found.header != expected {
                bail!(InputError(format!(
                    "{}: the run was made with other initial weights or settings (seed, eps, weight decay, \
                     trainable tensors, rng) than this command gives",
                    config.out_dir.join(run_dir::TRAJECTORY).display()
                )));
            }
            if found.steps.len() > config.steps {
                bail!(InputError(format!(
                    "{} records {} steps, more than the run's {}",
                    config.out_dir.join(run_dir::TRAJECTORY).display(),
                    found.steps.len(),
                    config.steps
                )));
            }
            let writer = TrajectoryWriter::append(dist, &config.out_dir, &found)?;
            (found.steps, writer)
        } else {
            create_dir(dist, &config.out_dir)?;
            (Vec::new(), TrajectoryWriter::create(dist, &config.out_dir, header)?)
        };
        let metrics = JsonLines::open(dist, config.out_dir.join(run_dir::METRICS), resume)?;
        let spent = Seconds::default();
        Ok((
            Run { dist, config, trajectory: Some(trajectory), metrics, best: None, selection, spent },
            recorded,
        ))
    }

    /// Records a MeZO step: its trajectory line (synced: the step is done once this returns),
    /// then its metrics, with where its time went on this rank (`seconds`).
    pub(super) fn record_step(
        &mut self,
        step: usize,
        directions: &[(u64, f64)],
        lr: f64,
        loss: f64,
        projected_grad: f64,
        mut spent: Seconds,
    ) -> Result<()> {
        let clock = std::time::Instant::now();
        let record = if let [(seed, g)] = directions {
            serde_json::json!({"step": step, "seed": seed, "projected_grad": g, "lr": lr})
        } else {
            serde_json::json!({"step": step, "directions": directions, "lr": lr})
        };
        if let Some(trajectory) = &mut self.trajectory {
            trajectory.record(&record)?;
        }
        spent.add("io", clock);
        self.spent.absorb(&spent);
        self.log(&serde_json::json!({
            "step": step, "loss": loss, "projected_grad": projected_grad, "lr": lr, "seconds": spent.json(),
        }))
    }

    /// Appends a line to the metrics log.
    pub(super) fn log(&mut self, value: &serde_json::Value) -> Result<()> {
        self.metrics.write(value)
    }

    /// Evaluates on dev, logs it, and keeps a copy of the weights when the selection metric
    /// improves.
    pub(super) fn evaluate_dev<T: TrainTask>(
        &mut self,
        model: &Model,
        data: &T,
        step: usize,
        trained: &dyn Trained,
    ) -> Result<()> {
        let clock = std::time::Instant::now();
        let dev = data.evaluate(model, Split::Dev, self.dist, self.config.eval_batch_size)?;
        let seconds = clock.elapsed().as_secs_f64();
        self.log(&serde_json::json!({"step": step, "dev": dev, "seconds": {"eval": microseconds(seconds)}}))?;
        let key = &self.selection.key;
        let score = dev.get(key).copied().unwrap_or(f64::NAN);
        log::info!("step {step}: dev {key} {score:.4}");
        if self.best.as_ref().is_none_or(|(_, b, _)| self.selection.better(score, b[key])) {
            self.stash_best(step, dev, trained)?;
        }
        Ok(())
    }

    /// Keeps a copy of the weights as the best so far, evaluated at `step` with `dev` (a resumed
    /// run does this when its replay passes the best logged evaluation).
    pub(super) fn stash_best(
        &mut self,
        step: usize,
        dev: BTreeMap<String, f64>,
        trained: &dyn Trained,
    ) -> Result<()> {
        // On disk the new copy overwrites the old one's file.
        self.best = Some((step, dev, Snapshot::take(trained, self.config, self.dist, "best")?));
        Ok(())
    }

    /// The end of a run: the final model saved, test evaluated with the best-dev weights,
    /// `results.json` written.
    pub(super) fn finish<T: TrainTask>(
        mut self,
        model: &Model,
        data: &T,
        trained: &dyn Trained,
        last_loss: f64,
    ) -> Result<Outcome> {
        let (dist, config) = (self.dist, self.config);
        if config.save_model {
            trained.flush();
            if dist.is_root() {
                model.save(&config.out_dir.join("model"), crate::model::MAX_SHARD_BYTES)?;
            }
        }
        let Some((best_step, best_dev, snapshot)) = self.best.take() else {
            bail!(InputError(format!(
                "{}: no dev evaluation is logged for this run (its metrics log lost them)",
                config.out_dir.join(run_dir::METRICS).display()
            )));
        };
        // Test with the best-dev weights: swap them in, evaluate, swap the final weights back.
        let final_weights = Snapshot::take(trained, config, dist, "final")?;
        snapshot.restore(trained)?;
        let test = data.evaluate(model, Split::Test, dist, config.eval_batch_size)?;
        final_weights.restore(trained)?;
        dist.barrier();
        snapshot.discard(dist);
        final_weights.discard(dist);
        let summary = Summary { best_step, best_dev, test, final_train_loss: last_loss };
        self.log(&serde_json::json!({"best_step": best_step, "test": summary.test}))?;
        if self.trajectory.is_some() {
            // Every rank's totals, for a scaling study: where the time went on each.
            let mine: Vec<f64> = PHASES.iter().map(|p| self.spent.0.get(p).copied().unwrap_or(0.0)).collect();
            let by_rank: Vec<serde_json::Value> = dist
                .all_gather(&mine)
                .iter()
                .enumerate()
                .map(|(rank, totals)| {
                    let mut entry: serde_json::Map<String, serde_json::Value> = PHASES
                        .iter()
                        .zip(totals)
                        .map(|(p, v)| (p.to_string(), ((v * 1e6).round() / 1e6).into()))
                        .collect();
                    entry.insert("rank".into(), rank.into());
                    serde_json::Value::Object(entry)
                })
                .collect();
            self.log(&serde_json::json!({"seconds_by_rank": by_rank}))?;
        }
        if dist.is_root() {
            let path = config.out_dir.join(run_dir::RESULTS);
            crate::fsio::write_atomic(&path, serde_json::to_string_pretty(&summary)?.as_bytes())?;
        }
        Ok(Outcome::Finished(summary))
    }
}

fn create_dir(dist: &Dist, dir: &Path) -> Result<()> {
    if dist.is_root() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// Appends JSON lines, flushed at once (rank 0 only; other ranks hold `None`).
pub(super) struct JsonLines(Option<std::fs::File>, PathBuf);

impl JsonLines {
    /// Opens `path` for appending, or truncated; appending, a last line cut short by a kill is
    /// cut off first, so that the next line starts on a line of its own.
    fn open(dist: &Dist, path: PathBuf, append: bool) -> Result<JsonLines> {
        if !dist.is_root() {
            return Ok(JsonLines(None, path));
        }
        let opened = (|| -> std::io::Result<std::fs::File> {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(&path)?;
            if append {
                let text = std::fs::read(&path)?;
                let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                if whole < text.len() {
                    log::warn!("{}: cutting off a last line that was cut short", path.display());
                    file.set_len(whole as u64)?;
                }
            }
            Ok(file)
        })();
        Ok(JsonLines(Some(opened.with_context(|| format!("opening {}", path.display()))?), path))
    }

    fn write(&mut self, value: &serde_json::Value) -> Result<()> {
        if let Some(f) = &mut self.0 {
            writeln!(f, "{value}")
                .and_then(|()| f.flush())
                .with_context(|| format!("writing {}", self.1.display()))?;
        }
        Ok(())
    }
}

/// The training loss logged for `step` in `metrics.jsonl` (NaN when it is not there).
pub(super) fn logged_loss(run: &Path, step: usize) -> Result<f64> {
    let path = run.join(run_dir::METRICS);
    let text = std::fs::read_to_string(&path).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["step"].as_u64() == Some(step as u64))
        .find_map(|v| v["loss"].as_f64())
        .unwrap_or(f64::NAN))
}

/// Steps with a dev evaluation in `metrics.jsonl`.
pub(super) fn logged_dev_steps(run: &Path) -> Result<Vec<usize>> {
    let path = run.join(run_dir::METRICS);
    let text = std::fs::read_to_string(&path).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("dev").is_some())
        .filter_map(|v| v["step"].as_u64().map(|s| s as usize))
        .collect())
}

/// The best dev evaluation logged in `metrics.jsonl` up to `steps`.
pub(super) fn best_logged_dev(
    run: &Path,
    selection: &Selection,
    steps: usize,
) -> Result<Option<(usize, BTreeMap<String, f64>)>> {
    let path = run.join(run_dir::METRICS);
    let text = std::fs::read_to_string(&path).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    let mut best: Option<(usize, BTreeMap<String, f64>)> = None;
    for (number, line) in text.lines().enumerate() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(step), Some(dev)) = (v["step"].as_u64(), v.get("dev")) else { continue };
        let bad = |what: &str| InputError(format!("{} line {}: {what}", path.display(), number + 1));
        let dev: BTreeMap<String, f64> =
            serde_json::from_value(dev.clone()).map_err(|e| bad(&format!("dev metrics: {e}")))?;
        let key = &selection.key;
        let score = *dev.get(key).ok_or_else(|| bad(&format!("no {key} in the dev metrics")))?;
        if step as usize <= steps && best.as_ref().is_none_or(|(_, b)| selection.better(score, b[key])) {
            best = Some((step as usize, dev));
        }
    }
    Ok(best)
}
