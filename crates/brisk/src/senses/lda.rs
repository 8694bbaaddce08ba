//! LDA over word-documents with a WarpLDA-style Metropolis–Hastings sampler
//! (Chen et al., "WarpLDA: a Cache Efficient O(1) Algorithm for Latent
//! Dirichlet Allocation", VLDB 2016), the sampler Word2Sense trains with.
//!
//! Every token (one co-occurrence of a document word d with a context word
//! w) holds a topic z and one pending proposal. An iteration has two
//! phases, each a pass over the tokens grouped one way:
//!
//! - **word phase**, grouped by context word: accept or reject the pending
//!   *document* proposal with the word-side ratio
//!   `(n_wk' + β)(n_k + Wβ) / ((n_wk + β)(n_k' + Wβ))`, then draw a *word*
//!   proposal from `q(k) ∝ n_wk + β` (a random token's topic of the same
//!   word, or with probability `Kβ / (n_w + Kβ)` a uniform topic);
//! - **document phase**, grouped by document: accept or reject the word
//!   proposal with `(n_dk' + α)(n_k + Wβ) / ((n_dk + α)(n_k' + Wβ))`, then
//!   draw a document proposal from `q(k) ∝ n_dk + α` the same way.
//!
//! Both proposals cost O(1) per token, and the counts a phase reads are
//! those at its start (WarpLDA's delayed update), so the groups of a phase
//! are independent and run in parallel with no locks. Every group draws from
//! a generator fixed by (seed, iteration, phase, group), so a run is
//! bit-for-bit the same at any thread count, and the sampler's whole state
//! is the topics, the proposals and the iteration number.
//!
//! `alpha` is the *sum* of the document prior over topics, as WarpLDA's
//! `--alpha` is (each topic gets α/K); `beta` is per word.

use std::sync::atomic::{AtomicU16, Ordering};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::cooc::SparseCounts;
use crate::corpus::generated::Rng;
use crate::corpus::shards::splitmix64;
use crate::error::{Error, Result};

/// LDA's settings (`[lda]` in a senses config); the defaults are Word2Sense's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LdaConfig {
    /// Number of topics (senses) K.
    pub topics: usize,
    /// Sum of the document-topic Dirichlet prior (α/K per topic).
    pub alpha: f64,
    /// Topic-word Dirichlet prior, per word.
    pub beta: f64,
    /// Sampling iterations (each a word phase and a document phase).
    pub iterations: usize,
}

impl Default for LdaConfig {
    fn default() -> Self {
        LdaConfig {
            topics: 3000,
            alpha: 0.1,
            beta: 0.001,
            iterations: 100,
        }
    }
}

impl LdaConfig {
    pub fn check(&self) -> Result<()> {
        if !(2..=u16::MAX as usize).contains(&self.topics) {
            return Err(Error::Config(format!(
                "lda.topics = {} must be between 2 and {}",
                self.topics,
                u16::MAX
            )));
        }
        for (name, value) in [("lda.alpha", self.alpha), ("lda.beta", self.beta)] {
            if !(value > 0.0 && value.is_finite()) {
                return Err(Error::Config(format!("{name} = {value} must be positive")));
            }
        }
        Ok(())
    }

    /// The per-topic document prior α/K.
    pub fn alpha_per_topic(&self) -> f64 {
        self.alpha / self.topics as f64
    }
}

/// Tokens in two orders: document-major (the order topics are stored in)
/// and, as indices into it, context-word-major.
struct Tokens {
    /// Context word of each token, document-major.
    word: Vec<u32>,
    /// `doc_offsets[d]..doc_offsets[d + 1]`: document d's tokens.
    doc_offsets: Vec<usize>,
    /// Token indices grouped by context word; `word_offsets` as above.
    by_word: Vec<u32>,
    word_offsets: Vec<usize>,
}

