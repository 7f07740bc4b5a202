//! Kernel solvers: from a kernel file to dev and test metrics, exactly as LM-Kernel-FT's
//! `evaluate` (docs/reference.md §7), so that a kernel gives the paper's numbers.
//!
//! Why the pipeline is shaped the way it is:
//! * **One scalar problem.** The reference flattens [N, C, M, C] to [N·C, M·C] and one-hot
//!   encodes the targets in the same order, so every solver fits one regression/classification
//!   over (example, output) pairs with the cross-output blocks kept. Metrics then reshape the
//!   predictions to [M, C] (argmax; for C = 1, class 1 iff p > 0).
//! * **Fit once, predict twice.** The reference fits again for dev and for test; the fit depends
//!   only on train×train, so it is done once per regularisation value here.
//! * **Regularisation is relative**: K + λ·σ_max(K)·I, so λ transfers across kernels of any
//!   scale. `--reg-grid` runs several λ and picks the best dev metric (first on ties), which
//!   replaces the reference's one-run-per-λ plus gather step for this hyper-parameter.
//! * **f0 is optional**: with `--adjust-for-init` the solvers regress on y − f0/s and add f0/s
//!   back (lstsq, asym, svr); logistic ignores it and svc refuses it, as the reference does.
//! * **Ranks share the grid**: grid points go round-robin to ranks and their metrics are
//!   all-gathered; with a single point, the logistic solver spreads its CV folds instead. All
//!   ranks end with the same report, and the numbers do not depend on the number of ranks.

pub mod kernels;
pub mod linalg;
pub mod logistic;
pub mod svm;

use crate::data::tasks;
use crate::dist::Dist;
use crate::error::InputError;
use crate::metrics;
use anyhow::{bail, Context, Result};
use kernels::{Formula, Kernels, Split};
use ndarray::{Array1, Array2};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The solvers of docs/reference.md §7.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SolverKind {
    Lstsq,
    Logistic,
    Svr,
    Svc,
    Asym,
}

impl SolverKind {
    pub fn name(self) -> &'static str {
        match self {
            SolverKind::Lstsq => "lstsq",
            SolverKind::Logistic => "logistic",
            SolverKind::Svr => "svr",
            SolverKind::Svc => "svc",
            SolverKind::Asym => "asym",
        }
    }
}

/// Everything `mezo solve` needs.
#[derive(Debug, Clone)]
pub struct SolveConfig {
    pub kernels: PathBuf,
    pub solver: SolverKind,
    /// λ values to try (one for a plain run); the best dev metric wins, first on ties.
    pub reg: Vec<f64>,
    pub adjust_for_init: bool,
    /// s of y − f0/s; s ≤ 0 turns the adjustment off.
    pub f0_scaling: f64,
    /// γ of the asym solver.
    pub kernel_gamma: f64,
    /// Mix p = λω + (1 − λ)ν of the asym solver.
    pub kernel_lambda: f64,
}

/// Metrics of one regularisation value.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GridPoint {
    pub reg: f64,
    pub dev: BTreeMap<String, f64>,
    pub test: BTreeMap<String, f64>,
}

/// The outcome of a solve.
#[derive(Debug, Clone, Serialize)]
pub struct SolveReport {
    pub task: String,
    pub formula: &'static str,
    /// The dev metric that picks the grid point (`eval_acc`, `eval_f1`, `eval_mcc`, ...).
    pub selection_metric: String,
    /// Index of the selected grid point.
    pub best: usize,
    pub best_reg: f64,
    pub best_dev: BTreeMap<String, f64>,
    pub test: BTreeMap<String, f64>,
    pub grid: Vec<GridPoint>,
    /// Root attributes of the kernel file (task, formula, model, seed, k, ...).
    pub kernel_attributes: serde_json::Map<String, serde_json::Value>,
}

/// Reads the kernel file (collectively) and runs the solver over the grid.
pub fn solve(dist: &Dist, config: &SolveConfig) -> Result<SolveReport> {
    check_config(config)?;
    let kernels = kernels::read(dist, &config.kernels, config.adjust_for_init && config.f0_scaling > 0.0)?;
    solve_kernels(dist, config, &kernels)
}

