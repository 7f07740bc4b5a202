use super::{dispatch, Cli, Command, Context, Ending, GlobalArgs};
use crate::error::{input_error, InputError};
use crate::sweep::{self, Axis, Manifest, Point};
use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, ValueEnum};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The single-node template, so that a sweep can submit without a checkout of the repository.
const SINGLE_NODE_TEMPLATE: &str = include_str!("../../slurm/single-node.sbatch");

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  mezo sweep runs/lr --grid lr=1e-6,1e-7 --grid seed=13,21,42,87,100 -- \\
      train --task sst-2 --model roberta-large --data-dir 'data/k-shot-1k-test/SST-2/16-{seed}'
  mezo sweep runs/lr --submit --max-parallel 4 --sbatch=--gpus-per-task=1     (the same sweep on Slurm)
  mezo gather runs/lr; mezo plot runs/lr --out plots")]
pub struct SweepArgs {
    /// The sweep's directory: sweep.json (command and grid), runs/POINT/ (each point's output),
    /// status/ (finished points), logs/.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// An axis of the grid, KEY=V1,V2,... (repeat for more axes): the values of the command's
    /// flag --KEY (replaced or appended), or of {KEY} where the command writes it; `ranks` sets the
    /// MPI ranks of each point. Given again for an existing sweep, it must be the same grid.
    #[arg(long = "grid", value_name = "KEY=V1,V2,...")]
    grid: Vec<String>,
    /// MPI ranks of every point when the grid has no `ranks` axis [default: 1].
    #[arg(long, value_name = "N")]
    ranks: Option<usize>,
    /// Submit the unfinished points as Slurm job arrays (one per rank count) instead of running
    /// them here.
    #[arg(long)]
    submit: bool,
    /// Array tasks that run at once (sbatch --array=...%N).
    #[arg(long, value_name = "N", requires = "submit")]
    max_parallel: Option<usize>,
    /// An sbatch option for the arrays, e.g. --sbatch=--partition=gpu --sbatch=--time=4:00:00
    /// (repeat for more).
    #[arg(long = "sbatch", value_name = "OPTION", allow_hyphen_values = true, requires = "submit")]
    sbatch: Vec<String>,
    /// The job script of the arrays [default: mezo's single-node template, written to
    /// DIR/job.sbatch]; it must run its arguments as a mezo command line, as the template does.
    #[arg(long, value_name = "FILE", requires = "submit")]
    template: Option<PathBuf>,
    /// Wait until the arrays end (sbatch --wait), then report the points.
    #[arg(long, requires = "submit")]
    wait: bool,
    /// How multi-rank points start: mpirun or srun [default: mpirun here; srun in submitted jobs,
    /// as the template's MEZO_LAUNCHER].
    #[arg(long, value_enum)]
    launcher: Option<LauncherArg>,
    /// An option for the launcher of points run here, e.g. --launcher-arg=--oversubscribe (repeat
    /// for more).
    #[arg(long = "launcher-arg", value_name = "OPTION", allow_hyphen_values = true)]
    launcher_args: Vec<String>,
    /// List the points, their state and what would run; run nothing.
    #[arg(long)]
    dry_run: bool,
    /// Run the point with this name or index in this process (what the sweep starts for each
    /// point; its ranks are this job's).
    #[arg(long, value_name = "POINT", conflicts_with_all = ["submit", "array_task"])]
    point: Option<String>,
    /// Run the point of this Slurm array task (SLURM_ARRAY_TASK_ID) in this process (what the
    /// submitted job script runs).
    #[arg(long, conflicts_with = "submit")]
    array_task: bool,
    /// The mezo command line to sweep, after `--` (e.g. -- train --task sst-2 ...). Left out:
    /// the command of DIR's existing sweep.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum LauncherArg {
    Mpirun,
    Srun,
}

