//! Fused CPU kernels: the embeddings, each encoder layer and the masked-LM
//! head with its loss run as one candle op each with a
//! hand-written forward and backward over its flat parameter group
//! (the llm.c way), instead of dozens of small ops that each allocate,
//! synchronise threads and pass through candle's gradient store.
//!
//! The plain composition in [`super::bert`] stays as the reference; tests
//! hold the two equal, forward and gradients.

pub mod embeddings;
pub mod head;
pub mod kernels;
pub mod layer;

pub use embeddings::EmbeddingSpec;
pub use head::HeadSpec;
pub use kernels::Activation;
pub use layer::{LayerLayout, LayerSpec};
