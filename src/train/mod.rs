//! The training loop: MeZO steps on data-parallel ranks, evaluation on dev every so many steps,
//! the best-dev weights kept and used for test, and the run directory.
//!
//! Two objects do the work: the optimiser ([`crate::optim::mezo::Mezo`], or libtorch's AdamW/SGD
//! in `first_order`) changes the weights; the run (`run::Run`) writes what happens to them and
//! keeps copies. The loop in [`train_mezo`] only draws batches and seeds, asks the optimiser for
//! each direction's losses, and hands each step to both.
//!
//! Data parallelism: all ranks draw the same global batches (one seeded sampler each) and take
//! their own contiguous share; per step one all-reduce of (Σℓ+, Σℓ−, count) gives every rank the
//! same projected gradient, so every rank applies the same update and no tensor crosses ranks.
//!
//! Run directory (written by rank 0; [`run_dir`] decides whether a command may write it):
//! `config.json` (the resolved run config), `metrics.jsonl` (one object per step and per
//! evaluation), `trajectory.jsonl` (a fingerprint of the initial trainable weights, then per step
//! the seed, projected gradient and learning rate, each line checksummed and synced: the run
//! resumes and replays from it, `trajectory`), `results.json` (best dev and its test metrics),
//! and `model/` (the final weights, a Hugging Face directory) with `save_model`.

use crate::data::batch::{shard, BatchSampler};
use crate::dist::{Dist, Reduce};
use crate::error::InputError;
use crate::model::{FreezeRules, Model};
use crate::optim::mezo::{Mezo, MezoSettings};
use crate::optim::zo::{Rng, StepSeeds, ZoOptimizer};
use crate::optim::{Trainable, Trained, WeightDecay};
use anyhow::{bail, Context, Result};
use run::Seconds;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tch::Kind;

mod first_order;
pub mod large;
mod objective;
mod run;
pub mod run_dir;
pub mod task;
mod trajectory;
pub use first_order::{train_first_order, FirstOrder};
pub use run::Stash;
pub use task::{Selection, Split, TrainTask};
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

