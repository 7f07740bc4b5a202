//! MeZO's fast stream (`--rng fast`, the default): counter-based perturbations formed just in
//! time, so that the stored weights are written only by the update.
//!
//! z of tensor i at step seed s is [`philox`]'s stream under key (s, i): any element can be
//! generated on its own, so nothing ever holds z for a whole tensor. A forward pass of
//! direction (s, ±ε) runs under a [`WeightView`] that hands each layer θ + (±ε) z for the
//! tensors it uses (a temporary the size of one weight matrix, dropped after the layer) and, for
//! embedding and vocabulary matrices, only the rows the batch looks up. The stored θ is never
//! perturbed, so there is no restore step and no restore error: after any number of forward
//! passes the weights are bit for bit what they were, in every dtype. The update
//! θ ← θ − η (Σ_j (g_j / n) z_j + λ θ) regenerates each z_j in cache-sized blocks and writes θ
//! once, in parallel over chunks on libtorch's own threads ([`super::team`]; results do not
//! depend on the thread count).
//!
//! By default both sides of a direction are scored in one forward pass
//! ([`FastStream::paired_view`]): the batch goes in twice, and each layer gets θ + ε z and
//! θ − ε z from one read of θ and one draw of z, and runs one GEMM per side into its half of the
//! output. The perturbed values, and so the losses, are those of two separate passes (tested to
//! the last bit on every model family but for the attention of prefix slots, within 1e-6); z is
//! drawn once instead of twice per dense weight.
//!
//! Rows no pass reads wait for their updates ([`FastStream::apply_deferring`], what `mezo train`
//! uses for plain ZO-SGD on the CPU). Embedding and vocabulary matrices are read by rows: a batch
//! looks up its tokens' rows, a prompt model's head its label words'. Their other rows' updates
//! are kept as the step's (seed, g, η), a few bytes, and applied in order, with the same
//! arithmetic, when a pass reads the row, or when the weights are saved, copied to disk or
//! compared across ranks ([`FastStream::flush`]). Every forward pass therefore sees exactly the
//! weights of immediate updates (tested), and a step no longer draws z for the rows its batch
//! does not touch (most of a vocabulary). Work is deferred, not removed, for rows read later or
//! saved; a run that saves no model never does it for rows no batch or evaluation reads.
//!
//! Memory traffic per step, P trainable values of b bytes each, E of them in embedding matrices
//! of which the batch touches E_b: the paired pass reads θ once more and writes and reads the two
//! perturbed copies ((P − E + E_b) · 5b, on top of the pass itself; two separate passes: 6b), and
//! the update reads and writes θ once (2 (P − E + E_b) b with deferred rows, 2 P b without); z
//! lives only in registers and an L1-sized buffer. Total ≈ 7 (P − E) b. Normals drawn per step:
//! (P − E + 2 E_b) for the pass and about P − E + E_b for the update (P without deferral). The
//! reference stream, in place: four passes that each write z (randn), read it, and read and write
//! θ: 16 P b (plus the scaling passes over z), and the z of a whole tensor in memory at once.
//!
//! Arithmetic: perturbed values are θ + c z in f32 (c = ±ε rounded to f32; f64 tensors in f64),
//! rounded once to the tensor's dtype; the update computes θ − η (a + λ θ) in f32 with
//! a = Σ_j (g_j / n) z_j, rounded once. On the CPU these loops run 256 elements at a time,
//! compiled for AVX-512, AVX2 or the baseline as the CPU allows (`widest!`), with the same bits
//! in each; on a GPU the same operations run in the NVRTC kernels of `fast_cuda`.

//!
//! The module's parts: `loops` (the CPU loops over elements, one copy per instruction set),
//! `deferred` (the pending row updates and where each row stands), and here the stream, the
//! weight views forward passes read through, and the entry points over whole tensors.

mod deferred;
mod loops;

use super::philox;
use super::team::{for_chunk_pairs, for_chunks};
use super::{Trainable, WeightDecay};
use crate::model::nn::WeightView;
use anyhow::{bail, Result};
pub use deferred::DeferredState;
use deferred::*;
use half::{bf16, f16};
use loops::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use tch::{Device, Kind, Tensor};

