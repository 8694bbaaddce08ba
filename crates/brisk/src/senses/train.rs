//! `brisk senses train`: text → word documents → co-occurrence counts →
//! LDA, in a resumable run directory.
//!
//! The run directory holds, besides `config.toml` and `provenance.json`:
//! `vocab.tsv` (word, count; row i of the matrix), `cooc.safetensors` (the
//! counts), `state/` (the sampler after its last saved iteration),
//! `metrics.jsonl` (one line per iteration) and `summary.json`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::cooc::{self, CoocConfig, SparseCounts};
use super::lda::{IterationStats, Lda, LdaConfig};
use super::pseudo::{self, PseudoConfig};
use super::vectors::{self, Clusters, PointEstimates, Sparse, VectorSizes, VectorsConfig};
use crate::corpus::shards::{PreparedCorpus, Split, WordId};
use crate::corpus::{text, tokenizer, words};
use crate::error::{Error, Result};
use crate::progress::{short_duration, Heartbeat};
use crate::run;
use crate::tasks::labelling::peak_rss_mb;

/// A senses run's config: the seed, `[data]`, `[cooc]` and `[lda]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SensesConfig {
    /// Seeds the subsampling and the sampler.
    pub seed: u64,
    /// Iterations between sampler checkpoints (`state/`).
    pub save_every: usize,
    pub data: SensesData,
    pub cooc: CoocConfig,
    pub lda: LdaConfig,
    pub vectors: VectorsConfig,
    /// Pseudo-word disambiguation test data (off unless `pseudo.pairs > 0`).
    pub pseudo: PseudoConfig,
}

/// Where the text comes from: a prepared corpus, else text paths.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SensesData {
    /// Text files or directories (`.gz` read).
    pub input: Vec<PathBuf>,
    /// A `brisk corpus prepare` directory; used instead of `input` when set.
    pub corpus: Option<PathBuf>,
}

impl Default for SensesConfig {
    fn default() -> Self {
        SensesConfig {
            seed: 0,
            save_every: 10,
            data: SensesData::default(),
            cooc: CoocConfig::default(),
            lda: LdaConfig::default(),
            vectors: VectorsConfig::default(),
            pseudo: PseudoConfig::default(),
        }
    }
}

impl SensesConfig {
    pub fn check(&self) -> Result<()> {
        if self.data.corpus.is_none() && self.data.input.is_empty() {
            return Err(Error::Config(
                "no text: set data.input (text paths) or data.corpus (a prepared corpus)".into(),
            ));
        }
        if self.save_every == 0 {
            return Err(Error::Config("save_every must be at least 1".into()));
        }
        self.cooc.check()?;
        self.lda.check()?;
        self.pseudo.check()?;
        self.vectors.sizes(self.lda.topics).map(|_| ())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a senses config serialises")
    }

    /// Where the text comes from.
    pub fn source(&self) -> Source {
        match &self.data.corpus {
            Some(dir) => Source::Corpus(dir.clone()),
            None => Source::Text(self.data.input.clone()),
        }
    }

    pub fn read(path: &Path) -> Result<SensesConfig> {
        let text = run::read_text(path)?;
        toml::from_str(&text).map_err(|e| Error::data(path, format!("bad senses config: {e}")))
    }
}

/// Where the text comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Text files or directories (`.gz` read), split into words as
    /// `brisk corpus prepare` splits them (lowercased, punctuation apart).
    Text(Vec<PathBuf>),
    /// A `brisk corpus prepare` directory: its training split's words.
    Corpus(PathBuf),
}

/// Documents as word ids into a frequency-ranked word table.
pub struct Documents {
    pub docs: Vec<Vec<u32>>,
    pub words: Vec<(String, u64)>,
}

impl Documents {
    /// The documents with every token that has no letter removed (the
    /// positions close up, as if the text never held them), and the word
    /// table without those words, still ranked by frequency.
    pub fn letters_only(self) -> Documents {
        let mut new_id = vec![u32::MAX; self.words.len()];
        let mut words = Vec::new();
        for (i, (word, count)) in self.words.into_iter().enumerate() {
            if word.chars().any(char::is_alphabetic) {
                new_id[i] = words.len() as u32;
                words.push((word, count));
            }
        }
        let docs = self
            .docs
            .into_par_iter()
            .map(|doc| {
                doc.into_iter()
                    .map(|w| new_id[w as usize])
                    .filter(|&w| w != u32::MAX)
                    .collect()
            })
            .collect();
        Documents { docs, words }
    }
}

