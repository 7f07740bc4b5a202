use super::data::DataArgs;
use super::large::{LargeArgs, LargeTraining};
use super::Context;
use crate::data::dataset::TaskData;
use crate::error::input_error;
use crate::linearhead::{self, LinearHeadConfig};
use crate::model::{self, Dtype, LoadOptions};
use crate::train::large::{LargeLoss, SelectBy};
use anyhow::{Context as _, Result};
use clap::Args;
use std::path::PathBuf;

/// Name of the report inside the written model directory.
const REPORT: &str = "linearhead.json";

#[derive(Args, Debug)]
pub struct LinearHeadArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Examples per forward pass on each rank.
    #[arg(long, default_value_t = 32, value_name = "N")]
    batch_size: usize,
    /// Where to write the model with its fitted head (a Hugging Face directory, replaced when
    /// complete); it also holds the fit's report as linearhead.json.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Also write the report (chosen C, CV accuracy, coefficients, dev/test metrics) here.
    #[arg(long, value_name = "FILE")]
    results: Option<PathBuf>,
    #[command(flatten)]
    large: LargeArgs,
}

/// Fits the probe on every rank, evaluates the model with it, and writes it from rank 0.
pub fn run(ctx: &Context, args: &LinearHeadArgs) -> Result<()> {
    crate::fsio::check_output("--out", &args.out, true)?;
    let dist = ctx.dist;
    let model_dir = args.data.model_dir().ok_or_else(|| input_error("mezo linearhead needs --model DIR"))?;
    if args.batch_size == 0 {
        return Err(input_error("--batch-size must be positive"));
    }
    let device = ctx.device.resolve(dist.local_rank())?;
    let (report, model) = if let Some(task) = args.data.large_task() {
        args.large.check_for_training(&args.data, task)?;
        let mut model = model::load(&model_dir, &LoadOptions::new(device, Dtype::F32))?;
        let training = LargeTraining {
            loss: LargeLoss::Option,
            select_by: SelectBy::Loss,
            generation_batch: args.batch_size,
        };
        let (data, _) = args.large.train_task(&args.data, task, training, &model, &model_dir, device)?;
        (linearhead::run_large(&mut model, &data, dist, args.batch_size)?, model)
    } else {
        if let Some(flag) = args.large.given().first() {
            return Err(input_error(format!(
                "{flag} is for MeZO's large-model tasks; --task {} is an LM-BFF task",
                args.data.task_name()
            )));
        }
        let config = args.data.config()?;
        linearhead::check_task(config.task)?;
        let options = LoadOptions {
            device,
            dtype: Dtype::F32,
            num_labels: Some(config.task.labels.len() as i64),
            init_seed: config.seed as i64,
            lora: None,
            num_prefix: None,
            adapter: None,
            random_weights: None,
        };
        let mut model = model::load(&model_dir, &options)?;
        let mut data = TaskData::load(config)?;
        crate::eval::check_lengths(&model, &data)?;
        let report =
            linearhead::run(&mut model, &mut data, dist, &LinearHeadConfig { batch_size: args.batch_size })?;
        (report, model)
    };
    dist.on_root(|| {
        model
            .save(&args.out, model::MAX_SHARD_BYTES)
            .with_context(|| format!("saving {}", args.out.display()))?;
        let json = serde_json::to_string_pretty(&report)?;
        crate::fsio::write_atomic(&args.out.join(REPORT), json.as_bytes())?;
        if let Some(path) = &args.results {
            crate::fsio::write_atomic(path, json.as_bytes())?;
        }
        println!(
            "{}: C = {:e}, train accuracy {:.4}; wrote {}",
            report.task,
            report.probe.c,
            report.train_accuracy,
            args.out.display()
        );
        println!("{:<24} {:>10} {:>10}", format!("{} ({} ranks)", report.task, dist.size()), "dev", "test");
        for (key, value) in &report.dev {
            println!("{key:<24} {value:>10.4} {:>10.4}", report.test.get(key).copied().unwrap_or(f64::NAN));
        }
        Ok(())
    })?;
    Ok(())
}
