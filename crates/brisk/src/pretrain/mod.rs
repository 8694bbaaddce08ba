//! Pre-training objectives: masked LM, ELECTRA's replaced-token detection
//! (its data side so far), and TNF's note dictionary.

pub mod electra;
pub mod mlm;
pub mod notes;
