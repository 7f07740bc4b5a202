//! Evaluation of a model on a task's dev and test sets: scores of every feature, computed on
//! each rank's contiguous share of the features and gathered, averaged over demonstration
//! samples, and turned into the task's metrics (keys with LM-BFF's `eval_` prefix).
//!
//! MeZO's large-model tasks are scored differently (each candidate's option tokens after its
//! prompt, or a generated answer): [`large`], on the batched scoring of [`options`].

pub mod large;
pub mod options;

use crate::data::batch::{collate, shard};
use crate::data::dataset::{EvalSet, FewShotType, TaskData};
use crate::data::examples::Label;
use crate::dist::Dist;
use crate::error::InputError;
use crate::metrics;
use crate::model::{nn, Body, Model};
use anyhow::Result;
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// The class scores `[B, C]` of a batch (differentiable): the label words' scores at the mask
/// (prompt models), at the scoring position (causal LMs), or the classifier on the first token
/// (`finetune`).
pub fn class_scores(
    model: &Model,
    few_shot_type: FewShotType,
    label_word_ids: &Tensor,
    ids: &Tensor,
    mask: &Tensor,
    mask_pos: Option<&Tensor>,
) -> Result<Tensor> {
    let length = ids.size().last().copied().unwrap_or(0);
    if let Some(max) = model.max_sequence_length().filter(|&max| length > max) {
        return Err(InputError(format!(
            "an input of {length} tokens is longer than the {max} positions of {}; lower the maximum sequence \
             length (--max-seq-length)",
            model.source.display()
        ))
        .into());
    }
    let pos = || mask_pos.ok_or_else(|| anyhow::anyhow!("prompt features have a mask position"));
    Ok(match (&model.body, few_shot_type) {
        (Body::Encoder(e), FewShotType::Finetune) => e.classifier_logits(ids, mask)?,
        (Body::Encoder(e), _) => e.label_scores(ids, mask, pos()?, label_word_ids),
        (_, FewShotType::Finetune) => {
            return Err(InputError("finetune mode needs an encoder model (RoBERTa/BERT)".into()).into())
        }
        (_, _) => {
            // The LM head on the scored position and the label words' rows only: the
            // vocabulary logits the reference computes and then indexes.
            let lm = model.causal_lm().expect("a decoder body is a causal LM");
            let hidden = lm.hidden_states(ids, mask, None);
            let h = hidden.size()[2];
            let at =
                hidden.gather(1, &pos()?.view([-1, 1, 1]).expand([-1, 1, h], false), false).squeeze_dim(1);
            nn::affine(&at, &nn::weight_rows(lm.head(), label_word_ids), None)
        }
    })
}

/// Fails before any work when an encoded dev or test input is longer than the model's
/// positions (train inputs are checked as they are scored, by [`class_scores`]).
pub fn check_lengths(model: &Model, data: &TaskData) -> Result<(), InputError> {
    let Some(max) = model.max_sequence_length() else { return Ok(()) };
    for (split, set) in [("dev", &data.dev), ("test", &data.test)] {
        if let Some(f) = set.features.iter().find(|f| f.encoded.input_ids.len() as i64 > max) {
            return Err(InputError(format!(
                "{split} example {} of {} encodes to {} tokens, more than the {max} positions of {}; lower the \
                 maximum sequence length (--max-seq-length)",
                f.query,
                data.config.data_dir.display(),
                f.encoded.input_ids.len(),
                model.source.display()
            )));
        }
    }
    Ok(())
}

/// Label scores `[F, C]` (f64, CPU) of `set`'s features, every rank computing its share.
pub fn feature_scores(
    model: &Model,
    data: &TaskData,
    set: &EvalSet,
    dist: &Dist,
    batch_size: usize,
) -> Result<Tensor> {
    let _guard = tch::no_grad_guard();
    let mine = shard(set.features.len(), dist.rank(), dist.size());
    let pad = data.encoder.special().pad;
    let words = Tensor::from_slice(data.encoder.label_word_ids()).to_device(model.device);
    let mut rows: Vec<f64> = Vec::new();
    let mut classes = 0;
    for start in (mine.start..mine.end).step_by(batch_size.max(1)) {
        let end = (start + batch_size).min(mine.end);
        let batch_rows: Vec<_> = set.features[start..end].iter().map(|f| (&f.encoded, f.label)).collect();
        let b = collate(&batch_rows, pad);
        let ids = b.input_ids.to_device(model.device);
        let mask = b.attention_mask.to_device(model.device);
        let pos = b.mask_pos.as_ref().map(|p| p.to_device(model.device));
        let scores = class_scores(model, data.config.few_shot_type, &words, &ids, &mask, pos.as_ref())?;
        classes = scores.size()[1];
        rows.extend(Vec::<f64>::try_from(scores.to_kind(Kind::Double).to_device(Device::Cpu).view([-1]))?);
    }
    let all: Vec<f64> = dist.all_gather(&rows).concat();
    let mut classes = [classes as u64];
    dist.all_reduce(&mut classes, crate::dist::Reduce::Max);
    Ok(Tensor::from_slice(&all).view([set.features.len() as i64, classes[0] as i64]))
}

/// The task's metrics of `set`, identical on every rank.
pub fn evaluate(
    model: &Model,
    data: &TaskData,
    set: &EvalSet,
    dist: &Dist,
    batch_size: usize,
) -> Result<BTreeMap<String, f64>> {
    let scores = set.average_samples(&feature_scores(model, data, set, dist, batch_size)?);
    let task = data.config.task;
    let metrics = if task.regression {
        // LM-BFF's regression head: the softmax weight of the "high" word scales [0, 5].
        let predicted: Vec<f64> = Vec::try_from(scores.softmax(-1, Kind::Double).select(1, 1) * 5.0)?;
        let gold: Vec<f64> =
            set.examples.iter().map(|e| if let Label::Score(s) = e.label { s } else { f64::NAN }).collect();
        metrics::regression(&predicted, &gold)
    } else {
        let predicted: Vec<usize> =
            Vec::<i64>::try_from(scores.argmax(-1, false))?.into_iter().map(|p| p as usize).collect();
        let gold: Vec<usize> =
            set.examples.iter().map(|e| if let Label::Class(c) = e.label { c } else { usize::MAX }).collect();
        metrics::classification(task.metrics, &predicted, &gold)
    };
    Ok(metrics.into_iter().map(|(k, v)| (format!("eval_{k}"), v)).collect())
}