fn check_config(config: &SolveConfig) -> Result<()> {
    if config.reg.is_empty() {
        bail!(InputError("--reg-grid needs at least one value".into()));
    }
    if let Some(r) = config.reg.iter().find(|r| !r.is_finite() || **r < 0.0) {
        bail!(InputError(format!("regularisation {r} is not a finite value ≥ 0 (--reg / --reg-grid)")));
    }
    if config.solver == SolverKind::Svc && config.adjust_for_init && config.f0_scaling > 0.0 {
        bail!(InputError(
            "--solver svc does not take --adjust-for-init (the reference asserts no f0)".into()
        ));
    }
    if config.solver == SolverKind::Asym && !(config.kernel_gamma.is_finite() && config.kernel_gamma > 0.0) {
        bail!(InputError(format!("--kernel-gamma {} must be positive", config.kernel_gamma)));
    }
    Ok(())
}

/// [`solve`] on kernels already in memory.
pub fn solve_kernels(dist: &Dist, config: &SolveConfig, kernels: &Kernels) -> Result<SolveReport> {
    check_config(config)?;
    let task = tasks::task(&kernels.task)
        .map_err(|e| InputError(format!("{}: attribute 'task': {e}", kernels.path.display())))?;
    if task.regression {
        bail!(InputError(format!(
            "{}: regression task {} is not supported",
            kernels.path.display(),
            task.name
        )));
    }
    let classes = if kernels.binary { 2 } else { kernels.outputs };
    if task.labels.len() != classes {
        bail!(InputError(format!(
            "{}: task {} has {} labels but the kernels have {} classes",
            kernels.path.display(),
            task.name,
            task.labels.len(),
            classes
        )));
    }
    if config.solver == SolverKind::Asym && kernels.formula != Formula::AsymmetricSignGd {
        bail!(InputError(format!(
            "{}: --solver asym needs an asymmetric_signgd kernel file; this one is {}",
            kernels.path.display(),
            kernels.formula.name()
        )));
    }
    if config.solver == SolverKind::Logistic && config.adjust_for_init {
        log::warn!("--solver logistic ignores --adjust-for-init (as the reference does)");
    }
    let sigma = if config.reg.iter().any(|&r| r != 0.0) {
        linalg::sigma_max(&kernels.train.kernel).context("largest singular value of the train kernel")?
    } else {
        0.0
    };
    let problem = Problem { config, kernels, metric_names: task.metrics, sigma };

    let grid: Vec<GridPoint> = if config.reg.len() == 1 {
        vec![problem.point(dist, config.reg[0])?]
    } else {
        // Grid points round-robin over ranks, each solved by its rank alone.
        let single = Dist::single();
        let mut mine = Vec::new();
        for (i, &reg) in config.reg.iter().enumerate().filter(|(i, _)| i % dist.size() == dist.rank()) {
            mine.push((i, problem.point(&single, reg)?));
        }
        // Metrics travel as bit patterns: JSON has no inf (a logistic loss can be one).
        type Wire = (usize, u64, Vec<(String, u64)>, Vec<(String, u64)>);
        let bits = |m: &BTreeMap<String, f64>| m.iter().map(|(k, v)| (k.clone(), v.to_bits())).collect();
        let values = |m: Vec<(String, u64)>| m.into_iter().map(|(k, v)| (k, f64::from_bits(v))).collect();
        let wire: Vec<Wire> =
            mine.iter().map(|(i, p)| (*i, p.reg.to_bits(), bits(&p.dev), bits(&p.test))).collect();
        let mut all: Vec<Wire> = Vec::new();
        for part in dist.all_gather_strings(&serde_json::to_string(&wire)?) {
            all.extend(serde_json::from_str::<Vec<Wire>>(&part)?);
        }
        all.sort_by_key(|w| w.0);
        all.into_iter()
            .map(|(_, reg, dev, test)| GridPoint {
                reg: f64::from_bits(reg),
                dev: values(dev),
                test: values(test),
            })
            .collect()
    };

    let selection_metric = format!("eval_{}", task.selection_metric());
    let score = |p: &GridPoint| p.dev.get(&selection_metric).copied().filter(|v| !v.is_nan());
    let best = (0..grid.len()).fold(0, |b, i| match (score(&grid[i]), score(&grid[b])) {
        (Some(v), Some(w)) if v > w => i,
        (Some(_), None) => i,
        _ => b,
    });
    Ok(SolveReport {
        task: task.name.to_string(),
        formula: kernels.formula.name(),
        selection_metric,
        best,
        best_reg: grid[best].reg,
        best_dev: grid[best].dev.clone(),
        test: grid[best].test.clone(),
        grid,
        kernel_attributes: kernels.attributes.clone(),
    })
}

