//! Word–context co-occurrence counts, the "documents" Word2Sense's LDA reads.
//!
//! As the official scripts prepare them (hyperwords' pair extraction with
//! `--win 5 --sub 1e-5`, then the count matrix): a vocabulary of the words
//! seen at least `min_count` times; every occurrence of a frequent word is
//! dropped with probability `1 - sqrt(t / f)` (f its relative frequency,
//! t = `subsample`); then every kept vocabulary word counts each kept
//! vocabulary word within `window` positions on either side. Dropped and
//! out-of-vocabulary words leave their position empty rather than closing
//! the gap (hyperwords' default), so the window is measured in the original
//! text.
//!
//! Counting is parallel over chunks of documents; each document draws its
//! subsampling from a generator fixed by the seed and the document's index,
//! so the counts do not depend on the number of threads.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::corpus::generated::Rng;
use crate::corpus::shards::splitmix64;
use crate::error::{Error, Result};

/// How co-occurrences are counted (`[cooc]` in a senses config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoocConfig {
    /// Context words on each side of a word.
    pub window: usize,
    /// Subsampling threshold t (0 keeps every occurrence).
    pub subsample: f64,
    /// Fewest occurrences for a word to enter the vocabulary.
    pub min_count: u64,
    /// Drop tokens without a letter (punctuation, numbers) from the text
    /// before counting, as a corpus prepared for word vectors would; else
    /// they become senses' top words.
    pub letters_only: bool,
}

impl Default for CoocConfig {
    fn default() -> Self {
        CoocConfig {
            window: 5,
            subsample: 1e-5,
            min_count: 100,
            letters_only: true,
        }
    }
}

impl CoocConfig {
    pub fn check(&self) -> Result<()> {
        if self.window == 0 {
            return Err(Error::Config("cooc.window must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.subsample) {
            return Err(Error::Config(format!(
                "cooc.subsample = {} must be in [0, 1)",
                self.subsample
            )));
        }
        if self.min_count == 0 {
            return Err(Error::Config("cooc.min_count must be at least 1".into()));
        }
        Ok(())
    }
}

/// A sparse count matrix in compressed rows: row `r`'s entries are
/// `columns[offsets[r]..offsets[r + 1]]` (increasing) with their `counts`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SparseCounts {
    pub rows: usize,
    pub cols: usize,
    pub offsets: Vec<u64>,
    pub columns: Vec<u32>,
    pub counts: Vec<u32>,
}

impl SparseCounts {
    /// Builds the matrix from `(row << 32 | column, count)` entries sorted by key.
    pub(crate) fn from_sorted(rows: usize, cols: usize, entries: &[(u64, u32)]) -> SparseCounts {
        let mut offsets = vec![0u64; rows + 1];
        for &(key, _) in entries {
            offsets[(key >> 32) as usize + 1] += 1;
        }
        for r in 0..rows {
            offsets[r + 1] += offsets[r];
        }
        SparseCounts {
            rows,
            cols,
            offsets,
            columns: entries.iter().map(|&(k, _)| k as u32).collect(),
            counts: entries.iter().map(|&(_, c)| c).collect(),
        }
    }

    /// Row `r` as `(columns, counts)`.
    pub fn row(&self, r: usize) -> (&[u32], &[u32]) {
        let range = self.offsets[r] as usize..self.offsets[r + 1] as usize;
        (&self.columns[range.clone()], &self.counts[range])
    }

    /// The sum of all counts.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|&c| c as u64).sum()
    }

    /// The sum of each column's counts.
    pub fn column_totals(&self) -> Vec<u64> {
        let mut totals = vec![0u64; self.cols];
        for (&c, &n) in self.columns.iter().zip(&self.counts) {
            totals[c as usize] += n as u64;
        }
        totals
    }

    /// The sum of each row's counts.
    pub fn row_totals(&self) -> Vec<u64> {
        (0..self.rows)
            .map(|r| self.row(r).1.iter().map(|&c| c as u64).sum())
            .collect()
    }

