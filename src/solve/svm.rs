//! Support vector machines on a precomputed kernel, as scikit-learn's `SVC`/`SVR` (libsvm) run
//! them for the `svc` and `svr` solvers: C = 1, ε = 0.1 (SVR), stopping tolerance 1e-3.
//!
//! No Rust crate takes a precomputed kernel (linfa-svm builds its kernel from feature vectors), so
//! this is libsvm's own SMO: the dual min ½αᵀQα + pᵀα s.t. yᵀα = 0, 0 ≤ α ≤ C, with the
//! second-order working-set selection of Fan, Chen and Lin (2005), the same two-variable update
//! and clipping, the same stopping rule (m(α) − M(α) < tol) and the same bias (the mean of yᵢ∇ᵢ
//! over free variables, else the midpoint of the bounds). Like libsvm, Q entries are rounded to
//! single precision (libsvm's `Qfloat`) while the diagonal and the decision values stay double.
//! Shrinking is left out: it only skips variables that stay at a bound, so the iterates are the
//! same, and on the fixture of scripts/make_solver_fixture.py the SVR predictions agree with
//! scikit-learn's to about 1e-16 and the SVC predictions exactly.

use ndarray::{Array2, ArrayView2};

const TAU: f64 = 1e-12;

/// The dual problem of libsvm's `Solver`: variable k stands for kernel row `index[k]` with sign
/// `y[k]`, so Q[k][m] = y[k]·y[m]·K[index[k], index[m]].
struct Dual<'a> {
    kernel: ArrayView2<'a, f64>,
    index: Vec<usize>,
    y: Vec<f64>,
    linear: Vec<f64>,
    c: f64,
}

impl Dual<'_> {
    fn q_column(&self, i: usize, out: &mut [f64]) {
        let row = self.kernel.row(self.index[i]);
        for (k, o) in out.iter_mut().enumerate() {
            *o = self.y[i] * self.y[k] * (row[self.index[k]] as f32) as f64;
        }
    }

    /// α and ρ of a tol-optimal solution.
    fn solve(&self, tol: f64) -> (Vec<f64>, f64) {
        let l = self.y.len();
        let qd: Vec<f64> = (0..l).map(|k| self.kernel[[self.index[k], self.index[k]]]).collect();
        let mut alpha = vec![0.0; l];
        let mut grad = self.linear.clone();
        let (mut q_i, mut q_j) = (vec![0.0; l], vec![0.0; l]);
        let max_iter = (100 * l).max(10_000_000);
        let upper = |a: f64| a >= self.c;
        let lower = |a: f64| a <= 0.0;
        for _ in 0..max_iter {
            // Working set: i maximises −y∇ over I_up, j minimises the second-order decrease.
            let (mut gmax, mut gmax_idx) = (f64::NEG_INFINITY, None);
            for t in 0..l {
                let v = if self.y[t] > 0.0 {
                    (!upper(alpha[t])).then_some(-grad[t])
                } else {
                    (!lower(alpha[t])).then_some(grad[t])
                };
                if let Some(v) = v {
                    if v >= gmax {
                        gmax = v;
                        gmax_idx = Some(t);
                    }
                }
            }
            let Some(i) = gmax_idx else { break };
            self.q_column(i, &mut q_i);
            let (mut gmax2, mut gmin_idx, mut obj_min) = (f64::NEG_INFINITY, None, f64::INFINITY);
            for j in 0..l {
                let (grad_diff, quad) = if self.y[j] > 0.0 {
                    if lower(alpha[j]) {
                        continue;
                    }
                    gmax2 = gmax2.max(grad[j]);
                    (gmax + grad[j], qd[i] + qd[j] - 2.0 * self.y[i] * q_i[j])
                } else {
                    if upper(alpha[j]) {
                        continue;
                    }
                    gmax2 = gmax2.max(-grad[j]);
                    (gmax - grad[j], qd[i] + qd[j] + 2.0 * self.y[i] * q_i[j])
                };
                if grad_diff > 0.0 {
                    let obj = -(grad_diff * grad_diff) / if quad > 0.0 { quad } else { TAU };
                    if obj <= obj_min {
                        gmin_idx = Some(j);
                        obj_min = obj;
                    }
                }
            }
            let Some(j) = gmin_idx.filter(|_| gmax + gmax2 >= tol) else { break };
            self.q_column(j, &mut q_j);

            let (old_i, old_j) = (alpha[i], alpha[j]);
            let c = self.c;
            if self.y[i] != self.y[j] {
                let quad = qd[i] + qd[j] + 2.0 * q_i[j];
                let delta = (-grad[i] - grad[j]) / if quad > 0.0 { quad } else { TAU };
                let diff = alpha[i] - alpha[j];
                alpha[i] += delta;
                alpha[j] += delta;
                if diff > 0.0 {
                    if alpha[j] < 0.0 {
                        alpha[j] = 0.0;
                        alpha[i] = diff;
                    }
                } else if alpha[i] < 0.0 {
                    alpha[i] = 0.0;
                    alpha[j] = -diff;
                }
                if diff > 0.0 {
                    // diff > C_i − C_j = 0
                    if alpha[i] > c {
                        alpha[i] = c;
                        alpha[j] = c - diff;
                    }
                } else if alpha[j] > c {
                    alpha[j] = c;
                    alpha[i] = c + diff;
                }
            } else {
                let quad = qd[i] + qd[j] - 2.0 * q_i[j];
                let delta = (grad[i] - grad[j]) / if quad > 0.0 { quad } else { TAU };
                let sum = alpha[i] + alpha[j];
                alpha[i] -= delta;
                alpha[j] += delta;
                if sum > c {
                    if alpha[i] > c {
                        alpha[i] = c;
                        alpha[j] = sum - c;
                    }
                } else if alpha[j] < 0.0 {
                    alpha[j] = 0.0;
                    alpha[i] = sum;
                }
                if sum > c {
                    if alpha[j] > c {
                        alpha[j] = c;
                        alpha[i] = sum - c;
                    }
                } else if alpha[i] < 0.0 {
                    alpha[i] = 0.0;
                    alpha[j] = sum;
                }
            }
            let (di, dj) = (alpha[i] - old_i, alpha[j] - old_j);
            for k in 0..l {
                grad[k] += q_i[k] * di + q_j[k] * dj;
            }
        }
        (alpha.clone(), self.rho(&alpha, &grad))
    }

    fn rho(&self, alpha: &[f64], grad: &[f64]) -> f64 {
        let (mut ub, mut lb, mut sum_free, mut free) = (f64::INFINITY, f64::NEG_INFINITY, 0.0, 0usize);
        for k in 0..alpha.len() {
            let yg = self.y[k] * grad[k];
            if alpha[k] >= self.c {
                if self.y[k] < 0.0 {
                    ub = ub.min(yg);
                } else {
                    lb = lb.max(yg);
                }
            } else if alpha[k] <= 0.0 {
                if self.y[k] > 0.0 {
                    ub = ub.min(yg);
                } else {
                    lb = lb.max(yg);
                }
            } else {
                free += 1;
                sum_free += yg;
            }
        }
        if free > 0 {
            sum_free / free as f64
        } else {
            (ub + lb) / 2.0
        }
    }
}