impl LauncherArg {
    fn name(self) -> &'static str {
        match self {
            LauncherArg::Mpirun => "mpirun",
            LauncherArg::Srun => "srun",
        }
    }

    /// The command line that starts `ranks` ranks of what follows it, the user's launcher
    /// options last.
    pub(super) fn argv(self, ranks: usize, options: &[String]) -> Vec<String> {
        let mut argv: Vec<String> = match self {
            LauncherArg::Mpirun => vec!["mpirun".into(), "-np".into(), ranks.to_string()],
            LauncherArg::Srun => vec!["srun".into(), format!("--ntasks={ranks}"), "--mpi=pmix".into()],
        };
        argv.extend(options.iter().cloned());
        argv
    }
}

pub fn run(ctx: &Context, args: &SweepArgs) -> Result<Ending> {
    let dir = std::path::absolute(&args.dir).with_context(|| format!("resolving {}", args.dir.display()))?;
    if args.point.is_some() || args.array_task {
        return run_point(ctx, args, &dir);
    }
    if ctx.dist.size() > 1 {
        return Err(input_error(
            "mezo sweep runs as one process: each point starts its own ranks (--ranks N or --grid ranks=...)",
        ));
    }
    let (manifest, new) = resolve(args, &dir)?;
    for point in &manifest.points {
        parse_point(point)?;
    }
    if args.dry_run {
        print_points(&dir, &manifest);
        if args.submit {
            for (ranks, indices) in pending_by_ranks(&dir, &manifest) {
                println!(
                    "would submit: {}",
                    shell_words(&sbatch_args(args, &dir, ranks, &indices, Path::new("job.sbatch")))
                );
            }
        }
        return Ok(Ending::Done);
    }
    for sub in ["runs", "logs", "status"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    if new {
        manifest.write(&dir)?;
    }
    if args.submit {
        submit(ctx, args, &dir, &manifest)
    } else {
        run_here(ctx, args, &dir, &manifest)
    }
}

/// The sweep of `dir`: the one given (checked against the recorded one), or the recorded one.
fn resolve(args: &SweepArgs, dir: &Path) -> Result<(Manifest, bool)> {
    let recorded = Manifest::read(dir)?;
    if args.grid.is_empty() && args.command.is_empty() && args.ranks.is_none() {
        let manifest = recorded.ok_or_else(|| {
            input_error(format!(
                "{}: no sweep here ({} is missing): give the grid and the command (--grid KEY=V1,V2 -- COMMAND)",
                dir.display(),
                sweep::MANIFEST
            ))
        })?;
        return Ok((manifest, false));
    }
    let axes = args.grid.iter().map(|spec| Axis::parse(spec)).collect::<Result<Vec<_>, _>>()?;
    let given = Manifest::new(dir, args.command.clone(), axes, args.ranks.unwrap_or(1))?;
    match recorded {
        Some(recorded) => match recorded.difference(&given) {
            Some(why) => Err(input_error(format!(
                "{} holds another sweep ({why}): use a new directory, or leave out --grid, --ranks and the command \
                 to continue that one",
                dir.display()
            ))),
            None => Ok((recorded, false)),
        },
        None => {
            if dir.exists() && std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_some()) {
                return Err(input_error(format!(
                    "{}: a directory that is not a sweep (no {}); give an empty or new directory",
                    dir.display(),
                    sweep::MANIFEST
                )));
            }
            Ok((given, true))
        }
    }
}

/// A point's command line parsed as mezo parses its own, so that a typo fails before any point runs.
fn parse_point(point: &Point) -> Result<Cli> {
    let cli = Cli::try_parse_from(std::iter::once("mezo".to_string()).chain(point.args.iter().cloned()))
        .map_err(|e| InputError(format!("point {}: {}", point.name, e.render().to_string().trim_end())))?;
    if matches!(cli.command, Command::Sweep(_)) {
        bail!(InputError("a sweep's command cannot be another sweep".into()));
    }
    Ok(cli)
}

