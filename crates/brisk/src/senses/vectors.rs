//! From LDA counts to Word2Sense vectors, as the official code builds them.
//!
//! - Point estimates: φ_k(c) = (n_kc + β) / (n_k + Wβ) and
//!   θ_w[k] = (n_wk + α′) / (N_w + Kα′), α′ = α/K (`alpha` is WarpLDA's sum).
//! - p(w): the word's frequency as a context (column sums of the counts);
//!   p(k) = Σ_w p(w) θ_w[k], renormalised.
//! - ψ_w[k] = φ_k(w) p(k) / p(w): the senses seen from the context side.
//! - Raw vector: r_w = (θ_w + ψ_w) / p(k), its `raw_nnz` largest entries
//!   kept and L1-normalised (the prior of WordCtx2Sense).
//! - Sense merging: average-linkage clustering of the senses on
//!   sqrt(JS(φ_i, φ_j)) down to D clusters (each φ cut to its `merge_words`
//!   most probable words and renormalised, as the official script's option).
//! - Final vector: u_w[c] = Σ_{k∈c}(θ_w[k] + ψ_w[k]) / Σ_{k∈c} p(k), its
//!   ⌊D · raw_nnz / K⌋ largest entries kept and L1-normalised.
//! - Similarity: the Jensen–Shannon divergence of two vectors, negated so
//!   that higher means more similar.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::cooc::SparseCounts;
use crate::error::{Error, Result};

/// How vectors are built (`[vectors]` in a senses config). 0 means
/// Word2Sense's proportions: K/30 raw non-zeros (100 for K = 3000) and 3K/4
/// merged senses (2250).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VectorsConfig {
    /// Non-zeros of the raw K-dimensional vector (0: K/30).
    pub raw_nnz: usize,
    /// Senses after merging, D (0: 3K/4).
    pub merged: usize,
    /// Words of each sense kept for the divergences that merging uses.
    pub merge_words: usize,
}

impl Default for VectorsConfig {
    fn default() -> Self {
        VectorsConfig {
            raw_nnz: 0,
            merged: 0,
            merge_words: 500,
        }
    }
}

/// [`VectorsConfig`] with its automatic values filled in for K senses.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VectorSizes {
    pub topics: usize,
    pub raw_nnz: usize,
    pub merged: usize,
    /// ⌊D · raw_nnz / K⌋ (at least 1): non-zeros of a merged vector.
    pub final_nnz: usize,
    pub merge_words: usize,
}

impl VectorsConfig {
    pub fn sizes(&self, topics: usize) -> Result<VectorSizes> {
        let auto = |value: usize, fallback: usize| if value == 0 { fallback.max(1) } else { value };
        let raw_nnz = auto(self.raw_nnz, topics / 30);
        let merged = auto(self.merged, 3 * topics / 4);
        for (name, value) in [("vectors.raw_nnz", raw_nnz), ("vectors.merged", merged)] {
            if value > topics {
                return Err(Error::Config(format!(
                    "{name} = {value} must be at most lda.topics = {topics}"
                )));
            }
        }
        if self.merge_words == 0 {
            return Err(Error::Config(
                "vectors.merge_words must be at least 1".into(),
            ));
        }
        Ok(VectorSizes {
            topics,
            raw_nnz,
            merged,
            final_nnz: (merged * raw_nnz / topics).max(1),
            merge_words: self.merge_words,
        })
    }
}

/// λ of the relevance that ranks a sense's words: 0.6, the value Sievert
/// and Shirley's user study found best for reading topics (1 ranks by φ
/// alone).
pub const RELEVANCE: f64 = 0.6;

/// A sparse vector: `(index, value)` by increasing index.
pub type Sparse = Vec<(u32, f32)>;

/// The sampler's counts turned into distributions.
pub struct PointEstimates {
    pub topics: usize,
    pub words: usize,
    /// φ, K × W row-major: φ_k(c).
    pub phi: Vec<f32>,
    /// θ_w as its non-zero counts `(k, n_wk)` and the smoothing of the rest.
    doc_topics: SparseCounts,
    alpha: f64,
    /// p(w) over the vocabulary and p(k) over the senses.
    pub word_prior: Vec<f64>,
    pub sense_prior: Vec<f64>,
}

