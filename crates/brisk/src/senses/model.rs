//! A finished `brisk senses train` run, loaded for use: a word's senses,
//! a sense's words, similar words, and a word's senses in a context.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::context::{context_weights, InferConfig, Problem};
use super::cooc::SparseCounts;
use super::train::SensesConfig;
use super::vectors::{js_divergence, Clusters, PointEstimates, Sparse, VectorSizes};
use crate::corpus::words;
use crate::error::{Error, Result};
use crate::run;

/// The files of a trained model inside a run directory.
pub const MODEL_DIR: &str = "model";
pub const CONTEXT_COUNTS: &str = "context_counts.json";

pub struct SensesModel {
    pub dir: PathBuf,
    pub config: SensesConfig,
    pub sizes: VectorSizes,
    /// Word and corpus count; word i is row i of every matrix.
    pub vocab: Vec<(String, u64)>,
    index: HashMap<String, u32>,
    pub estimates: PointEstimates,
    pub clusters: Clusters,
}

/// A word's senses in one context.
#[derive(Debug, Clone)]
pub struct InContext {
    /// Weights over the K senses (the support of the word's raw vector).
    pub raw: Sparse,
    /// The same summed over merged senses, by increasing merged sense.
    pub merged: Sparse,
    /// Context words found in the vocabulary (the target word excluded).
    pub known: usize,
    /// Context words not in the vocabulary, skipped.
    pub unknown: usize,
    /// The objective at the prior and after each step.
    pub objective: Vec<f64>,
}

impl SensesModel {
    pub fn load(dir: &Path) -> Result<SensesModel> {
        let config = SensesConfig::read(&dir.join("config.toml"))?;
        let model = dir.join(MODEL_DIR);
        if !model.join("clusters.json").exists() {
            return Err(Error::Usage(format!(
                "{} holds no finished senses model ({} is written when training ends); `brisk senses train --resume --out {}` finishes it",
                dir.display(),
                model.join("clusters.json").display(),
                dir.display()
            )));
        }
        let vocab = words::read_word_counts(&dir.join("vocab.tsv"))?;
        let doc_topics = SparseCounts::load(&model.join("doc_topics.safetensors"))?;
        let topic_words = SparseCounts::load(&model.join("topic_words.safetensors"))?;
        let context_counts = read_context_counts(dir)?;
        if doc_topics.rows != vocab.len() {
            return Err(Error::data(
                model.join("doc_topics.safetensors"),
                format!(
                    "{} rows for the {} words of vocab.tsv",
                    doc_topics.rows,
                    vocab.len()
                ),
            ));
        }
        let estimates = PointEstimates::new(
            doc_topics,
            &topic_words,
            &context_counts,
            config.lda.alpha,
            config.lda.beta,
        )?;
        let clusters: Clusters = run::read_json(&model.join("clusters.json"))?;
        if clusters.of_sense.len() != estimates.topics {
            return Err(Error::data(
                model.join("clusters.json"),
                format!(
                    "{} senses mapped, the model has {}",
                    clusters.of_sense.len(),
                    estimates.topics
                ),
            ));
        }
        let sizes = config.vectors.sizes(config.lda.topics)?;
        let index = vocab
            .iter()
            .enumerate()
            .map(|(i, (w, _))| (w.clone(), i as u32))
            .collect();
        Ok(SensesModel {
            dir: dir.to_path_buf(),
            config,
            sizes,
            vocab,
            index,
            estimates,
            clusters,
        })
    }

    /// The word's row, as written or lowercased (the vocabulary is
    /// lowercase).
    pub fn lookup(&self, word: &str) -> Option<u32> {
        self.index
            .get(word)
            .or_else(|| self.index.get(&word.to_lowercase()))
            .copied()
    }

    /// [`Self::lookup`], or an error naming the word and the run.
    pub fn word_id(&self, word: &str) -> Result<u32> {
        self.lookup(word).ok_or_else(|| {
            Error::Usage(format!(
                "the word {word:?} is not in the vocabulary of {} ({} words)",
                self.dir.display(),
                self.vocab.len()
            ))
        })
    }

    pub fn word(&self, id: u32) -> &str {
        &self.vocab[id as usize].0
    }

    /// The final (merged) vector of a word.
    pub fn vector(&self, w: u32) -> Sparse {
        self.estimates
            .merged_vector(w as usize, &self.clusters, self.sizes.final_nnz)
    }