    /// Writes the matrix as safetensors (`offsets` i64, `columns` and
    /// `counts` u32, `shape` [rows, cols]), atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensor = |result: candle_core::Result<Tensor>| {
            result.map_err(|e| Error::Tensor(format!("writing {}: {e}", path.display())))
        };
        let offsets: Vec<i64> = self.offsets.iter().map(|&o| o as i64).collect();
        let n = self.columns.len();
        let tensors: HashMap<String, Tensor> = [
            (
                "offsets",
                tensor(Tensor::from_vec(offsets, self.rows + 1, &Device::Cpu))?,
            ),
            (
                "columns",
                tensor(Tensor::from_vec(self.columns.clone(), n, &Device::Cpu))?,
            ),
            (
                "counts",
                tensor(Tensor::from_vec(self.counts.clone(), n, &Device::Cpu))?,
            ),
            (
                "shape",
                tensor(Tensor::from_vec(
                    vec![self.rows as i64, self.cols as i64],
                    2,
                    &Device::Cpu,
                ))?,
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        crate::run::save_safetensors(&tensors, path)
    }

    /// Reads a matrix written by [`SparseCounts::save`], checking that its
    /// arrays agree.
    pub fn load(path: &Path) -> Result<SparseCounts> {
        let bad = |what: String| Error::data(path, what);
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| bad(format!("not a co-occurrence file: {e}")))?;
        let get = |name: &str| {
            tensors
                .get(name)
                .ok_or_else(|| bad(format!("no `{name}` tensor")))
        };
        let i64s = |name: &str| -> Result<Vec<i64>> {
            get(name)?
                .to_vec1::<i64>()
                .map_err(|e| bad(format!("`{name}`: {e}")))
        };
        let u32s = |name: &str| -> Result<Vec<u32>> {
            get(name)?
                .to_vec1::<u32>()
                .map_err(|e| bad(format!("`{name}`: {e}")))
        };
        let shape = i64s("shape")?;
        let offsets: Vec<u64> = i64s("offsets")?.into_iter().map(|o| o as u64).collect();
        let (columns, counts) = (u32s("columns")?, u32s("counts")?);
        let [rows, cols] = shape[..] else {
            return Err(bad("`shape` must hold 2 numbers".into()));
        };
        let (rows, cols) = (rows as usize, cols as usize);
        let consistent = offsets.len() == rows + 1
            && offsets.first() == Some(&0)
            && offsets.windows(2).all(|w| w[0] <= w[1])
            && offsets.last().copied() == Some(columns.len() as u64)
            && counts.len() == columns.len()
            && columns.iter().all(|&c| (c as usize) < cols);
        if !consistent {
            return Err(bad("offsets, columns and counts do not agree".into()));
        }
        Ok(SparseCounts {
            rows,
            cols,
            offsets,
            columns,
            counts,
        })
    }
}

/// The vocabulary (the first `size` words of a frequency-ranked word table)
/// and its co-occurrence counts: row = word, column = context word.
pub struct Cooc {
    pub vocab: Vec<(String, u64)>,
    pub matrix: SparseCounts,
    /// Word occurrences read, and those kept after subsampling.
    pub words_read: u64,
    pub words_kept: u64,
}

/// Documents per parallel chunk: enough pairs per chunk that sorting
/// dominates the bookkeeping, few enough that two threads stay balanced.
const CHUNK_DOCS: usize = 256;

