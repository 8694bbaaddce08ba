//! Replaced-token detection (ELECTRA; Clark, Luong, Le & Manning, ICLR
//! 2020): a small generator fills the masked positions with samples from
//! its masked-LM distribution, and the discriminator labels every token as
//! original or replaced.
//!
//! This module holds the objective's data side: sampling the replacements
//! (Gumbel-max, temperature 1, no gradient through the choice), the
//! corrupted input, and the labels. A sample equal to the original token is
//! labelled original, as in the paper: the discriminator is asked whether
//! a token differs from the text, not whether it was sampled.

use candle_core::{DType, Device, Tensor};
use tokenizers::Tokenizer;

use crate::corpus::generated::Rng;
use crate::error::{Error, Result};
use crate::model::electra::Electra;
use crate::model::Ctx;
use crate::pretrain::mlm::MaskedBatch;

/// One draw from each row's softmax over `logits` (`[rows, vocab]`) by the
/// Gumbel-max trick: `argmax(logit + g)` with `g = −ln(−ln u)`, `u`
/// uniform. The logits are read as values: no gradient flows through the
/// choice.
pub fn sample_rows(logits: &Tensor, rng: &mut Rng) -> Result<Vec<u32>> {
    let rows: Vec<Vec<f32>> = logits.detach().to_dtype(DType::F32)?.to_vec2()?;
    Ok(rows
        .iter()
        .map(|row| {
            let mut best = (f64::NEG_INFINITY, 0u32);
            for (id, &l) in row.iter().enumerate() {
                let u = rng.unit().max(f64::MIN_POSITIVE);
                let score = l as f64 - (-u.ln()).ln();
                if score > best.0 {
                    best = (score, id as u32);
                }
            }
            best.1
        })
        .collect())
}

/// The discriminator's input and targets for one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Replaced {
    /// The text with the generator's samples at the masked positions.
    pub inputs: Vec<u32>,
    /// Per token: 1 where the input differs from the original, else 0.
    pub labels: Vec<f32>,
}

/// Puts `samples` (one per row of `masked`) into the original `tokens` at
/// the masked positions, and labels every token.
pub fn replace_tokens(tokens: &[u32], masked: &MaskedBatch, samples: &[u32]) -> Replaced {
    let mut inputs = tokens.to_vec();
    for (&row, &sample) in masked.rows.iter().zip(samples) {
        inputs[row as usize] = sample;
    }
    let labels = inputs
        .iter()
        .zip(tokens)
        .map(|(a, b)| if a != b { 1.0 } else { 0.0 })
        .collect();
    Replaced { inputs, labels }
}

/// The discriminator's reading of `text`: each token (specials included)
/// with its probability of having been replaced. What `brisk detect`
/// prints, and what the HF export is checked against.
pub fn replaced_probabilities(
    model: &Electra,
    tokenizer: &Tokenizer,
    max_len: usize,
    text: &str,
) -> Result<Vec<(String, f32)>> {
    let encoding = tokenizer.encode(text, true)?;
    let ids = encoding.get_ids();
    if ids.len() > max_len {
        return Err(Error::Usage(format!(
            "the text is {} tokens long; the model takes at most {max_len}",
            ids.len()
        )));
    }
    let input = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu)?;
    let ctx = &mut Ctx::eval();
    let hidden = model.discriminator.forward(&input, None, None, None, ctx)?;
    let logits = model.discriminator_head.forward(&hidden)?;
    let probs: Vec<f32> = candle_nn::ops::sigmoid(&logits.to_dtype(DType::F32)?)?
        .squeeze(0)?
        .to_vec1()?;
    Ok(encoding.get_tokens().iter().cloned().zip(probs).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn a_sampled_original_counts_as_original() {
        // Three tokens are masked (rows 1, 2 and 4); the generator gives
        // back the original at row 2 and other tokens at rows 1 and 4.
        let tokens = [2u32, 10, 11, 12, 13, 3];
        let masked = MaskedBatch {
            inputs: vec![2, 4, 4, 12, 4, 3],
            rows: vec![1, 2, 4],
            targets: vec![10, 11, 13],
        };
        let r = replace_tokens(&tokens, &masked, &[20, 11, 21]);
        assert_eq!(r.inputs, [2, 20, 11, 12, 21, 3]);
        assert_eq!(r.labels, [0., 1., 0., 0., 1., 0.]);
    }

    #[test]
    fn gumbel_max_draws_follow_the_softmax() {
        // Probabilities 0.5, 0.25, 0.25 and (almost) 0.
        let p = [0.5f32, 0.25, 0.25, 1e-9];
        let row: Vec<f32> = p.iter().map(|p| p.ln()).collect();
        let n = 20_000;
        let logits = Tensor::from_vec(row.repeat(n), (n, 4), &Device::Cpu).unwrap();
        let draws = sample_rows(&logits, &mut Rng::new(5)).unwrap();
        let share = |id: u32| draws.iter().filter(|&&d| d == id).count() as f64 / n as f64;
        assert!((share(0) - 0.5).abs() < 0.015, "{}", share(0));
        assert!((share(1) - 0.25).abs() < 0.015, "{}", share(1));
        assert!((share(2) - 0.25).abs() < 0.015, "{}", share(2));
        assert_eq!(share(3), 0.0);
        // Seeded: the same generator state gives the same draws.
        assert_eq!(draws, sample_rows(&logits, &mut Rng::new(5)).unwrap());
        assert_ne!(draws, sample_rows(&logits, &mut Rng::new(6)).unwrap());
    }
}
