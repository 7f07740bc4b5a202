//! The `logistic` solver: scikit-learn 0.24's `LogisticRegressionCV(max_iter=10000,
//! random_state=0)` on kernel rows (spec §5.4), i.e. plain L2 logistic regression whose features
//! are the rows of the train×train kernel, with the penalty picked by cross-validation.
//!
//! Each fit is argmin's L-BFGS (memory 10, More–Thuente line search, as scipy's L-BFGS-B without
//! bounds) on scikit-learn's objective Σ log(1 + e^{−y(w·k+b)}) + ½(1/C)‖w‖², intercept
//! unpenalised. What decides the reported numbers is reproduced exactly around it:
//! * Cs = logspace(−4, 4, 10), each fold's path warm-started along increasing C from zeros;
//! * 5-fold `StratifiedKFold` without shuffling, with scikit-learn's fold assignment (classes
//!   numbered by first appearance, per-class fold sizes by round robin over the sorted labels,
//!   each class's rows filling the folds in consecutive blocks in data order);
//! * score = fold accuracy with a decision of exactly 0 counted as class 0; the best C maximises
//!   the summed fold scores, ties to the smallest C;
//! * the refit on all rows starts from the mean of the folds' coefficients at that C.
//!
//! Stopping differs on purpose: here only the gradient norm (1e-8·n) ends a fit, while scipy's
//! L-BFGS-B also stops on a relative decrease of 2.2e-9 (0.24) and scikit-learn ≥ 1.2 scales the
//! objective by 1/n first. Those early stops make large-C fits (nearly separable folds) depend
//! on the scipy version; this solver goes to the optimum both approximate, and the fixture test
//! compares it with scikit-learn run to convergence (tol 1e-8).
//!
//! Folds are independent, so under MPI they are spread over the ranks and their scores and
//! coefficients all-gathered; every rank then refits the same model.

use crate::dist::Dist;
use anyhow::{bail, ensure, Context, Result};
use argmin::core::{CostFunction, Executor, Gradient, State, TerminationReason};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;
use ndarray::{concatenate, Array1, Array2, ArrayView1, ArrayView2, Axis};
use std::cell::RefCell;
use std::rc::Rc;

/// Folds of the cross-validation (scikit-learn's `cv=None`).
pub const FOLDS: usize = 5;

/// scikit-learn's `Cs=10`: `np.logspace(-4, 4, 10)`.
pub fn cs() -> Vec<f64> {
    let step = 8.0 / 9.0;
    (0..10).map(|i| if i == 9 { 4.0 } else { i as f64 * step - 4.0 }).map(|e| 10f64.powf(e)).collect()
}

/// Test fold of each row: scikit-learn 0.24 `StratifiedKFold(n_splits, shuffle=False)`.
pub fn stratified_folds(classes: &[usize], n_splits: usize) -> Result<Vec<usize>> {
    // Classes numbered by order of first appearance.
    let mut order: Vec<usize> = Vec::new();
    let encoded: Vec<usize> = classes
        .iter()
        .map(|c| {
            order.iter().position(|o| o == c).unwrap_or_else(|| {
                order.push(*c);
                order.len() - 1
            })
        })
        .collect();
    let n_classes = order.len();
    let counts: Vec<usize> = (0..n_classes).map(|k| encoded.iter().filter(|&&e| e == k).count()).collect();
    if counts.iter().all(|&c| n_splits > c) {
        bail!("{n_splits}-fold cross-validation needs more members than that in some class; counts are {counts:?}");
    }
    if counts.iter().any(|&c| c < n_splits) {
        log::warn!("the least populated class has fewer than {n_splits} members: some folds lack it");
    }
    let mut sorted = encoded.clone();
    sorted.sort_unstable();
    // allocation[fold][class] = bincount(sorted[fold::n_splits])
    let mut allocation = vec![vec![0usize; n_classes]; n_splits];
    for (i, &k) in sorted.iter().enumerate() {
        allocation[i % n_splits][k] += 1;
    }
    let mut folds = vec![0usize; classes.len()];
    for k in (0..n_classes).filter(|&k| counts[k] > 0) {
        let mut blocks = (0..n_splits).flat_map(|f| std::iter::repeat_n(f, allocation[f][k]));
        for (row, _) in encoded.iter().enumerate().filter(|(_, &e)| e == k) {
            folds[row] = blocks.next().expect("allocation covers every member");
        }
    }
    Ok(folds)
}

