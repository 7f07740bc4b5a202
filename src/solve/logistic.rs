//! The `logistic` solver: scikit-learn 0.24's `LogisticRegressionCV(max_iter=10000,
//! random_state=0)` on kernel rows (docs/reference.md §7.4), i.e. plain L2 logistic regression whose features
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
//! Stopping differs on purpose: here only the gradient norm (1e-8·n) ends a fit (or the cap of
//! 10 000 iterations, or a line search that cannot go on, both at the best point seen), while
//! scipy's L-BFGS-B also stops on a relative decrease of 2.2e-9 (0.24) and scikit-learn ≥ 1.2
//! scales the objective by 1/n first. Those early stops make large-C fits (nearly separable folds) depend
//! on the scipy version; this solver goes to the optimum both approximate, and the fixture test
//! compares it with scikit-learn run to convergence (tol 1e-8).
//!
//! [`fit_cv_multinomial`] is the same cross-validation for `multi_class="multinomial"` (softmax
//! over L classes, both rows kept for two), which `mezo linearhead` uses on features.
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
    /// Whether b is fitted; without, its gradient is 0 and it stays at its initial 0.
    intercept: bool,
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
        ensure_finite(p)?;
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
        ensure_finite(p)?;
        let f = self.x.ncols();
        // d/dz of log(1 + e^{−yz}) = −y·σ(−yz)
        let z: Array1<f64> = self.margins(p).mapv(|m| 1.0 / (1.0 + m.exp())) * &self.y * -1.0;
        let mut g = (self.x.t().dot(&z) + &(ArrayView1::from(&p[..f]).to_owned() * self.alpha)).to_vec();
        g.push(if self.intercept { z.sum() } else { 0.0 });
        Ok(g)
    }
}

/// Refuses a non-finite point. L-BFGS steps to NaN when its curvature pairs degenerate (s·y
/// rounding to 0 on nearly separable folds at large C), and More–Thuente then searches on NaN
/// costs without end; the error ends the fit at the best point seen instead ([`minimize`]).
fn ensure_finite(p: &[f64]) -> Result<(), argmin::core::Error> {
    match p.iter().all(|v| v.is_finite()) {
        true => Ok(()),
        false => Err(anyhow::anyhow!("L-BFGS stepped to a non-finite point")),
    }
}

/// L-BFGS stops when the gradient's norm is below this many times the number of rows (the
/// gradient of the mean loss below 1e-8): converged well past scikit-learn's `tol=1e-4`, whose
/// stopping point depends on the scipy and scikit-learn versions (module doc). Kernel rows with
/// entries of 1e3 make the large-C fits so ill-conditioned that they reach the iteration cap
/// first, as scikit-learn's do (with its ConvergenceWarning, here a warning in the log).
const GRADIENT_TOLERANCE: f64 = 1e-8;

/// One L2 logistic fit (labels 0/1, class 1 positive) from `init` ([w; b]); returns [w; b]
/// (b kept at its initial value without `intercept`).
fn fit(
    x: ArrayView2<f64>,
    classes: &[usize],
    c: f64,
    init: Array1<f64>,
    intercept: bool,
) -> Result<Array1<f64>> {
    let y = Array1::from_iter(classes.iter().map(|&k| if k == 1 { 1.0 } else { -1.0 }));
    let seen = Rc::new(RefCell::new((f64::INFINITY, init.to_vec())));
    let problem = Objective { x, y, alpha: 1.0 / c, intercept, best: Rc::clone(&seen) };
    minimize(problem, &seen, init, c, classes.len())
}

/// One multinomial L2 logistic fit from `init` (row-major [w_l; b_l] of `n_classes` rows).
fn fit_softmax(
    x: ArrayView2<f64>,
    classes: &[usize],
    n_classes: usize,
    c: f64,
    init: Array1<f64>,
    intercept: bool,
) -> Result<Array1<f64>> {
    let mut onehot = Array2::zeros((classes.len(), n_classes));
    for (i, &k) in classes.iter().enumerate() {
        onehot[[i, k]] = 1.0;
    }
    let seen = Rc::new(RefCell::new((f64::INFINITY, init.to_vec())));
    let problem = Softmax { x, onehot, alpha: 1.0 / c, intercept, best: Rc::clone(&seen) };
    minimize(problem, &seen, init, c, classes.len())
}

