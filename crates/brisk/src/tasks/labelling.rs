//! Training, scoring and applying word-level models (the BiLSTM-CRF
//! labeller of [`super::tagger`], the biaffine parser of
//! [`super::biaffine`]) over concatenated embeddings ([`crate::embed`]):
//! one config, one loop, one run directory layout.
//!
//! Training: Adam, the learning rate decayed as lr / (1 + 0.05·epoch)
//! (Ma & Hovy's schedule), gradient norm clipped at 5, batches of
//! sentences of similar length, dev scored after each epoch, the best
//! model kept, early stopping. A checkpoint after each epoch makes the run
//! resumable.
//!
//! Run directory: `model.json` (the resolved config, the task, the
//! vocabularies and labels: what prediction rebuilds the model from),
//! `config.toml`, `best/model.safetensors`, `checkpoints/epoch-NNNN/`,
//! `metrics.jsonl` (one row per epoch), `predictions-dev.conll`,
//! `predictions-test.conll` and `summary.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::biaffine::{self, Parser};
use super::bilstm::{columns_of, BiLstm};
use super::scheme::{span_f1, Mode};
use super::tagger::{tag_set, Tagger};
use super::word_tasks::{Labelled, WordTask, WordTaskKind, WordTaskSpec};
use crate::corpus::generated::Rng;
use crate::embed::encoder::{FeatureEncoder, Source};
use crate::embed::static_vectors::StaticVectors;
use crate::embed::{vocabularies, Embedder, EmbeddingConfig, FeatureTable, Vocabulary};
use crate::error::{Error, Result};
use crate::model::{Ctx, Params};
use crate::run::{read_json, write_atomic, write_json};
use crate::train::optim::{clip_scale, grad_norm, gradients_or_zeros, AdamW};

/// A word-level model: a loss to train and predictions to score.
pub trait WordModel: Send + Sync {
    /// The mean loss over sentences `ids` of `split`.
    fn loss(&self, split: &Split, ids: &[usize], ctx: &mut Ctx) -> Result<Tensor>;
    /// Predictions for every sentence of `split`.
    fn predict(&self, split: &Split, batch_size: usize) -> Result<Predicted>;
    /// The features and BiLSTMs under the model's scorer.
    fn encoder(&self) -> &WordEncoder;
}

/// Predictions: a label per word (tags, or relations) and, from a parser,
/// a head per word (0: the root).
#[derive(Debug, Clone, Default)]
pub struct Predicted {
    pub labels: Vec<Vec<String>>,
    pub heads: Vec<Vec<usize>>,
}

/// The model a saved config describes, its parameters created in `params`.
pub fn build(params: &mut Params, saved: &SavedModel, rng: &mut Rng) -> Result<Box<dyn WordModel>> {
    Ok(match saved.task.kind {
        WordTaskKind::Tagging => Box::new(Tagger::new(params, saved, rng)?),
        WordTaskKind::Parsing => Box::new(Parser::new(params, saved, rng)?),
    })
}

/// The labels a model predicts: the CRF's tags, or the relations.
fn label_set(spec: &WordTaskSpec, train: &[Labelled]) -> Vec<String> {
    match spec.kind {
        WordTaskKind::Tagging => tag_set(spec.scheme, train),
        WordTaskKind::Parsing => {
            let set: std::collections::BTreeSet<&String> =
                train.iter().flat_map(|s| s.labels.iter()).collect();
            set.into_iter().cloned().collect()
        }
    }
}

/// Everything a tagging or parsing run is configured by (`--config`,
/// `--set`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WordModelConfig {
    pub embeddings: Vec<EmbeddingConfig>,
    pub model: ModelSection,
    pub train: TrainSection,
}

/// `[model]`: the BiLSTM over the concatenation and, for the parser, the
/// biaffine scorers' MLPs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Hidden size of each direction.
    pub hidden: usize,
    pub layers: usize,
    /// Dropout on the concatenated features and on each BiLSTM's output
    /// (and the parser's MLPs).
    pub dropout: f64,
    /// Parser: width of the arc MLPs (Dozat & Manning: 500).
    #[serde(default = "default_arc_mlp")]
    pub arc_mlp: usize,
    /// Parser: width of the relation MLPs (Dozat & Manning: 100).
    #[serde(default = "default_rel_mlp")]
    pub rel_mlp: usize,
    /// Scale each embedding by a trained σ(w) ("All + weight" in ACE's
    /// comparison).
    #[serde(default)]
    pub embedding_weights: bool,
}

