//! MC-BERT's multi-choice cloze (Xu, Gong, Ke, He, Zheng, Wang, Bian &
//! Liu, "Efficient Language Pre-Training via a Meta Controller", 2020):
//! a small meta controller (an MLM generator sharing the embeddings)
//! corrupts the masked positions with its samples and proposes `K`
//! candidates at every position; the main model picks, per position, the
//! original token among them, or the reject option when the token was not
//! replaced.
//!
//! This module holds the data side: drawing candidates from the
//! controller's distribution and laying out the slots and labels.
//! - Slot 0 is the reject option ("not replaced"), a dedicated learned
//!   vector rather than a vocabulary token.
//! - At a replaced position, slot 1 holds the original token and the label
//!   is 1; elsewhere the label is 0 (reject).
//! - **De-duplication.** The other slots never hold the original token. The
//!   authors' code lets samples repeat it, which makes the label ambiguous:
//!   at a position that was not replaced, the original among the
//!   candidates is as right as "reject", and at a replaced one a second copy
//!   of the answer competes with slot 1. A sample equal to the original is
//!   drawn again (a few times, then replaced by the next non-special token),
//!   so every label has exactly one right answer. Repeats among the wrong
//!   candidates are harmless and kept.

use crate::corpus::generated::Rng;
use crate::corpus::tokenizer::SpecialIds;
use crate::pretrain::mlm::MaskedBatch;

/// Candidates per position, the reject slot included (the paper's K).
pub const CANDIDATES: usize = 10;

/// How often a sample equal to the original is drawn again before a
/// deterministic stand-in is used.
const REDRAWS: usize = 8;

/// One draw from a probability row by its cumulative sums (`cdf`, ending at
/// the row's total).
fn draw(cdf: &[f32], rng: &mut Rng) -> u32 {
    let total = *cdf.last().expect("a non-empty row");
    let u = rng.unit() as f32 * total;
    cdf.partition_point(|&c| c <= u).min(cdf.len() - 1) as u32
}

/// Cumulative sums of `softmax(logits)` (unnormalised: the last entry is
/// the total).
pub fn cumulative(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l));
    let mut sum = 0.0;
    logits
        .iter()
        .map(|&l| {
            sum += (l - max).exp();
            sum
        })
        .collect()
}

/// The main model's task for one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Choices {
    /// The corrupted input: the controller's first sample at each masked
    /// position.
    pub inputs: Vec<u32>,
    /// Per position, the token ids of slots 1..K (`K − 1` each); slot 0 is
    /// the reject option.
    pub candidates: Vec<u32>,
    /// Per position: 1 (slot 1, the original) where the input differs from
    /// the text, else 0 (reject).
    pub labels: Vec<u32>,
}

/// Builds the slots of every position of `tokens` from the controller's
/// cumulative distributions `cdfs` (one row per position, see
/// [`cumulative`]); masked positions (`masked.rows`) take the first sample
/// as their input.
pub fn choices(
    tokens: &[u32],
    masked: &MaskedBatch,
    cdfs: &[Vec<f32>],
    special: &SpecialIds,
    rng: &mut Rng,
) -> Choices {
    let mut inputs = tokens.to_vec();
    for &r in &masked.rows {
        inputs[r as usize] = draw(&cdfs[r as usize], rng);
    }
    let vocab = cdfs.first().map_or(0, Vec::len) as u32;
    let mut candidates = Vec::with_capacity(tokens.len() * (CANDIDATES - 1));
    let mut labels = Vec::with_capacity(tokens.len());
    for (i, (&original, cdf)) in tokens.iter().zip(cdfs).enumerate() {
        let replaced = inputs[i] != original;
        labels.push(replaced as u32);
        let wrong = if replaced {
            CANDIDATES - 2
        } else {
            CANDIDATES - 1
        };
        if replaced {
            candidates.push(original);
        }
        for _ in 0..wrong {
            let mut t = draw(cdf, rng);
            for _ in 0..REDRAWS {
                if t != original {
                    break;
                }
                t = draw(cdf, rng);
            }
            if t == original {
                t = next_other(original, vocab, special);
            }
            candidates.push(t);
        }
    }
    Choices {
        inputs,
        candidates,
        labels,
    }
}

/// The next non-special token after `token` (wrapping).
fn next_other(token: u32, vocab: u32, special: &SpecialIds) -> u32 {
    let mut t = token;
    loop {
        t = (t + 1) % vocab.max(1);
        // Back at `token`: every other id is special; keep it.
        if !special.contains(t) || t == token {
            return t;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECIAL: SpecialIds = SpecialIds {
        pad: 0,
        unk: 1,
        cls: 2,
        sep: 3,
        mask: 4,
    };

    /// A controller that puts most of its mass on token `peak`.
    fn peaked(vocab: usize, peak: usize) -> Vec<f32> {
        let logits: Vec<f32> = (0..vocab)
            .map(|t| if t == peak { 3.0 } else { 0.0 })
            .collect();
        cumulative(&logits)
    }

    #[test]
    fn slots_and_labels_on_a_hand_made_batch() {
        // [CLS] 10 11 12 [SEP]; positions 1 and 2 are masked. The controller
        // favours token 20 at position 1 (a replacement) and the original
        // 11 at position 2 (almost surely kept as is).
        let tokens = [2u32, 10, 11, 12, 3];
        let masked = MaskedBatch {
            inputs: vec![2, 4, 4, 12, 3],
            rows: vec![1, 2],
            targets: vec![10, 11],
        };
        let mut cdfs: Vec<Vec<f32>> = (0..5).map(|_| peaked(30, 25)).collect();
        cdfs[1] = peaked(30, 20);
        let mut sure = vec![-1e9f32; 30];
        sure[11] = 0.0;
        cdfs[2] = cumulative(&sure);
        let c = choices(&tokens, &masked, &cdfs, &SPECIAL, &mut Rng::new(1));
        let k = CANDIDATES - 1;
        assert_eq!(c.candidates.len(), 5 * k);
        assert_eq!(c.inputs[2], 11, "a sampled original stays the original");
        assert_eq!(c.labels[2], 0, "and is labelled not replaced");
        assert_ne!(c.inputs[1], 10);
        assert_eq!(c.labels[1], 1);
        // Slot 1 of the replaced position holds the true token.
        assert_eq!(c.candidates[k], 10);
        for (i, &original) in tokens.iter().enumerate() {
            let slots = &c.candidates[i * k..(i + 1) * k];
            let copies = slots.iter().filter(|&&t| t == original).count();
            let want = c.labels[i] as usize;
            assert_eq!(
                copies, want,
                "position {i}: the original appears only in slot 1"
            );
        }
        assert_eq!(c.labels, [0, 1, 0, 0, 0]);
    }

    #[test]
    fn draws_follow_the_distribution() {
        let cdf = cumulative(&[0.0f32.ln(), 0.5f32.ln(), 0.25f32.ln(), 0.25f32.ln()]);
        let mut rng = Rng::new(3);
        let n = 20_000;
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[draw(&cdf, &mut rng) as usize] += 1;
        }
        assert_eq!(counts[0], 0);
        for (t, p) in [(1, 0.5), (2, 0.25), (3, 0.25)] {
            assert!(
                (counts[t] as f64 / n as f64 - p).abs() < 0.015,
                "{counts:?}"
            );
        }
    }
}
