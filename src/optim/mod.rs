//! Optimisers. `zo`: MeZO's zeroth-order SGD (SPSA with seeded perturbations that are
//! regenerated, never stored), with two perturbation streams: the reference's (`zo`, libtorch's
//! generator, in-place perturbations) and the fast one (`fast`: counter-based `philox` normals
//! formed just in time, with its CUDA kernels in `fast_cuda`).

pub mod fast;
pub mod fast_cuda;
pub mod philox;
pub mod team;
pub mod zo;
