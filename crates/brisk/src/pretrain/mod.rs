//! Pre-training objectives.

pub mod mlm;
