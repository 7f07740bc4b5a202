use super::choices::ModeArg;
use super::Context;
use crate::data::kshot::{self, KshotConfig, Mode};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct KshotArgs {
    /// Directory with one directory of raw files per task (LM-BFF's data/original).
    #[arg(long, default_value = "data/original", value_name = "DIR")]
    data_dir: PathBuf,
    /// Output root: files go to OUT/MODE/TASK/K-SEED/.
    #[arg(long, default_value = "data", value_name = "DIR")]
    out: PathBuf,
    /// k-shot (dev: k per label), k-shot-10x (dev: 10k per label) or k-shot-1k-test (test sets over
    /// 1000 items cut to a seed-42 random 1000, as LM-Kernel-FT and MeZO use).
    #[arg(long, default_value = "k-shot", value_name = "MODE")]
    mode: ModeArg,
    /// Training examples per label.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    k: u32,
    /// Task directories, in processing order [default: the reference's 15 tasks].
    #[arg(long = "task", num_args = 1.., value_name = "TASK")]
    tasks: Vec<String>,
    /// Seeds, in processing order (CoLA's splits depend on it) [default: 100 13 21 42 87].
    #[arg(long = "seed", num_args = 1.., value_name = "SEED")]
    seeds: Vec<u32>,
}

pub fn run(ctx: &Context, args: &KshotArgs) -> Result<()> {
    crate::fsio::check_output("--out", &args.out, true)?;
    let config = KshotConfig {
        data_dir: args.data_dir.clone(),
        out_dir: args.out.clone(),
        mode: args.mode.into(),
        k: args.k as usize,
        tasks: if args.tasks.is_empty() {
            kshot::DEFAULT_TASKS.iter().map(|t| t.to_string()).collect()
        } else {
            args.tasks.clone()
        },
        seeds: if args.seeds.is_empty() { kshot::DEFAULT_SEEDS.to_vec() } else { args.seeds.clone() },
    };
    let splits = (config.seeds.len() * config.tasks.len()) as u64;
    let progress = crate::logging::progress_bar(ctx.dist, splits, "splits");
    let done = ctx.dist.on_root(|| kshot::generate(&config, &|_| progress.inc(1)));
    progress.finish_and_clear();
    if let Some(dirs) = done? {
        println!(
            "{} split directories written under {}",
            dirs.len(),
            args.out.join(Mode::from(args.mode).dir_name()).display()
        );
    }
    Ok(())
}