/// A tensor's identity while the run lasts: its storage address.
fn address(t: &Tensor) -> usize {
    t.data_ptr() as usize
}

/// The trainable tensors' indices in the stream, by storage address, and the updates deferred
/// for rows no forward pass has read yet ([`FastStream::apply_deferring`]). Clones share both.
#[derive(Clone)]
pub struct FastStream {
    index: Rc<HashMap<usize, usize>>,
    deferred: Rc<RefCell<Deferred>>,
}

impl FastStream {
    /// `params` in stream order (their index keys their z). Fails for tensors the stream cannot
    /// handle: on a device other than the CPU without the CUDA kernels, or not contiguous.
    pub fn new(params: &[Trainable]) -> Result<FastStream> {
        let mut index = HashMap::new();
        for (i, p) in params.iter().enumerate() {
            let t = &p.tensor;
            if !t.is_contiguous() {
                bail!("fast stream: trainable tensor {} is not contiguous", p.name);
            }
            if !matches!(t.kind(), Kind::Float | Kind::Double | Kind::BFloat16 | Kind::Half) {
                bail!("fast stream: trainable tensor {} is {:?}, not floating point", p.name, t.kind());
            }
            if let Device::Cuda(_) = t.device() {
                super::fast_cuda::kernels(t.device())?;
            }
            if t.numel() > 0 {
                index.insert(address(t), i);
            }
        }
        Ok(FastStream { index: Rc::new(index), deferred: Rc::default() })
    }

    /// How the forward pass sees the weights along direction `seed` scaled by `coeff` (±ε).
    pub fn view(&self, seed: u64, coeff: f64) -> Rc<dyn WeightView> {
        Rc::new(Perturbation { stream: self.clone(), seed, coeffs: vec![coeff] })
    }

    /// Both sides of direction `seed` in one forward pass over a doubled batch: θ + ε z for its
    /// first half, θ − ε z for its second (a two-sided [`WeightView`]). Each z is drawn once for
    /// both, and the perturbed values are those of [`Self::view`] with ±ε bit for bit.
    pub fn paired_view(&self, seed: u64, eps: f64) -> Rc<dyn WeightView> {
        Rc::new(Perturbation { stream: self.clone(), seed, coeffs: vec![eps, -eps] })
    }

    /// The weights as they stand, for forward passes outside a direction (evaluation): the rows
    /// a pass reads, and any tensor it uses whole, first get their deferred updates.
    pub fn current_view(&self) -> Rc<dyn WeightView> {
        Rc::new(Current { stream: self.clone() })
    }

    /// The update [`apply`], deferring the tensors that forward passes have only ever read by
    /// rows (embedding and vocabulary matrices) or not at all, on the CPU: their rows get the
    /// pending updates, in order and with the same arithmetic, when a pass reads them, or at
    /// [`Self::flush`]. The weights that forward passes see, and those after a flush, are bit
    /// for bit those of [`apply`]; a step skips the draw of z for the rows no batch uses (77 M
    /// of RoBERTa-base's 163 M values with its untied decoder). Only for plain ZO-SGD, whose
    /// update of a row depends on nothing but the row.
    pub fn apply_deferring(
        &self,
        params: &[Trainable],
        directions: &[(u64, f64)],
        lr: f64,
        weight_decay: f64,
        decay: WeightDecay,
    ) {
        let mut deferred = self.deferred.borrow_mut();
        assert!(deferred.upto.is_none(), "updates go on from the latest weights, not from a copy swapped in");
        for (i, p) in params.iter().enumerate() {
            let t = &p.tensor;
            let defer = t.device() == Device::Cpu && t.numel() > 0 && !deferred.read_whole.contains(&i);
            if !defer {
                // Updated at once below, from rows that must be up to date (after a swap).
                deferred.flush(i);
            } else if !deferred.tensors.contains_key(&i) {
                let rows = if t.dim() == 0 { 1 } else { t.size()[0] as usize };
                let upto = deferred.upto();
                deferred.tensors.insert(
                    i,
                    DeferredTensor {
                        tensor: t.shallow_clone(),
                        width: t.numel() / rows,
                        decays: decay.applies_to(&p.name),
                        applied: vec![upto; rows],
                    },
                );
            }
        }
        let n = directions.len() as f64;
        deferred.log.push(Update {
            directions: directions.iter().map(|&(seed, g)| (seed, (g / n) as f32)).collect(),
            lr,
            weight_decay,
        });
        let upto = deferred.upto();
        let Deferred { read_whole, tensors, .. } = &mut *deferred;
        let mut waiting = std::collections::HashSet::new();
        for (&i, t) in tensors.iter_mut() {
            if read_whole.contains(&i) {
                // Deferred once and used whole since: up to date, and updated at once now.
                debug_assert!(t.applied.iter().all(|&a| a + 1 == upto), "tensor {i} is up to date");
                t.applied.iter_mut().for_each(|a| *a = upto);
            } else {
                waiting.insert(i);
            }
        }
        drop(deferred);
        apply_where(params, directions, lr, weight_decay, decay, |i| !waiting.contains(&i));
    }

