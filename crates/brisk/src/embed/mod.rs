//! Word-level features for taggers and parsers: each kind maps a sentence
//! of words to `[words, dim]`, and a model reads the concatenation of a
//! list of them (what ACE searches over, Wang et al., 2021).
//!
//! - [`encoder`]: a pre-trained encoder's first-sub-token states, frozen
//!   and cached;
//! - [`static_vectors`]: word2vec / GloVe text vectors, frozen;
//! - [`chars`]: a character BiLSTM, trained with the task model;
//! - [`word`]: a lookup table over the training vocabulary, trained.
//!
//! In TOML a list is `[[embeddings]]` tables with a `kind`; on the command
//! line, `--embeddings word,chars,encoder:PATH+layers=last4` (items
//! separated by commas, `kind[:path][+key=value]...`).

pub mod chars;
pub mod encoder;
pub mod static_vectors;
pub mod word;

use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::corpus::generated::Rng;
use crate::error::{Error, Result};
use crate::model::Params;

pub use chars::{CharConfig, CharEmbedding};
pub use encoder::EncoderConfig;
pub use static_vectors::StaticConfig;
pub use word::{WordConfig, WordEmbedding};

/// One kind of word feature, with its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum EmbeddingConfig {
    Encoder(EncoderConfig),
    Static(StaticConfig),
    Chars(CharConfig),
    Word(WordConfig),
}

impl EmbeddingConfig {
    /// Computed once before training (not trained).
    pub fn is_frozen(&self) -> bool {
        matches!(
            self,
            EmbeddingConfig::Encoder(_) | EmbeddingConfig::Static(_)
        )
    }

    /// A short name for tables and logs.
    pub fn label(&self) -> String {
        match self {
            EmbeddingConfig::Encoder(c) => format!(
                "encoder:{}",
                c.model.file_name().unwrap_or_default().to_string_lossy()
            ),
            EmbeddingConfig::Static(c) => format!(
                "static:{}",
                c.path.file_name().unwrap_or_default().to_string_lossy()
            ),
            EmbeddingConfig::Chars(_) => "chars".into(),
            EmbeddingConfig::Word(_) => "word".into(),
        }
    }
}

/// Parses `--embeddings`: `kind[:path][+key=value]...`, comma-separated.
pub fn parse_spec(spec: &str) -> Result<Vec<EmbeddingConfig>> {
    let bad = |m: String| Error::Usage(format!("--embeddings {spec:?}: {m}"));
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let mut parts = item.split('+');
        let head = parts.next().unwrap_or_default();
        let (kind, path) = match head.split_once(':') {
            Some((k, p)) => (k, Some(p)),
            None => (head, None),
        };
        let mut table = toml::Table::new();
        table.insert("kind".into(), toml::Value::String(kind.into()));
        if let Some(p) = path {
            let key = match kind {
                "encoder" => "model",
                "static" => "path",
                other => {
                    return Err(bad(format!(
                        "{other:?} takes no path (only encoder:PATH and static:PATH do)"
                    )))
                }
            };
            table.insert(key.into(), toml::Value::String(p.into()));
        }
        for option in parts {
            let (k, v) = option
                .split_once('=')
                .ok_or_else(|| bad(format!("{option:?}: expected key=value")))?;
            let value = format!("v = {v}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(v.into()));
            table.insert(k.into(), value);
        }
        let config = EmbeddingConfig::deserialize(toml::Value::Table(table)).map_err(|e| {
            bad(format!(
                "{item:?}: {e} (kinds: encoder:PATH, static:PATH, chars, word)"
            ))
        })?;
        out.push(config);
    }
    if out.is_empty() {
        return Err(bad("no embedding named".into()));
    }
    Ok(out)
}

/// Frozen features of one data split: every word's vector, sentence after
/// sentence, in memory or memory-mapped from the cache (f16).
pub struct FeatureTable {
    pub dim: usize,
    /// Index of each sentence's first word.
    offsets: Vec<usize>,
    store: Store,
}

