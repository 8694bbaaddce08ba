//! Pseudo-word disambiguation: the classic test of sense induction that
//! needs no annotation (Gale, Church and Yarowsky 1992; Schütze 1998).
//!
//! Before counting, pairs of unrelated words (drawn at random, seeded, from
//! the mid-frequency band of the vocabulary) are each replaced by one
//! pseudo-word, `first|second`, everywhere in the training text, so the
//! model learns one ambiguous word with two known senses. Every
//! `held_out_every`-th document is kept out of training; each occurrence
//! of a paired word there becomes a test instance: its window of context
//! words and which original it was.
//!
//! Scoring (`brisk senses eval`): WordCtx2Sense infers the pseudo-word's
//! senses in each instance's context and takes the heaviest (raw) sense,
//! and apart from that the sense the context raised most over the word's
//! prior (largest w_k / w⁰_k: 15 small steps leave the heaviest sense
//! mostly where the prior had it).
//! As in supervised WSI scoring, the instances of each pair are split in
//! two (alternately); the first half maps every sense to the original it
//! co-occurs with most, the second half is scored with that map. The
//! baseline answers the more frequent original of the first half every
//! time (most frequent sense).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::context::InferConfig;
use super::model::SensesModel;
use super::train::Documents;
use crate::corpus::generated::Rng;
use crate::error::{Error, Result};

/// The test in a run directory.
pub const TEST_FILE: &str = "pseudo.json";

/// `[pseudo]` in a senses config; `pairs = 0` (the default) turns it off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PseudoConfig {
    /// Pseudo-words to make.
    pub pairs: usize,
    /// Every n-th document is held out of training for the test.
    pub held_out_every: usize,
    /// Frequency ranks the paired words are drawn from (a band of common,
    /// not function, words).
    pub min_rank: usize,
    pub max_rank: usize,
    /// Test instances kept per original word (the first ones met).
    pub max_instances: usize,
    /// Context words on each side of an instance.
    pub window: usize,
}

impl Default for PseudoConfig {
    fn default() -> Self {
        PseudoConfig {
            pairs: 0,
            held_out_every: 20,
            min_rank: 200,
            max_rank: 3000,
            max_instances: 200,
            window: 5,
        }
    }
}

impl PseudoConfig {
    pub fn check(&self) -> Result<()> {
        if self.pairs == 0 {
            return Ok(());
        }
        let bad = |m: String| Err(Error::Config(format!("pseudo.{m}")));
        if self.held_out_every < 2 {
            return bad("held_out_every must be at least 2".into());
        }
        if self.max_rank <= self.min_rank || self.max_rank - self.min_rank < 2 * self.pairs {
            return bad(format!(
                "min_rank..max_rank = {}..{} must hold at least 2 × pairs = {} words",
                self.min_rank,
                self.max_rank,
                2 * self.pairs
            ));
        }
        if self.window == 0 || self.max_instances == 0 {
            return bad("window and max_instances must be at least 1".into());
        }
        Ok(())
    }
}

/// One pseudo-word.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pair {
    pub pseudo: String,
    pub first: String,
    pub second: String,
    /// Occurrences of each original in the whole text.
    pub counts: [u64; 2],
}

/// A held-out occurrence of one of a pair's words.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instance {
    pub pair: usize,
    /// 0: the first word of the pair, 1: the second.
    pub truth: u8,
    pub context: Vec<String>,
}

/// The pairs and the held-out instances (`pseudo.json` in the run).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PseudoTest {
    pub pairs: Vec<Pair>,
    pub instances: Vec<Instance>,
}

