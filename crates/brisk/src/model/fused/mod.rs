//! Fused CPU kernels: the embeddings, each encoder layer, the masked-LM
//! head (also ELECTRA's generator's and MC-BERT's controller's),
//! ELECTRA's replaced-token head and MC-BERT's multi-choice head, each with
//! its loss, run as one candle op each, with a hand-written forward and
//! backward over its flat parameter group
//! (the llm.c way), instead of dozens of small ops that each allocate,
//! synchronise threads and pass through candle's gradient store.
//!
//! The plain composition in [`super::bert`] stays as the reference; tests
//! hold the two equal, forward and gradients.

pub mod choice;
pub mod detect;
pub mod embeddings;
pub mod head;
pub mod kernels;
pub mod layer;

pub use choice::ChoiceSpec;
pub use detect::DetectorSpec;
pub use embeddings::EmbeddingSpec;
pub use head::HeadSpec;
pub use kernels::Activation;
pub use layer::{LayerLayout, LayerSpec};
