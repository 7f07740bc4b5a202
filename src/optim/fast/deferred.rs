//! Rows whose updates wait until a forward pass reads them (see [`super::FastStream::apply_deferring`]):
//! the steps' (seed, g, η) kept in order, and for every row the step it stands at.

use super::loops::*;
use crate::optim::philox;
use crate::optim::team::for_chunks;
use half::{bf16, f16};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Updates deferred by [`super::FastStream::apply_deferring`].
#[derive(Default)]
pub(super) struct Deferred {
    /// Stream indices of the tensors some forward pass used whole: updated at once, always.
    pub(super) read_whole: std::collections::HashSet<usize>,
    /// Tensors whose rows take their updates when read, by stream index.
    pub(super) tensors: HashMap<usize, DeferredTensor>,
    /// Every update since the first deferred one, in order.
    pub(super) log: Vec<Update>,
    /// How many of `log` the weights stand at: all of it, except while an earlier copy of the
    /// weights is swapped in ([`FastStream::restore`]).
    pub(super) upto: Option<usize>,
}

pub(super) struct DeferredTensor {
    pub(super) tensor: Tensor,
    /// Elements per row (first dimension).
    pub(super) width: usize,
    /// Whether weight decay applies to it.
    pub(super) decays: bool,
    /// Per row, how many updates of the log it has had.
    pub(super) applied: Vec<usize>,
}

/// One step's update: its directions (seed, g / n) and rates.
pub(super) struct Update {
    pub(super) directions: Vec<(u64, f32)>,
    pub(super) lr: f64,
    pub(super) weight_decay: f64,
}

/// A step's directions under one tensor's keys, with their g / n.
pub(super) type Keyed = Vec<([u32; 2], f32)>;

impl Update {
    pub(super) fn keyed(&self, index: usize) -> Keyed {
        self.directions.iter().map(|&(seed, g)| (philox::key(seed, index), g)).collect()
    }
}

/// Where deferred rows stood when a copy of the weights was taken.
pub struct DeferredState {
    pub(super) upto: usize,
    pub(super) applied: HashMap<usize, Vec<usize>>,
}

impl Deferred {
    pub(super) fn upto(&self) -> usize {
        self.upto.unwrap_or(self.log.len())
    }

    /// Updates `from .. upto` of the log as tensor `i` takes them: keyed directions, η and λ.
    pub(super) fn pending(&self, i: usize, from: usize, upto: usize) -> Vec<(Keyed, f64, f64)> {
        let decays = self.tensors[&i].decays;
        self.log[from..upto]
            .iter()
            .map(|u| (u.keyed(i), u.lr, if decays { u.weight_decay } else { 0.0 }))
            .collect()
    }

    /// A forward pass uses tensor `i` whole: it gets its pending updates (if it was ever
    /// deferred) and is updated at once from now on.
    pub(super) fn read_whole(&mut self, i: usize) {
        self.read_whole.insert(i);
        self.flush(i);
    }

    /// Rows `ids` of tensor `i`, if deferred, get their pending updates.
    pub(super) fn catch_up(&mut self, i: usize, ids: &Tensor) {
        let upto = self.upto();
        let Some(t) = self.tensors.get(&i) else { return };
        let ids: Vec<i64> = Vec::try_from(ids.flatten(0, -1).to_device(Device::Cpu).to_kind(Kind::Int64))
            .expect("row ids are int64");
        let mut rows: Vec<usize> = ids.iter().map(|&r| r as usize).filter(|&r| t.applied[r] < upto).collect();
        let Some(oldest) = rows.iter().map(|&r| t.applied[r]).min() else { return };
        rows.sort_unstable();
        rows.dedup();
        let pending = self.pending(i, oldest, upto);
        let t = self.tensors.get_mut(&i).expect("deferred");
        by_kind!(t.tensor.kind(), T => {
            // SAFETY: a contiguous CPU tensor of kind T (FastStream::new), written only here
            // while no forward pass reads it.
            let theta = unsafe { slice_mut::<T>(&t.tensor) };
            for &r in &rows {
                let row = &mut theta[r * t.width..(r + 1) * t.width];
                for (keyed, lr, lambda) in &pending[t.applied[r] - oldest..] {
                    update_chunk(keyed, r * t.width, row, *lr, *lambda);
                }
                t.applied[r] = upto;
            }
        });
    }

    /// Every row of tensor `i` gets its pending updates, in parallel over rows.
    pub(super) fn flush(&mut self, i: usize) {
        let upto = self.upto();
        let Some(t) = self.tensors.get(&i) else { return };
        let Some(&oldest) = t.applied.iter().min() else { return };
        if oldest >= upto {
            return;
        }
        let pending = self.pending(i, oldest, upto);
        let t = self.tensors.get_mut(&i).expect("deferred");
        let (width, applied) = (t.width, &t.applied);
        by_kind!(t.tensor.kind(), T => {
            // SAFETY: as in `catch_up`.
            let theta = unsafe { slice_mut::<T>(&t.tensor) };
            let rows_per_task = task_len(theta.len()).div_ceil(width).max(1);
            for_chunks(theta, rows_per_task * width, |ti, rows| {
                for (ri, row) in rows.chunks_mut(width).enumerate() {
                    let r = ti * rows_per_task + ri;
                    for (keyed, lr, lambda) in &pending[applied[r] - oldest..] {
                        update_chunk(keyed, r * width, row, *lr, *lambda);
                    }
                }
            });
        });
        t.applied.iter_mut().for_each(|a| *a = upto);
    }
}
