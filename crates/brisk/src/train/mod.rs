//! Training machinery: optimiser, learning-rate schedule, clipping.

pub mod optim;
pub mod schedule;
