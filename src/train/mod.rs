//! The training loop: MeZO steps on data-parallel ranks, evaluation on dev every so many steps,
//! the best-dev weights kept in memory and used for test, and the run directory.
//!
//! Data parallelism: all ranks draw the same global batches (one seeded sampler each) and take
//! their own contiguous share; per step one all-reduce of (Σℓ+, Σℓ−, count) gives every rank the
//! same projected gradient, so every rank applies the same update and no tensor crosses ranks.
//!
//! Run directory (written by rank 0): `config.json` (the resolved run config), `metrics.jsonl`
//! (one object per step and per evaluation), `trajectory.jsonl` (a fingerprint of the initial
//! trainable weights, then per step the seed, projected gradient and learning rate, flushed every
//! step: the run can be replayed from it), `results.json` (best dev and its test metrics), and
//! `model/` (the final weights, a Hugging Face directory) with `save_model`.

use crate::data::batch::{collate, shard, BatchSampler};
use crate::data::dataset::{FewShotType, TaskData};
use crate::dist::{Dist, Reduce};
use crate::error::InputError;
use crate::eval::evaluate;
use crate::model::{FreezeRules, Model};
use crate::optim::fast::{DeferredState, FastStream};
use crate::optim::zo::{Perturbations, Rng, StepSeeds, Trainable, Updater, WeightDecay, ZoOptimizer};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tch::{Kind, Tensor};

mod first_order;
pub mod run_dir;
mod trajectory;
pub use first_order::{train_first_order, FirstOrder};
pub use trajectory::{read_trajectory, RecordedStep, TornTail, Trajectory, TrajectoryWriter};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum LrSchedule {
    Constant,
    /// η_t = η (T − t) / T.
    Linear,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub steps: usize,
    /// Global batch size, split over the ranks.
    pub batch_size: usize,
    pub lr: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub decay_rule: WeightDecay,
    pub lr_schedule: LrSchedule,
    /// Seeds the step seeds and the batch sampler (independent streams).
    pub seed: u32,
    /// Evaluate on dev every this many steps (and after the last); 0: only after the last.
    pub eval_every: usize,
    pub eval_batch_size: usize,
    pub freeze: FreezeRules,
    pub out_dir: PathBuf,
    pub save_model: bool,
    /// SPSA directions per step (n-SPSA), all on the same batch.
    pub zo_samples: usize,
    /// How ranks share the work of a MeZO step.
    pub parallel: Parallel,
    /// What the perturbations are scored by.
    pub objective: Objective,
    /// Compare the replicas' weights every this many steps (0: never).
    pub check_every: usize,
    /// How MeZO turns projected gradients into updates.
    pub zo_optimizer: ZoOptimizer,
    /// MeZO's perturbation stream (run directories from before the choice existed used the
    /// reference stream).
    #[serde(default = "reference_rng")]
    pub rng: Rng,
    /// Forward (and backward) passes take at most this many examples of a rank's share at once,
    /// so peak memory is that of one micro-batch; 0: the whole share.
    pub micro_batch_size: usize,
    /// Fast stream: score ℓ+ and ℓ− of a direction in one forward pass over the doubled batch
    /// (z drawn once per weight for both sides); false: two passes, half the activation memory
    /// and one perturbed copy of a weight at a time. Not part of the trajectory: a run may be
    /// resumed either way (the losses then differ in rounding only).
    #[serde(default)]
    pub paired_pass: bool,
    /// Where the best-dev weights are kept.
    pub stash: Stash,
}

fn reference_rng() -> Rng {
    Rng::Reference
}

impl TrainConfig {
    /// The learning rate of step `step` (1-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        match self.lr_schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Linear => self.lr * (self.steps - (step - 1)) as f64 / self.steps as f64,
        }
    }

    fn evaluates_at(&self, step: usize) -> bool {
        (self.eval_every > 0 && step.is_multiple_of(self.eval_every)) || step == self.steps
    }
}

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

/// A copy of the trained tensors, with where the fast stream's deferred rows stood.
struct Snapshot {
    copy: Stored,
    deferred: Option<DeferredState>,
}

enum Stored {
    Memory(Vec<Tensor>),
    Disk(PathBuf),
}