fn default_arc_mlp() -> usize {
    500
}

fn default_rel_mlp() -> usize {
    100
}

/// `[train]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    pub epochs: usize,
    /// Sentences per batch.
    pub batch_size: usize,
    pub learning_rate: f64,
    pub max_grad_norm: f64,
    /// Stop after this many epochs without a better dev score (0: never).
    pub patience: usize,
    /// Keep only the first N training sentences (0: all).
    pub max_train: usize,
    pub seed: u64,
}

impl Default for WordModelConfig {
    fn default() -> Self {
        WordModelConfig {
            embeddings: vec![
                EmbeddingConfig::Word(Default::default()),
                EmbeddingConfig::Chars(Default::default()),
            ],
            model: ModelSection {
                hidden: 256,
                layers: 1,
                dropout: 0.33,
                arc_mlp: default_arc_mlp(),
                rel_mlp: default_rel_mlp(),
                embedding_weights: false,
            },
            train: TrainSection {
                epochs: 30,
                batch_size: 32,
                learning_rate: 2e-3,
                max_grad_norm: 5.0,
                patience: 5,
                max_train: 0,
                seed: 0,
            },
        }
    }
}

impl WordModelConfig {
    /// The parser's defaults: Dozat & Manning's, with two BiLSTM layers of
    /// 256 instead of three of 400 (two cores).
    pub fn parser_default() -> WordModelConfig {
        let mut c = WordModelConfig::default();
        c.model.layers = 2;
        c.model.hidden = 256;
        c
    }

    /// The config as TOML, as written to a run's `config.toml`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a tagger config serialises to TOML")
    }

    pub fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.embeddings.is_empty() {
            return bad("`embeddings`: at least one embedding is needed");
        }
        if self.model.hidden == 0 || self.model.layers == 0 {
            return bad("`model.hidden` and `model.layers` must be at least 1");
        }
        if !(0.0..1.0).contains(&self.model.dropout) {
            return bad("`model.dropout` must be in [0, 1)");
        }
        if self.train.epochs == 0 || self.train.batch_size == 0 {
            return bad("`train.epochs` and `train.batch_size` must be at least 1");
        }
        for e in &self.embeddings {
            if let EmbeddingConfig::Encoder(c) = e {
                c.last_layers()?;
            }
        }
        Ok(())
    }

    /// Paths made absolute, so the saved model works from any folder.
    fn absolute(mut self) -> Result<WordModelConfig> {
        for e in &mut self.embeddings {
            let path = match e {
                EmbeddingConfig::Encoder(c) => &mut c.model,
                EmbeddingConfig::Static(c) => &mut c.path,
                _ => continue,
            };
            *path = std::fs::canonicalize(&*path).map_err(|err| Error::io(&*path, err))?;
        }
        Ok(self)
    }
}

/// A split's sentences and frozen features.
pub struct Split {
    pub data: Vec<Labelled>,
    pub words: Vec<Vec<String>>,
    /// One entry per embedding (`None` for trained ones).
    pub frozen: Vec<Option<FeatureTable>>,
}

impl Split {
    pub fn new(data: Vec<Labelled>) -> Split {
        let words = data.iter().map(|s| s.words.clone()).collect();
        Split {
            data,
            words,
            frozen: Vec::new(),
        }
    }

    fn frozen_refs(&self) -> Vec<Option<&FeatureTable>> {
        self.frozen.iter().map(Option::as_ref).collect()
    }

    /// Sentence indices, longest first (batches with little padding).
    pub fn by_length(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.words.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.words[i].len()));
        order
    }
}

/// What both models share: the concatenated features, dropout, and the
/// BiLSTM layers over them; for the parser, a trained ROOT word first.
pub struct WordEncoder {
    embedder: Embedder,
    lstms: Vec<BiLstm>,
    /// `[1, 1, width]`: the features of the parser's ROOT.
    root: Option<Tensor>,
    dropout: f64,
    hidden: usize,
}

