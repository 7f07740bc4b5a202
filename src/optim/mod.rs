//! Optimisers. `zo`: MeZO's zeroth-order SGD (SPSA with seeded perturbations that are
//! regenerated, never stored), with two perturbation streams: the reference's (`zo`, libtorch's
//! generator, in-place perturbations) and the fast one (`fast`: counter-based `philox` normals
//! formed just in time, with its CUDA kernels in `fast_cuda`). `mezo` puts a stream, its update
//! rule and its deferred rows together as the one optimiser object a training loop holds.
//!
//! The types every optimiser module shares live here, so that the modules depend on this one and
//! not on each other.

pub mod fast;
pub mod fast_cuda;
pub mod mezo;
pub mod philox;
pub mod team;
pub mod zo;

use tch::Tensor;

/// Which tensors weight decay applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum WeightDecay {
    /// Every optimised tensor (MeZO medium, the RoBERTa experiments).
    #[default]
    AllTensors,
    /// Not to names containing "bias", "layer_norm" or "layernorm" (MeZO large, the OPT experiments).
    ExcludeBiasAndNorm,
}

impl WeightDecay {
    /// Whether tensor `name` is decayed (the reference's case-sensitive name test).
    pub fn applies_to(self, name: &str) -> bool {
        match self {
            WeightDecay::AllTensors => true,
            WeightDecay::ExcludeBiasAndNorm => {
                !["bias", "layer_norm", "layernorm"].iter().any(|s| name.contains(s))
            }
        }
    }
}

/// A trainable tensor: its name (for the weight-decay rule) and a handle sharing its storage.
pub struct Trainable {
    pub name: String,
    pub tensor: Tensor,
}

/// The trained tensors as an optimiser holds them, for everything that reads them whole rather
/// than through a forward pass: saving, stashing the best weights, comparing replicas.
pub trait Trained {
    fn params(&self) -> &[Trainable];
    /// Brings every tensor up to date (updates an optimiser keeps pending) before it is read whole.
    fn flush(&self) {}
    /// Where pending updates stand, so that a copy of the tensors restores with them.
    fn pending(&self) -> Option<fast::DeferredState> {
        None
    }
    /// Puts back where pending updates stood when a copy was taken ([`Trained::pending`]).
    fn restore_pending(&self, _state: &fast::DeferredState) {}
}

/// Tensors updated in place by their optimiser (backpropagation): nothing is ever pending.
impl Trained for Vec<Trainable> {
    fn params(&self) -> &[Trainable] {
        self
    }
}