/// scikit-learn's objective on rows `x` with labels ±1: Σ log(1 + e^{−y(w·x+b)}) + ½α‖w‖².
/// Remembers the best point it was asked about, in case the line search gives up near the optimum.
struct Objective<'a> {
    x: ArrayView2<'a, f64>,
    y: Array1<f64>,
    alpha: f64,
    best: Rc<RefCell<(f64, Vec<f64>)>>,
}

impl Objective<'_> {
    fn margins(&self, p: &[f64]) -> Array1<f64> {
        let f = self.x.ncols();
        (self.x.dot(&ArrayView1::from(&p[..f])) + p[f]) * &self.y
    }
}

/// log(1 + e^{−m}) without overflow.
fn log1pexp_neg(m: f64) -> f64 {
    if m > 0.0 {
        (-m).exp().ln_1p()
    } else {
        -m + m.exp().ln_1p()
    }
}

impl CostFunction for Objective<'_> {
    type Param = Vec<f64>;
    type Output = f64;

    fn cost(&self, p: &Vec<f64>) -> Result<f64, argmin::core::Error> {
        let f = self.x.ncols();
        let w = ArrayView1::from(&p[..f]);
        let cost =
            self.margins(p).iter().map(|&m| log1pexp_neg(m)).sum::<f64>() + 0.5 * self.alpha * w.dot(&w);
        let mut best = self.best.borrow_mut();
        if cost < best.0 {
            *best = (cost, p.clone());
        }
        Ok(cost)
    }
}

impl Gradient for Objective<'_> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;

    fn gradient(&self, p: &Vec<f64>) -> Result<Vec<f64>, argmin::core::Error> {
        let f = self.x.ncols();
        // d/dz of log(1 + e^{−yz}) = −y·σ(−yz)
        let z: Array1<f64> = self.margins(p).mapv(|m| 1.0 / (1.0 + m.exp())) * &self.y * -1.0;
        let mut g = (self.x.t().dot(&z) + &(ArrayView1::from(&p[..f]).to_owned() * self.alpha)).to_vec();
        g.push(z.sum());
        Ok(g)
    }
}

/// L-BFGS stops when the gradient's norm is below this many times the number of rows (the
/// gradient of the mean loss below 1e-8): converged well past scikit-learn's `tol=1e-4`, whose
/// stopping point depends on the scipy and scikit-learn versions (module doc).
const GRADIENT_TOLERANCE: f64 = 1e-8;

/// One L2 logistic fit (labels 0/1, class 1 positive) from `init` ([w; b]); returns [w; b].
fn fit(x: ArrayView2<f64>, classes: &Array1<usize>, c: f64, init: Array1<f64>) -> Result<Array1<f64>> {
    let y = classes.mapv(|k| if k == 1 { 1.0 } else { -1.0 });
    let seen = Rc::new(RefCell::new((f64::INFINITY, init.to_vec())));
    let problem = Objective { x, y, alpha: 1.0 / c, best: Rc::clone(&seen) };
    let best = || seen.borrow().1.clone();
    let solver = LBFGS::new(MoreThuenteLineSearch::new(), 10)
        .with_tolerance_grad(GRADIENT_TOLERANCE * classes.len() as f64)?
        // Only the gradient decides (argmin's default also stops on a cost change below eps).
        .with_tolerance_cost(0.0)?;
    let params =
        match Executor::new(problem, solver).configure(|s| s.param(init.to_vec()).max_iters(10_000)).run() {
            Ok(result) => {
                if result.state.get_termination_reason() == Some(&TerminationReason::MaxItersReached) {
                    // scikit-learn's ConvergenceWarning.
                    log::warn!("L2 logistic regression with C = {c:e} did not converge in 10000 iterations");
                }
                result.state.best_param.unwrap_or_else(best)
            }
            // The line search can fail at a point it cannot improve on in floating point: the best
            // point seen is then as good as the optimiser gets.
            Err(e) => {
                log::debug!("L-BFGS at C = {c:e} ended with: {e}; keeping the best point seen");
                best()
            }
        };
    let params = Array1::from(params);
    ensure!(params.iter().all(|v| v.is_finite()), "L2 logistic regression with C = {c:e} diverged");
    Ok(params)
}

/// Decision values x·w + b of the rows of `x`.
pub fn decision(x: ArrayView2<f64>, coef: &Array1<f64>) -> Array1<f64> {
    let f = x.ncols();
    x.dot(&coef.slice(ndarray::s![..f])) + coef[f]
}

