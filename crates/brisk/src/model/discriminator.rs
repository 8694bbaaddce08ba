//! ELECTRA's discriminator head (Clark et al., ICLR 2020; HF
//! `ElectraDiscriminatorPredictions`, same tensor names): a dense layer and
//! the activation, then one logit per token for "this token was replaced",
//! trained with binary cross-entropy averaged over the non-padding tokens.

use candle_core::{DType, Tensor};

use super::bert::{activation, activation_kind, runs_fused, Linear};
use super::fused::{Activation, DetectorSpec};
use super::params::Params;
use crate::config::ModelConfig;
use crate::corpus::generated::Rng;
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct DiscriminatorHead {
    /// The flat group.
    group: Tensor,
    /// Set when the fused kernel computes the head and its loss.
    fused: Option<DetectorSpec>,
    dense: Linear,
    prediction: Linear,
    act: Activation,
}

impl DiscriminatorHead {
    /// Creates the group `discriminator_predictions`.
    pub fn new(params: &mut Params, cfg: &ModelConfig, rng: &mut Rng) -> Result<DiscriminatorHead> {
        DiscriminatorHead::named(params, "discriminator_predictions", cfg, rng)
    }

    /// Creates a head of the same shape as the group `prefix` (early exit's
    /// intermediate heads).
    pub fn named(
        params: &mut Params,
        prefix: &str,
        cfg: &ModelConfig,
        rng: &mut Rng,
    ) -> Result<DiscriminatorHead> {
        let (h, std) = (cfg.hidden_size, cfg.initializer_range);
        let mut g = params.group(prefix);
        Linear::add(&mut g, "dense", (h, h), std, rng);
        Linear::add(&mut g, "dense_prediction", (h, 1), std, rng);
        let g = g.finish()?;
        let act = activation_kind(cfg)?;
        let fused = runs_fused(cfg, g)
            .then(|| DetectorSpec::of(g, act))
            .transpose()?;
        Ok(DiscriminatorHead {
            group: g.var.as_tensor().clone(),
            fused,
            dense: Linear::view(g, "dense")?,
            prediction: Linear::view(g, "dense_prediction")?,
            act,
        })
    }

    /// `hidden` `[..., hidden]` → replaced-token logits `[...]` (e.g.
    /// `[batch, len, hidden]` → `[batch, len]`).
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let x = activation(self.act, &self.dense.forward(hidden)?)?;
        let last = x.rank() - 1;
        Ok(self.prediction.forward(&x)?.squeeze(last)?)
    }

    /// Mean binary cross-entropy of the head's logits at `hidden` `[..,
    /// hidden]` against `labels` (same leading shape, 1 for replaced).
    /// Fused when the model runs fused.
    pub fn loss(&self, hidden: &Tensor, labels: &Tensor) -> Result<Tensor> {
        Ok(self.loss_and_logits(hidden, labels)?.0)
    }

    /// [`DiscriminatorHead::loss`] and the logits' values, flattened.
    pub fn loss_and_logits(&self, hidden: &Tensor, labels: &Tensor) -> Result<(Tensor, Vec<f32>)> {
        match &self.fused {
            Some(spec) => {
                let labels: Vec<f32> = labels.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
                spec.loss(hidden, &self.group, &labels)
            }
            None => {
                let logits = self.forward(hidden)?;
                let loss = replaced_token_loss(&logits, labels, None)?;
                let values = logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
                Ok((loss, values))
            }
        }
    }

    /// [`DiscriminatorHead::loss`] through candle's ops (the fused head's
    /// reference).
    pub fn reference_loss(&self, hidden: &Tensor, labels: &Tensor) -> Result<Tensor> {
        replaced_token_loss(&self.forward(hidden)?, labels, None)
    }

    /// True when the fused kernel computes the head and its loss.
    pub fn is_fused(&self) -> bool {
        self.fused.is_some()
    }
}

/// Mean binary cross-entropy of `logits` against `labels` (both `[batch,
/// len]`, labels 1 for replaced) over the tokens where `mask` is 1 (all
/// tokens without a mask), in the stable form
/// `max(x, 0) − x·y + ln(1 + e^(−|x|))`.
pub fn replaced_token_loss(
    logits: &Tensor,
    labels: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let x = logits.to_dtype(DType::F32)?;
    let y = labels.to_dtype(DType::F32)?;
    let per_token = ((x.relu()? - (&x * &y)?)? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    Ok(match mask {
        None => per_token.mean_all()?,
        Some(m) => {
            let m = m.to_dtype(DType::F32)?;
            (per_token * &m)?.sum_all()?.broadcast_div(&m.sum_all()?)?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;
    use candle_core::Device;

    #[test]
    fn the_loss_is_binary_cross_entropy_over_real_tokens() {
        let dev = &Device::Cpu;
        let x = [[2.0f32, -1.0, 0.5], [30.0, -30.0, 0.0]];
        let y = [[1.0f32, 0.0, 0.0], [0.0, 0.0, 1.0]];
        let keep = [[1.0f32, 1.0, 1.0], [1.0, 1.0, 0.0]];
        let bce = |x: f32, y: f32| -(y * sigmoid(x).ln() + (1.0 - y) * (1.0 - sigmoid(x)).ln());
        fn sigmoid(x: f32) -> f32 {
            1.0 / (1.0 + (-x).exp())
        }
        let loss = replaced_token_loss(
            &Tensor::new(&x, dev).unwrap(),
            &Tensor::new(&y, dev).unwrap(),
            Some(&Tensor::new(&keep, dev).unwrap()),
        )
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        // Five real tokens; the saturated logits use the closed form
        // (softplus(30) = 30 for a 0 label at x = 30).
        let want = (bce(2.0, 1.0) + bce(-1.0, 0.0) + bce(0.5, 0.0) + 30.0 + bce(-30.0, 0.0)) / 5.0;
        assert!((loss - want).abs() < 1e-5, "{loss} vs {want}");
        assert!(loss.is_finite());
    }

    #[test]
    fn every_head_parameter_gets_a_gradient() {
        let mut cfg = Preset::Tiny.config().model;
        cfg.hidden_size = 8;
        let mut params = Params::new(Device::Cpu, DType::F32);
        let head = DiscriminatorHead::new(&mut params, &cfg, &mut Rng::new(1)).unwrap();
        let mut rng = Rng::new(2);
        let values: Vec<f32> = (0..2 * 5 * 8).map(|_| rng.unit() as f32 - 0.5).collect();
        let hidden = Tensor::from_vec(values, (2, 5, 8), &Device::Cpu).unwrap();
        let logits = head.forward(&hidden).unwrap();
        assert_eq!(logits.dims(), &[2, 5]);
        let labels = Tensor::from_vec(
            vec![0f32, 1., 0., 0., 1., 1., 0., 0., 0., 1.],
            (2, 5),
            &Device::Cpu,
        )
        .unwrap();
        let loss = replaced_token_loss(&logits, &labels, None).unwrap();
        let store = loss.backward().unwrap();
        let grads: Vec<Tensor> = params
            .groups()
            .iter()
            .map(|g| store.get(g.var.as_tensor()).unwrap().clone())
            .collect();
        for (name, g) in params.split(&grads).unwrap() {
            let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
            assert!(g.iter().all(|v| v.is_finite()), "{name}");
            assert!(g.iter().any(|v| *v != 0.0), "{name} has no gradient");
        }
    }
}
