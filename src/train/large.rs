//! Training on MeZO's large-model tasks (docs/reference.md §9.5): the losses of the reference's
//! `large_models`, and dev and test evaluated as `mezo eval` evaluates them.
//!
//! Train and dev examples are encoded without demonstrations, generation tasks with their first
//! gold answer and its newline. Three losses, as the reference's flags choose them:
//!
//! - classification (`train_as_classification`): cross-entropy over the candidates, whose logits
//!   are their mean option log-probabilities;
//! - option LM (the default, `only_train_option`): the gold candidate's sequence, next-token
//!   cross-entropy on its option tokens only, a token mean over the whole batch;
//! - sequence LM (`only_train_option` false): the same on every token of that sequence.
//!
//! The first two skip every target equal to the pad id, as the reference's wrapped forward masks
//! them. MeZO can also score a batch by a metric: accuracy of the argmax candidate, or for SQuAD
//! and DROP the F1 of greedy generations (the reference's `non_diff`). Model selection, MeZO's
//! step and the run scripts' settings: docs/reference.md §9.5; deviations: §9.8.

use super::task::{Selection, Split, TrainTask};
use super::Objective;
use crate::data::batch::shard;
use crate::data::large::prompt::{encode_prompt, Mode, PromptTokenizer};
use crate::data::large::{Sample, Task, TaskKind};
use crate::dist::{Dist, Reduce};
use crate::error::InputError;
use crate::eval::large::{generate_answers, metric, predict, EvalConfig};
use crate::metrics;
use crate::model::cache::CausalLm;
use crate::model::Model;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// The training loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LargeLoss {
    /// Cross-entropy over the candidates' mean option log-probabilities.
    Classification,
    /// Next-token cross-entropy on the gold candidate's option tokens.
    Option,
    /// Next-token cross-entropy on every token of the gold candidate's sequence.
    Sequence,
}

/// Which dev value selects the weights test is evaluated with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelectBy {
    /// The training loss on dev, lowest wins (the reference's Trainer).
    Loss,
    /// The task's metric on dev, highest wins.
    Metric,
}

/// A large-model task's examples and how they are trained and evaluated.
pub struct LargeTask {
    pub task: Task,
    pub tokenizer: PromptTokenizer,
    pub train: Vec<Sample>,
    pub dev: Vec<Sample>,
    pub test: Vec<Sample>,
    pub loss: LargeLoss,
    pub select_by: SelectBy,
    pub eval: EvalConfig,
}

/// Sequences of one micro-batch, right-padded, and what of them is scored.
pub struct LargeBatch {
    ids: Tensor,
    mask: Tensor,
    /// Width of `ids`.
    width: i64,
    /// Per scored position: its sequence, its index in the flattened `[N·T]` positions, and the
    /// token it predicts.
    scored: Vec<(usize, i64, i64)>,
    sequences: usize,
    /// Classification: each example's first sequence, candidate count and gold candidate.
    groups: Vec<(usize, usize, usize)>,
    /// F1 objective: the prompts without their answers and the gold answers.
    prompts: Vec<Vec<i64>>,
    golds: Vec<Vec<String>>,
}

impl LargeTask {
    /// A fingerprint of the samples' contents (fields, candidates, golds) of the three splits.
    pub fn fingerprint(&self) -> String {
        let mut hash = crate::fingerprint::Fingerprint::new();
        for (split, samples) in [("train", &self.train), ("dev", &self.dev), ("test", &self.test)] {
            hash.field(split.as_bytes());
            for s in samples {
                hash.field(&(s.id as u64).to_le_bytes());
                for (name, value) in &s.fields {
                    hash.field(name.as_bytes()).field(value.as_bytes());
                }
                let labels = serde_json::json!([s.candidates, s.gold]).to_string();
                hash.field(labels.as_bytes());
            }
        }
        hash.hex()
    }