fn accuracy(x: ArrayView2<f64>, classes: &[usize], coef: &Array1<f64>) -> f64 {
    let d = decision(x, coef);
    let correct = d.iter().zip(classes).filter(|(&d, &c)| usize::from(d > 0.0) == c).count();
    correct as f64 / classes.len() as f64
}

/// The fitted model and what the cross-validation saw.
#[derive(Debug, Clone)]
pub struct LogisticCv {
    /// The chosen inverse penalty.
    pub c: f64,
    /// [w; b] of the refit.
    pub coef: Array1<f64>,
    /// Fold accuracy of every (fold, C).
    pub scores: Array2<f64>,
}

/// Cross-validated fit on the rows of `x` with classes 0/1; folds are spread over the ranks.
pub fn fit_cv(dist: &Dist, x: &Array2<f64>, classes: &[usize]) -> Result<LogisticCv> {
    let cs = cs();
    let folds = stratified_folds(classes, FOLDS)?;
    let width = x.ncols() + 1;
    // Per fold on this rank: [fold, scores (10), coefs (10 × width)].
    let mut mine = Vec::new();
    for fold in (0..FOLDS).filter(|f| f % dist.size() == dist.rank()) {
        let train: Vec<usize> = (0..classes.len()).filter(|&r| folds[r] != fold).collect();
        let test: Vec<usize> = (0..classes.len()).filter(|&r| folds[r] == fold).collect();
        let x_train = x.select(Axis(0), &train);
        let y_train = Array1::from_iter(train.iter().map(|&r| classes[r]));
        let x_test = x.select(Axis(0), &test);
        let y_test: Vec<usize> = test.iter().map(|&r| classes[r]).collect();
        let mut w = Array1::zeros(width);
        let mut scores = Vec::with_capacity(cs.len());
        let mut coefs: Vec<f64> = Vec::with_capacity(cs.len() * width);
        for &c in &cs {
            w = fit(x_train.view(), &y_train, c, w)
                .with_context(|| format!("cross-validation fold {fold}"))?;
            scores.push(accuracy(x_test.view(), &y_test, &w));
            coefs.extend(w.iter());
        }
        mine.push(fold as f64);
        mine.extend(scores);
        mine.extend(coefs);
    }
    let record = 1 + cs.len() + cs.len() * width;
    let mut scores = Array2::zeros((FOLDS, cs.len()));
    let mut coefs = vec![Array2::<f64>::zeros((cs.len(), width)); FOLDS];
    for part in dist.all_gather(&mine) {
        for rec in part.chunks(record) {
            let fold = rec[0] as usize;
            scores.row_mut(fold).assign(&ndarray::ArrayView1::from(&rec[1..1 + cs.len()]));
            coefs[fold] = Array2::from_shape_vec((cs.len(), width), rec[1 + cs.len()..].to_vec())?;
        }
    }
    // Summed over folds in fold order; the first maximum is the smallest C.
    let totals: Vec<f64> =
        (0..cs.len()).map(|j| (0..FOLDS).fold(0.0, |acc, f| acc + scores[[f, j]])).collect();
    let best = (0..cs.len()).fold(0, |b, j| if totals[j] > totals[b] { j } else { b });
    let views: Vec<_> = coefs.iter().map(|c| c.row(best).insert_axis(Axis(0))).collect();
    let init = concatenate(Axis(0), &views)?.mean_axis(Axis(0)).expect("five folds");
    let all = Array1::from(classes.to_vec());
    let coef = fit(x.view(), &all, cs[best], init).context("refit on all rows")?;
    Ok(LogisticCv { c: cs[best], coef, scores })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_match_scikit_learn() {
        // StratifiedKFold(5).split(X, y) of scikit-learn (0.22 and later), printed as test folds.
        let y = [1, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0, 1];
        assert_eq!(stratified_folds(&y, 5).unwrap(), [0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 2, 3, 3, 4, 4, 4]);
        let y = [2, 0, 1, 1, 0, 2, 2, 1, 0, 0, 0, 1, 2, 1, 0];
        assert_eq!(stratified_folds(&y, 5).unwrap(), [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 4, 3, 3, 4, 4]);
        assert!(stratified_folds(&[0, 0, 1, 1], 5).is_err());
        let c = cs();
        assert_eq!((c[0], c[9]), (1e-4, 1e4));
        assert!((c[1] - 7.742636826811277e-4).abs() < 1e-18);
    }
}