/// Reads and splits the source into word documents.
pub fn read_documents(source: &Source) -> Result<Documents> {
    let documents = match source {
        Source::Text(paths) => {
            let sources = text::read_all(&text::list_inputs(paths)?)?;
            let docs: Vec<&str> = sources.iter().flat_map(|s| s.documents()).collect();
            let splitting = tokenizer::train_wordpiece(&[], 16, 1, true)?;
            let index = words::index_words(&docs, &tokenizer::WordSplitter::new(&splitting))?;
            Documents {
                docs: index.docs,
                words: index.words,
            }
        }
        Source::Corpus(dir) => corpus_documents(dir)?,
    };
    if documents.docs.iter().all(|d| d.is_empty()) {
        let what = match source {
            Source::Text(paths) => format!("{paths:?}"),
            Source::Corpus(dir) => dir.display().to_string(),
        };
        return Err(Error::Usage(format!("{what}: the input holds no words")));
    }
    Ok(documents)
}

/// The training split of a prepared corpus as word documents: each packed
/// sequence's word occurrences, cut at special tokens (document and
/// sequence boundaries).
fn corpus_documents(dir: &Path) -> Result<Documents> {
    let corpus = PreparedCorpus::open(dir)?;
    let words = words::read_word_counts(&dir.join(&corpus.manifest.word_counts.file))?;
    let mut docs = Vec::new();
    for i in 0..corpus.num_sequences(Split::Train) {
        let mut doc = Vec::new();
        for &id in corpus.sequence(Split::Train, i).words {
            let id = WordId(id);
            match id.word_type() {
                None if !doc.is_empty() => docs.push(std::mem::take(&mut doc)),
                None => {}
                Some(w) if id.starts_word() => doc.push(w),
                Some(_) => {}
            }
        }
        if !doc.is_empty() {
            docs.push(doc);
        }
    }
    Ok(Documents { docs, words })
}

/// How [`train`] runs.
pub struct TrainOptions<'a> {
    /// Continue from `state/` in the run directory.
    pub resume: bool,
    /// Set (by Ctrl-C) to stop after the current iteration, saving the state.
    pub stop: &'a AtomicBool,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IterationMetrics {
    pub step: usize,
    pub log_likelihood: f64,
    pub acceptance: f64,
    pub seconds: f64,
    /// Token samples (two Metropolis–Hastings steps per token) per second.
    pub tokens_per_s: f64,
    pub wall_s: f64,
}

/// What a training run did (`summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub vocab: usize,
    pub words_read: u64,
    pub words_kept: u64,
    pub nonzeros: usize,
    pub tokens: usize,
    pub topics: usize,
    pub iterations: usize,
    pub log_likelihood: Option<f64>,
    /// Seconds spent reading and counting (0 when resumed from saved counts).
    pub count_s: f64,
    /// Seconds of sampling in this invocation, and per iteration.
    pub sample_s: f64,
    pub seconds_per_iteration: f64,
    pub tokens_per_s: f64,
    /// Building the vectors (point estimates, merging, final vectors).
    pub vectors: Option<VectorsReport>,
    pub peak_rss_mb: f64,
    pub stopped: bool,
}

/// What building the vectors did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VectorsReport {
    pub sizes: VectorSizes,
    /// Merged senses that hold at least one sense (ties can leave fewer
    /// than asked only when senses coincide).
    pub clusters: usize,
    pub mean_nnz: f64,
    pub merge_s: f64,
    pub seconds: f64,
}

const STATE_VERSION: u32 = 1;

/// `state/state.json`: what the topic file belongs to.
#[derive(Debug, Serialize, Deserialize)]
struct StateInfo {
    format_version: u32,
    iteration: usize,
    tokens: usize,
    topics: usize,
    seed: u64,
}

