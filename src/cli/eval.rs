use super::choices::DtypeArg;
use super::data::DataArgs;
use super::large::LargeArgs;
use super::Context;
use crate::data::dataset::{FewShotType, TaskData};
use crate::data::large;
use crate::data::large::prompt::PromptTokenizer;
use crate::data::large::sampling;
use crate::error::input_error;
use crate::eval::evaluate;
use crate::eval::large::EvalConfig;
use crate::model::{self, LoadOptions};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Parameter and activation type: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: DtypeArg,
    /// Features per forward pass on each rank.
    #[arg(long, default_value_t = 32, value_name = "N")]
    batch_size: usize,
    /// LoRA adapters saved by mezo (adapter_model.safetensors + adapter_config.json) to apply.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// Also write the results to this JSON file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Large-model tasks: write one JSON line per test example (id, candidates, scores,
    /// prediction, gold) to this file.
    #[arg(long, value_name = "FILE")]
    predictions: Option<PathBuf>,
    #[command(flatten)]
    large: LargeArgs,
}

pub fn run(ctx: &Context, args: &EvalArgs) -> Result<()> {
    if let Some(out) = &args.out {
        crate::fsio::check_output("--out", out, false)?;
    }
    if args.batch_size == 0 {
        return Err(input_error("--batch-size must be positive"));
    }
    if let Some(task) = args.data.large_task() {
        return run_large(ctx, args, task);
    }
    if let Some(flag) = args.large.given().first().or(args.predictions.as_ref().map(|_| &"--predictions")) {
        return Err(input_error(format!(
            "{flag} is for MeZO's large-model tasks; --task {} is an LM-BFF task",
            args.data.task_name()
        )));
    }
    let dist = ctx.dist;
    let model_dir = args.data.model_dir().ok_or_else(|| input_error("mezo eval needs --model DIR"))?;
    let device = ctx.device.resolve(dist.local_rank())?;
    let mut config = args.data.config()?;
    let finetune = config.few_shot_type == FewShotType::Finetune;
    let options = LoadOptions {
        device,
        dtype: args.dtype.into(),
        num_labels: Some(config.task.labels.len() as i64),
        init_seed: config.seed as i64,
        lora: None,
        num_prefix: None,
        adapter: args.adapter.clone(),
        random_weights: None,
    };
    let model = model::load(&model_dir, &options)?;
    if finetune {
        args.data.check_classifier(&model, &model_dir)?;
    }
    config.causal = model.causal_lm().is_some();
    let stored_classifier = model::weights::Weights::open(&model_dir)?.contains("classifier.weight");
    if finetune && model.encoder().is_some() && !stored_classifier {
        log::warn!(
            "{} has no classifier: finetune mode scores with a freshly initialised one",
            model_dir.display()
        );
    }
    let data = TaskData::load(config)?;
    crate::eval::check_lengths(&model, &data)?;
    let task = data.config.task;
    let dev = evaluate(&model, &data, &data.dev, dist, args.batch_size)?;
    let test = evaluate(&model, &data, &data.test, dist, args.batch_size)?;
    if dist.is_root() {
        let results = serde_json::json!({
            "task": task.name, "model": model_dir, "few_shot_type": format!("{:?}", data.config.few_shot_type).to_lowercase(),
            "dev": dev, "test": test, "dev_examples": data.dev.examples.len(), "test_examples": data.test.examples.len(),
        });
        println!("{:<24} {:>10} {:>10}", format!("{} ({} ranks)", task.name, dist.size()), "dev", "test");
        for (key, value) in &dev {
            println!("{key:<24} {value:>10.4} {:>10.4}", test.get(key).copied().unwrap_or(f64::NAN));
        }
        if let Some(out) = &args.out {
            crate::fsio::write_atomic(out, serde_json::to_string_pretty(&results)?.as_bytes())?;
        }
    }
    Ok(())
}

/// `mezo eval` on a large-model task: zero-shot, or in-context with demonstrations.
fn run_large(ctx: &Context, args: &EvalArgs, task: large::Task) -> Result<()> {
    if let Some(flag) = args.data.lmbff_flags_given().first() {
        return Err(input_error(format!(
            "{flag} is for LM-BFF tasks; {} is a large-model task",
            task.name()
        )));
    }
    if args.large.num_dev.is_some() {
        return Err(input_error(
            "--num-dev is for training: evaluation without training has no dev set (the reference asserts so)",
        ));
    }
    for (flag, path) in [("--out", &args.out), ("--predictions", &args.predictions)] {
        if let Some(path) = path {
            crate::fsio::check_output(flag, path, false)?;
        }
    }
    let dist = ctx.dist;
    let model_dir = args.data.model_dir().ok_or_else(|| input_error("mezo eval needs --model DIR"))?;
    let device = ctx.device.resolve(dist.local_rank())?;
    let config = EvalConfig {
        prompt: args.large.prompt()?,
        calibration: args.large.calibration(),
        batch_tokens: args.large.batch_tokens(device)?,
        generation_batch: args.batch_size,
    };
    let splits = large::load(task, args.data.data_dir())?;
    let plan = sampling::plan(&args.large.sampling(), splits.train.len(), splits.valid.len())?;
    let mut options = LoadOptions::new(device, args.dtype.into());
    options.adapter = args.adapter.clone();
    let model = model::load(&model_dir, &options)?;
    let tokenizer = PromptTokenizer::load(&model_dir, &model.model_type, args.large.opt_bos())?;
    let runs = crate::eval::large::eval_runs(&splits, &plan);
    let metric_name = task.metric();
    let mut set_results = Vec::new();
    let mut lines = Vec::new();
    for run in &runs {
        let (seed, samples) = (&run.seed, &run.queries);
        let predictions = crate::eval::large::predict(&model, &tokenizer, task, samples, &config, dist)?;
        let value = crate::eval::large::metric(task, &predictions);
        if dist.is_root() {
            match seed {
                Some(s) => println!(
                    "{} train set {s}: {metric_name} {value:.4} ({} examples)",
                    task.name(),
                    samples.len()
                ),
                None => println!(
                    "{} (one demonstration set per example): {metric_name} {value:.4} ({} examples)",
                    task.name(),
                    samples.len()
                ),
            }
        }
        for p in &predictions {
            let mut line = serde_json::to_value(p)?;
            if runs.len() > 1 {
                line["train_set_seed"] = serde_json::json!(seed);
            }
            lines.push(serde_json::to_string(&line)?);
        }
        set_results.push((*seed, value, samples.len()));
    }
    dist.on_root(|| {
        if let Some(path) = &args.predictions {
            let mut text = lines.join("\n");
            text.push('\n');
            crate::fsio::write_atomic(path, text.as_bytes())?;
        }
        if let Some(out) = &args.out {
            let mean = set_results.iter().map(|(_, v, _)| v).sum::<f64>() / set_results.len() as f64;
            let mut results = serde_json::json!({
                metric_name: mean,
                "task": task.name(),
                "model": model_dir,
                "examples": set_results.iter().map(|(_, _, n)| n).sum::<usize>(),
            });
            if set_results.len() > 1 {
                results["train_sets"] = set_results
                    .iter()
                    .map(|(seed, v, n)| serde_json::json!({"train_set_seed": seed, metric_name: v, "examples": n}))
                    .collect();
            } else if let Some((Some(seed), _, _)) = set_results.first() {
                results["train_set_seed"] = serde_json::json!(seed);
            }
            crate::fsio::write_atomic(out, serde_json::to_string_pretty(&results)?.as_bytes())?;
        }
        Ok(())
    })?;
    Ok(())
}
