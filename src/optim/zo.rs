//! Zeroth-order SGD (MeZO) with its two perturbation streams.
//!
//! [`Rng::Fast`] (the default) is [`super::fast`]: counter-based z, perturbed weights formed just
//! in time, weights written only by the update. [`Rng::Reference`] is the stream of MeZO's
//! PyTorch code, described here.
//!
//! One step: draw the step seed s; perturb every trainable tensor by +ε z, evaluate ℓ+; by −2ε z,
//! evaluate ℓ−; restore by +ε z; the projected gradient is g = (ℓ+ − ℓ−) / 2ε and the update is
//! θ ← θ − η (g z + λ θ). z is never stored: before each of the four uses, libtorch's generator is
//! reset to s and one `randn` per trainable tensor (its shape, dtype and device) is drawn in
//! registration order — the stream of MeZO's PyTorch code, so the same libtorch gives the same z
//! (`--rng reference` in the design). Step seeds are numpy's legacy `randint(10**9)` from a
//! RandomState seeded with the run seed.
//!
//! The floating-point operations are those of the reference, in its order: θ + (s z) ε for the
//! perturbations, θ − η (g z + λ θ) for the update, each rounding where the reference rounds.

use super::fast::{self, FastStream};
use super::{Trainable, WeightDecay};
use crate::data::mt19937::RandomState;
use tch::Tensor;

/// Where the perturbation directions z come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Rng {
    /// The reference's: libtorch's generator reset to the step seed, one `randn` per tensor,
    /// in-place perturbations (same libtorch => same trajectory as a PyTorch implementation).
    Reference,
    /// Philox keyed by (step seed, tensor index), perturbed weights formed just in time
    /// ([`super::fast`]): exact restore in every dtype, no z in memory, one pass per update.
    #[default]
    Fast,
}

/// A stream ready for a run's trainable tensors.
pub enum Perturbations {
    Reference,
    /// With `paired`, ℓ+ and ℓ− come from one forward pass over the doubled batch
    /// ([`FastStream::paired_view`]).
    Fast {
        stream: FastStream,
        paired: bool,
    },
}

impl Perturbations {
    /// `paired`: the fast stream scores both sides of a direction in one forward pass (ignored
    /// by the reference stream, whose perturbations are in place).
    pub fn new(rng: Rng, params: &[Trainable], paired: bool) -> anyhow::Result<Perturbations> {
        Ok(match rng {
            Rng::Reference => Perturbations::Reference,
            Rng::Fast => Perturbations::Fast { stream: FastStream::new(params)?, paired },
        })
    }

    pub fn rng(&self) -> Rng {
        match self {
            Perturbations::Reference => Rng::Reference,
            Perturbations::Fast { .. } => Rng::Fast,
        }
    }

    /// One SPSA direction without the update: ℓ+ at θ + ε z, ℓ− at θ − ε z, θ restored; returns
    /// (ℓ+, g = (ℓ+ − ℓ−) / 2ε). `loss(sides)` scores the step's batch under the weights the
    /// forward pass sees: with `sides` 1 it returns `[ℓ]`; with 2 it scores the batch twice over
    /// in one forward pass (the first copy seeing θ + ε z, the second θ − ε z, see
    /// [`crate::model::nn::WeightView`]) and returns [ℓ+, ℓ−]. With `evaluate` false nothing is
    /// evaluated (another rank evaluates this direction) and the weights go through what
    /// evaluating would do to them.
    pub fn direction(
        &self,
        params: &[Trainable],
        seed: u64,
        eps: f64,
        evaluate: bool,
        mut loss: impl FnMut(i64) -> anyhow::Result<Vec<f64>>,
    ) -> anyhow::Result<(f64, f64)> {
        use crate::model::nn::with_view;
        match self {
            Perturbations::Reference => direction(params, seed, eps, evaluate, || Ok(loss(1)?[0])),
            Perturbations::Fast { .. } if !evaluate => Ok((0.0, 0.0)),
            Perturbations::Fast { stream, paired } => {
                let (plus, minus) = if *paired {
                    let both = with_view(stream.paired_view(seed, eps), || loss(2))?;
                    (both[0], both[1])
                } else {
                    let plus = with_view(stream.view(seed, eps), || loss(1))?[0];
                    (plus, with_view(stream.view(seed, -eps), || loss(1))?[0])
                };
                Ok((plus, (plus - minus) / (2.0 * eps)))
            }
        }
    }

