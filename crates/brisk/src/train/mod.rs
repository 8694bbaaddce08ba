//! Training machinery: optimiser, learning-rate schedule, clipping, the loop.

pub mod optim;
pub mod pretrain;
pub mod schedule;