enum Store {
    Owned(Vec<f32>),
    F16(memmap2::Mmap),
}

/// Index of each sentence's first word, then the total.
fn offsets(sentences: &[Vec<String>]) -> Vec<usize> {
    std::iter::once(0)
        .chain(sentences.iter().scan(0, |acc, s| {
            *acc += s.len();
            Some(*acc)
        }))
        .collect()
}

impl FeatureTable {
    pub fn owned(dim: usize, sentences: &[Vec<String>], values: Vec<f32>) -> FeatureTable {
        let offsets = offsets(sentences);
        assert_eq!(values.len(), offsets[sentences.len()] * dim);
        FeatureTable {
            dim,
            offsets,
            store: Store::Owned(values),
        }
    }

    /// Maps a cached f16 file; `None` when it is missing or not the size
    /// these sentences need (then it is recomputed).
    pub fn open_f16(path: &Path, sentences: &[Vec<String>]) -> Result<Option<FeatureTable>> {
        let Ok(file) = std::fs::File::open(path) else {
            return Ok(None);
        };
        // SAFETY: cache files are written once (atomically) and never
        // modified in place.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let offsets = offsets(sentences);
        let words = offsets[sentences.len()];
        if words == 0 || map.len() % (2 * words) != 0 {
            return Ok(None);
        }
        Ok(Some(FeatureTable {
            dim: map.len() / (2 * words),
            offsets,
            store: Store::F16(map),
        }))
    }

    /// Copies word `w` of sentence `s` into `dst` (`dim` values).
    pub fn copy_word(&self, s: usize, w: usize, dst: &mut [f32]) {
        let at = (self.offsets[s] + w) * self.dim;
        match &self.store {
            Store::Owned(v) => dst.copy_from_slice(&v[at..at + self.dim]),
            Store::F16(map) => {
                let bytes = &map[2 * at..2 * (at + self.dim)];
                for (d, b) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                    *d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
        }
    }

    pub fn sentences(&self) -> usize {
        self.offsets.len() - 1
    }
}

/// What trainable features learn their vocabulary from: saved with a
/// model, so prediction builds the same tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Vocabulary {
    None,
    Words { words: Vec<String> },
    Chars { chars: String },
}

/// The vocabularies of `configs` from the training sentences.
pub fn vocabularies(configs: &[EmbeddingConfig], train: &[Vec<String>]) -> Vec<Vocabulary> {
    configs
        .iter()
        .map(|c| match c {
            EmbeddingConfig::Word(w) => Vocabulary::Words {
                words: word::vocabulary(w, train.iter().map(Vec::as_slice)),
            },
            EmbeddingConfig::Chars(_) => Vocabulary::Chars {
                chars: chars::alphabet(train.iter().map(Vec::as_slice))
                    .into_iter()
                    .collect(),
            },
            _ => Vocabulary::None,
        })
        .collect()
}

enum Piece {
    Frozen { dim: usize },
    Chars(CharEmbedding),
    Word(WordEmbedding),
}

/// The concatenation a task model reads: one piece per configured
/// embedding, in order.
///
/// A *selection* (ACE's action) says which pieces enter it: an unselected
/// piece is zeros, so the width, and the model reading it, stay the same
/// whatever is selected. With *weights* ("All + weight" in ACE's
/// comparison) piece `l` is scaled by σ(w_l), w trained with the model.
pub struct Embedder {
    pieces: Vec<Piece>,
    pub dims: Vec<usize>,
    pub width: usize,
    selection: Mutex<Vec<bool>>,
    /// `[pieces]`: the logits of the per-piece scales, when weighted.
    weights: Option<Tensor>,
}

