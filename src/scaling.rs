//! Scaling studies: what a MeZO step or a kernel's row blocks cost at several rank counts, and a
//! cost model that projects the measurements to rank counts this machine does not have.
//!
//! A study runs one command at each rank count (`mezo scaling`), in one of two modes:
//! * **strong**: the same global work at every rank count (a MeZO step of the same global batch,
//!   the same kernel), so ideally the time falls as 1/R;
//! * **weak**: the same work per rank (a global batch of R × the per-rank batch, a kernel of
//!   R × the per-rank rows), so ideally the time stays flat.
//!
//! Measurements come from what the commands record anyway: a training run's `metrics.jsonl` (each
//! step's seconds on rank 0, `collective` the time waiting in all-reduces; the first step, which
//! warms up caches and allocators, is left out when there are more) and a kernel file's
//! `seconds_by_rank` attribute (each rank's seconds in gradients, products and collective row
//! writes; the slowest rank sets the time).
//!
//! The cost model splits a measured time into computation and communication:
//!
//! ```text
//! T(R) = f + v / R + c + α · ⌈log₂ R⌉        (strong; weak: T(R) = f + v + c + α · ⌈log₂ R⌉)
//! ```
//!
//! `f + v/R` is the computation of one rank, `v` the part that the ranks split (examples of the
//! batch, kernel rows) and `f` the part every rank repeats (MeZO's perturbation and update of all
//! weights, a kernel's column gradients); `c + α⌈log₂ R⌉` is communication, whose latency grows
//! with the depth of a reduction tree, fitted to the time spent in collectives during the work
//! (all-reduces for MeZO, collective HDF5 row writes for kernels: latency plus waiting for the
//! slowest rank). For MeZO a second projection fits it to one all-reduce of a step's scalars
//! timed alone at each rank count (`mezo check --json`): the bound that latency alone sets, with
//! the ranks perfectly balanced. `f, v` are fitted by least squares to the measured computation
//! against 1/R, `c, α` to the measured communication against ⌈log₂ R⌉, each clamped at zero.
//! Efficiency is T(1) / (R · T(R)) for strong scaling and T(1) / T(R) for weak scaling. A
//! strong-scaling projection stops where a rank would get no work (R above the global batch or
//! the kernel's rows). What the model leaves out: network contention between nodes, stragglers,
//! and HDF5 on a parallel file system behaving unlike the local disk it was measured on.

use crate::error::InputError;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Strong,
    Weak,
}

/// What is measured: a MeZO training step or a kernel's row blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Train,
    Kernel,
}

impl Workload {
    /// The unit of `seconds` and of the throughput.
    pub fn units(self) -> (&'static str, &'static str) {
        match self {
            Workload::Train => ("seconds per step", "examples per second"),
            Workload::Kernel => ("seconds for the rows", "rows per second"),
        }
    }
}

/// One rank count's measurement; a row of `scaling.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    pub workload: Workload,
    pub mode: Mode,
    pub ranks: usize,
    pub threads: usize,
    /// Global work: examples per step (train), or kernel rows.
    pub work: usize,
    /// Per step (train), or for all rows (kernel).
    pub seconds: f64,
    /// `seconds` less the communication.
    pub compute_seconds: f64,
    /// Waiting in all-reduces (train), or in collective row writes (kernel): the time a rank
    /// spent there, including waiting for slower ranks.
    pub communication_seconds: f64,
    /// One all-reduce of a MeZO step's payload, timed alone at this rank count (`mezo check`).
    pub all_reduce_seconds: f64,
    /// `work / seconds`.
    pub throughput: f64,
    /// Throughput relative to the fewest ranks measured.
    pub speedup: f64,
    pub efficiency: f64,
}