impl Snapshot {
    /// Copies `trainable` (every rank holds the same weights; on disk, rank 0 writes, after the
    /// deferred rows are brought up to date: each rank's stand where its own passes read them).
    fn take(
        trainable: &[Trainable],
        deferred: Option<&FastStream>,
        config: &TrainConfig,
        dist: &Dist,
        name: &str,
    ) -> Result<Snapshot> {
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
            return Ok(Snapshot { copy, deferred: deferred.map(FastStream::state) });
        }
        if let Some(stream) = deferred {
            stream.flush();
        }
        let path = config.out_dir.join(format!("{name}.stash.safetensors"));
        if dist.is_root() {
            let tensors: Vec<(String, Tensor)> =
                trainable.iter().map(|t| (t.name.clone(), t.tensor.shallow_clone())).collect();
            crate::model::weights::save_file(&path, &tensors)?;
        }
        dist.barrier();
        Ok(Snapshot { copy: Stored::Disk(path), deferred: deferred.map(FastStream::state) })
    }

    /// Writes the copy back into `trainable`.
    fn restore(&self, trainable: &[Trainable], deferred: Option<&FastStream>) -> Result<()> {
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
        if let (Some(stream), Some(state)) = (deferred, &self.deferred) {
            stream.restore(state);
        }
        Ok(())
    }

    fn discard(self, dist: &Dist) {
        if let (Stored::Disk(path), true) = (self.copy, dist.is_root()) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The best dev evaluation so far: its step, metrics and a copy of the trained tensors.
type Best = Option<(usize, BTreeMap<String, f64>, Snapshot)>;

/// Evaluates on dev, logs it, and keeps a copy of the weights when the selection metric improves.
#[allow(clippy::too_many_arguments)]
fn evaluate_dev(
    model: &Model,
    data: &TaskData,
    dist: &Dist,
    config: &TrainConfig,
    step: usize,
    trainable: &[Trainable],
    deferred: Option<&FastStream>,
    best: &mut Best,
    metrics: &mut JsonLines,
) -> Result<()> {
    let selection = format!("eval_{}", data.config.task.selection_metric());
    let dev = evaluate(model, data, &data.dev, dist, config.eval_batch_size)?;
    metrics.write(&serde_json::json!({"step": step, "dev": dev}))?;
    log::info!("step {step}: dev {selection} {:.4}", dev.get(&selection).copied().unwrap_or(f64::NAN));
    if best.as_ref().is_none_or(|(_, b, _)| dev[&selection] > b[&selection]) {
        *best = Some((step, dev, Snapshot::take(trainable, deferred, config, dist, "best")?));
    }
    Ok(())
}

/// How data-parallel ranks share a MeZO step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Parallel {
    /// Each rank evaluates every direction on its share of the batch; one all-reduce of sums.
    Data,
    /// Each rank evaluates its own direction on the whole batch (n-SPSA over ranks, n = ranks);
    /// the (seed, g) pairs are gathered and every rank applies all of them.
    Directions,
}

/// What the perturbed models are scored by; non-differentiable objectives are negated metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Objective {
    /// Cross-entropy over the class scores.
    Loss,
    /// −(batch accuracy of the argmax class).
    Accuracy,
    /// −(batch binary F1, class 1 positive).
    F1,
}

/// What a run ends with (`results.json`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Summary {
    pub best_step: usize,
    pub best_dev: BTreeMap<String, f64>,
    pub test: BTreeMap<String, f64>,
    pub final_train_loss: f64,
}

/// This rank's share of a step's batch, encoded once and used for both losses of the step (the
/// reference fetches a batch once; with demonstrations, they are drawn once per step).
struct StepBatch {
    input_ids: Tensor,
    attention_mask: Tensor,
    mask_pos: Option<Tensor>,
    labels: Tensor,
}

impl StepBatch {
    /// The batch `copies` times over, one copy after the other (the batch itself, not a copy,
    /// for one).
    fn repeated(&self, copies: i64) -> StepBatch {
        let rows = |t: &Tensor| {
            if copies == 1 {
                return t.shallow_clone();
            }
            let mut times = vec![1; t.dim()];
            times[0] = copies;
            t.repeat(times.as_slice())
        };
        StepBatch {
            input_ids: rows(&self.input_ids),
            attention_mask: rows(&self.attention_mask),
            mask_pos: self.mask_pos.as_ref().map(rows),
            labels: rows(&self.labels),
        }
    }
}

