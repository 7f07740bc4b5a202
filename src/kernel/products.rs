//! Kernel entries as matrix products of cached gradients, accumulated in f64.
//!
//! A row block holds R train gradients as an `[R·C, P]` matrix; a batch of B column gradients is
//! `[B·C, P]`; one product gives the `[R, C, B, C]` block of the kernel. The products run in
//! f64 over chunks of P (each f32 gradient value is exact in f64), so sign kernels, whose
//! entries are sums of −1, 0 and +1, are exact integers, and `sgd` entries carry no f32
//! accumulation error. Row-sparse tensors enter the same way, over the union of the rows the
//! block's examples touch: a column's rows outside that union meet zeros on the row side.

use super::gradients::{ExampleGradient, SparseRows};
use tch::{Kind, Tensor};

/// The kernel formulas of LM-Kernel-FT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Formula {
    /// ⟨g(a), g(b)⟩.
    Sgd,
    /// ⟨sign g(a), sign g(b)⟩.
    SignGd,
    /// K⁰ = ⟨sign g(a), g(b)⟩ and K¹ = ⟨g(a), sign g(b)⟩, both from one pass.
    AsymmetricSignGd,
}

impl Formula {
    /// The name the reference and our files use.
    pub fn name(self) -> &'static str {
        match self {
            Formula::Sgd => "sgd",
            Formula::SignGd => "signgd",
            Formula::AsymmetricSignGd => "asymmetric_signgd",
        }
    }

    /// The formula named `name` in a kernel file.
    pub fn parse(name: &str) -> Option<Formula> {
        [Formula::Sgd, Formula::SignGd, Formula::AsymmetricSignGd].into_iter().find(|f| f.name() == name)
    }

    /// Kernels per entry: 2 for the asymmetric formula.
    pub fn kernels(self) -> usize {
        if self == Formula::AsymmetricSignGd {
            2
        } else {
            1
        }
    }
}

/// Values of P multiplied at once: bounds the f64 copies of a column batch to `B·C·CHUNK`
/// values, and keeps f32 sums of ±1 products exact (below 2^24).
const CHUNK: i64 = 1 << 18;

/// One part of the row block's gradients (the dense part, or one row-sparse tensor over the
/// block's rows) in the forms its formula multiplies, kept in f32: values for `sgd`, signs for
/// `signgd` (whose chunked f32 products are exact integers), both for `asymmetric_signgd`. The
/// f64 products convert one chunk of P at a time (exactly: every f32 is an f64), so that a block
/// holds 4 bytes per value and form, not 8 (`sgd`: 4 bytes a value, its examples' gradients as
/// columns being views of it, where f64 copies beside them took 12), at the price of converting
/// the block's chunk once per column batch, which the GEMM reads anyway.
struct Part {
    values: Option<Tensor>,
    signs: Option<Tensor>,
}

impl Part {
    /// The part of `values`, which it takes over (`signgd` overwrites them with their signs).
    fn new(mut values: Tensor, formula: Formula) -> Part {
        match formula {
            Formula::Sgd => Part { values: Some(values), signs: None },
            Formula::SignGd => {
                let _ = values.sign_();
                Part { values: None, signs: Some(values) }
            }
            Formula::AsymmetricSignGd => Part { signs: Some(values.sign()), values: Some(values) },
        }
    }

    /// Bytes per f32 gradient value a block holds for `formula` (its own gradients, used as the
    /// train split's columns too, are views of it).
    pub fn bytes_per_value(formula: Formula) -> u64 {
        match formula {
            Formula::Sgd | Formula::SignGd => 4,
            Formula::AsymmetricSignGd => 8,
        }
    }

    /// Rows `first .. first + count` of the f32 form a column needs (values, or signs).
    fn rows(&self, first: i64, count: i64) -> Tensor {
        let form = self.values.as_ref().or(self.signs.as_ref()).expect("a part has values or signs");
        form.narrow(0, first, count)
    }

