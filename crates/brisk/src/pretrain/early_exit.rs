//! Adaptive early exit during ELECTRA pre-training, after Kang, Shin, Kim,
//! Jo & Myaeng, "Maximizing Efficiency of Language Model Pre-training for
//! Learning Representation" (arXiv 2110.06620, KSC 2020): later layers are
//! relieved of the tokens an earlier layer already reads with confidence.
//!
//! Only the paper's abstract is public; the design is ours:
//! - **Exit heads.** Discriminator layers `objective.exit_layers` (counted
//!   from 1, below the last) are each followed by a replaced-token head
//!   shaped like the final one (`discriminator_exits.{layer}.*`).
//! - **Exit rule.** From step `objective.exit_warmup` on, a token whose
//!   exit-head logit `z` has `|z| ≥ objective.exit_threshold` leaves, on
//!   either side ("surely replaced" or "surely original"): the layers above
//!   no longer update it. Its hidden state is carried to the output
//!   unchanged and stays a key and a value for the tokens that remain, so
//!   the others' attention sees the same sequence. The decision reads
//!   values only: no gradient flows through it.
//! - **Real savings.** The fused layer takes the active rows and computes
//!   the query side (Q projection, attention rows, output projection,
//!   feed-forward) on them alone; keys and values are still projected for
//!   every token. FLOPs are counted from the rows actually computed.
//! - **Losses.** The final head reads every token (the exited ones through
//!   their carried state), with binary cross-entropy over all tokens as in
//!   ELECTRA. Each exit head is trained on the tokens that reached it,
//!   those it decides about. The discriminator's loss is
//!   `final + exit_weight × mean over heads of their losses`, and the
//!   objective's total is `generator + λ × that`. The exit heads are
//!   trained from the first step, before any token may leave, so that
//!   their confidence means something when the warm-up ends.

use candle_core::Tensor;

use crate::config::{ModelConfig, ObjectiveConfig};
use crate::error::Result;
use crate::model::electra::Electra;
use crate::model::flops::{discriminator_head_forward_per_token, query_side_forward_per_token};
use crate::model::{Ctx, InputMix};

/// The exit rule and its loss weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EarlyExit {
    /// `|logit|` at which a token leaves.
    pub threshold: f64,
    /// Steps before any token may leave.
    pub warmup: u64,
    /// The weight of the exit heads' mean loss.
    pub weight: f64,
}

impl EarlyExit {
    /// The rule of `objective`, when it has exit heads.
    pub fn of(objective: &ObjectiveConfig) -> Option<EarlyExit> {
        (!objective.exit_layers.is_empty()).then_some(EarlyExit {
            threshold: objective.exit_threshold,
            warmup: objective.exit_warmup,
            weight: objective.exit_weight,
        })
    }

    /// Whether a token whose exit head reads `logit` goes on at `step`.
    pub fn stays(&self, logit: f32, step: u64) -> bool {
        step < self.warmup || (logit.abs() as f64) < self.threshold
    }
}

/// The discriminator's losses with early exit, and what it skipped.
pub struct ExitLosses {
    /// The final head's loss over every token.
    pub last: Tensor,
    /// The exit heads' mean loss.
    pub exits: Tensor,
    /// `last + weight × exits`.
    pub combined: Tensor,
    /// The last hidden states (an exited token's: where it left).
    pub hidden: Tensor,
    /// Per layer (from the first): the share of tokens it did not update.
    pub skipped: Vec<f64>,
    /// Training FLOPs not spent on the skipped query rows and exit-head
    /// readings, against a pass where nobody leaves.
    pub flops_skipped: f64,
}

/// The discriminator's (of shape `cfg`) pass over `ids` `[batch, len]`
/// with labels (`[batch, len]`, 1 for replaced) under `rule` at step
/// `step`.
pub fn detect(
    model: &Electra,
    cfg: &ModelConfig,
    rule: &EarlyExit,
    (ids, labels): (&Tensor, &Tensor),
    mix: Option<&InputMix>,
    step: u64,
    ctx: &mut Ctx,
) -> Result<ExitLosses> {
    let stays = |_layer: usize, logits: &[f32]| -> Vec<bool> {
        logits.iter().map(|&z| rule.stays(z, step)).collect()
    };
    let pass = model.discriminate_exiting(ids, labels, mix, &stays, ctx)?;
    let last = model.discriminator_head.loss(&pass.hidden, labels)?;
    let exit_losses: Vec<&Tensor> = pass.exits.iter().map(|e| &e.loss).collect();
    let exits = match exit_losses.len() {
        // Every token left before any head could read it (the last ones
        // read nobody): nothing to learn there this batch.
        0 => Tensor::new(0f32, ids.device())?,
        n => (Tensor::stack(&exit_losses, 0)?.sum_all()? / n as f64)?,
    };
    let combined = (&last + (&exits * rule.weight)?)?;
    let (batch, len) = ids.dims2()?;
    let tokens = batch * len;
    let skipped = pass
        .updated
        .iter()
        .map(|&n| (tokens - n) as f64 / tokens as f64)
        .collect();
    let skipped_rows: usize = pass.updated.iter().map(|&n| tokens - n).sum();
    let read: usize = pass.exits.iter().map(|e| e.rows.len()).sum();
    let unread = model.exits.len() * tokens - read;
    let flops_skipped = 2.0
        * (skipped_rows as f64 * query_side_forward_per_token(cfg, len)
            + unread as f64 * discriminator_head_forward_per_token(cfg));
    Ok(ExitLosses {
        last,
        exits,
        combined,
        hidden: pass.hidden,
        skipped,
        flops_skipped,
    })
}

/// Training FLOPs per token of the exit heads when every token reaches
/// them (what a step is planned at; [`ExitLosses::flops_skipped`] is
/// taken off).
pub fn heads_training_per_token(cfg: &ModelConfig, objective: &ObjectiveConfig) -> f64 {
    2.0 * objective.exit_layers.len() as f64 * discriminator_head_forward_per_token(cfg)
}

/// The figures a step logs: the exit heads' loss, the share of all
/// token-layers skipped (`skipped`) and per layer above the first exit
/// head (`skipped_layer_{k}`, counted from 1).
pub fn logged(losses: &ExitLosses, first_exit: usize) -> Result<Vec<(String, f64)>> {
    let mut out = vec![(
        "exit_loss".to_string(),
        losses.exits.to_scalar::<f32>()? as f64,
    )];
    let layers = losses.skipped.len().max(1) as f64;
    out.push((
        "skipped".into(),
        losses.skipped.iter().sum::<f64>() / layers,
    ));
    for (i, share) in losses.skipped.iter().enumerate().skip(first_exit) {
        out.push((format!("skipped_layer_{}", i + 1), *share));
    }
    Ok(out)
}
