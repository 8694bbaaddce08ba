//! One interface for every pre-training objective, so that the training
//! loop (`train::pretrain`) runs any of them without knowing which.
//!
//! The loop owns what all objectives share: the data order, BERT's
//! selection of positions ([`mask_tokens`](super::mlm::mask_tokens)), TNF's
//! notes, the optimiser and the logs. An objective owns what differs:
//! - its models (built into the run's [`Params`]);
//! - what it does with a masked batch: masked LM predicts the originals,
//!   ELECTRA corrupts the positions with a generator's samples and detects
//!   them, MC-BERT corrupts them and asks for the original among
//!   candidates ([`Objective::batch_loss`]);
//! - the figures it logs beside the loss (`generator_loss`,
//!   `discriminator_loss`, ...), returned with each batch's loss;
//! - its cost: training FLOPs per step ([`step_flops`]), counted as ELECTRA
//!   does so that objectives compare on one axis;
//! - its masked-LM part, which validation measures for every objective
//!   ([`Objective::masked_lm_logits`]).

use candle_core::Tensor;

use super::early_exit::heads_training_per_token;
use super::electra::ReplacedTokenDetection;
use super::mcbert::MultiChoice;
use super::mlm::{MaskedBatch, MaskedLm};
use super::probes::token_counts;
use crate::config::{Config, Generator};
use crate::corpus::generated::Rng;
use crate::corpus::shards::PreparedCorpus;
use crate::corpus::tokenizer::SpecialIds;
use crate::error::{Error, Result};
use crate::model::electra::generator_config;
use crate::model::flops::{
    electra_training_per_token, mcbert_training_per_token, mlm_training_per_token,
    position_term_forward,
};
use crate::model::{BertForMaskedLm, Ctx, InputMix, Params};

/// The values of `objective.kind`.
pub const KINDS: [&str; 3] = ["mlm", "electra", "mcbert"];

/// One micro-batch as the loop hands it to an objective.
pub struct Batch<'a> {
    /// The text, `[batch·len]` token ids, no padding.
    pub tokens: &'a [u32],
    /// The positions selected for prediction and BERT's corruption of them.
    pub masked: &'a MaskedBatch,
    /// `(batch, len)`.
    pub shape: (usize, usize),
    /// TNF: the change to the main encoder's input embeddings.
    pub mix: Option<&'a InputMix>,
    pub special: &'a SpecialIds,
    /// The optimiser step it belongs to (early exit waits for its warm-up).
    pub step: u64,
}

/// What an objective computed for one micro-batch.
pub struct BatchLoss {
    /// What is minimised.
    pub total: Tensor,
    /// The main encoder's last hidden states `[batch, len, hidden]` (TNF
    /// takes its notes from them).
    pub hidden: Tensor,
    /// Figures for `metrics.jsonl` (averaged over the micro-batches of a
    /// step), by key.
    pub logged: Vec<(String, f64)>,
    /// Training FLOPs of the planned step ([`step_flops`]) this batch did
    /// not spend (early exit's skipped rows); 0 for the others.
    pub flops_skipped: f64,
}

/// A pre-training objective with its models.
pub trait Objective {
    /// The loss of one micro-batch. `rng` is the batch's generator, already
    /// used for the mask; sampling objectives continue drawing from it.
    fn batch_loss(&self, batch: &Batch, rng: &mut Rng, ctx: &mut Ctx) -> Result<BatchLoss>;

    /// Logits `[rows, vocab]` of the objective's masked LM (the model
    /// itself, ELECTRA's generator, MC-BERT's controller) at the masked
    /// rows: what validation measures, for every objective alike. `None`
    /// when it has none (ELECTRA with a fixed generator).
    fn masked_lm_logits(
        &self,
        masked: &MaskedBatch,
        shape: (usize, usize),
        ctx: &mut Ctx,
    ) -> Result<Option<Tensor>>;

