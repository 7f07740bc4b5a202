//! Flags shared by every command that reads a task's data.

use super::choices::{FewShotTypeArg, PresetArg};
use crate::data::dataset::DataConfig;
use crate::data::tasks;
use crate::data::template;
use crate::error::InputError;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DataArgs {
    /// Task name, case-insensitive: LM-BFF's (sst-2, sst-5, mr, cr, mpqa, subj, trec, cola, mnli,
    /// mnli-mm, snli, qnli, rte, mrpc, qqp, sts-b, ag_news) with a k-shot --data-dir, or MeZO's
    /// large-model tasks (SST2, RTE, CB, BoolQ, WSC, WIC, MultiRC, Copa, ReCoRD, SQuAD, DROP) with
    /// a directory of Hugging Face splits (RTE is the latter when --data-dir holds
    /// validation.jsonl or Parquet files).
    #[arg(long)]
    task: String,
    /// The k-shot directory of one split, e.g. data/k-shot-1k-test/SST-2/16-42; for a large-model
    /// task, the dataset's train and validation splits (train.jsonl + validation.jsonl, or the
    /// Hub's Parquet files).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Hugging Face model directory; its tokenizer.json is used.
    #[arg(long, value_name = "DIR", required_unless_present = "tokenizer")]
    model: Option<PathBuf>,
    /// A tokenizer.json to use instead of the model's.
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
    /// prompt, prompt-demo (one demonstration per label) or finetune (no template).
    #[arg(long, default_value = "prompt", value_name = "TYPE")]
    few_shot_type: FewShotTypeArg,
    /// Template [default: the task's, as in the reference run scripts].
    #[arg(long)]
    template: Option<String>,
    /// Label words: a Python dict literal {'0':'terrible','1':'great'} or 0:terrible,1:great
    /// [default: the task's].
    #[arg(long)]
    mapping: Option<String>,
    /// Length settings of which reference scripts: mezo, kernel-ft or lm-bff.
    #[arg(long, default_value = "mezo")]
    preset: PresetArg,
    #[arg(long, value_name = "N")]
    max_seq_length: Option<usize>,
    /// Token limit of sentence 0.
    #[arg(long, value_name = "N")]
    first_sent_limit: Option<usize>,
    /// Token limit of the other sentences.
    #[arg(long, value_name = "N")]
    other_sent_limit: Option<usize>,
    /// With demonstrations, keep the last tokens of over-long inputs instead of the first.
    #[arg(long)]
    truncate_head: bool,
    /// Demonstration samples per dev/test example [default: the preset's, else 16].
    #[arg(long, value_name = "N")]
    num_sample: Option<usize>,
    /// With demonstrations, double the maximum length [default: the preset's].
    #[arg(long, value_name = "BOOL")]
    double_demo: Option<bool>,
    /// Seed of the demonstration sampler.
    #[arg(long, default_value_t = 42)]
    seed: u32,
}

impl DataArgs {
    /// In finetune mode the classifier must have one output per label of the task.
    pub fn check_classifier(
        &self,
        model: &crate::model::Model,
        model_dir: &std::path::Path,
    ) -> Result<(), InputError> {
        let labels = tasks::task(&self.task)?.labels.len() as i64;
        match model.encoder().and_then(|e| e.classifier_labels()) {
            Some(outputs) if outputs != labels => Err(InputError(format!(
                "{}: the classifier has {outputs} outputs, task {} has {labels} labels",
                model_dir.display(),
                self.task
            ))),
            _ => Ok(()),
        }
    }

    /// The large-model task named by --task, if it is one: a name only MeZO's large-model code
    /// knows, or a name both know (RTE) with a --data-dir of Hugging Face splits.
    pub fn large_task(&self) -> Option<crate::data::large::Task> {
        let task = crate::data::large::Task::parse(&self.task)?;
        (tasks::task(&self.task).is_err() || crate::data::large::has_hf_splits(&self.data_dir))
            .then_some(task)
    }

    /// The LM-BFF flags given (meaningless for a large-model task).
    pub fn lmbff_flags_given(&self) -> Vec<&'static str> {
        [
            (self.tokenizer.is_some(), "--tokenizer"),
            (self.template.is_some(), "--template"),
            (self.mapping.is_some(), "--mapping"),
            (self.max_seq_length.is_some(), "--max-seq-length"),
            (self.first_sent_limit.is_some(), "--first-sent-limit"),
            (self.other_sent_limit.is_some(), "--other-sent-limit"),
            (self.truncate_head, "--truncate-head"),
            (self.num_sample.is_some(), "--num-sample"),
            (self.double_demo.is_some(), "--double-demo"),
        ]
        .into_iter()
        .filter_map(|(given, name)| given.then_some(name))
        .collect()
    }

    /// `--seed`: the demonstration sampler's (LM-BFF) or, for a large-model task, the run's (the
    /// reference's `--seed`, 42 as in Hugging Face's `TrainingArguments`).
    pub fn seed(&self) -> u32 {
        self.seed
    }

    pub fn task_name(&self) -> &str {
        &self.task
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    pub fn model_dir(&self) -> Option<PathBuf> {
        self.model.clone()
    }

    pub fn config(&self) -> Result<DataConfig, InputError> {
        let task = tasks::task(&self.task).map_err(|e| InputError(format!("--task: {e}")))?;
        let mapping = match &self.mapping {
            Some(text) => {
                let mapping =
                    template::parse_mapping(text).map_err(|e| InputError(format!("--mapping: {e}")))?;
                if !task.regression {
                    template::label_words(&mapping, task.labels)
                        .map_err(|e| InputError(format!("--mapping: {e}")))?;
                }
                mapping
            }
            None => task.mapping.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        let mut lengths = task.lengths(self.preset.into());
        if let Some(n) = self.max_seq_length {
            lengths.max_seq_length = n;
        }
        lengths.first_sent_limit = self.first_sent_limit.or(lengths.first_sent_limit);
        lengths.other_sent_limit = self.other_sent_limit.or(lengths.other_sent_limit);
        lengths.num_sample = self.num_sample.or(lengths.num_sample);
        lengths.double_demo = self.double_demo.unwrap_or(lengths.double_demo);
        if lengths.max_seq_length == 0 || lengths.num_sample == Some(0) {
            return Err(InputError("--max-seq-length and --num-sample must be positive".into()));
        }
        let tokenizer = match (&self.tokenizer, &self.model) {
            (Some(file), _) => file.clone(),
            (None, Some(dir)) => dir.join("tokenizer.json"),
            (None, None) => unreachable!("clap requires --model or --tokenizer"),
        };
        Ok(DataConfig {
            task,
            data_dir: self.data_dir.clone(),
            tokenizer,
            few_shot_type: self.few_shot_type.into(),
            template: self.template.clone().unwrap_or_else(|| task.template.to_string()),
            mapping,
            lengths,
            truncate_head: self.truncate_head,
            seed: self.seed,
            causal: false,
        })
    }
}