/// Counts co-occurrences (or reads them back when resuming) and runs the
/// sampler to `config.lda.iterations`, saving its state every
/// `config.save_every` iterations and when stopped.
pub fn train(
    config: &SensesConfig,
    out: &Path,
    options: &TrainOptions,
    progress: impl Fn(&str),
) -> Result<TrainSummary> {
    config.check()?;
    let start = Instant::now();
    let (vocab, matrix, words_read, words_kept) = counts(config, out, options.resume, &progress)?;
    let count_s = start.elapsed().as_secs_f64();
    if vocab.len() < config.lda.topics {
        return Err(Error::Usage(format!(
            "the vocabulary has {} words, fewer than lda.topics = {}: give more text, or lower cooc.min_count or lda.topics",
            vocab.len(),
            config.lda.topics
        )));
    }
    let state = out.join("state");
    let mut lda = if options.resume && state.join("state.json").exists() {
        load_state(&state, &matrix, config)?
    } else {
        Lda::new(&matrix, &config.lda, config.seed)?
    };
    progress(&format!(
        "{} words, {} kept after subsampling; vocabulary {}, {} non-zero counts, {} tokens; {} topics",
        words_read,
        words_kept,
        vocab.len(),
        matrix.columns.len(),
        lda.num_tokens(),
        config.lda.topics
    ));
    let metrics_path = out.join("metrics.jsonl");
    // Iterations after the saved state are sampled again: drop their rows.
    crate::train::pretrain::truncate_metrics(&metrics_path, lda.iteration() as u64)?;
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;
    let mut heartbeat = Heartbeat::new();
    let sampling = Instant::now();
    let first = lda.iteration();
    let mut last: Option<IterationStats> = None;
    let mut stopped = false;
    while lda.iteration() < config.lda.iterations {
        if options.stop.load(Ordering::SeqCst) {
            stopped = true;
            break;
        }
        let stats = lda.iterate();
        let tokens_per_s = lda.num_tokens() as f64 / stats.seconds;
        let line = IterationMetrics {
            step: stats.iteration,
            log_likelihood: stats.log_likelihood,
            acceptance: stats.acceptance,
            seconds: stats.seconds,
            tokens_per_s,
            wall_s: start.elapsed().as_secs_f64(),
        };
        let row = serde_json::to_string(&line).expect("metrics serialise");
        writeln!(metrics, "{row}").map_err(|e| Error::io(&metrics_path, e))?;
        if lda.iteration() % config.save_every == 0 || lda.iteration() == config.lda.iterations {
            save_state(&state, &lda, config.seed)?;
        }
        if heartbeat.due()
            || lda.iteration() == config.lda.iterations
            || lda.iteration() == first + 1
        {
            let left = (config.lda.iterations - lda.iteration()) as f64 * stats.seconds;
            progress(&format!(
                "iteration {}/{}  log-likelihood {:.4}/token  accepted {:.1}%  {:.1} M tokens/s  ends in {}",
                lda.iteration(),
                config.lda.iterations,
                stats.log_likelihood,
                100.0 * stats.acceptance,
                tokens_per_s / 1e6,
                short_duration(left)
            ));
        }
        last = Some(stats);
    }
    if stopped {
        save_state(&state, &lda, config.seed)?;
        progress(&format!(
            "stopped after iteration {}; --resume continues from there",
            lda.iteration()
        ));
    }
    let sample_s = sampling.elapsed().as_secs_f64();
    let done = lda.iteration() - first;
    let vectors = if stopped {
        None
    } else {
        Some(build_vectors(
            &lda, &matrix, &vocab, config, out, &progress,
        )?)
    };
    let summary = TrainSummary {
        vocab: vocab.len(),
        words_read,
        words_kept,
        nonzeros: matrix.columns.len(),
        tokens: lda.num_tokens(),
        topics: config.lda.topics,
        iterations: lda.iteration(),
        log_likelihood: last.map(|s| s.log_likelihood),
        count_s,
        sample_s,
        seconds_per_iteration: sample_s / done.max(1) as f64,
        tokens_per_s: (lda.num_tokens() * done) as f64 / sample_s.max(1e-9),
        vectors,
        peak_rss_mb: peak_rss_mb(),
        stopped,
    };
    run::write_json(&out.join("summary.json"), &summary)?;
    Ok(summary)
}

