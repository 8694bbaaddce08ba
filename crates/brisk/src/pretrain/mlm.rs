//! Masked language modelling (BERT; Devlin et al., 2019): a fraction of the
//! tokens is selected for prediction; of those, 80% become `[MASK]`, 10% a
//! random token and 10% stay as they are. Special tokens are never selected.
//!
//! Masks are drawn from the caller's generator: training draws a fresh mask
//! each time a sequence is seen, validation uses a generator with a fixed
//! seed so every evaluation sees the same masks.

use candle_core::{DType, Device, Tensor, D};
use tokenizers::Tokenizer;

use super::objective::{Batch, BatchLoss, Objective};
use crate::config::{ModelConfig, ObjectiveConfig};
use crate::corpus::generated::Rng;
use crate::corpus::tokenizer::SpecialIds;
use crate::error::{Error, Result};
use crate::model::{BertForMaskedLm, Ctx, Params};

/// A batch ready for the MLM loss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedBatch {
    /// Model input, `[batch·len]` token ids with the corruptions applied.
    pub inputs: Vec<u32>,
    /// Flattened positions to predict.
    pub rows: Vec<u32>,
    /// The original token at each of `rows`.
    pub targets: Vec<u32>,
}

impl MaskedBatch {
    /// The corrupted input as a `[batch, len]` tensor.
    pub fn inputs_tensor(&self, shape: (usize, usize), device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(self.inputs.clone(), shape, device)?)
    }

    /// `rows` as a tensor.
    pub fn rows_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.rows.clone(),
            self.rows.len(),
            device,
        )?)
    }

    /// `targets` as a tensor.
    pub fn targets_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.targets.clone(),
            self.targets.len(),
            device,
        )?)
    }
}

/// Selects and corrupts tokens of `tokens` (`[batch·len]`, no padding).
/// At least one token is selected when any token may be.
pub fn mask_tokens(
    tokens: &[u32],
    special: &SpecialIds,
    vocab_size: usize,
    objective: &ObjectiveConfig,
    rng: &mut Rng,
) -> MaskedBatch {
    let mut inputs = tokens.to_vec();
    let mut rows: Vec<u32> = (0..tokens.len())
        .filter(|&i| !special.contains(tokens[i]) && rng.unit() < objective.mask_prob)
        .map(|i| i as u32)
        .collect();
    if rows.is_empty() {
        let eligible: Vec<u32> = (0..tokens.len() as u32)
            .filter(|&i| !special.contains(tokens[i as usize]))
            .collect();
        if !eligible.is_empty() {
            rows.push(eligible[rng.below(eligible.len())]);
        }
    }
    let targets: Vec<u32> = rows.iter().map(|&r| tokens[r as usize]).collect();
    for &r in &rows {
        let u = rng.unit();
        if u < objective.mask_token_prob {
            inputs[r as usize] = special.mask;
        } else if u < objective.mask_token_prob + objective.random_token_prob {
            inputs[r as usize] = random_token(special, vocab_size, rng);
        }
    }
    MaskedBatch {
        inputs,
        rows,
        targets,
    }
}

/// A uniformly drawn non-special token id.
fn random_token(special: &SpecialIds, vocab_size: usize, rng: &mut Rng) -> u32 {
    loop {
        let t = rng.below(vocab_size) as u32;
        if !special.contains(t) {
            return t;
        }
    }
}

/// Masked language modelling as a pre-training [`Objective`]: the mean
/// cross-entropy of the original tokens at the selected positions.
pub struct MaskedLm {
    pub model: BertForMaskedLm,
}

impl MaskedLm {
    pub fn new(cfg: &ModelConfig, params: &mut Params, seed: u64) -> Result<MaskedLm> {
        Ok(MaskedLm {
            model: BertForMaskedLm::new(cfg, params, seed)?,
        })
    }
}

impl Objective for MaskedLm {
    fn batch_loss(&self, batch: &Batch, _rng: &mut Rng, ctx: &mut Ctx) -> Result<BatchLoss> {
        let (m, dev) = (batch.masked, self.model.bert.device());
        let (ids, rows, targets) = (
            m.inputs_tensor(batch.shape, dev)?,
            m.rows_tensor(dev)?,
            m.targets_tensor(dev)?,
        );
        let (total, hidden) = self
            .model
            .loss_and_hidden(&ids, None, batch.mix, &rows, &targets, ctx)?;
        Ok(BatchLoss {
            total,
            hidden,
            logged: Vec::new(),
            flops_skipped: 0.0,
        })
    }

    fn masked_lm_logits(
        &self,
        masked: &MaskedBatch,
        shape: (usize, usize),
        ctx: &mut Ctx,
    ) -> Result<Option<Tensor>> {
        let dev = self.model.bert.device();
        let ids = masked.inputs_tensor(shape, dev)?;
        let logits = self
            .model
            .forward(&ids, None, &masked.rows_tensor(dev)?, ctx)?;
        Ok(Some(logits.to_dtype(DType::F32)?))
    }

