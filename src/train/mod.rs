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
use crate::model::{Body, FreezeRules, Model};
use crate::optim::zo::{self, StepSeeds, Trainable, WeightDecay};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LrSchedule {
    Constant,
    /// η_t = η (T − t) / T.
    Linear,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainConfig {
    pub steps: usize,
    /// Global batch size, split over the ranks.
    pub batch_size: usize,
    pub lr: f64,
    pub eps: f64,
    pub weight_decay: f64,
    #[serde(skip)]
    pub decay_rule: WeightDecay,
    pub lr_schedule: LrSchedule,
    /// Seeds the step seeds and the batch sampler (independent streams).
    pub seed: u32,
    /// Evaluate on dev every this many steps (and after the last); 0: only after the last.
    pub eval_every: usize,
    pub eval_batch_size: usize,
    #[serde(skip)]
    pub freeze: FreezeRules,
    pub out_dir: PathBuf,
    pub save_model: bool,
}

/// What a run ends with.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub best_step: usize,
    pub best_dev: BTreeMap<String, f64>,
    pub test: BTreeMap<String, f64>,
    pub final_train_loss: f64,
}

/// Σ loss and count of this rank's share of a batch: cross-entropy over the class scores.
fn loss_sums(model: &Model, data: &mut TaskData, rows: &[usize]) -> Result<(f64, f64)> {
    if rows.is_empty() {
        return Ok((0.0, 0.0));
    }
    let _guard = tch::no_grad_guard();
    let features = rows.iter().map(|&i| data.train_feature(i)).collect::<Result<Vec<_>, _>>()?;
    let batch_rows: Vec<_> = features.iter().map(|f| (&f.encoded, f.label)).collect();
    let b = collate(&batch_rows, data.encoder.special().pad);
    let device = model.device;
    let (ids, mask) = (b.input_ids.to_device(device), b.attention_mask.to_device(device));
    let words = Tensor::from_slice(data.encoder.label_word_ids()).to_device(device);
    let scores = match (&model.body, data.config.few_shot_type) {
        (Body::Encoder(e), FewShotType::Finetune) => e.classifier_logits(&ids, &mask)?,
        (Body::Encoder(e), _) => e.label_scores(
            &ids,
            &mask,
            &b.mask_pos.expect("prompt features have mask positions").to_device(device),
            &words,
        ),
        (_, FewShotType::Finetune) => {
            bail!(InputError("finetune mode needs an encoder model (RoBERTa/BERT)".into()))
        }
        _ => {
            let lm = model.causal_lm().expect("decoder bodies are causal LMs");
            let logits = lm.forward(&ids, &mask, None);
            let v = logits.size()[2];
            let pos = b.mask_pos.expect("prompt features have a scoring position").to_device(device);
            logits
                .gather(1, &pos.view([-1, 1, 1]).expand([-1, 1, v], false), false)
                .squeeze_dim(1)
                .index_select(1, &words)
        }
    };
    let labels = b.labels.to_device(device);
    let sum = scores.to_kind(Kind::Float).cross_entropy_loss::<Tensor>(
        &labels,
        None,
        tch::Reduction::Sum,
        -100,
        0.0,
    );
    Ok((sum.double_value(&[]), rows.len() as f64))
}

