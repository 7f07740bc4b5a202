//! Zero-shot and in-context evaluation on MeZO's large-model tasks (docs/reference.md §9.4).
//!
//! Classification and multiple choice: each candidate's score is the mean log-probability of its
//! option tokens after the prompt (with calibration, the sum minus the sum after the calibration
//! prompt); the prediction is the first best score. Generation: greedy decoding until the newline
//! token or EOS, scored by SQuAD's F1 against the gold answers. Samples are split over the ranks
//! in contiguous shares, and every rank ends with all predictions in sample order.

use super::options::{option_log_probs, OptionSequence};
use crate::data::batch::shard;
use crate::data::large::prompt::{encode_prompt, Encoded, Mode, PromptConfig, PromptTokenizer};
use crate::data::large::sampling::Plan;
use crate::data::large::{Sample, Task, TaskKind, TaskSplits};
use crate::dist::Dist;
use crate::error::InputError;
use crate::metrics;
use crate::model::cache::{greedy_generate_batch, CausalLm};
use crate::model::Model;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Calibration of candidate scores (surface form competition).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Calibration {
    #[default]
    None,
    /// `--sfc`: minus the candidate's log-probability after the calibration prompt alone.
    Sfc,
    /// `--icl-sfc`: the calibration prompt follows the demonstrations.
    IclSfc,
}

/// How to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalConfig {
    pub prompt: PromptConfig,
    pub calibration: Calibration,
    /// Tokens per forward pass (padding included).
    pub batch_tokens: usize,
    /// Prompts generated from at once.
    pub generation_batch: usize,
}

/// What a prediction chose.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Choice {
    Index(usize),
    Text(String),
}

/// One line of `--predictions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub id: usize,
    /// The candidates as the reference holds them (class ids or strings); absent for generation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidates: Option<serde_json::Value>,
    /// One score per candidate, the argmax is taken over (empty for generation).
    pub scores: Vec<f64>,
    pub prediction: Choice,
    pub gold: serde_json::Value,
}

/// The task's metric of one prediction: right (1) or wrong (0), or F1.
pub fn prediction_metric(task: Task, p: &Prediction) -> f64 {
    match (&p.prediction, task.kind()) {
        (Choice::Text(text), TaskKind::Generation) => {
            let answers: Vec<String> = serde_json::from_value(p.gold.clone()).unwrap_or_default();
            metrics::squad_f1(text, &answers)
        }
        (Choice::Index(i), _) => {
            let right = match &p.gold {
                serde_json::Value::Array(list) => list.iter().any(|g| g.as_u64() == Some(*i as u64)),
                g => g.as_u64() == Some(*i as u64),
            };
            f64::from(u8::from(right))
        }
        _ => 0.0,
    }
}

/// The task's metric over `predictions` (the mean; NaN when empty, as numpy's).
pub fn metric(task: Task, predictions: &[Prediction]) -> f64 {
    predictions.iter().map(|p| prediction_metric(task, p)).sum::<f64>() / predictions.len() as f64
}

/// A test sample and the demonstrations its prompt starts with.
pub type Query<'a> = (&'a Sample, Vec<&'a Sample>);

/// The test samples of one train set (its seed), or of one demonstration set per sample (`None`).
pub struct EvalRun<'a> {
    pub seed: Option<u32>,
    pub queries: Vec<Query<'a>>,
}

/// What a sampling plan evaluates: each train set's demonstrations before each of its test
/// samples, or each test sample's own demonstrations.
pub fn eval_runs<'a>(splits: &'a TaskSplits, plan: &Plan) -> Vec<EvalRun<'a>> {
    match plan {
        Plan::Sets(sets) => sets
            .iter()
            .map(|set| {
                let demos: Vec<&Sample> = set.train.iter().map(|&i| &splits.train[i]).collect();
                EvalRun {
                    seed: Some(set.seed),
                    queries: set.test.iter().map(|&i| (&splits.valid[i], demos.clone())).collect(),
                }
            })
            .collect(),
        Plan::PerExample { test, demos } => vec![EvalRun {
            seed: None,
            queries: test
                .iter()
                .zip(demos)
                .map(|(&i, d)| (&splits.valid[i], d.iter().map(|&j| &splits.train[j]).collect()))
                .collect(),
        }],
    }
}

/// Predictions of `samples`, each with its demonstrations, in sample order on every rank.
pub fn predict(
    model: &Model,
    tokenizer: &PromptTokenizer,
    task: Task,
    samples: &[Query],
    config: &EvalConfig,
    dist: &Dist,
) -> Result<Vec<Prediction>> {
    let lm = model.causal_lm().ok_or_else(|| {
        InputError(format!("{}: the large-model tasks need a causal LM (OPT, Llama)", model.source.display()))
    })?;
    let mine = shard(samples.len(), dist.rank(), dist.size());
    let share = &samples[mine.clone()];
    let bar = crate::logging::progress_bar(dist, share.len() as u64 * dist.size() as u64, "examples");
    let mut predictions = Vec::with_capacity(share.len());
    // Bounded chunks keep the encoded prompts of huge evaluations out of memory at once.
    for chunk in share.chunks(256) {
        let part = if task.kind() == TaskKind::Generation {
            generate(model, lm, tokenizer, task, chunk, config)?
        } else {
            score(model, lm, tokenizer, task, chunk, config)?
        };
        predictions.extend(part);
        bar.inc(chunk.len() as u64 * dist.size() as u64);
    }
    bar.finish_and_clear();
    let json = serde_json::to_string(&predictions)?;
    let mut all = Vec::with_capacity(samples.len());
    for part in dist.all_gather_strings(&json) {
        all.extend(serde_json::from_str::<Vec<Prediction>>(&part).context("gathering predictions")?);
    }
    Ok(all)
}

