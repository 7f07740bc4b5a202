use super::Context;
use crate::error::input_error;
use crate::plot;
use anyhow::{Context as _, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Training run directories, or directories searched for them (a sweep, a directory of runs).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Where to write the charts: train_loss.svg and one dev_<metric>.svg per dev metric.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Learning curves of the runs found, one line per run, written by rank 0.
pub fn run(ctx: &Context, args: &PlotArgs) -> Result<()> {
    ctx.dist.on_root(|| {
        let mut dirs = Vec::new();
        for path in &args.paths {
            let before = dirs.len();
            plot::find_runs(path, &mut dirs)?;
            if dirs.len() == before {
                return Err(input_error(format!(
                    "{}: no training run (a directory with metrics.jsonl) in it",
                    path.display()
                )));
            }
        }
        let runs = dirs.iter().map(|d| plot::read_run(d)).collect::<Result<Vec<_>>>()?;
        let charts = plot::learning_curves(&runs)?;
        std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
        for (name, svg) in &charts {
            crate::fsio::write_atomic(&args.out.join(name), svg.as_bytes())?;
        }
        let names: Vec<&str> = charts.iter().map(|(n, _)| n.as_str()).collect();
        println!("{} run(s): wrote {} in {}", runs.len(), names.join(", "), args.out.display());
        Ok(())
    })?;
    Ok(())
}
