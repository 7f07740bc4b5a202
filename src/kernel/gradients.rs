//! Per-example gradients of the C outputs with respect to the included parameters, each computed
//! once: one forward pass of the example alone, then one backward pass per output on the
//! retained graph.
//!
//! The gradient of a vocabulary-sized matrix (word embeddings, the MLM decoder) is zero outside
//! the rows the example looks up (its tokens; the label words), so those matrices are read
//! through a [`WeightView`] that hands the forward pass a small leaf tensor of just those rows:
//! their gradient comes back as `[rows, H]` instead of `[V, H]` (50k × 768 for RoBERTa). Tensors
//! the outputs do not depend on (the pooler and classifier in prompt mode; the MLM head in
//! finetune mode) get no gradient at all and are left out of the products; they still count in
//! the reference's `grad_dim`.

use crate::data::dataset::{Feature, FewShotType};
use crate::model::nn::{self, WeightView};
use crate::model::Model;
use anyhow::{bail, Result};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use tch::{Kind, Tensor};

/// An example's gradients: the dense part `[C, P]` (f32, the layout's dense tensors flattened
/// in order) and, per sparse tensor, the rows it touches.
pub struct ExampleGradient {
    pub dense: Tensor,
    pub sparse: Vec<SparseRows>,
}

/// The nonzero rows of one vocabulary-sized tensor's gradient: sorted row `ids` `[n]` and their
/// values `[C, n, W]` (W = 1 for a vector).
pub struct SparseRows {
    pub ids: Tensor,
    pub rows: Tensor,
}

/// Which tensors have dense and which sparse gradients; fixed by the first example.
struct Layout {
    dense: Vec<usize>,
    sparse: Vec<usize>,
}

/// The tensors read by rows in a forward pass, with the leaf of each read.
struct RowCapture {
    sparse: HashMap<usize, usize>,
    captured: RefCell<Vec<(usize, Tensor, Tensor)>>,
}

impl WeightView for RowCapture {
    fn full(&self, _t: &Tensor) -> Option<Tensor> {
        None
    }

    fn rows(&self, t: &Tensor, ids: &Tensor) -> Option<Tensor> {
        let &param = self.sparse.get(&(t.data_ptr() as usize))?;
        let (unique, inverse, _) = ids.flatten(0, -1).internal_unique2(true, true, false);
        let leaf = t.detach().index_select(0, &unique).set_requires_grad(true);
        let picked = leaf.index_select(0, &inverse);
        let mut shape = ids.size();
        shape.extend_from_slice(&t.size()[1..]);
        self.captured.borrow_mut().push((param, unique, leaf));
        Some(picked.view(shape.as_slice()))
    }
}

/// Computes [`ExampleGradient`]s of a model's outputs for one task.
pub struct Gradients<'a> {
    model: &'a Model,
    few_shot_type: FewShotType,
    label_word_ids: Tensor,
    binary: bool,
    params: Vec<Tensor>,
    names: Vec<String>,
    /// Vocabulary-sized tensors, by storage address: candidates for row gradients.
    vocabulary_sized: HashMap<usize, usize>,
    layout: Option<Layout>,
    /// Backward passes run so far.
    pub backward_passes: u64,
}

