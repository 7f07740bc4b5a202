//! The two LAPACK calls of the reference, through libtorch on the CPU in float64, so that the
//! numbers come from the same routines: `torch.linalg.lstsq` with the gelsy driver (QR with
//! column pivoting: rank-revealing, minimum-norm solution, rcond = eps·max(m, n)) and
//! `torch.svd` for the largest singular value that `--reg` scales.

use anyhow::{ensure, Context, Result};
use ndarray::Array2;
use tch::{Device, Kind, Tensor};

fn tensor(a: &Array2<f64>) -> Tensor {
    let a = a.as_standard_layout();
    let values = a.as_slice().expect("standard layout is contiguous");
    Tensor::from_slice(values).reshape([a.nrows() as i64, a.ncols() as i64]).to_device(Device::Cpu)
}

fn array(t: &Tensor) -> Result<Array2<f64>> {
    let size = t.size();
    ensure!(size.len() == 2, "expected a matrix, got shape {size:?}");
    let values = Vec::<f64>::try_from(t.to_kind(Kind::Double).contiguous().view(-1))?;
    Ok(Array2::from_shape_vec((size[0] as usize, size[1] as usize), values)?)
}

/// The minimum-norm least-squares solution X of A·X = B by LAPACK gelsy, and the numerical rank
/// gelsy found.
pub fn lstsq_gelsy(a: &Array2<f64>, b: &Array2<f64>) -> Result<(Array2<f64>, i64)> {
    ensure!(a.nrows() == b.nrows(), "lstsq: A has {} rows but B has {}", a.nrows(), b.nrows());
    let (solution, _residuals, rank, _singular) =
        tensor(a).f_linalg_lstsq(&tensor(b), None::<f64>, "gelsy").context("torch.linalg.lstsq (gelsy)")?;
    let rank = rank.int64_value(&[]);
    Ok((array(&solution)?, rank))
}

/// The largest singular value of `a` (`torch.svd(a)[1].max()`).
pub fn sigma_max(a: &Array2<f64>) -> Result<f64> {
    let (_u, s, _v) = tensor(a).f_svd(true, false).context("torch.svd")?;
    Ok(s.max().double_value(&[]))
}

/// `a + lambda · sigma_max(a) · I` (docs/reference.md §7.3); `a` itself when lambda is 0.
pub fn regularized(a: &Array2<f64>, lambda: f64, sigma_max: f64) -> Array2<f64> {
    let mut out = a.clone();
    if lambda != 0.0 {
        let shift = lambda * sigma_max;
        out.diag_mut().mapv_inplace(|d| d + shift);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn gelsy_minimum_norm_and_rank() {
        // Rank 1: rows (1, 1) and (2, 2); the minimum-norm solution of x + y = 1 is (0.5, 0.5).
        let a = array![[1.0, 1.0], [2.0, 2.0]];
        let b = array![[1.0], [2.0]];
        let (x, rank) = lstsq_gelsy(&a, &b).unwrap();
        assert_eq!(rank, 1);
        assert!((x[[0, 0]] - 0.5).abs() < 1e-12 && (x[[1, 0]] - 0.5).abs() < 1e-12, "{x}");
        let k = array![[5.0, 1.0], [1.0, 3.0]];
        assert!((sigma_max(&k).unwrap() - (4.0 + 2f64.sqrt())).abs() < 1e-12);
        let r = regularized(&k, 0.1, 4.0 + 2f64.sqrt());
        assert!((r[[0, 0]] - 5.541_421_356_237_31).abs() < 1e-12 && r[[0, 1]] == 1.0);
    }
}
