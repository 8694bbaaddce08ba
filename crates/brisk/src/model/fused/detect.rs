//! ELECTRA's replaced-token head and its binary cross-entropy as one op:
//! dense + activation, one logit per token, and the mean of
//! `max(z, 0) − z·y + ln(1 + e^(−|z|))` over the tokens.
//!
//! [`crate::model::discriminator::DiscriminatorHead::reference_loss`] is
//! the reference.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::kernels::{
    activate, activation_backward, dot, linear, linear_backward, two_mut, with_slices, zeros,
    Activation, Float, Stash,
};
use crate::error::{Error, Result};
use crate::model::params::Group;

/// Where the head's tensors sit in its group (`discriminator_predictions`).
#[derive(Debug, Clone)]
pub struct DetectorSpec {
    hidden: usize,
    dense_w: usize,
    dense_b: usize,
    out_w: usize,
    out_b: usize,
    act: Activation,
}

impl DetectorSpec {
    pub fn of(group: &Group, act: Activation) -> Result<DetectorSpec> {
        let at = |local: &str| -> Result<usize> { Ok(group.entry(local)?.offset) };
        Ok(DetectorSpec {
            hidden: group.entry("dense.bias")?.len(),
            dense_w: at("dense.weight")?,
            dense_b: at("dense.bias")?,
            out_w: at("dense_prediction.weight")?,
            out_b: at("dense_prediction.bias")?,
            act,
        })
    }

    /// Mean binary cross-entropy over the tokens of `hidden` `[.., hidden]`
    /// of their `labels` (1 for replaced): a scalar, and the logits' values
    /// (early exit decides on them).
    pub fn loss(
        &self,
        hidden: &Tensor,
        head: &Tensor,
        labels: &[f32],
    ) -> Result<(Tensor, Vec<f32>)> {
        let n = hidden.elem_count() / self.hidden.max(1);
        if n == 0 || labels.len() != n {
            return Err(Error::Tensor(format!(
                "replaced-token loss over {n} tokens with {} labels",
                labels.len()
            )));
        }
        let logits = Arc::new(Mutex::new(Vec::new()));
        let op = DetectOp {
            spec: self.clone(),
            labels: labels.to_vec(),
            logits: logits.clone(),
            keep: hidden.track_op() || head.track_op(),
            saved: Stash::default(),
        };
        let loss = hidden.contiguous()?.apply_op2(&head.contiguous()?, op)?;
        let values = std::mem::take(&mut *logits.lock().expect("the head's logits"));
        Ok((loss, values))
    }
}

struct DetectOp {
    spec: DetectorSpec,
    labels: Vec<f32>,
    /// Where the forward leaves the logits' values for the caller.
    logits: Arc<Mutex<Vec<f32>>>,
    keep: bool,
    saved: Stash,
}

struct Saved<T> {
    pre_act: Vec<T>,
    act: Vec<T>,
    logits: Vec<T>,
}

impl DetectOp {
    fn forward<T: Float>(&self, x: &[T], p: &[T]) -> T {
        let s = &self.spec;
        let h = s.hidden;
        let pre_act = linear(
            x,
            &p[s.dense_w..s.dense_w + h * h],
            &p[s.dense_b..s.dense_b + h],
            h,
        );
        let mut act = pre_act.clone();
        activate(s.act, &mut act);
        let (w, b) = (&p[s.out_w..s.out_w + h], p[s.out_b]);
        let logits: Vec<T> = act.par_chunks(h).map(|a| dot(a, w) + b).collect();
        let total: f64 = logits
            .par_iter()
            .zip(&self.labels)
            .map(|(z, &y)| {
                let z = z.to_f64();
                z.max(0.0) - z * y as f64 + (-z.abs()).exp().ln_1p()
            })
            .sum();
        *self.logits.lock().expect("the head's logits") =
            logits.iter().map(|z| z.to_f64() as f32).collect();
        if self.keep {
            self.saved.put(Saved {
                pre_act,
                act,
                logits,
            });
        }
        T::of(total / self.labels.len() as f64)
    }

    /// Gradients for the hidden states and the head group.
    fn backward<T: Float>(
        &self,
        x: &[T],
        p: &[T],
        d_loss: T,
    ) -> candle_core::Result<(Vec<T>, Vec<T>)> {
        let saved = self.saved.take::<Saved<T>>("fused replaced-token head")?;
        let s = &self.spec;
        let (h, n) = (s.hidden, self.labels.len());
        // ∂loss/∂z = (σ(z) − y) · d_loss / n.
        let scale = d_loss.to_f64() / n as f64;
        let d_logits: Vec<T> = saved
            .logits
            .par_iter()
            .zip(&self.labels)
            .map(|(z, &y)| T::of((1.0 / (1.0 + (-z.to_f64()).exp()) - y as f64) * scale))
            .collect();
        let mut dp = zeros::<T>(p.len());
        let w = &p[s.out_w..s.out_w + h];
        let mut d_act = zeros::<T>(n * h);
        d_act.par_chunks_mut(h).zip(&d_logits).for_each(|(d, &g)| {
            for (d, w) in d.iter_mut().zip(w) {
                *d = g * *w;
            }
        });
        let (dw, db) = two_mut(&mut dp, ((s.out_w, h), (s.out_b, 1)));
        for (a, &g) in saved.act.chunks(h).zip(&d_logits) {
            for (d, a) in dw.iter_mut().zip(a) {
                *d += g * *a;
            }
            db[0] += g;
        }
        activation_backward(s.act, &mut d_act, &saved.pre_act);
        let (dw, db) = two_mut(&mut dp, ((s.dense_w, h * h), (s.dense_b, h)));
        let dx = linear_backward(&d_act, x, &p[s.dense_w..s.dense_w + h * h], dw, db);
        Ok((dx, dp))
    }

    fn loss_storage<T: Float>(
        &self,
        x: (&CpuStorage, &Layout),
        p: (&CpuStorage, &Layout),
    ) -> candle_core::Result<CpuStorage> {
        let loss = self.forward(T::slice(x.0, x.1)?, T::slice(p.0, p.1)?);
        Ok(T::storage(vec![loss]))
    }

    fn run_backward<T: Float>(
        &self,
        x: &Tensor,
        p: &Tensor,
        d_loss: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d_loss = T::of(d_loss.to_dtype(DType::F64)?.to_scalar::<f64>()?);
        let (dx, dp) = with_slices::<T, _>(&[x, p], |s| self.backward(s[0], s[1], d_loss))?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dp, p.shape(), p.device())?),
        ))
    }
}

impl CustomOp2 for DetectOp {
    fn name(&self) -> &'static str {
        "fused-replaced-token-head"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let storage = match s1.dtype() {
            DType::F32 => self.loss_storage::<f32>((s1, l1), (s2, l2))?,
            DType::F64 => self.loss_storage::<f64>((s1, l1), (s2, l2))?,
            other => candle_core::bail!("fused replaced-token head: no kernel for {other:?}"),
        };
        Ok((storage, Shape::from(())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        _res: &Tensor,
        d_loss: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        match x.dtype() {
            DType::F32 => self.run_backward::<f32>(x, p, d_loss),
            DType::F64 => self.run_backward::<f64>(x, p, d_loss),
            other => candle_core::bail!("fused replaced-token head: no kernel for {other:?}"),
        }
    }
}
