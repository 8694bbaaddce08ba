//! AdamW (Loshchilov & Hutter, 2019) with decoupled weight decay and two
//! parameter groups, and global gradient-norm clipping.
//!
//! As in BERT, biases and LayerNorm parameters get no weight decay. On the
//! CPU the update runs in place over each flat parameter group in one pass
//! (weights, both moments), with the no-decay tensors as ranges of the
//! group. On other devices it is the same arithmetic as tensor ops on the
//! device ([`Kernel::Tensors`]), with the no-decay ranges as a 0/1 mask; the
//! moments stay there, and only checkpoints copy them to the host.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Mutex;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp2, Layout, Tensor};
use rayon::prelude::*;

use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::model::fused::kernels::Float;
use crate::model::params::{named, Group};
use crate::model::Params;

/// The first and second moments of one group, in its dtype.
enum Moments {
    F32(Vec<f32>, Vec<f32>),
    F64(Vec<f64>, Vec<f64>),
    /// On the group's device, with the group's weight-decay mask (1 where
    /// decayed).
    Tensors {
        m: Tensor,
        v: Tensor,
        decay: Tensor,
    },
}

/// Which implementation applies the update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// The in-place pass over host memory (CPU groups).
    Host,
    /// Tensor ops on the group's device (any device; what a GPU runs).
    Tensors,
}

/// One parameter group and its optimiser state.
struct Slot {
    group: Group,
    moments: Moments,
    /// Element ranges of the group that get weight decay.
    decayed: Vec<Range<usize>>,
    /// This group's learning rate relative to the schedule's.
    lr_factor: f64,
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

/// True for parameters that get weight decay: everything but biases,
/// LayerNorm and TNF's notes.
pub fn decays(name: &str) -> bool {
    // TNF's notes (fine-tuning mode U) are a memory, not weights: they move
    // only where a word's gradient moves them.
    !(name.ends_with(".bias") || name.contains("LayerNorm") || name.starts_with("notes."))
}

/// The hyper-parameters of one group's update.
#[derive(Clone, Copy)]
struct Hyper {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// Bias corrections `1 − β^t`.
    c1: f64,
    c2: f64,
    grad_scale: f64,
}

/// `w ← w·(1 − lr·λ·decay) − lr · m̂ / (sqrt(v̂) + eps)` for one group, in
/// place; `m`, `v` are updated on the way.
fn adamw_step<T: Float>(
    w: &mut [T],
    g: &[T],
    (m, v): (&mut [T], &mut [T]),
    decayed: &[Range<usize>],
    k: Hyper,
) {
    let update = |w: &mut [T], g: &[T], m: &mut [T], v: &mut [T], decay: bool| {
        let shrink = T::of(if decay {
            1.0 - k.lr * k.weight_decay
        } else {
            1.0
        });
        let (b1, b2) = (T::of(k.beta1), T::of(k.beta2));
        let (a1, a2) = (T::of(1.0 - k.beta1), T::of(1.0 - k.beta2));
        let (inv_c1, inv_c2) = (T::of(1.0 / k.c1), T::of(1.0 / k.c2));
        let (lr, eps, scale) = (T::of(k.lr), T::of(k.eps), T::of(k.grad_scale));
        for i in 0..w.len() {
            let gi = g[i] * scale;
            m[i] = b1 * m[i] + a1 * gi;
            v[i] = b2 * v[i] + a2 * gi * gi;
            let step = (m[i] * inv_c1) / ((v[i] * inv_c2).sqrt() + eps);
            w[i] = w[i] * shrink - lr * step;
        }
    };
    // Split the group into decayed and plain stretches, then each stretch
    // into chunks for the pool.
    let mut cuts = vec![0, w.len()];
    for r in decayed {
        cuts.extend([r.start, r.end]);
    }
    cuts.sort_unstable();
    cuts.dedup();
    const CHUNK: usize = 1 << 15;
    let mut jobs = Vec::new();
    let (mut w, mut m, mut v, mut g) = (w, m, v, g);
    let mut at = 0;
    for &end in &cuts[1..] {
        let decay = decayed.iter().any(|r| r.start <= at && at < r.end);
        let mut len = end - at;
        while len > 0 {
            let n = len.min(CHUNK);
            let (w0, w1) = w.split_at_mut(n);
            let (m0, m1) = m.split_at_mut(n);
            let (v0, v1) = v.split_at_mut(n);
            let (g0, g1) = g.split_at(n);
            jobs.push((w0, g0, m0, v0, decay));
            (w, m, v, g) = (w1, m1, v1, g1);
            len -= n;
            at += n;
        }
    }
    jobs.into_par_iter()
        .for_each(|(w, g, m, v, decay)| update(w, g, m, v, decay));
}

/// The in-place update of one group's weights (candle's in-place op hook).
struct Step<'a> {
    moments: Mutex<&'a mut Moments>,
    decayed: &'a [Range<usize>],
    hyper: Hyper,
}