    /// Brings every deferred row up to date (before the weights are saved, copied to disk or
    /// compared across ranks). The tensors stay deferred for later updates.
    pub fn flush(&self) {
        let mut deferred = self.deferred.borrow_mut();
        let indices: Vec<usize> = deferred.tensors.keys().copied().collect();
        for i in indices {
            deferred.flush(i);
        }
    }

    /// Where the deferred rows stand, to go with a copy of the weights ([`Self::restore`]).
    pub fn state(&self) -> DeferredState {
        let deferred = self.deferred.borrow();
        DeferredState {
            upto: deferred.upto(),
            applied: deferred.tensors.iter().map(|(&i, t)| (i, t.applied.clone())).collect(),
        }
    }

    /// After a copy of the weights taken with `state` is written back: its rows stand where
    /// they stood then, and reads bring them up to that copy's step, not beyond.
    pub fn restore(&self, state: &DeferredState) {
        let mut deferred = self.deferred.borrow_mut();
        deferred.upto = (state.upto < deferred.log.len()).then_some(state.upto);
        for (i, t) in deferred.tensors.iter_mut() {
            match state.applied.get(i) {
                Some(applied) => t.applied.clone_from(applied),
                // Deferred since the copy: it was up to date then.
                None => t.applied.iter_mut().for_each(|a| *a = state.upto),
            }
        }
    }

    /// Index of stored tensor `t` in the stream, if it is trainable.
    fn index_of(&self, t: &Tensor) -> Option<usize> {
        self.index.get(&address(t)).copied()
    }

    /// A forward pass uses trainable `t` whole ([`Deferred::read_whole`]); its index.
    fn read_whole(&self, t: &Tensor) -> Option<usize> {
        let i = self.index_of(t)?;
        self.deferred.borrow_mut().read_whole(i);
        Some(i)
    }

    /// A forward pass reads rows `ids` of trainable `t` ([`Deferred::catch_up`]); its index.
    fn read_rows(&self, t: &Tensor, ids: &Tensor) -> Option<usize> {
        let i = self.index_of(t)?;
        self.deferred.borrow_mut().catch_up(i, ids);
        Some(i)
    }
}

struct Perturbation {
    stream: FastStream,
    seed: u64,
    /// One per side.
    coeffs: Vec<f64>,
}

impl WeightView for Perturbation {
    fn sides(&self) -> i64 {
        self.coeffs.len() as i64
    }

    fn full(&self, t: &Tensor) -> Option<Tensor> {
        let key = philox::key(self.seed, self.stream.read_whole(t)?);
        Some(match *self.coeffs.as_slice() {
            [c] => perturbed(t, key, c),
            [plus, minus] => perturbed_pair(t, key, plus, minus),
            _ => unreachable!("one or two sides"),
        })
    }

    fn rows(&self, t: &Tensor, ids: &Tensor) -> Option<Tensor> {
        let i = self.stream.read_rows(t, ids)?;
        Some(perturbed_rows(t, ids, philox::key(self.seed, i), &self.coeffs))
    }
}

/// [`FastStream::current_view`]: the stored weights, with deferred updates applied as read.
struct Current {
    stream: FastStream,
}

impl WeightView for Current {
    fn full(&self, t: &Tensor) -> Option<Tensor> {
        self.stream.read_whole(t);
        None
    }

