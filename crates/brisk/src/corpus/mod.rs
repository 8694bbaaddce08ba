//! From raw text to packed training shards.
//!
//! The pipeline, in order:
//! 1. [`text`]: read files, directories and `.gz`, check UTF-8, split documents;
//!    or [`generated`]: the built-in corpus when no input is given;
//! 2. [`words`]: split every document into words (in parallel) and count them;
//! 3. [`tokenizer`]: learn a WordPiece vocabulary from those counts (or load
//!    a given `tokenizer.json` / `vocab.txt`), then WordPiece each word type once;
//! 4. [`shards`]: hold out validation documents, pack sequences, write
//!    memory-mappable shards, the word table and `manifest.json`.

pub mod generated;
pub mod shards;
pub mod text;
pub mod tokenizer;
pub mod words;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::config::DataConfig;
use crate::error::{Error, Result};
use shards::{InputInfo, Manifest, Split, TokenizerInfo, WordCountsInfo, FORMAT_VERSION};
use text::TextSource;
use tokenizer::{PieceTable, SpecialIds, WordSplitter};

/// Where the text of a corpus comes from.
#[derive(Debug, Clone)]
pub enum Input {
    /// Files and directories (`.gz` is decompressed).
    Paths(Vec<PathBuf>),
    /// The built-in generated corpus (size and seed from `[data]`).
    Generated,
}

impl Input {
    /// The input as a message names it: its paths (the first few), or the
    /// built-in corpus.
    pub fn describe(&self) -> String {
        match self {
            Input::Generated => "the built-in corpus".into(),
            Input::Paths(paths) => {
                let shown: Vec<String> = paths
                    .iter()
                    .take(3)
                    .map(|p| p.display().to_string())
                    .collect();
                match paths.len() {
                    0..=3 => shown.join(", "),
                    n => format!("{} and {} more", shown.join(", "), n - 3),
                }
            }
        }
    }
}

/// What a preparation did and how fast.
#[derive(Debug, Clone, Serialize)]
pub struct PrepareReport {
    pub text_bytes: u64,
    pub documents: usize,
    pub words: u64,
    pub word_types: usize,
    pub vocab_size: usize,
    pub train_sequences: usize,
    pub validation_sequences: usize,
    pub tokens: u64,
    pub unigram_entropy_nats: f64,
    /// Seconds per stage, in order.
    pub stages: Vec<(String, f64)>,
    pub seconds: f64,
    /// Raw text throughput over the whole preparation.
    pub mb_per_s: f64,
}

/// Prints stage timings to stderr when `verbose`.
struct Stages {
    verbose: bool,
    start: Instant,
    last: Instant,
    done: Vec<(String, f64)>,
}

impl Stages {
    fn new(verbose: bool) -> Stages {
        let now = Instant::now();
        Stages {
            verbose,
            start: now,
            last: now,
            done: Vec::new(),
        }
    }

    fn finish(&mut self, name: &str, detail: String) {
        let secs = self.last.elapsed().as_secs_f64();
        self.last = Instant::now();
        if self.verbose {
            eprintln!("  {name:<10} {secs:>7.2} s  {detail}");
        }
        self.done.push((name.to_string(), secs));
    }
}