impl InplaceOp2 for Step<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(
        &self,
        w: &mut CpuStorage,
        wl: &Layout,
        g: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<()> {
        let Some((start, end)) = wl.contiguous_offsets() else {
            candle_core::bail!("adamw: parameters are not contiguous");
        };
        let mut moments = self.moments.lock().expect("moments");
        match (w, &mut **moments) {
            (CpuStorage::F32(w), Moments::F32(m, v)) => adamw_step(
                &mut w[start..end],
                f32::slice(g, gl)?,
                (m, v),
                self.decayed,
                self.hyper,
            ),
            (CpuStorage::F64(w), Moments::F64(m, v)) => adamw_step(
                &mut w[start..end],
                f64::slice(g, gl)?,
                (m, v),
                self.decayed,
                self.hyper,
            ),
            _ => candle_core::bail!("adamw: parameters and moments differ in dtype"),
        }
        Ok(())
    }
}

impl Moments {
    fn zeros(group: &Group, kernel: Kernel, decayed: &[Range<usize>]) -> Result<Moments> {
        let n = group.var.elem_count();
        if kernel == Kernel::Tensors {
            let zeros = group.var.zeros_like()?;
            let mut mask = vec![0f32; n];
            for r in decayed {
                mask[r.clone()].fill(1.0);
            }
            let decay =
                Tensor::from_vec(mask, n, group.var.device())?.to_dtype(group.var.dtype())?;
            return Ok(Moments::Tensors {
                m: zeros.clone(),
                v: zeros,
                decay,
            });
        }
        Ok(match group.var.dtype() {
            candle_core::DType::F32 => Moments::F32(vec![0.0; n], vec![0.0; n]),
            candle_core::DType::F64 => Moments::F64(vec![0.0; n], vec![0.0; n]),
            other => {
                return Err(Error::Tensor(format!(
                    "{}: AdamW runs on f32 or f64 parameters, not {other:?}",
                    group.name
                )))
            }
        })
    }

    /// Both moments as flat tensors.
    fn tensors(&self) -> Result<(Tensor, Tensor)> {
        let dev = &candle_core::Device::Cpu;
        Ok(match self {
            Moments::F32(m, v) => (
                Tensor::from_slice(m, m.len(), dev)?,
                Tensor::from_slice(v, v.len(), dev)?,
            ),
            Moments::F64(m, v) => (
                Tensor::from_slice(m, m.len(), dev)?,
                Tensor::from_slice(v, v.len(), dev)?,
            ),
            Moments::Tensors { m, v, .. } => (m.to_device(dev)?, v.to_device(dev)?),
        })
    }

    fn set(&mut self, m: &Tensor, v: &Tensor) -> Result<()> {
        match self {
            Moments::F32(a, b) => {
                *a = m.to_dtype(candle_core::DType::F32)?.to_vec1()?;
                *b = v.to_dtype(candle_core::DType::F32)?.to_vec1()?;
            }
            Moments::F64(a, b) => {
                *a = m.to_dtype(candle_core::DType::F64)?.to_vec1()?;
                *b = v.to_dtype(candle_core::DType::F64)?.to_vec1()?;
            }
            Moments::Tensors { m: a, v: b, .. } => {
                let like = |t: &Tensor| t.to_device(a.device())?.to_dtype(a.dtype());
                (*a, *b) = (like(m)?, like(v)?);
            }
        }
        Ok(())
    }
}

/// One group's update as tensor ops, the arithmetic of [`adamw_step`]:
/// the new weights, written into `w`, and the new moments.
fn tensor_step(
    w: &candle_core::Var,
    g: &Tensor,
    (m, v, decay): (&Tensor, &Tensor, &Tensor),
    k: Hyper,
) -> Result<(Tensor, Tensor)> {
    let g = g.affine(k.grad_scale, 0.0)?;
    let m = (m.affine(k.beta1, 0.0)? + g.affine(1.0 - k.beta1, 0.0)?)?;
    let v = (v.affine(k.beta2, 0.0)? + g.sqr()?.affine(1.0 - k.beta2, 0.0)?)?;
    let step = m
        .affine(1.0 / k.c1, 0.0)?
        .div(&(v.affine(1.0 / k.c2, 0.0)?.sqrt()? + k.eps)?)?;
    // 1 − lr·λ where decayed, 1 elsewhere.
    let shrink = decay.affine(-k.lr * k.weight_decay, 1.0)?;
    let updated = (w.as_tensor().mul(&shrink)? - step.affine(k.lr, 0.0)?)?;
    w.set(&updated)?;
    Ok((m, v))
}

impl AdamW {
    /// The optimiser for `params`: the host kernel on the CPU, tensor ops
    /// elsewhere.
    pub fn new(params: &Params, train: &TrainConfig) -> Result<AdamW> {
        let kernel = match params.device.is_cpu() {
            true => Kernel::Host,
            false => Kernel::Tensors,
        };
        AdamW::with_kernel(params, train, kernel)
    }

