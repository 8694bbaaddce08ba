//! A trainable lookup table over the training vocabulary (the "word"
//! embedding of BiLSTM-CRF taggers, Lample et al., 2016): words seen at
//! least `min_count` times get a row, every other word the unknown row 0.

use std::collections::HashMap;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::corpus::generated::Rng;
use crate::error::Result;
use crate::model::Params;

/// `kind = "word"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WordConfig {
    #[serde(default = "default_dim")]
    pub dim: usize,
    /// Words rarer than this in the training data share the unknown row.
    #[serde(default = "default_min_count")]
    pub min_count: usize,
    /// Look words up lowercased.
    #[serde(default)]
    pub lowercase: bool,
}

fn default_dim() -> usize {
    100
}

fn default_min_count() -> usize {
    1
}

impl Default for WordConfig {
    fn default() -> Self {
        WordConfig {
            dim: default_dim(),
            min_count: default_min_count(),
            lowercase: false,
        }
    }
}

/// The vocabulary: row `i + 1` is `words[i]`; row 0 is unknown.
pub fn vocabulary<'a>(
    config: &WordConfig,
    sentences: impl Iterator<Item = &'a [String]>,
) -> Vec<String> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for s in sentences {
        for w in s {
            *counts.entry(key(config, w)).or_default() += 1;
        }
    }
    let mut words: Vec<String> = counts
        .into_iter()
        .filter(|(_, c)| *c >= config.min_count)
        .map(|(w, _)| w)
        .collect();
    words.sort_unstable();
    words
}

fn key(config: &WordConfig, word: &str) -> String {
    if config.lowercase {
        word.to_lowercase()
    } else {
        word.to_string()
    }
}

/// The lookup table and its vocabulary.
#[derive(Debug, Clone)]
pub struct WordEmbedding {
    config: WordConfig,
    index: HashMap<String, u32>,
    table: Tensor,
}

impl WordEmbedding {
    /// Creates `{prefix}.weight`, `[words + 1, dim]`, drawn from N(0, 0.1²).
    pub fn new(
        params: &mut Params,
        prefix: &str,
        config: &WordConfig,
        words: &[String],
        rng: &mut Rng,
    ) -> Result<WordEmbedding> {
        let table = params.normal(
            &format!("{prefix}.weight"),
            &[words.len() + 1, config.dim],
            0.1,
            rng,
        )?;
        let index = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), i as u32 + 1))
            .collect();
        Ok(WordEmbedding {
            config: config.clone(),
            index,
            table,
        })
    }

    pub fn dim(&self) -> usize {
        self.config.dim
    }

    /// The rows of `words` (in order), `[words, dim]`.
    pub fn forward(&self, words: &[&str]) -> Result<Tensor> {
        let ids: Vec<u32> = words
            .iter()
            .map(|w| self.index.get(&key(&self.config, w)).copied().unwrap_or(0))
            .collect();
        let ids = Tensor::from_vec(ids, words.len(), self.table.device())?;
        Ok(self.table.embedding(&ids)?)
    }
}