    /// The block's kernels against `columns` `[N, P]` f32 (K, or K⁰ and K¹), over chunks of P.
    fn against(&self, columns: &Tensor, formula: Formula) -> Vec<Tensor> {
        let p = columns.size()[1];
        let (m, device) = {
            let any = self.values.as_ref().or(self.signs.as_ref()).expect("a part has values or signs");
            (any.size()[0], any.device())
        };
        let n = columns.size()[0];
        let mut out: Vec<Tensor> =
            (0..formula.kernels()).map(|_| Tensor::zeros([m, n], (Kind::Double, device))).collect();
        let mut start = 0;
        while start < p {
            let len = CHUNK.min(p - start);
            let col = columns.narrow(1, start, len);
            let rows = |t: &Option<Tensor>| t.as_ref().expect("formula's form").narrow(1, start, len);
            let wide = |t: &Option<Tensor>| rows(t).to_kind(Kind::Double);
            match formula {
                Formula::Sgd => out[0] += wide(&self.values).matmul(&col.to_kind(Kind::Double).tr()),
                Formula::SignGd => out[0] += rows(&self.signs).matmul(&col.sign().tr()).to_kind(Kind::Double),
                Formula::AsymmetricSignGd => {
                    out[0] += wide(&self.signs).matmul(&col.to_kind(Kind::Double).tr());
                    out[1] += wide(&self.values).matmul(&col.sign().to_kind(Kind::Double).tr());
                }
            }
            start += len;
        }
        out
    }
}

/// Bytes a row block holds per f32 gradient value, for sizing blocks.
pub fn bytes_per_value(formula: Formula) -> u64 {
    Part::bytes_per_value(formula)
}

/// R train gradients ready to be multiplied with columns.
pub struct RowBlock {
    rows: usize,
    outputs: usize,
    formula: Formula,
    dense: Part,
    /// Per row-sparse tensor: the sorted union of the block's row ids, and the part over them.
    sparse: Vec<(Tensor, Part)>,
}

impl RowBlock {
    pub fn new(gradients: &[&ExampleGradient], formula: Formula) -> RowBlock {
        let dense = Tensor::cat(&gradients.iter().map(|g| g.dense.shallow_clone()).collect::<Vec<_>>(), 0);
        let sparse: Vec<&[SparseRows]> = gradients.iter().map(|g| g.sparse.as_slice()).collect();
        RowBlock::from_parts(dense, &sparse, formula)
    }

    /// The block of R examples whose dense gradients are the rows of `dense` `[R·C, P]` (f32,
    /// taken over) and whose row-sparse gradients are `sparse`, one list per example.
    pub fn from_parts(dense: Tensor, sparse: &[&[SparseRows]], formula: Formula) -> RowBlock {
        let rows = sparse.len();
        let outputs = dense.size()[0] as usize / rows.max(1);
        let sparse = (0..sparse.first().map_or(0, |s| s.len()))
            .map(|j| {
                let ids =
                    Tensor::cat(&sparse.iter().map(|s| s[j].ids.shallow_clone()).collect::<Vec<_>>(), 0);
                let (union, _, _) = ids.internal_unique2(true, false, false);
                let scattered: Vec<Tensor> = sparse.iter().map(|s| scatter(&s[j], &union)).collect();
                (union, Part::new(Tensor::cat(&scattered, 0), formula))
            })
            .collect();
        RowBlock { rows, outputs, formula, dense: Part::new(dense, formula), sparse }
    }

    /// Example `r`'s dense gradient `[C, P]` as the products use it as a column, a view of the
    /// block: its values (its signs for `signgd`, whose products take signs of both sides).
    pub fn dense_of(&self, r: usize) -> Tensor {
        self.dense.rows((r * self.outputs) as i64, self.outputs as i64)
    }

