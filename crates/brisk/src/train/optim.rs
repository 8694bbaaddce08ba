//! AdamW (Loshchilov & Hutter, 2019) with decoupled weight decay and two
//! parameter groups, and global gradient-norm clipping.
//!
//! As in BERT, biases and LayerNorm parameters get no weight decay.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::model::Params;

/// One parameter and its moments.
struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

/// AdamW state over a model's parameters.
pub struct AdamW {
    slots: Vec<Slot>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// Optimiser steps taken.
    pub step: u64,
}

/// True for parameters that get weight decay: everything but biases and
/// LayerNorm.
pub fn decays(name: &str) -> bool {
    !(name.ends_with(".bias") || name.contains("LayerNorm"))
}

impl AdamW {
    pub fn new(params: &Params, train: &TrainConfig) -> Result<AdamW> {
        let slots = params
            .iter()
            .map(|(name, var)| {
                Ok(Slot {
                    name: name.to_string(),
                    var: var.clone(),
                    m: var.zeros_like()?,
                    v: var.zeros_like()?,
                    decay: decays(name),
                })
            })
            .collect::<Result<_>>()?;
        Ok(AdamW {
            slots,
            beta1: train.adam_beta1,
            beta2: train.adam_beta2,
            eps: train.adam_epsilon,
            weight_decay: train.weight_decay,
            step: 0,
        })
    }

    /// Applies one update with learning rate `lr`; gradients are multiplied
    /// by `grad_scale` first (for clipping).
    pub fn update(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let (c1, c2) = (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t));
        for slot in &mut self.slots {
            let grad = grads
                .get(slot.var.as_tensor())
                .ok_or_else(|| Error::Tensor(format!("no gradient for {}", slot.name)))?;
            let g = (grad * grad_scale)?;
            slot.m = ((&slot.m * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            slot.v = ((&slot.v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let step = ((&slot.m / c1)? / ((&slot.v / c2)?.sqrt()? + self.eps)?)?;
            let w = slot.var.as_tensor();
            let decayed = if slot.decay {
                (w * (1.0 - lr * self.weight_decay))?
            } else {
                w.clone()
            };
            slot.var.set(&(decayed - (step * lr)?)?)?;
        }
        Ok(())
    }
}

/// The global L2 norm of all gradients of `params`.
pub fn grad_norm(params: &Params, grads: &GradStore) -> Result<f64> {
    let mut total = 0f64;
    for (_, var) in params.iter() {
        if let Some(g) = grads.get(var.as_tensor()) {
            total += g
                .sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
        }
    }
    Ok(total.sqrt())
}

/// The factor that scales gradients of norm `norm` down to `max_norm`
/// (1 when already within it, or when clipping is off).
pub fn clip_scale(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;
    use candle_core::{DType, Device};

    #[test]
    fn no_decay_on_biases_and_layer_norm() {
        assert!(decays("bert.encoder.layer.0.attention.self.query.weight"));
        assert!(decays("bert.embeddings.word_embeddings.weight"));
        assert!(!decays("bert.encoder.layer.0.attention.self.query.bias"));
        assert!(!decays("bert.embeddings.LayerNorm.weight"));
        assert!(!decays("cls.predictions.bias"));
    }

    #[test]
    fn adamw_matches_the_update_rule() {
        let mut params = Params::new(Device::Cpu, DType::F64);
        let w = params.ones("w.weight", &[2]).unwrap();
        let b = params.ones("w.bias", &[2]).unwrap();
        let mut train = Preset::Tiny.config().train;
        train.weight_decay = 0.1;
        let mut opt = AdamW::new(&params, &train).unwrap();
        // loss = sum(3 w + 3 b): every gradient is 3.
        let loss = ((&w * 3.0).unwrap() + (&b * 3.0).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        assert!((grad_norm(&params, &grads).unwrap() - 6.0).abs() < 1e-12);
        let lr = 0.01;
        opt.update(&grads, lr, 1.0).unwrap();
        // First step: m̂ = g, v̂ = g², so the step is g/(|g| + eps) ≈ 1.
        let step = 3.0 / (3.0 + train.adam_epsilon);
        let read = |name| -> Vec<f64> { params.get(name).unwrap().as_tensor().to_vec1().unwrap() };
        let expect_w = 1.0 * (1.0 - lr * 0.1) - lr * step;
        let expect_b = 1.0 - lr * step;
        assert!(read("w.weight")
            .iter()
            .all(|x| (x - expect_w).abs() < 1e-12));
        assert!(read("w.bias").iter().all(|x| (x - expect_b).abs() < 1e-12));
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        assert_eq!(clip_scale(0.5, 1.0), 1.0);
        assert!((clip_scale(4.0, 1.0) * 4.0 - 1.0).abs() < 1e-6);
        assert_eq!(clip_scale(4.0, 0.0), 1.0);
    }
}