    fn rows(&self, t: &Tensor, ids: &Tensor) -> Option<Tensor> {
        self.stream.read_rows(t, ids);
        None
    }
}

/// θ + c z(key) as a new tensor.
pub fn perturbed(t: &Tensor, key: [u32; 2], c: f64) -> Tensor {
    let _guard = tch::no_grad_guard();
    if let Device::Cuda(_) = t.device() {
        return super::fast_cuda::perturbed(t, key, &[c]);
    }
    let out = t.empty_like();
    by_kind!(t.kind(), T => {
        // SAFETY: both are contiguous CPU tensors of kind T; `out` is fresh and `t` only read.
        let (src, dst) = unsafe { (slice_mut::<T>(t) as &[T], slice_mut::<T>(&out)) };
        let len = task_len(dst.len());
        for_chunks(dst, len, |ci, dst| {
            let first = ci * len;
            perturb_chunk(key, first, &src[first..first + dst.len()], dst, c)
        });
    });
    out
}

/// `[θ + a z(key), θ + b z(key)]` stacked, `[2, ..θ]`: one pass that reads θ and draws z once.
pub fn perturbed_pair(t: &Tensor, key: [u32; 2], a: f64, b: f64) -> Tensor {
    let _guard = tch::no_grad_guard();
    if let Device::Cuda(_) = t.device() {
        return super::fast_cuda::perturbed(t, key, &[a, b]);
    }
    let mut shape = vec![2];
    shape.extend(t.size());
    let out = Tensor::empty(shape.as_slice(), (t.kind(), t.device()));
    by_kind!(t.kind(), T => {
        // SAFETY: both are contiguous CPU tensors of kind T; `out` is fresh and `t` only read.
        let (src, dst) = unsafe { (slice_mut::<T>(t) as &[T], slice_mut::<T>(&out)) };
        let (plus, minus) = dst.split_at_mut(src.len());
        let len = task_len(src.len());
        for_chunk_pairs(plus, minus, len, |ci, plus, minus| {
            let first = ci * len;
            perturb_pair_chunk(key, first, &src[first..first + plus.len()], plus, minus, a, b)
        });
    });
    out
}

/// Rows `ids` (`[N, ..]`) of θ + c z(key) (elements, for a vector θ), perturbing only those
/// rows; with one coefficient per side, the s-th of the equal parts of `ids` gets `coeffs[s]`.
pub fn perturbed_rows(t: &Tensor, ids: &Tensor, key: [u32; 2], coeffs: &[f64]) -> Tensor {
    let _guard = tch::no_grad_guard();
    let width = if t.dim() == 1 { 1 } else { t.size()[1..].iter().product::<i64>() as usize };
    let gathered = match t.dim() {
        1 => t.index_select(0, &ids.flatten(0, -1)).view_as(ids),
        _ => Tensor::embedding(t, ids, -1, false, false),
    }
    .contiguous();
    let count = ids.numel();
    assert_eq!(count % coeffs.len(), 0, "the row ids split into {} equal parts", coeffs.len());
    let part = count / coeffs.len();
    if let Device::Cuda(_) = t.device() {
        let (flat_rows, flat_ids) = (gathered.view([count as i64, -1]), ids.flatten(0, -1));
        for (s, &c) in coeffs.iter().enumerate() {
            let (start, len) = ((s * part) as i64, part as i64);
            super::fast_cuda::perturb_rows_in_place(
                &flat_rows.narrow(0, start, len),
                &flat_ids.narrow(0, start, len),
                width,
                key,
                c,
            );
        }
        return gathered;
    }
    let ids: Vec<i64> = Vec::try_from(ids.flatten(0, -1).to_device(Device::Cpu).to_kind(Kind::Int64))
        .expect("row ids are int64");
    by_kind!(t.kind(), T => {
        // SAFETY: `gathered` is a fresh contiguous CPU tensor of kind T.
        let rows = unsafe { slice_mut::<T>(&gathered) };
        // Whole rows per task, about CHUNK elements each.
        let per_task = (CHUNK / width).max(1);
        for_chunks(rows, per_task * width, |ti, rows| {
            perturb_rows_chunk(key, rows, width, ti * per_task, &ids, coeffs, part)
        });
    });
    gathered
}