    /// What [`Perturbations::direction`] did to the weights, without forward passes (replay):
    /// the reference's three in-place perturbations, whose rounding is part of its trajectory;
    /// nothing for the fast stream.
    pub fn replay_direction(&self, params: &[Trainable], seed: u64, eps: f64) {
        if let Perturbations::Reference = self {
            direction(params, seed, eps, false, || Ok(0.0)).expect("nothing is evaluated");
        }
    }
}

/// numpy `RandomState(seed).randint(10**9)`, one per step.
pub struct StepSeeds {
    rng: RandomState,
}

impl StepSeeds {
    pub fn new(seed: u32) -> StepSeeds {
        StepSeeds { rng: RandomState::new(seed) }
    }

    pub fn next_seed(&mut self) -> u64 {
        u64::from(self.rng.interval(999_999_999))
    }
}

/// θ ← θ + (scale z) ε for every tensor, z regenerated from `seed`.
pub fn perturb(params: &[Trainable], seed: u64, scale: f64, eps: f64) {
    let _guard = tch::no_grad_guard();
    tch::manual_seed(seed as i64);
    for p in params {
        // With the reference's rounding: ((s · z) · ε), then θ + that. The products are out of
        // place, as the reference's are: libtorch's in-place `mul_` by a scalar rounds the scalar
        // to an f16/bf16 tensor's dtype first, the out-of-place product multiplies in f32.
        let z = Tensor::randn(p.tensor.size(), (p.tensor.kind(), p.tensor.device()));
        let step = (z * scale) * eps;
        let _ = p.tensor.shallow_clone().g_add_(&step);
    }
}

/// θ ← θ − η (g z + λ θ) with z regenerated from `seed`, λ per `decay`.
pub fn update(
    params: &[Trainable],
    seed: u64,
    projected_grad: f64,
    lr: f64,
    weight_decay: f64,
    decay: WeightDecay,
) {
    let _guard = tch::no_grad_guard();
    tch::manual_seed(seed as i64);
    for p in params {
        // With the reference's rounding: θ − η · ((g · z) + λ θ), the scalar products out of
        // place (see `perturb`).
        let z = Tensor::randn(p.tensor.size(), (p.tensor.kind(), p.tensor.device()));
        let mut direction = z * projected_grad;
        if weight_decay != 0.0 && decay.applies_to(&p.name) {
            direction += &p.tensor * weight_decay;
        }
        let _ = p.tensor.shallow_clone().g_sub_(&(direction * lr));
    }
}

/// One SPSA direction without the update: perturb, evaluate ℓ+, perturb, evaluate ℓ−, restore;
/// returns (ℓ+, g). With `evaluate` false the three perturbations happen and nothing is
/// evaluated (another rank evaluates this direction; the weights go through the same rounding).
pub fn direction(
    params: &[Trainable],
    seed: u64,
    eps: f64,
    evaluate: bool,
    mut loss: impl FnMut() -> anyhow::Result<f64>,
) -> anyhow::Result<(f64, f64)> {
    perturb(params, seed, 1.0, eps);
    let plus = if evaluate { loss()? } else { 0.0 };
    perturb(params, seed, -2.0, eps);
    let minus = if evaluate { loss()? } else { 0.0 };
    perturb(params, seed, 1.0, eps);
    Ok((plus, (plus - minus) / (2.0 * eps)))
}

