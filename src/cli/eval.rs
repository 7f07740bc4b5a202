use super::choices::DtypeArg;
use super::data::DataArgs;
use super::Context;
use crate::data::dataset::{FewShotType, TaskData};
use crate::error::input_error;
use crate::eval::evaluate;
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
}

pub fn run(ctx: &Context, args: &EvalArgs) -> Result<()> {
    if let Some(out) = &args.out {
        crate::fsio::check_output("--out", out, false)?;
    }
    if args.batch_size == 0 {
        return Err(input_error("--batch-size must be positive"));
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