/// One kernel problem: what every grid point shares.
struct Problem<'a> {
    config: &'a SolveConfig,
    kernels: &'a Kernels,
    metric_names: &'static [&'static str],
    sigma: f64,
}

/// A fitted solver.
enum Fitted {
    /// p = K_Xᵀα.
    Lstsq {
        alpha: Array1<f64>,
        rank: i64,
    },
    /// p = λ·K⁰_Xᵀ(α∘y) + (1 − λ)·K¹_Xᵀ(β∘y).
    Asym {
        alpha_y: Array1<f64>,
        beta_y: Array1<f64>,
        rank: i64,
    },
    Logistic(logistic::LogisticCv),
    Svr(svm::Svm),
    Svc(svm::Svm),
}

impl Problem<'_> {
    fn outputs(&self) -> usize {
        self.kernels.outputs
    }

    /// Targets of a split flattened example-major: ±1 (binary) or one-hot.
    fn targets(&self, split: &Split) -> Vec<f64> {
        let c = self.outputs();
        if self.kernels.binary {
            split.labels.iter().map(|&l| 2.0 * l as f64 - 1.0).collect()
        } else {
            split.labels.iter().flat_map(|&l| (0..c).map(move |k| f64::from(u8::from(k == l)))).collect()
        }
    }

    /// f0/s of a split when the adjustment is on.
    fn offset<'s>(&self, split: &'s Split) -> Option<&'s [f64]> {
        (self.config.adjust_for_init
            && self.config.f0_scaling > 0.0
            && self.config.solver != SolverKind::Logistic)
            .then_some(split.f0.as_deref())
            .flatten()
    }

    fn point(&self, dist: &Dist, reg: f64) -> Result<GridPoint> {
        let fitted = self
            .fit(dist, reg)
            .with_context(|| format!("{} solver, --reg {reg}", self.config.solver.name()))?;
        let dev = self.evaluate(&fitted, &self.kernels.dev);
        let test = self.evaluate(&fitted, &self.kernels.test);
        Ok(GridPoint { reg, dev, test })
    }

    fn fit(&self, dist: &Dist, reg: f64) -> Result<Fitted> {
        let train = &self.kernels.train;
        let k = linalg::regularized(&train.kernel, reg, self.sigma);
        let mut y = self.targets(train);
        if let Some(f0) = self.offset(train) {
            let s = self.config.f0_scaling;
            y.iter_mut().zip(f0).for_each(|(y, f)| *y -= f / s);
        }
        Ok(match self.config.solver {
            SolverKind::Lstsq => {
                let b = Array2::from_shape_vec((y.len(), 1), y)?;
                let (alpha, rank) = linalg::lstsq_gelsy(&k, &b)?;
                Fitted::Lstsq { alpha: alpha.column(0).to_owned(), rank }
            }
            SolverKind::Asym => {
                let n = y.len();
                // [quirk] H is a float32 tensor in the reference, and so is eye(N)/γ.
                let h = Array2::from_shape_fn((n, n), |(i, j)| (y[i] * (k[[i, j]] * y[j])) as f32 as f64);
                let diag = (1.0f32 / self.config.kernel_gamma as f32) as f64;
                let a = Array2::from_shape_fn((2 * n, 2 * n), |(r, c)| match (r < n, c < n) {
                    (true, true) | (false, false) => f64::from(u8::from(r == c)) * diag,
                    (true, false) => h[[r, c - n]],
                    (false, true) => h[[c, r - n]],
                });
                let (solution, rank) = linalg::lstsq_gelsy(&a, &Array2::ones((2 * n, 1)))?;
                let s = solution.column(0);
                let y = Array1::from(y);
                Fitted::Asym {
                    alpha_y: &s.slice(ndarray::s![..n]) * &y,
                    beta_y: &s.slice(ndarray::s![n..]) * &y,
                    rank,
                }
            }
            SolverKind::Logistic => Fitted::Logistic(logistic::fit_cv(dist, &k, &pair_classes(&y))?),
            SolverKind::Svr => Fitted::Svr(svm::svr(&k, &y, 1.0, 0.1)),
            SolverKind::Svc => Fitted::Svc(svm::svc(&k, &pair_classes(&y), 1.0)),
        })
    }

    /// Predictions for every (example, output) pair of `split`, loss and metrics.
    fn evaluate(&self, fitted: &Fitted, split: &Split) -> BTreeMap<String, f64> {
        let kx = &split.kernel;
        let targets = self.targets(split);
        let mut out = BTreeMap::new();
        let mut preds: Vec<f64> = match fitted {
            Fitted::Lstsq { alpha, rank } => {
                out.insert("rank0".to_string(), *rank as f64);
                kx.t().dot(alpha).to_vec()
            }
            Fitted::Asym { alpha_y, beta_y, rank } => {
                out.insert("rank0".to_string(), *rank as f64);
                let flipped = split.flipped.as_ref().expect("asymmetric files have index 1");
                let lambda = self.config.kernel_lambda;
                let omega = kx.t().dot(alpha_y);
                let nu = flipped.t().dot(beta_y);
                omega.iter().zip(&nu).map(|(o, n)| lambda * o + (1.0 - lambda) * n).collect()
            }
            Fitted::Logistic(cv) => {
                out.insert("logistic_C".to_string(), cv.c);
                let d = logistic::decision(kx.t(), &cv.coef);
                // predict_log_proba: log σ(d), log(1 − σ(d)) in float64, as scikit-learn forms them.
                let log_proba: Vec<(f64, f64)> = d
                    .iter()
                    .map(|&d| {
                        let p = 1.0 / (1.0 + (-d).exp());
                        ((1.0 - p).ln(), p.ln())
                    })
                    .collect();
                let classes = pair_classes(&targets);
                let loss = log_proba
                    .iter()
                    .zip(&classes)
                    .map(|(&(l0, l1), &c)| {
                        // cross_entropy(log_proba, class): −log_softmax picked at the class.
                        let m = l0.max(l1);
                        let lse = m + ((l0 - m).exp() + (l1 - m).exp()).ln();
                        lse - if c == 1 { l1 } else { l0 }
                    })
                    .sum::<f64>()
                    / classes.len().max(1) as f64;
                out.insert("eval_loss".to_string(), loss);
                log_proba.iter().map(|(l0, l1)| l1 - l0).collect()
            }
            Fitted::Svr(m) => m.decision(kx),
            Fitted::Svc(m) => {
                m.decision(kx).into_iter().map(|d| 2.0 * svm::svc_class(d) as f64 - 1.0).collect()
            }
        };
        if let Some(f0) = self.offset(split) {
            let s = self.config.f0_scaling;
            preds.iter_mut().zip(f0).for_each(|(p, f)| *p += f / s);
        }
        if !matches!(fitted, Fitted::Logistic(_)) {
            let loss =
                preds.iter().zip(&targets).map(|(p, y)| (p - y).powi(2)).sum::<f64>() / preds.len() as f64;
            out.insert("eval_loss".to_string(), loss);
        }
        let predicted = classes_of(&preds, self.outputs());
        for (name, value) in metrics::classification(self.metric_names, &predicted, &split.labels) {
            out.insert(format!("eval_{name}"), value);
        }
        if let Some(g) = self.kernels.grad_dim {
            out.insert("grad_dim".to_string(), g as f64);
        }
        out
    }
}