/// One point, in this process and its ranks; records it as finished when its command finished.
fn run_point(ctx: &Context, args: &SweepArgs, dir: &Path) -> Result<Ending> {
    let manifest = Manifest::read(dir)?.ok_or_else(|| {
        input_error(format!("{}: no sweep here ({} is missing)", dir.display(), sweep::MANIFEST))
    })?;
    let id = match &args.point {
        Some(id) => id.clone(),
        None => std::env::var("SLURM_ARRAY_TASK_ID").map_err(|_| {
            input_error("--array-task: SLURM_ARRAY_TASK_ID is not set (not a Slurm array task)")
        })?,
    };
    let point = manifest.point(&id)?;
    if ctx.dist.size() != point.ranks {
        return Err(input_error(format!(
            "point {} runs as {} rank(s), but this job has {}",
            point.name,
            point.ranks,
            ctx.dist.size()
        )));
    }
    if sweep::is_done(dir, &point.name) {
        log::info!("point {} has finished already", point.name);
        return Ok(Ending::Done);
    }
    let cli = parse_point(point)?;
    if ctx.dist.is_root() {
        let run_dir = sweep::point_dir(dir, &point.name);
        std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    }
    ctx.dist.barrier();
    log::info!("point {}: mezo {}", point.name, shell_words(&point.args));
    let ending = dispatch(ctx, &cli.command)?;
    if ending == Ending::Done && ctx.dist.is_root() {
        sweep::mark_done(dir, &point.name)?;
    }
    Ok(ending)
}

/// The flags of this invocation that the points' processes take too.
pub(super) fn forwarded_globals(global: &GlobalArgs, with_threads: bool) -> Vec<String> {
    let mut out = Vec::new();
    out.extend((0..global.verbose).map(|_| "-v".to_string()));
    out.extend((0..global.quiet).map(|_| "-q".to_string()));
    out.extend(["--device".to_string(), global.device.to_string()]);
    if let (true, Some(threads)) = (with_threads, global.threads) {
        out.extend(["--threads".to_string(), threads.to_string()]);
    }
    out
}

#[derive(Debug)]
enum PointState {
    Finished,
    Failed(ExitStatus),
    Stopped,
}

/// Runs the unfinished points here, one after another, each as its own process (and ranks).
fn run_here(ctx: &Context, args: &SweepArgs, dir: &Path, manifest: &Manifest) -> Result<Ending> {
    let exe = std::env::current_exe().context("locating the mezo binary")?;
    let signal = Arc::new(AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGUSR1] {
        signal_hook::flag::register_usize(sig, Arc::clone(&signal), sig as usize)
            .context("installing the signal handler")?;
    }
    let pending: Vec<&Point> = manifest.points.iter().filter(|p| !sweep::is_done(dir, &p.name)).collect();
    let finished_before = manifest.points.len() - pending.len();
    log::info!(
        "sweep {}: {} point(s), {finished_before} finished before, {} to run",
        dir.display(),
        manifest.points.len(),
        pending.len()
    );
    let bar = crate::logging::progress_bar(ctx.dist, pending.len() as u64, "points");
    let mut failed = Vec::new();
    let mut stopped = false;
    for point in pending {
        bar.set_message(point.name.clone());
        let log_path = dir.join("logs").join(format!("{}.log", point.name));
        let state = run_child(ctx, args, dir, point, &exe, &log_path, &signal)?;
        bar.inc(1);
        match state {
            PointState::Finished => log::info!("point {} finished", point.name),
            PointState::Failed(status) => {
                log::error!("point {} failed ({status}); its output: {}", point.name, log_path.display());
                failed.push(point.name.clone());
            }
            PointState::Stopped => {
                log::warn!(
                    "point {} stopped by a signal; the same command again continues the sweep",
                    point.name
                );
                stopped = true;
                break;
            }
        }
    }
    bar.finish_and_clear();
    print_points(dir, manifest);
    if !failed.is_empty() {
        bail!(
            "{} of {} point(s) failed: {} (output in {}); the same command again retries them",
            failed.len(),
            manifest.points.len(),
            failed.join(" "),
            dir.join("logs").display()
        );
    }
    Ok(if stopped { Ending::Stopped } else { Ending::Done })
}

