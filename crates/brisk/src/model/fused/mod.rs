//! Fused CPU kernels: each encoder layer runs as one candle op with a
//! hand-written forward and backward over its flat parameter group
//! (the llm.c way), instead of dozens of small ops that each allocate,
//! synchronise threads and pass through candle's gradient store.
//!
//! The plain composition in [`super::bert`] stays as the reference; tests
//! hold the two equal, forward and gradients.

pub mod kernels;
pub mod layer;

pub use kernels::Activation;
pub use layer::{LayerLayout, LayerSpec};