    fn lm<'a>(&self, model: &'a Model) -> Result<&'a dyn CausalLm, InputError> {
        model.causal_lm().ok_or_else(|| {
            InputError(format!(
                "{}: the large-model tasks need a causal LM (OPT, Llama)",
                model.source.display()
            ))
        })
    }

    /// The encoded micro-batch of `samples` for `loss`.
    fn batch(&self, samples: &[&Sample], loss: LargeLoss, device: Device) -> Result<LargeBatch, InputError> {
        let mut sequences: Vec<(Vec<i64>, usize)> = Vec::new();
        let mut groups = Vec::new();
        let (mut prompts, mut golds) = (Vec::new(), Vec::new());
        for &s in samples {
            let encoded =
                encode_prompt(self.task, &self.tokenizer, &[], s, Mode::WithGold, self.eval.prompt)?;
            let gold = s.correct_index().unwrap_or(0);
            if self.task.kind() == TaskKind::Generation {
                let (seq, n) = (&encoded.sequences[0], encoded.option_lens[0]);
                prompts.push(seq[..seq.len() - n.min(seq.len())].to_vec());
                golds.push(match &s.gold {
                    crate::data::large::Gold::Answers(a) => a.clone(),
                    _ => Vec::new(),
                });
            }
            match loss {
                LargeLoss::Classification => {
                    groups.push((sequences.len(), encoded.sequences.len(), gold));
                    sequences.extend(encoded.sequences.into_iter().zip(encoded.option_lens));
                }
                LargeLoss::Option => {
                    let n = encoded.option_lens[gold];
                    sequences.push((encoded.sequences.into_iter().nth(gold).expect("the gold candidate"), n));
                }
                LargeLoss::Sequence => {
                    sequences.push((encoded.sequences.into_iter().nth(gold).expect("the gold candidate"), 0));
                }
            }
        }
        let width = sequences.iter().map(|(s, _)| s.len()).max().unwrap_or(1).max(1);
        let mut ids = Vec::with_capacity(sequences.len() * width);
        let mut mask = Vec::with_capacity(sequences.len() * width);
        let mut scored = Vec::new();
        let pad = self.tokenizer.pad;
        for (r, (tokens, option_len)) in sequences.iter().enumerate() {
            let last = tokens.len().saturating_sub(1);
            // The reference's `[-option_len:]`: everything for 0.
            let first = if *option_len == 0 { 0 } else { last.saturating_sub(*option_len) };
            for pos in first..last {
                // The reference's wrapped forward (classification, option loss) masks every
                // target equal to the pad id; the plain LM loss only the padding.
                if loss == LargeLoss::Sequence || tokens[pos + 1] != pad {
                    scored.push((r, (r * width + pos) as i64, tokens[pos + 1]));
                }
            }
            ids.extend(tokens.iter().copied().chain(std::iter::repeat_n(pad, width - tokens.len())));
            mask.extend(
                std::iter::repeat_n(1i64, tokens.len()).chain(std::iter::repeat_n(0, width - tokens.len())),
            );
        }
        let shape = [sequences.len() as i64, width as i64];
        Ok(LargeBatch {
            ids: Tensor::from_slice(&ids).view(shape).to_device(device),
            mask: Tensor::from_slice(&mask).view(shape).to_device(device),
            width: width as i64,
            scored,
            sequences: sequences.len(),
            groups,
            prompts,
            golds,
        })
    }

    /// Per side, the log-probabilities of the scored tokens `[sides · M]` and each sequence's
    /// sum of them `[sides · N]` (differentiable).
    fn token_log_probs(&self, model: &Model, b: &LargeBatch, sides: i64) -> Result<(Tensor, Tensor)> {
        let lm = self.lm(model)?;
        let device = model.device;
        let (ids, mask) = if sides == 1 {
            (b.ids.shallow_clone(), b.mask.shallow_clone())
        } else {
            (b.ids.repeat([sides, 1]), b.mask.repeat([sides, 1]))
        };
        let hidden = lm.hidden_states(&ids, &mask, None);
        let h = hidden.size()[2];
        let n = b.sequences as i64;
        let per_side = n * b.width;
        let mut positions = Vec::with_capacity(b.scored.len() * sides as usize);
        let mut targets = Vec::with_capacity(positions.capacity());
        let mut owners = Vec::with_capacity(positions.capacity());
        for s in 0..sides {
            for &(r, pos, target) in &b.scored {
                positions.push(s * per_side + pos);
                targets.push(target);
                owners.push(s * n + r as i64);
            }
        }
        let to = |v: &[i64]| Tensor::from_slice(v).to_device(device);
        // The head on the scored positions only; side s's positions are the s-th part, as the
        // weight view of a doubled batch reads them.
        let at = hidden.reshape([-1, h]).index_select(0, &to(&positions));
        let log_probs = lm.logits(&at).to_kind(Kind::Float).log_softmax(-1, Kind::Float);
        let picked = log_probs.gather(1, &to(&targets).view([-1, 1]), false).view([-1]);
        let sums = Tensor::zeros([sides * n], (Kind::Float, device)).index_add(0, &to(&owners), &picked);
        Ok((picked, sums))
    }

    /// The LM head's inputs at the option positions of `samples`' gold candidates `[M, H]` and
    /// the tokens they predict: the rows the reference's linear probe is fitted on (pad-id
    /// targets skipped as in the option loss).
    pub fn option_features(&self, model: &Model, samples: &[&Sample]) -> Result<(Tensor, Vec<i64>)> {
        let lm = self.lm(model)?;
        let b = self.batch(samples, LargeLoss::Option, model.device)?;
        let _guard = tch::no_grad_guard();
        let hidden = lm.hidden_states(&b.ids, &b.mask, None);
        let h = hidden.size()[2];
        let positions: Vec<i64> = b.scored.iter().map(|&(_, pos, _)| pos).collect();
        let at =
            hidden.reshape([-1, h]).index_select(0, &Tensor::from_slice(&positions).to_device(model.device));
        Ok((at, b.scored.iter().map(|&(_, _, target)| target).collect()))
    }

    /// Each sequence's token count, per side.
    fn counts(b: &LargeBatch) -> Vec<f64> {
        let mut counts = vec![0.0; b.sequences];
        for &(r, _, _) in &b.scored {
            counts[r] += 1.0;
        }
        counts
    }

    /// Σ cross-entropy over the candidates of each example, per side `[sides]`
    /// (differentiable), and the argmax candidate of each example per side.
    fn classification(&self, model: &Model, b: &LargeBatch, sides: i64) -> Result<(Tensor, Vec<Vec<usize>>)> {
        let (_, sums) = self.token_log_probs(model, b, sides)?;
        let counts = Tensor::from_slice(&Self::counts(b)).to_kind(Kind::Float).to_device(model.device);
        let means = sums.view([sides, -1]) / counts.view([1, -1]);
        let mut losses = Vec::new();
        let mut chosen = Vec::new();
        for s in 0..sides {
            let side = means.get(s);
            let mut loss = Tensor::zeros([], (Kind::Float, model.device));
            let mut picks = Vec::new();
            for &(first, k, gold) in &b.groups {
                let logits = side.narrow(0, first as i64, k as i64);
                loss += logits.logsumexp([0], false) - logits.get(gold as i64);
                picks.push(first_argmax(&Vec::<f64>::try_from(
                    logits.to_kind(Kind::Double).to_device(Device::Cpu),
                )?));
            }
            losses.push(loss);
            chosen.push(picks);
        }
        Ok((Tensor::stack(&losses, 0), chosen))
    }

    /// (Σ loss, terms) of a batch per side, without gradients.
    fn loss_sums(&self, model: &Model, b: &LargeBatch, sides: i64) -> Result<Vec<f64>> {
        let _guard = tch::no_grad_guard();
        let mut out = Vec::new();
        match self.loss {
            LargeLoss::Classification => {
                let (losses, _) = self.classification(model, b, sides)?;
                for v in Vec::<f64>::try_from(losses.to_kind(Kind::Double).to_device(Device::Cpu))? {
                    out.extend([v, b.groups.len() as f64]);
                }
            }
            LargeLoss::Option | LargeLoss::Sequence => {
                let (picked, _) = self.token_log_probs(model, b, sides)?;
                let per_side = picked.view([sides, -1]).sum_dim_intlist([1].as_slice(), false, Kind::Double);
                for v in Vec::<f64>::try_from(per_side.to_device(Device::Cpu))? {
                    out.extend([-v, b.scored.len() as f64]);
                }
            }
        }
        Ok(out)
    }

    fn samples(&self, split: Split) -> &[Sample] {
        match split {
            Split::Dev => &self.dev,
            Split::Test => &self.test,
        }
    }

    /// The reference Trainer's `eval_loss`: the mean over batches of `batch_size` (in dev
    /// order) of each batch's loss, weighted by its examples. Batches are split over ranks.
    fn eval_loss(&self, model: &Model, samples: &[Sample], dist: &Dist, batch_size: usize) -> Result<f64> {
        let batches: Vec<&[Sample]> = samples.chunks(batch_size.max(1)).collect();
        let mut total = [0.0];
        for chunk in &batches[shard(batches.len(), dist.rank(), dist.size())] {
            let refs: Vec<&Sample> = chunk.iter().collect();
            let sums = self.loss_sums(model, &self.batch(&refs, self.loss, model.device)?, 1)?;
            total[0] += sums[0] / sums[1] * chunk.len() as f64;
        }
        dist.all_reduce(&mut total, Reduce::Sum);
        Ok(total[0] / samples.len() as f64)
    }
}