impl WordEncoder {
    pub fn new(
        params: &mut Params,
        saved: &SavedModel,
        root: bool,
        rng: &mut Rng,
    ) -> Result<WordEncoder> {
        let cfg = &saved.config;
        let embedder = Embedder::new(
            params,
            &cfg.embeddings,
            &saved.vocabularies,
            &saved.frozen_dims,
            cfg.model.embedding_weights,
            rng,
        )?;
        if let Some(selection) = &saved.selection {
            embedder.select(selection)?;
        }
        let root = if root {
            Some(params.normal("root", &[1, 1, embedder.width], 0.1, rng)?)
        } else {
            None
        };
        let mut input = embedder.width;
        let mut lstms = Vec::new();
        for l in 0..cfg.model.layers {
            lstms.push(BiLstm::new(
                params,
                &format!("lstm.{l}"),
                input,
                cfg.model.hidden,
                rng,
            )?);
            input = 2 * cfg.model.hidden;
        }
        Ok(WordEncoder {
            embedder,
            lstms,
            root,
            dropout: cfg.model.dropout,
            hidden: cfg.model.hidden,
        })
    }

    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// The width of each word's output.
    pub fn width(&self) -> usize {
        2 * self.hidden
    }

    pub fn dropout(&self) -> f64 {
        self.dropout
    }

    /// `[batch, longest (+1 with a ROOT), 2·hidden]` for sentences `ids`.
    pub fn forward(&self, split: &Split, ids: &[usize], ctx: &mut Ctx) -> Result<Tensor> {
        let sentences: Vec<&[String]> = ids.iter().map(|&i| split.words[i].as_slice()).collect();
        let mut lengths: Vec<usize> = sentences.iter().map(|s| s.len()).collect();
        let mut x = self
            .embedder
            .forward(&sentences, ids, &split.frozen_refs())?;
        // With embeddings left out (ACE), the first BiLSTM reads only the
        // selected columns.
        let blocks = self.embedder.selected_blocks();
        if let Some(root) = &self.root {
            let root = match &blocks {
                Some(b) => columns_of(root, b, 2)?,
                None => root.clone(),
            };
            let (b, _, d) = x.dims3()?;
            x = Tensor::cat(&[&root.broadcast_as((b, 1, d))?, &x], 1)?;
            for l in &mut lengths {
                *l += 1;
            }
        }
        x = ctx.dropout(&x, self.dropout)?;
        for (i, lstm) in self.lstms.iter().enumerate() {
            let cols = if i == 0 { blocks.as_deref() } else { None };
            x = ctx.dropout(&lstm.forward_columns(&x, &lengths, cols)?, self.dropout)?;
        }
        Ok(x)
    }
}

/// Computes the frozen features of every split (encoders: from the cache
/// when there). Returns each embedding's width (0 for trained ones) and
/// the seconds spent running encoders.
pub fn compute_features(
    configs: &[EmbeddingConfig],
    splits: &mut [&mut Split],
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<usize>, f64)> {
    let mut dims = vec![0; configs.len()];
    let mut encoder_s = 0.0;
    for split in splits.iter_mut() {
        split.frozen = configs.iter().map(|_| None).collect();
    }
    for (i, config) in configs.iter().enumerate() {
        match config {
            EmbeddingConfig::Encoder(c) => {
                let mut enc = FeatureEncoder::new(c)?;
                for split in splits.iter_mut() {
                    let started = Instant::now();
                    let (table, source) = enc.features(&split.words, progress)?;
                    if source == Source::Encoder {
                        encoder_s += started.elapsed().as_secs_f64();
                    }
                    progress(&format!(
                        "features of {} ({} sentences): {}",
                        config.label(),
                        split.words.len(),
                        match source {
                            Source::Cache => "read from the cache".to_string(),
                            Source::Encoder =>
                                format!("computed in {:.1} s", started.elapsed().as_secs_f64()),
                        }
                    ));
                    dims[i] = table.dim;
                    split.frozen[i] = Some(table);
                }
            }
            EmbeddingConfig::Static(c) => {
                let mut wanted = std::collections::HashSet::new();
                for split in splits.iter() {
                    for w in split.words.iter().flatten() {
                        wanted.extend(StaticVectors::forms(w));
                    }
                }
                let vectors = StaticVectors::read(&c.path, &|w| wanted.contains(w))?;
                for split in splits.iter_mut() {
                    let (table, missing) = vectors.table(&split.words);
                    progress(&format!(
                        "{}: {missing} of {} words have no vector (zeros)",
                        config.label(),
                        split.words.iter().map(Vec::len).sum::<usize>()
                    ));
                    dims[i] = table.dim;
                    split.frozen[i] = Some(table);
                }
            }
            _ => {}
        }
    }
    Ok((dims, encoder_s))
}

