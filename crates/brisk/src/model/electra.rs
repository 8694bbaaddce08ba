//! ELECTRA's pair of encoders (Clark, Luong, Le & Manning, ICLR 2020): a
//! small masked-LM generator and the discriminator, which share one set of
//! token, position and type embeddings (the same tensors: one gradient, one
//! optimiser step). The generator's width, heads and feed-forward are a
//! fraction of the discriminator's; its embeddings are projected to its
//! width, and its MLM head maps back to the embeddings' width to use the
//! tied decoder.
//!
//! For early exit during pre-training (`pretrain::early_exit`) the
//! discriminator can carry exit heads after chosen layers
//! (`discriminator_exits.{layer}.*`, each shaped as the final head), and
//! [`Electra::discriminate_exiting`] runs it with tokens leaving at them.
//! Which tokens leave is the caller's rule; the model only asks.

use candle_core::Tensor;

use super::bert::{Active, Bert, InputMix, MlmHead};
use super::discriminator::DiscriminatorHead;
use super::params::{Ctx, Params};
use crate::config::{ModelConfig, SharedEmbeddings};
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
    /// Early exit's heads, by increasing layer.
    pub exits: Vec<ExitHead>,
}

/// An intermediate replaced-token head after discriminator layer `layer`
/// (counted from 1).
#[derive(Debug, Clone)]
pub struct ExitHead {
    pub layer: usize,
    pub head: DiscriminatorHead,
}

/// One exit head's reading in [`Electra::discriminate_exiting`].
pub struct ExitReading {
    /// The layer it follows (from 1).
    pub layer: usize,
    /// The tokens that reached it (rows of the flattened batch): it reads
    /// them all, then some leave.
    pub rows: Vec<u32>,
    /// Its binary cross-entropy over those tokens.
    pub loss: Tensor,
}

/// The discriminator's pass with early exit.
pub struct Exiting {
    /// Last hidden states `[batch, len, hidden]`; an exited token's is its
    /// state where it left (the final head reads them all).
    pub hidden: Tensor,
    /// The exit heads that some token reached, in order.
    pub exits: Vec<ExitReading>,
    /// How many tokens each layer updated, from the first.
    pub updated: Vec<usize>,
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
    ///
    /// `exit_layers`: the layers followed by an exit head, drawn last (so
    /// that the rest starts the same with or without them).
    pub fn new(
        cfg: &ModelConfig,
        generator_size: Option<f64>,
        exit_layers: &[usize],
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
                    SharedEmbeddings::All,
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
        let exits = exit_layers
            .iter()
            .map(|&layer| {
                let prefix = format!("discriminator_exits.{layer}");
                Ok(ExitHead {
                    layer,
                    head: DiscriminatorHead::named(params, &prefix, cfg, &mut rng)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Electra {
            discriminator,
            discriminator_head,
            generator,
            exits,
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

    /// The generator's masked-LM loss (mean over `rows`, against
    /// `targets`) on `ids`, and one sample per row from its softmax (from
    /// `seed`, no gradient): ELECTRA's replacements. `None` without a
    /// learned generator.
    pub fn generate(
        &self,
        ids: &Tensor,
        at: (&Tensor, &Tensor),
        seed: u64,
        ctx: &mut Ctx,
    ) -> Result<Option<(Tensor, Vec<u32>)>> {
        let Some(g) = &self.generator else {
            return Ok(None);
        };
        let hidden = g.encoder.forward(ids, None, None, None, ctx)?;
        let (loss, samples) = g.head.loss(&hidden, &self.discriminator, at, Some(seed))?;
        let samples =
            samples.ok_or_else(|| Error::Tensor("the generator drew no samples".into()))?;
        Ok(Some((loss, samples)))
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

    /// The discriminator with early exit: after each layer that has an exit
    /// head, the head reads the tokens still active (its loss against their
    /// `labels`, `[batch, len]`) and `stays` (given the layer and the
    /// head's logits at those tokens) says which of them go on; the others
    /// keep their hidden state to the end and remain keys and values for
    /// the rest.
    pub fn discriminate_exiting(
        &self,
        ids: &Tensor,
        labels: &Tensor,
        mix: Option<&InputMix>,
        stays: &dyn Fn(usize, &[f32]) -> Vec<bool>,
        ctx: &mut Ctx,
    ) -> Result<Exiting> {
        let shape = ids.dims2()?;
        let tokens = shape.0 * shape.1;
        let mut exits = Vec::new();
        let mut updated = Vec::new();
        let labels = labels.flatten_all()?;
        let mut decide =
            |i: usize, x: &Tensor, active: Option<&Active>| -> Result<Option<Active>> {
                updated.push(active.map_or(tokens, |a| a.rows().len()));
                let Some(exit) = self.exits.iter().find(|e| e.layer == i + 1) else {
                    return Ok(None);
                };
                let rows: Vec<u32> = match active {
                    Some(a) => a.rows().to_vec(),
                    None => (0..tokens as u32).collect(),
                };
                if rows.is_empty() {
                    // Everyone left earlier: nothing to read.
                    return Ok(None);
                }
                let index = Tensor::new(rows.as_slice(), ids.device())?;
                let reached = x.flatten(0, 1)?.index_select(&index, 0)?;
                let (loss, logits) = exit
                    .head
                    .loss_and_logits(&reached, &labels.index_select(&index, 0)?)?;
                let keep = stays(exit.layer, &logits);
                let remaining: Vec<u32> = rows
                    .iter()
                    .zip(&keep)
                    .filter(|(_, &k)| k)
                    .map(|(&r, _)| r)
                    .collect();
                let changed = remaining.len() < rows.len();
                let next = changed
                    .then(|| Active::new(remaining, shape, ids.device()))
                    .transpose()?;
                exits.push(ExitReading {
                    layer: exit.layer,
                    rows,
                    loss,
                });
                Ok(next)
            };
        let hidden = self
            .discriminator
            .forward_exiting(ids, mix, &mut decide, ctx)?;
        Ok(Exiting {
            hidden,
            exits,
            updated,
        })
    }

    /// True when every encoder layer runs on the fused kernels.
    pub fn is_fused(&self) -> bool {
        let generator_fused = self
            .generator
            .as_ref()
            .is_none_or(|g| g.head.is_fused() && g.encoder.layers.iter().all(|l| l.is_fused()));
        self.discriminator.layers.iter().all(|l| l.is_fused()) && generator_fused
    }
}
