use super::choices::SolverArg;
use super::Context;
use crate::error::{self, input_error, InputError};
use crate::solve::{self, SolveConfig, SolverKind};
use anyhow::{Context as _, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SolveArgs {
    /// Kernel file (HDF5: train, dev, test kernels and labels; see `mezo kernel` or
    /// scripts/convert_published_kernels.py).
    #[arg(long, value_name = "FILE")]
    kernels: PathBuf,
    /// lstsq (gelsy least squares), logistic (L2 logistic regression on kernel rows with 5-fold
    /// CV), svr, svc (SVMs on the precomputed kernel), asym (asymmetric_signgd kernels).
    #[arg(long, value_enum, default_value = "logistic")]
    solver: SolverArg,
    /// Results JSON (written by rank 0): config, dev and test metrics at the best dev.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Regularisation λ: the solvers use K + λ·σmax(K)·I.
    #[arg(long, default_value_t = 0.0, value_name = "X", conflicts_with = "reg_grid")]
    reg: f64,
    /// Several λ (comma-separated): each is solved, the best dev metric wins (first on ties).
    #[arg(long, value_delimiter = ',', num_args = 1.., value_name = "X,Y,...")]
    reg_grid: Vec<f64>,
    /// Regress on y − f0/s and add f0/s back to the predictions (needs the *_f0 datasets).
    #[arg(long)]
    adjust_for_init: bool,
    /// s of --adjust-for-init; s ≤ 0 turns the adjustment off.
    #[arg(long, default_value_t = 1.0, value_name = "S", requires = "adjust_for_init")]
    f0_scaling: f64,
    /// γ of the asym solver [default: 1.0].
    #[arg(long, value_name = "G")]
    kernel_gamma: Option<f64>,
    /// Mix p = λω + (1 − λ)ν of the asym solver [default: 0.5].
    #[arg(long, value_name = "L")]
    kernel_lambda: Option<f64>,
}

pub fn run(ctx: &Context, args: &SolveArgs) -> Result<()> {
    crate::fsio::check_output("--out", &args.out, false)?;
    let dist = ctx.dist;
    let solver = SolverKind::from(args.solver);
    if solver != SolverKind::Asym && (args.kernel_gamma.is_some() || args.kernel_lambda.is_some()) {
        return Err(input_error("--kernel-gamma and --kernel-lambda belong to --solver asym"));
    }
    let config = SolveConfig {
        kernels: args.kernels.clone(),
        solver,
        reg: if args.reg_grid.is_empty() { vec![args.reg] } else { args.reg_grid.clone() },
        adjust_for_init: args.adjust_for_init,
        f0_scaling: args.f0_scaling,
        kernel_gamma: args.kernel_gamma.unwrap_or(1.0),
        kernel_lambda: args.kernel_lambda.unwrap_or(0.5),
    };
    // Input checks fail identically on every rank (same file, same flags): end the job normally.
    let report = solve::solve(dist, &config).map_err(|e| {
        if e.chain().any(|c| c.is::<InputError>()) {
            error::on_all_ranks(&e)
        } else {
            e
        }
    })?;
    let results = serde_json::json!({
        "program": format!("mezo {}", env!("CARGO_PKG_VERSION")),
        "config": {
            "kernels": config.kernels, "solver": config.solver,
            "reg": (args.reg_grid.is_empty()).then_some(args.reg),
            "reg_grid": (!args.reg_grid.is_empty()).then_some(&args.reg_grid),
            "adjust_for_init": config.adjust_for_init, "f0_scaling": config.f0_scaling,
            "kernel_gamma": (solver == SolverKind::Asym).then_some(config.kernel_gamma),
            "kernel_lambda": (solver == SolverKind::Asym).then_some(config.kernel_lambda),
            "ranks": dist.size(),
            "kernel": report.kernel_attributes,
        },
        "task": report.task, "formula": report.formula, "selection_metric": report.selection_metric,
        "best_reg": report.best_reg, "best_index": report.best, "best_dev": report.best_dev, "test": report.test, "grid": report.grid,
    });
    dist.on_root(|| {
        print_table(&report, solver, dist.size());
        crate::fsio::write_atomic(&args.out, serde_json::to_string_pretty(&results)?.as_bytes())
            .context("--out")?;
        println!("results: {}", args.out.display());
        Ok(())
    })?;
    Ok(())
}

/// One line per grid point: dev and test of each metric, then what the fit itself reports.
fn print_table(report: &solve::SolveReport, solver: SolverKind, ranks: usize) {
    let grad_dim = report.best_dev.get("grad_dim").map(|g| format!(", grad_dim {g}")).unwrap_or_default();
    println!(
        "{} {} kernel, {} solver, {ranks} rank(s){grad_dim}; λ selected by dev {}",
        report.task,
        report.formula,
        solver.name(),
        report.selection_metric
    );
    // Metrics first, the loss next; rank0 / logistic_C are properties of the fit (same for dev and test).
    let fit_keys = ["rank0", "logistic_C"];
    let mut keys: Vec<&String> =
        report.best_dev.keys().filter(|k| k.starts_with("eval_") && *k != "eval_loss").collect();
    keys.push(&report.selection_metric);
    keys.dedup();
    keys.sort_by_key(|k| *k != &report.selection_metric);
    let loss = "eval_loss".to_string();
    keys.push(&loss);
    print!("  {:>10}", "λ");
    for key in &keys {
        let name = key.trim_start_matches("eval_");
        print!(" {:>12} {:>12}", format!("dev {name}"), format!("test {name}"));
    }
    for key in fit_keys.iter().filter(|k| report.best_dev.contains_key(**k)) {
        print!(" {key:>12}");
    }
    println!();
    for (i, point) in report.grid.iter().enumerate() {
        print!("{} {:>10}", if i == report.best { "*" } else { " " }, point.reg);
        let get =
            |m: &std::collections::BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(f64::NAN);
        for key in &keys {
            print!(" {:>12.6} {:>12.6}", get(&point.dev, key), get(&point.test, key));
        }
        for key in fit_keys.iter().filter(|k| point.dev.contains_key(**k)) {
            let value = get(&point.dev, key);
            let text = if *key == "rank0" { format!("{value}") } else { format!("{value:.4e}") };
            print!(" {text:>12}");
        }
        println!();
    }
}
