use super::Context;
use crate::error::input_error;
use crate::model::{self, FreezeRules, LoadOptions};
use crate::optim::mezo::Mezo;
use crate::optim::Trained;
use crate::train::{fingerprint, read_trajectory, trainable, TornTail, TrainConfig, Trajectory};
use anyhow::{Context as _, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// A MeZO run directory (config.json and trajectory.jsonl).
    run: PathBuf,
    /// Where to write the fine-tuned model (a Hugging Face directory).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Rebuilds the fine-tuned weights from the initial model and the trajectory alone: per step, the
/// three perturbations and the update, regenerated from the seed; no data, no forward pass.
pub fn run(ctx: &Context, args: &ReplayArgs) -> Result<()> {
    crate::fsio::check_output("--out", &args.out, true)?;
    ctx.dist.on_root(|| {
        let same = |a: &std::path::Path, b: &std::path::Path| {
            a.canonicalize().ok().zip(b.canonicalize().ok()).is_some_and(|(a, b)| b.starts_with(a))
        };
        if same(&args.out, &args.run) {
            return Err(input_error(format!(
                "--out {}: that would replace the run directory {}; choose another --out",
                args.out.display(),
                args.run.display()
            )));
        }
        let config_path = args.run.join("config.json");
        let config = model::read_json(&config_path)?;
        let bad = |what: &str| input_error(format!("{}: no valid {what}", config_path.display()));
        let load = &config["load"];
        let train: TrainConfig =
            serde_json::from_value(config["train"].clone()).map_err(|_| bad("train section"))?;
        let options = LoadOptions {
            device: ctx.device.resolve(ctx.dist.local_rank())?,
            dtype: serde_json::from_value(load["dtype"].clone()).map_err(|_| bad("load.dtype"))?,
            num_labels: load["num_labels"].as_i64(),
            init_seed: load["init_seed"].as_i64().ok_or_else(|| bad("load.init_seed"))?,
            lora: serde_json::from_value(load["lora"].clone()).map_err(|_| bad("load.lora"))?,
            num_prefix: load["num_prefix"].as_i64(),
            adapter: None,
            random_weights: None,
        };
        let model_dir = PathBuf::from(load["model"].as_str().ok_or_else(|| bad("load.model"))?);
        let m = model::load(&model_dir, &options)?;
        let freeze: FreezeRules = train.freeze;
        let tensors = trainable(&m, &freeze);
        let Trajectory { header, steps, .. } = read_trajectory(&args.run, TornTail::Refuse)?;
        if steps.len() < train.steps {
            return Err(input_error(format!(
                "{}: the trajectory records {} of the run's {} steps (an unfinished run: finish it with mezo train \
                 --resume first)",
                args.run.display(),
                steps.len(),
                train.steps
            )));
        }
        if header["initial_fingerprint"] != fingerprint(&tensors).as_str() {
            return Err(input_error(format!(
                "{}: the initial weights of {} are not those the run started from",
                args.run.display(),
                model_dir.display()
            )));
        }
        let progress = crate::logging::progress_bar(ctx.dist, steps.len() as u64, "steps");
        let mut optimiser = Mezo::new(tensors, train.mezo_settings())?;
        for step in &steps {
            optimiser.replay(&step.directions(), step.lr);
            progress.inc(1);
        }
        // Rows no pass read hold their updates pending until now.
        optimiser.flush();
        progress.finish_and_clear();
        m.save(&args.out, model::MAX_SHARD_BYTES)
            .with_context(|| format!("saving {}", args.out.display()))?;
        println!("replayed {} steps of {} into {}", steps.len(), args.run.display(), args.out.display());
        Ok(())
    })?;
    Ok(())
}
