use super::choices::{
    DecayRuleArg, DtypeArg, ObjectiveArg, OptimizerArg, ParallelArg, RngArg, ScheduleArg, StashArg,
    ZoOptimizerArg,
};
use super::choices::{ScriptArg, SelectByArg};
use super::data::DataArgs;
use super::large::{LargeArgs, LargeTraining};
use super::{Context, Ending};
use crate::data::dataset::{FewShotType, TaskData};
use crate::data::large;
use crate::error::input_error;
use crate::model::{self, FreezeRules, LoadOptions, LoraConfig, Scope};
use crate::train::large::{LargeLoss, SelectBy};
use crate::train::run_dir::{DataRecord, Intent, LoadRecord, RunConfig, RunDir, State};
use crate::train::{train_first_order, train_mezo, FirstOrder, Outcome, TrainConfig, TrainTask};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    #[arg(long, value_enum, default_value = "mezo")]
    optimizer: OptimizerArg,
    /// Run directory: config.json, metrics.jsonl, trajectory.jsonl, results.json, model/.
    #[arg(long, value_name = "DIR", required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in DIR (killed or stopped by a signal): its trajectory is replayed
    /// without forward passes, then training goes on. Give the same arguments as the first time.
    /// (`--out DIR` on a run of the same configuration does the same.)
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
    /// Replace the run in --out DIR, whatever its configuration, instead of continuing it.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// [default: 1000; --script: 20000]
    #[arg(long, value_name = "N")]
    steps: Option<usize>,
    /// Global batch size, split over the ranks [default: 16].
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,
    /// [default: 1e-6; --script: 1e-5]
    #[arg(long, value_name = "LR")]
    lr: Option<f64>,
    /// Perturbation size ε [default: 1e-3].
    #[arg(long, value_name = "EPS")]
    eps: Option<f64>,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Which tensors weight decay applies to.
    #[arg(long, value_enum, default_value = "all")]
    weight_decay_rule: DecayRuleArg,
    /// [default: constant]
    #[arg(long, value_enum)]
    lr_schedule: Option<ScheduleArg>,
    /// Evaluate on dev every N steps (and after the last); 0: only after the last [default: 100;
    /// --script: 4000].
    #[arg(long, value_name = "N")]
    eval_every: Option<usize>,
    /// Examples per evaluation batch [default: 32; large-model tasks: 8, the reference Trainer's,
    /// whose dev loss is a mean of per-batch means and so depends on it].
    #[arg(long, value_name = "N")]
    eval_batch_size: Option<usize>,
    /// Parameter and activation type: f32, bf16 or f16 [default: f32; --script: f16].
    #[arg(long)]
    dtype: Option<DtypeArg>,
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
    #[command(flatten)]
    large: LargeArgs,
    /// Large-model tasks: the defaults of one of MeZO's run scripts (large_models/mezo.sh), for
    /// every flag not given: --steps 20000 --batch-size 16 --lr 1e-5 --eps 1e-3 --eval-every 4000
    /// --lr-schedule constant --dtype f16 --num-train 1000 --num-dev 500 (CB, Copa: 100)
    /// --num-eval 1000 --train-set-seed 0, --train-as-classification except for Copa, ReCoRD,
    /// SQuAD and DROP; mezo-prefix adds --num-prefix 5, mezo-lora --lora-r 8 (α 16).
    #[arg(long, value_enum, value_name = "SCRIPT")]
    script: Option<ScriptArg>,
    /// Large-model tasks: cross-entropy over the candidates, their mean option
    /// log-probabilities as logits (the reference's --train_as_classification), instead of the
    /// LM loss on the gold candidate.
    #[arg(long)]
    train_as_classification: bool,
    /// Large-model tasks: the LM loss on the gold candidate's option tokens only (true, the
    /// reference's default) or on its whole sequence (false) [default: true].
    #[arg(long, value_name = "BOOL", conflicts_with = "train_as_classification")]
    only_train_option: Option<bool>,
    /// Large-model tasks: pick the weights test is evaluated with by the dev loss (lowest, as the
    /// reference's Trainer) or the dev metric (highest) [default: loss].
    #[arg(long, value_enum, value_name = "BY")]
    select_by: Option<SelectByArg>,
}

