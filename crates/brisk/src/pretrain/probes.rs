//! Does the model read its context? A masked LM first learns token
//! frequencies: its loss falls to the unigram entropy and sits there (the
//! plateau) until it starts to use the words around the blank. The loss
//! alone says little about that second stage, so validation also reports:
//!
//! - **masked-token accuracy**, overall and by the target's frequency band
//!   (rank ≤ 100, 101–1,000, > 1,000 in the training split): a model that
//!   ignores context only ever guesses the most frequent tokens;
//! - **the margin below the unigram entropy** (nats): zero for a model that
//!   ignores context, so "off the plateau" is a margin well above zero;
//! - on the built-in corpus, **cloze probes** that only context answers
//!   ([`ClozeItem`]): subject–verb agreement across a noun of the other
//!   number, and a person's employer and home town named earlier in the
//!   document. Each is scored as accuracy among its candidates, next to two
//!   baselines: chance (a uniform guess among the candidates) and the
//!   unigram guess (always the candidate most frequent in training); and as
//!   a minimal-pair score against the item's contrast (the same document
//!   with the deciding context changed): the share of items whose answer
//!   the model prefers more in the item than in the contrast. A bias
//!   towards frequent candidates cancels out of the minimal-pair score, so
//!   a model that ignores context scores 0.5 on it.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::corpus::generated::{cloze_items, ClozeItem, ProbeKind, BLANK};
use crate::corpus::shards::{PreparedCorpus, Split};
use crate::corpus::tokenizer::SpecialIds;
use crate::error::{Error, Result};
use crate::model::{BertForMaskedLm, Ctx};

/// How often each token id occurs in the training split.
pub fn token_counts(corpus: &PreparedCorpus) -> Vec<u64> {
    let mut counts = vec![0u64; corpus.manifest.tokenizer.vocab_size];
    for i in 0..corpus.num_sequences(Split::Train) {
        for &t in corpus.sequence(Split::Train, i).tokens {
            if let Some(c) = counts.get_mut(t as usize) {
                *c += 1;
            }
        }
    }
    counts
}

/// The frequency bands of masked-token accuracy: `(name, last rank)`.
pub const BANDS: [(&str, usize); 3] = [("frequent", 100), ("middle", 1000), ("rare", usize::MAX)];

/// The band of every token id, by its rank in `counts` (1 = most frequent;
/// ties broken by id).
pub fn frequency_bands(counts: &[u64]) -> Vec<u8> {
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
    let mut band = vec![0u8; counts.len()];
    for (rank0, &id) in order.iter().enumerate() {
        band[id] = BANDS
            .iter()
            .position(|&(_, last)| rank0 < last)
            .unwrap_or(2) as u8;
    }
    band
}

/// Correct and total predictions, overall and per band.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    pub correct: u64,
    pub total: u64,
    pub by_band: [(u64, u64); 3],
}

impl Tally {
    /// Counts one prediction of a token in band `band`.
    pub fn add(&mut self, band: u8, correct: bool) {
        let c = u64::from(correct);
        self.correct += c;
        self.total += 1;
        let slot = &mut self.by_band[band as usize];
        slot.0 += c;
        slot.1 += 1;
    }

    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }

    /// `(band name, accuracy)` for the bands with any prediction.
    pub fn band_accuracies(&self) -> Vec<(&'static str, f64)> {
        BANDS
            .iter()
            .zip(&self.by_band)
            .filter(|(_, (_, n))| *n > 0)
            .map(|((name, _), (c, n))| (*name, *c as f64 / *n as f64))
            .collect()
    }
}

/// The index of the largest value (the first of equal ones).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

/// A cloze item in token ids.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedItem {
    pub kind: ProbeKind,
    /// `[CLS] … [SEP]`, one `[MASK]`.
    pub ids: Vec<u32>,
    /// The position of the `[MASK]`.
    pub blank: usize,
    /// Candidate token ids; `candidates[answer]` is right.
    pub candidates: Vec<u32>,
    pub answer: usize,
    /// The contrast's ids, blank and right candidate (when it is one token).
    pub contrast: Option<(Vec<u32>, usize, usize)>,
}

/// A probe's scores at one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ProbeResult {
    /// Share of items whose answer has the largest logit among candidates.
    pub accuracy: f64,
    /// Share of items whose answer is preferred (over the contrast's answer)
    /// more in the item than in its contrast; 0.5 without context.
    pub paired: f64,
}

/// What a probe's accuracy is to be read against.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Baselines {
    pub items: usize,
    /// Items with a contrast, which the minimal-pair score counts.
    pub pairs: usize,
    /// Mean of 1 / candidates: a uniform guess.
    pub chance: f64,
    /// Always the candidate most frequent in the training split.
    pub unigram: f64,
}

/// The fixed probe set of a corpus.
#[derive(Debug, Clone)]
pub struct ProbeSet {
    pub items: Vec<TokenizedItem>,
    pub baselines: BTreeMap<ProbeKind, Baselines>,
}