/// z of tensor `index` at step seed `seed`, f32, shaped and placed like `t`.
pub fn direction(t: &Tensor, seed: u64, index: usize) -> Tensor {
    let zeros = Tensor::zeros(t.size(), (Kind::Float, t.device()));
    perturbed(&zeros, philox::key(seed, index), 1.0)
}

/// The update of n directions (seed, g) for every tensor, one pass each:
/// θ ← θ − η (Σ_j (g_j / n) z_j + λ θ), λ per `decay`. With n = 1 this is the reference's
/// θ − η (g z + λ θ).
pub fn apply(
    params: &[Trainable],
    directions: &[(u64, f64)],
    lr: f64,
    weight_decay: f64,
    decay: WeightDecay,
) {
    apply_where(params, directions, lr, weight_decay, decay, |_| true)
}

/// [`apply`] to the tensors whose index passes `updated`.
fn apply_where(
    params: &[Trainable],
    directions: &[(u64, f64)],
    lr: f64,
    weight_decay: f64,
    decay: WeightDecay,
    updated: impl Fn(usize) -> bool,
) {
    let _guard = tch::no_grad_guard();
    let n = directions.len() as f64;
    // Per CUDA device, the directions copied there once for all its tensors.
    let mut on_device: Vec<(Device, super::fast_cuda::Directions)> = Vec::new();
    for (i, p) in params.iter().enumerate().filter(|(i, _)| updated(*i)) {
        let keyed: Vec<([u32; 2], f32)> =
            directions.iter().map(|&(seed, g)| (philox::key(seed, i), (g / n) as f32)).collect();
        let lambda = if decay.applies_to(&p.name) { weight_decay } else { 0.0 };
        let t = &p.tensor;
        if let Device::Cuda(_) = t.device() {
            let at = match on_device.iter().position(|(d, _)| *d == t.device()) {
                Some(at) => at,
                None => {
                    let seeds: Vec<(u32, f32)> = keyed.iter().map(|&(key, g)| (key[0], g)).collect();
                    on_device.push((t.device(), super::fast_cuda::Directions::new(t.device(), &seeds)));
                    on_device.len() - 1
                }
            };
            // The key's second word is the tensor's index (philox::key).
            super::fast_cuda::update(t, i as u32, &on_device[at].1, lr, lambda);
            continue;
        }
        by_kind!(t.kind(), T => {
            // SAFETY: a contiguous CPU tensor of kind T (checked in FastStream::new), written only here.
            let theta = unsafe { slice_mut::<T>(t) };
            let len = task_len(theta.len());
            for_chunks(theta, len, |ci, theta| update_chunk(&keyed, ci * len, theta, lr, lambda));
        });
    }
}

