//! Linear probing (LM-Kernel-FT's `linearhead_trainer.py`, docs/reference.md §8): fit a linear model
//! on the frozen input of the model's output layer and write it into that layer, so that the
//! model itself then predicts with the probe, and `mezo kernel --few-shot-type finetune` can
//! differentiate around a trained head as the reference's `--from_linearhead` does.
//!
//! * **Features** are what the output layer multiplies: in prompt mode the MLM head's transform
//!   at the mask (the decoder rows of the label words multiply it), in finetune mode the first
//!   token's final state (the classifier multiplies it). Each rank computes its contiguous share
//!   of the training examples; the rows are all-gathered in file order.
//! * **Fit**: scikit-learn's `LogisticRegressionCV(multi_class="multinomial", random_state=0)`
//!   ([`logistic::fit_cv_multinomial`]: Cs = logspace(−4, 4, 10), 5-fold stratified CV without
//!   shuffling, ties to the smallest C, refit from the fold-mean coefficients). Every rank runs the
//!   same fit (its folds spread over the ranks), so every rank's model gets the same head.
//! * **Write-back** as the reference: with L > 2 classes, W ← coef_ and b ← intercept_; with two,
//!   scikit-learn reports one row (w, b) and the head gets rows [−w/2, +w/2] and biases
//!   [−b/2, +b/2] (**quirk**: the head's margin is w·x + b, half of scikit-learn's own softmax
//!   margin; the decisions are the same). Prompt mode changes only the label words' decoder rows
//!   and vocabulary biases; finetune mode replaces the classifier.
//!
//! Stopping follows [`logistic`]: each fit runs to convergence, so at the smallest C, where the
//! decisions are of order 1e-6, fold scores can differ from scikit-learn's early-stopped ones
//! (the chosen C and the coefficients agree; tests/linearhead.rs).
//!
//! Deviation: the reference takes the rows from a shuffled loader (torch's global RNG, not
//! reproducible), which changes the CV folds; the rows here are in file order, as in the kernel
//! solvers. Regression tasks (an OLS head in the reference) are refused: mezo's regression
//! output is a softmax over two label words, which a linear head on one row does not express.

use crate::data::batch::{collate, shard};
use crate::data::dataset::{FewShotType, TaskData};
use crate::data::examples::Label;
use crate::data::large::Sample as LargeSample;
use crate::data::tasks::Task;
use crate::dist::Dist;
use crate::error::InputError;
use crate::eval::evaluate;
use crate::model::Model;
use crate::solve::logistic::{self, MultinomialCv};
use crate::train::large::LargeTask;
use crate::train::{Split, TrainTask};
use anyhow::{Context, Result};
use ndarray::{s, Array1, Array2, Axis};
use serde::Serialize;
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// What `mezo linearhead` needs besides the model and the data.
#[derive(Debug, Clone)]
pub struct LinearHeadConfig {
    /// Examples per forward pass on each rank.
    pub batch_size: usize,
}

/// The probe as fitted and as written into the model.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    /// The chosen inverse penalty.
    pub c: f64,
    /// The candidate Cs and their mean fold accuracy.
    pub cs: Vec<f64>,
    pub cv_accuracy: Vec<f64>,
    /// scikit-learn's `coef_` (`[1, H]` for two classes) and `intercept_`.
    pub coef: Vec<Vec<f64>>,
    pub intercept: Vec<f64>,
    /// The rows and biases written into the output layer, one per class.
    pub head_weight: Vec<Vec<f64>>,
    pub head_bias: Vec<f64>,
}

/// A finished run: the probe, its training accuracy and the model's dev/test metrics with it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub task: &'static str,
    pub few_shot_type: String,
    pub train_examples: usize,
    pub features: usize,
    #[serde(flatten)]
    pub probe: Probe,
    /// Accuracy of the written head on the training rows.
    pub train_accuracy: f64,
    /// Large-model tasks: the option tokens fitted on (the rows of the fit) and the token ids
    /// of the classes, whose LM-head rows the probe replaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub option_tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_tokens: Option<Vec<i64>>,
    pub dev: BTreeMap<String, f64>,
    pub test: BTreeMap<String, f64>,
}