impl PointEstimates {
    /// `doc_topics` (W × K: n_wk) and `topic_words` (K × W: n_kc) from the
    /// sampler; `context_counts` the column sums of the co-occurrence matrix;
    /// `alpha` the sum prior, `beta` the per-word prior.
    pub fn new(
        doc_topics: SparseCounts,
        topic_words: &SparseCounts,
        context_counts: &[u64],
        alpha: f64,
        beta: f64,
    ) -> Result<PointEstimates> {
        let (words, topics) = (doc_topics.rows, doc_topics.cols);
        if topic_words.rows != topics || topic_words.cols != words || context_counts.len() != words
        {
            return Err(Error::Usage(format!(
                "the sense counts do not fit together: {} × {} document-topic, {} × {} topic-word, {} context counts",
                doc_topics.rows,
                doc_topics.cols,
                topic_words.rows,
                topic_words.cols,
                context_counts.len()
            )));
        }
        let wb = words as f64 * beta;
        let mut phi = vec![0f32; topics * words];
        phi.par_chunks_mut(words).enumerate().for_each(|(k, row)| {
            let (cols, counts) = topic_words.row(k);
            let n_k: f64 = counts.iter().map(|&c| c as f64).sum();
            let base = (beta / (n_k + wb)) as f32;
            row.fill(base);
            for (&c, &n) in cols.iter().zip(counts) {
                row[c as usize] = ((n as f64 + beta) / (n_k + wb)) as f32;
            }
        });
        let total: u64 = context_counts.iter().sum();
        let word_prior: Vec<f64> = context_counts
            .iter()
            .map(|&c| c as f64 / total.max(1) as f64)
            .collect();
        let mut estimates = PointEstimates {
            topics,
            words,
            phi,
            doc_topics,
            alpha,
            word_prior,
            sense_prior: Vec::new(),
        };
        let mut sense_prior = vec![0f64; topics];
        for w in 0..words {
            let theta = estimates.theta(w);
            for (k, t) in theta.iter().enumerate() {
                sense_prior[k] += estimates.word_prior[w] * t;
            }
        }
        let sum: f64 = sense_prior.iter().sum();
        sense_prior.iter_mut().for_each(|p| *p /= sum);
        estimates.sense_prior = sense_prior;
        Ok(estimates)
    }

    /// θ_w, dense over the K senses.
    pub fn theta(&self, w: usize) -> Vec<f64> {
        let a = self.alpha / self.topics as f64;
        let (ks, counts) = self.doc_topics.row(w);
        let n_w: f64 = counts.iter().map(|&c| c as f64).sum();
        let denominator = n_w + self.topics as f64 * a;
        let mut theta = vec![a / denominator; self.topics];
        for (&k, &n) in ks.iter().zip(counts) {
            theta[k as usize] = (n as f64 + a) / denominator;
        }
        theta
    }

    pub fn phi(&self, k: usize, c: usize) -> f64 {
        self.phi[k * self.words + c] as f64
    }

    /// θ_w + ψ_w, dense over the K senses.
    pub fn both_views(&self, w: usize) -> Vec<f64> {
        let mut v = self.theta(w);
        let p_w = self.word_prior[w];
        for (k, x) in v.iter_mut().enumerate() {
            if p_w > 0.0 {
                *x += self.phi(k, w) * self.sense_prior[k] / p_w;
            }
        }
        v
    }

    /// The raw vector r_w: (θ_w + ψ_w) / p(k), top `nnz`, L1-normalised.
    pub fn raw_vector(&self, w: usize, nnz: usize) -> Sparse {
        let v: Vec<f64> = self
            .both_views(w)
            .iter()
            .zip(&self.sense_prior)
            .map(|(x, p)| x / p)
            .collect();
        top_normalised(&v, nnz)
    }

    /// The merged vector u_w over `clusters` (sense → cluster), top `nnz`,
    /// L1-normalised.
    pub fn merged_vector(&self, w: usize, clusters: &Clusters, nnz: usize) -> Sparse {
        let both = self.both_views(w);
        let mut mass = vec![0f64; clusters.count];
        for (k, &c) in clusters.of_sense.iter().enumerate() {
            mass[c as usize] += both[k];
        }
        let v: Vec<f64> = mass
            .iter()
            .zip(&clusters.prior)
            .map(|(m, p)| m / p)
            .collect();
        top_normalised(&v, nnz)
    }

