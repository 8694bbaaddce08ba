//! Training machinery: optimiser, learning-rate schedule and budget,
//! checkpoints, and the pre-training loop (which runs any objective of
//! `pretrain::objective`).

pub mod checkpoint;
pub mod optim;
pub mod pretrain;
pub mod schedule;
