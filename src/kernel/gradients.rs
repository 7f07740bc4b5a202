//! Per-example gradients of the C outputs with respect to the included parameters, each computed
//! once: one forward pass of a batch of examples, then one backward pass per output on the
//! retained graph, split per example as [`super::per_example`] explains. The first example of a
//! run is differentiated alone (it fixes which tensors have gradients), and so is any batch a
//! model cannot split per example (said once in the log).
//!
//! The gradient of a vocabulary-sized matrix (word embeddings, the MLM decoder) is zero outside
//! the rows the example looks up (its tokens; the label words), so those matrices are read
//! through a [`WeightView`] that hands the forward pass a small leaf tensor of just those rows:
//! their gradient comes back as `[rows, H]` instead of `[V, H]` (50k × 768 for RoBERTa). Tensors
//! the outputs do not depend on (the pooler and classifier in prompt mode; the MLM head in
//! finetune mode) get no gradient at all and are left out of the products; they still count in
//! the reference's `grad_dim`.

use super::per_example::PerExample;
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

/// A batch's model inputs on the device.
struct Inputs {
    ids: Tensor,
    mask: Tensor,
    mask_pos: Option<Tensor>,
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
    /// Why batches are differentiated one example at a time, once a batch could not be split.
    unbatched: Option<String>,
    /// Backward passes run so far (each over one example, or over a batch).
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
            unbatched: None,
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
        let inputs = self.inputs(&[feature], pad);
        let capture =
            Rc::new(RowCapture { sparse: self.vocabulary_sized.clone(), captured: RefCell::new(Vec::new()) });
        let scores = self.scores(capture.clone(), &inputs)?;
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
            sparse.push(merge_reads(&parts, outputs.len() as i64, width, device));
        }
        Ok(ExampleGradient { dense: Tensor::stack(&dense_rows, 0), sparse })
    }

    /// `features` as one padded batch on the model's device.
    fn inputs(&self, features: &[&Feature], pad: i64) -> Inputs {
        let device = self.model.device;
        let pairs: Vec<_> = features.iter().map(|f| (&f.encoded, f.label)).collect();
        let batch = crate::data::batch::collate(&pairs, pad);
        Inputs {
            ids: batch.input_ids.to_device(device),
            mask: batch.attention_mask.to_device(device),
            mask_pos: batch.mask_pos.map(|p| p.to_device(device)),
        }
    }

    /// The class scores `[B, labels]` (f32) of a batch, the weights seen through `view`.
    fn scores(&self, view: Rc<dyn nn::WeightView>, inputs: &Inputs) -> Result<Tensor> {
        let scores = nn::with_view(view, || {
            crate::eval::class_scores(
                self.model,
                self.few_shot_type,
                &self.label_word_ids,
                &inputs.ids,
                &inputs.mask,
                inputs.mask_pos.as_ref(),
            )
        })?;
        Ok(scores.to_kind(Kind::Float))
    }

    /// Differentiates `features` `batch` examples at a time, examples of similar lengths in the
    /// same batch (so that little of it is padding), and hands each gradient to `take` with the
    /// example's index in `features` as soon as its batch is done.
    pub fn each_example(
        &mut self,
        features: &[&Feature],
        pad: i64,
        batch: usize,
        mut take: impl FnMut(usize, ExampleGradient) -> Result<()>,
    ) -> Result<()> {
        let mut order: Vec<usize> = (0..features.len()).collect();
        order.sort_by_key(|&i| features[i].encoded.input_ids.len());
        for chunk in order.chunks(batch.max(1)) {
            let batch: Vec<&Feature> = chunk.iter().map(|&i| features[i]).collect();
            for (&i, g) in chunk.iter().zip(self.batch(&batch, pad)?) {
                take(i, g)?;
            }
        }
        Ok(())
    }

    /// The gradients of `features`, in order, differentiated `batch` examples at a time
    /// ([`Gradients::each_example`]).
    pub fn examples(
        &mut self,
        features: &[&Feature],
        pad: i64,
        batch: usize,
    ) -> Result<Vec<ExampleGradient>> {
        let mut computed: Vec<Option<ExampleGradient>> = features.iter().map(|_| None).collect();
        self.each_example(features, pad, batch, |i, g| {
            computed[i] = Some(g);
            Ok(())
        })?;
        Ok(computed.into_iter().map(|g| g.expect("every example computed")).collect())
    }

    /// The gradients of a batch of examples (one forward and C backward passes), in order.
    pub fn batch(&mut self, features: &[&Feature], pad: i64) -> Result<Vec<ExampleGradient>> {
        let mut out = Vec::with_capacity(features.len());
        let mut rest = features;
        if self.layout.is_none() {
            let Some((first, others)) = rest.split_first() else { return Ok(out) };
            out.push(self.example(first, pad)?);
            rest = others;
        }
        if rest.len() > 1 && self.unbatched.is_none() {
            match self.split_batch(rest, pad)? {
                Ok(gradients) => {
                    out.extend(gradients);
                    return Ok(out);
                }
                Err(why) => {
                    log::warn!("per-example gradients one example at a time: {why}");
                    self.unbatched = Some(why);
                }
            }
        }
        for f in rest {
            out.push(self.example(f, pad)?);
        }
        Ok(out)
    }

    /// The per-example gradients of a batch of at least two examples, or why this model's
    /// forward pass cannot be split per example.
    fn split_batch(
        &mut self,
        features: &[&Feature],
        pad: i64,
    ) -> Result<std::result::Result<Vec<ExampleGradient>, String>> {
        let device = self.model.device;
        let b = features.len() as i64;
        let inputs = self.inputs(features, pad);
        let included: HashMap<usize, usize> =
            self.params.iter().enumerate().map(|(i, t)| (t.data_ptr() as usize, i)).collect();
        let view = Rc::new(PerExample::new(b, included, inputs.mask.shallow_clone()));
        let scores = self.scores(view.clone(), &inputs)?;
        let captured = view.captured.take();
        if let Some(why) = captured.problem(&self.names) {
            return Ok(Err(why));
        }
        // Each output summed over the batch: its gradient splits into the examples' own.
        let outputs: Vec<Tensor> = if self.binary {
            vec![(scores.select(1, 1) - scores.select(1, 0)).sum(Kind::Float)]
        } else {
            (0..scores.size()[1]).map(|c| scores.select(1, c).sum(Kind::Float)).collect()
        };
        let c_count = outputs.len() as i64;
        let layout = self.layout.as_ref().expect("fixed by the first example");
        let mut offsets: HashMap<usize, (i64, i64)> = HashMap::new();
        let mut dense_len = 0;
        for &i in &layout.dense {
            let n = self.params[i].numel() as i64;
            offsets.insert(i, (dense_len, n));
            dense_len += n;
        }
        let dense = Tensor::zeros([b, c_count, dense_len], (Kind::Float, device));
        // Per row read, per example: its rows' gradient for each output.
        let mut read_rows: Vec<Vec<Vec<Tensor>>> =
            captured.reads.iter().map(|_| (0..b).map(|_| Vec::new()).collect()).collect();
        let inputs = captured.inputs();
        let unexpected = |param: usize| {
            anyhow::anyhow!(
                "tensor {} has a gradient for this batch but not for the first example",
                self.names[param]
            )
        };
        for (c, output) in outputs.iter().enumerate() {
            let grads = Tensor::run_backward(&[output], &inputs, c + 1 < outputs.len(), false);
            self.backward_passes += 1;
            let (copy_grads, rest) = grads.split_at(captured.copies.len());
            let (probe_grads, read_grads) = rest.split_at(captured.linear.len());
            let target = dense.select(1, c as i64);
            let add = |param: usize, g: &Tensor| -> Result<()> {
                let &(offset, n) = offsets.get(&param).ok_or_else(|| unexpected(param))?;
                let _ = target.narrow(1, offset, n).g_add_(&g.to_kind(Kind::Float).view([b, n]));
                Ok(())
            };
            for ((param, _), g) in captured.copies.iter().zip(copy_grads) {
                if g.defined() {
                    add(*param, g)?;
                }
            }
            for ((param, x, _), dy) in captured.linear.iter().zip(probe_grads) {
                if dy.defined() {
                    let (input, output) = (x.size()[x.dim() - 1], dy.size()[dy.dim() - 1]);
                    let per_example =
                        dy.reshape([b, -1, output]).transpose(1, 2).bmm(&x.reshape([b, -1, input]));
                    add(*param, &per_example)?;
                }
            }
            for ((read, g), rows) in captured.reads.iter().zip(read_grads).zip(read_rows.iter_mut()) {
                if !g.defined() {
                    continue;
                }
                let shape = self.params[read.param].size();
                let width = shape[1..].iter().product::<i64>();
                let g = g.view([b, read.union.size()[0], width]);
                if layout.dense.contains(&read.param) {
                    // A tensor with a dense gradient that is also read by rows (positions, or a
                    // tied matrix also used whole): the rows added into it.
                    let whole =
                        Tensor::zeros([b, shape[0], width], (g.kind(), device)).index_add(1, &read.union, &g);
                    add(read.param, &whole)?;
                } else if layout.sparse.contains(&read.param) {
                    for (e, per_output) in rows.iter_mut().enumerate() {
                        per_output.push(g.get(e as i64).index_select(0, &read.own[e].1));
                    }
                } else {
                    return Err(unexpected(read.param));
                }
            }
        }
        let mut gradients = Vec::with_capacity(features.len());
        for e in 0..b as usize {
            let mut sparse = Vec::with_capacity(layout.sparse.len());
            for &p in &layout.sparse {
                let width = self.params[p].size()[1..].iter().product::<i64>();
                let parts: Vec<(&Tensor, &Vec<Tensor>)> = captured
                    .reads
                    .iter()
                    .zip(&read_rows)
                    .filter(|(read, rows)| read.param == p && !rows[e].is_empty())
                    .map(|(read, rows)| (&read.own[e].0, &rows[e]))
                    .collect();
                sparse.push(merge_reads(&parts, c_count, width, device));
            }
            gradients.push(ExampleGradient { dense: dense.get(e as i64), sparse });
        }
        Ok(Ok(gradients))
    }
}