    /// The whole model as a masked LM, when it is one (the cloze probes
    /// score it).
    fn as_masked_lm(&self) -> Option<&BertForMaskedLm> {
        None
    }

    /// True when every part runs on the fused kernels.
    fn is_fused(&self) -> bool;

    /// Whether parameter group `group` may get no gradient from a batch
    /// (early exit: the layers above a point every token left); any other
    /// group without a gradient is an error.
    fn may_idle(&self, _group: &str) -> bool {
        false
    }
}

/// A fresh objective for `config.objective.kind`, its weights added to
/// `params` and drawn from `train.seed`. `corpus` gives what an objective
/// may need beyond batches (ELECTRA's unigram generator: the token
/// counts); without it the models alone are built (for an export).
pub fn build(
    config: &Config,
    params: &mut Params,
    corpus: Option<&PreparedCorpus>,
) -> Result<Box<dyn Objective>> {
    let (model, objective, seed) = (&config.model, &config.objective, config.train.seed);
    let size = objective.generator_size;
    let weight = objective.discriminator_weight;
    Ok(match objective.kind.as_str() {
        "mlm" => Box::new(MaskedLm::new(model, params, seed)?),
        "electra" => {
            let counts = match (objective.generator, corpus) {
                (Generator::Unigram, Some(c)) => token_counts(c),
                _ => Vec::new(),
            };
            let stats = corpus.map(|c| (counts.as_slice(), &c.manifest.special_ids));
            Box::new(ReplacedTokenDetection::new(
                model, objective, stats, params, seed,
            )?)
        }
        "mcbert" => {
            let mut objective = MultiChoice::new(
                model,
                size,
                config.objective.controller_shares,
                weight,
                params,
                seed,
            )?;
            objective.model.head.candidate_gradient = config.objective.candidate_gradient;
            Box::new(objective)
        }
        other => return Err(unknown_kind(other)),
    })
}

/// Refuses an `objective.kind` that pre-training does not know.
pub fn check_kind(kind: &str) -> Result<()> {
    if KINDS.contains(&kind) {
        Ok(())
    } else {
        Err(unknown_kind(kind))
    }
}

fn unknown_kind(kind: &str) -> Error {
    Error::Config(format!(
        "`objective.kind`: {kind:?} is not available in pretrain (expected \"mlm\", \"electra\" or \"mcbert\")"
    ))
}

/// Training FLOPs of one optimiser step (`tokens_per_step` tokens of
/// `seq_len`-token sequences) of `config`'s objective.
pub fn step_flops(config: &Config, seq_len: usize, tokens_per_step: u64) -> Result<f64> {
    let (m, o) = (&config.model, &config.objective);
    let tokens = tokens_per_step as f64;
    // TUPE's position term is computed once per forward pass (micro-batch),
    // by each encoder, forward and backward.
    let passes = 2.0 * config.train.grad_accum_steps as f64;
    Ok(match o.kind.as_str() {
        "mlm" => {
            tokens * mlm_training_per_token(m, seq_len, o.mask_prob)
                + passes * position_term_forward(m, seq_len)
        }
        "electra" => {
            let g = o
                .learned_generator()
                .map(|size| generator_config(m, size))
                .transpose()?;
            let per_token = electra_training_per_token(m, g.as_ref(), seq_len, o.mask_prob)
                + heads_training_per_token(m, o);
            let generator_term = g.map_or(0.0, |g| position_term_forward(&g, seq_len));
            tokens * per_token + passes * (position_term_forward(m, seq_len) + generator_term)
        }
        "mcbert" => {
            let g = generator_config(m, o.generator_size)?;
            let k = super::mcbert::CANDIDATES;
            tokens * mcbert_training_per_token(m, &g, seq_len, k, o.mask_prob)
                + passes * (position_term_forward(m, seq_len) + position_term_forward(&g, seq_len))
        }
        other => return Err(unknown_kind(other)),
    })
}
