//! Training machinery: optimiser, learning-rate schedule and budget, FLOP
//! counting, checkpoints, and the pre-training loop.

pub mod checkpoint;
pub mod flops;
pub mod optim;
pub mod pretrain;
pub mod schedule;
