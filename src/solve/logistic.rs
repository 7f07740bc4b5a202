//! The `logistic` solver: scikit-learn 0.24's `LogisticRegressionCV(max_iter=10000,
//! random_state=0)` on kernel rows (spec §5.4), i.e. plain L2 logistic regression whose features
//! are the rows of the train×train kernel, with the penalty picked by cross-validation.
//!
//! The optimisation of each fit is linfa-logistic's L-BFGS (argmin, More–Thuente line search) on
//! scikit-learn's objective Σ log(1 + e^{−y(w·k+b)}) + ½(1/C)‖w‖², intercept unpenalised. What
//! decides the reported numbers is reproduced exactly around it:
//! * Cs = logspace(−4, 4, 10), each fold's path warm-started along increasing C from zeros;
//! * 5-fold `StratifiedKFold` without shuffling, with scikit-learn's fold assignment (classes
//!   numbered by first appearance, per-class fold sizes by round robin over the sorted labels,
//!   each class's rows filling the folds in consecutive blocks in data order);
//! * score = fold accuracy with a decision of exactly 0 counted as class 0; the best C maximises
//!   the summed fold scores, ties to the smallest C;
//! * the refit on all rows starts from the mean of the folds' coefficients at that C.
//!
//! The optimiser's own stopping point differs from scipy's L-BFGS-B (gradient norm 1e-4 here,
//! projected-gradient and relative-decrease tests there), so coefficients agree to the accuracy
//! of the two optima, not bit for bit; the fixture test bounds the difference.
//!
//! Folds are independent, so under MPI they are spread over the ranks and their scores and
//! coefficients all-gathered; every rank then refits the same model.

use crate::dist::Dist;
use anyhow::{bail, Context, Result};
use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{concatenate, Array1, Array2, ArrayView2, Axis};

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
    for k in 0..n_classes {
        let mut blocks = (0..n_splits).flat_map(|f| std::iter::repeat_n(f, allocation[f][k]));
        for (row, _) in encoded.iter().enumerate().filter(|(_, &e)| e == k) {
            folds[row] = blocks.next().expect("allocation covers every member");
        }
    }
    Ok(folds)
}

/// One L2 logistic fit (labels 0/1, class 1 positive) from `init` ([w; b]); returns [w; b].
fn fit(x: ArrayView2<f64>, classes: &Array1<usize>, c: f64, init: Array1<f64>) -> Result<Array1<f64>> {
    let dataset = DatasetBase::new(x, classes.view());
    let model = LogisticRegression::default()
        .alpha(1.0 / c)
        .with_intercept(true)
        .max_iterations(10_000)
        .gradient_tolerance(1e-4)
        .initial_params(init)
        .fit(&dataset)
        .with_context(|| format!("L2 logistic regression with C = {c:e}"))?;
    // linfa labels the smaller class −1 and the larger +1: class 1 is the positive side.
    let mut out = model.params().to_vec();
    out.push(model.intercept());
    Ok(Array1::from(out))
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
            w = fit(x_train.view(), &y_train, c, w).with_context(|| format!("cross-validation fold {fold}"))?;
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
    let totals: Vec<f64> = (0..cs.len()).map(|j| (0..FOLDS).fold(0.0, |acc, f| acc + scores[[f, j]])).collect();
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
