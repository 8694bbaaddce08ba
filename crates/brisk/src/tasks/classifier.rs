//! Sentence (and sentence-pair) classification and regression, as HF's
//! `BertForSequenceClassification`: the encoder, the pooler (a dense layer
//! and tanh on `[CLS]`), dropout, and a linear layer to the task's outputs.
//! Tensor names are HF's (`bert.pooler.dense.*`, `classifier.*`).

use candle_core::{DType, Device, Tensor, D};

use crate::config::ModelConfig;
use crate::corpus::generated::Rng;
use crate::encoder::Batch;
use crate::error::Result;
use crate::model::bert::Linear;
use crate::model::{Bert, Ctx, InputMix, Params};

/// The head's parameter names start with these: a pre-trained checkpoint
/// may lack them (they are then initialised).
pub const HEAD_PREFIXES: [&str; 2] = ["bert.pooler.", "classifier."];

#[derive(Debug, Clone)]
pub struct Classifier {
    pub bert: Bert,
    pooler: Linear,
    classifier: Linear,
    dropout: f64,
    /// Classes, or 1 for regression.
    pub outputs: usize,
}

impl Classifier {
    /// A classifier with freshly initialised weights (draws from `rng`).
    pub fn new(
        params: &mut Params,
        cfg: &ModelConfig,
        outputs: usize,
        rng: &mut Rng,
    ) -> Result<Classifier> {
        let bert = Bert::new(params, cfg, rng)?;
        let (h, std) = (cfg.hidden_size, cfg.initializer_range);
        let mut g = params.group("bert.pooler");
        Linear::add(&mut g, "dense", (h, h), std, rng);
        let pooler = Linear::view(g.finish()?, "dense")?;
        let mut g = params.group("classifier");
        g.normal("weight", &[outputs, h], std, rng);
        g.zeros("bias", &[outputs]);
        let g = g.finish()?;
        let classifier = Linear {
            weight: g.view("weight")?,
            bias: g.view("bias")?,
        };
        Ok(Classifier {
            bert,
            pooler,
            classifier,
            dropout: cfg.hidden_dropout_prob,
            outputs,
        })
    }

    /// Outputs `[batch, outputs]`: class logits, or the regression value.
    pub fn forward(&self, batch: &Batch, ctx: &mut Ctx) -> Result<Tensor> {
        Ok(self.forward_mixed(batch, None, ctx)?.0)
    }

    /// [`Classifier::forward`] with an optional change to the input
    /// embeddings (TNF's notes), also returning the last hidden states.
    pub fn forward_mixed(
        &self,
        batch: &Batch,
        mix: Option<&InputMix>,
        ctx: &mut Ctx,
    ) -> Result<(Tensor, Tensor)> {
        let hidden = self.bert.forward(
            &batch.ids,
            Some(&batch.token_types),
            Some(&batch.mask),
            mix,
            ctx,
        )?;
        let cls = hidden.narrow(1, 0, 1)?.squeeze(1)?;
        let pooled = self.pooler.forward(&cls)?.tanh()?;
        let outputs = self
            .classifier
            .forward(&ctx.dropout(&pooled, self.dropout)?)?;
        Ok((outputs, hidden))
    }

    /// The mean loss against `labels` (class ids, or targets): cross-entropy
    /// for classification, squared error for regression.
    pub fn loss(&self, outputs: &Tensor, labels: &[f32]) -> Result<Tensor> {
        let dev = outputs.device();
        if self.outputs == 1 {
            let target = Tensor::from_slice(labels, (labels.len(), 1), dev)?;
            return Ok(outputs.sub(&target)?.sqr()?.mean_all()?);
        }
        let ids: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
        let ids = Tensor::from_vec(ids, labels.len(), dev)?;
        Ok(candle_nn::loss::cross_entropy(
            &outputs.to_dtype(DType::F32)?,
            &ids,
        )?)
    }

    /// The device the classifier's weights are on.
    pub fn device(&self) -> &Device {
        self.classifier.weight.device()
    }

    /// Predictions from outputs: the arg-max class, or the value.
    pub fn predict(&self, outputs: &Tensor) -> Result<Vec<f32>> {
        if self.outputs == 1 {
            return Ok(outputs.squeeze(1)?.to_vec1()?);
        }
        let ids: Vec<u32> = outputs.argmax(D::Minus1)?.to_vec1()?;
        Ok(ids.into_iter().map(|i| i as f32).collect())
    }
}
