//! Replaced-token detection (ELECTRA; Clark, Luong, Le & Manning, ICLR
//! 2020): a small generator fills the masked positions with samples from
//! its masked-LM distribution, and the discriminator labels every token as
//! original or replaced.
//!
//! This module holds the objective's data side: sampling the replacements
//! (from the generator's softmax, temperature 1, no gradient through the
//! choice), the
//! corrupted input, and the labels. A sample equal to the original token is
//! labelled original, as in the paper: the discriminator is asked whether
//! a token differs from the text, not whether it was sampled.

use candle_core::{DType, Device, Tensor};
use tokenizers::Tokenizer;

use super::early_exit::{self, EarlyExit};
use super::mlm::MaskedBatch;
use super::objective::{Batch, BatchLoss, Objective};
use crate::config::{Generator, ModelConfig, ObjectiveConfig};
use crate::corpus::generated::Rng;
use crate::corpus::tokenizer::SpecialIds;
use crate::error::{Error, Result};
use crate::model::electra::Electra;
use crate::model::{Ctx, InputMix, Params};

/// Replaced-token detection as a pre-training [`Objective`]: the generator's
/// MLM loss plus λ times the discriminator's (λ =
/// `objective.discriminator_weight`, 50 in the paper). Without a learned
/// generator (`objective.generator = "unigram"` or `"uniform"`, the
/// ablation of Clark et al. §3.2 and of Kang et al., arXiv 2110.06620) the
/// replacements are drawn from a fixed distribution and the loss is λ times
/// the discriminator's alone.
pub struct ReplacedTokenDetection {
    pub model: Electra,
    pub weight: f64,
    /// The fixed distribution, when there is no learned generator.
    pub sampler: Option<TokenSampler>,
    /// Early exit's rule, when the discriminator has exit heads.
    pub exit: Option<EarlyExit>,
    /// The discriminator's shape (early exit counts its FLOPs).
    pub cfg: ModelConfig,
}

impl ReplacedTokenDetection {
    /// The discriminator and, per `objective.generator`, the generator or
    /// the fixed distribution over the vocabulary, from `corpus`: its
    /// training split's token counts and its special tokens. Without
    /// `corpus` a fixed distribution is left out (the model alone, as an
    /// export needs it).
    pub fn new(
        cfg: &ModelConfig,
        objective: &ObjectiveConfig,
        corpus: Option<(&[u64], &SpecialIds)>,
        params: &mut Params,
        seed: u64,
    ) -> Result<ReplacedTokenDetection> {
        let model = Electra::new(
            cfg,
            objective.learned_generator(),
            &objective.exit_layers,
            params,
            seed,
        )?;
        let sampler = match (objective.generator, corpus) {
            (Generator::Learned, _) | (_, None) => None,
            (Generator::Uniform, Some((_, special))) => {
                Some(TokenSampler::uniform(cfg.vocab_size, special)?)
            }
            (Generator::Unigram, Some((counts, special))) => {
                Some(TokenSampler::unigram(counts, special)?)
            }
        };
        Ok(ReplacedTokenDetection {
            model,
            weight: objective.discriminator_weight,
            sampler,
            exit: EarlyExit::of(objective),
            cfg: cfg.clone(),
        })
    }
}

