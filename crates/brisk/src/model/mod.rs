//! The BERT encoder and its heads, written on candle.
//!
//! Config fields and tensor names follow HuggingFace BERT (`config.json`,
//! `bert.encoder.layer.0.attention.self.query.weight`, …) so checkpoints move
//! both ways. The encoder layer is one unit with a clear boundary (hidden
//! states, optional attention bias, padding mask → hidden states), written
//! here as a plain composition of differentiable candle ops.
//!
//! candle traps avoided: its fused LayerNorm and `softmax_last_dim` have no
//! backward pass (gradients silently stop), so [`norm::LayerNorm`] and
//! [`attention::attention`] are built from differentiable primitives; and
//! candle's `gelu` is the tanh form, so HF's `"gelu"` maps to `gelu_erf`.

pub mod attention;
pub mod bert;
pub mod device;
pub mod discriminator;
pub mod electra;
pub mod flops;
pub mod fused;
pub mod mcbert;
pub mod norm;
pub mod params;
pub mod rotary;
pub mod untied_positions;

pub use bert::{Active, Bert, BertForMaskedLm, InputMix, MlmHead};
pub use params::{Ctx, Params};