fn encode_all(
    tokenizer: &PromptTokenizer,
    task: Task,
    chunk: &[Query],
    mode: Mode,
    prompt: PromptConfig,
) -> Result<Vec<Encoded>, InputError> {
    chunk.iter().map(|(s, demos)| encode_prompt(task, tokenizer, demos, s, mode, prompt)).collect()
}

fn gold_json(sample: &Sample) -> serde_json::Value {
    serde_json::to_value(&sample.gold).expect("gold answers serialise")
}

fn score(
    model: &Model,
    lm: &dyn CausalLm,
    tokenizer: &PromptTokenizer,
    task: Task,
    chunk: &[Query],
    config: &EvalConfig,
) -> Result<Vec<Prediction>> {
    let encoded = encode_all(tokenizer, task, chunk, Mode::Plain, config.prompt)?;
    let calibration_mode = match config.calibration {
        Calibration::None => None,
        Calibration::Sfc => Some(Mode::Sfc),
        Calibration::IclSfc => Some(Mode::IclSfc),
    };
    let calibrated =
        calibration_mode.map(|m| encode_all(tokenizer, task, chunk, m, config.prompt)).transpose()?;
    let mut groups: Vec<Vec<OptionSequence>> = encoded.iter().map(sequences).collect();
    if let Some(c) = &calibrated {
        groups.extend(c.iter().map(sequences));
    }
    let log_probs = option_log_probs(lm, &groups, config.batch_tokens, tokenizer.pad, model.device);
    Ok(chunk
        .iter()
        .enumerate()
        .map(|(i, (sample, _))| {
            let scores: Vec<f64> = match &calibrated {
                None => log_probs[i].iter().map(|v| v.iter().sum::<f64>() / v.len() as f64).collect(),
                Some(_) => log_probs[i]
                    .iter()
                    .zip(&log_probs[chunk.len() + i])
                    .map(|(v, c)| v.iter().sum::<f64>() - c.iter().sum::<f64>())
                    .collect(),
            };
            Prediction {
                id: sample.id,
                candidates: Some(serde_json::to_value(&sample.candidates).expect("candidates serialise")),
                prediction: Choice::Index(argmax(&scores)),
                scores,
                gold: gold_json(sample),
            }
        })
        .collect())
}

fn sequences(e: &Encoded) -> Vec<OptionSequence<'_>> {
    e.sequences
        .iter()
        .zip(&e.option_lens)
        .map(|(s, &n)| OptionSequence { tokens: s, option_len: n })
        .collect()
}

/// numpy's argmax: the first of equal maxima; NaN wins, as it compares greater.
fn argmax(scores: &[f64]) -> usize {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if scores[best].is_nan() {
            break;
        }
        if s.is_nan() || s > scores[best] {
            best = i;
        }
    }
    best
}

fn generate(
    model: &Model,
    lm: &dyn CausalLm,
    tokenizer: &PromptTokenizer,
    task: Task,
    chunk: &[Query],
    config: &EvalConfig,
) -> Result<Vec<Prediction>> {
    let encoded = encode_all(tokenizer, task, chunk, Mode::Plain, config.prompt)?;
    let prompts: Vec<Vec<i64>> = encoded.into_iter().map(|mut e| e.sequences.swap_remove(0)).collect();
    let answers = generate_answers(model, lm, tokenizer, &prompts, config)?;
    Ok(chunk
        .iter()
        .zip(answers)
        .map(|((sample, _), text)| Prediction {
            id: sample.id,
            candidates: None,
            scores: Vec::new(),
            prediction: Choice::Text(text),
            gold: gold_json(sample),
        })
        .collect())
}

/// Greedy answers of `prompts`, decoded as the reference decodes them: at most
/// `min(max_new_tokens, max_length - prompt length)` tokens, ending at the newline token or EOS.
pub fn generate_answers(
    model: &Model,
    lm: &dyn CausalLm,
    tokenizer: &PromptTokenizer,
    prompts: &[Vec<i64>],
    config: &EvalConfig,
) -> Result<Vec<String>> {
    let mut texts = Vec::with_capacity(prompts.len());
    // Longest first: rows of a batch finish at similar times.
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(prompts[i].len()));
    let mut generated: Vec<Vec<i64>> = vec![Vec::new(); prompts.len()];
    for batch in order.chunks(config.generation_batch.max(1)) {
        let batch_prompts: Vec<Vec<i64>> = batch.iter().map(|&i| prompts[i].clone()).collect();
        let limits: Vec<usize> = batch_prompts
            .iter()
            .map(|p| config.prompt.max_new_tokens.min(config.prompt.max_length.saturating_sub(p.len())))
            .collect();
        let out = greedy_generate_batch(
            lm,
            &batch_prompts,
            &limits,
            &[tokenizer.newline, tokenizer.eos],
            tokenizer.pad,
            model.device,
        );
        for (&i, tokens) in batch.iter().zip(out) {
            generated[i] = tokens;
        }
    }
    for tokens in &generated {
        texts.push(tokenizer.decode_answer(tokens)?);
    }
    Ok(texts)
}