/// L-BFGS from `init` to the gradient tolerance; `seen` is the problem's best point so far.
fn minimize<P>(
    problem: P,
    seen: &Rc<RefCell<(f64, Vec<f64>)>>,
    init: Array1<f64>,
    c: f64,
    rows: usize,
) -> Result<Array1<f64>>
where
    P: CostFunction<Param = Vec<f64>, Output = f64> + Gradient<Param = Vec<f64>, Gradient = Vec<f64>>,
{
    let best = || seen.borrow().1.clone();
    let solver = LBFGS::new(MoreThuenteLineSearch::new(), 10)
        .with_tolerance_grad(GRADIENT_TOLERANCE * rows as f64)?
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

/// scikit-learn's multinomial objective Σᵢ [logsumexp(zᵢ) − zᵢ,yᵢ] + ½α‖W‖², zᵢ = W xᵢ + b, with
/// the parameters row-major [w_l; b_l] and the intercepts unpenalised.
struct Softmax<'a> {
    x: ArrayView2<'a, f64>,
    onehot: Array2<f64>,
    alpha: f64,
    /// Whether b is fitted (see [`Objective`]).
    intercept: bool,
    best: Rc<RefCell<(f64, Vec<f64>)>>,
}

impl Softmax<'_> {
    fn weights(&self, p: &[f64]) -> Array2<f64> {
        let (f, l) = (self.x.ncols(), self.onehot.ncols());
        Array2::from_shape_vec((l, f + 1), p.to_vec()).expect("L × (F + 1) parameters")
    }

    /// Decisions `[N, L]` and their row-wise log-sum-exp.
    fn decisions(&self, p: &[f64]) -> (Array2<f64>, Array1<f64>) {
        let z = softmax_decisions(self.x, &Array1::from(p.to_vec()), self.onehot.ncols());
        let lse = z.map_axis(Axis(1), |row| {
            let m = row.fold(f64::NEG_INFINITY, |a, &v| a.max(v));
            m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
        });
        (z, lse)
    }
}

impl CostFunction for Softmax<'_> {
    type Param = Vec<f64>;
    type Output = f64;

    fn cost(&self, p: &Vec<f64>) -> Result<f64, argmin::core::Error> {
        ensure_finite(p)?;
        let f = self.x.ncols();
        let (z, lse) = self.decisions(p);
        let w = self.weights(p);
        let penalty = w.slice(ndarray::s![.., ..f]).iter().map(|v| v * v).sum::<f64>();
        let cost = lse.sum() - (&z * &self.onehot).sum() + 0.5 * self.alpha * penalty;
        let mut best = self.best.borrow_mut();
        if cost < best.0 {
            *best = (cost, p.clone());
        }
        Ok(cost)
    }
}

impl Gradient for Softmax<'_> {
    type Param = Vec<f64>;
    type Gradient = Vec<f64>;

    fn gradient(&self, p: &Vec<f64>) -> Result<Vec<f64>, argmin::core::Error> {
        ensure_finite(p)?;
        let f = self.x.ncols();
        let (z, lse) = self.decisions(p);
        // d/dz of logsumexp(z) − z_y = softmax(z) − onehot(y).
        let g = (z - &lse.insert_axis(Axis(1))).mapv(f64::exp) - &self.onehot;
        let mut grad = self.weights(p);
        let mut weights = grad.slice_mut(ndarray::s![.., ..f]);
        weights *= self.alpha;
        weights += &g.t().dot(&self.x);
        if self.intercept {
            grad.column_mut(f).assign(&g.sum_axis(Axis(0)));
        } else {
            grad.column_mut(f).fill(0.0);
        }
        Ok(grad.into_raw_vec_and_offset().0)
    }
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
    let fit_one = |x: ArrayView2<f64>, y: &[usize], c: f64, init: Array1<f64>| fit(x, y, c, init, true);
    let (c, coef, scores) = cross_validate(dist, x, classes, x.ncols() + 1, fit_one, accuracy)?;
    Ok(LogisticCv { c, coef, scores })
}

