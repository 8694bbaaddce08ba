//! brisk: efficient pre-training of BERT-style encoders on one machine, and
//! tools to use and understand what they learn.
//!
//! The modules follow the data flow:
//! - [`config`]: TOML run configs, presets and overrides;
//! - [`corpus`]: raw text → tokenizer → word counts → packed shards;
//! - [`model`]: the BERT encoder and its heads;
//! - [`pretrain`]: objectives (masked LM);
//! - [`train`]: optimiser, schedule, checkpoints and the training loop;
//! - [`dist`]: collectives for data-parallel training (one process, MPI);
//! - [`tasks`]: fine-tuning and evaluation on downstream tasks, word-level
//!   labelling (BiLSTM-CRF) and parsing (biaffine);
//! - [`embed`]: word-level features those read, concatenated;
//! - [`hf`]: HuggingFace BERT checkpoints in and out;
//! - [`encoder`]: a pre-trained encoder (HF or brisk) with its tokenizer:
//!   text in, hidden states and sentence vectors out;
//! - [`senses`]: Word2Sense sparse sense embeddings (co-occurrences, LDA);
//! - [`landscape`]: loss landscapes, trajectories and sharpness of
//!   fine-tuning;
//! - [`compare`]: comparisons of runs, their table and HTML report;
//! - [`run`]: run directories, provenance and atomic writes;
//! - [`integrity`]: checksums that seal checkpoints and corpora;
//! - [`profile`]: time per section of a training step;
//! - [`runtime`]: process set-up (thread pool, allocator tuning);
//! - [`plot`]: SVG charts;
//! - [`progress`]: plain progress lines for logs.

pub mod compare;
pub mod config;
pub mod corpus;
pub mod dist;
pub mod embed;
pub mod encoder;
pub mod error;
pub mod hf;
pub mod integrity;
pub mod landscape;
pub mod model;
pub mod plot;
pub mod pretrain;
pub mod profile;
pub mod progress;
pub mod run;
pub mod runtime;
pub mod senses;
pub mod tasks;
pub mod train;

pub use error::{Error, Result};
