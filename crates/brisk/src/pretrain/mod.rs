//! Pre-training objectives: masked LM; ELECTRA's replaced-token detection
//! (sampling and labels; the encoder pair is in `model::electra`);
//! MC-BERT's multi-choice cloze (its candidates and labels so far); and
//! TNF's note dictionary.

pub mod electra;
pub mod mcbert;
pub mod mlm;
pub mod notes;