/// What prediction rebuilds a trained model from (`model.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedModel {
    pub config: WordModelConfig,
    pub task: WordTaskSpec,
    pub vocabularies: Vec<Vocabulary>,
    pub frozen_dims: Vec<usize>,
    /// The tagger's CRF tags, or the parser's relations.
    pub labels: Vec<String>,
    /// The embeddings the model reads (ACE's choice; the others are
    /// zeros); `None`: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<Vec<bool>>,
}

/// The task's metric on predictions: span F1 (conlleval's reading),
/// accuracy, or attachment scores (LAS first, then UAS), with details.
pub fn score(spec: &WordTaskSpec, gold: &[Labelled], predicted: &Predicted) -> Scores {
    let gold_labels: Vec<Vec<String>> = gold.iter().map(|s| s.labels.clone()).collect();
    match spec.metric.as_str() {
        "span-f1" => {
            let s = span_f1(&gold_labels, &predicted.labels, Mode::Conlleval);
            Scores {
                main: s.f1,
                metric: "f1".into(),
                details: serde_json::json!({
                    "precision": s.precision,
                    "recall": s.recall,
                    "f1": s.f1,
                    "gold_spans": s.gold,
                    "predicted_spans": s.predicted,
                    "per_type_f1": s.per_type.iter().map(|(k, v)| (k.clone(), v.2)).collect::<BTreeMap<_, _>>(),
                }),
            }
        }
        "attachment" => {
            let a = biaffine::attachment(gold, predicted);
            Scores {
                main: a.las,
                metric: "las".into(),
                details: serde_json::json!({
                    "las": a.las,
                    "uas": a.uas,
                    "words": a.words,
                    "punctuation_excluded": a.excluded,
                }),
            }
        }
        _ => {
            let (mut right, mut all) = (0usize, 0usize);
            for (g, p) in gold_labels.iter().zip(&predicted.labels) {
                all += g.len();
                right += g.iter().zip(p).filter(|(a, b)| a == b).count();
            }
            let acc = right as f64 / all.max(1) as f64;
            Scores {
                main: acc,
                metric: "accuracy".into(),
                details: serde_json::json!({ "accuracy": acc, "words": all }),
            }
        }
    }
}

/// A score on a split.
#[derive(Debug, Clone, Serialize)]
pub struct Scores {
    pub main: f64,
    pub metric: String,
    pub details: serde_json::Value,
}

/// CoNLL output, one word per line: its position (1-based), the word,
/// the gold label (and head) when known, the predicted label (and head).
pub fn conll_text(
    words: &[Vec<String>],
    gold: Option<&[Labelled]>,
    predicted: &Predicted,
) -> String {
    let mut text = String::new();
    let parsing = !predicted.heads.is_empty();
    for (i, w) in words.iter().enumerate() {
        for (j, word) in w.iter().enumerate() {
            let mut fields = vec![(j + 1).to_string(), word.clone()];
            if let Some(g) = gold {
                if parsing {
                    fields.push(g[i].heads[j].to_string());
                }
                fields.push(g[i].labels[j].clone());
            }
            if parsing {
                fields.push(predicted.heads[i][j].to_string());
            }
            fields.push(predicted.labels[i][j].clone());
            text.push_str(&fields.join("\t"));
            text.push('\n');
        }
        text.push('\n');
    }
    text
}

