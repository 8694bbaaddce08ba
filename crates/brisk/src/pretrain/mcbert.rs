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
//!   of the answer competes with slot 1. So the wrong candidates are drawn
//!   from the controller's distribution with the original's mass taken out
//!   (the rest renormalised), and every label has exactly one right answer.
//!   Removing the mass rather than redrawing matters where the controller is
//!   sure of the original: redraws would almost never escape it. Repeats
//!   among the wrong candidates are harmless and kept.
//!
//! Positions are independent, so they are built in parallel, each from its
//! own random stream (seeded by one draw of the batch's generator): the
//! result does not depend on the thread count.

use candle_core::{DType, Device, Tensor, D};
use rayon::prelude::*;

use super::mlm::MaskedBatch;
use super::objective::{Batch, BatchLoss, Objective};
use crate::config::{ModelConfig, SharedEmbeddings};
use crate::corpus::generated::Rng;
use crate::corpus::tokenizer::SpecialIds;
use crate::error::Result;
use crate::model::device::gumbel_argmax;
use crate::model::fused::kernels::{self, exp_f32, simd};
use crate::model::mcbert::McBert;
use crate::model::{Ctx, InputMix, Params};

/// Candidates per position, the reject slot included (the paper's K).
pub const CANDIDATES: usize = 10;

/// The multi-choice cloze as a pre-training [`Objective`]: the
/// controller's MLM loss plus `weight` (`objective.discriminator_weight`)
/// times the main model's multi-choice loss.
pub struct MultiChoice {
    pub model: McBert,
    pub weight: f64,
}

impl MultiChoice {
    pub fn new(
        cfg: &ModelConfig,
        controller_size: f64,
        share: SharedEmbeddings,
        weight: f64,
        params: &mut Params,
        seed: u64,
    ) -> Result<MultiChoice> {
        Ok(MultiChoice {
            model: McBert::new(cfg, controller_size, share, params, seed)?,
            weight,
        })
    }
}

impl Objective for MultiChoice {
    fn batch_loss(&self, batch: &Batch, rng: &mut Rng, ctx: &mut Ctx) -> Result<BatchLoss> {
        let l = losses(
            &self.model,
            batch.tokens,
            batch.masked,
            batch.shape,
            self.weight,
            batch.special,
            rng,
            batch.mix,
            ctx,
        )?;
        let logged = vec![
            (
                "generator_loss".into(),
                l.controller.to_scalar::<f32>()? as f64,
            ),
            ("choice_loss".into(), l.choice.to_scalar::<f32>()? as f64),
            ("replaced".into(), l.replaced),
        ];
        Ok(BatchLoss {
            total: l.total,
            hidden: l.hidden,
            logged,
            flops_skipped: 0.0,
        })
    }

    fn masked_lm_logits(
        &self,
        masked: &MaskedBatch,
        shape: (usize, usize),
        ctx: &mut Ctx,
    ) -> Result<Option<Tensor>> {
        let dev = self.model.main.device();
        let hidden = self
            .model
            .control(&masked.inputs_tensor(shape, dev)?, ctx)?;
        let logits = self
            .model
            .controller_logits(&hidden, &masked.rows_tensor(dev)?)?;
        Ok(Some(logits))
    }

    fn is_fused(&self) -> bool {
        self.model.is_fused()
    }
}

/// The losses of one MC-BERT batch.
pub struct McBertLosses {
    /// `controller + weight × choice`.
    pub total: Tensor,
    pub controller: Tensor,
    pub choice: Tensor,
    /// Share of the main model's inputs that differ from the text.
    pub replaced: f64,
    /// The main model's last hidden states.
    pub hidden: Tensor,
}