/// The rows the reference writes into the head for scikit-learn's fit `coef` (`[·, H + 1]`, the
/// intercept last): the fit itself for L > 2 classes, [−w/2, +w/2] and [−b/2, +b/2] for two.
pub fn head_rows(coef: &Array2<f64>, n_classes: usize) -> (Array2<f64>, Array1<f64>) {
    let h = coef.ncols() - 1;
    if n_classes == 2 {
        let half = coef.row(0).mapv(|v| v / 2.0);
        let rows = ndarray::stack![Axis(0), half.mapv(|v| -v), half];
        return (rows.slice(s![.., ..h]).to_owned(), rows.column(h).to_owned());
    }
    (coef.slice(s![.., ..h]).to_owned(), coef.column(h).to_owned())
}

/// Only classification tasks get a probe (module doc).
pub fn check_task(task: &Task) -> Result<(), InputError> {
    if task.regression {
        return Err(InputError(format!(
            "--task {}: linear probing of regression tasks is not supported (classification only)",
            task.name
        )));
    }
    Ok(())
}

/// Checks that `model` and `data` admit a linear head: a RoBERTa/BERT encoder, a classification
/// task, distinct label words and (prompt mode) a decoder that is not the word embeddings.
pub fn check(model: &Model, data: &TaskData) -> Result<(), InputError> {
    let Some(encoder) = model.encoder() else {
        return Err(InputError(format!(
            "linear probing needs a RoBERTa/BERT encoder; {} is a {} model",
            model.source.display(),
            model.model_type
        )));
    };
    check_task(data.config.task)?;
    if data.config.few_shot_type != FewShotType::Finetune {
        if !encoder.decoder_is_untied() {
            return Err(InputError(format!(
                "{}: BERT's MLM decoder is its word embeddings, so a prompt-mode head cannot be \
                 written without changing the inputs; use --few-shot-type finetune",
                model.source.display()
            )));
        }
        let mut words = data.encoder.label_word_ids().to_vec();
        words.sort_unstable();
        if words.windows(2).any(|w| w[0] == w[1]) {
            return Err(InputError(
                "--mapping: two labels share a label word, so their head rows would collide".into(),
            ));
        }
    }
    Ok(())
}

