//! The command line: clap definitions and the translation of flags into the plain config structs
//! of the library modules. Nothing outside this module knows a flag.

mod check;
mod choices;
mod convert;
mod data;
mod demo;
mod encode;
mod eval;
mod gather;
mod info;
mod kernel;
mod kshot;
mod large;
mod linearhead;
mod plot;
mod replay;
mod scaling;
mod solve;
mod sweep;
mod train;

use crate::dist::device::{self, DeviceRequest};
use crate::dist::Dist;
use crate::{error, logging};
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "mezo",
    version,
    about = "Forward-only (MeZO) fine-tuning and eNTK kernels of language models, on one process or MPI ranks",
    after_help = "Run under `mpirun -np N` or `srun` for N ranks; every command gives the same results."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(Args, Debug)]
struct GlobalArgs {
    /// More log output (-v: debug on every rank, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Less log output (-q: warnings, -qq: errors only).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    quiet: u8,
    /// Device of each rank: auto (the rank's GPU if any, else CPU), cpu, cuda (the rank's GPU), cuda:N.
    #[arg(long, global = true, default_value = "auto", value_name = "DEVICE")]
    device: DeviceRequest,
    /// CPU threads per rank for libtorch [default: the cores of the node divided among its ranks].
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show versions of mezo, libtorch, CUDA, NCCL, MPI and HDF5, and where each rank runs.
    Info(info::InfoArgs),
    /// Check collectives, collective HDF5 writes and the GPUs of this allocation.
    Check(check::CheckArgs),
    /// Make k-shot train/dev/test splits, byte-identical to LM-BFF's generate_k_shot_data.py.
    Kshot(kshot::KshotArgs),
    /// Show how a task's examples are encoded: tokens, mask position and label of each feature.
    Encode(encode::EncodeArgs),
    /// Read a Hugging Face model and write it back: another dtype, other shards.
    Convert(convert::ConvertArgs),
    /// Evaluate a model (zero-shot or fine-tuned) on a task's dev and test sets.
    Eval(eval::EvalArgs),
    /// Fine-tune with forward passes only (MeZO), as one process or data-parallel ranks.
    Train(train::TrainArgs),
    /// Rebuild a MeZO run's fine-tuned model from its trajectory alone.
    Replay(replay::ReplayArgs),
    /// Solve a kernel file (lstsq, logistic, svr, svc, asym) and report dev/test metrics.
    Solve(solve::SolveArgs),
    /// Results over seeds: best dev per seed, test mean (std), per task and configuration.
    Gather(gather::GatherArgs),
    /// MeZO and Adam fine-tuning end to end on the built-in tiny model and demo task.
    Demo(demo::DemoArgs),
    /// Compute eNTK kernels (sgd, signgd, asymmetric_signgd) into an HDF5 file, row blocks over
    /// the ranks; rerun to continue an interrupted file.
    Kernel(kernel::KernelArgs),
    /// Fit a linear probe on the frozen features of the output layer (multinomial logistic
    /// regression, cross-validated as scikit-learn) and save the model with it as its head.
    Linearhead(linearhead::LinearHeadArgs),
    /// Learning curves of training runs and sweeps (training loss and dev metrics against the
    /// step, one line per run) as SVG.
    Plot(plot::PlotArgs),
    /// Run a mezo command over a grid of flag values (seeds, learning rates, ranks, ...), here one
    /// point after another or as a Slurm job array; finished points are skipped, interrupted ones
    /// continue.
    Sweep(sweep::SweepArgs),
    /// Measure a train or kernel command at several rank counts (strong or weak scaling): a CSV
    /// of time, throughput, efficiency and time in collectives, SVG charts, and a cost model's
    /// projection to 1024 ranks.
    Scaling(scaling::ScalingArgs),
}

/// Runs the command line of this process; returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let dist = match Dist::init() {
        Ok(dist) => dist,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 1;
        }
    };
    install_panic_abort(&dist);
    let verbosity = cli.global.verbose as i8 - cli.global.quiet as i8;
    logging::init(verbosity, dist.is_root(), (dist.size() > 1).then_some(dist.rank()));
    let threads = cli.global.threads.map_or_else(|| device::default_threads(dist.local_size()), usize::from);
    device::set_threads(threads);
    log::debug!("{dist:?}, {threads} intra-op thread(s)");

    let context = Context { dist: &dist, device: cli.global.device, threads, global: &cli.global };
    let result = dispatch(&context, &cli.command);
    match result {
        Ok(_) => 0,
        Err(e) if error::is_all_ranks(&e) => {
            if dist.is_root() {
                log::error!("{e:#}");
            }
            error::exit_code(&e)
        }
        Err(e) => {
            log::error!("{e:#}");
            let code = error::exit_code(&e);
            if dist.size() > 1 {
                // Other ranks may be waiting in a collective for this one: end the whole job.
                dist.abort(code);
            }
            code
        }
    }
}

/// What every command gets besides its own arguments.
struct Context<'a> {
    dist: &'a Dist,
    device: DeviceRequest,
    threads: usize,
    /// The global flags as given, for commands that start mezo again (sweep).
    global: &'a GlobalArgs,
}

/// How a command that returned without error ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Its work is complete.
    Done,
    /// Stopped early by a signal (SIGUSR1/SIGTERM); running it again continues it.
    Stopped,
}

/// Runs one command in this process.
fn dispatch(context: &Context, command: &Command) -> anyhow::Result<Ending> {
    let done = |result: anyhow::Result<()>| result.map(|()| Ending::Done);
    match command {
        Command::Info(args) => done(info::run(context, args)),
        Command::Check(args) => done(check::run(context, args)),
        Command::Kshot(args) => done(kshot::run(context, args)),
        Command::Encode(args) => done(encode::run(context, args)),
        Command::Convert(args) => done(convert::run(context, args)),
        Command::Eval(args) => done(eval::run(context, args)),
        Command::Train(args) => train::run(context, args),
        Command::Replay(args) => done(replay::run(context, args)),
        Command::Solve(args) => done(solve::run(context, args)),
        Command::Gather(args) => done(gather::run(context, args)),
        Command::Demo(args) => done(demo::run(context, args)),
        Command::Kernel(args) => done(kernel::run(context, args)),
        Command::Linearhead(args) => done(linearhead::run(context, args)),
        Command::Plot(args) => done(plot::run(context, args)),
        Command::Sweep(args) => sweep::run(context, args),
        Command::Scaling(args) => done(scaling::run(context, args)),
    }
}

/// A panic on one rank would leave the others blocked in their next collective forever.
fn install_panic_abort(dist: &Dist) {
    if dist.size() > 1 {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default_hook(info);
            crate::dist::abort_world(101);
        }));
    }
}
