use super::Context;
use crate::error::input_error;
use crate::report::{self, GatherConfig, Group};
use anyhow::Result;
use clap::Args;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct GatherArgs {
    /// Training run directories, `mezo solve` results files, or directories searched for both.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// Keep only runs whose config KEY (dotted, or its last component) equals VALUE; a KEY given
    /// several times accepts any of its values. `task` matches the task name.
    #[arg(long = "condition", value_name = "KEY=VALUE")]
    conditions: Vec<String>,
    /// A config key searched over per seed, besides lr, eps, weight_decay, batch_size, steps,
    /// eval_every, reg, reg_grid, f0_scaling, kernel_gamma and kernel_lambda.
    #[arg(long = "grid-key", value_name = "KEY")]
    grid_keys: Vec<String>,
    /// Print the groups as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Context, args: &GatherArgs) -> Result<()> {
    let conditions = args
        .conditions
        .iter()
        .map(|c| {
            c.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| input_error(format!("--condition {c}: expected KEY=VALUE")))
        })
        .collect::<Result<Vec<_>>>()?;
    let config = GatherConfig { paths: args.paths.clone(), conditions, grid_keys: args.grid_keys.clone() };
    ctx.dist.on_root(|| {
        let groups = report::gather(&config)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&groups)?);
        } else if groups.is_empty() {
            println!("no runs found");
        } else {
            print_table(&groups);
        }
        Ok(())
    })?;
    Ok(())
}

/// Per group: the tag values that tell it from the other groups, each seed's best run, and the
/// mean (std) ×100 over seeds as the reference prints it.
fn print_table(groups: &[Group]) {
    let keys: BTreeSet<&String> = groups.iter().flat_map(|g| g.tag.keys()).collect();
    let varying: Vec<&String> = keys
        .into_iter()
        .filter(|k| {
            let values: BTreeSet<String> =
                groups.iter().map(|g| g.tag.get(*k).map_or("-".to_string(), Value::to_string)).collect();
            values.len() > 1
        })
        .collect();
    for group in groups {
        let tag: Vec<String> = varying
            .iter()
            .map(|k| format!("{k}={}", group.tag.get(*k).map_or("-".to_string(), Value::to_string)))
            .collect();
        println!("{} [{}]", group.task, tag.join(", "));
        for seed in &group.seeds {
            let test: Vec<String> = seed.test.iter().map(|(k, v)| format!("{k} {v:.5}")).collect();
            println!(
                "  {}: best dev {} {:.5}, test {} | {} run(s), best {}",
                seed.seed,
                group.selection_metric,
                seed.dev,
                test.join(", "),
                seed.runs,
                seed.best_run.display()
            );
        }
        let runs: usize = group.seeds.iter().map(|s| s.runs).sum();
        for (key, mean) in &group.test_mean {
            println!(
                "  test {key}: {:.1} ({:.1}) over {} seed(s), {runs} run(s)",
                mean * 100.0,
                group.test_std[key] * 100.0,
                group.seeds.len()
            );
        }
        println!();
    }
}
