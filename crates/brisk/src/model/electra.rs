//! ELECTRA's pair of encoders (Clark, Luong, Le & Manning, ICLR 2020): a
//! small masked-LM generator and the discriminator, which share one set of
//! token, position and type embeddings (the same tensors: one gradient, one
//! optimiser step). The generator's width, heads and feed-forward are a
//! fraction of the discriminator's; its embeddings are projected to its
//! width, and its MLM head maps back to the embeddings' width to use the
//! tied decoder.

use candle_core::{Device, Tensor};

use super::bert::InputMix;
use super::bert::{Bert, MlmHead};
use super::discriminator::{replaced_token_loss, DiscriminatorHead};
use super::params::{Ctx, Params};
use crate::config::ModelConfig;
use crate::corpus::generated::Rng;
use crate::error::{Error, Result};
use crate::pretrain::electra::{replace_tokens, sample_rows};
use crate::pretrain::mlm::MaskedBatch;

/// The generator's config: the discriminator's with hidden size, heads and
/// feed-forward scaled by `size` (heads at least one, the hidden size a
/// multiple of the heads); the same depth, vocabulary and positions.
pub fn generator_config(cfg: &ModelConfig, size: f64) -> Result<ModelConfig> {
    if !(size > 0.0 && size <= 1.0) {
        return Err(Error::Config(format!(
            "`objective.generator_size`: {size} is out of range (expected above 0, at most 1)"
        )));
    }
    let heads = ((cfg.num_attention_heads as f64 * size).round() as usize).max(1);
    let per_head = ((cfg.hidden_size as f64 * size / heads as f64).round() as usize).max(1);
    Ok(ModelConfig {
        hidden_size: per_head * heads,
        num_attention_heads: heads,
        intermediate_size: ((cfg.intermediate_size as f64 * size).round() as usize).max(1),
        ..cfg.clone()
    })
}

/// The generator (`generator.*`, `generator_predictions.*`) and the
/// discriminator (`bert.*`, `discriminator_predictions.*`).
#[derive(Debug, Clone)]
pub struct Electra {
    pub discriminator: Bert,
    pub discriminator_head: DiscriminatorHead,
    pub generator: Bert,
    pub generator_head: MlmHead,
}

/// The losses of one batch.
pub struct ElectraLosses {
    /// `generator + weight × discriminator`: what is minimised.
    pub total: Tensor,
    pub generator: Tensor,
    pub discriminator: Tensor,
    /// Share of the discriminator's inputs that differ from the text.
    pub replaced: f64,
    /// The discriminator's last hidden states (TNF takes notes from them).
    pub hidden: Tensor,
}

impl Electra {
    /// A freshly initialised pair, drawn from `seed`.
    pub fn new(
        cfg: &ModelConfig,
        generator_size: f64,
        params: &mut Params,
        seed: u64,
    ) -> Result<Electra> {
        let mut rng = Rng::new(seed);
        let discriminator = Bert::new(params, cfg, &mut rng)?;
        let discriminator_head = DiscriminatorHead::new(params, cfg, &mut rng)?;
        let gen_cfg = generator_config(cfg, generator_size)?;
        let generator =
            Bert::sharing_embeddings(params, &gen_cfg, "generator", &discriminator, &mut rng)?;
        let generator_head = MlmHead::named(
            params,
            "generator_predictions",
            &gen_cfg,
            &generator,
            &mut rng,
        )?;
        Ok(Electra {
            discriminator,
            discriminator_head,
            generator,
            generator_head,
        })
    }

    /// The losses of one batch of `tokens` (`[batch·len]`, no padding)
    /// masked as `masked`: the generator's MLM loss (mean over masked
    /// tokens), then its samples (drawn from `sample_rng`, no gradient)
    /// replace the masked tokens and the discriminator labels every token
    /// (binary cross-entropy, mean over tokens). `weight` is ELECTRA's λ (50).
    /// `mix` changes the discriminator's input embeddings (TNF's notes
    /// belong to the main encoder).
    #[allow(clippy::too_many_arguments)]
    pub fn losses(
        &self,
        tokens: &[u32],
        masked: &MaskedBatch,
        (batch, len): (usize, usize),
        weight: f64,
        sample_rng: &mut Rng,
        mix: Option<&InputMix>,
        ctx: &mut Ctx,
    ) -> Result<ElectraLosses> {
        let dev = Device::Cpu;
        let (generator, logits) = self.generator_loss(masked, (batch, len), ctx)?;
        let samples = sample_rows(&logits, sample_rng)?;
        let replaced = replace_tokens(tokens, masked, &samples);
        let share = replaced.labels.iter().sum::<f32>() as f64 / replaced.labels.len() as f64;
        let ids = Tensor::from_vec(replaced.inputs, (batch, len), &dev)?;
        let labels = Tensor::from_vec(replaced.labels, (batch, len), &dev)?;
        let hidden = self.discriminator.forward(&ids, None, None, mix, ctx)?;
        let discriminator =
            replaced_token_loss(&self.discriminator_head.forward(&hidden)?, &labels, None)?;
        let total = (&generator + (&discriminator * weight)?)?;
        Ok(ElectraLosses {
            total,
            generator,
            discriminator,
            replaced: share,
            hidden,
        })
    }

    /// The generator's masked-LM loss (mean over the masked tokens) and its
    /// logits at the masked rows.
    pub fn generator_loss(
        &self,
        masked: &MaskedBatch,
        (batch, len): (usize, usize),
        ctx: &mut Ctx,
    ) -> Result<(Tensor, Tensor)> {
        let dev = Device::Cpu;
        let n = masked.rows.len();
        let ids = Tensor::from_vec(masked.inputs.clone(), (batch, len), &dev)?;
        let rows = Tensor::from_vec(masked.rows.clone(), n, &dev)?;
        let targets = Tensor::from_vec(masked.targets.clone(), n, &dev)?;
        let hidden = self.generator.forward(&ids, None, None, None, ctx)?;
        let logits =
            self.generator_head
                .forward(&hidden, &rows, self.discriminator.word_embeddings())?;
        let loss = candle_nn::loss::cross_entropy(&logits, &targets)?;
        Ok((loss, logits))
    }

    /// True when every encoder layer runs on the fused kernels.
    pub fn is_fused(&self) -> bool {
        self.discriminator.layers.iter().all(|l| l.is_fused())
            && self.generator.layers.iter().all(|l| l.is_fused())
    }
}
