//! Character features of a word (Lample et al., 2016): its characters'
//! embeddings read by a BiLSTM, the last forward state and the first
//! backward state concatenated. Trained with the tagger; characters not
//! seen in training share the unknown row.

use std::collections::{BTreeSet, HashMap};

use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

use crate::corpus::generated::Rng;
use crate::error::Result;
use crate::model::Params;
use crate::tasks::bilstm::BiLstm;

/// `kind = "chars"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CharConfig {
    /// Width of a character's embedding.
    #[serde(default = "default_dim")]
    pub dim: usize,
    /// Hidden size of each direction; the feature is twice as wide.
    #[serde(default = "default_dim")]
    pub hidden: usize,
    /// Characters read per word (longer words are cut).
    #[serde(default = "default_max_chars")]
    pub max_chars: usize,
}

fn default_dim() -> usize {
    25
}

fn default_max_chars() -> usize {
    30
}

impl Default for CharConfig {
    fn default() -> Self {
        CharConfig {
            dim: default_dim(),
            hidden: default_dim(),
            max_chars: default_max_chars(),
        }
    }
}

/// Every character of the training words, sorted.
pub fn alphabet<'a>(sentences: impl Iterator<Item = &'a [String]>) -> Vec<char> {
    let set: BTreeSet<char> = sentences
        .flat_map(|s| s.iter())
        .flat_map(|w| w.chars())
        .collect();
    set.into_iter().collect()
}

/// The character table and BiLSTM.
#[derive(Debug, Clone)]
pub struct CharEmbedding {
    config: CharConfig,
    index: HashMap<char, u32>,
    table: Tensor,
    lstm: BiLstm,
}

impl CharEmbedding {
    /// Creates `{prefix}.weight` (`[chars + 1, dim]`, row 0 unknown) and
    /// the BiLSTM group `{prefix}.lstm`.
    pub fn new(
        params: &mut Params,
        prefix: &str,
        config: &CharConfig,
        chars: &[char],
        rng: &mut Rng,
    ) -> Result<CharEmbedding> {
        let table = params.normal(
            &format!("{prefix}.weight"),
            &[chars.len() + 1, config.dim],
            0.1,
            rng,
        )?;
        let lstm = BiLstm::new(
            params,
            &format!("{prefix}.lstm"),
            config.dim,
            config.hidden,
            rng,
        )?;
        let index = chars
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, i as u32 + 1))
            .collect();
        Ok(CharEmbedding {
            config: config.clone(),
            index,
            table,
            lstm,
        })
    }

    pub fn dim(&self) -> usize {
        2 * self.config.hidden
    }

    /// The features of `words` (in order), `[words, 2·hidden]`.
    pub fn forward(&self, words: &[&str]) -> Result<Tensor> {
        let n = words.len();
        let ids: Vec<Vec<u32>> = words
            .iter()
            .map(|w| {
                let mut v: Vec<u32> = w
                    .chars()
                    .take(self.config.max_chars)
                    .map(|c| self.index.get(&c).copied().unwrap_or(0))
                    .collect();
                if v.is_empty() {
                    v.push(0);
                }
                v
            })
            .collect();
        let longest = ids.iter().map(Vec::len).max().unwrap_or(1);
        let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
        let padded: Vec<u32> = ids
            .iter()
            .flat_map(|v| v.iter().copied().chain(std::iter::repeat(0)).take(longest))
            .collect();
        let dev = self.table.device();
        let x = self
            .table
            .embedding(&Tensor::from_vec(padded, n * longest, dev)?)?
            .reshape((n, longest, self.config.dim))?;
        let states = self
            .lstm
            .forward(&x, &lengths)?
            .reshape((n * longest, 2 * self.config.hidden))?;
        let h = self.config.hidden;
        // The forward direction's state after the last character, the
        // backward direction's after the first.
        let last: Vec<u32> = (0..n)
            .map(|i| (i * longest + lengths[i] - 1) as u32)
            .collect();
        let first: Vec<u32> = (0..n).map(|i| (i * longest) as u32).collect();
        let forward = states
            .index_select(&Tensor::from_vec(last, n, dev)?, 0)?
            .narrow(1, 0, h)?;
        let backward = states
            .index_select(&Tensor::from_vec(first, n, dev)?, 0)?
            .narrow(1, h, h)?;
        Ok(Tensor::cat(&[forward, backward], D::Minus1)?)
    }
}