impl Objective for ReplacedTokenDetection {
    fn batch_loss(&self, batch: &Batch, rng: &mut Rng, ctx: &mut Ctx) -> Result<BatchLoss> {
        let (tokens, masked, shape, mix) = (batch.tokens, batch.masked, batch.shape, batch.mix);
        let (replaced, generator) = match &self.sampler {
            None => {
                let (loss, samples) = generate(&self.model, masked, shape, rng, ctx)?;
                (replace_tokens(tokens, masked, &samples), Some(loss))
            }
            Some(sampler) => {
                let samples: Vec<u32> = masked.rows.iter().map(|_| sampler.sample(rng)).collect();
                (replace_tokens(tokens, masked, &samples), None)
            }
        };
        let mut logged = Vec::new();
        if let Some(g) = &generator {
            logged.push(("generator_loss".into(), g.to_scalar::<f32>()? as f64));
        }
        let Some(rule) = &self.exit else {
            let l = detection_losses(
                &self.model,
                replaced,
                shape,
                self.weight,
                generator,
                mix,
                ctx,
            )?;
            logged.push((
                "discriminator_loss".into(),
                l.discriminator.to_scalar::<f32>()? as f64,
            ));
            logged.push(("replaced".into(), l.replaced));
            return Ok(BatchLoss {
                total: l.total,
                hidden: l.hidden,
                logged,
                flops_skipped: 0.0,
            });
        };
        let share = replaced.share();
        let (ids, labels) = replaced.tensors(shape, self.model.discriminator.device())?;
        let e = early_exit::detect(
            &self.model,
            &self.cfg,
            rule,
            (&ids, &labels),
            mix,
            batch.step,
            ctx,
        )?;
        let weighted = (&e.combined * self.weight)?;
        let total = match &generator {
            Some(g) => (g + weighted)?,
            None => weighted,
        };
        logged.push((
            "discriminator_loss".into(),
            e.last.to_scalar::<f32>()? as f64,
        ));
        logged.push(("replaced".into(), share));
        let first_exit = self.model.exits.first().map_or(0, |x| x.layer);
        logged.extend(early_exit::logged(&e, first_exit)?);
        Ok(BatchLoss {
            total,
            hidden: e.hidden,
            logged,
            flops_skipped: e.flops_skipped,
        })
    }

    fn masked_lm_logits(
        &self,
        masked: &MaskedBatch,
        shape: (usize, usize),
        ctx: &mut Ctx,
    ) -> Result<Option<Tensor>> {
        let dev = self.model.discriminator.device();
        let ids = masked.inputs_tensor(shape, dev)?;
        self.model
            .generator_logits(&ids, &masked.rows_tensor(dev)?, ctx)
    }

    fn is_fused(&self) -> bool {
        self.model.is_fused()
    }

    /// With early exit, the discriminator layers above the first exit head
    /// (every token may have left) and the exit heads (a zero
    /// `exit_weight` leaves them out of the loss).
    fn may_idle(&self, group: &str) -> bool {
        let Some(first) = self.model.exits.first() else {
            return false;
        };
        let above_exit = group
            .strip_prefix("bert.encoder.layer.")
            .and_then(|i| i.parse::<usize>().ok())
            .is_some_and(|i| i >= first.layer);
        above_exit || group.starts_with("discriminator_exits.")
    }
}

/// A fixed distribution over the vocabulary to draw replacements from,
/// special tokens excluded.
#[derive(Debug, Clone)]
pub struct TokenSampler {
    /// Cumulative weights, ending at their total.
    cdf: Vec<f64>,
}

impl TokenSampler {
    /// Proportional to `counts` (the training split's token counts).
    pub fn unigram(counts: &[u64], special: &SpecialIds) -> Result<TokenSampler> {
        let weights = counts.iter().enumerate().map(|(t, &c)| {
            if special.contains(t as u32) {
                0.0
            } else {
                c as f64
            }
        });
        TokenSampler::of(weights)
    }

    /// Every non-special token alike.
    pub fn uniform(vocab_size: usize, special: &SpecialIds) -> Result<TokenSampler> {
        let weights = (0..vocab_size as u32).map(|t| if special.contains(t) { 0.0 } else { 1.0 });
        TokenSampler::of(weights)
    }

    fn of(weights: impl Iterator<Item = f64>) -> Result<TokenSampler> {
        let mut sum = 0.0;
        let cdf: Vec<f64> = weights
            .map(|w| {
                sum += w;
                sum
            })
            .collect();
        if sum <= 0.0 {
            return Err(Error::Config(
                "`objective.generator`: the distribution has no non-special token to draw".into(),
            ));
        }
        Ok(TokenSampler { cdf })
    }

    /// Each token's probability.
    pub fn probabilities(&self) -> Vec<f64> {
        let total = self.cdf.last().copied().unwrap_or(1.0);
        let mut before = 0.0;
        self.cdf
            .iter()
            .map(|&c| {
                let p = (c - before) / total;
                before = c;
                p
            })
            .collect()
    }