impl Tokens {
    /// Expands every count of `counts` into that many tokens.
    fn expand(counts: &SparseCounts) -> Result<Tokens> {
        let total = counts.total();
        if total > u32::MAX as u64 {
            return Err(Error::Usage(format!(
                "{total} co-occurrence tokens are more than this sampler indexes (2^32); raise cooc.min_count or cooc.subsample"
            )));
        }
        let mut word = Vec::with_capacity(total as usize);
        let mut doc_offsets = Vec::with_capacity(counts.rows + 1);
        doc_offsets.push(0);
        for d in 0..counts.rows {
            let (columns, n) = counts.row(d);
            for (&c, &n) in columns.iter().zip(n) {
                word.extend(std::iter::repeat_n(c, n as usize));
            }
            doc_offsets.push(word.len());
        }
        let mut word_offsets = vec![0usize; counts.cols + 1];
        for &w in &word {
            word_offsets[w as usize + 1] += 1;
        }
        for w in 0..counts.cols {
            word_offsets[w + 1] += word_offsets[w];
        }
        let mut next = word_offsets.clone();
        let mut by_word = vec![0u32; word.len()];
        for (t, &w) in word.iter().enumerate() {
            by_word[next[w as usize]] = t as u32;
            next[w as usize] += 1;
        }
        Ok(Tokens {
            word,
            doc_offsets,
            by_word,
            word_offsets,
        })
    }

    fn len(&self) -> usize {
        self.word.len()
    }
}

/// What one iteration did.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct IterationStats {
    pub iteration: usize,
    /// Log joint likelihood log p(w, z) per token: its word side at the
    /// start of the iteration, its document side after the word phase.
    pub log_likelihood: f64,
    /// Proposals accepted, as a fraction of the 2 per token.
    pub acceptance: f64,
    pub seconds: f64,
}

/// The sampler's state over one co-occurrence matrix.
pub struct Lda {
    config: LdaConfig,
    tokens: Tokens,
    /// Topic of each token (document-major). Atomic so that the word phase,
    /// which writes them in context-word order, needs no unsafe code; every
    /// token is written by one group only, so relaxed order suffices.
    topics: Vec<AtomicU16>,
    proposals: Vec<AtomicU16>,
    /// Tokens per topic, recounted after each phase.
    topic_totals: Vec<u64>,
    iteration: usize,
    seed: u64,
}

/// Which pass of an iteration a generator belongs to.
#[derive(Clone, Copy)]
enum Phase {
    Init = 0,
    Word = 1,
    Doc = 2,
}

fn group_rng(seed: u64, iteration: usize, phase: Phase, group: usize) -> Rng {
    Rng::new(seed ^ splitmix64(splitmix64(iteration as u64 * 3 + phase as u64) ^ group as u64))
}

/// One group's topics as they were at the start of the phase, and their
/// counts in a dense per-thread array, cleared through the list of topics it
/// touched (so a short group costs its length, not K).
struct GroupCounts {
    snapshot: Vec<u16>,
    dense: Vec<u32>,
    touched: Vec<u16>,
}

impl GroupCounts {
    fn new(topics: usize) -> GroupCounts {
        GroupCounts {
            snapshot: Vec::new(),
            dense: vec![0; topics],
            touched: Vec::new(),
        }
    }

    fn fill(&mut self, topics: impl Iterator<Item = u16>) {
        for &k in &self.touched {
            self.dense[k as usize] = 0;
        }
        self.touched.clear();
        self.snapshot.clear();
        self.snapshot.extend(topics);
        for &k in &self.snapshot {
            let n = &mut self.dense[k as usize];
            if *n == 0 {
                self.touched.push(k);
            }
            *n += 1;
        }
    }

    fn count(&self, topic: u16) -> f64 {
        self.dense[topic as usize] as f64
    }

    /// A proposal from q(k) ∝ n_k + prior (n as at the phase's start): a
    /// random token's topic, or with probability K·prior / (n + K·prior) a
    /// uniform topic. O(1).
    fn propose(&self, prior: f64, rng: &mut Rng) -> u16 {
        let k = self.dense.len();
        let len = self.snapshot.len() as f64;
        if rng.unit() * (len + k as f64 * prior) < k as f64 * prior {
            rng.below(k) as u16
        } else {
            self.snapshot[rng.below(self.snapshot.len())]
        }
    }

    /// Σ_k over touched topics of lnΓ(n_k + prior) − lnΓ(prior).
    fn ln_gamma_sum(&self, prior: f64) -> f64 {
        let base = ln_gamma(prior);
        self.touched
            .iter()
            .map(|&k| ln_gamma(self.dense[k as usize] as f64 + prior) - base)
            .sum()
    }
}