/// numpy's argmax over finite values: the first maximum.
fn first_argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

impl TrainTask for LargeTask {
    type Batch = LargeBatch;

    fn check(&self, objective: Objective, paired_pass: bool) -> Result<(), InputError> {
        let generation = self.task.kind() == TaskKind::Generation;
        match objective {
            Objective::Loss => Ok(()),
            Objective::Accuracy if generation => Err(InputError(format!(
                "--objective accuracy scores candidates; {} is answered by generation: use --objective f1",
                self.task.name()
            ))),
            Objective::Accuracy if self.loss != LargeLoss::Classification => Err(InputError(
                "--objective accuracy compares the candidates: add --train-as-classification".into(),
            )),
            Objective::Accuracy => Ok(()),
            Objective::F1 if !generation => Err(InputError(format!(
                "--objective f1 is the F1 of generated answers (SQuAD, DROP); {} is scored by accuracy",
                self.task.name()
            ))),
            Objective::F1 if paired_pass => Err(InputError(
                "--objective f1 generates with each side's weights in turn: add --no-paired-pass".into(),
            )),
            Objective::F1 => Ok(()),
        }
    }

    fn train_len(&self) -> usize {
        self.train.len()
    }

    fn selection(&self) -> Selection {
        match self.select_by {
            SelectBy::Loss => Selection { key: "eval_loss".into(), higher_is_better: false },
            SelectBy::Metric => {
                Selection { key: format!("eval_{}", self.task.metric()), higher_is_better: true }
            }
        }
    }