/// Checks on CUDA device `ordinal` that the kernels give the CPU's numbers bit for bit
/// (perturbed tensors, perturbed rows and updates in f32, bf16, f16, f64); for `mezo check`.
pub fn check_gpu_matches_cpu(ordinal: usize) -> Result<String> {
    let device = Device::Cuda(ordinal);
    let mut checked = 0;
    for kind in [Kind::Float, Kind::BFloat16, Kind::Half, Kind::Double] {
        let cpu = (Tensor::arange(10_003, (Kind::Double, Device::Cpu)) * 0.37).sin().to_kind(kind);
        let gpu = cpu.to_device(device);
        let p = |t: &Tensor| vec![Trainable { name: "w".into(), tensor: t.shallow_clone() }];
        FastStream::new(&p(&gpu))?;
        let key = philox::key(987_654_321, 5);
        let same = |a: &Tensor, b: &Tensor| a.equal(&b.to_device(Device::Cpu));
        if !same(&perturbed(&cpu, key, -1e-3), &perturbed(&gpu, key, -1e-3)) {
            bail!("perturbed {kind:?} tensors differ between CPU and cuda:{ordinal}");
        }
        if !same(&perturbed_pair(&cpu, key, 1e-3, -1e-3), &perturbed_pair(&gpu, key, 1e-3, -1e-3)) {
            bail!("perturbed {kind:?} tensor pairs differ between CPU and cuda:{ordinal}");
        }
        let matrix = |t: &Tensor| t.narrow(0, 0, 10_000).view([100, 100]).contiguous();
        let ids = Tensor::from_slice(&[7i64, 0, 99, 7]);
        let rows_cpu = perturbed_rows(&matrix(&cpu), &ids, key, &[2e-2, -3e-2]);
        let rows_gpu = perturbed_rows(&matrix(&gpu), &ids.to_device(device), key, &[2e-2, -3e-2]);
        if !same(&rows_cpu, &rows_gpu) {
            bail!("perturbed {kind:?} rows differ between CPU and cuda:{ordinal}");
        }
        let dirs = [(11u64, 0.5), (12, -2.0)];
        apply(&p(&cpu), &dirs, 0.1, 0.01, WeightDecay::AllTensors);
        apply(&p(&gpu), &dirs, 0.1, 0.01, WeightDecay::AllTensors);
        if !same(&cpu, &gpu) {
            bail!("{kind:?} updates differ between CPU and cuda:{ordinal}");
        }
        checked += 1;
    }
    Ok(format!(
        "perturbations (one- and two-sided), rows and updates on cuda:{ordinal} equal the CPU's bit for bit \
         ({checked} dtypes)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::nn;

    fn params(kind: Kind) -> Vec<Trainable> {
        let w = Tensor::arange(40_000, (Kind::Float, Device::Cpu)).sin().view([200, 200]).to_kind(kind);
        let b = Tensor::arange(200, (Kind::Float, Device::Cpu)).cos().to_kind(kind);
        vec![Trainable { name: "w".into(), tensor: w }, Trainable { name: "b.bias".into(), tensor: b }]
    }

    #[test]
    fn perturbations_never_touch_the_stored_weights() {
        for kind in [Kind::Float, Kind::BFloat16, Kind::Half, Kind::Double] {
            let p = params(kind);
            let before: Vec<Tensor> = p.iter().map(|t| t.tensor.copy()).collect();
            let stream = FastStream::new(&p).unwrap();
            for (seed, c) in [(1, 1e-3), (1, -1e-3), (7, 1e-1)] {
                let seen = nn::with_view(stream.view(seed, c), || nn::seen(&p[0].tensor).side(0));
                assert!(!seen.equal(&p[0].tensor), "{kind:?}: the view perturbs");
                let rows = Tensor::from_slice(&[3i64, 0, 199, 3]);
                let seen_rows = nn::with_view(stream.view(seed, c), || nn::rows(&p[0].tensor, &rows));
                assert!(seen_rows.equal(&seen.index_select(0, &rows)), "{kind:?}: rows equal the full view");
                let bias_rows = nn::with_view(stream.view(seed, c), || nn::rows(&p[1].tensor, &rows));
                let bias = nn::with_view(stream.view(seed, c), || nn::seen(&p[1].tensor).side(0));
                assert!(bias_rows.equal(&bias.index_select(0, &rows)), "{kind:?}: vector elements");
            }
            for (t, b) in p.iter().zip(&before) {
                assert!(t.tensor.equal(b), "{kind:?}: {} restored bit for bit", t.name);
            }
            // Outside a view, the stored weights.
            assert!(nn::seen(&p[0].tensor).side(0).equal(&p[0].tensor));
        }
    }

    #[test]
    fn the_paired_view_is_both_views_side_by_side() {
        for kind in [Kind::Float, Kind::BFloat16] {
            let p = params(kind);
            let stream = FastStream::new(&p).unwrap();
            let (seed, eps) = (9, 1e-2);
            let one = |c: f64, f: &dyn Fn() -> Tensor| nn::with_view(stream.view(seed, c), f);
            let both = |f: &dyn Fn() -> nn::Seen| nn::with_view(stream.paired_view(seed, eps), f);
            for t in [&p[0].tensor, &p[1].tensor] {
                let nn::Seen::PerSide(sides) = both(&|| nn::seen(t)) else {
                    panic!("{kind:?}: one per side")
                };
                assert!(sides.get(0).equal(&one(eps, &|| nn::seen(t).side(0))), "{kind:?}: side 0 is θ + εz");
                assert!(
                    sides.get(1).equal(&one(-eps, &|| nn::seen(t).side(0))),
                    "{kind:?}: side 1 is θ − εz"
                );
            }
            // Rows looked up by a batch taken twice: each half from its side.
            let ids = Tensor::from_slice(&[3i64, 0, 199, 3]).view([2, 2]);
            let twice = ids.repeat([2, 1]);
            let rows = both(&|| nn::Seen::Shared(nn::rows(&p[0].tensor, &twice)));
            let nn::Seen::Shared(rows) = rows else { unreachable!() };
            assert!(rows.narrow(0, 0, 2).equal(&one(eps, &|| nn::rows(&p[0].tensor, &ids))));
            assert!(rows.narrow(0, 2, 2).equal(&one(-eps, &|| nn::rows(&p[0].tensor, &ids))));
            // Rows every example uses (label words): one set per side.
            let words = Tensor::from_slice(&[5i64, 7]);
            let nn::Seen::PerSide(w) = both(&|| nn::weight_rows(&p[0].tensor, &words)) else { panic!() };
            assert!(w.get(1).equal(&one(-eps, &|| nn::rows(&p[0].tensor, &words))));
            // Outside the view, the tensors stand as stored.
            assert_eq!(nn::sides(), 1);
        }
    }

    #[test]
    fn every_instruction_set_gives_the_same_numbers() {
        use std::sync::atomic::Ordering::Relaxed;
        let ids = Tensor::from_slice(&[7i64, 0, 199, 7]);
        let dirs = [(11u64, 0.5), (12, -2.0)];
        let run = |kind: Kind| {
            let p = params(kind);
            let w = &p[0].tensor;
            let key = philox::key(31, 0);
            let out = vec![
                perturbed(w, key, -1e-3),
                perturbed_pair(w, key, 1e-3, -1e-3),
                perturbed_rows(w, &ids, key, &[2e-2, -3e-2]),
                perturbed_rows(&p[1].tensor, &ids, key, &[2e-2]),
            ];
            apply(&p, &dirs, 0.1, 0.01, WeightDecay::AllTensors);
            // One direction takes a path of its own.
            apply(&p, &dirs[..1], 0.1, 0.01, WeightDecay::AllTensors);
            out.into_iter().chain(p.into_iter().map(|t| t.tensor)).collect::<Vec<_>>()
        };
        for kind in [Kind::Float, Kind::BFloat16, Kind::Half, Kind::Double] {
            let widest = run(kind);
            for cap in [0, 1] {
                philox::ISA_CAP.store(cap, Relaxed);
                let narrow = run(kind);
                philox::ISA_CAP.store(2, Relaxed);
                for (i, (a, b)) in widest.iter().zip(&narrow).enumerate() {
                    assert!(a.equal(b), "{kind:?}: result {i} differs with instruction sets capped at {cap}");
                }
            }
        }
    }

    #[test]
    fn the_view_is_theta_plus_c_z() {
        let p = params(Kind::Float);
        let stream = FastStream::new(&p).unwrap();
        let seen = nn::with_view(stream.view(5, 0.25), || nn::seen(&p[1].tensor).side(0));
        let z = direction(&p[1].tensor, 5, 1);
        assert!(seen.equal(&(&p[1].tensor + z.g_mul_scalar(0.25))));
        let mut expect = vec![0f32; 200];
        philox::fill(philox::key(5, 1), 0, &mut expect);
        assert_eq!(Vec::<f32>::try_from(&z).unwrap(), expect);
    }

    #[test]
    fn the_update_follows_the_formula() {
        let p = params(Kind::Double);
        let before: Vec<Tensor> = p.iter().map(|t| t.tensor.copy()).collect();
        let dirs = [(11u64, 0.5f64), (12, -2.0)];
        apply(&p, &dirs, 0.1, 0.01, WeightDecay::ExcludeBiasAndNorm);
        for (i, (t, b)) in p.iter().zip(&before).enumerate() {
            let estimate = direction(b, 11, i).to_kind(Kind::Float) * (0.5f64 / 2.0)
                + direction(b, 12, i).to_kind(Kind::Float) * (-2.0f64 / 2.0);
            let lambda = if i == 0 { 0.01 } else { 0.0 };
            let want = b - (estimate.to_kind(Kind::Double) + b * lambda) * 0.1;
            assert!(t.tensor.allclose(&want, 1e-6, 1e-7, false), "{}", t.name);
        }
        // Bit-identical when repeated from the same weights.
        let q = params(Kind::Double);
        apply(&q, &dirs, 0.1, 0.01, WeightDecay::ExcludeBiasAndNorm);
        assert!(q[0].tensor.equal(&p[0].tensor));
    }

    /// Deferred updates: every read sees the weights of immediate updates, bit for bit, and so
    /// do the tensors after a flush; a copy swapped in reads as of its step.
    #[test]
    fn deferred_rows_read_as_immediate_updates() {
        for kind in [Kind::Float, Kind::BFloat16] {
            let (lazy, eager) = (params(kind), params(kind));
            let stream = FastStream::new(&lazy).unwrap();
            let updater = super::super::zo::Updater::new(
                super::super::zo::ZoOptimizer::Sgd,
                super::super::zo::Rng::Fast,
                &lazy,
            );
            let mut updater = updater.deferring_rows(&stream);
            let reference = FastStream::new(&eager).unwrap();
            let _current = nn::install_view(stream.current_view());
            let ids = |step: i64| Tensor::from_slice(&[step % 7, 150, (step * 13) % 200]).view([1, 3]);
            let mut copy = None;
            for step in 0..12i64 {
                // The matrix is read by rows (the bias whole) in each step's pass, and once in
                // a while through the current weights (evaluation).
                let seed = 100 + step as u64;
                let seen = nn::with_view(stream.paired_view(seed, 1e-2), || {
                    nn::rows(&lazy[0].tensor, &ids(step).repeat([2, 1]))
                });
                let expected = nn::with_view(reference.paired_view(seed, 1e-2), || {
                    nn::rows(&eager[0].tensor, &ids(step).repeat([2, 1]))
                });
                assert!(seen.equal(&expected), "{kind:?} step {step}: perturbed rows");
                let bias = nn::with_view(stream.view(seed, 1e-2), || nn::seen(&lazy[1].tensor).side(0));
                assert!(
                    bias.equal(
                        &nn::with_view(reference.view(seed, 1e-2), || nn::seen(&eager[1].tensor).side(0))
                    )
                );
                if step % 5 == 4 {
                    let now = nn::rows(&lazy[0].tensor, &Tensor::from_slice(&[1i64, 2, 199]));
                    assert!(
                        now.equal(&eager[0].tensor.index_select(0, &Tensor::from_slice(&[1i64, 2, 199]))),
                        "{kind:?} step {step}: current rows"
                    );
                }
                let dirs: Vec<(u64, f64)> =
                    if step % 3 == 0 { vec![(seed, 0.7), (seed + 50, -0.2)] } else { vec![(seed, -1.3)] };
                updater.apply(&lazy, &dirs, 1e-2, 0.05, WeightDecay::ExcludeBiasAndNorm);
                apply(&eager, &dirs, 1e-2, 0.05, WeightDecay::ExcludeBiasAndNorm);
                if step == 6 {
                    copy = Some((lazy[0].tensor.copy(), stream.state(), eager[0].tensor.copy()));
                }
            }
            // The matrix was deferred and lags; the bias, read whole, did not.
            assert!(!lazy[0].tensor.equal(&eager[0].tensor), "{kind:?}: rows were deferred");
            assert!(lazy[1].tensor.equal(&eager[1].tensor), "{kind:?}: the bias is updated at once");
            // A copy from step 6 swapped in reads as step 6's weights; swapped back, as the latest.
            let (old, state, expected) = copy.unwrap();
            let latest = (lazy[0].tensor.copy(), stream.state());
            lazy[0].tensor.shallow_clone().copy_(&old);
            stream.restore(&state);
            let all = Tensor::arange(200, (Kind::Int64, Device::Cpu));
            assert!(nn::rows(&lazy[0].tensor, &all).equal(&expected), "{kind:?}: the copy's step");
            lazy[0].tensor.shallow_clone().copy_(&latest.0);
            stream.restore(&latest.1);
            stream.flush();
            assert!(lazy[0].tensor.equal(&eager[0].tensor), "{kind:?}: flushed");
        }
    }
}