/// [`conll_text`] written atomically to `path`.
pub fn write_conll(
    path: &Path,
    words: &[Vec<String>],
    gold: Option<&[Labelled]>,
    predicted: &Predicted,
) -> Result<()> {
    write_atomic(path, conll_text(words, gold, predicted).as_bytes())
}

/// Options of one training run.
pub struct TrainOptions<'a> {
    pub resume: bool,
    /// Set by Ctrl-C: stop after the current batch (the last epoch's
    /// checkpoint stays the resume point).
    pub stop: &'a AtomicBool,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WordSummary {
    pub task: String,
    pub embeddings: Vec<String>,
    pub metric: String,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub dev: f64,
    pub test: Option<f64>,
    pub dev_details: serde_json::Value,
    pub test_details: Option<serde_json::Value>,
    pub parameters: usize,
    /// Mean seconds per training epoch (dev scoring excluded).
    pub epoch_s: f64,
    /// Seconds spent running encoders for features (0 when cached).
    pub encoder_s: f64,
    pub peak_rss_mb: f64,
    pub stopped: bool,
}

/// `checkpoints/epoch-NNNN/state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EpochState {
    format_version: u32,
    epoch: usize,
    step: u64,
    best: Option<(f64, usize)>,
    stale: usize,
    epoch_s: Vec<f64>,
}

const STATE_VERSION: u32 = 1;

/// A task's data read and checked, and the config: everything that can
/// fail on bad input, done before a run directory exists.
pub struct Prepared {
    pub task: WordTask,
    pub config: WordModelConfig,
    pub train: Split,
    pub dev: Split,
    pub test: Option<Split>,
}

/// Reads and checks the task's files.
pub fn prepare(task: WordTask, config: WordModelConfig) -> Result<Prepared> {
    config.check()?;
    let config = config.absolute()?;
    let mut train = task.read(&task.train)?;
    if config.train.max_train > 0 {
        train.truncate(config.train.max_train);
    }
    let dev = task.read(&task.dev)?;
    let test = task.test.as_ref().map(|t| task.read(t)).transpose()?;
    Ok(Prepared {
        train: Split::new(train),
        dev: Split::new(dev),
        test: test.map(Split::new),
        task,
        config,
    })
}

fn epoch_dir(out: &Path, epoch: usize) -> PathBuf {
    out.join("checkpoints").join(format!("epoch-{epoch:04}"))
}

fn latest_epoch(out: &Path) -> Result<Option<usize>> {
    let dir = out.join("checkpoints");
    if !dir.is_dir() {
        return Ok(None);
    }
    let mut best = None;
    for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let name = entry.map_err(|e| Error::io(&dir, e))?.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix("epoch-"))
            .and_then(|n| n.parse::<usize>().ok())
        {
            best = best.max(Some(n));
        }
    }
    Ok(best)
}

/// Writes an epoch's checkpoint atomically and removes older ones.
fn save_epoch(out: &Path, params: &Params, opt: &AdamW, state: &EpochState) -> Result<()> {
    crate::run::write_dir_atomic(&epoch_dir(out, state.epoch), |tmp| {
        params.save(&tmp.join("model.safetensors"))?;
        opt.save(&tmp.join("optimizer.safetensors"))?;
        write_json(&tmp.join("state.json"), state)
    })?;
    for e in 1..state.epoch {
        let old = epoch_dir(out, e);
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|err| Error::io(&old, err))?;
        }
    }
    Ok(())
}

/// Batches of sentences of similar length, in an order fixed by the seed
/// and the epoch.
fn epoch_batches(words: &[Vec<String>], batch: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    let mut rng = Rng::new(seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut order: Vec<usize> = (0..words.len()).collect();
    shuffle(&mut order, &mut rng);
    // Sort within windows of 50 batches, so each batch has little padding
    // yet batches still differ between epochs.
    for window in order.chunks_mut(50 * batch) {
        window.sort_by_key(|&i| words[i].len());
    }
    let mut batches: Vec<Vec<usize>> = order.chunks(batch).map(<[usize]>::to_vec).collect();
    shuffle(&mut batches, &mut rng);
    batches
}

fn shuffle<T>(v: &mut [T], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i + 1));
    }
}

