//! A task's k-shot directory turned into model inputs: examples read, prompts built (with
//! demonstrations when asked), every dev and test example encoded once, training examples on
//! access (their demonstrations are drawn anew each time, as in the reference).

use super::demo::{self, DemoSampler};
use super::examples::{load_split, Example, Label, Split};
use super::tasks::{Lengths, Task};
use super::template::{self, EncodeConfig, Encoded, Encoder};
use crate::error::InputError;
use std::path::PathBuf;

/// The reference's `--few_shot_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FewShotType {
    /// Template with a mask; label-word scores at the mask.
    #[default]
    Prompt,
    /// Prompt plus one demonstration per label.
    PromptDemo,
    /// No template: `<s> a </s> [b </s>]` and a classifier head.
    Finetune,
}

/// Everything that decides the model inputs of a task.
#[derive(Debug, Clone)]
pub struct DataConfig {
    pub task: &'static Task,
    /// The k-shot directory (`.../k-shot-1k-test/SST-2/16-42`).
    pub data_dir: PathBuf,
    /// `tokenizer.json`.
    pub tokenizer: PathBuf,
    pub few_shot_type: FewShotType,
    pub template: String,
    /// Label -> word; reordered by the task's label list.
    pub mapping: Vec<(String, String)>,
    pub lengths: Lengths,
    /// Keep the tail of over-long inputs (applied to demonstration inputs, as in LM-Kernel-FT and
    /// MeZO).
    pub truncate_head: bool,
    /// Seed of the demonstration sampler (the run seed).
    pub seed: u32,
    /// Encode for a causal LM: the template is cut at its mask and the label words are scored at
    /// the last token.
    pub causal: bool,
}

/// One model input: an encoded example and its label; `query` is its example index (with
/// demonstrations, an eval example has `num_sample` features, sample-major).
#[derive(Debug, Clone)]
pub struct Feature {
    pub encoded: Encoded,
    pub label: Label,
    pub query: usize,
}

/// The encoded dev or test split.
#[derive(Debug, Clone)]
pub struct EvalSet {
    pub examples: Vec<Example>,
    pub features: Vec<Feature>,
    /// Demonstration samples per example whose logits are averaged (1 without demonstrations).
    pub num_sample: usize,
}

impl EvalSet {
    /// Per-example logits from per-feature logits [num_sample · N, C] (features sample-major): the
    /// mean over each example's demonstration samples, as the reference averages before argmax.
    pub fn average_samples(&self, feature_logits: &tch::Tensor) -> tch::Tensor {
        let classes = *feature_logits.size().last().expect("logits have a class axis");
        feature_logits.reshape([self.num_sample as i64, self.examples.len() as i64, classes]).mean_dim(
            [0i64].as_slice(),
            false,
            None,
        )
    }
}

pub struct TaskData {
    pub config: DataConfig,
    pub encoder: Encoder,
    pub train: Vec<Example>,
    pub dev: EvalSet,
    pub test: EvalSet,
    demos: Option<DemoSampler>,
}

impl TaskData {
    /// Reads the three splits and encodes dev and test (then test, as the reference orders its
    /// random draws).
    pub fn load(config: DataConfig) -> Result<TaskData, InputError> {
        let task = config.task;
        let tokenizer = template::load_tokenizer(&config.tokenizer)?;
        let use_demo = config.few_shot_type == FewShotType::PromptDemo;
        let lengths = config.lengths;
        let encode_config = EncodeConfig {
            max_length: if use_demo && lengths.double_demo {
                lengths.max_seq_length * 2
            } else {
                lengths.max_seq_length
            },
            first_sent_limit: lengths.first_sent_limit,
            other_sent_limit: lengths.other_sent_limit,
            truncate_head: use_demo && config.truncate_head,
        };
        let encoder = match config.few_shot_type {
            FewShotType::Finetune => Encoder::finetune(tokenizer, encode_config)?,
            _ => {
                let words = template::label_words(&config.mapping, task.labels)?;
                let template = if use_demo {
                    demo::expand_template(&config.template, words.len())
                } else {
                    config.template.clone()
                };
                if config.causal {
                    Encoder::causal_prompt(tokenizer, &template, &words, encode_config)?
                } else {
                    Encoder::prompt(tokenizer, &template, &words, encode_config)?
                }
            }
        };
        let train = load_split(task, &config.data_dir, Split::Train)?;
        let dev = load_split(task, &config.data_dir, Split::Dev)?;
        let test = load_split(task, &config.data_dir, Split::Test)?;
        let mut data = TaskData {
            demos: use_demo.then(|| DemoSampler::new(config.seed)),
            config,
            encoder,
            train,
            dev: EvalSet { examples: Vec::new(), features: Vec::new(), num_sample: 1 },
            test: EvalSet { examples: Vec::new(), features: Vec::new(), num_sample: 1 },
        };
        data.dev = data.eval_set(dev)?;
        data.test = data.eval_set(test)?;
        Ok(data)
    }