/// scikit-learn's `LogisticRegressionCV(multi_class="multinomial")` with the same Cs, folds,
/// tie rule and refit as [`fit_cv`]; classes are 0..`n_classes`.
///
/// With two classes scikit-learn still optimises both softmax rows [w₀; b₀], [w₁; b₁] with both
/// weight rows penalised, and reports row 1. The optimum is symmetric (w₀ = −w₁, and b₀ = −b₁
/// along its path from zeros), so the softmax margin is 2(w₁·x + b₁) with penalty ‖w₁‖²/C: that
/// is binary logistic regression at C' = 2C on v = 2w₁, which is what runs here (the same
/// optimum and decisions, one row fewer to optimise). The coefficients returned are
/// scikit-learn's `coef_`/`intercept_`: one row [w₁; b₁] for two classes, one per class otherwise.
///
/// Without `intercept` (scikit-learn's `fit_intercept=False`) the intercepts stay 0.
pub fn fit_cv_multinomial(
    dist: &Dist,
    x: &Array2<f64>,
    classes: &[usize],
    n_classes: usize,
    intercept: bool,
) -> Result<MultinomialCv> {
    ensure!(n_classes >= 2, "logistic regression needs at least two classes");
    ensure!(classes.iter().all(|&k| k < n_classes), "class index out of range");
    let width = x.ncols() + 1;
    if n_classes == 2 {
        let fit_one = |x: ArrayView2<f64>, y: &[usize], c: f64, init: Array1<f64>| {
            Ok(fit(x, y, 2.0 * c, init * 2.0, intercept)? / 2.0)
        };
        let (c, coef, scores) = cross_validate(dist, x, classes, width, fit_one, accuracy)?;
        return Ok(MultinomialCv { c, coef: coef.insert_axis(Axis(0)), scores });
    }
    let fit_one = |x: ArrayView2<f64>, y: &[usize], c: f64, init: Array1<f64>| {
        fit_softmax(x, y, n_classes, c, init, intercept)
    };
    let score = |x: ArrayView2<f64>, y: &[usize], coef: &Array1<f64>| {
        let predicted = softmax_decisions(x, coef, n_classes).map_axis(Axis(1), argmax);
        y.iter().zip(&predicted).filter(|(y, p)| y == p).count() as f64 / y.len() as f64
    };
    let (c, coef, scores) = cross_validate(dist, x, classes, n_classes * width, fit_one, score)?;
    Ok(MultinomialCv { c, coef: coef.into_shape_with_order((n_classes, width))?, scores })
}

/// A multinomial fit and what its cross-validation saw.
#[derive(Debug, Clone)]
pub struct MultinomialCv {
    /// The chosen inverse penalty.
    pub c: f64,
    /// scikit-learn's `coef_` with `intercept_` as the last column: `[1, F + 1]` for two classes
    /// (class 1's half of the symmetric solution), `[L, F + 1]` otherwise.
    pub coef: Array2<f64>,
    /// Fold accuracy of every (fold, C).
    pub scores: Array2<f64>,
}

/// First index of the largest value (numpy's argmax).
fn argmax(row: ArrayView1<f64>) -> usize {
    (0..row.len()).fold(0, |b, j| if row[j] > row[b] { j } else { b })
}

/// Decision values `[N, L]` of the rows of `x` under row-major [w_l; b_l] parameters.
pub fn softmax_decisions(x: ArrayView2<f64>, coef: &Array1<f64>, n_classes: usize) -> Array2<f64> {
    let f = x.ncols();
    let p = coef.view().into_shape_with_order((n_classes, f + 1)).expect("L × (F + 1) parameters");
    x.dot(&p.slice(ndarray::s![.., ..f]).t()) + p.column(f)
}