/// Items of each kind scored at every evaluation.
pub const ITEMS_PER_KIND: usize = 200;

impl ProbeSet {
    /// The probes of the built-in corpus generated from `seed`, in the
    /// corpus tokenizer's ids. Candidates that are not one token are
    /// dropped (so the model scores each with one prediction), and so are
    /// items whose answer is not one token.
    pub fn generated(tokenizer: &Tokenizer, seed: u64, counts: &[u64]) -> Result<ProbeSet> {
        let special = SpecialIds::of(tokenizer, "the corpus tokenizer")?;
        // More items are drawn than kept, so that enough survive the
        // one-token rule (a third of the towns are one token in `tiny`'s
        // vocabulary). Items whose contrast can be scored too (its answer
        // is one token as well) are kept first, so that the minimal-pair
        // score counts as many pairs as the vocabulary allows; the set is
        // fixed by the seed all the same.
        let mut paired = Vec::new();
        let mut unpaired = Vec::new();
        for item in cloze_items(seed, seed ^ 0x9b0be, 8 * ITEMS_PER_KIND) {
            match tokenize_item(tokenizer, &special, &item)? {
                Some(t) if t.contrast.is_some() => paired.push(t),
                Some(t) => unpaired.push(t),
                None => {}
            }
        }
        let mut items: Vec<TokenizedItem> = Vec::new();
        for item in paired.into_iter().chain(unpaired) {
            if items.iter().filter(|i| i.kind == item.kind).count() < ITEMS_PER_KIND {
                items.push(item);
            }
        }
        Ok(ProbeSet::of(items, counts))
    }

    /// The set of `items` with its baselines from the training `counts`.
    pub fn of(items: Vec<TokenizedItem>, counts: &[u64]) -> ProbeSet {
        let mut baselines = BTreeMap::new();
        for kind in ProbeKind::ALL {
            let of_kind: Vec<&TokenizedItem> = items.iter().filter(|i| i.kind == kind).collect();
            if of_kind.is_empty() {
                continue;
            }
            let n = of_kind.len() as f64;
            let chance = of_kind
                .iter()
                .map(|i| 1.0 / i.candidates.len() as f64)
                .sum::<f64>()
                / n;
            let unigram = of_kind
                .iter()
                .filter(|i| unigram_guess(i, counts) == i.answer)
                .count() as f64
                / n;
            baselines.insert(
                kind,
                Baselines {
                    items: of_kind.len(),
                    pairs: of_kind.iter().filter(|i| i.contrast.is_some()).count(),
                    chance,
                    unigram,
                },
            );
        }
        ProbeSet { items, baselines }
    }

    /// Accuracy per kind when `choose` picks a candidate for each item.
    pub fn accuracy_with(
        &self,
        mut choose: impl FnMut(&TokenizedItem) -> usize,
    ) -> BTreeMap<ProbeKind, f64> {
        let mut tally: BTreeMap<ProbeKind, (usize, usize)> = BTreeMap::new();
        for item in &self.items {
            let t = tally.entry(item.kind).or_default();
            t.0 += usize::from(choose(item) == item.answer);
            t.1 += 1;
        }
        tally
            .into_iter()
            .map(|(k, (c, n))| (k, c as f64 / n as f64))
            .collect()
    }

    /// The scores per kind of a masked LM: the candidate with the largest
    /// logit at the blank is its choice, and the minimal-pair score
    /// compares the answer's margin over the contrast's answer in the item
    /// and in its contrast (ties count half).
    pub fn score(
        &self,
        model: &BertForMaskedLm,
        batch: usize,
    ) -> Result<BTreeMap<ProbeKind, ProbeResult>> {
        let mut choices = Vec::with_capacity(self.items.len());
        let mut pairs: BTreeMap<ProbeKind, (f64, usize)> = BTreeMap::new();
        for chunk in self.items.chunks(batch.max(1)) {
            let texts: Vec<(&[u32], usize)> = chunk.iter().map(|i| (&i.ids[..], i.blank)).collect();
            let logits = blank_logits(model, &texts)?;
            let contrasts: Vec<(&[u32], usize)> = chunk
                .iter()
                .filter_map(|i| {
                    i.contrast
                        .as_ref()
                        .map(|(ids, blank, _)| (&ids[..], *blank))
                })
                .collect();
            let mut contrast_logits = blank_logits(model, &contrasts)?.into_iter();
            for (item, row) in chunk.iter().zip(logits) {
                let scores: Vec<f32> = item.candidates.iter().map(|&c| row[c as usize]).collect();
                choices.push(argmax(&scores));
                if let Some((_, _, other)) = &item.contrast {
                    let c = contrast_logits.next().expect("one row per contrast");
                    let (a, b) = (
                        item.candidates[item.answer] as usize,
                        item.candidates[*other] as usize,
                    );
                    let (here, there) = (row[a] - row[b], c[a] - c[b]);
                    let credit = match here.partial_cmp(&there) {
                        Some(std::cmp::Ordering::Greater) => 1.0,
                        Some(std::cmp::Ordering::Equal) => 0.5,
                        _ => 0.0,
                    };
                    let p = pairs.entry(item.kind).or_default();
                    p.0 += credit;
                    p.1 += 1;
                }
            }
        }
        let mut next = choices.into_iter();
        let accuracy = self.accuracy_with(|_| next.next().expect("one choice per item"));
        Ok(accuracy
            .into_iter()
            .map(|(kind, accuracy)| {
                let paired = pairs.get(&kind).map_or(f64::NAN, |(c, n)| c / *n as f64);
                (kind, ProbeResult { accuracy, paired })
            })
            .collect())
    }
}

