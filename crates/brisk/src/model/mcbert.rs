//! MC-BERT's models (Xu et al., "Efficient Language Pre-Training via a Meta
//! Controller", 2020): the meta controller, a small MLM generator sharing
//! the main model's embeddings (built as ELECTRA's generator), and the main
//! model with a multi-choice head. The head scores each candidate by the dot
//! product of the transformed hidden state with the candidate's embedding
//! plus a per-token bias; the reject option (slot 0) has its own learned
//! vector and bias. A softmax over the `K` slots gives the loss.

use candle_core::{Device, Tensor};

use super::bert::{activation, activation_kind, Bert, InputMix, Linear, MlmHead};
use super::electra::generator_config;
use super::fused::Activation;
use super::norm::LayerNorm;
use super::params::{Ctx, Params};
use crate::config::ModelConfig;
use crate::corpus::generated::Rng;
use crate::corpus::tokenizer::SpecialIds;
use crate::error::Result;
use crate::pretrain::mcbert::{choices, CANDIDATES};
use crate::pretrain::mlm::MaskedBatch;

/// The multi-choice head (`mcbert_predictions.*`).
#[derive(Debug, Clone)]
pub struct ChoiceHead {
    dense: Linear,
    norm: LayerNorm,
    act: Activation,
    /// Per-token bias `[vocab]`.
    bias: Tensor,
    /// The reject option's vector `[hidden]` and bias `[1]`.
    reject: Tensor,
    reject_bias: Tensor,
}

impl ChoiceHead {
    pub fn new(params: &mut Params, cfg: &ModelConfig, rng: &mut Rng) -> Result<ChoiceHead> {
        let (h, std) = (cfg.hidden_size, cfg.initializer_range);
        let mut g = params.group("mcbert_predictions");
        Linear::add(&mut g, "dense", (h, h), std, rng);
        LayerNorm::add(&mut g, "LayerNorm", h);
        g.zeros("bias", &[cfg.vocab_size]);
        g.normal("reject", &[h], std, rng);
        g.zeros("reject_bias", &[1]);
        let g = g.finish()?;
        Ok(ChoiceHead {
            dense: Linear::view(g, "dense")?,
            norm: LayerNorm::view(g, "LayerNorm", cfg.layer_norm_eps)?,
            act: activation_kind(cfg)?,
            bias: g.view("bias")?,
            reject: g.view("reject")?,
            reject_bias: g.view("reject_bias")?,
        })
    }

    /// Scores `[positions, K]` of the reject option and the candidates
    /// (`candidates`: `K − 1` token ids per position) at every position of
    /// `hidden` `[batch, len, hidden]`.
    pub fn scores(
        &self,
        hidden: &Tensor,
        candidates: &Tensor,
        word_embeddings: &Tensor,
    ) -> Result<Tensor> {
        let d = hidden.dim(2)?;
        let n = hidden.elem_count() / d;
        let k = candidates.dim(0)? / n;
        let x = hidden.reshape((n, d))?;
        let t = self
            .norm
            .forward(&activation(self.act, &self.dense.forward(&x)?)?)?;
        let emb = word_embeddings
            .index_select(candidates, 0)?
            .reshape((n, k, d))?;
        let tokens = emb.broadcast_mul(&t.unsqueeze(1)?)?.sum(2)?;
        let tokens = (tokens + self.bias.index_select(candidates, 0)?.reshape((n, k))?)?;
        let reject = t
            .matmul(&self.reject.unsqueeze(1)?)?
            .broadcast_add(&self.reject_bias)?;
        Ok(Tensor::cat(&[&reject, &tokens], 1)?)
    }
}

/// The controller (`generator.*`, `generator_predictions.*`) and the main
/// model (`bert.*`, `mcbert_predictions.*`).
#[derive(Debug, Clone)]
pub struct McBert {
    pub main: Bert,
    pub head: ChoiceHead,
    pub controller: Bert,
    pub controller_head: MlmHead,
}

/// The losses of one batch.
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

