use super::sweep::{forwarded_globals, shell_words, LauncherArg};
use super::{Cli, Command, Context};
use crate::error::{input_error, InputError};
use crate::scaling::{self, CostModel, Measurement, Mode, Workload};
use crate::sweep::{flag_value, set_flag};
use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::Stdio;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  mezo scaling --ranks 1,2,4 --mode weak --out scaling/mezo -- \\
      train --task sst-2 --model roberta-large --data-dir data/k-shot-1k-test/SST-2/512-42 --batch-size 16 --steps 20
  mezo scaling --ranks 1,2,4 --out scaling/kernel -- \\
      kernel --task sst-2 --model roberta-base --data-dir data/k-shot-1k-test/SST-2/16-42")]
pub struct ScalingArgs {
    /// The rank counts to measure, e.g. 1,2,4,8.
    #[arg(long, value_delimiter = ',', required = true, value_name = "R,...")]
    ranks: Vec<usize>,
    /// strong: the same global work at every rank count; weak: the same work per rank (the
    /// command's --batch-size for train, --train-rows for kernel, times the ranks).
    #[arg(long, value_enum, default_value = "strong")]
    mode: ModeArg,
    /// A new or empty directory: each rank count's run and log (ranks-R/), scaling.csv,
    /// projection.csv and the SVG charts.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// How the ranks start: mpirun, or srun inside an allocation.
    #[arg(long, value_enum, default_value = "mpirun")]
    launcher: LauncherArg,
    /// An option for the launcher, e.g. --launcher-arg=--oversubscribe (repeat for more).
    #[arg(long = "launcher-arg", value_name = "OPTION", allow_hyphen_values = true)]
    launcher_args: Vec<String>,
    /// The command to measure, after `--`: `train` (data-parallel MeZO or first-order steps) or
    /// `kernel`, without --out. Each rank gets --threads threads (default 1), the same at every
    /// rank count.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    Strong,
    Weak,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Strong => Mode::Strong,
            ModeArg::Weak => Mode::Weak,
        }
    }
}

pub fn run(ctx: &Context, args: &ScalingArgs) -> Result<()> {
    if ctx.dist.size() > 1 {
        return Err(input_error("mezo scaling runs as one process: it starts the ranks of each measurement"));
    }
    let mut ranks = args.ranks.clone();
    ranks.sort_unstable();
    ranks.dedup();
    if ranks.is_empty() || ranks[0] == 0 || ranks.len() != args.ranks.len() {
        return Err(input_error("--ranks: distinct positive rank counts, e.g. 1,2,4"));
    }
    let mode = Mode::from(args.mode);
    let workload = match args.command.first().map(String::as_str) {
        Some("train") => Workload::Train,
        Some("kernel") => Workload::Kernel,
        _ => return Err(input_error("mezo scaling measures `train` or `kernel`: give one after `--`")),
    };
    if flag_value(&args.command, "out").is_some() {
        return Err(input_error(
            "leave --out out of the command: mezo scaling gives each rank count its own",
        ));
    }
    let per_rank = match (mode, workload) {
        (Mode::Strong, _) => None,
        (Mode::Weak, Workload::Train) => Some(("batch-size", flag_value(&args.command, "batch-size"))),
        (Mode::Weak, Workload::Kernel) => Some(("train-rows", flag_value(&args.command, "train-rows"))),
    };
    let per_rank = match per_rank {
        None => None,
        Some((flag, Some(value))) => Some((
            flag,
            value.parse::<usize>().map_err(|_| input_error(format!("--{flag} {value}: not a count")))?,
        )),
        Some((flag, None)) => {
            return Err(input_error(format!(
                "--mode weak: give the per-rank work as the command's --{flag} N"
            )))
        }
    };
    let out = std::path::absolute(&args.out)?;
    if out.exists() && std::fs::read_dir(&out).map_or(true, |mut d| d.next().is_some()) {
        return Err(input_error(format!("--out {}: give a new or empty directory", out.display())));
    }
    let threads = ctx.global.threads.map_or(1, usize::from);
    // Every command line checked before the first one runs.
    let mut plans = Vec::new();
    for &r in &ranks {
        let dir = out.join(format!("ranks-{r}"));
        let mut command = args.command.clone();
        if let Some((flag, n)) = per_rank {
            set_flag(&mut command, flag, &(n * r).to_string())?;
        }
        let result = match workload {
            Workload::Train => dir.join("run"),
            Workload::Kernel => dir.join("kernel.h5"),
        };
        command.extend(["--out".to_string(), result.to_string_lossy().into_owned()]);
        let cli = Cli::try_parse_from(std::iter::once("mezo".to_string()).chain(command.iter().cloned()))
            .map_err(|e| InputError(e.render().to_string().trim_end().to_string()))?;
        if !matches!(cli.command, Command::Train(_) | Command::Kernel(_)) {
            bail!(InputError("mezo scaling measures `train` or `kernel`".into()));
        }
        plans.push((r, dir, command, result));
    }
    let exe = std::env::current_exe().context("locating the mezo binary")?;
    let mut measurements = Vec::new();
    for (r, dir, command, result) in plans {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let launch = |mezo_args: &[String]| -> Vec<String> {
            let mut argv = args.launcher.argv(r, &args.launcher_args);
            argv.push(exe.to_string_lossy().into_owned());
            argv.extend(forwarded_globals(ctx.global, false));
            argv.extend(["--threads".into(), threads.to_string()]);
            argv.extend(mezo_args.iter().cloned());
            argv
        };
        let argv = launch(&command);
        log::info!("{r} rank(s): {}", shell_words(&argv));
        let log_path = dir.join("log.txt");
        let log =
            std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let status = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .with_context(|| format!("starting {}", argv[0]))?;
        if !status.success() {
            bail!("{r} rank(s) failed ({status}); its output: {}", log_path.display());
        }
        let (seconds, compute, communication, work) = match workload {
            Workload::Train => scaling::read_train_run(&result)?,
            Workload::Kernel => scaling::read_kernel(&result)?,
        };
        let probe = launch(&[
            "check".into(),
            "--json".into(),
            "--scratch".into(),
            dir.to_string_lossy().into_owned(),
        ]);
        log::info!("{r} rank(s), all-reduce time: {}", shell_words(&probe));
        let output = std::process::Command::new(&probe[0])
            .args(&probe[1..])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("starting {}", probe[0]))?;
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        let all_reduce =
            report["all_reduce_seconds"].as_f64().filter(|_| output.status.success()).ok_or_else(|| {
                anyhow::anyhow!(
                    "timing an all-reduce on {r} rank(s) failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                )
            })?;
        measurements.push(Measurement {
            workload,
            mode,
            ranks: r,
            threads,
            work,
            seconds,
            compute_seconds: compute,
            communication_seconds: communication,
            all_reduce_seconds: all_reduce,
            throughput: 0.0,
            speedup: 0.0,
            efficiency: 0.0,
        });
    }
    scaling::complete(&mut measurements);
    scaling::write_csv(&out.join("scaling.csv"), &measurements)?;
    let models = scaling::models(&measurements);
    if !models.is_empty() {
        write_projection(&out.join("projection.csv"), &models)?;
    }
    for (name, svg) in scaling::charts(&measurements, &models)? {
        crate::fsio::write_atomic(&out.join(name), svg.as_bytes())?;
    }
    print_report(&measurements, &models, &out);
    Ok(())
}