impl<'a> Gradients<'a> {
    /// Gradients with respect to `params` (name, tensor) of `model`'s class scores (`binary`:
    /// of z1 − z0).
    pub fn new(
        model: &'a Model,
        few_shot_type: FewShotType,
        label_word_ids: &[i64],
        binary: bool,
        params: Vec<(String, Tensor)>,
    ) -> Gradients<'a> {
        let vocab = model.config["vocab_size"].as_i64().unwrap_or(-1);
        let mut vocabulary_sized = HashMap::new();
        let mut tensors = Vec::new();
        let mut names = Vec::new();
        for (i, (name, t)) in params.into_iter().enumerate() {
            if t.dim() >= 1 && t.size()[0] == vocab {
                vocabulary_sized.insert(t.data_ptr() as usize, i);
            }
            tensors.push(t.set_requires_grad(true));
            names.push(name);
        }
        Gradients {
            model,
            few_shot_type,
            label_word_ids: Tensor::from_slice(label_word_ids).to_device(model.device),
            binary,
            params: tensors,
            names,
            vocabulary_sized,
            layout: None,
            backward_passes: 0,
        }
    }

    /// Number of outputs C.
    pub fn outputs(&self, labels: usize) -> usize {
        if self.binary {
            1
        } else {
            labels
        }
    }

    /// Values in the dense part of every gradient (known after the first example).
    pub fn dense_len(&self) -> Option<i64> {
        let layout = self.layout.as_ref()?;
        Some(layout.dense.iter().map(|&i| self.params[i].numel() as i64).sum())
    }

    /// Names of the included tensors that get no gradient (known after the first example).
    pub fn structurally_zero(&self) -> Vec<&str> {
        let Some(layout) = &self.layout else { return Vec::new() };
        (0..self.params.len())
            .filter(|i| !layout.dense.contains(i) && !layout.sparse.contains(i))
            .map(|i| self.names[i].as_str())
            .collect()
    }

    /// Gradient `c` of `g` laid back onto the shapes of the included tensors (zeros for those
    /// without a gradient), in the order they were given: a direction in parameter space.
    pub fn as_direction(&self, g: &ExampleGradient, c: i64) -> Vec<Tensor> {
        let layout = self.layout.as_ref().expect("a gradient was computed");
        let mut out: Vec<Tensor> = self.params.iter().map(|p| p.zeros_like().to_kind(Kind::Float)).collect();
        let mut offset = 0;
        for &i in &layout.dense {
            let n = self.params[i].numel() as i64;
            out[i] = g.dense.get(c).narrow(0, offset, n).view(self.params[i].size().as_slice());
            offset += n;
        }
        for (&i, rows) in layout.sparse.iter().zip(&g.sparse) {
            let shape = self.params[i].size();
            let values = rows.rows.get(c).view([rows.ids.size()[0], -1]);
            let flat = out[i].view([shape[0], -1]).index_copy(0, &rows.ids, &values);
            out[i] = flat.view(shape.as_slice());
        }
        out
    }

    /// The gradients of one example.
    pub fn example(&mut self, feature: &Feature, pad: i64) -> Result<ExampleGradient> {
        let device = self.model.device;
        let batch = crate::data::batch::collate(&[(&feature.encoded, feature.label)], pad);
        let ids = batch.input_ids.to_device(device);
        let mask = batch.attention_mask.to_device(device);
        let pos = batch.mask_pos.map(|p| p.to_device(device));
        let capture =
            Rc::new(RowCapture { sparse: self.vocabulary_sized.clone(), captured: RefCell::new(Vec::new()) });
        let scores = nn::with_view(capture.clone(), || {
            crate::eval::class_scores(
                self.model,
                self.few_shot_type,
                &self.label_word_ids,
                &ids,
                &mask,
                pos.as_ref(),
            )
        })?
        .to_kind(Kind::Float);
        let outputs: Vec<Tensor> = if self.binary {
            vec![scores.get(0).get(1) - scores.get(0).get(0)]
        } else {
            (0..scores.size()[1]).map(|c| scores.get(0).get(c)).collect()
        };
        let captured = capture.captured.take();
        let mut inputs: Vec<&Tensor> = self.params.iter().collect();
        inputs.extend(captured.iter().map(|(_, _, leaf)| leaf));

        let mut dense_rows = Vec::new();
        // Per read of a sparse tensor, its gradient for each output.
        let mut read_grads: Vec<Vec<Tensor>> = captured.iter().map(|_| Vec::new()).collect();
        for (c, output) in outputs.iter().enumerate() {
            let grads = Tensor::run_backward(&[output], &inputs, c + 1 < outputs.len(), false);
            self.backward_passes += 1;
            let (param_grads, leaf_grads) = grads.split_at(self.params.len());
            if self.layout.is_none() {
                let dense: Vec<usize> =
                    (0..self.params.len()).filter(|&i| param_grads[i].defined()).collect();
                let mut sparse: Vec<usize> =
                    captured.iter().map(|(p, _, _)| *p).filter(|p| !dense.contains(p)).collect();
                sparse.sort_unstable();
                sparse.dedup();
                self.layout = Some(Layout { dense, sparse });
            }
            let layout = self.layout.as_ref().expect("set above");
            let mut folded: HashMap<usize, Tensor> = HashMap::new();
            for (k, ((param, unique, _), g)) in captured.iter().zip(leaf_grads).enumerate() {
                if layout.dense.contains(param) {
                    // A tied tensor also used whole (a causal LM's output embeddings): add the
                    // rows into its dense gradient.
                    let base = folded.entry(*param).or_insert_with(|| {
                        let g = &param_grads[*param];
                        if g.defined() {
                            g.copy()
                        } else {
                            self.params[*param].zeros_like()
                        }
                    });
                    let _ = base.index_add_(0, unique, g);
                } else {
                    read_grads[k].push(g.shallow_clone());
                }
            }
            let mut flat = Vec::with_capacity(layout.dense.len());
            for &i in &layout.dense {
                let g = match folded.remove(&i) {
                    Some(g) => g,
                    None if param_grads[i].defined() => param_grads[i].shallow_clone(),
                    None => self.params[i].zeros_like(),
                };
                flat.push(g.to_kind(Kind::Float).view([-1]));
            }
            dense_rows.push(Tensor::cat(&flat, 0));
            if let Some(p) = (0..self.params.len()).find(|&i| {
                param_grads[i].defined() && !layout.dense.contains(&i) && !layout.sparse.contains(&i)
            }) {
                bail!("tensor {} has a gradient for this example but not for the first one", self.names[p]);
            }
        }
        let layout = self.layout.as_ref().expect("set by the first backward pass");
        let mut sparse = Vec::with_capacity(layout.sparse.len());
        for p in &layout.sparse {
            let width = self.params[*p].size()[1..].iter().product::<i64>();
            let parts: Vec<(&Tensor, &Vec<Tensor>)> = captured
                .iter()
                .zip(&read_grads)
                .filter(|((param, _, _), _)| param == p)
                .map(|((_, ids, _), grads)| (ids, grads))
                .collect();
            if parts.is_empty() {
                let empty = Tensor::zeros([0], (Kind::Int64, device));
                let rows = Tensor::zeros([outputs.len() as i64, 0, width], (Kind::Float, device));
                sparse.push(SparseRows { ids: empty, rows });
                continue;
            }
            // Reads of the same tensor with other rows (BERT's tied decoder and embeddings):
            // their union, rows read twice summed.
            let all_ids =
                Tensor::cat(&parts.iter().map(|(ids, _)| ids.shallow_clone()).collect::<Vec<_>>(), 0);
            let (ids, inverse, _) = all_ids.internal_unique2(true, true, false);
            let stacked: Vec<Tensor> = parts
                .iter()
                .map(|(ids, per_output)| {
                    Tensor::stack(per_output, 0).to_kind(Kind::Float).view([
                        outputs.len() as i64,
                        ids.size()[0],
                        width,
                    ])
                })
                .collect();
            let values = Tensor::cat(&stacked, 1);
            let rows = Tensor::zeros([outputs.len() as i64, ids.size()[0], width], (Kind::Float, device))
                .index_add(1, &inverse, &values);
            sparse.push(SparseRows { ids, rows });
        }
        Ok(ExampleGradient { dense: Tensor::stack(&dense_rows, 0), sparse })
    }
}