/// Stops the run when the replicas' trainable weights are no longer identical (different GPU
/// models or libtorch builds on the ranks, or a bug): per-tensor sums compared across ranks.
fn check_replicas(dist: &Dist, trained: &dyn Trained, step: usize) -> Result<()> {
    if dist.size() == 1 {
        return Ok(());
    }
    // Each rank's pending rows stand where its own share of the batches read them.
    trained.flush();
    let trainable = trained.params();
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

/// A content fingerprint of the trained tensors, to tie a trajectory to its initial weights.
pub fn fingerprint(tensors: &[Trainable]) -> String {
    crate::fingerprint::tensors(tensors.iter().map(|t| (t.name.as_str(), &t.tensor)))
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

impl TrainConfig {
    /// What MeZO's optimiser is built from.
    pub fn mezo_settings(&self) -> MezoSettings {
        MezoSettings {
            rng: self.rng,
            optimizer: self.zo_optimizer,
            paired_pass: self.paired_pass,
            eps: self.eps,
            weight_decay: self.weight_decay,
            decay: self.decay_rule,
        }
    }
}

/// The first line of a trajectory: what its steps can be replayed onto.
fn trajectory_header(config: &TrainConfig, trainable: &[Trainable]) -> serde_json::Value {
    let names: Vec<&String> = trainable.iter().map(|t| &t.name).collect();
    serde_json::json!({
        "initial_fingerprint": fingerprint(trainable), "seed": config.seed, "eps": config.eps,
        "weight_decay": config.weight_decay, "decay_rule": format!("{:?}", config.decay_rule), "trainable": names,
        "zo_optimizer": config.zo_optimizer, "rng": config.rng, "steps": config.steps,
    })
}

/// Runs MeZO on `model` and `data`; with `resume`, first replays the run directory's trajectory
/// (no forward passes) and continues after its last step. Every rank returns the same outcome.
///
/// With the fast stream and plain ZO-SGD, rows that no forward pass read take their updates only
/// when the model is saved (`save_model`): without it, `model` is left with those rows as they
/// were, a saving for runs that report results only
/// ([`crate::optim::fast::FastStream::apply_deferring`]).
pub fn train_mezo<T: TrainTask>(
    model: &Model,
    data: &mut T,
    dist: &Dist,
    config: &TrainConfig,
    resume: bool,
) -> Result<Outcome> {
    data.check(config.objective, config.paired_pass)?;
    if config.steps == 0 || config.batch_size == 0 {
        bail!(InputError("--steps and --batch-size must be positive".into()));
    }
    let trainable = trainable(model, &config.freeze);
    if trainable.is_empty() {
        bail!(InputError("the freezing rules leave no parameter to train".into()));
    }
    let header = trajectory_header(config, &trainable);
    let selection = data.selection();
    let (mut run, recorded) = run::Run::mezo(dist, config, &header, resume, selection.clone())?;
    let mut optimiser = Mezo::new(trainable, config.mezo_settings())?;
    // From here on every forward pass outside a direction's sees pending rows brought up to date.
    let _current = optimiser.current_view();
    let mut seeds = StepSeeds::new(config.seed);
    let mut sampler = BatchSampler::new(data.train_len(), config.batch_size, config.seed);

    let mut last_loss = f64::NAN;
    if resume {
        // Best dev so far, from the metrics log; its weights are taken when the replay passes it.
        let logged_best = run::best_logged_dev(&config.out_dir, &selection, recorded.len())?;
        for r in &recorded {
            let batch = sampler.next_batch();
            let mine = &batch[shard(batch.len(), dist.rank(), dist.size())];
            data.replay_batch(model, mine, config.micro_batch_size)?;
            let directions = r.directions();
            for (recorded_seed, _) in &directions {
                let seed = seeds.next_seed();
                if seed != *recorded_seed {
                    bail!(
                        "step {}: the trajectory has seed {recorded_seed}, the run's stream gives {seed}",
                        r.step
                    );
                }
            }
            optimiser.replay(&directions, r.lr);
            if let Some((step, dev)) = logged_best.as_ref().filter(|(step, _)| *step == r.step) {
                run.stash_best(*step, dev.clone(), &optimiser)?;
            }
        }
        log::info!("resumed {} after replaying {} steps", config.out_dir.display(), recorded.len());
        // Killed between a step and its evaluation: evaluate now, as the uninterrupted run did.
        let last = recorded.len();
        if last > 0 && config.evaluates_at(last) && !run::logged_dev_steps(&config.out_dir)?.contains(&last) {
            run.evaluate_dev(model, data, last, &optimiser)?;
        }
        last_loss = run::logged_loss(&config.out_dir, last)?;
    }

    let stop = stop_flag()?;
    let progress = crate::logging::progress_bar(dist, config.steps as u64, "steps");
    progress.set_position(recorded.len() as u64);
    let by_directions = config.parallel == Parallel::Directions;
    for step in recorded.len() + 1..=config.steps {
        let mut spent = Seconds::default();
        let step_started = Instant::now();
        let batch = sampler.next_batch();
        // Data parallel: this rank's share; direction parallel: the whole batch on every rank.
        let rows: Vec<usize> = if by_directions {
            batch.clone()
        } else {
            batch[shard(batch.len(), dist.rank(), dist.size())].to_vec()
        };
        let step_data = data.step_batch(model, &rows, config.micro_batch_size)?;
        spent.add("batch", step_started);
        let n = if by_directions { dist.size() } else { config.zo_samples };
        let step_seeds: Vec<u64> = (0..n).map(|_| seeds.next_seed()).collect();
        let mut results = vec![(0.0, 0.0); n];
        for (j, &seed) in step_seeds.iter().enumerate() {
            let mine = !by_directions || j == dist.rank();
            results[j] = optimiser.direction(seed, mine, |sides| {
                let clock = Instant::now();
                let mut sums = data.objective_sums(model, &step_data, config.objective, sides)?;
                spent.add("forward", clock);
                if !by_directions {
                    let clock = Instant::now();
                    dist.all_reduce(&mut sums, Reduce::Sum);
                    spent.add("collective", clock);
                }
                Ok(sums
                    .chunks(sums.len() / sides as usize)
                    .map(|s| data.objective_value(config.objective, s))
                    .collect())
            })?;
        }
        if by_directions {
            // Each rank evaluated one direction: gather (ℓ+, g) so that all apply all.
            let clock = Instant::now();
            let mut gathered: Vec<f64> = vec![0.0; 2 * n];
            gathered[2 * dist.rank()] = results[dist.rank()].0;
            gathered[2 * dist.rank() + 1] = results[dist.rank()].1;
            dist.all_reduce(&mut gathered, Reduce::Sum);
            results = gathered.chunks(2).map(|c| (c[0], c[1])).collect();
            spent.add("collective", clock);
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
        let lr = config.lr_at(step);
        let clock = Instant::now();
        optimiser.apply(&directions, lr);
        spent.add("update", clock);
        last_loss = plus;
        // The forward passes' time includes forming the perturbed weights they read.
        spent.add("step", step_started);
        run.record_step(step, &directions, lr, plus, projected_grad, spent)?;
        if config.check_every > 0 && step % config.check_every == 0 {
            check_replicas(dist, &optimiser, step)?;
        }
        progress.set_message(format!("loss {plus:.4}"));
        progress.inc(1);
        if config.evaluates_at(step) {
            run.evaluate_dev(model, data, step, &optimiser)?;
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
    run.finish(model, data, &optimiser, last_loss)
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
            let selection = super::Selection { key: "eval_acc".into(), higher_is_better: true };
            match super::run::best_logged_dev(dir.path(), &selection, 8) {
                Ok(best) => prop_assert!(best.is_none_or(|(step, dev)| step <= 8 && dev.contains_key(&selection.key))),
                Err(e) => prop_assert_eq!(crate::error::exit_code(&e), 2),
            }
            let _ = super::run::logged_dev_steps(dir.path());
            let _ = super::run::logged_loss(dir.path(), 4);
        }
    }
}