/// Steps of a training run: seconds per step, of which computation and communication; the
/// global batch.
pub fn read_train_run(dir: &Path) -> Result<(f64, f64, f64, usize)> {
    let path = dir.join(crate::train::run_dir::METRICS);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut steps = Vec::new();
    for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| InputError(format!("{} line {}: {e}", path.display(), number + 1)))?;
        if value.get("loss").is_none() {
            continue;
        }
        let seconds = &value["seconds"];
        let get = |key: &str| seconds[key].as_f64().unwrap_or(0.0);
        steps.push((get("step") + get("io"), get("collective")));
    }
    if steps.is_empty() {
        return Err(InputError(format!("{}: no timed step", path.display())).into());
    }
    if steps.len() > 1 {
        steps.remove(0);
    }
    let n = steps.len() as f64;
    let total = steps.iter().map(|s| s.0).sum::<f64>() / n;
    let collective = steps.iter().map(|s| s.1).sum::<f64>() / n;
    let config_path = dir.join("config.json");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&config_path)
            .with_context(|| format!("reading {}", config_path.display()))?,
    )
    .with_context(|| format!("parsing {}", config_path.display()))?;
    let batch = config["train"]["batch_size"]
        .as_u64()
        .ok_or_else(|| InputError(format!("{}: no train.batch_size", config_path.display())))?;
    Ok((total, total - collective, collective, batch as usize))
}

/// A kernel file's row blocks: seconds of the slowest rank, its computation and its writing
/// (the most any rank spent in each); the rows.
pub fn read_kernel(path: &Path) -> Result<(f64, f64, f64, usize)> {
    let file = hdf5::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let text: hdf5::types::VarLenUnicode = file
        .attr("seconds_by_rank")
        .and_then(|a| a.read_scalar())
        .map_err(|e| InputError(format!("{}: no seconds_by_rank attribute ({e})", path.display())))?;
    let ranks: Vec<crate::kernel::BlockTiming> = serde_json::from_str(text.as_str())
        .map_err(|e| InputError(format!("{}: seconds_by_rank: {e}", path.display())))?;
    let max = |f: &dyn Fn(&crate::kernel::BlockTiming) -> f64| ranks.iter().map(f).fold(0.0, f64::max);
    let rows = ranks.iter().map(|r| r.rows).sum();
    Ok((max(&|r| r.total), max(&|r| r.gradients + r.products), max(&|r| r.io), rows))
}

/// Fills in throughput, speedup and efficiency, relative to the fewest ranks measured.
pub fn complete(measurements: &mut [Measurement]) {
    measurements.sort_by_key(|m| m.ranks);
    let Some(base) = measurements.first().cloned() else { return };
    for m in measurements.iter_mut() {
        m.throughput = m.work as f64 / m.seconds;
        m.speedup = m.throughput / (base.work as f64 / base.seconds);
        // Strong or weak, ideal throughput grows with the ranks.
        m.efficiency = m.speedup / (m.ranks as f64 / base.ranks as f64);
    }
}

/// The fitted model (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostModel {
    pub mode: Mode,
    /// Computation every rank repeats (f).
    pub fixed: f64,
    /// Computation the ranks split (v).
    pub divisible: f64,
    /// Communication at one rank (c).
    pub communication: f64,
    /// Communication per level of a reduction tree (α).
    pub latency: f64,
    /// The most ranks that still get work (strong scaling).
    pub max_ranks: Option<usize>,
}

/// Which time the communication term is fitted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Communication {
    /// The time the ranks spent in collectives during the work: latency plus waiting for the
    /// slowest rank, as this machine's balance of ranks had it.
    Measured,
    /// One all-reduce of a MeZO step's payload timed alone: the latency bound, as if every rank
    /// arrived at the same time.
    AllReduceAlone,
}

/// Least-squares line y = a + b·x (b = 0 when the xs do not vary), both clamped at zero.
fn fit_line(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return (my.max(0.0), 0.0);
    }
    let b = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum::<f64>() / sxx;
    let b = b.max(0.0);
    ((my - b * mx).max(0.0), b)
}

fn levels(ranks: usize) -> f64 {
    (ranks as f64).log2().ceil().max(0.0)
}