/// The output layer's input `[N, H]` (f64) for every training example in file order, with their
/// classes; each rank computes its share and the rows are all-gathered.
pub fn train_features(
    model: &Model,
    data: &mut TaskData,
    dist: &Dist,
    batch_size: usize,
) -> Result<(Array2<f64>, Vec<usize>)> {
    let encoder = model.encoder().ok_or_else(|| InputError("linear probing needs an encoder".into()))?;
    let n = data.train.len();
    // Every rank encodes every example: with demonstrations the draws are sequential.
    let features = (0..n).map(|i| data.train_feature(i)).collect::<Result<Vec<_>, _>>()?;
    let classes = features
        .iter()
        .enumerate()
        .map(|(i, f)| match f.label {
            Label::Class(c) => Ok(c),
            Label::Score(_) => Err(InputError(format!("training example {i} has a score, not a class"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let _guard = tch::no_grad_guard();
    let pad = data.encoder.special().pad;
    let mine = shard(n, dist.rank(), dist.size());
    let mut rows: Vec<f64> = Vec::new();
    for start in (mine.start..mine.end).step_by(batch_size.max(1)) {
        let end = (start + batch_size.max(1)).min(mine.end);
        let batch: Vec<_> = features[start..end].iter().map(|f| (&f.encoded, f.label)).collect();
        let b = collate(&batch, pad);
        let ids = b.input_ids.to_device(model.device);
        let mask = b.attention_mask.to_device(model.device);
        let pos = match data.config.few_shot_type {
            FewShotType::Finetune => None,
            _ => Some(b.mask_pos.context("prompt features have a mask position")?.to_device(model.device)),
        };
        let x = encoder.head_features(&ids, &mask, pos.as_ref());
        rows.extend(Vec::<f64>::try_from(x.to_kind(Kind::Double).to_device(tch::Device::Cpu).view([-1]))?);
    }
    let all: Vec<f64> = dist.all_gather(&rows).concat();
    let h = encoder.config.hidden_size as usize;
    Ok((Array2::from_shape_vec((n, h), all)?, classes))
}

/// The cross-validated multinomial fit and the head rows it implies.
pub fn fit(dist: &Dist, x: &Array2<f64>, classes: &[usize], n_classes: usize) -> Result<Probe> {
    let MultinomialCv { c, coef, scores } =
        logistic::fit_cv_multinomial(dist, x, classes, n_classes, true)
            .context("fitting the linear head (multinomial logistic regression)")?;
    let (weight, bias) = head_rows(&coef, n_classes);
    let h = x.ncols();
    let rows = |a: &Array2<f64>| a.rows().into_iter().map(|r| r.to_vec()).collect::<Vec<_>>();
    Ok(Probe {
        c,
        cs: logistic::cs(),
        cv_accuracy: scores.mean_axis(Axis(0)).expect("five folds").to_vec(),
        coef: rows(&coef.slice(s![.., ..h]).to_owned()),
        intercept: coef.column(h).to_vec(),
        head_weight: rows(&weight),
        head_bias: bias.to_vec(),
    })
}

/// Accuracy of the head rows on `x` (argmax, first index on ties).
pub fn head_accuracy(probe: &Probe, x: &Array2<f64>, classes: &[usize]) -> f64 {
    let correct = x
        .rows()
        .into_iter()
        .zip(classes)
        .filter(|(row, &k)| {
            let logits: Vec<f64> = probe
                .head_weight
                .iter()
                .zip(&probe.head_bias)
                .map(|(w, b)| w.iter().zip(row).map(|(a, b)| a * b).sum::<f64>() + b)
                .collect();
            let best = (0..logits.len()).fold(0, |b, j| if logits[j] > logits[b] { j } else { b });
            best == k
        })
        .count();
    correct as f64 / classes.len().max(1) as f64
}

/// Writes the probe into the output layer: the label words' decoder rows and vocabulary biases
/// (prompt mode; the other rows stay), or a new classifier of one row per class (finetune mode;
/// the checkpoint's classifier is replaced whatever its size).
pub fn write_head(model: &mut Model, data: &TaskData, probe: &Probe) -> Result<()> {
    let (kind, device) = (model.dtype.kind(), model.device);
    let tensor = |values: Vec<f64>, shape: &[i64]| {
        Tensor::from_slice(&values).reshape(shape).to_kind(kind).to_device(device)
    };
    let rows = probe.head_weight.len() as i64;
    let weight = tensor(probe.head_weight.concat(), &[rows, -1]);
    let bias = tensor(probe.head_bias.clone(), &[rows]);
    if data.config.few_shot_type == FewShotType::Finetune {
        if let Some(old) = model.encoder().and_then(|e| e.classifier_labels()).filter(|&n| n != rows) {
            log::warn!("replacing the checkpoint's classifier of {old} outputs by one of {rows}");
        }
        model.set_classifier(weight, bias)?;
        return Ok(());
    }
    let param = |name: &str| {
        model
            .params
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.tensor.shallow_clone())
            .ok_or_else(|| InputError(format!("{}: the model has no {name}", model.source.display())))
    };
    let (decoder, vocab_bias) = (param("lm_head.decoder.weight")?, param("lm_head.bias")?);
    let words = Tensor::from_slice(data.encoder.label_word_ids()).to_device(device);
    let _guard = tch::no_grad_guard();
    let _ = decoder.shallow_clone().index_copy_(0, &words, &weight);
    let _ = vocab_bias.shallow_clone().index_copy_(0, &words, &bias);
    Ok(())
}

/// Features, fit, write-back, and the dev/test metrics of the model with its new head.
pub fn run(model: &mut Model, data: &mut TaskData, dist: &Dist, config: &LinearHeadConfig) -> Result<Report> {
    check(model, data)?;
    let n_classes = data.config.task.labels.len();
    let (x, classes) = train_features(model, data, dist, config.batch_size)?;
    log::info!("fitting a {n_classes}-class linear head on {} × {} features", x.nrows(), x.ncols());
    let probe = fit(dist, &x, &classes, n_classes)?;
    log::info!("chose C = {:e}", probe.c);
    write_head(model, data, &probe)?;
    let dev = evaluate(model, data, &data.dev, dist, config.batch_size)?;
    let test = evaluate(model, data, &data.test, dist, config.batch_size)?;
    Ok(Report {
        task: data.config.task.name,
        few_shot_type: format!("{:?}", data.config.few_shot_type).to_lowercase(),
        train_examples: x.nrows(),
        features: x.ncols(),
        train_accuracy: head_accuracy(&probe, &x, &classes),
        option_tokens: None,
        class_tokens: None,
        probe,
        dev,
        test,
    })
}

/// The paper's LP row on a large-model task (docs/reference.md §9.6): the LM head's input at
/// every option token of the training examples' gold candidates (in sample order, each rank its
/// contiguous share), a multinomial fit without intercept whose classes are the distinct target
/// tokens, and its rows written into those tokens' LM-head rows (two classes: [−w/2, +w/2]).
/// With a tied head this changes the same tokens' input embeddings, as in the reference.
pub fn run_large(model: &mut Model, task: &LargeTask, dist: &Dist, batch_size: usize) -> Result<Report> {
    let h = model
        .causal_lm()
        .ok_or_else(|| {
            InputError(format!(
                "{}: linear probing of a large-model task needs a causal LM (OPT, Llama)",
                model.source.display()
            ))
        })?
        .head()
        .size()[1] as usize;
    let samples: Vec<&LargeSample> = task.train.iter().collect();
    let mine = shard(samples.len(), dist.rank(), dist.size());
    let (mut rows, mut targets): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    for chunk in samples[mine].chunks(batch_size.max(1)) {
        let (x, t) = task.option_features(model, chunk)?;
        rows.extend(Vec::<f64>::try_from(x.to_kind(Kind::Double).to_device(tch::Device::Cpu).view([-1]))?);
        targets.extend(t.iter().map(|&v| v as f64));
    }
    let rows: Vec<f64> = dist.all_gather(&rows).concat();
    let targets: Vec<i64> = dist.all_gather(&targets).concat().into_iter().map(|v| v as i64).collect();
    let mut tokens = targets.clone();
    tokens.sort_unstable();
    tokens.dedup();
    if tokens.len() < 2 {
        return Err(InputError(format!(
            "every option token of the {} training examples is token {:?}: a probe needs two classes",
            samples.len(),
            tokens
        ))
        .into());
    }
    let classes: Vec<usize> = targets.iter().map(|t| tokens.binary_search(t).expect("a class")).collect();
    let x = Array2::from_shape_vec((targets.len(), h), rows)?;
    log::info!("fitting a {}-class linear head on {} option tokens × {h} features", tokens.len(), x.nrows());
    let MultinomialCv { c, coef, scores } =
        logistic::fit_cv_multinomial(dist, &x, &classes, tokens.len(), false)
            .context("fitting the linear head (multinomial logistic regression)")?;
    log::info!("chose C = {c:e}");
    let (weight, bias) = head_rows(&coef, tokens.len());
    let table = |a: &Array2<f64>| a.rows().into_iter().map(|r| r.to_vec()).collect::<Vec<_>>();
    let probe = Probe {
        c,
        cs: logistic::cs(),
        cv_accuracy: scores.mean_axis(Axis(0)).expect("five folds").to_vec(),
        coef: table(&coef.slice(s![.., ..h]).to_owned()),
        intercept: coef.column(h).to_vec(),
        head_weight: table(&weight),
        head_bias: bias.to_vec(),
    };
    let lm = model.causal_lm().expect("checked above");
    let head = lm.head().shallow_clone();
    let rows_written = Tensor::from_slice(&probe.head_weight.concat())
        .view([tokens.len() as i64, h as i64])
        .to_kind(head.kind())
        .to_device(head.device());
    {
        let _guard = tch::no_grad_guard();
        let _ = head.shallow_clone().index_copy_(
            0,
            &Tensor::from_slice(&tokens).to_device(head.device()),
            &rows_written,
        );
    }
    let split = |split| task.evaluate(model, split, dist, batch_size);
    let (dev, test) = (split(Split::Dev)?, split(Split::Test)?);
    Ok(Report {
        task: task.task.name(),
        few_shot_type: "large".into(),
        train_examples: samples.len(),
        features: h,
        train_accuracy: head_accuracy(&probe, &x, &classes),
        option_tokens: Some(x.nrows()),
        class_tokens: Some(tokens),
        probe,
        dev,
        test,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_rows_are_the_halved_symmetric_pair() {
        let coef = ndarray::array![[2.0, -4.0, 6.0]];
        let (w, b) = head_rows(&coef, 2);
        assert_eq!(w, ndarray::array![[-1.0, 2.0], [1.0, -2.0]]);
        assert_eq!(b, ndarray::array![-3.0, 3.0]);
        let coef = ndarray::array![[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]];
        let (w, b) = head_rows(&coef, 3);
        assert_eq!(w, coef.slice(s![.., ..2]));
        assert_eq!(b, ndarray::array![3.0, 6.0, 9.0]);
    }
}