/// A content fingerprint of tensors (FNV-1a over their bytes), to tie a trajectory to its weights.
pub fn fingerprint(tensors: &[Trainable]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for t in tensors {
        let host = t.tensor.to_device(tch::Device::Cpu).contiguous();
        let mut bytes = vec![0u8; host.numel() * host.kind().elt_size_in_bytes()];
        host.copy_data_u8(&mut bytes, host.numel());
        for b in t.name.as_bytes().iter().chain(&bytes) {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// Appends JSON lines, flushed at once (rank 0 only; other ranks hold `None`).
struct JsonLines(Option<std::fs::File>);

impl JsonLines {
    fn create(dist: &Dist, path: PathBuf) -> Result<JsonLines> {
        if !dist.is_root() {
            return Ok(JsonLines(None));
        }
        let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(JsonLines(Some(file)))
    }

    fn write(&mut self, value: &serde_json::Value) -> Result<()> {
        if let Some(f) = &mut self.0 {
            writeln!(f, "{value}")?;
            f.flush()?;
        }
        Ok(())
    }
}

/// Runs MeZO on `model` and `data`; every rank returns the same summary.
pub fn train_mezo(model: &Model, data: &mut TaskData, dist: &Dist, config: &TrainConfig) -> Result<Summary> {
    if data.config.task.regression {
        bail!(InputError(format!(
            "training on the regression task {} is not supported",
            data.config.task.name
        )));
    }
    if config.steps == 0 || config.batch_size == 0 {
        bail!(InputError("--steps and --batch-size must be positive".into()));
    }
    let trainable: Vec<Trainable> = model
        .trainable(&config.freeze)
        .into_iter()
        .map(|p| Trainable { name: p.name.clone(), tensor: p.tensor.shallow_clone() })
        .collect();
    if trainable.is_empty() {
        bail!(InputError("the freezing rules leave no parameter to train".into()));
    }
    if dist.is_root() {
        std::fs::create_dir_all(&config.out_dir)
            .with_context(|| format!("creating {}", config.out_dir.display()))?;
        let resolved = serde_json::json!({
            "train": config, "task": data.config.task.name, "model": model.source, "model_type": model.model_type,
            "dtype": format!("{:?}", model.dtype), "few_shot_type": format!("{:?}", data.config.few_shot_type),
            "template": data.config.template, "mapping": data.config.mapping, "lengths": format!("{:?}", data.config.lengths),
            "data_dir": data.config.data_dir, "ranks": dist.size(), "optimizer": "mezo", "rng": "reference",
            "trainable_tensors": trainable.len(), "trainable_values": trainable.iter().map(|t| t.tensor.numel()).sum::<usize>(),
        });
        std::fs::write(config.out_dir.join("config.json"), serde_json::to_string_pretty(&resolved)?)?;
    }
    let mut metrics = JsonLines::create(dist, config.out_dir.join("metrics.jsonl"))?;
    let mut trajectory = JsonLines::create(dist, config.out_dir.join("trajectory.jsonl"))?;
    trajectory.write(&serde_json::json!({
        "initial_fingerprint": fingerprint(&trainable), "seed": config.seed, "eps": config.eps,
        "weight_decay": config.weight_decay, "trainable": trainable.iter().map(|t| &t.name).collect::<Vec<_>>(),
    }))?;

    let mut seeds = StepSeeds::new(config.seed);
    let mut sampler = BatchSampler::new(data.train.len(), config.batch_size, config.seed);
    let selection = format!("eval_{}", data.config.task.selection_metric());
    let mut best: Option<(usize, BTreeMap<String, f64>, Vec<Tensor>)> = None;
    let progress = crate::logging::progress_bar(dist, config.steps as u64, "steps");
    let mut last_loss = f64::NAN;
    for step in 1..=config.steps {
        let batch = sampler.next_batch();
        let mine: Vec<usize> = batch[shard(batch.len(), dist.rank(), dist.size())].to_vec();
        let seed = seeds.next_seed();
        let lr = match config.lr_schedule {
            LrSchedule::Constant => config.lr,
            LrSchedule::Linear => config.lr * (config.steps - (step - 1)) as f64 / config.steps as f64,
        };
        let mut evaluations = 0;
        let (plus, projected_grad) =
            zo::step(&trainable, seed, config.eps, lr, config.weight_decay, config.decay_rule, || {
                let (sum, count) = loss_sums(model, data, &mine)?;
                let mut sums = [sum, count];
                dist.all_reduce(&mut sums, Reduce::Sum);
                evaluations += 1;
                Ok(sums[0] / sums[1])
            })?;
        if !plus.is_finite() || !projected_grad.is_finite() {
            bail!(
                "step {step}: the loss is {plus} and the projected gradient {projected_grad}; the trajectory up to step {} \
                 is in {}",
                step - 1,
                config.out_dir.join("trajectory.jsonl").display()
            );
        }
        debug_assert_eq!(evaluations, 2);
        last_loss = plus;
        trajectory.write(
            &serde_json::json!({"step": step, "seed": seed, "projected_grad": projected_grad, "lr": lr}),
        )?;
        metrics.write(
            &serde_json::json!({"step": step, "loss": plus, "projected_grad": projected_grad, "lr": lr}),
        )?;
        progress.set_message(format!("loss {plus:.4}"));
        progress.inc(1);
        if (config.eval_every > 0 && step % config.eval_every == 0) || step == config.steps {
            let dev = evaluate(model, data, &data.dev, dist, config.eval_batch_size)?;
            metrics.write(&serde_json::json!({"step": step, "dev": dev}))?;
            log::info!(
                "step {step}: dev {selection} {:.4}",
                dev.get(&selection).copied().unwrap_or(f64::NAN)
            );
            let better = best.as_ref().is_none_or(|(_, b, _)| dev[&selection] > b[&selection]);
            if better {
                let snapshot = trainable.iter().map(|t| t.tensor.copy()).collect();
                best = Some((step, dev, snapshot));
            }
        }
    }
    progress.finish_and_clear();
    if config.save_model && dist.is_root() {
        model.save(&config.out_dir.join("model"), crate::model::MAX_SHARD_BYTES)?;
    }
    let (best_step, best_dev, snapshot) = best.expect("the last step always evaluates");
    // Test with the best-dev weights: swap them in, evaluate, swap the final weights back.
    let final_weights: Vec<Tensor> = trainable.iter().map(|t| t.tensor.copy()).collect();
    let restore = |weights: &[Tensor]| {
        let _guard = tch::no_grad_guard();
        for (t, w) in trainable.iter().zip(weights) {
            t.tensor.shallow_clone().copy_(w);
        }
    };
    restore(&snapshot);
    let test = evaluate(model, data, &data.test, dist, config.eval_batch_size)?;
    restore(&final_weights);
    let summary = Summary { best_step, best_dev, test, final_train_loss: last_loss };
    metrics.write(&serde_json::json!({"best_step": best_step, "test": summary.test}))?;
    if dist.is_root() {
        let path = config.out_dir.join("results.json");
        std::fs::write(&path, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(summary)
}
