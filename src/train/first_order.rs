//! The first-order baseline the papers compare MeZO with: backpropagation and AdamW or SGD
//! (libtorch's own optimisers), in the same loop, logs and outputs as MeZO. Data parallelism
//! sums gradients over the ranks: with NCCL, GPU to GPU, when the model is on GPUs; with an MPI
//! all-reduce of host copies on CPUs.

use super::run::Run;
use super::{Objective, Outcome, TrainConfig, TrainTask};
use crate::data::batch::{shard, BatchSampler};
use crate::dist::nccl::NcclComm;
use crate::dist::{Dist, Reduce};
use crate::error::InputError;
use crate::model::Model;
use anyhow::{anyhow, bail, Context, Result};
use tch::{COptimizer, Device, Kind, Tensor};

/// Which optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstOrder {
    /// AdamW (β 0.9/0.999, ε 1e-8, decoupled weight decay on the tensors the decay rule selects).
    AdamW,
    /// Plain SGD with the same weight-decay rule.
    Sgd,
}

/// Sums every trainable tensor's gradient over the ranks: one NCCL all-reduce of all gradients
/// packed into one f32 buffer on GPUs, else host all-reduces of f32 copies.
fn all_reduce_grads(dist: &Dist, nccl: Option<&NcclComm>, params: &[Tensor]) -> Result<()> {
    if dist.size() == 1 {
        return Ok(());
    }
    if let Some(nccl) = nccl {
        let _guard = tch::no_grad_guard();
        // Every rank packs the same tensors in the same order (a missing gradient counts as 0).
        let grads: Vec<Tensor> = params
            .iter()
            .map(|p| {
                let g = p.grad();
                if g.defined() {
                    g
                } else {
                    p.zeros_like()
                }
            })
            .collect();
        let flat =
            Tensor::cat(&grads.iter().map(|g| g.to_kind(Kind::Float).view([-1])).collect::<Vec<_>>(), 0);
        nccl.all_reduce_tensor_sum(&flat)?;
        let mut start = 0;
        for (p, g) in params.iter().zip(&grads) {
            let n = g.numel() as i64;
            let summed = flat.narrow(0, start, n).view(g.size().as_slice()).to_kind(g.kind());
            start += n;
            let grad = p.grad();
            if grad.defined() {
                grad.shallow_clone().copy_(&summed);
            }
        }
        return Ok(());
    }
    for p in params {
        let grad = p.grad();
        if !grad.defined() {
            continue;
        }
        let host = grad.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        let mut values: Vec<f32> = Vec::try_from(host.view([-1]))?;
        dist.all_reduce(&mut values, Reduce::Sum);
        let summed = Tensor::from_slice(&values)
            .view(grad.size().as_slice())
            .to_kind(grad.kind())
            .to_device(grad.device());
        grad.shallow_clone().copy_(&summed);
    }
    Ok(())
}

pub fn train_first_order<T: TrainTask>(
    model: &Model,
    data: &mut T,
    dist: &Dist,
    config: &TrainConfig,
    optimizer: FirstOrder,
) -> Result<Outcome> {
    data.check(Objective::Loss, false)?;
    let trainable = super::trainable(model, &config.freeze);
    if trainable.is_empty() {
        bail!(InputError("the freezing rules leave no parameter to train".into()));
    }
    let mut opt = match optimizer {
        FirstOrder::AdamW => COptimizer::adamw(config.lr, 0.9, 0.999, config.weight_decay, 1e-8, false),
        FirstOrder::Sgd => COptimizer::sgd(config.lr, 0.0, 0.0, config.weight_decay, false),
    }
    .map_err(|e| anyhow!("creating the optimiser: {e}"))?;
    let params: Vec<Tensor> =
        trainable.iter().map(|t| t.tensor.shallow_clone().set_requires_grad(true)).collect();
    // Group 0 decays, group 1 (created only when some tensor is exempt) does not.
    let mut exempt = false;
    for (t, p) in trainable.iter().zip(&params) {
        let no_decay = !config.decay_rule.applies_to(&t.name);
        exempt |= no_decay;
        opt.add_parameters(p, usize::from(no_decay)).map_err(|e| anyhow!("{e}"))?;
    }
    if exempt {
        opt.set_weight_decay_group(1, 0.0).map_err(|e| anyhow!("{e}"))?;
    }
    let mut run = Run::first_order(dist, config, data.selection())?;
    let nccl = match params[0].device() {
        Device::Cuda(ordinal) if dist.size() > 1 => {
            crate::dist::nccl::for_gpus(dist, ordinal).context("NCCL for the gradients")?
        }
        _ => None,
    };
    let mut sampler = BatchSampler::new(data.train_len(), config.batch_size, config.seed);
    let progress = crate::logging::progress_bar(dist, config.steps as u64, "steps");
    let mut last_loss = f64::NAN;
    for step in 1..=config.steps {
        let batch = sampler.next_batch();
        let mine: Vec<usize> = batch[shard(batch.len(), dist.rank(), dist.size())].to_vec();
        let lr = config.lr_at(step);
        opt.set_learning_rate(lr).map_err(|e| anyhow!("{e}"))?;
        opt.zero_grad().map_err(|e| anyhow!("{e}"))?;
        // Each rank's share of the global mean: its summed loss over the global number of terms
        // (examples, or option tokens). Micro-batches accumulate their gradients; peak memory is
        // that of one.
        let batches = data.step_batch(model, &mine, config.micro_batch_size)?;
        let terms = dist.all_reduce_sum(batches.iter().map(|b| data.loss_terms(b)).sum::<f64>());
        let mut local = 0.0;
        for b in batches {
            let loss = data.loss_sum(model, &b)? / terms;
            loss.backward();
            local += loss.double_value(&[]);
        }
        all_reduce_grads(dist, nccl.as_ref(), &params)?;
        opt.step().map_err(|e| anyhow!("optimiser step: {e}"))?;
        let loss = dist.all_reduce_sum(local);
        if !loss.is_finite() {
            bail!("step {step}: the loss is {loss}");
        }
        last_loss = loss;
        run.log(&serde_json::json!({"step": step, "loss": loss, "lr": lr}))?;
        progress.set_message(format!("loss {loss:.4}"));
        progress.inc(1);
        if config.evaluates_at(step) {
            run.evaluate_dev(model, data, step, &trainable)?;
        }
    }
    progress.finish_and_clear();
    for p in &params {
        let _ = p.shallow_clone().set_requires_grad(false);
    }
    run.finish(model, data, &trainable, last_loss)
}
