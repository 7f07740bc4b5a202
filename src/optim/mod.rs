//! Optimisers. `zo`: MeZO's zeroth-order SGD (SPSA with seeded perturbations that are
//! regenerated, never stored).

pub mod zo;