impl CostModel {
    /// Fits the model to measurements of at least two rank counts.
    pub fn fit(measurements: &[Measurement], basis: Communication) -> Result<CostModel, InputError> {
        let mut counts: Vec<usize> = measurements.iter().map(|m| m.ranks).collect();
        counts.sort_unstable();
        counts.dedup();
        if counts.len() < 2 {
            return Err(InputError("the cost model needs measurements at two or more rank counts".into()));
        }
        let mode = measurements[0].mode;
        let (fixed, divisible) = match mode {
            Mode::Strong => {
                let points: Vec<(f64, f64)> =
                    measurements.iter().map(|m| (1.0 / m.ranks as f64, m.compute_seconds)).collect();
                fit_line(&points)
            }
            Mode::Weak => {
                let mean =
                    measurements.iter().map(|m| m.compute_seconds).sum::<f64>() / measurements.len() as f64;
                (mean, 0.0)
            }
        };
        let comm: Vec<(f64, f64)> = measurements
            .iter()
            .map(|m| {
                let seconds = match basis {
                    Communication::Measured => m.communication_seconds,
                    Communication::AllReduceAlone => m.all_reduce_seconds,
                };
                (levels(m.ranks), seconds)
            })
            .collect();
        let (communication, latency) = fit_line(&comm);
        let max_ranks = (mode == Mode::Strong).then(|| measurements[0].work);
        Ok(CostModel { mode, fixed, divisible, communication, latency, max_ranks })
    }

    /// Projected seconds at `ranks` (None past `max_ranks`).
    pub fn seconds(&self, ranks: usize) -> Option<f64> {
        if self.max_ranks.is_some_and(|max| ranks > max) {
            return None;
        }
        let compute = match self.mode {
            Mode::Strong => self.fixed + self.divisible / ranks as f64,
            Mode::Weak => self.fixed + self.divisible,
        };
        Some(compute + self.communication + self.latency * levels(ranks))
    }

    /// Projected efficiency at `ranks` relative to one rank.
    pub fn efficiency(&self, ranks: usize) -> Option<f64> {
        let one = self.seconds(1)?;
        let at = self.seconds(ranks)?;
        Some(match self.mode {
            Mode::Strong => one / (ranks as f64 * at),
            Mode::Weak => one / at,
        })
    }
}

/// `scaling.csv`: one row per measurement.
pub fn write_csv(path: &Path, measurements: &[Measurement]) -> Result<()> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for m in measurements {
        writer.serialize(m)?;
    }
    let bytes = writer.into_inner().map_err(|e| anyhow::anyhow!("writing CSV: {e}"))?;
    crate::fsio::write_atomic(path, &bytes)
}

/// Reads a `scaling.csv`; a malformed row is an error naming file and line.
pub fn read_csv(path: &Path) -> Result<Vec<Measurement>> {
    let mut reader =
        csv::Reader::from_path(path).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, row) in reader.deserialize().enumerate() {
        out.push(row.map_err(|e| InputError(format!("{} line {}: {e}", path.display(), i + 2)))?);
    }
    if out.is_empty() {
        return Err(InputError(format!("{}: no measurements", path.display())).into());
    }
    Ok(out)
}

/// Charts of a study: throughput and efficiency against ranks (measured), and the projected
/// efficiency against log₂ ranks of each model given (a line each).
pub fn charts(measurements: &[Measurement], models: &[(&str, CostModel)]) -> Result<Vec<(String, String)>> {
    use crate::plot::{line_chart_svg, Series};
    let first = measurements.first().ok_or_else(|| InputError("no measurements to plot".into()))?;
    let (_, throughput_unit) = first.workload.units();
    let label = format!("{:?} {:?}", first.workload, first.mode).to_lowercase();
    let series = |f: &dyn Fn(&Measurement) -> f64| {
        vec![Series {
            label: label.clone(),
            points: measurements.iter().map(|m| (m.ranks as f64, f(m))).collect(),
        }]
    };
    let mut charts = vec![
        (
            "scaling_throughput.svg".to_string(),
            line_chart_svg("Throughput", "ranks", throughput_unit, &series(&|m| m.throughput))?,
        ),
        (
            "scaling_efficiency.svg".to_string(),
            line_chart_svg(
                "Parallel efficiency (measured)",
                "ranks",
                "efficiency",
                &series(&|m| m.efficiency),
            )?,
        ),
    ];
    if !models.is_empty() {
        let projected: Vec<Series> = models
            .iter()
            .map(|(name, model)| Series {
                label: format!("{label}, {name}"),
                points: projection_ranks()
                    .filter_map(|r| model.efficiency(r).map(|e| ((r as f64).log2(), e)))
                    .collect(),
            })
            .collect();
        charts.push((
            "scaling_projection.svg".to_string(),
            line_chart_svg("Parallel efficiency (cost model)", "log2 ranks", "efficiency", &projected)?,
        ));
    }
    Ok(charts)
}

