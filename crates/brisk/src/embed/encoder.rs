//! Word features from a pre-trained encoder (a HF BERT/ELECTRA checkpoint
//! or a `brisk pretrain` run), frozen as in ACE's search: a word's vector
//! is its first sub-token's hidden state, from the last layer (`layers =
//! "last"`, the default) or the mean of the last N layers (`"lastN"`, as
//! BERT's feature-based NER used the last four).
//!
//! Features are computed once per data set and cached as a memory-mapped
//! f16 file keyed by hashes of the model (weights, config, tokenizer, layer
//! choice) and of the words, so a second run does not run the encoder.
//! Sentences longer than the model's positions are encoded in windows of
//! whole words.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::FeatureTable;
use crate::encoder::Encoder;
use crate::error::{Error, Result};
use crate::model::Ctx;
use crate::run::write_json;

/// `kind = "encoder"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderConfig {
    /// A HF checkpoint directory or a brisk run (anything `--model` takes).
    pub model: PathBuf,
    /// `last`, or `lastN`: the mean of the last N layers.
    #[serde(default = "default_layers")]
    pub layers: String,
    /// Whether to keep the features in the cache folder.
    #[serde(default = "default_true")]
    pub cache: bool,
}

fn default_layers() -> String {
    "last".into()
}

fn default_true() -> bool {
    true
}

impl EncoderConfig {
    /// How many of the last layers are averaged.
    pub fn last_layers(&self) -> Result<usize> {
        let bad = || {
            Error::Config(format!(
                "encoder embedding: layers = {:?}; expected \"last\" or \"lastN\" (the mean of the last N layers)",
                self.layers
            ))
        };
        match self.layers.as_str() {
            "last" => Ok(1),
            other => other
                .strip_prefix("last")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&n| n >= 1)
                .ok_or_else(bad),
        }
    }
}

/// The folder features are cached in: `$BRISK_CACHE_DIR/features`, else
/// `~/.cache/brisk/features`.
pub fn cache_dir() -> PathBuf {
    let base = match std::env::var_os("BRISK_CACHE_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".cache/brisk"))
            .unwrap_or_else(|| PathBuf::from(".brisk-cache")),
    };
    base.join("features")
}

/// What a feature computation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Read from the cache: the encoder did not run.
    Cache,
    /// Computed by the encoder (and cached when asked).
    Encoder,
}

/// An encoder loaded lazily: the cache may make it unnecessary.
pub struct FeatureEncoder {
    config: EncoderConfig,
    layers: usize,
    model_hash: String,
    cache_dir: PathBuf,
    encoder: Option<Encoder>,
}

fn hash_file(hasher: &mut Sha256, path: &Path) -> Result<()> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    std::io::copy(&mut file, hasher).map_err(|e| Error::io(path, e))?;
    Ok(())
}

impl FeatureEncoder {
    pub fn new(config: &EncoderConfig) -> Result<FeatureEncoder> {
        let layers = config.last_layers()?;
        let pre = crate::encoder::Pretrained::open(&config.model)?;
        let mut h = Sha256::new();
        hash_file(&mut h, &pre.weights)?;
        hash_file(&mut h, &pre.tokenizer_file)?;
        h.update(serde_json::to_vec(&pre.config).expect("a config serialises"));
        h.update(format!("first-subtoken mean-of-last-{layers}").as_bytes());
        Ok(FeatureEncoder {
            config: config.clone(),
            layers,
            model_hash: format!("{:x}", h.finalize()),
            cache_dir: cache_dir(),
            encoder: None,
        })
    }

    /// Caches in `dir` instead of [`cache_dir`].
    pub fn caching_in(mut self, dir: &Path) -> FeatureEncoder {
        self.cache_dir = dir.to_path_buf();
        self
    }

    /// The features of every word of `sentences`, from the cache when
    /// there, else computed (and cached). `progress` gets a line now and
    /// then.
    pub fn features(
        &mut self,
        sentences: &[Vec<String>],
        progress: &mut dyn FnMut(&str),
    ) -> Result<(FeatureTable, Source)> {
        let data_hash = words_hash(sentences);
        let stem = format!("{}-{}", &self.model_hash[..20], &data_hash[..20]);
        let dir = self.cache_dir.clone();
        let file = dir.join(format!("{stem}.f16"));
        if self.config.cache {
            if let Some(table) = FeatureTable::open_f16(&file, sentences)? {
                return Ok((table, Source::Cache));
            }
        }
        if self.encoder.is_none() {
            self.encoder = Some(Encoder::load(&self.config.model)?);
        }
        let encoder = self.encoder.as_ref().expect("just loaded");
        let values = encode_words(encoder, self.layers, sentences, progress)?;
        let dim = encoder.config.hidden_size;
        if self.config.cache {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            let bytes: Vec<u8> = values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect();
            crate::run::write_atomic(&file, &bytes)?;
            write_json(
                &dir.join(format!("{stem}.json")),
                &serde_json::json!({
                    "model": self.config.model,
                    "layers": self.config.layers,
                    "dim": dim,
                    "words": values.len() / dim,
                    "sentences": sentences.len(),
                }),
            )?;
            if let Some(table) = FeatureTable::open_f16(&file, sentences)? {
                return Ok((table, Source::Encoder));
            }
        }
        Ok((FeatureTable::owned(dim, sentences, values), Source::Encoder))
    }
}