    /// The raw K-dimensional vector: WordCtx2Sense's prior.
    pub fn raw_vector(&self, w: u32) -> Sparse {
        self.estimates.raw_vector(w as usize, self.sizes.raw_nnz)
    }

    /// Every word's final vector.
    pub fn vectors(&self) -> Vec<Sparse> {
        (0..self.vocab.len() as u32)
            .into_par_iter()
            .map(|w| self.vector(w))
            .collect()
    }

    /// A merged sense's `n` most probable context words with their
    /// probabilities, most probable first.
    pub fn sense_words(&self, sense: usize, n: usize) -> Vec<(u32, f64)> {
        self.estimates.cluster_words(&self.clusters, sense, n)
    }

    /// The `n` words most similar to `w` (similarity −JS of the final
    /// vectors, so 0 is identical), most similar first, `w` left out.
    pub fn similar(&self, w: u32, vectors: &[Sparse], n: usize) -> Vec<(u32, f64)> {
        let target = &vectors[w as usize];
        let mut scored: Vec<(u32, f64)> = vectors
            .par_iter()
            .enumerate()
            .filter(|(i, _)| *i != w as usize)
            .map(|(i, v)| (i as u32, -js_divergence(target, v)))
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.truncate(n);
        scored
    }

    /// WordCtx2Sense: the senses of `w` supported by `context` (words, as
    /// written; the target's own occurrences and unknown words skipped).
    pub fn infer(&self, w: u32, context: &[&str], config: &InferConfig) -> Result<InContext> {
        config.check()?;
        let ids: Vec<Option<u32>> = context.iter().map(|c| self.lookup(c)).collect();
        let unknown = ids.iter().filter(|c| c.is_none()).count();
        let known: Vec<u32> = ids.into_iter().flatten().filter(|&c| c != w).collect();
        Ok(self.infer_ids(w, &known, unknown, config))
    }

    /// [`Self::infer`] over context word ids.
    pub fn infer_ids(
        &self,
        w: u32,
        context: &[u32],
        unknown: usize,
        config: &InferConfig,
    ) -> InContext {
        let prior = self.raw_vector(w);
        let weights = context_weights(context, &self.estimates.word_prior, config.sif);
        let x: Vec<f64> = weights.iter().map(|e| e.1).collect();
        let mut likelihood = Vec::with_capacity(weights.len() * prior.len());
        for &(c, _) in &weights {
            likelihood.extend(
                prior
                    .iter()
                    .map(|&(k, _)| self.estimates.phi(k as usize, c as usize)),
            );
        }
        let prior_weights: Vec<f64> = prior.iter().map(|e| e.1 as f64).collect();
        let problem = Problem {
            prior: &prior_weights,
            context: &x,
            likelihood: &likelihood,
        };
        let solution = problem
            .solve(config)
            .expect("the problem is built with a non-empty support and matching shapes");
        let raw: Sparse = prior
            .iter()
            .zip(&solution.weights)
            .map(|(&(k, _), &v)| (k, v as f32))
            .collect();
        InContext {
            merged: self.merge(&raw),
            raw,
            known: context.len(),
            unknown,
            objective: solution.objective,
        }
    }

    /// Weights over senses summed into the merged senses.
    pub fn merge(&self, raw: &Sparse) -> Sparse {
        let mut merged: Vec<(u32, f32)> = raw
            .iter()
            .map(|&(k, v)| (self.clusters.of_sense[k as usize], v))
            .collect();
        merged.sort_by_key(|e| e.0);
        let mut out: Sparse = Vec::with_capacity(merged.len());
        for (c, v) in merged {
            match out.last_mut() {
                Some((last, x)) if *last == c => *x += v,
                _ => out.push((c, v)),
            }
        }
        out
    }
}

/// p(w)'s counts: `model/context_counts.json`, or for runs written before
/// it, the column sums of the co-occurrence counts.
fn read_context_counts(dir: &Path) -> Result<Vec<u64>> {
    let path = dir.join(MODEL_DIR).join(CONTEXT_COUNTS);
    if path.exists() {
        return run::read_json(&path);
    }
    Ok(SparseCounts::load(&dir.join("cooc.safetensors"))?.column_totals())
}