/// Classes 0/1 of the pair targets as the reference derives them: int((y + 1) / 2), so ±1 →
/// {0, 1} and one-hot entries stay 0/1.
fn pair_classes(targets: &[f64]) -> Vec<usize> {
    targets.iter().map(|&y| ((y + 1.0) / 2.0).trunc().max(0.0) as usize).collect()
}

/// Predicted class per example from the [M·C] predictions: argmax over C (first on ties); for
/// C = 1, the logits [−p, p], i.e. class 1 iff p > 0.
pub fn classes_of(preds: &[f64], outputs: usize) -> Vec<usize> {
    if outputs == 1 {
        return preds.iter().map(|&p| usize::from(p > 0.0)).collect();
    }
    preds
        .chunks(outputs)
        .map(|row| (0..outputs).fold(0, |best, k| if row[k] > row[best] { k } else { best }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_to_classes() {
        assert_eq!(classes_of(&[0.5, -0.1, 0.0], 1), [1, 0, 0]);
        assert_eq!(classes_of(&[0.1, 0.3, 0.3, f64::INFINITY, f64::INFINITY, 1.0], 3), [1, 0]);
        assert_eq!(pair_classes(&[-1.0, 1.0, 0.0, 1.0]), [0, 1, 0, 1]);
    }
}