/// Draws the pairs, holds out documents and merges each pair into its
/// pseudo-word: the training documents (word table re-ranked by frequency)
/// and the test.
pub fn make(
    documents: Documents,
    config: &PseudoConfig,
    seed: u64,
) -> Result<(Documents, PseudoTest)> {
    config.check()?;
    let words = &documents.words;
    let band: Vec<usize> = (config.min_rank..config.max_rank.min(words.len())).collect();
    if band.len() < 2 * config.pairs {
        return Err(Error::Usage(format!(
            "pseudo-words: the vocabulary has {} words, too few for {} pairs from ranks {}..{}",
            words.len(),
            config.pairs,
            config.min_rank,
            config.max_rank
        )));
    }
    let mut rng = Rng::new(seed ^ 0x7073_6575_646f);
    let mut band = band;
    for i in 0..2 * config.pairs {
        let j = i + rng.below(band.len() - i);
        band.swap(i, j);
    }
    // Old word id → (pair, which original).
    let mut paired: HashMap<u32, (usize, u8)> = HashMap::new();
    let mut pairs = Vec::with_capacity(config.pairs);
    for p in 0..config.pairs {
        let (a, b) = (band[2 * p], band[2 * p + 1]);
        paired.insert(a as u32, (p, 0));
        paired.insert(b as u32, (p, 1));
        pairs.push(Pair {
            pseudo: format!("{}|{}", words[a].0, words[b].0),
            first: words[a].0.clone(),
            second: words[b].0.clone(),
            counts: [words[a].1, words[b].1],
        });
    }
    let names: Vec<&str> = pairs.iter().map(|p| p.pseudo.as_str()).collect();
    let instances = held_out_instances(&documents, &paired, &names, config);
    // The new table: unpaired words and the pseudo-words, by frequency.
    let mut table: Vec<(String, u64, Option<u32>)> = Vec::new();
    for (i, (w, c)) in words.iter().enumerate() {
        if !paired.contains_key(&(i as u32)) {
            table.push((w.clone(), *c, Some(i as u32)));
        }
    }
    for pair in &pairs {
        table.push((pair.pseudo.clone(), pair.counts[0] + pair.counts[1], None));
    }
    table.sort_by_key(|e| std::cmp::Reverse(e.1));
    let mut new_id = vec![0u32; words.len()];
    let mut pseudo_id = vec![0u32; pairs.len()];
    let names: HashMap<&str, usize> = pairs
        .iter()
        .enumerate()
        .map(|(p, pair)| (pair.pseudo.as_str(), p))
        .collect();
    for (rank, (w, _, old)) in table.iter().enumerate() {
        match old {
            Some(old) => new_id[*old as usize] = rank as u32,
            None => pseudo_id[names[w.as_str()]] = rank as u32,
        }
    }
    let docs = documents
        .docs
        .iter()
        .enumerate()
        .filter(|(d, _)| d % config.held_out_every != 0)
        .map(|(_, doc)| {
            doc.iter()
                .map(|w| match paired.get(w) {
                    Some(&(p, _)) => pseudo_id[p],
                    None => new_id[*w as usize],
                })
                .collect()
        })
        .collect();
    let training = Documents {
        docs,
        words: table.into_iter().map(|(w, c, _)| (w, c)).collect(),
    };
    Ok((training, PseudoTest { pairs, instances }))
}

/// The occurrences of paired words in the held-out documents, with their
/// windows (another paired word in a window is written as its pseudo-word,
/// the only form the model knows).
fn held_out_instances(
    documents: &Documents,
    paired: &HashMap<u32, (usize, u8)>,
    pseudo_names: &[&str],
    config: &PseudoConfig,
) -> Vec<Instance> {
    let mut taken: HashMap<u32, usize> = HashMap::new();
    let mut instances = Vec::new();
    let name = |w: u32| match paired.get(&w) {
        Some(&(p, _)) => pseudo_names[p].to_string(),
        None => documents.words[w as usize].0.clone(),
    };
    for (d, doc) in documents.docs.iter().enumerate() {
        if d % config.held_out_every != 0 {
            continue;
        }
        for (i, &w) in doc.iter().enumerate() {
            let Some(&(pair, truth)) = paired.get(&w) else {
                continue;
            };
            let n = taken.entry(w).or_insert(0);
            if *n >= config.max_instances {
                continue;
            }
            *n += 1;
            let lo = i.saturating_sub(config.window);
            let hi = (i + config.window + 1).min(doc.len());
            let context = (lo..hi).filter(|&j| j != i).map(|j| name(doc[j])).collect();
            instances.push(Instance {
                pair,
                truth,
                context,
            });
        }
    }
    instances
}

