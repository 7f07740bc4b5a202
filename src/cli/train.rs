use super::data::DataArgs;
use super::Context;
use crate::data::dataset::{FewShotType, TaskData};
use crate::error::input_error;
use crate::model::{self, Dtype, FreezeRules, LoadOptions, LoraConfig, Scope};
use crate::optim::zo::{Rng, WeightDecay, ZoOptimizer};
use crate::train::Stash;
use crate::train::{
    train_first_order, train_mezo, FirstOrder, LrSchedule, Objective, Outcome, Parallel, TrainConfig,
};
use anyhow::Result;
use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Optimizer {
    /// Zeroth-order SGD (MeZO); --rng picks the perturbation stream.
    Mezo,
    /// Backpropagation with AdamW: the papers' fine-tuning baseline.
    Adam,
    /// Backpropagation with plain SGD.
    Sgd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Schedule {
    Constant,
    Linear,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DecayRule {
    /// Every trained tensor (MeZO medium, RoBERTa).
    All,
    /// Not biases and LayerNorms (MeZO large, OPT).
    NoBiasNorm,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ParallelArg {
    /// Ranks split each batch and evaluate every direction.
    Data,
    /// Each rank evaluates its own direction on the whole batch (n-SPSA with n = ranks).
    Directions,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ZoOptimizerArg {
    /// ZO-SGD, the reference update.
    Sgd,
    /// ZO-SGD with heavy-ball momentum (--momentum).
    Momentum,
    /// ZO-Adam.
    Adam,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RngArg {
    /// Counter-based Philox normals, perturbed weights formed just in time: exact restore in
    /// every dtype, no z in memory, one pass per update.
    Fast,
    /// MeZO's PyTorch stream (libtorch's generator, in-place perturbations): the trajectory of
    /// the reference implementation with the same libtorch.
    Reference,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StashArg {
    Memory,
    /// In the run directory, for models whose extra copy would not fit in memory.
    Disk,
    /// Disk above 1 GiB of trained values.
    Auto,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ObjectiveArg {
    Loss,
    /// −accuracy of the batch.
    Accuracy,
    /// −binary F1 of the batch.
    F1,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    #[arg(long, value_enum, default_value = "mezo")]
    optimizer: Optimizer,
    /// Run directory: config.json, metrics.jsonl, trajectory.jsonl, results.json, model/.
    #[arg(long, value_name = "DIR", required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in DIR (killed or stopped by a signal): its trajectory is replayed
    /// without forward passes, then training goes on. Give the same arguments as the first time.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Global batch size, split over the ranks.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-6)]
    lr: f64,
    /// Perturbation size ε.
    #[arg(long, default_value_t = 1e-3)]
    eps: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Which tensors weight decay applies to.
    #[arg(long, value_enum, default_value = "all")]
    weight_decay_rule: DecayRule,
    #[arg(long, value_enum, default_value = "constant")]
    lr_schedule: Schedule,
    /// Evaluate on dev every N steps (and after the last); 0: only after the last.
    #[arg(long, default_value_t = 100)]
    eval_every: usize,
    #[arg(long, default_value_t = 32)]
    eval_batch_size: usize,
    /// Parameter and activation type: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: Dtype,
    /// Save the final weights to RUN_DIR/model (a Hugging Face directory).
    #[arg(long)]
    save_model: bool,
    /// Train LoRA adapters of this rank instead of the full model.
    #[arg(long, value_name = "R")]
    lora_r: Option<i64>,
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    /// Train this many prefix slots per attention layer instead of the full model.
    #[arg(long, value_name = "M")]
    num_prefix: Option<i64>,
    /// MeZO: SPSA directions per step, averaged (n-SPSA), on the same batch.
    #[arg(long, default_value_t = 1, value_name = "N")]
    zo_samples: usize,
    /// MeZO: how ranks share a step.
    #[arg(long, value_enum, default_value = "data")]
    parallel: ParallelArg,
    /// MeZO: the perturbation stream.
    #[arg(long, value_enum, default_value = "fast")]
    rng: RngArg,
    /// MeZO: what perturbations are scored by.
    #[arg(long, value_enum, default_value = "loss")]
    objective: ObjectiveArg,
    /// MeZO: the update rule; momentum and Adam keep their moments in memory (one or two f32
    /// copies of the trained tensors).
    #[arg(long, value_enum, default_value = "sgd")]
    zo_optimizer: ZoOptimizerArg,
    /// β of --zo-optimizer momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Evaluate at most N examples of a rank's share at once (gradient accumulation over micro-
    /// batches; peak memory of one micro-batch, taken twice by MeZO's paired pass); 0: the whole
    /// share.
    #[arg(long, default_value_t = 0, value_name = "N")]
    micro_batch_size: usize,
    /// MeZO --rng fast: score ℓ− in a forward pass of its own instead of with ℓ+ in one pass
    /// over the doubled batch; half the activation memory and one perturbed copy of a weight at
    /// a time, at the price of drawing z twice.
    #[arg(long)]
    no_paired_pass: bool,
    /// Where the best-dev weights are kept until test is evaluated with them.
    #[arg(long, value_enum, default_value = "auto")]
    best_weights: StashArg,
    /// MeZO with several ranks: compare the replicas' weights every N steps (0: never).
    #[arg(long, default_value_t = 100, value_name = "N")]
    check_every: usize,
    /// Do not train embeddings (names containing "embed").
    #[arg(long)]
    exclude_embeddings: bool,
    /// Do not train the LM head (names containing "head").
    #[arg(long)]
    exclude_head: bool,
}

pub fn run(ctx: &Context, args: &TrainArgs) -> Result<()> {
    let dist = ctx.dist;
    let model_dir = args.data.model_dir().ok_or_else(|| input_error("mezo train needs --model DIR"))?;
    let out_dir = match (&args.resume, &args.out) {
        (Some(run), Some(out)) if run != out => {
            return Err(input_error("--resume DIR continues DIR: leave out --out"))
        }
        (Some(run), _) => run.clone(),
        (None, Some(out)) => out.clone(),
        (None, None) => unreachable!("clap requires --out or --resume"),
    };
    if args.resume.is_some() && !matches!(args.optimizer, Optimizer::Mezo) {
        return Err(input_error("--resume continues MeZO runs (their trajectory is the checkpoint)"));
    }
    let mut data_config = args.data.config()?;
    let finetune = data_config.few_shot_type == FewShotType::Finetune;
    let encoder = model::read_json(&model_dir.join("config.json"))
        .map(|c| matches!(c["model_type"].as_str(), Some("roberta" | "bert")))
        .unwrap_or(false);
    let lora = args.lora_r.map(|rank| LoraConfig {
        rank,
        alpha: args.lora_alpha,
        targets: if encoder {
            vec!["query".into(), "value".into()]
        } else {
            vec!["q_proj".into(), "v_proj".into()]
        },
        seed: data_config.seed as i64,
    });
    let scope = match (&lora, args.num_prefix) {
        (Some(_), Some(_)) => return Err(input_error("--lora-r and --num-prefix: choose one")),
        // MeZO medium's LoRA keeps the heads trainable; large trains the adapters only.
        (Some(_), None) if encoder => Scope::LoraAndHeads,
        (Some(_), None) => Scope::Lora,
        (None, Some(_)) => Scope::Prefix,
        (None, None) => Scope::Full,
    };
    let options = LoadOptions {
        device: ctx.device.resolve(dist.local_rank())?,
        dtype: args.dtype,
        num_labels: Some(data_config.task.labels.len() as i64),
        init_seed: data_config.seed as i64,
        lora,
        num_prefix: args.num_prefix,
        adapter: None,
    };
    let model = model::load(&model_dir, &options)?;
    if finetune {
        args.data.check_classifier(&model, &model_dir)?;
    }
    data_config.causal = model.causal_lm().is_some();
    if finetune && data_config.causal {
        return Err(input_error("--few-shot-type finetune needs an encoder model (RoBERTa/BERT)"));
    }
    let mut data = TaskData::load(data_config)?;
    let config = TrainConfig {
        steps: args.steps,
        batch_size: args.batch_size,
        lr: args.lr,
        eps: args.eps,
        weight_decay: args.weight_decay,
        decay_rule: match args.weight_decay_rule {
            DecayRule::All => WeightDecay::AllTensors,
            DecayRule::NoBiasNorm => WeightDecay::ExcludeBiasAndNorm,
        },
        lr_schedule: match args.lr_schedule {
            Schedule::Constant => LrSchedule::Constant,
            Schedule::Linear => LrSchedule::Linear,
        },
        seed: data.config.seed,
        eval_every: args.eval_every,
        eval_batch_size: args.eval_batch_size,
        freeze: FreezeRules {
            scope,
            exclude_embeddings: args.exclude_embeddings,
            exclude_head: args.exclude_head,
            only_biases: false,
        },
        out_dir: out_dir.clone(),
        save_model: args.save_model,
        zo_samples: args.zo_samples,
        parallel: match args.parallel {
            ParallelArg::Data => Parallel::Data,
            ParallelArg::Directions => Parallel::Directions,
        },
        objective: match args.objective {
            ObjectiveArg::Loss => Objective::Loss,
            ObjectiveArg::Accuracy => Objective::Accuracy,
            ObjectiveArg::F1 => Objective::F1,
        },
        check_every: args.check_every,
        zo_optimizer: match args.zo_optimizer {
            ZoOptimizerArg::Sgd => ZoOptimizer::Sgd,
            ZoOptimizerArg::Momentum => ZoOptimizer::Momentum { beta: args.momentum },
            ZoOptimizerArg::Adam => ZoOptimizer::Adam,
        },
        micro_batch_size: args.micro_batch_size,
        paired_pass: !args.no_paired_pass,
        rng: match args.rng {
            RngArg::Fast => Rng::Fast,
            RngArg::Reference => Rng::Reference,
        },
        stash: match args.best_weights {
            StashArg::Memory => Stash::Memory,
            StashArg::Disk => Stash::Disk,
            StashArg::Auto => Stash::Auto,
        },
    };
    if !matches!(args.optimizer, Optimizer::Mezo) && !matches!(args.zo_optimizer, ZoOptimizerArg::Sgd) {
        return Err(input_error("--zo-optimizer is a MeZO option (use --optimizer adam for backprop Adam)"));
    }
    if !matches!(args.optimizer, Optimizer::Mezo)
        && (args.zo_samples != 1
            || !matches!(args.parallel, ParallelArg::Data)
            || !matches!(args.objective, ObjectiveArg::Loss))
    {
        return Err(input_error("--zo-samples, --parallel directions and --objective are MeZO options"));
    }
    if args.zo_samples == 0 {
        return Err(input_error("--zo-samples must be positive"));
    }
    if matches!(args.parallel, ParallelArg::Directions) && args.zo_samples != 1 {
        return Err(input_error(
            "--parallel directions evaluates one direction per rank: leave --zo-samples at 1",
        ));
    }
    if dist.is_root() && args.resume.is_none() {
        std::fs::create_dir_all(&out_dir)?;
        let resolved = serde_json::json!({
            "program": format!("mezo {}", env!("CARGO_PKG_VERSION")),
            "optimizer": format!("{:?}", args.optimizer).to_lowercase(),
            "rng": matches!(args.optimizer, Optimizer::Mezo).then_some(config.rng), "ranks": dist.size(),
            "load": {
                "model": model_dir, "dtype": options.dtype, "num_labels": options.num_labels,
                "init_seed": options.init_seed, "lora": options.lora, "num_prefix": options.num_prefix,
            },
            "train": config,
            "data": {
                "task": data.config.task.name, "data_dir": data.config.data_dir, "tokenizer": data.config.tokenizer,
                "few_shot_type": format!("{:?}", data.config.few_shot_type), "template": data.config.template,
                "mapping": data.config.mapping, "lengths": format!("{:?}", data.config.lengths),
                "truncate_head": data.config.truncate_head, "seed": data.config.seed,
            },
        });
        std::fs::write(out_dir.join("config.json"), serde_json::to_string_pretty(&resolved)?)?;
    }
    let outcome = match args.optimizer {
        Optimizer::Mezo => train_mezo(&model, &mut data, dist, &config, args.resume.is_some())?,
        Optimizer::Adam => train_first_order(&model, &mut data, dist, &config, FirstOrder::AdamW)?,
        Optimizer::Sgd => train_first_order(&model, &mut data, dist, &config, FirstOrder::Sgd)?,
    };
    if dist.is_root() {
        match outcome {
            Outcome::Finished(summary) => {
                println!("best dev at step {}: {:?}", summary.best_step, summary.best_dev);
                println!("test (best-dev weights): {:?}", summary.test);
            }
            Outcome::Stopped(step) => {
                println!("stopped after step {step}; continue with --resume {}", out_dir.display())
            }
        }
        println!("run directory: {}", out_dir.display());
    }
    Ok(())
}
