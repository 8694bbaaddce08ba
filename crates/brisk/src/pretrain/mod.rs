//! Pre-training objectives behind one interface ([`objective::Objective`]):
//! masked LM; ELECTRA's replaced-token detection (the encoder pair is in
//! `model::electra`, the sampling, labels and losses here); MC-BERT's
//! multi-choice cloze (likewise, with `model::mcbert`); ELECTRA's early
//! exit (`early_exit`). Beside them, TNF's
//! note dictionary and the probes that tell whether a model reads its
//! context.

pub mod early_exit;
pub mod electra;
pub mod mcbert;
pub mod mlm;
pub mod notes;
pub mod objective;
pub mod probes;
