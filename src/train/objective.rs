//! What a step's batch is scored by: this rank's share of the batch, encoded once, and the sums
//! (of cross-entropy, of correct answers, of F1's counts) that ranks add up before the objective
//! is formed, so that any number of ranks gives one process's value.

use super::Objective;
use crate::data::batch::collate;
use crate::data::dataset::TaskData;
use crate::model::Model;
use anyhow::Result;
use tch::{Kind, Tensor};

/// This rank's share of a step's batch, encoded once and used for both losses of the step (the
/// reference fetches a batch once; with demonstrations, they are drawn once per step).
pub struct StepBatch {
    input_ids: Tensor,
    attention_mask: Tensor,
    mask_pos: Option<Tensor>,
    labels: Tensor,
}

impl StepBatch {
    /// Examples in the batch.
    pub(super) fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }

    /// The batch `copies` times over, one copy after the other (the batch itself, not a copy,
    /// for one).
    pub(super) fn repeated(&self, copies: i64) -> StepBatch {
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

pub(super) fn step_batch(
    model: &Model,
    data: &mut TaskData,
    rows: &[usize],
    micro: usize,
) -> Result<Vec<StepBatch>> {
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
pub(super) fn objective_sums(
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
pub(super) fn objective_value(objective: Objective, sums: &[f64]) -> f64 {
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

/// The class scores of a batch (differentiable).
pub(super) fn scores(model: &Model, data: &TaskData, b: &StepBatch) -> Result<Tensor> {
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
pub(super) fn loss_sum(model: &Model, data: &TaskData, b: &StepBatch) -> Result<Tensor> {
    Ok(summed_cross_entropy(&scores(model, data, b)?, &b.labels))
}

/// Σ cross-entropy of class `scores` `[B, C]` (in f32) against `labels` `[B]`.
fn summed_cross_entropy(scores: &Tensor, labels: &Tensor) -> Tensor {
    scores.to_kind(Kind::Float).cross_entropy_loss::<Tensor>(labels, None, tch::Reduction::Sum, -100, 0.0)
}