    fn as_masked_lm(&self) -> Option<&BertForMaskedLm> {
        Some(&self.model)
    }

    fn is_fused(&self) -> bool {
        self.model.is_fused()
    }
}

/// One `[MASK]` position's best candidates: `(token, probability)`, most
/// likely first.
pub type Candidates = Vec<(String, f32)>;

/// Predicts the `k` most likely tokens at every `[MASK]` in `text`.
pub fn fill_mask(
    model: &BertForMaskedLm,
    tokenizer: &Tokenizer,
    max_len: usize,
    text: &str,
    k: usize,
) -> Result<Vec<Candidates>> {
    let special = SpecialIds::of(tokenizer, "the model's tokenizer")?;
    let encoding = tokenizer.encode(text, true)?;
    let ids = encoding.get_ids();
    if ids.len() > max_len {
        return Err(Error::Usage(format!(
            "the text is {} tokens long; the model takes at most {max_len}",
            ids.len()
        )));
    }
    let rows: Vec<u32> = (0..ids.len() as u32)
        .filter(|&i| ids[i as usize] == special.mask)
        .collect();
    if rows.is_empty() {
        return Err(Error::Usage("the text has no [MASK] token to fill".into()));
    }
    let device = Device::Cpu;
    let input = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &device)?;
    let n = rows.len();
    let logits = model.forward(
        &input,
        None,
        &Tensor::from_vec(rows, n, &device)?,
        &mut Ctx::eval(),
    )?;
    let probs = candle_nn::ops::softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    let probs: Vec<Vec<f32>> = probs.to_vec2()?;
    Ok(probs
        .into_iter()
        .map(|row| {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            order
                .into_iter()
                .take(k)
                .map(|id| {
                    let token = tokenizer
                        .id_to_token(id as u32)
                        .unwrap_or_else(|| format!("<{id}>"));
                    (token, row[id])
                })
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    const SPECIAL: SpecialIds = SpecialIds {
        pad: 0,
        unk: 1,
        cls: 2,
        sep: 3,
        mask: 4,
    };

    fn sequence(rng: &mut Rng, len: usize) -> Vec<u32> {
        let mut t: Vec<u32> = (0..len).map(|_| 5 + rng.below(995) as u32).collect();
        t[0] = SPECIAL.cls;
        t[len - 1] = SPECIAL.sep;
        t[len / 2] = SPECIAL.sep;
        t
    }

    #[test]
    fn rates_follow_the_objective_and_special_tokens_are_never_masked() {
        let objective = Preset::Tiny.config().objective;
        let mut rng = Rng::new(1);
        let (mut eligible, mut selected, mut masked, mut random, mut kept) = (0, 0, 0, 0, 0);
        for _ in 0..200 {
            let tokens = sequence(&mut rng, 128);
            let batch = mask_tokens(&tokens, &SPECIAL, 1000, &objective, &mut rng);
            eligible += tokens.iter().filter(|&&t| !SPECIAL.contains(t)).count();
            selected += batch.rows.len();
            for (&r, &target) in batch.rows.iter().zip(&batch.targets) {
                let (r, input) = (r as usize, batch.inputs[r as usize]);
                assert!(
                    !SPECIAL.contains(tokens[r]),
                    "special tokens are never selected"
                );
                assert_eq!(target, tokens[r]);
                match input {
                    4 => masked += 1,
                    t if t == tokens[r] => kept += 1,
                    t => {
                        assert!(!SPECIAL.contains(t));
                        random += 1
                    }
                }
            }
            for (i, (&a, &b)) in tokens.iter().zip(&batch.inputs).enumerate() {
                if a != b {
                    assert!(
                        batch.rows.contains(&(i as u32)),
                        "only selected tokens change"
                    );
                }
            }
        }
        let rate = |n: usize, of: usize| n as f64 / of as f64;
        assert!((rate(selected, eligible) - objective.mask_prob).abs() < 0.01);
        assert!((rate(masked, selected) - 0.8).abs() < 0.02);
        // Random replacements that hit the original token count as kept.
        assert!((rate(random, selected) - 0.1).abs() < 0.015);
        assert!((rate(kept, selected) - 0.1).abs() < 0.015);
    }

    #[test]
    fn masks_are_seeded_and_never_empty() {
        let objective = Preset::Tiny.config().objective;
        let tokens = sequence(&mut Rng::new(2), 64);
        let a = mask_tokens(&tokens, &SPECIAL, 1000, &objective, &mut Rng::new(7));
        assert_eq!(
            a,
            mask_tokens(&tokens, &SPECIAL, 1000, &objective, &mut Rng::new(7))
        );
        assert_ne!(
            a,
            mask_tokens(&tokens, &SPECIAL, 1000, &objective, &mut Rng::new(8))
        );
        let short = [SPECIAL.cls, 10, SPECIAL.sep];
        for seed in 0..50 {
            let b = mask_tokens(&short, &SPECIAL, 1000, &objective, &mut Rng::new(seed));
            assert_eq!(b.rows, [1]);
        }
    }
}
