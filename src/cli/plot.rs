use super::Context;
use crate::error::input_error;
use crate::{plot, scaling};
use anyhow::{Context as _, Result};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// Training run directories, or directories searched for them (a sweep, a directory of runs);
    /// or one `scaling.csv` of `mezo scaling`.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Where to write the charts: train_loss.svg and one dev_<metric>.svg per dev metric; for a
    /// scaling CSV, scaling_throughput.svg, scaling_efficiency.svg and scaling_projection.svg.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Also write each chart as PNG (NAME.png beside NAME.svg).
    #[arg(long)]
    png: bool,
}

/// Learning curves of the runs found, one line per run, written by rank 0.
pub fn run(ctx: &Context, args: &PlotArgs) -> Result<()> {
    ctx.dist.on_root(|| {
        if let [csv] = args.paths.as_slice() {
            if csv.is_file() && csv.extension().is_some_and(|e| e == "csv") {
                let measurements = scaling::read_csv(csv)?;
                let charts = scaling::charts(&measurements, &scaling::models(&measurements))?;
                return write_charts(
                    &args.out,
                    &charts,
                    args.png,
                    &format!("{} measurement(s)", measurements.len()),
                );
            }
        }
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
        write_charts(&args.out, &charts, args.png, &format!("{} run(s)", runs.len()))
    })?;
    Ok(())
}

fn write_charts(out: &Path, charts: &[(String, String)], png: bool, what: &str) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut names = Vec::new();
    for (name, svg) in charts {
        crate::fsio::write_atomic(&out.join(name), svg.as_bytes())?;
        names.push(name.clone());
        if png {
            let png_name = Path::new(name).with_extension("png");
            let bytes = plot::svg_to_png(svg).with_context(|| format!("rasterising {name}"))?;
            crate::fsio::write_atomic(&out.join(&png_name), &bytes)?;
            names.push(png_name.display().to_string());
        }
    }
    println!("{what}: wrote {} in {}", names.join(", "), out.display());
    Ok(())
}