/// Accuracy on one pair, or over all.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PseudoScore {
    pub pseudo: String,
    /// Scored instances (the second half).
    pub instances: usize,
    /// WordCtx2Sense's heaviest sense mapped to an original.
    pub accuracy: f64,
    /// The sense the context raised most above the word's prior (largest
    /// w_k / w⁰_k) mapped to an original.
    pub raised_accuracy: f64,
    /// Always the more frequent original of the mapping half.
    pub most_frequent: f64,
}

/// Hits of a sense → original map learnt on the even instances, scored on
/// the odd ones, and of the most frequent original: (hits, baseline hits,
/// scored).
fn map_and_score(decisions: &[(u32, u8)]) -> (usize, usize, usize) {
    let mut votes: HashMap<u32, [usize; 2]> = HashMap::new();
    let mut truths = [0usize; 2];
    for &(sense, truth) in decisions.iter().step_by(2) {
        votes.entry(sense).or_default()[truth as usize] += 1;
        truths[truth as usize] += 1;
    }
    let majority = u8::from(truths[1] > truths[0]);
    let mapped = |sense: u32| match votes.get(&sense) {
        Some(v) if v[0] != v[1] => u8::from(v[1] > v[0]),
        _ => majority,
    };
    let scored: Vec<&(u32, u8)> = decisions.iter().skip(1).step_by(2).collect();
    let hits = scored.iter().filter(|(s, t)| mapped(*s) == *t).count();
    let baseline = scored.iter().filter(|(_, t)| *t == majority).count();
    (hits, baseline, scored.len())
}

/// Scores every pair and all instances together (the last entry, named
/// `all`).
pub fn score(
    model: &SensesModel,
    test: &PseudoTest,
    config: &InferConfig,
) -> Result<Vec<PseudoScore>> {
    let mut results = Vec::new();
    let mut totals = [0usize; 4]; // hits, raised hits, baseline hits, scored
    for (p, pair) in test.pairs.iter().enumerate() {
        let w = model.lookup(&pair.pseudo).ok_or_else(|| {
            Error::Usage(format!(
                "the pseudo-word {:?} is not in the vocabulary of {}: was the model trained with this pseudo.json?",
                pair.pseudo,
                model.dir.display()
            ))
        })?;
        let prior = model.raw_vector(w);
        let (mut heaviest, mut raised) = (Vec::new(), Vec::new());
        for instance in test.instances.iter().filter(|i| i.pair == p) {
            let context: Vec<&str> = instance.context.iter().map(String::as_str).collect();
            let inferred = model.infer(w, &context, config)?;
            let top = |score: &dyn Fn(usize) -> f64| {
                (0..inferred.raw.len())
                    .max_by(|&a, &b| score(a).total_cmp(&score(b)).then(b.cmp(&a)))
                    .map(|i| inferred.raw[i].0)
                    .expect("a raw vector has at least one sense")
            };
            heaviest.push((top(&|i| inferred.raw[i].1 as f64), instance.truth));
            raised.push((
                top(&|i| inferred.raw[i].1 as f64 / prior[i].1 as f64),
                instance.truth,
            ));
        }
        let (hits, baseline, n) = map_and_score(&heaviest);
        let (raised_hits, _, _) = map_and_score(&raised);
        for (t, x) in totals.iter_mut().zip([hits, raised_hits, baseline, n]) {
            *t += x;
        }
        let rate = |x: usize| x as f64 / n.max(1) as f64;
        results.push(PseudoScore {
            pseudo: pair.pseudo.clone(),
            instances: n,
            accuracy: rate(hits),
            raised_accuracy: rate(raised_hits),
            most_frequent: rate(baseline),
        });
    }
    let rate = |x: usize| x as f64 / totals[3].max(1) as f64;
    results.push(PseudoScore {
        pseudo: "all".into(),
        instances: totals[3],
        accuracy: rate(totals[0]),
        raised_accuracy: rate(totals[1]),
        most_frequent: rate(totals[2]),
    });
    Ok(results)
}