/// A hash of the words of every sentence, sentence breaks included.
pub fn words_hash(sentences: &[Vec<String>]) -> String {
    let mut h = Sha256::new();
    for s in sentences {
        for w in s {
            h.update(w.as_bytes());
            h.update([0x1f]);
        }
        h.update([0x1e]);
    }
    format!("{:x}", h.finalize())
}

/// One encoder input: sub-token ids and, for each word it covers, the
/// position of its first sub-token.
struct Window {
    sentence: usize,
    first_word: usize,
    ids: Vec<u32>,
    starts: Vec<usize>,
}

/// Splits sentences into encoder inputs of at most `max_len` tokens.
fn windows(encoder: &Encoder, sentences: &[Vec<String>]) -> Result<Vec<Window>> {
    let tok = &encoder.tokenizer;
    let special = |name: &str| {
        tok.token_to_id(name)
            .ok_or_else(|| Error::Tokenizer(format!("the tokenizer has no {name} token")))
    };
    let (cls, sep, unk) = (special("[CLS]")?, special("[SEP]")?, special("[UNK]")?);
    let budget = encoder.max_len.saturating_sub(2).max(1);
    let mut out = Vec::new();
    for (si, words) in sentences.iter().enumerate() {
        let pieces: Vec<Vec<u32>> = tok
            .encode_batch(words.iter().map(|w| w.as_str()).collect::<Vec<_>>(), false)?
            .iter()
            .map(|e| {
                let ids = e.get_ids();
                if ids.is_empty() {
                    vec![unk]
                } else {
                    ids[..ids.len().min(budget)].to_vec()
                }
            })
            .collect();
        let mut w = Window {
            sentence: si,
            first_word: 0,
            ids: vec![cls],
            starts: Vec::new(),
        };
        for (wi, p) in pieces.iter().enumerate() {
            if w.ids.len() - 1 + p.len() > budget {
                w.ids.push(sep);
                let next = Window {
                    sentence: si,
                    first_word: wi,
                    ids: vec![cls],
                    starts: Vec::new(),
                };
                out.push(std::mem::replace(&mut w, next));
            }
            w.starts.push(w.ids.len());
            w.ids.extend_from_slice(p);
        }
        w.ids.push(sep);
        out.push(w);
    }
    Ok(out)
}

/// Runs the encoder over every sentence (longest windows together, about
/// 8k tokens per batch) and gathers each word's features, in order.
fn encode_words(
    encoder: &Encoder,
    layers: usize,
    sentences: &[Vec<String>],
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<f32>> {
    let dim = encoder.config.hidden_size;
    if layers > encoder.config.num_hidden_layers {
        return Err(Error::Config(format!(
            "encoder embedding: the mean of the last {layers} layers of a {}-layer model",
            encoder.config.num_hidden_layers
        )));
    }
    let offsets = super::offsets(sentences);
    let mut values = vec![0f32; offsets[sentences.len()] * dim];
    let windows = windows(encoder, sentences)?;
    let mut order: Vec<usize> = (0..windows.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(windows[i].ids.len()));
    let started = std::time::Instant::now();
    let mut heartbeat = crate::progress::Heartbeat::new();
    let mut done = 0;
    let mut at = 0;
    while at < order.len() {
        let len = windows[order[at]].ids.len();
        let rows = (8192 / len).clamp(1, 256);
        let batch: Vec<&Window> = order[at..(at + rows).min(order.len())]
            .iter()
            .map(|&i| &windows[i])
            .collect();
        at += batch.len();
        let (b, dev) = (batch.len(), Device::Cpu);
        let mut ids = vec![0u32; b * len];
        let mut mask = vec![0f32; b * len];
        for (r, w) in batch.iter().enumerate() {
            ids[r * len..r * len + w.ids.len()].copy_from_slice(&w.ids);
            mask[r * len..r * len + w.ids.len()].fill(1.0);
        }
        let ids = Tensor::from_vec(ids, (b, len), &dev)?;
        let types = ids.zeros_like()?;
        let mask = Tensor::from_vec(mask, (b, len), &dev)?;
        let all = encoder
            .bert
            .forward_layers(&ids, Some(&types), Some(&mask), &mut Ctx::eval())?;
        let mut mean = all[all.len() - layers].clone();
        for t in &all[all.len() - layers + 1..] {
            mean = (mean + t)?;
        }
        let mean = (mean / layers as f64)?;
        let hidden: Vec<f32> = mean.flatten_all()?.to_vec1()?;
        for (r, w) in batch.iter().enumerate() {
            let base = offsets[w.sentence] + w.first_word;
            for (k, &pos) in w.starts.iter().enumerate() {
                let src = (r * len + pos) * dim;
                values[(base + k) * dim..(base + k + 1) * dim]
                    .copy_from_slice(&hidden[src..src + dim]);
            }
        }
        done += b;
        if heartbeat.due() {
            progress(&format!(
                "encoding: {done}/{} windows, {:.0} windows/s",
                windows.len(),
                done as f64 / started.elapsed().as_secs_f64()
            ));
        }
    }
    Ok(values)
}