/// A fitted SVM: decision(x) = Σᵢ coefᵢ·K(i, x) − rho.
#[derive(Debug, Clone)]
pub struct Svm {
    pub coef: Vec<f64>,
    pub rho: f64,
}

impl Svm {
    /// Decision values of the columns of `kernel_x` ([N, M]: training rows, evaluated columns).
    pub fn decision(&self, kernel_x: &Array2<f64>) -> Vec<f64> {
        kernel_x.t().dot(&ndarray::ArrayView1::from(&self.coef[..])).iter().map(|d| d - self.rho).collect()
    }
}

/// libsvm's default stopping tolerance, as scikit-learn passes it (`tol=1e-3`).
pub const TOL: f64 = 1e-3;

/// C-SVC on classes 0/1. libsvm (scikit-learn's copy sorts labels) makes class 0 the positive
/// side: a decision > 0 predicts class 0, a decision ≤ 0 class 1.
pub fn svc(kernel: &Array2<f64>, classes: &[usize], c: f64) -> Svm {
    let y: Vec<f64> = classes.iter().map(|&k| if k == 0 { 1.0 } else { -1.0 }).collect();
    let dual =
        Dual { kernel: kernel.view(), index: (0..y.len()).collect(), linear: vec![-1.0; y.len()], y, c };
    let (alpha, rho) = dual.solve(TOL);
    Svm { coef: alpha.iter().zip(&dual.y).map(|(a, y)| a * y).collect(), rho }
}

/// Class of an SVC decision value (see [`svc`]).
pub fn svc_class(decision: f64) -> usize {
    if decision > 0.0 {
        0
    } else {
        1
    }
}

/// ε-SVR: libsvm's 2l-variable form with linear term ε ∓ yᵢ.
pub fn svr(kernel: &Array2<f64>, targets: &[f64], c: f64, epsilon: f64) -> Svm {
    let l = targets.len();
    let dual = Dual {
        kernel: kernel.view(),
        index: (0..2 * l).map(|k| k % l).collect(),
        y: (0..2 * l).map(|k| if k < l { 1.0 } else { -1.0 }).collect(),
        linear: (0..2 * l)
            .map(|k| if k < l { epsilon - targets[k] } else { epsilon + targets[k - l] })
            .collect(),
        c,
    };
    let (alpha, rho) = dual.solve(TOL);
    Svm { coef: (0..l).map(|i| alpha[i] - alpha[i + l]).collect(), rho }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_points_get_the_maximum_margin() {
        // 1-D points −2, −1 (class 1) and 1, 2 (class 0) with a linear kernel: the margin is set by
        // ±1, so w = 1 (α = 0.5 on the two inner points; within C = 1) and the bias is 0.
        let x = [-2.0, -1.0, 1.0, 2.0];
        let k = Array2::from_shape_fn((4, 4), |(i, j)| x[i] * x[j]);
        let m = svc(&k, &[1, 1, 0, 0], 1.0);
        assert!(m.rho.abs() < 1e-3, "{m:?}");
        let probe = Array2::from_shape_fn((4, 2), |(i, j)| x[i] * [0.5, -3.0][j]);
        let d = m.decision(&probe);
        assert!((d[0] - 0.5).abs() < 2e-3 && (d[1] + 3.0).abs() < 1e-2, "{d:?}");
        assert_eq!((svc_class(d[0]), svc_class(d[1])), (0, 1));
    }

    #[test]
    fn svr_fits_a_line_within_epsilon() {
        let x = [0.0, 1.0, 2.0, 3.0];
        let t = [0.0, 0.5, 1.0, 1.5];
        let k = Array2::from_shape_fn((4, 4), |(i, j)| x[i] * x[j] + 1.0);
        let m = svr(&k, &t, 1.0, 0.1);
        let d = m.decision(&k);
        for (p, t) in d.iter().zip(t) {
            assert!((p - t).abs() <= 0.1 + 1e-3, "{d:?}");
        }
    }
}