impl Embedder {
    /// `frozen_dims[i]`: the width of piece `i` when it is frozen. Every
    /// piece starts selected; `weighted` adds the trained scales.
    pub fn new(
        params: &mut Params,
        configs: &[EmbeddingConfig],
        vocabularies: &[Vocabulary],
        frozen_dims: &[usize],
        weighted: bool,
        rng: &mut Rng,
    ) -> Result<Embedder> {
        let mut pieces = Vec::new();
        for (i, (c, v)) in configs.iter().zip(vocabularies).enumerate() {
            let prefix = format!("embeddings.{i}");
            pieces.push(match (c, v) {
                (EmbeddingConfig::Word(w), Vocabulary::Words { words }) => {
                    Piece::Word(WordEmbedding::new(params, &prefix, w, words, rng)?)
                }
                (EmbeddingConfig::Chars(ch), Vocabulary::Chars { chars }) => {
                    let alphabet: Vec<char> = chars.chars().collect();
                    Piece::Chars(CharEmbedding::new(params, &prefix, ch, &alphabet, rng)?)
                }
                (c, _) if c.is_frozen() => Piece::Frozen {
                    dim: frozen_dims[i],
                },
                (c, v) => {
                    return Err(Error::Usage(format!(
                        "embedding {i} ({}) has the vocabulary {v:?}",
                        c.label()
                    )))
                }
            });
        }
        let dims: Vec<usize> = pieces
            .iter()
            .map(|p| match p {
                Piece::Frozen { dim } => *dim,
                Piece::Chars(c) => c.dim(),
                Piece::Word(w) => w.dim(),
            })
            .collect();
        // Logits start at 0: every piece at half scale, as ACE's
        // controller starts every candidate at probability 1/2.
        let weights = if weighted {
            Some(params.zeros("embeddings.weights", &[pieces.len()])?)
        } else {
            None
        };
        Ok(Embedder {
            width: dims.iter().sum(),
            selection: Mutex::new(vec![true; pieces.len()]),
            dims,
            pieces,
            weights,
        })
    }

    /// Which pieces enter the concatenation (one flag per piece).
    pub fn selection(&self) -> Vec<bool> {
        self.selection.lock().expect("selection lock").clone()
    }

    /// Selects the pieces flagged in `selection`; the others become zeros.
    pub fn select(&self, selection: &[bool]) -> Result<()> {
        if selection.len() != self.pieces.len() {
            return Err(Error::Usage(format!(
                "a selection of {} embeddings for a model of {}",
                selection.len(),
                self.pieces.len()
            )));
        }
        *self.selection.lock().expect("selection lock") = selection.to_vec();
        Ok(())
    }

    /// Whether parameter `name` belongs to an unselected piece (and so
    /// gets no gradient).
    pub fn is_unselected(&self, name: &str) -> bool {
        self.selection()
            .iter()
            .enumerate()
            .any(|(i, &s)| !s && name.starts_with(&format!("embeddings.{i}.")))
    }

    /// σ(w_l) of each piece when weighted.
    pub fn scales(&self) -> Result<Option<Vec<f64>>> {
        let Some(w) = &self.weights else {
            return Ok(None);
        };
        Ok(Some(
            w.to_dtype(DType::F64)?
                .to_vec1::<f64>()?
                .into_iter()
                .map(sigmoid)
                .collect(),
        ))
    }

    /// The column blocks (`(first, width)`) of the full concatenation that
    /// the selected pieces fill, `None` when every piece is selected.
    pub fn selected_blocks(&self) -> Option<Vec<(usize, usize)>> {
        let selection = self.selection();
        if selection.iter().all(|&s| s) {
            return None;
        }
        let mut blocks = Vec::new();
        let mut first = 0;
        for (&dim, &s) in self.dims.iter().zip(&selection) {
            if s {
                blocks.push((first, dim));
            }
            first += dim;
        }
        Some(blocks)
    }