/// `projection.csv`: ranks, then seconds and efficiency of each model (measured communication,
/// and for MeZO the latency bound), empty past the ranks that get work.
fn write_projection(path: &Path, models: &[(&str, CostModel)]) -> Result<()> {
    let mut text = String::from("ranks,seconds,efficiency");
    if models.len() > 1 {
        text.push_str(",seconds_latency_bound,efficiency_latency_bound");
    }
    text.push('\n');
    for r in scaling::projection_ranks() {
        let cells: Vec<Option<String>> = models
            .iter()
            .map(|(_, m)| Some(format!("{:.6},{:.4}", m.seconds(r)?, m.efficiency(r)?)))
            .collect();
        if cells.iter().all(Option::is_none) {
            continue;
        }
        let cells: Vec<String> = cells.into_iter().map(|c| c.unwrap_or_else(|| ",".into())).collect();
        text.push_str(&format!("{r},{}\n", cells.join(",")));
    }
    crate::fsio::write_atomic(path, text.as_bytes())
}

fn print_report(measurements: &[Measurement], models: &[(&str, CostModel)], out: &Path) {
    let (seconds_unit, throughput_unit) = measurements[0].workload.units();
    println!(
        "ranks  threads  work  {seconds_unit:>20}  compute  communication  all-reduce µs  {throughput_unit:>19}  efficiency"
    );
    for m in measurements {
        println!(
            "{:>5}  {:>7}  {:>4}  {:>20.4}  {:>7.4}  {:>13.5}  {:>13.1}  {:>19.2}  {:>10.3}",
            m.ranks,
            m.threads,
            m.work,
            m.seconds,
            m.compute_seconds,
            m.communication_seconds,
            m.all_reduce_seconds * 1e6,
            m.throughput,
            m.efficiency
        );
    }
    if models.is_empty() {
        println!("one rank count measured: no cost model (it needs two or more)");
    }
    for (name, model) in models {
        let form = match model.mode {
            Mode::Strong => "f + v/R + c + α·⌈log2 R⌉",
            Mode::Weak => "f + v + c + α·⌈log2 R⌉",
        };
        println!(
            "cost model ({name}) T(R) = {form}: f = {:.4} s (every rank), v = {:.4} s (split over ranks), \
             c = {:.6} s, α = {:.6} s per reduction level",
            model.fixed, model.divisible, model.communication, model.latency
        );
        let projected: Vec<String> = [8, 16, 64, 256, 1024]
            .into_iter()
            .map(|r| match model.efficiency(r) {
                Some(e) => format!("{r}: {:.0}%", 100.0 * e),
                None => format!("{r}: no work left per rank"),
            })
            .collect();
        println!("  projected efficiency: {}", projected.join(", "));
    }
    println!("written: {}/scaling.csv, projection.csv and scaling_*.svg", out.display());
}