/// The update of n directions (seed, g): with one, the reference's θ ← θ − η (g z + λ θ); with
/// n > 1 (n-SPSA, the paper's Algorithm 2 in place), θ ← θ − η (g_j / n) z_j for each j in turn,
/// then θ ← θ − η λ θ.
pub fn apply(
    params: &[Trainable],
    directions: &[(u64, f64)],
    lr: f64,
    weight_decay: f64,
    decay: WeightDecay,
) {
    if let [(seed, g)] = directions {
        return update(params, *seed, *g, lr, weight_decay, decay);
    }
    let n = directions.len() as f64;
    for (seed, g) in directions {
        update(params, *seed, g / n, lr, 0.0, decay);
    }
    if weight_decay != 0.0 {
        let _guard = tch::no_grad_guard();
        for p in params.iter().filter(|p| decay.applies_to(&p.name)) {
            let new = &p.tensor - &p.tensor * (weight_decay * lr);
            p.tensor.shallow_clone().copy_(&new);
        }
    }
}

/// How the projected gradients become an update.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ZoOptimizer {
    /// ZO-SGD: [`apply`] (the reference).
    Sgd,
    /// ZO-SGD with heavy-ball momentum β: m ← β m + ĝ, θ ← θ − η (m + λ θ).
    Momentum { beta: f64 },
    /// ZO-Adam (β1 0.9, β2 0.999, ε 1e-8, bias-corrected): θ ← θ − η (m̂ / (√v̂ + ε) + λ θ).
    Adam,
}

/// The update rule with its state: moment buffers (f32, one per trainable tensor) for momentum
/// and Adam. The moments are a function of the trajectory, so replaying a run rebuilds them.
pub struct Updater {
    optimizer: ZoOptimizer,
    rng: Rng,
    first: Vec<Tensor>,
    second: Vec<Tensor>,
    steps: i32,
    /// The fast stream whose row-read tensors take their updates when read.
    deferring: Option<FastStream>,
}

impl Updater {
    pub fn new(optimizer: ZoOptimizer, rng: Rng, params: &[Trainable]) -> Updater {
        let zeros =
            || params.iter().map(|p| p.tensor.zeros_like().to_kind(tch::Kind::Float)).collect::<Vec<_>>();
        let (first, second) = match optimizer {
            ZoOptimizer::Sgd => (Vec::new(), Vec::new()),
            ZoOptimizer::Momentum { .. } => (zeros(), Vec::new()),
            ZoOptimizer::Adam => (zeros(), zeros()),
        };
        Updater { optimizer, rng, first, second, steps: 0, deferring: None }
    }

    /// Plain ZO-SGD on the fast stream defers the updates of rows that no forward pass has read
    /// ([`FastStream::apply_deferring`]); the caller flushes `stream` before the weights are
    /// used other than by forward passes under its views. Other updates stay immediate.
    pub fn deferring_rows(mut self, stream: &FastStream) -> Updater {
        if self.optimizer == ZoOptimizer::Sgd && self.rng == Rng::Fast {
            self.deferring = Some(stream.clone());
        }
        self
    }

    /// The stream this updater defers rows on, if any.
    pub fn deferred(&self) -> Option<&FastStream> {
        self.deferring.as_ref()
    }

