//! MC-BERT's models (Xu et al., "Efficient Language Pre-Training via a Meta
//! Controller", 2020): the meta controller, a small MLM generator sharing
//! the main model's embeddings (built as ELECTRA's generator), and the main
//! model with a multi-choice head. The head scores each candidate by the dot
//! product of the transformed hidden state with the candidate's embedding
//! plus a per-token bias; the reject option (slot 0) has its own learned
//! vector and bias. A softmax over the `K` slots gives the loss.

use candle_core::Tensor;

use super::bert::{activation, activation_kind, runs_fused, Bert, Linear, MlmHead};
use super::electra::generator_config;
use super::fused::Activation;
use super::fused::ChoiceSpec;
use super::norm::LayerNorm;
use super::params::{Ctx, Params};
use crate::config::{ModelConfig, SharedEmbeddings};
use crate::corpus::generated::Rng;
use crate::error::Result;

/// The multi-choice head (`mcbert_predictions.*`).
#[derive(Debug, Clone)]
pub struct ChoiceHead {
    /// Whether the choice loss's gradient reaches the candidates' word
    /// embeddings (the shared table the controller also decodes with).
    pub candidate_gradient: bool,
    /// The flat group.
    group: Tensor,
    /// Set when the fused kernel computes the head and its loss.
    fused: Option<ChoiceSpec>,
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
    /// The head for `main`, whose word embeddings are the candidates'
    /// vectors.
    pub fn new(
        params: &mut Params,
        cfg: &ModelConfig,
        main: &Bert,
        rng: &mut Rng,
    ) -> Result<ChoiceHead> {
        let (h, std) = (cfg.hidden_size, cfg.initializer_range);
        let mut g = params.group("mcbert_predictions");
        Linear::add(&mut g, "dense", (h, h), std, rng);
        LayerNorm::add(&mut g, "LayerNorm", h);
        g.zeros("bias", &[cfg.vocab_size]);
        g.normal("reject", &[h], std, rng);
        g.zeros("reject_bias", &[1]);
        let g = g.finish()?;
        let act = activation_kind(cfg)?;
        let fused = match (main.fused_embeddings(), runs_fused(cfg, g)) {
            (Some(embeddings), true) => {
                Some(ChoiceSpec::of(g, embeddings, act, cfg.layer_norm_eps)?)
            }
            _ => None,
        };
        Ok(ChoiceHead {
            candidate_gradient: true,
            group: g.var.as_tensor().clone(),
            fused,
            dense: Linear::view(g, "dense")?,
            norm: LayerNorm::view(g, "LayerNorm", cfg.layer_norm_eps)?,
            act,
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
        // Mixed precision: the f32 weights in the activations' dtype.
        let like = |w: &Tensor| w.to_dtype(t.dtype());
        let emb = like(&word_embeddings.index_select(candidates, 0)?)?.reshape((n, k, d))?;
        let tokens = emb.broadcast_mul(&t.unsqueeze(1)?)?.sum(2)?;
        let bias = like(&self.bias.index_select(candidates, 0)?)?.reshape((n, k))?;
        let tokens = (tokens + bias)?;
        let reject = t
            .matmul(&like(&self.reject)?.unsqueeze(1)?)?
            .broadcast_add(&like(&self.reject_bias)?)?;
        Ok(Tensor::cat(&[&reject, &tokens], 1)?)
    }

    /// Mean cross-entropy over the positions of `hidden` of their `labels`
    /// (0: reject, 1: the original in slot 1) among the reject option and
    /// `candidates` (`K − 1` ids per position), the candidates' vectors
    /// being `main`'s word embeddings. Fused when the model runs fused.
    pub fn loss(
        &self,
        hidden: &Tensor,
        candidates: &[u32],
        labels: &[u32],
        main: &Bert,
    ) -> Result<Tensor> {
        let Some(spec) = &self.fused else {
            return self.reference_loss(hidden, candidates, labels, main);
        };
        // Detached here, the table still learns through the main model's
        // input embeddings.
        let table = match self.candidate_gradient {
            true => main.embedding_group().clone(),
            false => main.embedding_group().detach(),
        };
        spec.loss(hidden, &self.group, &table, candidates, labels)
    }

    /// [`ChoiceHead::loss`] through candle's ops (the fused head's reference).
    pub fn reference_loss(
        &self,
        hidden: &Tensor,
        candidates: &[u32],
        labels: &[u32],
        main: &Bert,
    ) -> Result<Tensor> {
        let dev = hidden.device();
        let candidates = Tensor::from_vec(candidates.to_vec(), candidates.len(), dev)?;
        let labels = Tensor::from_vec(labels.to_vec(), labels.len(), dev)?;
        let table = match self.candidate_gradient {
            true => main.word_embeddings().clone(),
            false => main.word_embeddings().detach(),
        };
        let scores = self.scores(hidden, &candidates, &table)?;
        Ok(candle_nn::loss::cross_entropy(
            &scores.to_dtype(candle_core::DType::F32)?,
            &labels,
        )?)
    }

    /// True when the fused kernel computes the head and its loss.
    pub fn is_fused(&self) -> bool {
        self.fused.is_some()
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

impl McBert {
    pub fn new(
        cfg: &ModelConfig,
        controller_size: f64,
        share: SharedEmbeddings,
        params: &mut Params,
        seed: u64,
    ) -> Result<McBert> {
        let mut rng = Rng::new(seed);
        let main = Bert::new(params, cfg, &mut rng)?;
        let head = ChoiceHead::new(params, cfg, &main, &mut rng)?;
        let c_cfg = generator_config(cfg, controller_size)?;
        let controller =
            Bert::sharing_embeddings(params, &c_cfg, "generator", &main, share, &mut rng)?;
        // Tied to the main model's word table, which the controller reads
        // whatever else it shares.
        let controller_head =
            MlmHead::named(params, "generator_predictions", &c_cfg, &main, &mut rng)?;
        Ok(McBert {
            main,
            head,
            controller,
            controller_head,
        })
    }

    /// The controller's last hidden states `[batch, len, hidden]` for
    /// `ids`.
    pub fn control(&self, ids: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        self.controller.forward(ids, None, None, None, ctx)
    }

    /// The controller's logits `[rows, vocab]` at the flattened positions
    /// `rows` of its `hidden` states, through the tied decoder.
    pub fn controller_logits(&self, hidden: &Tensor, rows: &Tensor) -> Result<Tensor> {
        self.controller_head
            .forward(hidden, rows, self.main.word_embeddings())
    }

    pub fn is_fused(&self) -> bool {
        self.head.is_fused()
            && self.controller_head.is_fused()
            && self.main.layers.iter().all(|l| l.is_fused())
            && self.controller.layers.iter().all(|l| l.is_fused())
    }
}