/// One point as a child process (under the launcher when it has several ranks), its output
/// appended to its log; Slurm's signals to this process are passed on to it.
fn run_child(
    ctx: &Context,
    args: &SweepArgs,
    dir: &Path,
    point: &Point,
    exe: &Path,
    log_path: &Path,
    signal: &AtomicUsize,
) -> Result<PointState> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    // A one-rank point needs no launcher unless one was asked for.
    let mut argv = match (args.launcher, point.ranks) {
        (None, 1) => Vec::new(),
        (launcher, ranks) => launcher.unwrap_or(LauncherArg::Mpirun).argv(ranks, &args.launcher_args),
    };
    argv.push(exe.to_string_lossy().into_owned());
    argv.extend(forwarded_globals(ctx.global, true));
    argv.extend(["sweep".into(), dir.to_string_lossy().into_owned(), "--point".into(), point.name.clone()]);
    log::debug!("running {}", shell_words(&argv));
    let mut child: Child = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", argv[0]))?;
    let mut forwarded = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let sig = signal.load(Ordering::Relaxed);
        if sig != 0 && !forwarded {
            log::warn!("passing signal {sig} on to point {}", point.name);
            // SAFETY: kill(2) on our own child's pid with a valid signal number.
            unsafe { libc::kill(child.id() as libc::pid_t, sig as libc::c_int) };
            forwarded = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Ok(if sweep::is_done(dir, &point.name) {
        PointState::Finished
    } else if forwarded || status.success() {
        PointState::Stopped
    } else {
        PointState::Failed(status)
    })
}

/// Unfinished points by rank count (one array each).
fn pending_by_ranks(dir: &Path, manifest: &Manifest) -> BTreeMap<usize, Vec<usize>> {
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for point in manifest.points.iter().filter(|p| !sweep::is_done(dir, &p.name)) {
        groups.entry(point.ranks).or_default().push(point.index);
    }
    groups
}

/// `0-3,5,7-8`.
fn index_ranges(indices: &[usize]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < indices.len() {
        let mut j = i;
        while j + 1 < indices.len() && indices[j + 1] == indices[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { indices[i].to_string() } else { format!("{}-{}", indices[i], indices[j]) });
        i = j + 1;
    }
    parts.join(",")
}

fn sbatch_args(
    args: &SweepArgs,
    dir: &Path,
    ranks: usize,
    indices: &[usize],
    template: &Path,
) -> Vec<String> {
    let mut array = index_ranges(indices);
    if let Some(n) = args.max_parallel {
        array.push_str(&format!("%{n}"));
    }
    let mut argv = vec![
        "sbatch".to_string(),
        "--parsable".into(),
        format!("--array={array}"),
        format!("--ntasks={ranks}"),
        "--job-name=mezo-sweep".into(),
        format!("--output={}/logs/%A_%a.out", dir.display()),
    ];
    if args.wait {
        argv.push("--wait".into());
    }
    argv.extend(args.sbatch.iter().cloned());
    argv.push(template.to_string_lossy().into_owned());
    argv.extend(["sweep".into(), dir.to_string_lossy().into_owned(), "--array-task".into()]);
    argv
}

