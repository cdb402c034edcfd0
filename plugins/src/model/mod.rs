//! Stage 2, the model: `trainer` (early-stopped on dev) and `self_predictor` (in-sample or
//! k-fold), both run in the `relabel-ml` worker process ([`worker`]).

pub mod self_predictor;
pub mod trainer;
pub mod worker;