type Counted = (Vec<(String, u64)>, SparseCounts, u64, u64);

/// The vocabulary and counts: read back from `out` when resuming a run that
/// has them, else counted and saved there.
fn counts(
    config: &SensesConfig,
    out: &Path,
    resume: bool,
    progress: &impl Fn(&str),
) -> Result<Counted> {
    let (vocab_path, matrix_path) = (out.join("vocab.tsv"), out.join("cooc.safetensors"));
    if resume && matrix_path.exists() && vocab_path.exists() {
        let vocab = words::read_word_counts(&vocab_path)?;
        let matrix = SparseCounts::load(&matrix_path)?;
        if matrix.rows != vocab.len() {
            return Err(Error::data(
                &matrix_path,
                format!(
                    "{} rows for the {} words of vocab.tsv",
                    matrix.rows,
                    vocab.len()
                ),
            ));
        }
        let summary: Option<TrainSummary> = run::read_json(&out.join("summary.json")).ok();
        let (read, kept) = summary.map_or((0, 0), |s| (s.words_read, s.words_kept));
        return Ok((vocab, matrix, read, kept));
    }
    let start = Instant::now();
    let mut documents = read_documents(&config.source())?;
    if config.cooc.letters_only {
        documents = documents.letters_only();
    }
    if config.pseudo.pairs > 0 {
        let (training, test) = pseudo::make(documents, &config.pseudo, config.seed)?;
        documents = training;
        run::write_json(&out.join(pseudo::TEST_FILE), &test)?;
        progress(&format!(
            "{} pseudo-words made, {} held-out instances in {}",
            test.pairs.len(),
            test.instances.len(),
            pseudo::TEST_FILE
        ));
    }
    progress(&format!(
        "read {} documents, {} words in {:.1} s",
        documents.docs.len(),
        documents.words.iter().map(|(_, c)| c).sum::<u64>(),
        start.elapsed().as_secs_f64()
    ));
    let counted = cooc::count(&documents.docs, &documents.words, &config.cooc, config.seed)?;
    progress(&format!(
        "counted {} co-occurrences ({} distinct) in {:.1} s",
        counted.matrix.total(),
        counted.matrix.columns.len(),
        start.elapsed().as_secs_f64()
    ));
    words::write_word_counts(&vocab_path, &counted.vocab)?;
    counted.matrix.save(&matrix_path)?;
    // Written now so that a resumed run can report what was read.
    run::write_json(
        &out.join("summary.json"),
        &serde_json::json!({"words_read": counted.words_read, "words_kept": counted.words_kept}),
    )?;
    Ok((
        counted.vocab,
        counted.matrix,
        counted.words_read,
        counted.words_kept,
    ))
}

fn save_state(dir: &Path, lda: &Lda, seed: u64) -> Result<()> {
    let info = StateInfo {
        format_version: STATE_VERSION,
        iteration: lda.iteration(),
        tokens: lda.num_tokens(),
        topics: lda.config().topics,
        seed,
    };
    let mut bytes = Vec::with_capacity(lda.num_tokens() * 4);
    for z in lda.topics().into_iter().chain(lda.proposals()) {
        bytes.extend_from_slice(&z.to_le_bytes());
    }
    run::write_dir_atomic(dir, |tmp| {
        std::fs::write(tmp.join("topics.u16"), &bytes)
            .map_err(|e| Error::io(tmp.join("topics.u16"), e))?;
        run::write_json(&tmp.join("state.json"), &info)
    })
}