pub fn run(ctx: &Context, args: &TrainArgs) -> Result<Ending> {
    let dist = ctx.dist;
    let model_dir = args.data.model_dir().ok_or_else(|| input_error("mezo train needs --model DIR"))?;
    let (out_dir, intent) = match (&args.resume, &args.out) {
        (Some(run), Some(out)) if run != out => {
            return Err(input_error("--resume DIR continues DIR: leave out --out"))
        }
        (Some(run), _) => (run.clone(), Intent::Resume),
        (None, Some(out)) if args.overwrite => (out.clone(), Intent::Overwrite),
        (None, Some(out)) => (out.clone(), Intent::Start),
        (None, None) => unreachable!("clap requires --out or --resume"),
    };
    let large_task = args.data.large_task();
    check_family_flags(args, large_task)?;
    let settings = settings(args, large_task);
    validate(args, &settings)?;
    let seed = args.data.seed();
    let encoder = model::read_json(&model_dir.join("config.json"))
        .map(|c| matches!(c["model_type"].as_str(), Some("roberta" | "bert")))
        .unwrap_or(false);
    let lora = settings.lora_r.map(|rank| LoraConfig {
        rank,
        alpha: args.lora_alpha,
        targets: if encoder {
            vec!["query".into(), "value".into()]
        } else {
            vec!["q_proj".into(), "v_proj".into()]
        },
        seed: seed as i64,
    });
    let scope = match (&lora, settings.num_prefix) {
        (Some(_), Some(_)) => return Err(input_error("--lora-r and --num-prefix: choose one")),
        // MeZO medium's LoRA keeps the heads trainable; large trains the adapters only.
        (Some(_), None) if encoder => Scope::LoraAndHeads,
        (Some(_), None) => Scope::Lora,
        (None, Some(_)) => Scope::Prefix,
        (None, None) => Scope::Full,
    };
    let config = TrainConfig {
        steps: settings.steps,
        batch_size: settings.batch_size,
        lr: settings.lr,
        eps: settings.eps,
        weight_decay: args.weight_decay,
        decay_rule: args.weight_decay_rule.into(),
        lr_schedule: settings.lr_schedule.into(),
        seed,
        eval_every: settings.eval_every,
        eval_batch_size: settings.eval_batch_size,
        freeze: FreezeRules {
            scope,
            exclude_embeddings: args.exclude_embeddings,
            exclude_head: args.exclude_head,
            only_biases: false,
        },
        out_dir: out_dir.clone(),
        save_model: args.save_model,
        zo_samples: args.zo_samples,
        parallel: args.parallel.into(),
        objective: args.objective.into(),
        check_every: args.check_every,
        zo_optimizer: args.zo_optimizer.with_momentum(args.momentum),
        micro_batch_size: args.micro_batch_size,
        paired_pass: !args.no_paired_pass,
        rng: args.rng.into(),
        stash: args.best_weights.into(),
    };
    let mut options = LoadOptions {
        device: ctx.device.resolve(dist.local_rank())?,
        dtype: settings.dtype.into(),
        num_labels: None,
        init_seed: seed as i64,
        lora,
        num_prefix: settings.num_prefix,
        adapter: None,
        random_weights: None,
    };
    if let Some(task) = large_task {
        let model = model::load(&model_dir, &options)?;
        let loss = match (settings.train_as_classification, args.only_train_option.unwrap_or(true)) {
            (true, _) => LargeLoss::Classification,
            (false, true) => LargeLoss::Option,
            (false, false) => LargeLoss::Sequence,
        };
        let training = LargeTraining {
            loss,
            select_by: args.select_by.map_or(SelectBy::Loss, Into::into),
            generation_batch: settings.eval_batch_size,
        };
        let (mut data, record) =
            settings.large.train_task(&args.data, task, training, &model, &model_dir, options.device)?;
        return train(ctx, args, &model, &mut data, &config, &options, record, intent);
    }
    let mut data_config = args.data.config()?;
    let finetune = data_config.few_shot_type == FewShotType::Finetune;
    options.num_labels = Some(data_config.task.labels.len() as i64);
    let model = model::load(&model_dir, &options)?;
    if finetune {
        args.data.check_classifier(&model, &model_dir)?;
    }
    data_config.causal = model.causal_lm().is_some();
    if finetune && data_config.causal {
        return Err(input_error("--few-shot-type finetune needs an encoder model (RoBERTa/BERT)"));
    }
    let mut data = TaskData::load(data_config)?;
    crate::eval::check_lengths(&model, &data)?;
    let record = DataRecord {
        task: data.config.task.name.to_string(),
        data_dir: data.config.data_dir.clone(),
        fingerprint: Some(data.fingerprint()),
        tokenizer: data.config.tokenizer.clone(),
        few_shot_type: format!("{:?}", data.config.few_shot_type),
        template: data.config.template.clone(),
        mapping: data.config.mapping.clone(),
        lengths: format!("{:?}", data.config.lengths),
        truncate_head: data.config.truncate_head,
        seed: data.config.seed,
        large: None,
    };
    train(ctx, args, &model, &mut data, &config, &options, record, intent)
}