/// The rank counts a projection reports: 1, 2, 4, ..., 1024.
pub fn projection_ranks() -> impl Iterator<Item = usize> {
    (0..=10).map(|p| 1usize << p)
}

/// The projections of a study: the communication measured during the work, and for MeZO also
/// the latency bound (none with fewer than two rank counts).
pub fn models(measurements: &[Measurement]) -> Vec<(&'static str, CostModel)> {
    let mut out = Vec::new();
    if let Ok(model) = CostModel::fit(measurements, Communication::Measured) {
        out.push(("measured communication", model));
    }
    if measurements.first().is_some_and(|m| m.workload == Workload::Train) {
        if let Ok(model) = CostModel::fit(measurements, Communication::AllReduceAlone) {
            out.push(("latency bound", model));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurement(mode: Mode, ranks: usize, work: usize, compute: f64, comm: f64) -> Measurement {
        Measurement {
            workload: Workload::Train,
            mode,
            ranks,
            threads: 1,
            work,
            seconds: compute + comm,
            compute_seconds: compute,
            communication_seconds: comm,
            all_reduce_seconds: comm,
            throughput: 0.0,
            speedup: 0.0,
            efficiency: 0.0,
        }
    }

    #[test]
    fn a_model_fitted_to_its_own_predictions_recovers_its_parameters() {
        let truth = CostModel {
            mode: Mode::Strong,
            fixed: 0.2,
            divisible: 1.6,
            communication: 0.001,
            latency: 0.004,
            max_ranks: Some(64),
        };
        let mut ms: Vec<Measurement> = [1, 2, 4]
            .iter()
            .map(|&r| {
                let compute = truth.fixed + truth.divisible / r as f64;
                let comm = truth.seconds(r).unwrap() - compute;
                measurement(Mode::Strong, r, 64, compute, comm)
            })
            .collect();
        complete(&mut ms);
        let fitted = CostModel::fit(&ms, Communication::Measured).unwrap();
        for (a, b) in [
            (fitted.fixed, 0.2),
            (fitted.divisible, 1.6),
            (fitted.communication, 0.001),
            (fitted.latency, 0.004),
        ] {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        assert!((ms[1].speedup - 1.801 / 1.005).abs() < 1e-9);
        assert_eq!(fitted.seconds(128), None, "no work past the global batch");
        assert!((fitted.efficiency(1).unwrap() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn weak_scaling_projects_only_communication_growth() {
        let mut ms =
            vec![measurement(Mode::Weak, 1, 16, 1.0, 0.0), measurement(Mode::Weak, 2, 32, 1.0, 0.01)];
        complete(&mut ms);
        assert!((ms[1].efficiency - 1.0 / 1.01).abs() < 1e-12);
        let model = CostModel::fit(&ms, Communication::Measured).unwrap();
        assert!((model.latency - 0.01).abs() < 1e-12);
        let e = model.efficiency(1024).unwrap();
        assert!((e - 1.0 / 1.1).abs() < 1e-12, "{e}");
        assert!(CostModel::fit(&ms[..1], Communication::Measured).is_err());
    }

    #[test]
    fn csv_round_trips_and_bad_rows_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut ms =
            vec![measurement(Mode::Strong, 1, 8, 2.0, 0.0), measurement(Mode::Strong, 2, 8, 1.0, 0.1)];
        complete(&mut ms);
        let path = dir.path().join("scaling.csv");
        write_csv(&path, &ms).unwrap();
        assert_eq!(read_csv(&path).unwrap(), ms);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("strong", "sideways", 2)).unwrap();
        let err = read_csv(&path).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        let model = CostModel::fit(&ms, Communication::Measured).unwrap();
        let charts = charts(&ms, &[("measured", model.clone()), ("latency bound", model)]).unwrap();
        assert_eq!(charts.len(), 3);
        assert!(charts.iter().all(|(_, svg)| svg.trim_start().starts_with("<svg")));
    }
}