/// The controller's MLM loss (mean over masked tokens); its samples (from
/// `rng`, no gradient) corrupt the masked positions and fill the candidate
/// slots; then the main model's multi-choice loss (mean over tokens).
/// `mix` changes the main model's input embeddings.
#[allow(clippy::too_many_arguments)]
pub fn losses(
    model: &McBert,
    tokens: &[u32],
    masked: &MaskedBatch,
    (batch, len): (usize, usize),
    weight: f64,
    special: &SpecialIds,
    rng: &mut Rng,
    mix: Option<&InputMix>,
    ctx: &mut Ctx,
) -> Result<McBertLosses> {
    let dev = model.main.device();
    let n = batch * len;
    let hidden = model.control(&masked.inputs_tensor((batch, len), dev)?, ctx)?;
    let at = (&masked.rows_tensor(dev)?, &masked.targets_tensor(dev)?);
    let (controller, _) = model.controller_head.loss(&hidden, &model.main, at, None)?;
    // The candidates need the controller's distribution at every position,
    // but no gradient flows through sampling: the head reads every row
    // forward only, a block at a time, and each row's slots are drawn as
    // soon as its logits exist.
    let c = match dev.is_cpu() {
        true => choices_with(
            tokens,
            masked,
            rng,
            |slots| {
                model
                    .controller_head
                    .visit_rows(&hidden, &model.main, &|i, row| slots(i, row))
            },
            special,
        )?,
        false => {
            let (hidden, words) = (hidden.detach(), model.main.word_embeddings().detach());
            let logits = |rows: &Tensor| model.controller_head.forward(&hidden, rows, &words);
            choices_on_device(tokens, masked, logits, dev, special, rng)?
        }
    };
    let replaced = c.labels.iter().sum::<u32>() as f64 / n as f64;
    let ids = Tensor::from_vec(c.inputs, (batch, len), dev)?;
    let hidden = model.main.forward(&ids, None, None, mix, ctx)?;
    let choice = model
        .head
        .loss(&hidden, &c.candidates, &c.labels, &model.main)?;
    let total = (&controller + (&choice * weight)?)?;
    Ok(McBertLosses {
        total,
        controller,
        choice,
        replaced,
        hidden,
    })
}

/// Weights per block in [`RowWeights`]' walk: a draw skips whole blocks by
/// their sums and walks token by token only inside the block it lands in.
const BLOCK: usize = 64;

/// One row of the controller's softmax, without normalising: weights
/// `exp(logit − m)` where `m` is the largest logit of the tokens other than
/// `original`, so that those keep their precision however sure the row is
/// of the original (whose weight may then be huge, or infinite).
///
/// This runs on every position of every batch (a vocabulary of exps per
/// row), so the exps are the vectorised [`exp_f32`] and the draws walk
/// block sums rather than every token.
pub struct RowWeights {
    weights: Vec<f32>,
    /// Per [`BLOCK`] of tokens, the sum of their weights, the original's
    /// left out.
    blocks: Vec<f64>,
    original: usize,
    /// The total weight of the tokens other than the original.
    others: f64,
}

/// `w = exp(l − m)` for each logit `l`; −∞ stays exactly 0 (the fast exp
/// would give its floor).
#[inline(always)]
fn exponentiate(w: &mut [f32], logits: &[f32], m: f32) {
    for (w, &l) in w.iter_mut().zip(logits) {
        *w = match l == f32::NEG_INFINITY {
            true => 0.0,
            false => exp_f32(l - m),
        };
    }
}

/// The largest of `x`, −∞ when empty.
#[inline(always)]
fn largest(x: &[f32]) -> f32 {
    match x.is_empty() {
        true => f32::NEG_INFINITY,
        false => kernels::max(x),
    }
}

/// The sum of each [`BLOCK`] of `weights`, `original`'s left out (it may
/// be ∞).
#[inline(always)]
fn block_sums(weights: &[f32], original: usize) -> Vec<f64> {
    weights
        .chunks(BLOCK)
        .enumerate()
        .map(|(b, c)| match original / BLOCK == b {
            true => c
                .iter()
                .enumerate()
                .filter(|&(i, _)| b * BLOCK + i != original)
                .map(|(_, &w)| w as f64)
                .sum(),
            false => sum_f64(c),
        })
        .collect()
}

/// Σ x in f64, in eight lanes so that it vectorises.
#[inline(always)]
fn sum_f64(x: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i] as f64;
        }
    }
    acc.iter().sum::<f64>() + rest.iter().map(|&w| w as f64).sum::<f64>()
}

impl RowWeights {
    pub fn new(logits: &[f32], original: u32) -> RowWeights {
        let original = original as usize;
        let m = simd!(largest(&logits[..original]).max(largest(&logits[original + 1..])));
        let mut weights = vec![0f32; logits.len()];
        // With no finite other logit, only the original can be drawn.
        if m.is_finite() {
            simd!(exponentiate(&mut weights, logits, m));
        }
        // The original's own weight, exactly: it may overflow to ∞.
        weights[original] = match m.is_finite() {
            true => (logits[original] - m).exp(),
            false => 1.0,
        };
        let blocks = simd!(block_sums(&weights, original));
        let others = blocks.iter().sum();
        RowWeights {
            weights,
            blocks,
            original,
            others,
        }
    }