/// Submits one job array per rank count of the unfinished points.
fn submit(ctx: &Context, args: &SweepArgs, dir: &Path, manifest: &Manifest) -> Result<Ending> {
    if args.max_parallel == Some(0) {
        return Err(input_error("--max-parallel must be positive"));
    }
    let groups = pending_by_ranks(dir, manifest);
    if groups.is_empty() {
        print_points(dir, manifest);
        println!("every point has finished: mezo gather {}", dir.display());
        return Ok(Ending::Done);
    }
    let template = match &args.template {
        Some(path) => {
            if !path.is_file() {
                return Err(input_error(format!("--template {}: no such file", path.display())));
            }
            std::path::absolute(path)?
        }
        None => {
            let path = dir.join("job.sbatch");
            crate::fsio::write_atomic(&path, SINGLE_NODE_TEMPLATE.as_bytes())?;
            path
        }
    };
    let exe = std::env::current_exe().context("locating the mezo binary")?;
    let mut jobs = Vec::new();
    for (ranks, indices) in &groups {
        let mut argv = sbatch_args(args, dir, *ranks, indices, &template);
        // The template adds --threads from the job's CPUs per task.
        let at = argv.len() - 3;
        argv.splice(at..at, forwarded_globals(ctx.global, false));
        let mut command = std::process::Command::new(&argv[0]);
        command.args(&argv[1..]).env("MEZO_BIN", &exe).stdin(Stdio::null()).stderr(Stdio::inherit());
        if let Some(launcher) = args.launcher {
            command.env("MEZO_LAUNCHER", launcher.name());
        }
        command.stdout(Stdio::piped());
        log::debug!("{}", shell_words(&argv));
        let child = command.spawn().context("starting sbatch (is Slurm installed here?)")?;
        jobs.push((*ranks, indices.clone(), child));
    }
    let mut failed = false;
    for (ranks, indices, child) in jobs {
        let output = child.wait_with_output().context("waiting for sbatch")?;
        let job = String::from_utf8_lossy(&output.stdout).trim().split(';').next().unwrap_or("").to_string();
        if job.is_empty() {
            bail!(
                "sbatch refused the array of {} point(s) with {ranks} rank(s) ({}): see its message above",
                indices.len(),
                output.status
            );
        }
        failed |= !output.status.success();
        let record = serde_json::json!({"job": job, "array": index_ranges(&indices), "ranks": ranks});
        append_line(&dir.join("submissions.jsonl"), &record.to_string())?;
        println!(
            "submitted job array {job}: {} point(s) with {ranks} rank(s); output in {}/logs/{job}_*.out",
            indices.len(),
            dir.display()
        );
    }
    if !args.wait {
        println!("watch with `squeue --me`; when done: mezo gather {}", dir.display());
        return Ok(Ending::Done);
    }
    print_points(dir, manifest);
    let unfinished: Vec<&str> =
        manifest.points.iter().filter(|p| !sweep::is_done(dir, &p.name)).map(|p| p.name.as_str()).collect();
    if !unfinished.is_empty() || failed {
        bail!(
            "{} point(s) did not finish: {} (output in {}); `mezo sweep {} --submit` again resubmits them",
            unfinished.len(),
            unfinished.join(" "),
            dir.join("logs").display(),
            dir.display()
        );
    }
    Ok(Ending::Done)
}

fn append_line(path: &Path, line: &str) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(file, "{line}").with_context(|| format!("writing {}", path.display()))
}

fn print_points(dir: &Path, manifest: &Manifest) {
    let done = manifest.points.iter().filter(|p| sweep::is_done(dir, &p.name)).count();
    println!("sweep {}: {done} of {} point(s) finished", dir.display(), manifest.points.len());
    for point in &manifest.points {
        let state = if sweep::is_done(dir, &point.name) { "finished" } else { "pending" };
        println!("  {state:<9} {:>2} rank(s)  {}", point.ranks, point.name);
    }
}

/// A command line as a shell would take it back.
pub(super) fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+%@".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_indices_are_compressed_to_ranges() {
        assert_eq!(index_ranges(&[0, 1, 2, 3, 5, 7, 8]), "0-3,5,7-8");
        assert_eq!(index_ranges(&[4]), "4");
    }

    #[test]
    fn shell_words_quote_what_the_shell_would_split() {
        let argv = ["mezo".to_string(), "a b".into(), "it's".into(), "x={1}".into()];
        assert_eq!(shell_words(&argv), r"mezo 'a b' 'it'\''s' 'x={1}'");
    }
}
