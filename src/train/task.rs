//! What the training loops need from a task's data, whichever family it is: LM-BFF's prompt
//! tasks ([`TaskData`]) or MeZO's large-model tasks ([`super::large::LargeTask`]). The loops draw
//! rows of the train set, ask for their batches, score them by an objective (as sums that ranks
//! add up) and evaluate dev and test; how a batch is encoded and scored is the task's business.

use super::objective;
use super::Objective;
use crate::data::dataset::{FewShotType, TaskData};
use crate::dist::Dist;
use crate::error::InputError;
use crate::model::Model;
use anyhow::Result;
use std::collections::BTreeMap;
use tch::Tensor;

/// Which dev metric picks the weights test is evaluated with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// A key of the dev metrics, e.g. `eval_acc` or `eval_loss`.
    pub key: String,
    pub higher_is_better: bool,
}

impl Selection {
    /// Whether `score` beats `best`.
    pub fn better(&self, score: f64, best: f64) -> bool {
        if self.higher_is_better {
            score > best
        } else {
            score < best
        }
    }
}

/// The evaluated splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Dev,
    Test,
}

/// A task's data as the training loops use it.
pub trait TrainTask {
    /// One micro-batch of a rank's share of a step's batch, encoded once and scored by every
    /// direction of the step.
    type Batch;

    /// Refuses what the task cannot be trained with (an objective it has no value for, a
    /// regression task).
    fn check(&self, objective: Objective, paired_pass: bool) -> Result<(), InputError>;

    /// Examples the batch sampler draws rows of.
    fn train_len(&self) -> usize;

    fn selection(&self) -> Selection;

    /// The micro-batches (at most `micro` examples each; 0: one) of train `rows`.
    fn step_batch(&mut self, model: &Model, rows: &[usize], micro: usize) -> Result<Vec<Self::Batch>>;

    /// What drawing the batch of `rows` does to the task's random streams, without the batch: a
    /// resumed run replays it to stay on the streams of the uninterrupted run.
    fn replay_batch(&mut self, model: &Model, rows: &[usize], micro: usize) -> Result<()>;

    /// The objective's sums over `batches`, one set per side of the doubled batch (`sides` 2,
    /// see [`crate::model::nn::WeightView`]); ranks add them up before
    /// [`TrainTask::objective_value`].
    fn objective_sums(
        &self,
        model: &Model,
        batches: &[Self::Batch],
        objective: Objective,
        sides: i64,
    ) -> Result<Vec<f64>>;

    /// The value minimised, from summed sums.
    fn objective_value(&self, objective: Objective, sums: &[f64]) -> f64;

    /// The summed training loss of a batch, differentiable (backpropagation).
    fn loss_sum(&self, model: &Model, batch: &Self::Batch) -> Result<Tensor>;

    /// How many terms [`TrainTask::loss_sum`] sums (examples, or option tokens): the loss is
    /// the sum over the global batch divided by the global count.
    fn loss_terms(&self, batch: &Self::Batch) -> f64;

    /// Metrics of a split (keys `eval_*`), the same on every rank.
    fn evaluate(
        &self,
        model: &Model,
        split: Split,
        dist: &Dist,
        batch_size: usize,
    ) -> Result<BTreeMap<String, f64>>;
}

impl TrainTask for TaskData {
    type Batch = objective::StepBatch;

    fn check(&self, _objective: Objective, _paired_pass: bool) -> Result<(), InputError> {
        if self.config.task.regression {
            return Err(InputError(format!(
                "training on the regression task {} is not supported",
                self.config.task.name
            )));
        }
        Ok(())
    }

    fn train_len(&self) -> usize {
        self.train.len()
    }

    fn selection(&self) -> Selection {
        Selection { key: format!("eval_{}", self.config.task.selection_metric()), higher_is_better: true }
    }

    fn step_batch(&mut self, model: &Model, rows: &[usize], micro: usize) -> Result<Vec<Self::Batch>> {
        objective::step_batch(model, self, rows, micro)
    }

    fn replay_batch(&mut self, model: &Model, rows: &[usize], micro: usize) -> Result<()> {
        // Demonstrations are drawn per training access: draw them again to stay on the stream.
        if self.config.few_shot_type == FewShotType::PromptDemo {
            objective::step_batch(model, self, rows, micro)?;
        }
        Ok(())
    }

    fn objective_sums(
        &self,
        model: &Model,
        batches: &[Self::Batch],
        objective: Objective,
        sides: i64,
    ) -> Result<Vec<f64>> {
        objective::objective_sums(model, self, batches, objective, sides)
    }

    fn objective_value(&self, objective: Objective, sums: &[f64]) -> f64 {
        objective::objective_value(objective, sums)
    }

    fn loss_sum(&self, model: &Model, batch: &Self::Batch) -> Result<Tensor> {
        objective::loss_sum(model, self, batch)
    }

    fn loss_terms(&self, batch: &Self::Batch) -> f64 {
        batch.len() as f64
    }

    fn evaluate(
        &self,
        model: &Model,
        split: Split,
        dist: &Dist,
        batch_size: usize,
    ) -> Result<BTreeMap<String, f64>> {
        let set = match split {
            Split::Dev => &self.dev,
            Split::Test => &self.test,
        };
        crate::eval::evaluate(model, self, set, dist, batch_size)
    }
}