    /// One draw from the whole row (`u` uniform in [0, 1)).
    pub fn draw(&self, u: f64) -> u32 {
        let own = self.weights[self.original] as f64;
        if !own.is_finite() {
            return self.original as u32;
        }
        self.walk(true, self.others + own, &[u])[0]
    }

    /// One draw per uniform in `us` from the row without the original;
    /// `None` when no other token has any mass.
    pub fn draw_others(&self, us: &[f64]) -> Option<Vec<u32>> {
        (self.others > 0.0).then(|| self.walk(false, self.others, us))
    }

    /// Token `t`'s weight in a walk (the original's only when included).
    fn weight(&self, t: usize, with_original: bool) -> f32 {
        match t == self.original && !with_original {
            true => 0.0,
            false => self.weights[t],
        }
    }

    /// The draws at `us · total` along the cumulative weights (the
    /// original's only when `with_original`), all in one pass over the row.
    fn walk(&self, with_original: bool, total: f64, us: &[f64]) -> Vec<u32> {
        let mut order: Vec<usize> = (0..us.len()).collect();
        order.sort_by(|&a, &b| us[a].total_cmp(&us[b]));
        let mut out = vec![0u32; us.len()];
        let (mut next, mut cumulative) = (0, 0.0);
        let own_block = self.original / BLOCK;
        for (b, &sum) in self.blocks.iter().enumerate() {
            let block = match b == own_block && with_original {
                true => sum + self.weights[self.original] as f64,
                false => sum,
            };
            // The next draw lies beyond this block: skip it whole.
            if cumulative + block < us[order[next]] * total {
                cumulative += block;
                continue;
            }
            let end = ((b + 1) * BLOCK).min(self.weights.len());
            for t in b * BLOCK..end {
                let w = self.weight(t, with_original);
                if w <= 0.0 {
                    continue;
                }
                cumulative += w as f64;
                while next < order.len() && us[order[next]] * total < cumulative {
                    out[order[next]] = t as u32;
                    next += 1;
                }
                if next == order.len() {
                    return out;
                }
            }
        }
        // Rounding at the very end: the last token with weight.
        let last = (0..self.weights.len())
            .rev()
            .find(|&t| self.weight(t, with_original) > 0.0)
            .unwrap_or(0);
        for &i in &order[next..] {
            out[i] = last as u32;
        }
        out
    }
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
/// `logits` (`[positions, vocab]`, row-major); masked positions
/// (`masked.rows`) take a sample as their input.
pub fn choices(
    tokens: &[u32],
    masked: &MaskedBatch,
    logits: &[f32],
    special: &SpecialIds,
    rng: &mut Rng,
) -> Choices {
    let vocab = logits.len() / tokens.len().max(1);
    let visit = |slots: &(dyn Fn(usize, &[f32]) -> Slots + Sync)| -> Result<Vec<Slots>> {
        Ok((0..tokens.len())
            .into_par_iter()
            .map(|i| slots(i, &logits[i * vocab..(i + 1) * vocab]))
            .collect())
    };
    choices_with(tokens, masked, rng, visit, special).expect("slices cannot fail")
}

/// One position's input and its slots 1..K.
type Slots = (u32, Vec<u32>);

/// [`choices`], with the logits rows handed over by `visit`, which calls
/// its argument on every position's row (in any order, in parallel) and
/// returns the results in position order.
pub fn choices_with(
    tokens: &[u32],
    masked: &MaskedBatch,
    rng: &mut Rng,
    visit: impl FnOnce(&(dyn Fn(usize, &[f32]) -> Slots + Sync)) -> Result<Vec<Slots>>,
    special: &SpecialIds,
) -> Result<Choices> {
    let mut is_masked = vec![false; tokens.len()];
    for &r in &masked.rows {
        is_masked[r as usize] = true;
    }
    let base = rng.next_u64();
    let slots = visit(&|i, row| {
        let mut stream = Rng::new(base ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
        position_slots(tokens[i], is_masked[i], row, special, &mut stream)
    })?;
    let mut c = Choices {
        inputs: Vec::with_capacity(tokens.len()),
        candidates: Vec::with_capacity(tokens.len() * (CANDIDATES - 1)),
        labels: Vec::with_capacity(tokens.len()),
    };
    for (&original, (input, candidates)) in tokens.iter().zip(slots) {
        c.inputs.push(input);
        c.labels.push((input != original) as u32);
        c.candidates.extend(candidates);
    }
    Ok(c)
}

/// Positions whose controller logits a device holds at once in
/// [`choices_on_device`]: bounds its `[rows, vocab]` temporaries (4,096 ×
/// 30,522 f32 is 500 MB each).
const DEVICE_ROWS: usize = 4096;

/// [`choices`] drawn where `logits` live (a GPU): the same slots, labels
/// and distributions, sampled by the Gumbel-max trick instead of a walk
/// over host weights, so the controller's `[positions, vocab]` logits never
/// cross to the host; only the draws (K u32 per position) and one float per
/// position (does the row have mass besides the original?) do.
/// `logits(rows)` gives the controller's logits `[rows, vocab]` at the
/// flattened positions `rows` (u32). The draws differ from the host
/// path's, the distribution does not.
pub fn choices_on_device(
    tokens: &[u32],
    masked: &MaskedBatch,
    logits: impl Fn(&Tensor) -> Result<Tensor>,
    device: &Device,
    special: &SpecialIds,
    rng: &mut Rng,
) -> Result<Choices> {
    let mut is_masked = vec![false; tokens.len()];
    for &r in &masked.rows {
        is_masked[r as usize] = true;
    }
    let base = rng.next_u64();
    let key = |chunk: usize, draw: usize| {
        base ^ ((chunk * CANDIDATES + draw) as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    };
    let mut c = Choices {
        inputs: Vec::with_capacity(tokens.len()),
        candidates: Vec::with_capacity(tokens.len() * (CANDIDATES - 1)),
        labels: Vec::with_capacity(tokens.len()),
    };
    for (chunk, start) in (0..tokens.len()).step_by(DEVICE_ROWS).enumerate() {
        let end = (start + DEVICE_ROWS).min(tokens.len());
        let rows = Tensor::from_vec((start as u32..end as u32).collect(), end - start, device)?;
        let l = logits(&rows)?.detach().to_dtype(DType::F32)?;
        let vocab = l.dim(1)?;
        let originals = Tensor::from_slice(&tokens[start..end], end - start, device)?;
        // The row without the original: its logit at −∞.
        let is_original = Tensor::arange(0u32, vocab as u32, device)?
            .unsqueeze(0)?
            .broadcast_eq(&originals.unsqueeze(1)?)?;
        let never = Tensor::full(f32::NEG_INFINITY, l.dims(), device)?;
        let others = is_original.where_cond(&never, &l)?;
        let has_others: Vec<f32> = others.max(D::Minus1)?.to_vec1()?;
        let inputs: Vec<u32> = gumbel_argmax(&l, key(chunk, 0))?.to_vec1()?;
        let draws = (1..CANDIDATES)
            .map(|k| gumbel_argmax(&others, key(chunk, k)))
            .collect::<Result<Vec<_>>>()?;
        let draws: Vec<Vec<u32>> = Tensor::stack(&draws, 1)?.to_vec2()?;
        for (i, drawn) in (start..end).zip(draws) {
            let original = tokens[i];
            let input = match is_masked[i] {
                true => inputs[i - start],
                false => original,
            };
            c.inputs.push(input);
            c.labels.push((input != original) as u32);
            let first = c.candidates.len();
            if input != original {
                c.candidates.push(original);
            }
            let wanted = first + CANDIDATES - 1 - c.candidates.len();
            match has_others[i - start] > f32::NEG_INFINITY {
                true => c.candidates.extend(&drawn[..wanted]),
                false => {
                    let stand_in = next_other(original, vocab as u32, special);
                    c.candidates.resize(first + CANDIDATES - 1, stand_in)
                }
            }
        }
    }
    Ok(c)
}

/// One position: its input (a sample from `row` where masked, else the
/// original) and slots 1..K: the original first where the input differs,
/// then samples from `row` without the original.
fn position_slots(
    original: u32,
    masked: bool,
    row: &[f32],
    special: &SpecialIds,
    rng: &mut Rng,
) -> (u32, Vec<u32>) {
    let weights = RowWeights::new(row, original);
    let input = if masked {
        weights.draw(rng.unit())
    } else {
        original
    };
    let mut candidates = Vec::with_capacity(CANDIDATES - 1);
    if input != original {
        candidates.push(original);
    }
    let us: Vec<f64> = (candidates.len()..CANDIDATES - 1)
        .map(|_| rng.unit())
        .collect();
    match weights.draw_others(&us) {
        Some(drawn) => candidates.extend(drawn),
        // Without other mass, a deterministic stand-in keeps the slots wrong.
        None => candidates.resize(
            CANDIDATES - 1,
            next_other(original, row.len() as u32, special),
        ),
    }
    (input, candidates)
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

    /// A controller's logits that put most of the mass on token `peak`.
    fn peaked(vocab: usize, peak: usize) -> Vec<f32> {
        (0..vocab)
            .map(|t| if t == peak { 3.0 } else { 0.0 })
            .collect()
    }

    /// [`choices_on_device`] on the CPU, the logits handed over as a tensor.
    fn on_device(tokens: &[u32], masked: &MaskedBatch, logits: &[f32], rng: &mut Rng) -> Choices {
        let dev = Device::Cpu;
        let vocab = logits.len() / tokens.len();
        let all = Tensor::from_slice(logits, (tokens.len(), vocab), &dev).unwrap();
        let rows = |r: &Tensor| Ok(all.index_select(r, 0)?);
        choices_on_device(tokens, masked, rows, &dev, &SPECIAL, rng).unwrap()
    }

    #[test]
    fn slots_and_labels_on_a_hand_made_batch() {
        let host =
            |t: &[u32], m: &MaskedBatch, l: &[f32], rng: &mut Rng| choices(t, m, l, &SPECIAL, rng);
        hand_made_batch(host);
        hand_made_batch(on_device);
    }

    fn hand_made_batch(choose: impl Fn(&[u32], &MaskedBatch, &[f32], &mut Rng) -> Choices) {
        // [CLS] 10 11 12 [SEP]; positions 1 and 2 are masked. The controller
        // favours token 20 at position 1 (a replacement) and the original
        // 11 at position 2 (almost surely kept as is).
        let tokens = [2u32, 10, 11, 12, 3];
        let masked = MaskedBatch {
            inputs: vec![2, 4, 4, 12, 3],
            rows: vec![1, 2],
            targets: vec![10, 11],
        };
        let mut rows: Vec<Vec<f32>> = (0..5).map(|_| peaked(30, 25)).collect();
        rows[1] = peaked(30, 20);
        let mut sure = vec![-1e9f32; 30];
        sure[11] = 0.0;
        rows[2] = sure;
        let logits = rows.concat();
        let c = choose(&tokens, &masked, &logits, &mut Rng::new(1));
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
    fn candidates_without_the_original_follow_the_rest_renormalised() {
        // The original (token 1) has almost all the mass; the others keep
        // their 2 : 1 : 1 proportions.
        let logits = [1.0f32.ln(), 40.0, 0.5f32.ln(), 0.25f32.ln(), 0.25f32.ln()];
        let weights = RowWeights::new(&logits, 1);
        let mut rng = Rng::new(5);
        let n = 20_000;
        let us: Vec<f64> = (0..n).map(|_| rng.unit()).collect();
        let mut counts = [0usize; 5];
        for t in weights.draw_others(&us).unwrap() {
            counts[t as usize] += 1;
        }
        assert_eq!(counts[1], 0, "{counts:?}");
        for (t, p) in [(0, 0.5), (2, 0.25), (3, 0.125), (4, 0.125)] {
            assert!(
                (counts[t] as f64 / n as f64 - p).abs() < 0.015,
                "{counts:?}"
            );
        }
        // A row far surer of the original than f32 can weigh keeps it.
        let sure = RowWeights::new(&[0.0, 200.0, 0.0], 1);
        assert_eq!(sure.draw(0.5), 1);
        assert!(RowWeights::new(&[f32::NEG_INFINITY, 0.0], 1)
            .draw_others(&[0.5])
            .is_none());
    }

    #[test]
    fn block_walk_draws_what_a_token_by_token_walk_draws() {
        // A vocabulary of several blocks, some tokens with no mass, the
        // original inside a block; every draw equals the plain inverse CDF
        // over the same weights.
        let mut rng = Rng::new(9);
        let v = 5 * BLOCK + 17;
        let logits: Vec<f32> = (0..v)
            .map(|t| match t % 13 {
                0 => f32::NEG_INFINITY,
                _ => (rng.unit() * 8.0 - 4.0) as f32,
            })
            .collect();
        let original = 2 * BLOCK + 5;
        let weights = RowWeights::new(&logits, original as u32);
        let plain = |u: f64, with_original: bool| -> u32 {
            let w = |t: usize| weights.weight(t, with_original) as f64;
            let total: f64 = (0..v).map(w).sum();
            let mut cumulative = 0.0;
            for t in 0..v {
                cumulative += w(t);
                if w(t) > 0.0 && u * total < cumulative {
                    return t as u32;
                }
            }
            unreachable!()
        };
        let us: Vec<f64> = (0..2000).map(|_| rng.unit()).collect();
        let others = weights.draw_others(&us).unwrap();
        for (&u, &got) in us.iter().zip(&others) {
            assert_eq!(got, plain(u, false), "u = {u}");
            assert_eq!(weights.draw(u), plain(u, true), "u = {u}");
        }
    }

    #[test]
    fn draws_follow_the_distribution() {
        let logits = [0.0f32.ln(), 0.5f32.ln(), 0.25f32.ln(), 0.25f32.ln()];
        let weights = RowWeights::new(&logits, 3);
        let mut rng = Rng::new(3);
        let n = 20_000;
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[weights.draw(rng.unit()) as usize] += 1;
        }
        assert_eq!(counts[0], 0);
        for (t, p) in [(1, 0.5), (2, 0.25), (3, 0.25)] {
            assert!(
                (counts[t] as f64 / n as f64 - p).abs() < 0.015,
                "{counts:?}"
            );
        }
    }

    #[test]
    fn device_draws_follow_the_same_distributions() {
        // 900 positions with one row: the original (token 1) has almost all
        // the mass and the others 4 : 2 : 1 : 0; the masked positions'
        // inputs follow the whole row, the wrong candidates the rest
        // renormalised, as on the host.
        let n = 900;
        let row = [
            1.0f32.ln(),
            3.0,
            0.5f32.ln(),
            0.25f32.ln(),
            f32::NEG_INFINITY,
        ];
        let tokens = vec![1u32; n];
        let masked = MaskedBatch {
            inputs: vec![4; n],
            rows: (0..n as u32).collect(),
            targets: vec![1; n],
        };
        let logits = row.repeat(n);
        let c = on_device(&tokens, &masked, &logits, &mut Rng::new(4));
        let p_original = 3f64.exp() / (3f64.exp() + 1.75);
        let kept = c.labels.iter().filter(|&&l| l == 0).count() as f64 / n as f64;
        assert!(
            (kept - p_original).abs() < 0.05,
            "{kept} against {p_original}"
        );
        let mut counts = [0usize; 5];
        let k = CANDIDATES - 1;
        for (i, slots) in c.candidates.chunks(k).enumerate() {
            let skip = c.labels[i] as usize; // slot 1 holds the original
            assert!(skip == 0 || slots[0] == 1);
            for &t in &slots[skip..] {
                counts[t as usize] += 1;
            }
        }
        let drawn: usize = counts.iter().sum();
        assert_eq!(counts[1], 0, "{counts:?}");
        assert_eq!(counts[4], 0, "no mass, never drawn: {counts:?}");
        for (t, p) in [(0, 4.0 / 7.0), (2, 2.0 / 7.0), (3, 1.0 / 7.0)] {
            let share = counts[t] as f64 / drawn as f64;
            assert!((share - p).abs() < 0.015, "{counts:?}");
        }
        // A row with no mass besides the original gets the stand-in.
        let alone = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, f32::NEG_INFINITY];
        let one = MaskedBatch {
            inputs: vec![4],
            rows: vec![0],
            targets: vec![1],
        };
        let c = on_device(&[1], &one, &alone, &mut Rng::new(2));
        assert_eq!((c.inputs[0], c.labels[0]), (1, 0));
        assert_eq!(c.candidates, vec![next_other(1, 4, &SPECIAL); k]);
    }
}
