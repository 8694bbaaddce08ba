//! ELECTRA's pair of encoders (Clark, Luong, Le & Manning, ICLR 2020): a
//! small masked-LM generator and the discriminator, which share one set of
//! token, position and type embeddings (the same tensors: one gradient, one
//! optimiser step). The generator's width, heads and feed-forward are a
//! fraction of the discriminator's; its embeddings are projected to its
//! width, and its MLM head maps back to the embeddings' width to use the
//! tied decoder.

use candle_core::Tensor;

use super::bert::{Bert, InputMix, MlmHead};
use super::discriminator::DiscriminatorHead;
use super::params::{Ctx, Params};
use crate::config::ModelConfig;
use crate::corpus::generated::Rng;
use crate::error::{Error, Result};

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
    /// The learned generator; `None` when replacements come from a fixed
    /// distribution (`objective.generator = "unigram"` or `"uniform"`).
    pub generator: Option<Generator>,
}

/// ELECTRA's generator: a small encoder over the shared embeddings and its
/// MLM head.
#[derive(Debug, Clone)]
pub struct Generator {
    pub encoder: Bert,
    pub head: MlmHead,
}

impl Electra {
    /// A freshly initialised discriminator and, with `generator_size`, a
    /// generator of that size; drawn from `seed` (the discriminator first,
    /// so it starts the same with or without a generator).
    pub fn new(
        cfg: &ModelConfig,
        generator_size: Option<f64>,
        params: &mut Params,
        seed: u64,
    ) -> Result<Electra> {
        let mut rng = Rng::new(seed);
        let discriminator = Bert::new(params, cfg, &mut rng)?;
        let discriminator_head = DiscriminatorHead::new(params, cfg, &mut rng)?;
        let generator = match generator_size {
            Some(size) => {
                let gen_cfg = generator_config(cfg, size)?;
                let encoder = Bert::sharing_embeddings(
                    params,
                    &gen_cfg,
                    "generator",
                    &discriminator,
                    &mut rng,
                )?;
                let head = MlmHead::named(
                    params,
                    "generator_predictions",
                    &gen_cfg,
                    &encoder,
                    &mut rng,
                )?;
                Some(Generator { encoder, head })
            }
            None => None,
        };
        Ok(Electra {
            discriminator,
            discriminator_head,
            generator,
        })
    }

    /// The generator's logits `[rows, vocab]` at the flattened positions
    /// `rows` of `ids` `[batch, len]`, through the tied decoder; `None`
    /// without a learned generator.
    pub fn generator_logits(
        &self,
        ids: &Tensor,
        rows: &Tensor,
        ctx: &mut Ctx,
    ) -> Result<Option<Tensor>> {
        let Some(g) = &self.generator else {
            return Ok(None);
        };
        let hidden = g.encoder.forward(ids, None, None, None, ctx)?;
        let words = self.discriminator.word_embeddings();
        Ok(Some(g.head.forward(&hidden, rows, words)?))
    }

    /// The discriminator's last hidden states `[batch, len, hidden]` and
    /// replaced-token logits `[batch, len]` for `ids`; `mix` changes its
    /// input embeddings (TNF's notes belong to the main encoder).
    pub fn discriminate(
        &self,
        ids: &Tensor,
        mix: Option<&InputMix>,
        ctx: &mut Ctx,
    ) -> Result<(Tensor, Tensor)> {
        let hidden = self.discriminator.forward(ids, None, None, mix, ctx)?;
        let logits = self.discriminator_head.forward(&hidden)?;
        Ok((hidden, logits))
    }

    /// True when every encoder layer runs on the fused kernels.
    pub fn is_fused(&self) -> bool {
        let generator = self.generator.as_ref().map(|g| &g.encoder.layers[..]);
        self.discriminator.layers.iter().all(|l| l.is_fused())
            && generator.unwrap_or(&[]).iter().all(|l| l.is_fused())
    }
}
