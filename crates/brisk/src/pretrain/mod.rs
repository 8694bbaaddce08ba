//! Pre-training objectives: masked LM; ELECTRA's replaced-token detection
//! (sampling and labels; the encoder pair is in `model::electra`);
//! MC-BERT's multi-choice cloze (its candidates and labels so far); TNF's
//! note dictionary; and the probes that tell whether a model reads its
//! context.

pub mod electra;
pub mod mcbert;
pub mod mlm;
pub mod notes;
pub mod probes;
