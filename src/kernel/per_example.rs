//! What a forward pass of a batch must keep so that one backward pass per output gives every
//! example's own gradient.
//!
//! The examples of a batch do not interact (attention is masked per example, normalisation is
//! per token), so the gradient of the batch's *summed* output c with respect to something only
//! example b reads is example b's gradient of its output c. [`PerExample`] arranges for each
//! example to read its own copy of what it is cheap to copy, and keeps what the rest needs:
//!
//! * vectors (biases, norm weights) are copied once per example: the batch's examples are the
//!   *sides* of a [`WeightView`], each side reading its own `[B, ..]` slice;
//! * rows read by id (embeddings, the label words' rows of a head) are copied per example over
//!   the union of the ids the batch reads, `[B, U, W]`;
//! * weight matrices of linear layers stay shared: one GEMM for the whole batch, as inference.
//!   The layer's input x is kept and a zero probe is added to its output y; the probe's
//!   gradient is ∂/∂y, and example b's gradient of W is Σ_t ∂y_bt ⊗ x_bt, one batched GEMM
//!   (Goodfellow, "Efficient per-example gradient computations", 2015), never `B` copies of W.
//!
//! A matrix used whole anywhere else would get only the batch's summed gradient: [`Captured::problem`]
//! names it, and the caller computes that batch one example at a time instead.

use crate::model::nn::WeightView;
use std::cell::RefCell;
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// The view of a batch of `examples` examples whose per-example gradients are wanted.
pub(super) struct PerExample {
    examples: i64,
    /// The differentiated tensors by storage address: their index in the parameter list.
    included: HashMap<usize, usize>,
    /// `[B, T]` attention mask: which entries of a `[B, T]` read are an example's own tokens, so
    /// that an example's rows are those it reads, not the padding the batch added.
    mask: Tensor,
    pub captured: RefCell<Captured>,
}

/// What one forward pass through [`PerExample`] kept.
#[derive(Default)]
pub(super) struct Captured {
    /// Per-example copies of vectors: (parameter, leaf `[B, ..shape]`).
    pub copies: Vec<(usize, Tensor)>,
    /// Linear layers: (parameter, input `[B, .., in]`, zero probe added to the output).
    pub linear: Vec<(usize, Tensor, Tensor)>,
    pub reads: Vec<RowRead>,
    /// Matrices the pass used whole, and those of them that went through a linear layer.
    whole: Vec<usize>,
    through_linear: Vec<usize>,
    /// Why the pass cannot be split per example, when a read does not split into B equal parts.
    unsplittable: Option<String>,
}

/// Rows of a matrix (or elements of a vector) read by id.
pub(super) struct RowRead {
    pub param: usize,
    /// The sorted union of the ids the batch reads.
    pub union: Tensor,
    /// `[B, U, ..]`: each example's copy of the rows of `union`.
    pub leaf: Tensor,
    /// Per example: the ids it reads (sorted, unique) and where they are in `union`.
    pub own: Vec<(Tensor, Tensor)>,
}

impl PerExample {
    pub fn new(examples: i64, included: HashMap<usize, usize>, mask: Tensor) -> PerExample {
        PerExample { examples, included, mask, captured: RefCell::new(Captured::default()) }
    }

    fn param(&self, t: &Tensor) -> Option<usize> {
        self.included.get(&(t.data_ptr() as usize)).copied()
    }
}

impl Captured {
    /// Why per-example gradients of this pass would be wrong (`names`: the parameters' names).
    pub fn problem(&self, names: &[String]) -> Option<String> {
        if let Some(why) = &self.unsplittable {
            return Some(why.clone());
        }
        let outside = self.whole.iter().find(|p| !self.through_linear.contains(p))?;
        Some(format!("{} is used whole outside a linear layer", names[*outside]))
    }

    /// Every leaf whose gradient the backward passes compute: copies, probes, then row reads.
    pub fn inputs(&self) -> Vec<&Tensor> {
        let copies = self.copies.iter().map(|(_, leaf)| leaf);
        let probes = self.linear.iter().map(|(_, _, probe)| probe);
        copies.chain(probes).chain(self.reads.iter().map(|r| &r.leaf)).collect()
    }
}

impl WeightView for PerExample {
    fn sides(&self) -> i64 {
        self.examples
    }

    fn full(&self, t: &Tensor) -> Option<Tensor> {
        let param = self.param(t)?;
        let mut captured = self.captured.borrow_mut();
        if t.dim() >= 2 {
            captured.whole.push(param);
            return None;
        }
        let mut shape = vec![self.examples];
        shape.extend(t.size());
        let leaf =
            t.detach().unsqueeze(0).expand(shape.as_slice(), false).contiguous().set_requires_grad(true);
        captured.copies.push((param, leaf.shallow_clone()));
        Some(leaf)
    }

    fn rows(&self, t: &Tensor, ids: &Tensor) -> Option<Tensor> {
        let param = self.param(t)?;
        let flat = ids.flatten(0, -1);
        let (n, b) = (flat.size()[0], self.examples);
        if n % b != 0 {
            self.captured.borrow_mut().unsplittable =
                Some(format!("a read of {n} rows does not split into {b} examples"));
            return None;
        }
        let part = n / b;
        let (union, inverse, _) = flat.internal_unique2(true, true, false);
        let u = union.size()[0];
        let width = &t.size()[1..];
        let mut shape = vec![b, u];
        shape.extend(width);
        let leaf = t
            .detach()
            .index_select(0, &union)
            .unsqueeze(0)
            .expand(shape.as_slice(), false)
            .contiguous()
            .set_requires_grad(true);
        // Entry i of the read belongs to example i / part, and reads that example's copy.
        let example = Tensor::arange(n, (Kind::Int64, flat.device())).divide_scalar_mode(part, "floor");
        let mut rows_shape = vec![b * u];
        rows_shape.extend(width);
        let picked = leaf.reshape(rows_shape.as_slice()).index_select(0, &(inverse + example * u));
        let own_tokens = (ids.dim() == 2 && ids.size() == self.mask.size()).then(|| self.mask.ne(0));
        let own = (0..b)
            .map(|e| {
                let mut mine = flat.narrow(0, e * part, part);
                if let Some(tokens) = &own_tokens {
                    mine = mine.masked_select(&tokens.get(e));
                }
                let (mine, _, _) = mine.internal_unique2(true, false, false);
                // (tch's searchsorted: the receiver holds the values, the argument the sorted sequence.)
                let at = mine.searchsorted(&union, false, false, "left", None::<&Tensor>);
                (mine, at)
            })
            .collect();
        self.captured.borrow_mut().reads.push(RowRead { param, union, leaf, own });
        let mut out_shape = ids.size();
        out_shape.extend(width);
        Some(picked.view(out_shape.as_slice()))
    }

    fn linear_output(&self, w: &Tensor, x: &Tensor, y: Tensor) -> Tensor {
        let Some(param) = self.param(w) else { return y };
        let mut captured = self.captured.borrow_mut();
        if x.size()[0] % self.examples != 0 {
            captured.unsplittable = Some(format!(
                "a linear layer's input of {} rows does not split into {} examples",
                x.size()[0],
                self.examples
            ));
            return y;
        }
        let probe = y.zeros_like().set_requires_grad(true);
        captured.through_linear.push(param);
        captured.linear.push((param, x.detach(), probe.shallow_clone()));
        y + probe
    }
}