    /// Applies one step's directions (seed, g).
    pub fn apply(
        &mut self,
        params: &[Trainable],
        directions: &[(u64, f64)],
        lr: f64,
        weight_decay: f64,
        decay: WeightDecay,
    ) {
        if self.optimizer == ZoOptimizer::Sgd {
            return match self.rng {
                Rng::Reference => apply(params, directions, lr, weight_decay, decay),
                Rng::Fast => match &self.deferring {
                    Some(stream) => stream.apply_deferring(params, directions, lr, weight_decay, decay),
                    None => fast::apply(params, directions, lr, weight_decay, decay),
                },
            };
        }
        let _guard = tch::no_grad_guard();
        self.steps += 1;
        let n = directions.len() as f64;
        // ĝ = Σ_j (g_j / n) z_j for every tensor, each z_j regenerated from its seed in order.
        let mut estimates: Vec<Tensor> = params
            .iter()
            .map(|p| Tensor::zeros(p.tensor.size(), (tch::Kind::Float, p.tensor.device())))
            .collect();
        for (seed, g) in directions {
            if self.rng == Rng::Reference {
                tch::manual_seed(*seed as i64);
            }
            for (i, (p, e)) in params.iter().zip(estimates.iter_mut()).enumerate() {
                let z = match self.rng {
                    Rng::Reference => Tensor::randn(p.tensor.size(), (p.tensor.kind(), p.tensor.device())),
                    Rng::Fast => fast::direction(&p.tensor, *seed, i),
                };
                *e = &*e + z.to_kind(tch::Kind::Float) * (g / n);
            }
        }
        for (i, (p, estimate)) in params.iter().zip(estimates).enumerate() {
            let direction = match self.optimizer {
                ZoOptimizer::Momentum { beta } => {
                    let m = &self.first[i] * beta + estimate;
                    self.first[i].copy_(&m);
                    m
                }
                _ => {
                    let (b1, b2, eps) = (0.9, 0.999, 1e-8);
                    let m = &self.first[i] * b1 + &estimate * (1.0 - b1);
                    let v = &self.second[i] * b2 + estimate.square() * (1.0 - b2);
                    self.first[i].copy_(&m);
                    self.second[i].copy_(&v);
                    let m_hat = m / (1.0 - b1.powi(self.steps));
                    let v_hat = v / (1.0 - b2.powi(self.steps));
                    m_hat / (v_hat.sqrt() + eps)
                }
            };
            let mut step = direction;
            if weight_decay != 0.0 && decay.applies_to(&p.name) {
                step = &step + p.tensor.to_kind(tch::Kind::Float) * weight_decay;
            }
            let new = (p.tensor.to_kind(tch::Kind::Float) - step * lr).to_kind(p.tensor.kind());
            p.tensor.shallow_clone().copy_(&new);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn step_seeds_are_numpys_randint() {
        let mut s = StepSeeds::new(42);
        let seeds: Vec<u64> = (0..5).map(|_| s.next_seed()).collect();
        assert_eq!(seeds, [534895718, 199900595, 862061404, 787846414, 996406378]);
    }

    /// One test for everything that uses libtorch's global generator: tests run in parallel.
    #[test]
    fn perturbations_and_updates_regenerate_z() {
        perturbations_regenerate_the_same_z();
        update_follows_the_reference_formula();
    }

    fn perturbations_regenerate_the_same_z() {
        let t = Tensor::zeros([3, 4], (Kind::Float, Device::Cpu));
        let params = [Trainable { name: "w".into(), tensor: t.shallow_clone() }];
        perturb(&params, 7, 1.0, 1.0);
        tch::manual_seed(7);
        let z = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
        assert!(t.equal(&z));
        perturb(&params, 7, -1.0, 1.0);
        assert_eq!(t.abs().max().double_value(&[]), 0.0);
    }

    fn update_follows_the_reference_formula() {
        let t = Tensor::ones([5], (Kind::Double, Device::Cpu));
        let bias = Tensor::ones([5], (Kind::Double, Device::Cpu));
        let params = [
            Trainable { name: "w".into(), tensor: t.shallow_clone() },
            Trainable { name: "x.bias".into(), tensor: bias.shallow_clone() },
        ];
        update(&params, 3, 2.0, 0.1, 0.5, WeightDecay::ExcludeBiasAndNorm);
        tch::manual_seed(3);
        let z = Tensor::randn([5], (Kind::Double, Device::Cpu));
        let zb = Tensor::randn([5], (Kind::Double, Device::Cpu));
        let want = Tensor::ones([5], (Kind::Double, Device::Cpu)) - (&z * 2.0 + 0.5) * 0.1;
        assert!(t.allclose(&want, 0.0, 1e-15, false));
        let want_bias = Tensor::ones([5], (Kind::Double, Device::Cpu)) - (&zb * 2.0) * 0.1;
        assert!(bias.allclose(&want_bias, 0.0, 1e-15, false));
    }
}