/// The peak resident memory of this process in MB (Linux; 0 elsewhere).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A model ready to train on prepared splits: their frozen features
/// computed, the model's description, its parameters.
pub struct Setup {
    pub saved: SavedModel,
    pub params: Params,
    pub model: Box<dyn WordModel>,
    /// Seconds spent running encoders for features (0 when cached).
    pub encoder_s: f64,
}

/// Computes the features of every split and builds the model: `saved`
/// (a resumed run's `model.json`) or a new description from the
/// training data.
pub fn setup(
    prepared: &mut Prepared,
    saved: Option<SavedModel>,
    progress: &mut dyn FnMut(&str),
) -> Result<Setup> {
    let config = &prepared.config;
    let (frozen_dims, encoder_s) = {
        let mut splits: Vec<&mut Split> = vec![&mut prepared.train, &mut prepared.dev];
        if let Some(t) = prepared.test.as_mut() {
            splits.push(t);
        }
        compute_features(&config.embeddings, &mut splits, progress)?
    };
    let saved = match saved {
        Some(saved) => saved,
        None => SavedModel {
            vocabularies: vocabularies(&config.embeddings, &prepared.train.words),
            labels: label_set(&prepared.task.spec, &prepared.train.data),
            frozen_dims,
            config: config.clone(),
            task: prepared.task.spec.clone(),
            selection: None,
        },
    };
    let mut params = Params::new(Device::Cpu, DType::F32);
    let model = build(&mut params, &saved, &mut Rng::new(config.train.seed))?;
    Ok(Setup {
        saved,
        params,
        model,
        encoder_s,
    })
}

/// Adam without weight decay, as the word-level models train.
pub fn optimizer(params: &Params) -> Result<AdamW> {
    let mut train_cfg = crate::config::Preset::Tiny.config().train;
    train_cfg.weight_decay = 0.0;
    train_cfg.adam_epsilon = 1e-8;
    AdamW::new(params, &train_cfg)
}

/// The learning rate of `epoch` (from 1): lr / (1 + 0.05·(epoch − 1)).
pub fn epoch_lr(train: &TrainSection, epoch: usize) -> f64 {
    train.learning_rate / (1.0 + 0.05 * (epoch - 1) as f64)
}

/// One pass over the training split. `epoch` fixes the batch order and
/// dropout; `label` starts the progress lines. Returns the mean loss per
/// sentence, or `None` when `stop` was set (the pass is then unfinished).
#[allow(clippy::too_many_arguments)]
pub fn train_epoch(
    model: &dyn WordModel,
    params: &Params,
    opt: &mut AdamW,
    train: &Split,
    cfg: &TrainSection,
    epoch: usize,
    lr: f64,
    step: &mut u64,
    stop: &AtomicBool,
    label: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<Option<f64>> {
    let batches = epoch_batches(&train.words, cfg.batch_size, cfg.seed, epoch);
    let mut dropout_rng = Rng::new(cfg.seed.wrapping_add(0x5eed) ^ (epoch as u64) << 20);
    let started = Instant::now();
    let mut heartbeat = crate::progress::Heartbeat::new();
    let (mut loss_sum, mut sentences) = (0.0, 0usize);
    for (b, ids) in batches.iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let loss = model.loss(train, ids, &mut Ctx::train(&mut dropout_rng))?;
        let value = loss.to_scalar::<f32>()? as f64;
        if !value.is_finite() {
            return Err(Error::Training(format!(
                "the loss became {value} in epoch {epoch} (try a smaller train.learning_rate)"
            )));
        }
        loss_sum += value * ids.len() as f64;
        sentences += ids.len();
        // Unselected embeddings (ACE) get zeros: with Adam's moments
        // fresh each episode, they stay as they are.
        let embedder = model.encoder().embedder();
        let grads = gradients_or_zeros(params, &loss.backward()?, &|n| embedder.is_unselected(n))?;
        let norm = grad_norm(&grads)?;
        opt.update(&grads, lr, clip_scale(norm, cfg.max_grad_norm))?;
        *step += 1;
        if heartbeat.due() {
            let secs = started.elapsed().as_secs_f64();
            let done = (b + 1) as f64;
            progress(&format!(
                "{label}  batch {}/{}  loss {:.3}  {:.0} sentences/s  epoch ends in {}",
                b + 1,
                batches.len(),
                loss_sum / sentences.max(1) as f64,
                sentences as f64 / secs,
                crate::progress::short_duration(secs / done * (batches.len() as f64 - done)),
            ));
        }
    }
    Ok(Some(loss_sum / sentences.max(1) as f64))
}