/// The candidate a model that ignores context picks: the most frequent.
pub fn unigram_guess(item: &TokenizedItem, counts: &[u64]) -> usize {
    let freq: Vec<f32> = item
        .candidates
        .iter()
        .map(|&c| counts.get(c as usize).copied().unwrap_or(0) as f32)
        .collect();
    argmax(&freq)
}

/// An item in token ids, or `None` when its answer is not one token.
fn tokenize_item(
    tokenizer: &Tokenizer,
    special: &SpecialIds,
    item: &ClozeItem,
) -> Result<Option<TokenizedItem>> {
    let (ids, blank) = blank_of(tokenizer, special, &item.text)?;
    let mut candidates = Vec::new();
    let (mut answer, mut other) = (None, None);
    for (i, word) in item.candidates.iter().enumerate() {
        if let Some(id) = tokenizer.token_to_id(word) {
            if !candidates.contains(&id) {
                if i == item.answer {
                    answer = Some(candidates.len());
                }
                if i == item.contrast_answer {
                    other = Some(candidates.len());
                }
                candidates.push(id);
            }
        }
    }
    let Some(answer) = answer.filter(|_| candidates.len() >= 2) else {
        return Ok(None);
    };
    let contrast = match other {
        Some(other) => {
            let (ids, blank) = blank_of(tokenizer, special, &item.contrast)?;
            Some((ids, blank, other))
        }
        None => None,
    };
    Ok(Some(TokenizedItem {
        kind: item.kind,
        ids,
        blank,
        candidates,
        answer,
        contrast,
    }))
}

/// A text's token ids and the position of its one `[MASK]`.
fn blank_of(tokenizer: &Tokenizer, special: &SpecialIds, text: &str) -> Result<(Vec<u32>, usize)> {
    let encoding = tokenizer.encode(text, true)?;
    let ids = encoding.get_ids().to_vec();
    let blanks: Vec<usize> = (0..ids.len()).filter(|&i| ids[i] == special.mask).collect();
    match blanks[..] {
        [blank] => Ok((ids, blank)),
        _ => Err(Error::Tokenizer(format!(
            "a probe item has {} {BLANK} tokens after tokenizing, expected one: {text:?}",
            blanks.len()
        ))),
    }
}

/// The MLM logits at each text's blank, texts `(ids, blank)` padded to
/// the longest.
fn blank_logits(model: &BertForMaskedLm, texts: &[(&[u32], usize)]) -> Result<Vec<Vec<f32>>> {
    if texts.is_empty() {
        return Ok(Vec::new());
    }
    let len = texts.iter().map(|(t, _)| t.len()).max().unwrap_or(1);
    let (mut ids, mut mask, mut rows) = (Vec::new(), Vec::new(), Vec::new());
    for (b, (text, blank)) in texts.iter().enumerate() {
        for p in 0..len {
            ids.push(text.get(p).copied().unwrap_or(0));
            mask.push(if p < text.len() { 1.0f32 } else { 0.0 });
        }
        rows.push((b * len + blank) as u32);
    }
    let dev = model.bert.device();
    let shape = (texts.len(), len);
    let logits = model.forward(
        &Tensor::from_vec(ids, shape, dev)?,
        Some(&Tensor::from_vec(mask, shape, dev)?),
        &Tensor::from_vec(rows, texts.len(), dev)?,
        &mut Ctx::eval(),
    )?;
    Ok(logits.to_dtype(DType::F32)?.to_vec2()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_follow_rank() {
        let mut counts = vec![0u64; 1500];
        for (i, c) in counts.iter_mut().enumerate() {
            *c = 10_000 - i as u64;
        }
        let band = frequency_bands(&counts);
        assert_eq!((band[0], band[99], band[100]), (0, 0, 1));
        assert_eq!((band[999], band[1000], band[1499]), (1, 2, 2));
    }

    #[test]
    fn tally_counts_per_band() {
        let mut t = Tally::default();
        t.add(0, true);
        t.add(0, false);
        t.add(2, true);
        assert!((t.accuracy() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(t.band_accuracies(), [("frequent", 0.5), ("rare", 1.0)]);
    }
}
