//! Flags of MeZO's large-model tasks (SST2, SuperGLUE, SQuAD, DROP), shared by `eval` and
//! `train`, and the run they configure.

use super::choices::OptBosArg;
use super::data::DataArgs;
use crate::data::large;
use crate::data::large::prompt::{OptBos, PromptConfig, PromptTokenizer};
use crate::data::large::sampling::{self, Plan, SamplingConfig};
use crate::error::{input_error, InputError};
use crate::eval::large::{Calibration, EvalConfig};
use crate::model::Model;
use crate::train::large::{LargeLoss, LargeTask, SelectBy};
use crate::train::run_dir::DataRecord;
use anyhow::Result;
use clap::Args;
use std::path::Path;

/// How a command that trains on a large-model task (`train`, `linearhead`) uses it.
#[derive(Debug, Clone, Copy)]
pub struct LargeTraining {
    pub loss: LargeLoss,
    pub select_by: SelectBy,
    /// Prompts generated from at once when evaluating.
    pub generation_batch: usize,
}

#[derive(Args, Debug, Clone)]
#[command(
    next_help_heading = "Large-model tasks (SST2, RTE, CB, BoolQ, WSC, WIC, MultiRC, Copa, ReCoRD, SQuAD, DROP)"
)]
pub struct LargeArgs {
    /// Training examples (demonstrations when evaluating) per train set.
    #[arg(long, value_name = "N")]
    pub num_train: Option<usize>,
    /// Dev examples, the tail of each train set's sample (training only).
    #[arg(long, value_name = "N")]
    pub num_dev: Option<usize>,
    /// Test examples sampled from the validation split [default: all, unpermuted].
    #[arg(long, value_name = "N")]
    pub num_eval: Option<usize>,
    /// Seed of the one train set (and of its test sample).
    #[arg(long, value_name = "SEED")]
    pub train_set_seed: Option<u32>,
    /// Train sets with seeds 0..N. Without this and --train-set-seed, every test example gets its
    /// own demonstration set (in-context learning, as MeZO's icl.sh).
    #[arg(long, value_name = "N")]
    pub num_train_sets: Option<usize>,
    /// Tokens of a prompt; longer ones lose their first tokens after BOS [default: 2048].
    #[arg(long, value_name = "N")]
    pub max_length: Option<usize>,
    /// Tokens generated at most for SQuAD and DROP [default: 50].
    #[arg(long, value_name = "N")]
    pub max_new_tokens: Option<usize>,
    /// Calibrate candidate scores: log p(option | prompt) − log p(option | calibration prompt),
    /// summed over the option's tokens.
    #[arg(long)]
    pub sfc: bool,
    /// As --sfc, the calibration prompt after the demonstrations.
    #[arg(long, conflicts_with = "sfc")]
    pub icl_sfc: bool,
    /// First token of OPT prompts [default: reference].
    #[arg(long, value_name = "BOS")]
    pub opt_bos: Option<OptBosArg>,
    /// Tokens per forward pass when scoring candidates, padding included [default: 2048 on CPU,
    /// where larger batches only add padding, 16384 on CUDA].
    #[arg(long, value_name = "N")]
    pub batch_tokens: Option<usize>,
}

impl LargeArgs {
    /// The large-task flags given, by name (refused for LM-BFF tasks).
    pub fn given(&self) -> Vec<&'static str> {
        let mut given = Vec::new();
        let mut flag = |set: bool, name| {
            if set {
                given.push(name)
            }
        };
        flag(self.num_train.is_some(), "--num-train");
        flag(self.num_dev.is_some(), "--num-dev");
        flag(self.num_eval.is_some(), "--num-eval");
        flag(self.train_set_seed.is_some(), "--train-set-seed");
        flag(self.num_train_sets.is_some(), "--num-train-sets");
        flag(self.max_length.is_some(), "--max-length");
        flag(self.max_new_tokens.is_some(), "--max-new-tokens");
        flag(self.sfc, "--sfc");
        flag(self.icl_sfc, "--icl-sfc");
        flag(self.opt_bos.is_some(), "--opt-bos");
        flag(self.batch_tokens.is_some(), "--batch-tokens");
        given
    }

    pub fn sampling(&self) -> SamplingConfig {
        SamplingConfig {
            num_train: self.num_train.unwrap_or(0),
            num_dev: self.num_dev,
            num_eval: self.num_eval,
            train_set_seed: self.train_set_seed,
            num_train_sets: self.num_train_sets,
        }
    }

    pub fn prompt(&self) -> Result<PromptConfig, InputError> {
        let config = PromptConfig {
            max_length: self.max_length.unwrap_or(2048),
            max_new_tokens: self.max_new_tokens.unwrap_or(50),
        };
        if config.max_length < 2 {
            return Err(InputError("--max-length must be at least 2 (BOS and one token)".into()));
        }
        Ok(config)
    }

    /// Tokens per scoring pass on `device`.
    pub fn batch_tokens(&self, device: tch::Device) -> Result<usize, InputError> {
        match self.batch_tokens {
            Some(0) => Err(InputError("--batch-tokens must be positive".into())),
            Some(n) => Ok(n),
            None if device.is_cuda() => Ok(16384),
            None => Ok(2048),
        }
    }

    pub fn calibration(&self) -> Calibration {
        match (self.sfc, self.icl_sfc) {
            (true, _) => Calibration::Sfc,
            (_, true) => Calibration::IclSfc,
            _ => Calibration::None,
        }
    }

    pub fn opt_bos(&self) -> OptBos {
        self.opt_bos.map(OptBos::from).unwrap_or_default()
    }
}