    /// The optimiser with the update `kernel` (tests run the device's
    /// tensor-op update on the CPU).
    pub fn with_kernel(params: &Params, train: &TrainConfig, kernel: Kernel) -> Result<AdamW> {
        let slots = params
            .groups()
            .iter()
            .map(|group| {
                let decayed: Vec<Range<usize>> = group
                    .entries
                    .iter()
                    .filter(|e| decays(&e.name))
                    .map(|e| e.offset..e.offset + e.len())
                    .collect();
                Ok(Slot {
                    moments: Moments::zeros(group, kernel, &decayed)?,
                    group: group.clone(),
                    decayed,
                    lr_factor: 1.0,
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

    /// Scales each group's learning rate by `factor(group name)` (layer-wise
    /// learning-rate decay, say).
    pub fn set_lr_factors(&mut self, factor: impl Fn(&str) -> f64) {
        for slot in &mut self.slots {
            slot.lr_factor = factor(&slot.group.name);
        }
    }

    /// Applies one update with learning rate `lr`. `grads` are per group
    /// (see [`gradients`]) and are multiplied by `grad_scale` first (for
    /// clipping).
    pub fn update(&mut self, grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<()> {
        if grads.len() != self.slots.len() {
            return Err(Error::Tensor(format!(
                "{} gradients for {} parameter groups",
                grads.len(),
                self.slots.len()
            )));
        }
        self.step += 1;
        let t = self.step as i32;
        let hyper = Hyper {
            lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            c1: 1.0 - self.beta1.powi(t),
            c2: 1.0 - self.beta2.powi(t),
            grad_scale,
        };
        for (slot, grad) in self.slots.iter_mut().zip(grads) {
            if let Moments::Tensors { m, v, decay } = &mut slot.moments {
                let k = Hyper {
                    lr: lr * slot.lr_factor,
                    ..hyper
                };
                (*m, *v) = tensor_step(&slot.group.var, grad, (m, v, decay), k)?;
                continue;
            }
            let step = Step {
                moments: Mutex::new(&mut slot.moments),
                decayed: &slot.decayed,
                hyper: Hyper {
                    lr: lr * slot.lr_factor,
                    ..hyper
                },
            };
            slot.group
                .var
                .as_tensor()
                .inplace_op2(&grad.contiguous()?, &step)?;
        }
        Ok(())
    }

    /// Writes the first and second moments (`m.<name>`, `v.<name>`) to a
    /// safetensors file, atomically. The step count travels in the
    /// checkpoint's `state.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = HashMap::new();
        for slot in &self.slots {
            let (m, v) = slot.moments.tensors()?;
            for e in &slot.group.entries {
                let part = |t: &Tensor| -> Result<Tensor> {
                    Ok(t.narrow(0, e.offset, e.len())?
                        .reshape(e.shape.as_slice())?)
                };
                tensors.insert(format!("m.{}", e.name), part(&m)?);
                tensors.insert(format!("v.{}", e.name), part(&v)?);
            }
        }
        crate::run::save_safetensors(&tensors, path)
    }

    /// Restores the moments written by [`AdamW::save`] and the step count.
    pub fn load(&mut self, path: &Path, step: u64) -> Result<()> {
        let tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
            .map_err(|e| Error::data(path, format!("not a readable safetensors file: {e}")))?;
        for slot in &mut self.slots {
            let flat = |prefix: &str| -> Result<Tensor> {
                let parts = slot
                    .group
                    .entries
                    .iter()
                    .map(|e| {
                        let name = format!("{prefix}.{}", e.name);
                        Ok(named(&tensors, path, &name, &e.shape)?.flatten_all()?)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Tensor::cat(&parts, 0)?)
            };
            let (m, v) = (flat("m")?, flat("v")?);
            slot.moments.set(&m, &v)?;
        }
        self.step = step;
        Ok(())
    }
}

/// The gradient of every parameter group, in creation order; a group
/// without a gradient is an error naming it (it would silently stop
/// training).
pub fn gradients(params: &Params, grads: &GradStore) -> Result<Vec<Tensor>> {
    gradients_or_zeros(params, grads, &|_| false)
}

/// As [`gradients`], with zeros for a group without a gradient that
/// `idle` names: one that a batch may legitimately leave out (early exit's
/// layers above a point every token left).
pub fn gradients_or_zeros(
    params: &Params,
    grads: &GradStore,
    idle: &dyn Fn(&str) -> bool,
) -> Result<Vec<Tensor>> {
    params
        .groups()
        .iter()
        .map(|group| {
            let weights = group.var.as_tensor();
            match grads.get(weights) {
                Some(g) => Ok(g.clone()),
                None if idle(&group.name) => Ok(weights.zeros_like()?),
                None => Err(Error::Tensor(format!("no gradient for {}", group.name))),
            }
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
    let Some(first) = grads.first() else {
        return Ok(0.0);
    };
    if !first.device().is_cpu() {
        // Summed on the device: one scalar crosses to the host.
        let squares = grads
            .iter()
            .map(|g| {
                Ok(g.sqr()?
                    .sum_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .unsqueeze(0)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let total = Tensor::cat(&squares, 0)?.sum_all()?.to_scalar::<f32>()?;
        return Ok((total as f64).sqrt());
    }
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
        let read = |name| -> Vec<f64> { params.get(name).unwrap().to_vec1().unwrap() };
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