/// Counts co-occurrences in `docs`, whose word ids index `words`, a table
/// ordered by frequency (most frequent first, as `brisk corpus` writes it).
pub fn count(
    docs: &[Vec<u32>],
    words: &[(String, u64)],
    config: &CoocConfig,
    seed: u64,
) -> Result<Cooc> {
    config.check()?;
    if words.windows(2).any(|w| w[0].1 < w[1].1) {
        return Err(Error::Usage(
            "the word table must be ordered by frequency, most frequent first".into(),
        ));
    }
    let size = words.partition_point(|(_, c)| *c >= config.min_count);
    if size == 0 {
        return Err(Error::Usage(format!(
            "no word occurs {} times or more (cooc.min_count); give more text or lower it",
            config.min_count
        )));
    }
    let total: u64 = words.iter().map(|(_, c)| c).sum();
    let drop: Vec<f64> = words[..size]
        .iter()
        .map(|(_, c)| drop_probability(*c as f64 / total as f64, config.subsample))
        .collect();
    let chunks: Vec<ChunkCounts> = docs
        .par_chunks(CHUNK_DOCS)
        .enumerate()
        .map(|(chunk, docs)| count_chunk(docs, chunk * CHUNK_DOCS, &drop, config.window, seed))
        .collect();
    let words_read = chunks.iter().map(|c| c.read).sum();
    let words_kept = chunks.iter().map(|c| c.kept).sum();
    let merged = merge_all(chunks.into_iter().map(|c| c.pairs).collect());
    Ok(Cooc {
        vocab: words[..size].to_vec(),
        matrix: SparseCounts::from_sorted(size, size, &merged),
        words_read,
        words_kept,
    })
}

/// hyperwords' subsampling: an occurrence of a word with relative frequency
/// `f` is dropped with probability `1 - sqrt(t / f)` when `f > t`.
pub fn drop_probability(frequency: f64, t: f64) -> f64 {
    if t <= 0.0 || frequency <= t {
        0.0
    } else {
        1.0 - (t / frequency).sqrt()
    }
}

/// One chunk's sorted, summed `(row << 32 | column, count)` pairs, and the
/// words it read and kept.
struct ChunkCounts {
    pairs: Vec<(u64, u32)>,
    read: u64,
    kept: u64,
}

fn count_chunk(
    docs: &[Vec<u32>],
    first: usize,
    drop: &[f64],
    window: usize,
    seed: u64,
) -> ChunkCounts {
    let mut keys = Vec::new();
    let mut kept: Vec<Option<u32>> = Vec::new();
    let (mut read, mut kept_words) = (0u64, 0u64);
    for (i, doc) in docs.iter().enumerate() {
        let mut rng = Rng::new(seed ^ splitmix64((first + i) as u64));
        kept.clear();
        kept.extend(doc.iter().map(|&w| {
            let p = *drop.get(w as usize)?;
            (p == 0.0 || rng.unit() >= p).then_some(w)
        }));
        read += doc.len() as u64;
        kept_words += kept.iter().flatten().count() as u64;
        for (j, word) in kept.iter().enumerate() {
            let Some(word) = word else { continue };
            let around = j.saturating_sub(window)..(j + window + 1).min(kept.len());
            for k in around {
                if let (true, Some(context)) = (k != j, kept[k]) {
                    keys.push((*word as u64) << 32 | context as u64);
                }
            }
        }
    }
    keys.sort_unstable();
    let mut summed: Vec<(u64, u32)> = Vec::new();
    for key in keys {
        match summed.last_mut() {
            Some((last, count)) if *last == key => *count += 1,
            _ => summed.push((key, 1)),
        }
    }
    ChunkCounts {
        pairs: summed,
        read,
        kept: kept_words,
    }
}

/// Merges sorted count lists pairwise (in parallel) into one.
fn merge_all(mut lists: Vec<Vec<(u64, u32)>>) -> Vec<(u64, u32)> {
    while lists.len() > 1 {
        let mut pairs = Vec::with_capacity(lists.len().div_ceil(2));
        let mut it = lists.into_iter();
        while let Some(a) = it.next() {
            pairs.push((a, it.next().unwrap_or_default()));
        }
        lists = pairs
            .into_par_iter()
            .map(|(a, b)| merge_two(&a, &b))
            .collect();
    }
    lists.pop().unwrap_or_default()
}

fn merge_two(a: &[(u64, u32)], b: &[(u64, u32)]) -> Vec<(u64, u32)> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push((a[i].0, a[i].1.saturating_add(b[j].1)));
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}
