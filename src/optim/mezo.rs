//! MeZO's optimiser as one object: the perturbation stream, the update rule with its state, and
//! the rows whose updates wait until a forward pass reads them.
//!
//! A training loop asks it for the losses of a direction ([`Mezo::direction`]) and gives it each
//! step's projected gradients ([`Mezo::apply`]); resuming or replaying a run gives it the recorded
//! steps ([`Mezo::replay`]). Whatever reads the weights other than through a forward pass (saving,
//! stashing, comparing replicas) goes through [`Trained`], which brings pending rows up to date.
//!
//! Why the pieces live together: with the fast stream and plain ZO-SGD, the updates of embedding
//! and vocabulary rows are kept pending inside the stream ([`FastStream::apply_deferring`]), so
//! the stream, the update and the views through which passes read the weights must agree on where
//! every row stands. One owner keeps them in step; a loop never holds the stream itself.

use super::fast::{DeferredState, FastStream};
use super::zo::{Perturbations, Rng, Updater, ZoOptimizer};
use super::{Trainable, Trained, WeightDecay};
use crate::model::nn::{install_view, ViewGuard};
use anyhow::Result;

/// What the optimiser is built from.
#[derive(Debug, Clone, Copy)]
pub struct MezoSettings {
    pub rng: Rng,
    pub optimizer: ZoOptimizer,
    /// Fast stream: both sides of a direction in one forward pass over the doubled batch.
    pub paired_pass: bool,
    /// Perturbation size ε.
    pub eps: f64,
    pub weight_decay: f64,
    pub decay: WeightDecay,
}

pub struct Mezo {
    params: Vec<Trainable>,
    perturbations: Perturbations,
    updater: Updater,
    settings: MezoSettings,
}

impl Mezo {
    pub fn new(params: Vec<Trainable>, settings: MezoSettings) -> Result<Mezo> {
        let perturbations = Perturbations::new(settings.rng, &params, settings.paired_pass)?;
        let mut updater = Updater::new(settings.optimizer, settings.rng, &params);
        if let Perturbations::Fast { stream, .. } = &perturbations {
            updater = updater.deferring_rows(stream);
        }
        Ok(Mezo { params, perturbations, updater, settings })
    }

    /// The stream whose rows wait for their updates, if any.
    fn deferring(&self) -> Option<&FastStream> {
        self.updater.deferred()
    }

    /// While the guard lives, forward passes outside a direction read the rows that wait for
    /// their updates brought up to date as they read them (evaluation between steps).
    pub fn current_view(&self) -> Option<ViewGuard> {
        self.deferring().map(|stream| install_view(stream.current_view()))
    }

    /// One SPSA direction: (ℓ+, g = (ℓ+ − ℓ−) / 2ε), the weights as they were afterwards. See
    /// [`Perturbations::direction`] for `loss(sides)` and `evaluate`.
    pub fn direction(
        &self,
        seed: u64,
        evaluate: bool,
        loss: impl FnMut(i64) -> Result<Vec<f64>>,
    ) -> Result<(f64, f64)> {
        self.perturbations.direction(&self.params, seed, self.settings.eps, evaluate, loss)
    }

    /// Applies one step's directions (seed, g) at learning rate `lr`.
    pub fn apply(&mut self, directions: &[(u64, f64)], lr: f64) {
        self.updater.apply(&self.params, directions, lr, self.settings.weight_decay, self.settings.decay);
    }

    /// Re-applies a recorded step without forward passes: what its perturbations did to the
    /// weights (the reference stream's rounding is part of its trajectory), then its update.
    pub fn replay(&mut self, directions: &[(u64, f64)], lr: f64) {
        for (seed, _) in directions {
            self.perturbations.replay_direction(&self.params, *seed, self.settings.eps);
        }
        self.apply(directions, lr);
    }
}

impl Trained for Mezo {
    fn params(&self) -> &[Trainable] {
        &self.params
    }

    fn flush(&self) {
        if let Some(stream) = self.deferring() {
            stream.flush();
        }
    }

    fn pending(&self) -> Option<DeferredState> {
        self.deferring().map(FastStream::state)
    }

    fn restore_pending(&self, state: &DeferredState) {
        if let Some(stream) = self.deferring() {
            stream.restore(state);
        }
    }
}
