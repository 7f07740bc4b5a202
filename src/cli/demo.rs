use super::Context;
use crate::data::dataset::{DataConfig, FewShotType, TaskData};
use crate::data::kshot::{self, KshotConfig, Mode};
use crate::data::tasks::{self, Preset};
use crate::eval::evaluate;
use crate::model::{self, Dtype, FreezeRules, LoadOptions};
use crate::optim::zo::{Rng, ZoOptimizer};
use crate::optim::WeightDecay;
use crate::train::Stash;
use crate::train::{
    train_first_order, train_mezo, FirstOrder, LrSchedule, Objective, Outcome, Parallel, TrainConfig,
};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where the splits and run directories go.
    #[arg(long, default_value = "mezo-demo", value_name = "DIR")]
    out: PathBuf,
    /// The built-in demo: original/SST-2 (our sentences) and model/ (a tiny RoBERTa).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/demo"), value_name = "DIR")]
    demo_dir: PathBuf,
    /// MeZO steps (the backprop baseline takes an eighth).
    #[arg(long, default_value_t = 800)]
    steps: usize,
}

/// The whole product on the built-in tiny model and demo task: 16-shot splits, zero-shot, MeZO,
/// then Adam fine-tuning for comparison, with dev accuracy along the way.
pub fn run(ctx: &Context, args: &DemoArgs) -> Result<()> {
    crate::fsio::check_output("--out", &args.out, true)?;
    let dist = ctx.dist;
    let kshot_config = KshotConfig {
        data_dir: args.demo_dir.join("original"),
        out_dir: args.out.clone(),
        mode: Mode::KShot1kTest,
        k: 16,
        tasks: vec!["SST-2".into()],
        seeds: vec![42],
    };
    dist.on_root(|| kshot::generate(&kshot_config, &|_| {}))?;
    dist.barrier();
    let task = tasks::task("sst-2")?;
    let model_dir = args.demo_dir.join("model");
    let data_config = DataConfig {
        task,
        data_dir: args.out.join("k-shot-1k-test/SST-2/16-42"),
        tokenizer: model_dir.join("tokenizer.json"),
        few_shot_type: FewShotType::Prompt,
        template: task.template.into(),
        mapping: task.mapping.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        lengths: task.lengths(Preset::Mezo),
        truncate_head: false,
        seed: 42,
        causal: false,
    };
    let options = LoadOptions {
        num_labels: Some(2),
        init_seed: 42,
        ..LoadOptions::new(ctx.device.resolve(dist.local_rank())?, Dtype::F32)
    };
    let say = |text: String| {
        if dist.is_root() {
            println!("{text}");
        }
    };
    let train_config = |out: &str, steps: usize, lr: f64, eval_every: usize| TrainConfig {
        steps,
        batch_size: 16,
        lr,
        eps: 1e-3,
        weight_decay: 0.0,
        decay_rule: WeightDecay::AllTensors,
        lr_schedule: LrSchedule::Constant,
        seed: 42,
        eval_every,
        eval_batch_size: 32,
        freeze: FreezeRules::default(),
        out_dir: args.out.join(out),
        save_model: false,
        zo_samples: 1,
        parallel: Parallel::Data,
        objective: Objective::Loss,
        check_every: 100,
        zo_optimizer: ZoOptimizer::Sgd,
        rng: Rng::Fast,
        micro_batch_size: 0,
        paired_pass: true,
        stash: Stash::Memory,
    };
    let zero_shot = {
        let m = model::load(&model_dir, &options)?;
        let data = TaskData::load(data_config.clone())?;
        (evaluate(&m, &data, &data.dev, dist, 32)?, evaluate(&m, &data, &data.test, dist, 32)?)
    };
    say(format!(
        "zero-shot: dev acc {:.3}, test acc {:.3} (chance 0.5)",
        zero_shot.0["eval_acc"], zero_shot.1["eval_acc"]
    ));
    let mut results = Vec::new();
    for (name, optimizer, steps, lr) in [
        ("MeZO", None, args.steps, 1e-3),
        ("Adam FT", Some(FirstOrder::AdamW), (args.steps / 8).max(1), 1e-3),
    ] {
        say(format!("{name}: {steps} steps, batch 16, lr {lr}, {} rank(s)", dist.size()));
        let m = model::load(&model_dir, &options)?;
        let mut data = TaskData::load(data_config.clone())?;
        let dir = if optimizer.is_none() { "mezo-run" } else { "adam-run" };
        let config = train_config(dir, steps, lr, (steps / 8).max(1));
        let outcome = match optimizer {
            None => train_mezo(&m, &mut data, dist, &config, false)?,
            Some(o) => train_first_order(&m, &mut data, dist, &config, o)?,
        };
        let Outcome::Finished(summary) = outcome else {
            say(format!("{name} stopped by a signal"));
            return Ok(());
        };
        let curve = std::fs::read_to_string(config.out_dir.join("metrics.jsonl"))?
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| Some(format!("{}:{:.2}", v["step"], v.get("dev")?["eval_acc"].as_f64()?)))
            .collect::<Vec<_>>()
            .join(" ");
        say(format!("  dev accuracy by step: {curve}"));
        results.push((name, summary, config.out_dir.clone()));
    }
    say(format!("\n{:<10} {:>10} {:>10} {:>10}  run directory", "", "best step", "dev acc", "test acc"));
    say(format!(
        "{:<10} {:>10} {:>10.3} {:>10.3}",
        "zero-shot", "-", zero_shot.0["eval_acc"], zero_shot.1["eval_acc"]
    ));
    for (name, s, dir) in &results {
        say(format!(
            "{name:<10} {:>10} {:>10.3} {:>10.3}  {}",
            s.best_step,
            s.best_dev["eval_acc"],
            s.test["eval_acc"],
            dir.display()
        ));
    }
    Ok(())
}