fn step_batch(model: &Model, data: &mut TaskData, rows: &[usize], micro: usize) -> Result<Vec<StepBatch>> {
    let features = rows.iter().map(|&i| data.train_feature(i)).collect::<Result<Vec<_>, _>>()?;
    let device = model.device;
    let size = if micro == 0 { features.len().max(1) } else { micro };
    Ok(features
        .chunks(size)
        .map(|chunk| {
            let batch_rows: Vec<_> = chunk.iter().map(|f| (&f.encoded, f.label)).collect();
            let b = collate(&batch_rows, data.encoder.special().pad);
            StepBatch {
                input_ids: b.input_ids.to_device(device),
                attention_mask: b.attention_mask.to_device(device),
                mask_pos: b.mask_pos.map(|p| p.to_device(device)),
                labels: b.labels.to_device(device),
            }
        })
        .collect())
}

/// The sums an objective needs from this rank's share, summed over its micro-batches: (Σ
/// cross-entropy, count), (correct, count) or (true positives, false positives, false negatives);
/// summed over ranks as they are. With `sides` 2 every micro-batch is scored twice over in one
/// forward pass (see [`crate::model::nn::WeightView`]): the sums of each side, one after the
/// other.
fn objective_sums(
    model: &Model,
    data: &TaskData,
    batches: &[StepBatch],
    objective: Objective,
    sides: i64,
) -> Result<Vec<f64>> {
    let width = if objective == Objective::F1 { 3 } else { 2 };
    let mut total = vec![0.0; width * sides as usize];
    for b in batches {
        let b = b.repeated(sides);
        for (t, v) in total.iter_mut().zip(micro_batch_sums(model, data, &b, objective, sides)?) {
            *t += v;
        }
    }
    Ok(total)
}

fn micro_batch_sums(
    model: &Model,
    data: &TaskData,
    b: &StepBatch,
    objective: Objective,
    sides: i64,
) -> Result<Vec<f64>> {
    let _guard = tch::no_grad_guard();
    let scores = scores(model, data, b)?;
    let part = scores.size()[0] / sides;
    let mut sums = Vec::new();
    for s in 0..sides {
        let (scores, labels) = (scores.narrow(0, s * part, part), b.labels.narrow(0, s * part, part));
        sums.extend(side_sums(&scores, &labels, objective)?);
    }
    Ok(sums)
}

/// An objective's sums over class `scores` `[B, C]` with gold `labels` `[B]`.
fn side_sums(scores: &Tensor, labels: &Tensor, objective: Objective) -> Result<Vec<f64>> {
    if objective == Objective::Loss {
        let loss = summed_cross_entropy(scores, labels);
        return Ok(vec![loss.double_value(&[]), labels.size()[0] as f64]);
    }
    let predicted: Vec<i64> = Vec::try_from(scores.argmax(-1, false).to_device(tch::Device::Cpu))?;
    let gold: Vec<i64> = Vec::try_from(labels.to_device(tch::Device::Cpu))?;
    let pairs = predicted.iter().zip(&gold);
    Ok(match objective {
        Objective::Accuracy => vec![pairs.filter(|(p, g)| p == g).count() as f64, gold.len() as f64],
        _ => {
            let count = |want_p: bool, want_g: bool| {
                predicted
                    .iter()
                    .zip(&gold)
                    .filter(|(p, g)| (**p == 1) == want_p && (**g == 1) == want_g)
                    .count() as f64
            };
            vec![count(true, true), count(true, false), count(false, true)]
        }
    })
}

/// The value minimised: the mean loss, or the negated metric.
fn objective_value(objective: Objective, sums: &[f64]) -> f64 {
    match objective {
        Objective::Loss => sums[0] / sums[1],
        Objective::Accuracy => -sums[0] / sums[1],
        Objective::F1 => {
            let denominator = 2.0 * sums[0] + sums[1] + sums[2];
            if denominator == 0.0 {
                0.0
            } else {
                -2.0 * sums[0] / denominator
            }
        }
    }
}