    /// `[batch, longest, selected width]` for sentences `ids` of a split
    /// whose frozen features are `frozen` (one entry per piece, `None` for
    /// trained ones): the selected pieces only, in order (the full width
    /// when all are). Padding rows are zero.
    pub fn forward(
        &self,
        sentences: &[&[String]],
        ids: &[usize],
        frozen: &[Option<&FeatureTable>],
    ) -> Result<Tensor> {
        let b = sentences.len();
        let t = sentences.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let dev = Device::Cpu;
        let words: Vec<&str> = sentences
            .iter()
            .flat_map(|s| s.iter().map(String::as_str))
            .collect();
        // Where each (row, step) reads from the list of real words; the
        // padding reads the zero row appended after them.
        let n = words.len();
        let mut gather = vec![n as u32; b * t];
        let mut k = 0;
        for (r, s) in sentences.iter().enumerate() {
            for i in 0..s.len() {
                gather[r * t + i] = k as u32;
                k += 1;
            }
        }
        let gather = Tensor::from_vec(gather, b * t, &dev)?;
        let selection = self.selection();
        // σ(w) as one tensor op, so its gradient reaches w.
        let scales = match &self.weights {
            Some(w) => Some((w.neg()?.exp()? + 1.0)?.recip()?),
            None => None,
        };
        let mut parts = Vec::with_capacity(self.pieces.len());
        for (i, piece) in self.pieces.iter().enumerate() {
            let dim = self.dims[i];
            if !selection[i] {
                // Left out: the reader skips its columns (see
                // `selected_blocks`), as if they were zeros.
                continue;
            }
            let part = match piece {
                Piece::Frozen { .. } => {
                    let table = frozen[i].ok_or_else(|| {
                        Error::Tensor(format!("embedding {i}: frozen features missing"))
                    })?;
                    if table.dim != dim {
                        return Err(Error::Tensor(format!(
                            "embedding {i}: features of width {}, the model reads {dim}",
                            table.dim
                        )));
                    }
                    let mut values = vec![0f32; b * t * dim];
                    for (r, (s, &id)) in sentences.iter().zip(ids).enumerate() {
                        for w in 0..s.len() {
                            let at = (r * t + w) * dim;
                            table.copy_word(id, w, &mut values[at..at + dim]);
                        }
                    }
                    Tensor::from_vec(values, (b, t, dim), &dev)?
                }
                Piece::Chars(c) => scatter(&c.forward(&words)?, &gather, (b, t, dim))?,
                Piece::Word(w) => scatter(&w.forward(&words)?, &gather, (b, t, dim))?,
            };
            let part = match &scales {
                Some(s) => part.broadcast_mul(&s.narrow(0, i, 1)?)?,
                None => part,
            };
            parts.push(part);
        }
        Ok(Tensor::cat(&parts, D::Minus1)?)
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Rows of `per_word` (`[words, dim]`) laid out as `[batch, steps, dim]`,
/// zeros where `gather` points past the words.
fn scatter(per_word: &Tensor, gather: &Tensor, shape: (usize, usize, usize)) -> Result<Tensor> {
    let zero = Tensor::zeros((1, shape.2), per_word.dtype(), per_word.device())?;
    let padded = Tensor::cat(&[per_word, &zero], 0)?;
    Ok(padded.index_select(gather, 0)?.reshape(shape)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_strings_parse_with_options_and_errors_name_the_item() {
        let c = parse_spec("word+dim=50,chars,encoder:/m/x+layers=last4").unwrap();
        assert_eq!(
            c[0],
            EmbeddingConfig::Word(WordConfig {
                dim: 50,
                ..Default::default()
            })
        );
        assert_eq!(c[1], EmbeddingConfig::Chars(CharConfig::default()));
        match &c[2] {
            EmbeddingConfig::Encoder(e) => {
                assert_eq!(e.model, Path::new("/m/x"));
                assert_eq!(e.last_layers().unwrap(), 4);
            }
            other => panic!("{other:?}"),
        }
        let err = parse_spec("words").unwrap_err().to_string();
        assert!(err.contains("\"words\""), "{err}");
        let err = parse_spec("word+dimm=3").unwrap_err().to_string();
        assert!(err.contains("dimm"), "{err}");
        assert!(parse_spec("chars:/x").is_err());
    }
}
