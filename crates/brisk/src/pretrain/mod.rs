//! Pre-training objectives.

pub mod mlm;
pub mod notes;