    /// The kernels `[R, C, B, C]` (f64) of this block against `columns` (K, or K⁰ and K¹).
    pub fn against(&self, columns: &[&ExampleGradient]) -> Vec<Tensor> {
        let dense = Tensor::cat(&columns.iter().map(|g| g.dense.shallow_clone()).collect::<Vec<_>>(), 0);
        let mut kernels = self.dense.against(&dense, self.formula);
        for (j, (union, part)) in self.sparse.iter().enumerate() {
            if union.numel() == 0 {
                continue;
            }
            let gathered =
                Tensor::cat(&columns.iter().map(|g| scatter(&g.sparse[j], union)).collect::<Vec<_>>(), 0);
            for (k, extra) in kernels.iter_mut().zip(part.against(&gathered, self.formula)) {
                *k += extra;
            }
        }
        let (r, c, b) = (self.rows as i64, self.outputs as i64, columns.len() as i64);
        kernels.into_iter().map(|k| k.view([r, c, b, c])).collect()
    }
}

/// An example's rows of one sparse tensor laid out over `union` (sorted ids): `[C, |union|·W]`,
/// zero at the ids the example does not touch; its rows outside `union` are dropped.
fn scatter(rows: &super::gradients::SparseRows, union: &Tensor) -> Tensor {
    let (c, _, w) = rows.rows.size3().expect("[C, n, W]");
    let u = union.size()[0];
    let out = Tensor::zeros([c, u, w], (Kind::Float, rows.rows.device()));
    if rows.ids.numel() > 0 && u > 0 {
        let at = rows.ids.searchsorted(union, false, false, "left", None::<&Tensor>).clamp_max(u - 1);
        let found = union.index_select(0, &at).eq_tensor(&rows.ids);
        let keep = found.nonzero().view([-1]);
        let _ =
            out.shallow_clone().index_copy_(1, &at.index_select(0, &keep), &rows.rows.index_select(1, &keep));
    }
    out.view([c, u * w])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::gradients::SparseRows;
    use tch::Device;

    fn example(dense: &[f32], ids: &[i64], rows: &[f32]) -> ExampleGradient {
        ExampleGradient {
            dense: Tensor::from_slice(dense).view([1, -1]),
            sparse: vec![SparseRows {
                ids: Tensor::from_slice(ids),
                rows: Tensor::from_slice(rows).view([1, ids.len() as i64, 2]),
            }],
        }
    }

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::try_from(t.to_device(Device::Cpu).view([-1])).unwrap()
    }

    /// The spec's worked example (binary, C = 1), with the third coordinate stored as a sparse
    /// row to exercise the union: g1 = (1, 2, 0), g2 = (−1, 1, 1), test g3 = (2, 0, −1).
    #[test]
    fn worked_example() {
        // Dense part: the first two coordinates; sparse: row 5 = (third coordinate, 0).
        let g1 = example(&[1.0, 2.0], &[], &[]);
        let g2 = example(&[-1.0, 1.0], &[5], &[1.0, 0.0]);
        let g3 = example(&[2.0, 0.0], &[5, 9], &[-1.0, 0.0, 7.0, 7.0]);
        let sgd = RowBlock::new(&[&g1, &g2], Formula::Sgd);
        assert_eq!(values(&sgd.against(&[&g1, &g2])[0]), [5.0, 1.0, 1.0, 3.0]);
        assert_eq!(values(&sgd.against(&[&g3])[0]), [2.0, -3.0]);
        let sign = RowBlock::new(&[&g1, &g2], Formula::SignGd);
        assert_eq!(values(&sign.against(&[&g1, &g2])[0]), [2.0, 0.0, 0.0, 3.0]);
        assert_eq!(values(&sign.against(&[&g3])[0]), [1.0, -2.0]);
        let asym = RowBlock::new(&[&g1, &g2], Formula::AsymmetricSignGd);
        let train = asym.against(&[&g1, &g2]);
        assert_eq!(values(&train[0]), [3.0, 0.0, 1.0, 3.0]);
        assert_eq!(values(&train[1]), [3.0, 1.0, 0.0, 3.0]);
        let test = asym.against(&[&g3]);
        assert_eq!(values(&test[0]), [2.0, -3.0]);
        assert_eq!(values(&test[1]), [1.0, -2.0]);
    }
}