/// Stops the run when the replicas' trainable weights are no longer identical (different GPU
/// models or libtorch builds on the ranks, or a bug): per-tensor sums compared across ranks.
fn check_replicas(
    dist: &Dist,
    trainable: &[Trainable],
    deferred: Option<&FastStream>,
    step: usize,
) -> Result<()> {
    if dist.size() == 1 {
        return Ok(());
    }
    // Each rank's deferred rows stand where its own share of the batches read them.
    if let Some(stream) = deferred {
        stream.flush();
    }
    let sums: Vec<f64> = trainable.iter().map(|t| t.tensor.sum(Kind::Double).double_value(&[])).collect();
    let (mut high, mut low) = (sums.clone(), sums.clone());
    dist.all_reduce(&mut high, Reduce::Max);
    dist.all_reduce(&mut low, Reduce::Min);
    if let Some(i) = (0..sums.len()).find(|&i| high[i] != low[i]) {
        bail!(crate::error::all_ranks_error(format!(
            "step {step}: the replicas diverged (tensor {} sums to {} on one rank and {} on another); \
             ranks must run the same GPU model and libtorch build",
            trainable[i].name, low[i], high[i]
        )));
    }
    Ok(())
}

/// The class scores of a batch (differentiable).
fn scores(model: &Model, data: &TaskData, b: &StepBatch) -> Result<Tensor> {
    let words = Tensor::from_slice(data.encoder.label_word_ids()).to_device(model.device);
    crate::eval::class_scores(
        model,
        data.config.few_shot_type,
        &words,
        &b.input_ids,
        &b.attention_mask,
        b.mask_pos.as_ref(),
    )
}

/// The summed cross-entropy of a batch over its class scores (differentiable).
fn loss_sum(model: &Model, data: &TaskData, b: &StepBatch) -> Result<Tensor> {
    Ok(summed_cross_entropy(&scores(model, data, b)?, &b.labels))
}

/// Σ cross-entropy of class `scores` `[B, C]` (in f32) against `labels` `[B]`.
fn summed_cross_entropy(scores: &Tensor, labels: &Tensor) -> Tensor {
    scores.to_kind(Kind::Float).cross_entropy_loss::<Tensor>(labels, None, tch::Reduction::Sum, -100, 0.0)
}

/// A content fingerprint of the trained tensors, to tie a trajectory to its initial weights.
pub fn fingerprint(tensors: &[Trainable]) -> String {
    crate::fingerprint::tensors(tensors.iter().map(|t| (t.name.as_str(), &t.tensor)))
}

/// Appends JSON lines, flushed at once (rank 0 only; other ranks hold `None`).
struct JsonLines(Option<std::fs::File>, PathBuf);

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

/// Re-applies a recorded step without forward passes: what the perturbations did to the weights
/// (the reference stream's rounding is part of its trajectory) and the update.
pub fn replay_step(
    trainable: &[Trainable],
    perturbations: &Perturbations,
    updater: &mut Updater,
    step: &RecordedStep,
    eps: f64,
    weight_decay: f64,
    rule: WeightDecay,
) {
    let directions = step.directions();
    for (seed, _) in &directions {
        perturbations.replay_direction(trainable, *seed, eps);
    }
    updater.apply(trainable, &directions, step.lr, weight_decay, rule);
}

/// The tensors `freeze` selects, as handles for the optimiser.
pub fn trainable(model: &Model, freeze: &FreezeRules) -> Vec<Trainable> {
    model
        .trainable(freeze)
        .into_iter()
        .map(|p| Trainable { name: p.name.clone(), tensor: p.tensor.shallow_clone() })
        .collect()
}

/// Set by SIGTERM or SIGUSR1 (Slurm's pre-emption signals): finish the step, flush, stop.
fn stop_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGUSR1] {
        signal_hook::flag::register(signal, Arc::clone(&flag)).context("installing the signal handler")?;
    }
    Ok(flag)
}

/// How a run ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Finished(Summary),
    /// Stopped by a signal after this many steps; `--resume` continues it.
    Stopped(usize),
}