/// The Metropolis–Hastings test for moving a token from `old` to `new`
/// given the ratio of the target over the proposal's: accept when
/// `ratio >= 1`, else with probability `ratio`.
fn accept(old: u16, new: u16, ratio: f64, rng: &mut Rng) -> bool {
    new != old && (ratio >= 1.0 || rng.unit() < ratio)
}

/// Accepted proposals and the likelihood terms of one phase.
#[derive(Default, Clone, Copy)]
struct PhaseSums {
    accepted: u64,
    log_likelihood: f64,
}

impl std::ops::Add for PhaseSums {
    type Output = PhaseSums;
    fn add(self, other: PhaseSums) -> PhaseSums {
        PhaseSums {
            accepted: self.accepted + other.accepted,
            log_likelihood: self.log_likelihood + other.log_likelihood,
        }
    }
}

impl Lda {
    /// Draws every token's topic uniformly.
    pub fn new(counts: &SparseCounts, config: &LdaConfig, seed: u64) -> Result<Lda> {
        config.check()?;
        if counts.total() == 0 {
            return Err(Error::Usage(
                "the co-occurrence matrix is empty: no word has a context in the vocabulary".into(),
            ));
        }
        let tokens = Tokens::expand(counts)?;
        let k = config.topics;
        let mut topics = Vec::with_capacity(tokens.len());
        let mut proposals = Vec::with_capacity(tokens.len());
        for d in 0..counts.rows {
            let mut rng = group_rng(seed, 0, Phase::Init, d);
            for _ in tokens.doc_offsets[d]..tokens.doc_offsets[d + 1] {
                // The first pending proposal is the topic itself, so the
                // first word phase only draws word proposals.
                let z = rng.below(k) as u16;
                topics.push(AtomicU16::new(z));
                proposals.push(AtomicU16::new(z));
            }
        }
        let mut lda = Lda {
            config: config.clone(),
            tokens,
            topics,
            proposals,
            topic_totals: Vec::new(),
            iteration: 0,
            seed,
        };
        lda.recount_totals();
        Ok(lda)
    }

    /// Restores a state saved from [`Lda::topics`] and [`Lda::proposals`]
    /// after `iteration` iterations over the same matrix and config.
    pub fn restore(
        counts: &SparseCounts,
        config: &LdaConfig,
        seed: u64,
        iteration: usize,
        topics: Vec<u16>,
        proposals: Vec<u16>,
    ) -> Result<Lda> {
        config.check()?;
        let tokens = Tokens::expand(counts)?;
        let k = config.topics;
        if topics.len() != tokens.len() || proposals.len() != tokens.len() {
            return Err(Error::Usage(format!(
                "the saved sampler state has {} topics for {} tokens: it belongs to another co-occurrence matrix",
                topics.len(),
                tokens.len()
            )));
        }
        if topics.iter().chain(&proposals).any(|&z| z as usize >= k) {
            return Err(Error::Usage(format!(
                "the saved sampler state has topics beyond lda.topics = {k}"
            )));
        }
        let mut lda = Lda {
            config: config.clone(),
            tokens,
            topics: topics.into_iter().map(AtomicU16::new).collect(),
            proposals: proposals.into_iter().map(AtomicU16::new).collect(),
            topic_totals: Vec::new(),
            iteration,
            seed,
        };
        lda.recount_totals();
        Ok(lda)
    }

    pub fn iteration(&self) -> usize {
        self.iteration
    }

    pub fn num_tokens(&self) -> usize {
        self.tokens.len()
    }

    pub fn config(&self) -> &LdaConfig {
        &self.config
    }

    /// Every token's topic, document-major (row by row of the matrix, each
    /// count expanded in column order).
    pub fn topics(&self) -> Vec<u16> {
        self.topics
            .iter()
            .map(|z| z.load(Ordering::Relaxed))
            .collect()
    }

    /// Every token's pending proposal, in the same order.
    pub fn proposals(&self) -> Vec<u16> {
        self.proposals
            .iter()
            .map(|z| z.load(Ordering::Relaxed))
            .collect()
    }