    /// Merged sense `c`'s `n` top context words with their probability
    /// under the sense (the mixture of its senses' φ weighted by p(k)),
    /// ranked by relevance (Sievert and Shirley 2014): λ ln φ + (1 − λ)
    /// ln(φ / p(w)) with λ = [`RELEVANCE`], which keeps words frequent
    /// everywhere ("the", "of") from heading every sense.
    pub fn cluster_words(&self, clusters: &Clusters, c: usize, n: usize) -> Vec<(u32, f64)> {
        let mut mixture = vec![0f64; self.words];
        let mut mass = 0.0;
        for (k, _) in clusters
            .of_sense
            .iter()
            .enumerate()
            .filter(|(_, &x)| x as usize == c)
        {
            let weight = self.sense_prior[k];
            mass += weight;
            let row = &self.phi[k * self.words..(k + 1) * self.words];
            for (m, &p) in mixture.iter_mut().zip(row) {
                *m += weight * p as f64;
            }
        }
        let mass = mass.max(f64::MIN_POSITIVE);
        let score: Vec<f64> = mixture
            .iter()
            .zip(&self.word_prior)
            .map(|(&m, &p)| {
                let phi = (m / mass).max(f64::MIN_POSITIVE);
                RELEVANCE * phi.ln() + (1.0 - RELEVANCE) * (phi / p.max(f64::MIN_POSITIVE)).ln()
            })
            .collect();
        let mut order: Vec<usize> = (0..self.words).collect();
        let n = n.min(self.words);
        let by_score = |&a: &usize, &b: &usize| score[b].total_cmp(&score[a]).then(a.cmp(&b));
        if n < self.words {
            order.select_nth_unstable_by(n, by_score);
            order.truncate(n);
        }
        order.sort_by(by_score);
        order
            .into_iter()
            .map(|w| (w as u32, mixture[w] / mass))
            .collect()
    }

    /// Each sense cut to its `top` most probable words, renormalised:
    /// `(word, probability)` by increasing word.
    pub fn truncated_senses(&self, top: usize) -> Vec<Sparse> {
        (0..self.topics)
            .into_par_iter()
            .map(|k| {
                let row = &self.phi[k * self.words..(k + 1) * self.words];
                let dense: Vec<f64> = row.iter().map(|&x| x as f64).collect();
                top_normalised(&dense, top.min(self.words))
            })
            .collect()
    }
}

/// The `nnz` largest entries of `v` (ties by lower index), L1-normalised,
/// by increasing index.
pub fn top_normalised(v: &[f64], nnz: usize) -> Sparse {
    let mut order: Vec<usize> = (0..v.len()).collect();
    let nnz = nnz.min(v.len());
    if nnz < v.len() {
        order.select_nth_unstable_by(nnz, |&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
        order.truncate(nnz);
    }
    order.sort_unstable();
    let sum: f64 = order.iter().map(|&i| v[i]).sum();
    order
        .into_iter()
        .map(|i| (i as u32, (v[i] / sum) as f32))
        .collect()
}

/// The word2vec text format: a `words dimensions` header, then one word
/// per line with its `dim` values (`dense`) or its non-zeros as
/// `index:value` (indices from 0).
pub fn write_word2vec(
    path: &std::path::Path,
    words: &[&str],
    vectors: &[Sparse],
    dim: usize,
    dense: bool,
) -> Result<()> {
    use std::fmt::Write;
    let mut text = format!("{} {dim}\n", words.len());
    let mut row = vec![0f32; if dense { dim } else { 0 }];
    for (word, v) in words.iter().zip(vectors) {
        text.push_str(word);
        if dense {
            row.fill(0.0);
            for &(i, x) in v {
                row[i as usize] = x;
            }
            for x in &row {
                let _ = write!(text, " {x}");
            }
        } else {
            for (i, x) in v {
                let _ = write!(text, " {i}:{x:.6}");
            }
        }
        text.push('\n');
    }
    crate::run::write_atomic(path, text.as_bytes())
}

/// Jensen–Shannon divergence (natural log, in [0, ln 2]) of two sparse
/// distributions.
pub fn js_divergence(p: &[(u32, f32)], q: &[(u32, f32)]) -> f64 {
    let (mut i, mut j) = (0, 0);
    let mut sum = 0.0;
    let half_ln2 = 0.5 * std::f64::consts::LN_2;
    while i < p.len() || j < q.len() {
        let a = p.get(i).map_or(u32::MAX, |e| e.0);
        let b = q.get(j).map_or(u32::MAX, |e| e.0);
        if a == b {
            let (x, y) = (p[i].1 as f64, q[j].1 as f64);
            let m = 0.5 * (x + y);
            if x > 0.0 {
                sum += 0.5 * x * (x / m).ln();
            }
            if y > 0.0 {
                sum += 0.5 * y * (y / m).ln();
            }
            i += 1;
            j += 1;
        } else if a < b {
            sum += half_ln2 * p[i].1 as f64;
            i += 1;
        } else {
            sum += half_ln2 * q[j].1 as f64;
            j += 1;
        }
    }
    sum.max(0.0)
}

/// Senses grouped into clusters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Clusters {
    pub count: usize,
    /// The cluster of each sense, numbered by each cluster's first sense.
    pub of_sense: Vec<u32>,
    /// Σ_{k∈c} p(k) per cluster.
    pub prior: Vec<f64>,
}

