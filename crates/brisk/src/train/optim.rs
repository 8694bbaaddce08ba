//! AdamW (Loshchilov & Hutter, 2019) with decoupled weight decay and two
//! parameter groups, and global gradient-norm clipping.
//!
//! As in BERT, biases and LayerNorm parameters get no weight decay.

use std::collections::HashMap;
use std::path::Path;

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

    /// Applies one update with learning rate `lr`. `grads` are in parameter
    /// order (see [`gradients`]) and are multiplied by `grad_scale` first
    /// (for clipping).
    pub fn update(&mut self, grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<()> {
        if grads.len() != self.slots.len() {
            return Err(Error::Tensor(format!(
                "{} gradients for {} parameters",
                grads.len(),
                self.slots.len()
            )));
        }
        self.step += 1;
        let t = self.step as i32;
        let (c1, c2) = (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t));
        for (slot, grad) in self.slots.iter_mut().zip(grads) {
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

    /// Writes the first and second moments (`m.<name>`, `v.<name>`) to a
    /// safetensors file, atomically. The step count travels in the
    /// checkpoint's `state.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = HashMap::new();
        for slot in &self.slots {
            tensors.insert(format!("m.{}", slot.name), slot.m.clone());
            tensors.insert(format!("v.{}", slot.name), slot.v.clone());
        }
        let tmp = crate::run::temporary_sibling(path);
        candle_core::safetensors::save(&tensors, &tmp)?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }

    /// Restores the moments written by [`AdamW::save`] and the step count.
    pub fn load(&mut self, path: &Path, step: u64) -> Result<()> {
        let device = self
            .slots
            .first()
            .map(|s| s.var.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        let mut tensors = candle_core::safetensors::load(path, &device)
            .map_err(|e| Error::data(path, format!("not a readable safetensors file: {e}")))?;
        for slot in &mut self.slots {
            for (prefix, moment) in [("m", &mut slot.m), ("v", &mut slot.v)] {
                let name = format!("{prefix}.{}", slot.name);
                let t = tensors
                    .remove(&name)
                    .ok_or_else(|| Error::data(path, format!("has no tensor {name}")))?;
                if t.dims() != slot.var.dims() {
                    return Err(Error::data(
                        path,
                        format!(
                            "tensor {name} has shape {:?}, the model expects {:?}",
                            t.dims(),
                            slot.var.dims()
                        ),
                    ));
                }
                *moment = t.to_dtype(slot.var.dtype())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The gradients of every parameter in creation order; a parameter without
/// a gradient is an error naming it (it would silently stop training).
pub fn gradients(params: &Params, grads: &GradStore) -> Result<Vec<Tensor>> {
    params
        .iter()
        .map(|(name, var)| {
            grads
                .get(var.as_tensor())
                .cloned()
                .ok_or_else(|| Error::Tensor(format!("no gradient for {name}")))
        })
        .collect()
}

/// Adds `more` to the accumulated gradients `sum` (empty on the first
/// micro-batch).
pub fn accumulate(sum: &mut Vec<Tensor>, more: Vec<Tensor>) -> Result<()> {
    if sum.is_empty() {
        *sum = more;
        return Ok(());
    }
    for (s, g) in sum.iter_mut().zip(more) {
        *s = (&*s + g)?;
    }
    Ok(())
}

/// The global L2 norm of a set of gradients.
pub fn grad_norm(grads: &[Tensor]) -> Result<f64> {
    let mut total = 0f64;
    for g in grads {
        total += g
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
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
        let grads = gradients(&params, &loss.backward().unwrap()).unwrap();
        assert!((grad_norm(&grads).unwrap() - 6.0).abs() < 1e-12);
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