    /// A fingerprint of the examples' contents (sentences and labels of train, dev and test), which
    /// ties a run or a kernel file to its data whatever directory it was read from.
    pub fn fingerprint(&self) -> String {
        let mut hash = crate::fingerprint::Fingerprint::new();
        for (split, examples) in
            [("train", &self.train), ("dev", &self.dev.examples), ("test", &self.test.examples)]
        {
            hash.field(split.as_bytes());
            for e in examples.iter() {
                hash.field(e.text_a.as_bytes());
                hash.field(e.text_b.as_deref().unwrap_or("\u{0}none").as_bytes());
                let label = match e.label {
                    Label::Class(k) => k as f64,
                    Label::Score(x) => x,
                };
                hash.field(&label.to_le_bytes());
            }
        }
        hash.hex()
    }

    fn groups(&self) -> usize {
        if self.config.task.regression {
            2
        } else {
            self.config.task.labels.len()
        }
    }

    fn eval_set(&mut self, examples: Vec<Example>) -> Result<EvalSet, InputError> {
        let groups = self.groups();
        let Some(sampler) = self.demos.as_mut() else {
            let features = examples
                .iter()
                .enumerate()
                .map(|(q, e)| {
                    Ok(Feature {
                        encoded: self.encoder.encode(&e.sentences(), &[])?,
                        label: e.label,
                        query: q,
                    })
                })
                .collect::<Result<_, InputError>>()?;
            return Ok(EvalSet { examples, features, num_sample: 1 });
        };
        let num_sample = self.config.lengths.num_sample.unwrap_or(16);
        let sets = demo::eval_demonstrations(sampler, examples.len(), &self.train, groups, num_sample);
        let features = sets
            .into_iter()
            .map(|(q, demos)| {
                let sentences = demo::sentences_with_demonstrations(&examples[q], &demos, &self.train);
                Ok(Feature {
                    encoded: self.encoder.encode(&sentences, &[])?,
                    label: examples[q].label,
                    query: q,
                })
            })
            .collect::<Result<_, InputError>>()?;
        Ok(EvalSet { examples, features, num_sample })
    }

    /// The feature of training example `index`; with demonstrations, a fresh draw each call.
    pub fn train_feature(&mut self, index: usize) -> Result<Feature, InputError> {
        let groups = self.groups();
        let example = &self.train[index];
        let encoded = match self.demos.as_mut() {
            Some(sampler) => {
                let demos = demo::train_demonstrations(sampler, index, &self.train, groups);
                let sentences = demo::sentences_with_demonstrations(example, &demos, &self.train);
                self.encoder.encode(&sentences, &[])?
            }
            None => self.encoder.encode(&example.sentences(), &[])?,
        };
        Ok(Feature { encoded, label: example.label, query: index })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logits_average_over_sample_major_features() {
        let examples = vec![Example { text_a: "a".into(), text_b: None, label: Label::Class(0) }; 2];
        let set = EvalSet { examples, features: Vec::new(), num_sample: 3 };
        // Rows: sample 0 of examples 0 and 1, then sample 1, then sample 2.
        let logits =
            tch::Tensor::from_slice(&[1.0f32, 0., 10., 0., 2., 0., 20., 0., 3., 3., 30., 3.]).reshape([6, 2]);
        let avg: Vec<f32> = Vec::try_from(set.average_samples(&logits).reshape([-1])).unwrap();
        assert_eq!(avg, [2.0, 1.0, 20.0, 1.0]);
    }
}