/// One example's rows of a row-sparse tensor from its reads of it (`ids` `[n]`, and per output
/// the rows' gradient `[n, ..]`): over the union of the ids, rows read twice summed (BERT's
/// decoder tied to the word embeddings reads other rows than the embeddings).
fn merge_reads(
    parts: &[(&Tensor, &Vec<Tensor>)],
    outputs: i64,
    width: i64,
    device: tch::Device,
) -> SparseRows {
    if parts.is_empty() {
        let ids = Tensor::zeros([0], (Kind::Int64, device));
        let rows = Tensor::zeros([outputs, 0, width], (Kind::Float, device));
        return SparseRows { ids, rows };
    }
    let all_ids = Tensor::cat(&parts.iter().map(|(ids, _)| ids.shallow_clone()).collect::<Vec<_>>(), 0);
    let (ids, inverse, _) = all_ids.internal_unique2(true, true, false);
    let stacked: Vec<Tensor> = parts
        .iter()
        .map(|(ids, per_output)| {
            Tensor::stack(per_output, 0).to_kind(Kind::Float).view([outputs, ids.size()[0], width])
        })
        .collect();
    let values = Tensor::cat(&stacked, 1);
    let rows =
        Tensor::zeros([outputs, ids.size()[0], width], (Kind::Float, device)).index_add(1, &inverse, &values);
    SparseRows { ids, rows }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::examples::Label;
    use crate::data::template::Encoded;
    use crate::model::{self, FreezeRules, LoadOptions};
    use tch::Device;

    /// Prompt features of different lengths (so that a batch pads), each ending in token 2 with
    /// its mask somewhere inside.
    fn features() -> Vec<Feature> {
        let inputs: [(&[i64], usize); 5] = [
            (&[0, 262, 454, 267, 335, 621, 17, 2], 5),
            (&[0, 262, 395, 267, 261, 492, 302, 621, 2], 7),
            (&[0, 300, 621, 2], 2),
            (&[0, 262, 454, 267, 335, 400, 401, 402, 403, 404, 621, 2], 10),
            (&[0, 512, 513, 621, 17, 2], 3),
        ];
        inputs
            .iter()
            .enumerate()
            .map(|(i, (ids, mask))| Feature {
                encoded: Encoded { input_ids: ids.to_vec(), mask_pos: Some(*mask) },
                label: Label::Class(i % 2),
                query: i,
            })
            .collect()
    }

    fn gradients(m: &Model, few_shot_type: FewShotType, binary: bool) -> Gradients<'_> {
        let params = m
            .trainable(&FreezeRules::default())
            .into_iter()
            .map(|p| (p.name.clone(), p.tensor.shallow_clone()))
            .collect();
        Gradients::new(m, few_shot_type, &[300, 310], binary, params)
    }

    /// The largest difference between two tensors over the largest magnitude of the second.
    fn relative(a: &Tensor, b: &Tensor) -> f64 {
        let scale = b.abs().max().double_value(&[]).max(f64::MIN_POSITIVE);
        (a - b).abs().max().double_value(&[]) / scale
    }

    /// Batched per-example gradients equal one-at-a-time ones: for every model family (row-sparse
    /// embeddings and tied decoders, tied and untied causal heads, RMSNorm), prompt and finetune
    /// (a classifier of linear layers), C outputs and binary; in f64 (exact up to the f32 the
    /// gradients are kept in) and f32 (to 1e-6 of the largest value).
    #[test]
    fn batched_gradients_equal_one_at_a_time() {
        let features = features();
        let refs: Vec<&Feature> = features.iter().collect();
        let cases = [
            ("roberta", FewShotType::Prompt, false),
            ("roberta", FewShotType::Prompt, true),
            ("roberta-tied", FewShotType::Prompt, false),
            ("roberta", FewShotType::Finetune, false),
            ("bert", FewShotType::Prompt, false),
            ("opt", FewShotType::Prompt, false),
            ("opt-untied", FewShotType::Prompt, true),
            ("llama", FewShotType::Prompt, false),
            ("llama-tied", FewShotType::Prompt, false),
            ("qwen2", FewShotType::Prompt, false),
        ];
        for (fixture, few_shot_type, binary) in cases {
            for (kind, tolerance) in [(Kind::Double, 1e-7), (Kind::Float, 1e-6)] {
                let m = crate::kernel::tests::fixture_model(fixture, kind);
                let mut alone = gradients(&m, few_shot_type, binary);
                let want: Vec<ExampleGradient> = refs.iter().map(|f| alone.example(f, 1).unwrap()).collect();
                let mut together = gradients(&m, few_shot_type, binary);
                let got = together.examples(&refs, 1, 4).unwrap();
                assert!(together.unbatched.is_none(), "{fixture}: {:?}", together.unbatched);
                // The first example alone (C passes), then batches of 4 sorted by length.
                let c = want[0].dense.size()[0] as u64;
                assert_eq!(together.backward_passes, c + c * 2, "{fixture}");
                let case = format!("{fixture} {few_shot_type:?} binary={binary} {kind:?}");
                for (e, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(g.dense.size(), w.dense.size(), "{case} example {e}");
                    let err = relative(&g.dense, &w.dense);
                    assert!(err <= tolerance, "{case} example {e}: dense parts differ by {err:e}");
                    assert_eq!(g.sparse.len(), w.sparse.len(), "{case}");
                    for (j, (gs, ws)) in g.sparse.iter().zip(&w.sparse).enumerate() {
                        assert!(
                            gs.ids.equal(&ws.ids),
                            "{case} example {e} sparse {j}: {:?} vs {:?}",
                            gs.ids,
                            ws.ids
                        );
                        let err = relative(&gs.rows, &ws.rows);
                        assert!(err <= tolerance, "{case} example {e} sparse {j}: rows differ by {err:e}");
                    }
                }
            }
        }
    }

    /// A tensor used whole outside a linear layer (here: prefix slots) cannot be split per
    /// example: such batches are differentiated one example at a time, with the same results.
    #[test]
    fn unsplittable_batches_fall_back_to_one_at_a_time() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/opt");
        let m = model::load(
            &dir,
            &LoadOptions {
                num_labels: Some(2),
                num_prefix: Some(2),
                ..LoadOptions::new(Device::Cpu, model::Dtype::F32)
            },
        )
        .unwrap();
        tch::no_grad(|| {
            for p in m.params.iter().filter(|p| p.name.contains("prefix")) {
                let _ = p.tensor.shallow_clone().normal_(0.0, 0.02);
            }
        });
        let features = features();
        let refs: Vec<&Feature> = features.iter().collect();
        let mut alone = gradients(&m, FewShotType::Prompt, false);
        let want: Vec<ExampleGradient> = refs.iter().map(|f| alone.example(f, 1).unwrap()).collect();
        let mut together = gradients(&m, FewShotType::Prompt, false);
        let got = together.examples(&refs, 1, 4).unwrap();
        let why = together.unbatched.clone().expect("prefix slots cannot be split");
        assert!(why.contains("prefix"), "{why}");
        for (g, w) in got.iter().zip(&want) {
            assert!(g.dense.equal(&w.dense));
        }
    }
}