/// Prepares a corpus into `out` (which must exist): tokenizer, word counts,
/// shards and manifest. The manifest is written last, so a directory without
/// one is an unfinished preparation.
pub fn prepare(
    data: &DataConfig,
    vocab_size: usize,
    input: &Input,
    out: &Path,
    verbose: bool,
) -> Result<PrepareReport> {
    let mut stages = Stages::new(verbose);

    let sources: Vec<TextSource> = match input {
        Input::Paths(paths) => {
            let files = text::list_inputs(paths)?;
            text::read_all(&files)?
        }
        Input::Generated => vec![generated::generate_source(data.generated_words, data.seed)],
    };
    let text_bytes: u64 = sources.iter().map(|s| s.text.len() as u64).sum();
    let docs: Vec<&str> = sources.iter().flat_map(|s| s.documents()).collect();
    if docs.is_empty() {
        return Err(Error::Usage(format!(
            "{} holds no documents",
            input.describe()
        )));
    }
    stages.finish(
        "read",
        format!(
            "{:.1} MB, {} files, {} documents",
            text_bytes as f64 / 1e6,
            sources.len(),
            docs.len()
        ),
    );

    let given = (!data.tokenizer.is_empty()).then(|| PathBuf::from(&data.tokenizer));
    let splitting = match &given {
        Some(path) => tokenizer::load_tokenizer(path, data.lowercase)?,
        None => tokenizer::train_wordpiece(&[], 16, 1, data.lowercase)?,
    };
    let index = words::index_words(&docs, &WordSplitter::new(&splitting))?;
    let total_words = index.total();
    stages.finish(
        "words",
        format!("{total_words} words, {} types", index.words.len()),
    );

    let tok = match given {
        Some(_) => splitting,
        None => {
            let t = tokenizer::train_wordpiece(
                &index.words,
                vocab_size,
                data.min_frequency,
                data.lowercase,
            )?;
            stages.finish(
                "vocab",
                format!("{} WordPiece entries", t.get_vocab_size(true)),
            );
            t
        }
    };
    let special = SpecialIds::of(&tok, "the tokenizer")?;
    let vocab = tok.get_vocab_size(true);
    let table = PieceTable::build(&tok, &index.words)?;
    let tokenizer_path = out.join("tokenizer.json");
    tok.save(&tokenizer_path, false)?;
    words::write_word_counts(&out.join("word_counts.tsv"), &index.words)?;
    stages.finish("wordpiece", format!("{vocab} entries"));

    let splits = shards::assign_splits(docs.len(), data.val_fraction, data.seed);
    let split_docs = |split: Split| -> Vec<&[u32]> {
        index
            .docs
            .iter()
            .zip(&splits)
            .filter(|(_, s)| **s == split)
            .map(|(d, _)| d.as_slice())
            .collect()
    };
    let (train_docs, validation_docs) = (split_docs(Split::Train), split_docs(Split::Validation));
    let write = |split: Split, docs: &[&[u32]]| -> Result<(shards::SplitInfo, shards::Packed)> {
        let packed = shards::pack(docs, &table, data.seq_len, special);
        let info = shards::write_split(
            out,
            split,
            &packed,
            docs.len(),
            data.seq_len,
            data.shard_sequences,
        )?;
        Ok((info, packed))
    };
    let (train, train_packed) = write(Split::Train, &train_docs)?;
    let (validation, _) = write(Split::Validation, &validation_docs)?;
    check_split_size(&train, Split::Train, data, input)?;
    if data.val_fraction > 0.0 {
        check_split_size(&validation, Split::Validation, data, input)?;
    }
    let entropy = entropy_nats(&shards::token_counts(&train_packed.tokens, vocab, special));
    drop(train_packed);
    stages.finish(
        "pack",
        format!(
            "{} + {} sequences of {}",
            train.sequences, validation.sequences, data.seq_len
        ),
    );

    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        brisk_version: env!("CARGO_PKG_VERSION").into(),
        seq_len: data.seq_len,
        special_ids: special,
        tokenizer: TokenizerInfo {
            file: "tokenizer.json".into(),
            sha256: crate::integrity::sha256_file(&tokenizer_path)?,
            trained: data.tokenizer.is_empty(),
            vocab_size: vocab,
            lowercase: data.lowercase,
        },
        word_counts: WordCountsInfo {
            file: "word_counts.tsv".into(),
            types: index.words.len(),
            words: total_words,
        },
        inputs: sources
            .iter()
            .map(|s| InputInfo {
                path: s.path.display().to_string(),
                bytes: s.text.len() as u64,
            })
            .collect(),
        documents: docs.len(),
        text_bytes,
        unigram_entropy_nats: entropy,
        train,
        validation,
    };
    crate::run::write_json(&out.join("manifest.json"), &manifest)?;

    let seconds = stages.start.elapsed().as_secs_f64();
    Ok(PrepareReport {
        text_bytes,
        documents: docs.len(),
        words: total_words,
        word_types: index.words.len(),
        vocab_size: vocab,
        train_sequences: manifest.train.sequences,
        validation_sequences: manifest.validation.sequences,
        tokens: manifest.train.tokens + manifest.validation.tokens,
        unigram_entropy_nats: entropy,
        stages: stages.done,
        seconds,
        mb_per_s: text_bytes as f64 / 1e6 / seconds,
    })
}

fn check_split_size(
    info: &shards::SplitInfo,
    split: Split,
    data: &DataConfig,
    input: &Input,
) -> Result<()> {
    if info.sequences > 0 {
        return Ok(());
    }
    let hint = match split {
        Split::Train => "give more text or a smaller data.seq_len",
        Split::Validation => "raise data.val_fraction, give more text, or set data.val_fraction=0",
    };
    Err(Error::Usage(format!(
        "the {} split of {} has {} tokens, less than one sequence of data.seq_len = {}: {hint}",
        split.name(),
        input.describe(),
        info.dropped_tokens,
        data.seq_len
    )))
}

/// Entropy in nats of the distribution given by `counts`.
pub fn entropy_nats(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let total = total as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total;
            -p * p.ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_of_uniform_and_point_masses() {
        assert!((entropy_nats(&[5, 5, 5, 5]) - 4f64.ln()).abs() < 1e-12);
        assert_eq!(entropy_nats(&[0, 9, 0]), 0.0);
        assert_eq!(entropy_nats(&[]), 0.0);
    }
}