    /// Tokens per topic.
    pub fn topic_totals(&self) -> &[u64] {
        &self.topic_totals
    }

    fn topic(&self, t: usize) -> u16 {
        self.topics[t].load(Ordering::Relaxed)
    }

    fn recount_totals(&mut self) {
        let k = self.config.topics;
        self.topic_totals = self
            .topics
            .par_chunks(1 << 20)
            .fold(
                || vec![0u64; k],
                |mut acc, chunk| {
                    for z in chunk {
                        acc[z.load(Ordering::Relaxed) as usize] += 1;
                    }
                    acc
                },
            )
            .reduce(
                || vec![0u64; k],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                    a
                },
            );
    }

    /// One word phase and one document phase.
    pub fn iterate(&mut self) -> IterationStats {
        let start = std::time::Instant::now();
        self.iteration += 1;
        let topic_terms = self.topic_terms();
        let words = self.word_phase();
        self.recount_totals();
        let docs = self.doc_phase();
        self.recount_totals();
        let n = self.tokens.len() as f64;
        IterationStats {
            iteration: self.iteration,
            log_likelihood: (topic_terms + words.log_likelihood + docs.log_likelihood) / n,
            acceptance: (words.accepted + docs.accepted) as f64 / (2.0 * n),
            seconds: start.elapsed().as_secs_f64(),
        }
    }

    /// Number of context words W.
    fn num_words(&self) -> usize {
        self.tokens.word_offsets.len() - 1
    }

    /// The topic normalisers of log p(w, z): Σ_k lnΓ(Wβ) − lnΓ(n_k + Wβ).
    fn topic_terms(&self) -> f64 {
        let wb = self.num_words() as f64 * self.config.beta;
        self.topic_totals
            .iter()
            .map(|&n| ln_gamma(wb) - ln_gamma(n as f64 + wb))
            .sum()
    }

    /// Accepts each token's pending document proposal against its context
    /// word's counts, then leaves a word proposal; returns the word-side
    /// terms of log p(w, z) at the phase's start.
    fn word_phase(&self) -> PhaseSums {
        let (k, beta) = (self.config.topics, self.config.beta);
        let wb = self.num_words() as f64 * beta;
        let totals = &self.topic_totals;
        (0..self.num_words())
            .into_par_iter()
            .map_init(
                || GroupCounts::new(k),
                |counts, w| {
                    let offsets = &self.tokens.word_offsets;
                    let group = &self.tokens.by_word[offsets[w]..offsets[w + 1]];
                    if group.is_empty() {
                        return PhaseSums::default();
                    }
                    counts.fill(group.iter().map(|&t| self.topic(t as usize)));
                    let mut rng = group_rng(self.seed, self.iteration, Phase::Word, w);
                    let mut accepted = 0;
                    for (&t, &old) in group.iter().zip(&counts.snapshot) {
                        let new = self.proposals[t as usize].load(Ordering::Relaxed);
                        let ratio = (counts.count(new) + beta) * (totals[old as usize] as f64 + wb)
                            / ((counts.count(old) + beta) * (totals[new as usize] as f64 + wb));
                        if accept(old, new, ratio, &mut rng) {
                            self.topics[t as usize].store(new, Ordering::Relaxed);
                            accepted += 1;
                        }
                    }
                    for &t in group {
                        let proposal = counts.propose(beta, &mut rng);
                        self.proposals[t as usize].store(proposal, Ordering::Relaxed);
                    }
                    PhaseSums {
                        accepted,
                        log_likelihood: counts.ln_gamma_sum(beta),
                    }
                },
            )
            .reduce(PhaseSums::default, |a, b| a + b)
    }

    /// Accepts each token's pending word proposal against its document's
    /// counts, then leaves a document proposal; returns the document-side
    /// terms of log p(z) at the phase's start.
    fn doc_phase(&self) -> PhaseSums {
        let (k, beta) = (self.config.topics, self.config.beta);
        let alpha = self.config.alpha_per_topic();
        let wb = self.num_words() as f64 * beta;
        let totals = &self.topic_totals;
        let docs = self.tokens.doc_offsets.len() - 1;
        (0..docs)
            .into_par_iter()
            .map_init(
                || GroupCounts::new(k),
                |counts, d| {
                    let range = self.tokens.doc_offsets[d]..self.tokens.doc_offsets[d + 1];
                    if range.is_empty() {
                        return PhaseSums::default();
                    }
                    counts.fill(range.clone().map(|t| self.topic(t)));
                    let mut rng = group_rng(self.seed, self.iteration, Phase::Doc, d);
                    let mut accepted = 0;
                    for (t, &old) in range.clone().zip(&counts.snapshot) {
                        let new = self.proposals[t].load(Ordering::Relaxed);
                        let ratio = (counts.count(new) + alpha)
                            * (totals[old as usize] as f64 + wb)
                            / ((counts.count(old) + alpha) * (totals[new as usize] as f64 + wb));
                        if accept(old, new, ratio, &mut rng) {
                            self.topics[t].store(new, Ordering::Relaxed);
                            accepted += 1;
                        }
                    }
                    for t in range.clone() {
                        let proposal = counts.propose(alpha, &mut rng);
                        self.proposals[t].store(proposal, Ordering::Relaxed);
                    }
                    let ka = k as f64 * alpha;
                    PhaseSums {
                        accepted,
                        log_likelihood: counts.ln_gamma_sum(alpha) + ln_gamma(ka)
                            - ln_gamma(range.len() as f64 + ka),
                    }
                },
            )
            .reduce(PhaseSums::default, |a, b| a + b)
    }

    /// Topic-word counts n_kc as a K × W matrix.
    pub fn topic_word_matrix(&self) -> SparseCounts {
        let k = self.config.topics;
        // Per context word, its (topic, count) pairs; then transposed.
        let per_word: Vec<Vec<(u16, u32)>> = (0..self.num_words())
            .into_par_iter()
            .map(|w| {
                let offsets = &self.tokens.word_offsets;
                let group = &self.tokens.by_word[offsets[w]..offsets[w + 1]];
                run_lengths(group.iter().map(|&t| self.topic(t as usize)).collect())
            })
            .collect();
        let mut entries: Vec<(u64, u32)> = per_word
            .iter()
            .enumerate()
            .flat_map(|(w, row)| {
                row.iter()
                    .map(move |&(z, n)| ((z as u64) << 32 | w as u64, n))
            })
            .collect();
        entries.sort_unstable_by_key(|e| e.0);
        SparseCounts::from_sorted(k, self.num_words(), &entries)
    }

    /// Document-topic counts n_dk as a D × K matrix.
    pub fn doc_topic_matrix(&self) -> SparseCounts {
        let docs = self.tokens.doc_offsets.len() - 1;
        let rows: Vec<Vec<(u16, u32)>> = (0..docs)
            .into_par_iter()
            .map(|d| {
                let range = self.tokens.doc_offsets[d]..self.tokens.doc_offsets[d + 1];
                run_lengths(range.map(|t| self.topic(t)).collect())
            })
            .collect();
        let entries: Vec<(u64, u32)> = rows
            .iter()
            .enumerate()
            .flat_map(|(d, row)| {
                row.iter()
                    .map(move |&(z, n)| ((d as u64) << 32 | z as u64, n))
            })
            .collect();
        SparseCounts::from_sorted(docs, self.config.topics, &entries)
    }
}

/// `(value, count)` of the sorted values.
fn run_lengths(mut values: Vec<u16>) -> Vec<(u16, u32)> {
    values.sort_unstable();
    let mut out: Vec<(u16, u32)> = Vec::new();
    for z in values {
        match out.last_mut() {
            Some((k, n)) if *k == z => *n += 1,
            _ => out.push((z, 1)),
        }
    }
    out
}

/// ln Γ(x) for x > 0: Stirling's series above 7, shifted by Γ(x+1) = xΓ(x)
/// below (relative error under 1e-12 for the arguments LDA needs).
pub fn ln_gamma(mut x: f64) -> f64 {
    let mut shift = 0.0;
    while x < 7.0 {
        shift -= x.ln();
        x += 1.0;
    }
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    let series = inv * (1.0 / 12.0 - inv2 * (1.0 / 360.0 - inv2 * (1.0 / 1260.0 - inv2 / 1680.0)));
    shift + (x - 0.5) * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI).ln() + series
}
