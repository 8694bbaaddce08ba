//! Using pre-trained encoders on downstream tasks: GLUE-style sentence and
//! sentence-pair classification and regression (BERT's fine-tuning,
//! Devlin et al., 2019), with tasks described in TOML, GLUE's metrics, and
//! several seeds reported as mean ± std; and word-level tasks over
//! concatenated embeddings: BiLSTM-CRF labelling ([`tagger`]: [`bilstm`],
//! [`crf`], [`scheme`]) and biaffine dependency parsing ([`biaffine`]),
//! trained by [`labelling`] on CoNLL files ([`conll`], [`word_tasks`]).

pub mod ace;
mod ace_report;
pub mod biaffine;
pub mod bilstm;
pub mod classifier;
pub mod conll;
pub mod crf;
pub mod data;
pub mod finetune;
pub mod labelling;
pub mod metrics;
pub mod predict;
pub mod scheme;
pub mod tagger;
pub mod word_tasks;

pub use data::{Task, TaskSpec};
pub use finetune::{finetune, NotesMode, Recipe, SeedResult};