/// Average-linkage clustering of the senses on sqrt(JS) between their
/// (truncated) word distributions, cut at `count` clusters.
pub fn merge_senses(senses: &[Sparse], sense_prior: &[f64], count: usize) -> Clusters {
    let n = senses.len();
    let distances: Vec<f64> = (0..n * n)
        .into_par_iter()
        .map(|ij| {
            let (i, j) = (ij / n, ij % n);
            if i < j {
                js_divergence(&senses[i], &senses[j]).sqrt()
            } else {
                0.0
            }
        })
        .collect();
    let mut d = distances;
    for i in 0..n {
        for j in 0..i {
            d[i * n + j] = d[j * n + i];
        }
    }
    let merges = average_linkage(d, n);
    cut_dendrogram(&merges, n, count, sense_prior)
}

/// One merge of a dendrogram: two cluster representatives and the height.
#[derive(Debug, Clone, Copy)]
pub struct Merge {
    pub a: usize,
    pub b: usize,
    pub height: f64,
}

/// Average-linkage agglomerative clustering over a full symmetric distance
/// matrix (n × n, row-major), by the nearest-neighbour chain: O(n²) time.
/// Returns the n − 1 merges (clusters named by a member), unsorted.
pub fn average_linkage(mut d: Vec<f64>, n: usize) -> Vec<Merge> {
    let mut size = vec![1usize; n];
    let mut active = vec![true; n];
    let mut merges = Vec::with_capacity(n.saturating_sub(1));
    let mut chain: Vec<usize> = Vec::new();
    while merges.len() + 1 < n {
        if chain.is_empty() {
            chain.push(active.iter().position(|&a| a).expect("an active cluster"));
        }
        let top = *chain.last().unwrap();
        let previous = chain.len().checked_sub(2).map(|i| chain[i]);
        // The nearest active neighbour; prefer the previous chain element
        // on ties, so the chain ends at a reciprocal pair.
        let mut best = previous.unwrap_or(usize::MAX);
        let mut best_d = previous.map_or(f64::INFINITY, |p| d[top * n + p]);
        for j in 0..n {
            if active[j] && j != top && d[top * n + j] < best_d {
                best = j;
                best_d = d[top * n + j];
            }
        }
        if Some(best) == previous {
            chain.pop();
            chain.pop();
            let (a, b) = (top.min(best), top.max(best));
            merges.push(Merge {
                a,
                b,
                height: best_d,
            });
            // Lance–Williams for average linkage; b joins a.
            for k in 0..n {
                if active[k] && k != a && k != b {
                    let merged = (size[a] as f64 * d[a * n + k] + size[b] as f64 * d[b * n + k])
                        / (size[a] + size[b]) as f64;
                    d[a * n + k] = merged;
                    d[k * n + a] = merged;
                }
            }
            size[a] += size[b];
            active[b] = false;
        } else {
            chain.push(best);
        }
    }
    merges
}

/// Applies the lowest n − count merges (average linkage is monotone, so
/// this is the tree cut at `count` clusters).
pub fn cut_dendrogram(merges: &[Merge], n: usize, count: usize, sense_prior: &[f64]) -> Clusters {
    let mut order: Vec<&Merge> = merges.iter().collect();
    order.sort_by(|x, y| x.height.total_cmp(&y.height));
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    for m in order.into_iter().take(n.saturating_sub(count)) {
        let (ra, rb) = (find(&mut parent, m.a), find(&mut parent, m.b));
        parent[ra.max(rb)] = ra.min(rb);
    }
    let mut number = vec![u32::MAX; n];
    let mut next = 0u32;
    let mut of_sense = Vec::with_capacity(n);
    for k in 0..n {
        let root = find(&mut parent, k);
        if number[root] == u32::MAX {
            number[root] = next;
            next += 1;
        }
        of_sense.push(number[root]);
    }
    let mut prior = vec![0f64; next as usize];
    for (k, &c) in of_sense.iter().enumerate() {
        prior[c as usize] += sense_prior[k];
    }
    Clusters {
        count: next as usize,
        of_sense,
        prior,
    }
}