    fn step_batch(&mut self, model: &Model, rows: &[usize], micro: usize) -> Result<Vec<LargeBatch>> {
        let samples: Vec<&Sample> = rows.iter().map(|&i| &self.train[i]).collect();
        let size = if micro == 0 { samples.len().max(1) } else { micro };
        Ok(samples.chunks(size).map(|c| self.batch(c, self.loss, model.device)).collect::<Result<_, _>>()?)
    }

    fn replay_batch(&mut self, _model: &Model, _rows: &[usize], _micro: usize) -> Result<()> {
        Ok(())
    }

    fn objective_sums(
        &self,
        model: &Model,
        batches: &[LargeBatch],
        objective: Objective,
        sides: i64,
    ) -> Result<Vec<f64>> {
        let mut total = vec![0.0; 2 * sides as usize];
        for b in batches {
            let sums = match objective {
                Objective::Loss => self.loss_sums(model, b, sides)?,
                Objective::Accuracy => {
                    let _guard = tch::no_grad_guard();
                    let (_, chosen) = self.classification(model, b, sides)?;
                    chosen
                        .iter()
                        .flat_map(|picks| {
                            let right = picks.iter().zip(&b.groups).filter(|(p, g)| **p == g.2).count();
                            [right as f64, picks.len() as f64]
                        })
                        .collect()
                }
                Objective::F1 => {
                    let lm = self.lm(model)?;
                    let answers = generate_answers(model, lm, &self.tokenizer, &b.prompts, &self.eval)?;
                    let f1: f64 = answers.iter().zip(&b.golds).map(|(a, g)| metrics::squad_f1(a, g)).sum();
                    vec![f1, answers.len() as f64]
                }
            };
            for (t, v) in total.iter_mut().zip(sums) {
                *t += v;
            }
        }
        Ok(total)
    }

    fn objective_value(&self, objective: Objective, sums: &[f64]) -> f64 {
        match objective {
            Objective::Loss => sums[0] / sums[1],
            Objective::Accuracy | Objective::F1 => -sums[0] / sums[1],
        }
    }

    fn loss_sum(&self, model: &Model, b: &LargeBatch) -> Result<Tensor> {
        Ok(match self.loss {
            LargeLoss::Classification => self.classification(model, b, 1)?.0.squeeze(),
            LargeLoss::Option | LargeLoss::Sequence => -self.token_log_probs(model, b, 1)?.0.sum(Kind::Float),
        })
    }

    fn loss_terms(&self, b: &LargeBatch) -> f64 {
        match self.loss {
            LargeLoss::Classification => b.groups.len() as f64,
            LargeLoss::Option | LargeLoss::Sequence => b.scored.len() as f64,
        }
    }

    fn evaluate(
        &self,
        model: &Model,
        split: Split,
        dist: &Dist,
        batch_size: usize,
    ) -> Result<BTreeMap<String, f64>> {
        let samples = self.samples(split);
        let queries: Vec<_> = samples.iter().map(|s| (s, Vec::new())).collect();
        let predictions = predict(model, &self.tokenizer, self.task, &queries, &self.eval, dist)?;
        let mut out = BTreeMap::new();
        out.insert(format!("eval_{}", self.task.metric()), metric(self.task, &predictions));
        if split == Split::Dev {
            out.insert("eval_loss".into(), self.eval_loss(model, samples, dist, batch_size)?);
        }
        Ok(out)
    }
}