    /// One draw.
    pub fn sample(&self, rng: &mut Rng) -> u32 {
        let total = *self.cdf.last().expect("a non-empty distribution");
        let u = rng.unit() * total;
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1) as u32
    }
}

/// The losses of one ELECTRA batch.
pub struct ElectraLosses {
    /// `generator + weight × discriminator`: what is minimised.
    pub total: Tensor,
    /// The generator's MLM loss; `None` without a learned generator.
    pub generator: Option<Tensor>,
    pub discriminator: Tensor,
    /// Share of the discriminator's inputs that differ from the text.
    pub replaced: f64,
    /// The discriminator's last hidden states (TNF takes notes from them).
    pub hidden: Tensor,
}

/// The losses of one batch of `tokens` (`[batch·len]`, no padding) masked
/// as `masked`, with the learned generator: its MLM loss (mean over masked
/// tokens), then its samples (drawn from `rng`, no gradient) replace the
/// masked tokens and the discriminator labels every token (binary
/// cross-entropy, mean over tokens). `weight` is ELECTRA's λ. `mix`
/// changes the discriminator's input embeddings.
#[allow(clippy::too_many_arguments)]
pub fn losses(
    model: &Electra,
    tokens: &[u32],
    masked: &MaskedBatch,
    shape: (usize, usize),
    weight: f64,
    rng: &mut Rng,
    mix: Option<&InputMix>,
    ctx: &mut Ctx,
) -> Result<ElectraLosses> {
    let (generator, samples) = generate(model, masked, shape, rng, ctx)?;
    let replaced = replace_tokens(tokens, masked, &samples);
    detection_losses(model, replaced, shape, weight, Some(generator), mix, ctx)
}

/// The learned generator's MLM loss on `masked` (mean over the masked
/// tokens) and its samples at the masked rows (seeded from `rng`, no
/// gradient).
fn generate(
    model: &Electra,
    masked: &MaskedBatch,
    shape: (usize, usize),
    rng: &mut Rng,
    ctx: &mut Ctx,
) -> Result<(Tensor, Vec<u32>)> {
    let dev = model.discriminator.device();
    let ids = masked.inputs_tensor(shape, dev)?;
    let at = (&masked.rows_tensor(dev)?, &masked.targets_tensor(dev)?);
    model
        .generate(&ids, at, rng.next_u64(), ctx)?
        .ok_or_else(|| Error::Config("this ELECTRA model has no learned generator".into()))
}

/// The discriminator's loss on `replaced`, and the total with the
/// generator's loss (if any).
fn detection_losses(
    model: &Electra,
    replaced: Replaced,
    shape: (usize, usize),
    weight: f64,
    generator: Option<Tensor>,
    mix: Option<&InputMix>,
    ctx: &mut Ctx,
) -> Result<ElectraLosses> {
    let share = replaced.share();
    let (ids, labels) = replaced.tensors(shape, model.discriminator.device())?;
    let hidden = model.discriminator.forward(&ids, None, None, mix, ctx)?;
    let discriminator = model.discriminator_head.loss(&hidden, &labels)?;
    let weighted = (&discriminator * weight)?;
    let total = match &generator {
        Some(g) => (g + weighted)?,
        None => weighted,
    };
    Ok(ElectraLosses {
        total,
        generator,
        discriminator,
        replaced: share,
        hidden,
    })
}

/// The discriminator's input and targets for one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Replaced {
    /// The text with the generator's samples at the masked positions.
    pub inputs: Vec<u32>,
    /// Per token: 1 where the input differs from the original, else 0.
    pub labels: Vec<f32>,
}

impl Replaced {
    /// The share of tokens that differ from the text.
    pub fn share(&self) -> f64 {
        self.labels.iter().sum::<f32>() as f64 / self.labels.len() as f64
    }