impl McBert {
    pub fn new(
        cfg: &ModelConfig,
        controller_size: f64,
        params: &mut Params,
        seed: u64,
    ) -> Result<McBert> {
        let mut rng = Rng::new(seed);
        let main = Bert::new(params, cfg, &mut rng)?;
        let head = ChoiceHead::new(params, cfg, &mut rng)?;
        let c_cfg = generator_config(cfg, controller_size)?;
        let controller = Bert::sharing_embeddings(params, &c_cfg, "generator", &main, &mut rng)?;
        let controller_head = MlmHead::named(
            params,
            "generator_predictions",
            &c_cfg,
            &controller,
            &mut rng,
        )?;
        Ok(McBert {
            main,
            head,
            controller,
            controller_head,
        })
    }

    /// The controller's MLM loss (mean over masked tokens); its samples
    /// (from `rng`, no gradient) corrupt the masked positions and fill the
    /// candidate slots; then the main model's multi-choice loss (mean over
    /// tokens). `mix` changes the main model's input embeddings.
    #[allow(clippy::too_many_arguments)]
    pub fn losses(
        &self,
        tokens: &[u32],
        masked: &MaskedBatch,
        (batch, len): (usize, usize),
        weight: f64,
        special: &SpecialIds,
        rng: &mut Rng,
        mix: Option<&InputMix>,
        ctx: &mut Ctx,
    ) -> Result<McBertLosses> {
        let dev = Device::Cpu;
        let n = batch * len;
        let ids = Tensor::from_vec(masked.inputs.clone(), (batch, len), &dev)?;
        let every = Tensor::from_vec((0..n as u32).collect::<Vec<_>>(), n, &dev)?;
        let hidden = self.controller.forward(&ids, None, None, None, ctx)?;
        let words = self.main.word_embeddings();
        let rows = Tensor::from_vec(masked.rows.clone(), masked.rows.len(), &dev)?;
        let targets = Tensor::from_vec(masked.targets.clone(), masked.targets.len(), &dev)?;
        let logits = self.controller_head.forward(&hidden, &rows, words)?;
        let controller = candle_nn::loss::cross_entropy(&logits, &targets)?;
        // The candidates need the controller's distribution at every
        // position, but no gradient flows through sampling: those logits
        // are computed from detached inputs, so the backward pass stays at
        // the masked rows (a full-vocabulary backward at every position
        // would cost more than the rest of the step).
        let everywhere = self
            .controller_head
            .forward(&hidden.detach(), &every, &words.detach())?
            .detach();
        let flat: Vec<f32> = everywhere.flatten_all()?.to_vec1()?;
        let c = choices(tokens, masked, &flat, special, rng);
        let replaced = c.labels.iter().sum::<u32>() as f64 / n as f64;
        let ids = Tensor::from_vec(c.inputs, (batch, len), &dev)?;
        let hidden = self.main.forward(&ids, None, None, mix, ctx)?;
        let k = CANDIDATES - 1;
        let candidates = Tensor::from_vec(c.candidates, n * k, &dev)?;
        let scores = self
            .head
            .scores(&hidden, &candidates, self.main.word_embeddings())?;
        let labels = Tensor::from_vec(c.labels, n, &dev)?;
        let choice = candle_nn::loss::cross_entropy(&scores, &labels)?;
        let total = (&controller + (&choice * weight)?)?;
        Ok(McBertLosses {
            total,
            controller,
            choice,
            replaced,
            hidden,
        })
    }

    /// The controller's masked-LM loss alone (validation).
    pub fn controller_loss(
        &self,
        masked: &MaskedBatch,
        (batch, len): (usize, usize),
        ctx: &mut Ctx,
    ) -> Result<(Tensor, Tensor)> {
        let dev = Device::Cpu;
        let ids = Tensor::from_vec(masked.inputs.clone(), (batch, len), &dev)?;
        let rows = Tensor::from_vec(masked.rows.clone(), masked.rows.len(), &dev)?;
        let targets = Tensor::from_vec(masked.targets.clone(), masked.targets.len(), &dev)?;
        let hidden = self.controller.forward(&ids, None, None, None, ctx)?;
        let logits = self
            .controller_head
            .forward(&hidden, &rows, self.main.word_embeddings())?;
        Ok((candle_nn::loss::cross_entropy(&logits, &targets)?, logits))
    }

    pub fn is_fused(&self) -> bool {
        self.main.layers.iter().all(|l| l.is_fused())
            && self.controller.layers.iter().all(|l| l.is_fused())
    }
}