/// Trains a tagger or parser into `out` (which exists), evaluating dev after each
/// epoch and test with the best model at the end.
pub fn train(
    mut prepared: Prepared,
    out: &Path,
    options: &TrainOptions,
    mut progress: impl FnMut(&str),
) -> Result<WordSummary> {
    let config = prepared.config.clone();
    let spec = prepared.task.spec.clone();
    let resumed = if options.resume && out.join("model.json").exists() {
        Some(read_json::<SavedModel>(&out.join("model.json"))?)
    } else {
        None
    };
    let Setup {
        saved,
        params,
        model,
        encoder_s,
    } = setup(&mut prepared, resumed, &mut progress)?;
    let (train, dev) = (&prepared.train, &prepared.dev);
    let mut opt = optimizer(&params)?;

    let mut state = EpochState {
        format_version: STATE_VERSION,
        epoch: 0,
        step: 0,
        best: None,
        stale: 0,
        epoch_s: Vec::new(),
    };
    let mut log = String::new();
    match latest_epoch(out)?.filter(|_| options.resume) {
        Some(epoch) => {
            let dir = epoch_dir(out, epoch);
            state = read_json(&dir.join("state.json"))?;
            if state.format_version != STATE_VERSION {
                return Err(Error::data(
                    dir.join("state.json"),
                    format!(
                        "checkpoint format {}, this brisk reads {STATE_VERSION}",
                        state.format_version
                    ),
                ));
            }
            params.load(&dir.join("model.safetensors"))?;
            opt.load(&dir.join("optimizer.safetensors"), state.step)?;
            let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default();
            for line in text.lines() {
                let row: serde_json::Value = serde_json::from_str(line)
                    .map_err(|e| Error::data(out.join("metrics.jsonl"), e.to_string()))?;
                if row["epoch"].as_u64().is_some_and(|e| e as usize <= epoch) {
                    log.push_str(line);
                    log.push('\n');
                }
            }
            progress(&format!("resuming after epoch {epoch}"));
        }
        None => {
            write_json(&out.join("model.json"), &saved)?;
        }
    }
    let parameters = params.count();
    let mut stopped = false;
    while state.epoch < config.train.epochs {
        if config.train.patience > 0 && state.stale >= config.train.patience {
            break;
        }
        let epoch = state.epoch + 1;
        let lr = epoch_lr(&config.train, epoch);
        let started = Instant::now();
        let label = format!("epoch {epoch}/{}", config.train.epochs);
        let Some(loss) = train_epoch(
            model.as_ref(),
            &params,
            &mut opt,
            train,
            &config.train,
            epoch,
            lr,
            &mut state.step,
            options.stop,
            &label,
            &mut progress,
        )?
        else {
            stopped = true;
            progress(&format!(
                "stopped in epoch {epoch}; resume from the end of epoch {} with --resume",
                state.epoch
            ));
            break;
        };
        let train_s = started.elapsed().as_secs_f64();
        let eval_started = Instant::now();
        let predicted = model.predict(dev, 64)?;
        let scores = score(&spec, &dev.data, &predicted);
        let eval_s = eval_started.elapsed().as_secs_f64();
        state.epoch = epoch;
        state.epoch_s.push(train_s);
        let improved = state.best.is_none_or(|(b, _)| scores.main > b);
        if improved {
            params.save(&ensure_dir(&out.join("best"))?.join("model.safetensors"))?;
            write_conll(
                &out.join("predictions-dev.conll"),
                &dev.words,
                Some(&dev.data),
                &predicted,
            )?;
            state.best = Some((scores.main, epoch));
            state.stale = 0;
        } else {
            state.stale += 1;
        }
        let row = serde_json::json!({
            "epoch": epoch,
            "step": state.step,
            "loss": loss,
            "lr": lr,
            "train_s": train_s,
            "eval_s": eval_s,
            "dev": scores.main,
            "dev_details": scores.details,
        });
        log.push_str(&row.to_string());
        log.push('\n');
        write_atomic(&out.join("metrics.jsonl"), log.as_bytes())?;
        save_epoch(out, &params, &opt, &state)?;
        progress(&format!(
            "epoch {epoch}/{}  loss {:.3}  dev {} {:.2}{}  ({:.0} s train, {:.1} s dev)",
            config.train.epochs,
            loss,
            scores.metric,
            100.0 * scores.main,
            if improved { " (best)" } else { "" },
            train_s,
            eval_s
        ));
    }
    let (best_score, best_epoch) = state.best.ok_or_else(|| {
        Error::Training("stopped before the first epoch ended: nothing to keep".into())
    })?;
    params.load(&out.join("best").join("model.safetensors"))?;
    let (dev_scores, test_scores) =
        final_scores(model.as_ref(), &spec, dev, prepared.test.as_ref(), out)?;
    let summary = WordSummary {
        task: spec.name.clone(),
        embeddings: config
            .embeddings
            .iter()
            .map(EmbeddingConfig::label)
            .collect(),
        metric: dev_scores.metric.clone(),
        best_epoch,
        epochs_run: state.epoch,
        dev: best_score,
        test: test_scores.as_ref().map(|s| s.main),
        dev_details: dev_scores.details,
        test_details: test_scores.map(|s| s.details),
        parameters,
        epoch_s: state.epoch_s.iter().sum::<f64>() / state.epoch_s.len().max(1) as f64,
        encoder_s,
        peak_rss_mb: peak_rss_mb(),
        stopped,
    };
    write_json(&out.join("summary.json"), &summary)?;
    Ok(summary)
}