/// Runs MeZO on `model` and `data`; with `resume`, first replays the run directory's trajectory
/// (no forward passes) and continues after its last step. Every rank returns the same outcome.
///
/// With the fast stream and plain ZO-SGD, rows that no forward pass read take their updates only
/// when the model is saved (`save_model`): without it, `model` is left with those rows as they
/// were, a saving for runs that report results only ([`FastStream::apply_deferring`]).
pub fn train_mezo(
    model: &Model,
    data: &mut TaskData,
    dist: &Dist,
    config: &TrainConfig,
    resume: bool,
) -> Result<Outcome> {
    if data.config.task.regression {
        bail!(InputError(format!(
            "training on the regression task {} is not supported",
            data.config.task.name
        )));
    }
    if config.steps == 0 || config.batch_size == 0 {
        bail!(InputError("--steps and --batch-size must be positive".into()));
    }
    let trainable = trainable(model, &config.freeze);
    if trainable.is_empty() {
        bail!(InputError("the freezing rules leave no parameter to train".into()));
    }
    let names: Vec<&String> = trainable.iter().map(|t| &t.name).collect();
    let header = serde_json::json!({
        "initial_fingerprint": fingerprint(&trainable), "seed": config.seed, "eps": config.eps,
        "weight_decay": config.weight_decay, "decay_rule": format!("{:?}", config.decay_rule), "trainable": names,
        "zo_optimizer": config.zo_optimizer, "rng": config.rng, "steps": config.steps,
    });
    let (recorded, mut trajectory) = if resume {
        let found = read_trajectory(&config.out_dir, TornTail::Repair)?;
        let mut expected = header.clone();
        if found.header.get("steps").is_none() {
            // Written before headers recorded the step count.
            expected.as_object_mut().expect("an object").remove("steps");
        }
        if found.header != expected {
            bail!(InputError(format!(
                "{}: the run was made with other initial weights or settings (seed, eps, weight decay, trainable \
                 tensors, rng) than this command gives",
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
        if dist.is_root() {
            std::fs::create_dir_all(&config.out_dir)
                .with_context(|| format!("creating {}", config.out_dir.display()))?;
        }
        (Vec::new(), TrajectoryWriter::create(dist, &config.out_dir, &header)?)
    };
    let mut metrics = JsonLines::open(dist, config.out_dir.join(run_dir::METRICS), resume)?;

    let mut seeds = StepSeeds::new(config.seed);
    let perturbations = Perturbations::new(config.rng, &trainable, config.paired_pass)?;
    let mut updater = Updater::new(config.zo_optimizer, config.rng, &trainable);
    if let Perturbations::Fast { stream, .. } = &perturbations {
        updater = updater.deferring_rows(stream);
    }
    let deferring = updater.deferred().cloned();
    let deferred = deferring.as_ref();
    // From here on every forward pass outside a direction's sees the deferred rows brought up to
    // date as it reads them.
    let _current = deferred.map(|stream| crate::model::nn::install_view(stream.current_view()));
    let mut sampler = BatchSampler::new(data.train.len(), config.batch_size, config.seed);
    let selection = format!("eval_{}", data.config.task.selection_metric());
    let mut best: Best = None;
    // Best dev so far of a resumed run, from its metrics log; its weights are taken during replay.
    let logged_best =
        if resume { best_logged_dev(&config.out_dir, &selection, recorded.len())? } else { None };
    for r in &recorded {
        let batch = sampler.next_batch();
        if data.config.few_shot_type == FewShotType::PromptDemo {
            // Demonstrations are drawn per training access: draw them again to stay on the stream.
            let mine = &batch[shard(batch.len(), dist.rank(), dist.size())];
            step_batch(model, data, mine, config.micro_batch_size)?;
        }
        for (recorded_seed, _) in r.directions() {
            let seed = seeds.next_seed();
            if seed != recorded_seed {
                bail!(
                    "step {}: the trajectory has seed {recorded_seed}, the run's stream gives {seed}",
                    r.step
                );
            }
        }
        replay_step(
            &trainable,
            &perturbations,
            &mut updater,
            r,
            config.eps,
            config.weight_decay,
            config.decay_rule,
        );
        if let Some((step, dev)) = &logged_best {
            if *step == r.step {
                best =
                    Some((*step, dev.clone(), Snapshot::take(&trainable, deferred, config, dist, "best")?));
            }
        }
    }
    let mut last_loss = f64::NAN;
    if resume {
        log::info!("resumed {} after replaying {} steps", config.out_dir.display(), recorded.len());
        // Killed between a step and its evaluation: evaluate now, as the uninterrupted run did.
        let last = recorded.len();
        let evaluated = logged_dev_steps(&config.out_dir)?.contains(&last);
        if last > 0 && config.evaluates_at(last) && !evaluated {
            evaluate_dev(model, data, dist, config, last, &trainable, deferred, &mut best, &mut metrics)?;
        }
        last_loss = logged_loss(&config.out_dir, last)?;
    }

    let stop = stop_flag()?;
    let progress = crate::logging::progress_bar(dist, config.steps as u64, "steps");
    progress.set_position(recorded.len() as u64);
    for step in recorded.len() + 1..=config.steps {
        let batch = sampler.next_batch();
        let by_directions = config.parallel == Parallel::Directions;
        // Data parallel: this rank's share; direction parallel: the whole batch on every rank.
        let rows: Vec<usize> = if by_directions {
            batch.clone()
        } else {
            batch[shard(batch.len(), dist.rank(), dist.size())].to_vec()
        };
        let step_data = step_batch(model, data, &rows, config.micro_batch_size)?;
        let n = if by_directions { dist.size() } else { config.zo_samples };
        let step_seeds: Vec<u64> = (0..n).map(|_| seeds.next_seed()).collect();
        let lr = config.lr_at(step);
        let mut results = vec![(0.0, 0.0); n];
        for (j, &seed) in step_seeds.iter().enumerate() {
            let mine = !by_directions || j == dist.rank();
            results[j] = perturbations.direction(&trainable, seed, config.eps, mine, |sides| {
                let mut sums = objective_sums(model, data, &step_data, config.objective, sides)?;
                if !by_directions {
                    dist.all_reduce(&mut sums, Reduce::Sum);
                }
                Ok(sums
                    .chunks(sums.len() / sides as usize)
                    .map(|s| objective_value(config.objective, s))
                    .collect())
            })?;
        }
        if by_directions {
            // Each rank evaluated one direction: gather (ℓ+, g) so that all apply all.
            let mut gathered: Vec<f64> = vec![0.0; 2 * n];
            gathered[2 * dist.rank()] = results[dist.rank()].0;
            gathered[2 * dist.rank() + 1] = results[dist.rank()].1;
            dist.all_reduce(&mut gathered, Reduce::Sum);
            results = gathered.chunks(2).map(|c| (c[0], c[1])).collect();
        }
        let directions: Vec<(u64, f64)> =
            step_seeds.iter().zip(&results).map(|(&s, &(_, g))| (s, g)).collect();
        let plus = results.iter().map(|r| r.0).sum::<f64>() / n as f64;
        let projected_grad = results.iter().map(|r| r.1).sum::<f64>() / n as f64;
        if !plus.is_finite() || !projected_grad.is_finite() {
            bail!(
                "step {step}: the objective is {plus} and the projected gradient {projected_grad}; the trajectory up \
                 to step {} is kept in {} (the weights of any of its steps replay from it); run again with other \
                 settings, e.g. a smaller --lr, in another --out",
                step - 1,
                config.out_dir.display()
            );
        }
        updater.apply(&trainable, &directions, lr, config.weight_decay, config.decay_rule);
        last_loss = plus;
        let record = if let [(seed, g)] = directions.as_slice() {
            serde_json::json!({"step": step, "seed": seed, "projected_grad": g, "lr": lr})
        } else {
            serde_json::json!({"step": step, "directions": directions, "lr": lr})
        };
        trajectory.record(&record)?;
        metrics.write(
            &serde_json::json!({"step": step, "loss": plus, "projected_grad": projected_grad, "lr": lr}),
        )?;
        if config.check_every > 0 && step % config.check_every == 0 {
            check_replicas(dist, &trainable, deferred, step)?;
        }
        progress.set_message(format!("loss {plus:.4}"));
        progress.inc(1);
        if config.evaluates_at(step) {
            evaluate_dev(model, data, dist, config, step, &trainable, deferred, &mut best, &mut metrics)?;
        }
        // Every rank stops after the same step, whichever of them got the signal.
        let mut stopping = [u8::from(stop.load(Ordering::Relaxed))];
        dist.all_reduce(&mut stopping, Reduce::Max);
        if stopping[0] != 0 && step < config.steps {
            progress.finish_and_clear();
            log::warn!("stopping after step {step} on a signal; continue with the same command and --resume");
            return Ok(Outcome::Stopped(step));
        }
    }
    progress.finish_and_clear();
    finish(model, data, dist, config, &trainable, deferred, best, last_loss, &mut metrics)
}

/// The end of a run: the final model saved, test evaluated with the best-dev weights,
/// results.json written.
#[allow(clippy::too_many_arguments)]
fn finish(
    model: &Model,
    data: &TaskData,
    dist: &Dist,
    config: &TrainConfig,
    trainable: &[Trainable],
    deferred: Option<&FastStream>,
    best: Best,
    last_loss: f64,
    metrics: &mut JsonLines,
) -> Result<Outcome> {
    if config.save_model {
        if let Some(stream) = deferred {
            stream.flush();
        }
        if dist.is_root() {
            model.save(&config.out_dir.join("model"), crate::model::MAX_SHARD_BYTES)?;
        }
    }
    let Some((best_step, best_dev, snapshot)) = best else {
        bail!(InputError(format!(
            "{}: no dev evaluation is logged for this run (its metrics log lost them)",
            config.out_dir.join(run_dir::METRICS).display()
        )));
    };
    // Test with the best-dev weights: swap them in, evaluate, swap the final weights back.
    let final_weights = Snapshot::take(trainable, deferred, config, dist, "final")?;
    snapshot.restore(trainable, deferred)?;
    let test = evaluate(model, data, &data.test, dist, config.eval_batch_size)?;
    final_weights.restore(trainable, deferred)?;
    dist.barrier();
    snapshot.discard(dist);
    final_weights.discard(dist);
    let summary = Summary { best_step, best_dev, test, final_train_loss: last_loss };
    metrics.write(&serde_json::json!({"best_step": best_step, "test": summary.test}))?;
    if dist.is_root() {
        let path = config.out_dir.join(run_dir::RESULTS);
        crate::fsio::write_atomic(&path, serde_json::to_string_pretty(&summary)?.as_bytes())?;
    }
    Ok(Outcome::Finished(summary))
}

/// The training loss logged for `step` in `metrics.jsonl` (NaN when it is not there).
fn logged_loss(run: &std::path::Path, step: usize) -> Result<f64> {
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
fn logged_dev_steps(run: &std::path::Path) -> Result<Vec<usize>> {
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
fn best_logged_dev(
    run: &std::path::Path,
    selection: &str,
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
        let score = *dev.get(selection).ok_or_else(|| bad(&format!("no {selection} in the dev metrics")))?;
        if step as usize <= steps && best.as_ref().is_none_or(|(_, b)| score > b[selection]) {
            best = Some((step as usize, dev));
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// A resumed run's metrics log, damaged anywhere: a value or an input error, never a panic.
        #[test]
        fn metrics_logs_read_or_refuse(lines in prop::collection::vec(prop_oneof![
            Just("{\"step\":4,\"dev\":{\"eval_acc\":0.5}}".to_string()),
            Just("{\"step\":4,\"dev\":{\"eval_f1\":0.5}}".to_string()),
            Just("{\"step\":8,\"dev\":{\"eval_acc\":\"high\"}}".to_string()),
            Just("{\"step\":4,\"loss\":0.7,\"lr\":0.001}".to_string()),
            Just("{\"step\":-1,\"dev\":[]}".to_string()),
            "[ -~]{0,30}",
        ], 0..8)) {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(super::run_dir::METRICS), lines.join("\n")).unwrap();
            match super::best_logged_dev(dir.path(), "eval_acc", 8) {
                Ok(best) => prop_assert!(best.is_none_or(|(step, dev)| step <= 8 && dev.contains_key("eval_acc"))),
                Err(e) => prop_assert_eq!(crate::error::exit_code(&e), 2),
            }
            let _ = super::logged_dev_steps(dir.path());
            let _ = super::logged_loss(dir.path(), 4);
        }
    }
}