fn load_state(dir: &Path, matrix: &SparseCounts, config: &SensesConfig) -> Result<Lda> {
    let info_path = dir.join("state.json");
    let info: StateInfo = run::read_json(&info_path)?;
    if info.format_version != STATE_VERSION {
        return Err(Error::data(
            &info_path,
            format!(
                "sampler state version {} is not supported (this brisk reads version {STATE_VERSION})",
                info.format_version
            ),
        ));
    }
    if info.topics != config.lda.topics || info.seed != config.seed {
        return Err(Error::data(
            &info_path,
            format!(
                "the saved sampler has {} topics and seed {}, the config {} and {}",
                info.topics, info.seed, config.lda.topics, config.seed
            ),
        ));
    }
    let path = dir.join("topics.u16");
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    if bytes.len() != info.tokens * 4 {
        return Err(Error::data(
            &path,
            format!("{} bytes for {} tokens", bytes.len(), info.tokens),
        ));
    }
    let values: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    let (topics, proposals) = values.split_at(info.tokens);
    Lda::restore(
        matrix,
        &config.lda,
        config.seed,
        info.iteration,
        topics.to_vec(),
        proposals.to_vec(),
    )
}

/// Point estimates, merged senses and the final vectors, written as
/// `model/` (the counts and the clusters), `vectors.txt` and `senses.tsv`.
fn build_vectors(
    lda: &Lda,
    matrix: &SparseCounts,
    vocab: &[(String, u64)],
    config: &SensesConfig,
    out: &Path,
    progress: &impl Fn(&str),
) -> Result<VectorsReport> {
    let start = Instant::now();
    let sizes = config.vectors.sizes(config.lda.topics)?;
    let model = out.join("model");
    std::fs::create_dir_all(&model).map_err(|e| Error::io(&model, e))?;
    let (doc_topics, topic_words) = (lda.doc_topic_matrix(), lda.topic_word_matrix());
    doc_topics.save(&model.join("doc_topics.safetensors"))?;
    topic_words.save(&model.join("topic_words.safetensors"))?;
    let context_counts = matrix.column_totals();
    run::write_json(&model.join(super::model::CONTEXT_COUNTS), &context_counts)?;
    let estimates = PointEstimates::new(
        doc_topics,
        &topic_words,
        &context_counts,
        config.lda.alpha,
        config.lda.beta,
    )?;
    let merging = Instant::now();
    let senses = estimates.truncated_senses(sizes.merge_words);
    let clusters = vectors::merge_senses(&senses, &estimates.sense_prior, sizes.merged);
    let merge_s = merging.elapsed().as_secs_f64();
    progress(&format!(
        "merged {} senses into {} in {:.1} s",
        sizes.topics, clusters.count, merge_s
    ));
    // Written last of model/: its presence marks a finished model.
    run::write_json(&model.join("clusters.json"), &clusters)?;
    let word_vectors: Vec<Sparse> = (0..vocab.len())
        .into_par_iter()
        .map(|w| estimates.merged_vector(w, &clusters, sizes.final_nnz))
        .collect();
    let words: Vec<&str> = vocab.iter().map(|(w, _)| w.as_str()).collect();
    vectors::write_word2vec(
        &out.join("vectors.txt"),
        &words,
        &word_vectors,
        clusters.count,
        false,
    )?;
    write_senses(&out.join("senses.tsv"), &estimates, &clusters, vocab)?;
    let mean_nnz =
        word_vectors.iter().map(|v| v.len()).sum::<usize>() as f64 / vocab.len().max(1) as f64;
    Ok(VectorsReport {
        sizes,
        clusters: clusters.count,
        mean_nnz,
        merge_s,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Words shown per merged sense in `senses.tsv`.
const SENSE_WORDS: usize = 10;

/// One line per merged sense: its number, prior p(c) and most probable
/// context words.
fn write_senses(
    path: &Path,
    estimates: &PointEstimates,
    clusters: &Clusters,
    vocab: &[(String, u64)],
) -> Result<()> {
    let lines: Vec<String> = (0..clusters.count)
        .into_par_iter()
        .map(|c| {
            let words: Vec<&str> = estimates
                .cluster_words(clusters, c, SENSE_WORDS)
                .iter()
                .map(|&(w, _)| vocab[w as usize].0.as_str())
                .collect();
            format!("{c}\t{:.6}\t{}", clusters.prior[c], words.join(" "))
        })
        .collect();
    let text = format!("sense\tprior\ttop_words\n{}\n", lines.join("\n"));
    run::write_atomic(path, text.as_bytes())
}