/// The kept model's dev scores, and its test scores with the test
/// predictions written to `out/predictions-test.conll`.
pub fn final_scores(
    model: &dyn WordModel,
    spec: &WordTaskSpec,
    dev: &Split,
    test: Option<&Split>,
    out: &Path,
) -> Result<(Scores, Option<Scores>)> {
    let dev_scores = score(spec, &dev.data, &model.predict(dev, 64)?);
    let test_scores = match test {
        Some(test) => {
            let predicted = model.predict(test, 64)?;
            write_conll(
                &out.join("predictions-test.conll"),
                &test.words,
                Some(&test.data),
                &predicted,
            )?;
            Some(score(spec, &test.data, &predicted))
        }
        None => None,
    };
    Ok((dev_scores, test_scores))
}

fn ensure_dir(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    Ok(dir.to_path_buf())
}

/// A trained model loaded from its run directory, for `predict` and
/// `eval`.
pub struct Predictor {
    pub saved: SavedModel,
    pub model: Box<dyn WordModel>,
    _params: Params,
}

impl Predictor {
    pub fn load(run: &Path) -> Result<Predictor> {
        let file = run.join("model.json");
        if !file.is_file() {
            return Err(Error::data(
                run,
                "has no model.json (is it a `brisk tag train` or `brisk parse train` run directory?)",
            ));
        }
        let saved: SavedModel = read_json(&file)?;
        let mut params = Params::new(Device::Cpu, DType::F32);
        let model = build(&mut params, &saved, &mut Rng::new(0))?;
        params.load(&run.join("best").join("model.safetensors"))?;
        Ok(Predictor {
            saved,
            model,
            _params: params,
        })
    }

    /// Labels (and heads) for sentences of words.
    pub fn predict(
        &self,
        sentences: Vec<Vec<String>>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Predicted> {
        let data = sentences
            .into_iter()
            .map(|words| Labelled {
                labels: vec![String::new(); words.len()],
                heads: Vec::new(),
                words,
            })
            .collect();
        let mut split = Split::new(data);
        // New text is encoded, not cached: the cache is for data sets that
        // are read again.
        let mut configs = self.saved.config.embeddings.clone();
        for c in &mut configs {
            if let EmbeddingConfig::Encoder(e) = c {
                e.cache = false;
            }
        }
        compute_features(&configs, &mut [&mut split], progress)?;
        self.model.predict(&split, 64)
    }
}