    /// The inputs and labels as `shape` tensors.
    pub fn tensors(self, shape: (usize, usize), dev: &Device) -> Result<(Tensor, Tensor)> {
        Ok((
            Tensor::from_vec(self.inputs, shape, dev)?,
            Tensor::from_vec(self.labels, shape, dev)?,
        ))
    }
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
    let (_, logits) = model.discriminate(&input, None, ctx)?;
    let probs: Vec<f32> = candle_nn::ops::sigmoid(&logits.to_dtype(DType::F32)?)?
        .squeeze(0)?
        .to_vec1()?;
    Ok(encoding.get_tokens().iter().cloned().zip(probs).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn draws_follow_the_softmax() {
        use crate::model::fused::head::{draw_from_row, row_stream};
        // Probabilities 0.5, 0.25, 0.25 and 0.
        let row = [0.5f32, 0.25, 0.25, 0.0];
        let n = 20_000;
        let draw = |seed: u64| -> Vec<u32> {
            (0..n)
                .map(|i| draw_from_row(&row, row_stream(seed, i).unit()))
                .collect()
        };
        let draws = draw(5);
        let share = |id: u32| draws.iter().filter(|&&d| d == id).count() as f64 / n as f64;
        assert!((share(0) - 0.5).abs() < 0.015, "{}", share(0));
        assert!((share(1) - 0.25).abs() < 0.015, "{}", share(1));
        assert!((share(2) - 0.25).abs() < 0.015, "{}", share(2));
        assert_eq!(share(3), 0.0);
        // Seeded: the same seed gives the same draws.
        assert_eq!(draws, draw(5));
        assert_ne!(draws, draw(6));
    }

    /// Total-variation distance between `n` draws of `sampler` and the
    /// distribution it names, `want`.
    fn distance_of_draws(sampler: &TokenSampler, want: &[f64], n: usize) -> f64 {
        let mut seen = vec![0usize; want.len()];
        let mut rng = Rng::new(11);
        for _ in 0..n {
            seen[sampler.sample(&mut rng) as usize] += 1;
        }
        let tv = seen
            .iter()
            .zip(want)
            .map(|(&c, &p)| (c as f64 / n as f64 - p).abs())
            .sum::<f64>();
        tv / 2.0
    }

    const SPECIAL: SpecialIds = SpecialIds {
        pad: 0,
        unk: 1,
        cls: 2,
        sep: 3,
        mask: 4,
    };

    #[test]
    fn fixed_generators_draw_from_the_distribution_they_name() {
        // Counts for 40 tokens, the specials among them frequent: they must
        // never be drawn.
        let counts: Vec<u64> = (0..40u64)
            .map(|t| if t < 5 { 1000 } else { 1 + (t * 7) % 23 })
            .collect();
        let total: f64 = counts[5..].iter().sum::<u64>() as f64;
        let unigram: Vec<f64> = (0..40)
            .map(|t| if t < 5 { 0.0 } else { counts[t] as f64 / total })
            .collect();
        let uniform: Vec<f64> = (0..40)
            .map(|t| if t < 5 { 0.0 } else { 1.0 / 35.0 })
            .collect();
        let n = 200_000;
        for (sampler, want) in [
            (TokenSampler::unigram(&counts, &SPECIAL).unwrap(), unigram),
            (TokenSampler::uniform(40, &SPECIAL).unwrap(), uniform),
        ] {
            for (p, w) in sampler.probabilities().iter().zip(&want) {
                assert!((p - w).abs() < 1e-12);
            }
            // With 35 outcomes and 200,000 draws the expected distance is
            // about 0.005; the other distribution is 0.23 away.
            let tv = distance_of_draws(&sampler, &want, n);
            assert!(tv < 0.01, "total variation {tv}");
        }
        let unigram = TokenSampler::unigram(&counts, &SPECIAL).unwrap();
        let uniform: Vec<f64> = (0..40)
            .map(|t| if t < 5 { 0.0 } else { 1.0 / 35.0 })
            .collect();
        assert!(distance_of_draws(&unigram, &uniform, n) > 0.1);
        assert!(TokenSampler::unigram(&[5, 5, 5, 5, 5], &SPECIAL).is_err());
    }
}