impl LargeArgs {
    /// Refuses, for a command that trains or fits on large-model `task`, LM-BFF's flags and the
    /// calibration flags (training and probes evaluate zero-shot).
    pub fn check_for_training(&self, data: &DataArgs, task: large::Task) -> Result<()> {
        if let Some(flag) = data.lmbff_flags_given().first() {
            return Err(input_error(format!(
                "{flag} is for LM-BFF tasks; {} is a large-model task",
                task.name()
            )));
        }
        for (flag, given) in [("--sfc", self.sfc), ("--icl-sfc", self.icl_sfc)] {
            if given {
                return Err(input_error(format!(
                    "{flag} calibrates in-context evaluation; training and probes evaluate zero-shot"
                )));
            }
        }
        Ok(())
    }

    /// A large-model task's train, dev and test samples as the reference's training path draws
    /// them: one train set (`--train-set-seed`, 0 by default as in its scripts), dev its tail.
    pub fn train_task(
        &self,
        data_args: &DataArgs,
        task: large::Task,
        training: LargeTraining,
        model: &Model,
        model_dir: &Path,
        device: tch::Device,
    ) -> Result<(LargeTask, DataRecord)> {
        let mut sampling = self.sampling();
        if sampling.num_train_sets.is_some_and(|n| n != 1) {
            return Err(input_error(
                "--num-train-sets: a run trains on one set (the reference trains the sets one after another on the \
                 same model); run one --train-set-seed per run, e.g. as a sweep",
            ));
        }
        sampling.num_train_sets = None;
        sampling.train_set_seed = Some(sampling.train_set_seed.unwrap_or(0));
        if sampling.num_train == 0 {
            return Err(input_error("--num-train: training needs at least one example"));
        }
        let splits = large::load(task, data_args.data_dir())?;
        let Plan::Sets(sets) = sampling::plan(&sampling, splits.train.len(), splits.valid.len())? else {
            unreachable!("a train set seed gives train sets")
        };
        let set = &sets[0];
        if set.train.is_empty() {
            return Err(input_error(format!(
                "--num-dev {}: the dev set takes all {} sampled training examples and leaves none to train on \
                 (as in the reference, --num-dev 0 or a --num-dev as large as the sample makes everything dev)",
                sampling.num_dev.unwrap_or(0),
                set.dev.len()
            )));
        }
        let pick = |rows: &[usize], from: &[large::Sample]| {
            rows.iter().map(|&i| from[i].clone()).collect::<Vec<_>>()
        };
        let test = pick(&set.test, &splits.valid);
        let dev = if sampling.num_dev.is_some() {
            pick(&set.dev, &splits.train)
        } else {
            log::warn!(
                "no --num-dev: as the reference, the test set selects the best weights (its numbers are then not \
                 held out)"
            );
            test.clone()
        };
        let LargeTraining { loss, select_by, generation_batch } = training;
        let eval = EvalConfig {
            prompt: self.prompt()?,
            calibration: Calibration::None,
            batch_tokens: self.batch_tokens(device)?,
            generation_batch,
        };
        let tokenizer = PromptTokenizer::load(model_dir, &model.model_type, self.opt_bos())?;
        let data = LargeTask {
            task,
            tokenizer,
            train: pick(&set.train, &splits.train),
            dev,
            test,
            loss,
            select_by,
            eval,
        };
        let record = DataRecord {
            task: task.name().to_string(),
            data_dir: data_args.data_dir().to_path_buf(),
            fingerprint: Some(data.fingerprint()),
            tokenizer: model_dir.to_path_buf(),
            few_shot_type: "large".into(),
            template: String::new(),
            mapping: Vec::new(),
            lengths: String::new(),
            truncate_head: false,
            seed: data_args.seed(),
            large: Some(serde_json::json!({
                "sampling": sampling, "max_length": eval.prompt.max_length, "max_new_tokens": eval.prompt.max_new_tokens,
                "opt_bos": format!("{:?}", self.opt_bos()), "loss": loss, "select_by": select_by,
            })),
        };
        Ok((data, record))
    }
}