/// The flags a --script preset decides when they are not given, resolved.
struct Settings {
    steps: usize,
    batch_size: usize,
    lr: f64,
    eps: f64,
    eval_every: usize,
    eval_batch_size: usize,
    lr_schedule: ScheduleArg,
    dtype: DtypeArg,
    lora_r: Option<i64>,
    num_prefix: Option<i64>,
    train_as_classification: bool,
    large: LargeArgs,
}

/// The flags as given, the gaps filled by --script (large-model tasks) or the defaults.
fn settings(args: &TrainArgs, large_task: Option<large::Task>) -> Settings {
    let script = args.script.filter(|_| large_task.is_some());
    let mut large = args.large.clone();
    let mut train_as_classification = args.train_as_classification;
    let (mut lora_r, mut num_prefix) = (args.lora_r, args.num_prefix);
    if let (Some(script), Some(task)) = (script, large_task) {
        large.num_train = large.num_train.or(Some(1000));
        let dev = if matches!(task, large::Task::Cb | large::Task::Copa) { 100 } else { 500 };
        large.num_dev = large.num_dev.or(Some(dev));
        large.num_eval = large.num_eval.or(Some(1000));
        large.train_set_seed = large.train_set_seed.or(Some(0));
        let lm_loss =
            matches!(task, large::Task::Copa | large::Task::Record | large::Task::Squad | large::Task::Drop);
        train_as_classification |= !lm_loss && args.only_train_option.is_none();
        match script {
            ScriptArg::Mezo => {}
            ScriptArg::MezoPrefix => num_prefix = num_prefix.or(Some(5)),
            ScriptArg::MezoLora => lora_r = lora_r.or(Some(8)),
        }
    }
    fn by_script<T>(script: Option<ScriptArg>, preset: T, default: T) -> T {
        if script.is_some() {
            preset
        } else {
            default
        }
    }
    Settings {
        steps: args.steps.unwrap_or(by_script(script, 20_000, 1000)),
        batch_size: args.batch_size.unwrap_or(16),
        lr: args.lr.unwrap_or(by_script(script, 1e-5, 1e-6)),
        eps: args.eps.unwrap_or(1e-3),
        eval_every: args.eval_every.unwrap_or(by_script(script, 4000, 100)),
        eval_batch_size: args.eval_batch_size.unwrap_or(if large_task.is_some() { 8 } else { 32 }),
        lr_schedule: args.lr_schedule.unwrap_or(ScheduleArg::Constant),
        dtype: args.dtype.unwrap_or(by_script(script, DtypeArg::F16, DtypeArg::F32)),
        lora_r,
        num_prefix,
        train_as_classification,
        large,
    }
}

/// Refuses the flags of the other task family.
fn check_family_flags(args: &TrainArgs, large: Option<large::Task>) -> Result<()> {
    match large {
        Some(task) => args.large.check_for_training(&args.data, task)?,
        None => {
            let mut given = args.large.given();
            given.extend(
                [
                    (args.train_as_classification, "--train-as-classification"),
                    (args.script.is_some(), "--script"),
                    (args.only_train_option.is_some(), "--only-train-option"),
                    (args.select_by.is_some(), "--select-by"),
                ]
                .into_iter()
                .filter_map(|(set, name)| set.then_some(name)),
            );
            if let Some(flag) = given.first() {
                return Err(input_error(format!(
                    "{flag} is for MeZO's large-model tasks; --task {} is an LM-BFF task",
                    args.data.task_name()
                )));
            }
        }
    }
    Ok(())
}

