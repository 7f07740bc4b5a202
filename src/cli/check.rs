use super::Context;
use crate::check::{self, CheckConfig};
use crate::error::{all_ranks_error, input_error};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Directory for the HDF5 test file, shared by all ranks (on several nodes: a parallel file system).
    #[arg(long, default_value = ".", value_name = "DIR")]
    scratch: PathBuf,
    /// Keep the HDF5 test file (mezo-check-<id>.h5) and print its path.
    #[arg(long)]
    keep: bool,
    /// Print the outcomes as one JSON object (`checks`: name, status, detail; `ranks`;
    /// `all_reduce_seconds`: the time of one all-reduce of 2 f64).
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Context, args: &CheckArgs) -> Result<()> {
    if !args.scratch.is_dir() {
        return Err(input_error(format!("--scratch {}: not a directory", args.scratch.display())));
    }
    let config = CheckConfig { scratch_dir: args.scratch.clone(), keep_file: args.keep, device: ctx.device };
    let check::Report { outcomes, all_reduce_seconds } = check::run(ctx.dist, &config);
    if ctx.dist.is_root() && args.json {
        let checks: Vec<serde_json::Value> = outcomes
            .iter()
            .map(|o| {
                let (status, detail) = match &o.status {
                    check::Status::Pass(d) => ("pass", d.clone()),
                    check::Status::Skip(d) => ("skip", d.clone()),
                    check::Status::Fail(errors) => ("fail", errors.join("; ")),
                };
                serde_json::json!({"name": o.name, "status": status, "detail": detail})
            })
            .collect();
        let report = serde_json::json!({"checks": checks, "ranks": ctx.dist.size(), "all_reduce_seconds": all_reduce_seconds});
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if ctx.dist.is_root() {
        for o in &outcomes {
            println!("{}", o.render());
        }
    }
    let failed = outcomes.iter().filter(|o| o.failed()).count();
    if failed > 0 {
        return Err(all_ranks_error(format!("{failed} of {} checks failed", outcomes.len())));
    }
    Ok(())
}
