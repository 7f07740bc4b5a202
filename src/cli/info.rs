use super::Context;
use crate::info::{Installation, RankPlacement};
use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Also print one line per rank: host, node-local rank, device, threads.
    #[arg(long)]
    all_ranks: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Context, args: &InfoArgs) -> Result<()> {
    let dist = ctx.dist;
    let installation = Installation::probe(dist);
    let device = match ctx.device.resolve(dist.local_rank()) {
        Ok(d) => format!("{d:?}").to_lowercase().replace("cuda(", "cuda:").replace(')', ""),
        Err(e) => format!("unavailable ({e:#})"),
    };
    let placement = RankPlacement {
        rank: dist.rank(),
        size: dist.size(),
        local_rank: dist.local_rank(),
        local_size: dist.local_size(),
        host: dist.host().to_string(),
        device,
        threads: ctx.threads,
    };
    // Gathered even without --all-ranks, so that every rank takes part in the same collectives.
    let placements = dist.all_gather_strings(&serde_json::to_string(&placement)?);
    if !dist.is_root() {
        return Ok(());
    }
    let mut placements: Vec<RankPlacement> =
        placements.iter().map(|p| serde_json::from_str(p)).collect::<Result<_, _>>()?;
    if !args.all_ranks {
        placements.truncate(1);
    }
    if args.json {
        let mut report = serde_json::to_value(&installation)?;
        report["ranks"] = serde_json::to_value(&placements)?;
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("{}", installation.render());
    for p in &placements {
        println!("{}", p.render());
    }
    Ok(())
}