/// Cross-validation shared by the binary and multinomial fits: `fit_one(x, classes, C, init)`
/// gives the parameters (`width` of them) and `score` a fold's accuracy. Folds are spread over
/// the ranks, their scores and path coefficients all-gathered; every rank refits the same model.
fn cross_validate(
    dist: &Dist,
    x: &Array2<f64>,
    classes: &[usize],
    width: usize,
    fit_one: impl Fn(ArrayView2<f64>, &[usize], f64, Array1<f64>) -> Result<Array1<f64>>,
    score: impl Fn(ArrayView2<f64>, &[usize], &Array1<f64>) -> f64,
) -> Result<(f64, Array1<f64>, Array2<f64>)> {
    let cs = cs();
    let folds = stratified_folds(classes, FOLDS)?;
    // Per fold on this rank: [fold, scores (10), coefs (10 × width)].
    let mut mine = Vec::new();
    for fold in (0..FOLDS).filter(|f| f % dist.size() == dist.rank()) {
        let train: Vec<usize> = (0..classes.len()).filter(|&r| folds[r] != fold).collect();
        let test: Vec<usize> = (0..classes.len()).filter(|&r| folds[r] == fold).collect();
        let x_train = x.select(Axis(0), &train);
        let y_train: Vec<usize> = train.iter().map(|&r| classes[r]).collect();
        let x_test = x.select(Axis(0), &test);
        let y_test: Vec<usize> = test.iter().map(|&r| classes[r]).collect();
        let mut w = Array1::zeros(width);
        let mut scores = Vec::with_capacity(cs.len());
        let mut coefs: Vec<f64> = Vec::with_capacity(cs.len() * width);
        for &c in &cs {
            w = fit_one(x_train.view(), &y_train, c, w)
                .with_context(|| format!("cross-validation fold {fold}"))?;
            scores.push(score(x_test.view(), &y_test, &w));
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
    let coef = fit_one(x.view(), classes, cs[best], init).context("refit on all rows")?;
    Ok((cs[best], coef, scores))
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

    /// Rows of a small problem: two classes, or three; not separable.
    fn problem(n_classes: usize) -> (Array2<f64>, Vec<usize>) {
        let x = Array2::from_shape_fn((30, 3), |(i, j)| {
            ((i * 7 + j * 3) % 11) as f64 / 5.0 - 1.0 + 0.1 * j as f64
        });
        let y = (0..30).map(|i| (i * 5 + i / 7) % n_classes).collect();
        (x, y)
    }

    #[test]
    fn softmax_gradient_is_the_cost_derivative() {
        let (x, y) = problem(3);
        let mut onehot = Array2::zeros((30, 3));
        for (i, &k) in y.iter().enumerate() {
            onehot[[i, k]] = 1.0;
        }
        let best = Rc::new(RefCell::new((f64::INFINITY, Vec::new())));
        let problem = Softmax { x: x.view(), onehot, alpha: 0.7, intercept: true, best };
        let p: Vec<f64> = (0..12).map(|i| (i as f64 * 0.37).sin()).collect();
        let g = problem.gradient(&p).unwrap();
        for i in 0..12 {
            let (mut up, mut down) = (p.clone(), p.clone());
            up[i] += 1e-6;
            down[i] -= 1e-6;
            let numeric = (problem.cost(&up).unwrap() - problem.cost(&down).unwrap()) / 2e-6;
            assert!(
                (numeric - g[i]).abs() < 1e-6 * (1.0 + g[i].abs()),
                "parameter {i}: {numeric} vs {}",
                g[i]
            );
        }
    }

    #[test]
    fn without_intercept_the_intercepts_stay_zero_at_the_optimum() {
        let dist = Dist::single();
        for n_classes in [2, 3] {
            let (x, y) = problem(n_classes);
            let cv = fit_cv_multinomial(&dist, &x, &y, n_classes, false).unwrap();
            let f = x.ncols();
            assert!(cv.coef.column(f).iter().all(|&b| b == 0.0), "{n_classes} classes: {:?}", cv.coef);
            // The weights are optimal for the problem without intercept: a zero-intercept fit
            // from them at the chosen C does not move.
            let width = cv.coef.len();
            let init = Array1::from(cv.coef.clone().into_raw_vec_and_offset().0);
            let again = if n_classes == 2 {
                fit(x.view(), &y, 2.0 * cv.c, init.clone() * 2.0, false).unwrap() / 2.0
            } else {
                fit_softmax(x.view(), &y, n_classes, cv.c, init.clone(), false).unwrap()
            };
            assert_eq!(again.len(), width);
            assert!((&again - &init).iter().all(|d| d.abs() < 1e-6), "{n_classes} classes moved");
        }
    }

    #[test]
    fn two_class_multinomial_is_binary_at_twice_c_halved() {
        // Both softmax rows optimised (as scikit-learn does) against the binary fit at 2C.
        let (x, y) = problem(2);
        let c = 0.3;
        let rows = fit_softmax(x.view(), &y, 2, c, Array1::zeros(8), true).unwrap();
        let half = fit(x.view(), &y, 2.0 * c, Array1::zeros(4), true).unwrap() / 2.0;
        for j in 0..4 {
            assert!((rows[4 + j] - half[j]).abs() < 1e-6, "{rows} vs {half}");
            assert!((rows[j] + half[j]).abs() < 1e-6, "{rows} vs {half}");
        }
        let dist = Dist::single();
        let cv = fit_cv_multinomial(&dist, &x, &y, 2, true).unwrap();
        assert_eq!(cv.coef.dim(), (1, 4));
        let cv3 = fit_cv_multinomial(&dist, &x, &problem(3).1, 3, true).unwrap();
        assert_eq!(cv3.coef.dim(), (3, 4));
    }

    #[test]
    fn ill_conditioned_kernel_rows_finish() {
        // Gram rows of 32 points as eNTK kernels look (entries of order 1e3, nearly separable):
        // L-BFGS steps to NaN on some folds, where the line search used to loop forever.
        let points = Array2::from_shape_fn((32, 6), |(i, j)| {
            (((i * 37 + j * 11) % 23) as f64 - 11.0) + 3.0 * j as f64
        });
        let x = points.dot(&points.t()) * 2.0;
        let y: Vec<usize> =
            (0..32).map(|i| usize::from(points[[i, 0]] + 0.3 * points[[i, 1]] > 0.0)).collect();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(fit_cv(&Dist::single(), &x, &y).map(|cv| cv.coef)));
        let coef = finished
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("cross-validation finishes")
            .unwrap();
        assert!(coef.iter().all(|v| v.is_finite()), "{coef}");
    }
}