/// Trains `data` with the optimiser of `args` in the run directory `config.out_dir`.
#[allow(clippy::too_many_arguments)]
fn train<T: TrainTask>(
    ctx: &Context,
    args: &TrainArgs,
    model: &model::Model,
    data: &mut T,
    config: &TrainConfig,
    options: &LoadOptions,
    record: DataRecord,
    intent: Intent,
) -> Result<Ending> {
    let dist = ctx.dist;
    let out_dir = &config.out_dir;
    let run_config = RunConfig {
        program: format!("mezo {}", env!("CARGO_PKG_VERSION")),
        optimizer: format!("{:?}", args.optimizer).to_lowercase(),
        rng: matches!(args.optimizer, OptimizerArg::Mezo).then_some(config.rng),
        ranks: dist.size(),
        load: LoadRecord {
            model: model.source.clone(),
            dtype: options.dtype,
            num_labels: options.num_labels,
            init_seed: options.init_seed,
            lora: options.lora.clone(),
            num_prefix: options.num_prefix,
        },
        train: config.clone(),
        data: record,
    };
    let run = RunDir::open(dist, out_dir, &run_config, intent)?;
    let outcome = match (run.state, args.optimizer) {
        (State::Finished, _) => {
            if dist.is_root() {
                println!(
                    "{} is a finished run of this configuration; not training it again",
                    out_dir.display()
                );
            }
            Outcome::Finished(read_summary(out_dir)?)
        }
        (state, OptimizerArg::Mezo) => {
            if state == State::Unfinished {
                log::info!("continuing the run in {}", out_dir.display());
            }
            let trained = train_mezo(model, data, dist, config, state == State::Unfinished);
            discard_if_unstarted(dist, &run, &trained);
            trained?
        }
        (_, OptimizerArg::Adam) => train_first_order(model, data, dist, config, FirstOrder::AdamW)?,
        (_, OptimizerArg::Sgd) => train_first_order(model, data, dist, config, FirstOrder::Sgd)?,
    };
    let ending = match outcome {
        Outcome::Finished(_) => Ending::Done,
        Outcome::Stopped(_) => Ending::Stopped,
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
    Ok(ending)
}

/// A fresh run that failed before its first step was recorded leaves nothing behind.
fn discard_if_unstarted<T>(dist: &crate::dist::Dist, run: &RunDir, trained: &Result<T>) {
    if trained.is_err() && run.state == State::Fresh && run.created && dist.is_root() {
        let started = crate::train::read_trajectory(&run.path, crate::train::TornTail::Repair)
            .is_ok_and(|t| !t.steps.is_empty());
        if !started {
            let _ = std::fs::remove_dir_all(&run.path);
        }
    }
}

fn read_summary(run: &std::path::Path) -> Result<crate::train::Summary> {
    let path = run.join(crate::train::run_dir::RESULTS);
    let text = std::fs::read_to_string(&path).map_err(|e| input_error(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| input_error(format!("{}: {e}", path.display())))
}

/// Every flag value checked before anything is loaded: errors name the flag.
fn validate(args: &TrainArgs, settings: &Settings) -> Result<()> {
    let positive = |flag: &str, value: usize| {
        if value == 0 {
            Err(input_error(format!("{flag} must be positive")))
        } else {
            Ok(())
        }
    };
    positive("--steps", settings.steps)?;
    positive("--batch-size", settings.batch_size)?;
    positive("--eval-batch-size", settings.eval_batch_size)?;
    positive("--zo-samples", args.zo_samples)?;
    let real = |flag: &str, value: f64, low: f64, low_allowed: bool| {
        let above = if low_allowed { value >= low } else { value > low };
        if !value.is_finite() || !above {
            let bound = if low_allowed { "≥" } else { ">" };
            Err(input_error(format!("{flag} must be a finite number {bound} {low}, not {value}")))
        } else {
            Ok(())
        }
    };
    real("--lr", settings.lr, 0.0, true)?;
    real("--eps", settings.eps, 0.0, false)?;
    real("--weight-decay", args.weight_decay, 0.0, true)?;
    real("--momentum", args.momentum, 0.0, true)?;
    if args.momentum >= 1.0 {
        return Err(input_error(format!("--momentum must be below 1, not {}", args.momentum)));
    }
    real("--lora-alpha", args.lora_alpha, 0.0, false)?;
    if args.lora_r.is_some_and(|r| r <= 0) {
        return Err(input_error("--lora-r must be positive"));
    }
    if args.num_prefix.is_some_and(|m| m <= 0) {
        return Err(input_error("--num-prefix must be positive"));
    }
    if !matches!(args.optimizer, OptimizerArg::Mezo) && !matches!(args.zo_optimizer, ZoOptimizerArg::Sgd) {
        return Err(input_error("--zo-optimizer is a MeZO option (use --optimizer adam for backprop Adam)"));
    }
    if !matches!(args.optimizer, OptimizerArg::Mezo)
        && (args.zo_samples != 1
            || !matches!(args.parallel, ParallelArg::Data)
            || !matches!(args.objective, ObjectiveArg::Loss))
    {
        return Err(input_error("--zo-samples, --parallel directions and --objective are MeZO options"));
    }
    if matches!(args.parallel, ParallelArg::Directions) && args.zo_samples != 1 {
        return Err(input_error(
            "--parallel directions evaluates one direction per rank: leave --zo-samples at 1",
        ));
    }
    if args.resume.is_some() && !matches!(args.optimizer, OptimizerArg::Mezo) {
        return Err(input_error("--resume continues MeZO runs (their trajectory is the checkpoint)"));
    }
    Ok(())
}
