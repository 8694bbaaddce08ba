//! MC-BERT's multi-choice head and its cross-entropy as one op: dense +
//! activation + LayerNorm at every position, then the `K` slot scores (the
//! reject option's vector and bias; each candidate's word embedding and
//! per-token bias), softmax over the slots and the mean negative
//! log-likelihood of the label. The backward adds the candidates'
//! gradients straight into the embedding group's word block.
//!
//! [`crate::model::mcbert::ChoiceHead::reference_loss`] is the reference.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::embeddings::EmbeddingSpec;
use super::kernels::{
    activate, activation_backward, dot, layer_norm, layer_norm_backward, linear, linear_backward,
    max, two_mut, with_slices, zeros, Activation, Float, Normed, Stash,
};
use crate::error::{Error, Result};
use crate::model::params::Group;

/// Where the head's tensors sit in its group (`mcbert_predictions`), and the
/// word block of the embedding group.
#[derive(Debug, Clone)]
pub struct ChoiceSpec {
    hidden: usize,
    vocab: usize,
    dense_w: usize,
    dense_b: usize,
    norm_g: usize,
    norm_b: usize,
    bias: usize,
    reject: usize,
    reject_bias: usize,
    word: usize,
    act: Activation,
    eps: f64,
}

impl ChoiceSpec {
    pub fn of(
        group: &Group,
        embeddings: &EmbeddingSpec,
        act: Activation,
        eps: f64,
    ) -> Result<ChoiceSpec> {
        let at = |local: &str| -> Result<usize> { Ok(group.entry(local)?.offset) };
        Ok(ChoiceSpec {
            hidden: group.entry("dense.bias")?.len(),
            vocab: group.entry("bias")?.len(),
            dense_w: at("dense.weight")?,
            dense_b: at("dense.bias")?,
            norm_g: at("LayerNorm.weight")?,
            norm_b: at("LayerNorm.bias")?,
            bias: at("bias")?,
            reject: at("reject")?,
            reject_bias: at("reject_bias")?,
            word: embeddings.word_offset(),
            act,
            eps,
        })
    }

    /// Mean cross-entropy over the positions of `hidden` `[.., hidden]` of
    /// their `labels` (slot 0, reject, or 1) among `K` slots: the reject
    /// option and `candidates` (`K − 1` token ids per position).
    pub fn loss(
        &self,
        hidden: &Tensor,
        head: &Tensor,
        embeddings: &Tensor,
        candidates: &[u32],
        labels: &[u32],
    ) -> Result<Tensor> {
        let n = hidden.elem_count() / self.hidden.max(1);
        let bad = n == 0
            || labels.len() != n
            || !candidates.len().is_multiple_of(n)
            || candidates.len() / n < 1;
        if bad {
            return Err(Error::Tensor(format!(
                "multi-choice loss over {n} positions with {} labels and {} candidates",
                labels.len(),
                candidates.len()
            )));
        }
        let slots = candidates.len() / n + 1;
        if let Some(c) = candidates.iter().find(|&&c| c as usize >= self.vocab) {
            return Err(Error::Tensor(format!(
                "candidate {c} is outside the vocabulary of {}",
                self.vocab
            )));
        }
        if let Some(l) = labels.iter().find(|&&l| l as usize >= slots) {
            return Err(Error::Tensor(format!(
                "label {l} is not one of {slots} slots"
            )));
        }
        let op = ChoiceOp {
            spec: self.clone(),
            slots,
            candidates: candidates.to_vec(),
            labels: labels.to_vec(),
            keep: hidden.track_op() || head.track_op() || embeddings.track_op(),
            saved: Stash::default(),
        };
        Ok(hidden
            .contiguous()?
            .apply_op3(&head.contiguous()?, &embeddings.contiguous()?, op)?)
    }
}

struct ChoiceOp {
    spec: ChoiceSpec,
    /// `K`: the reject option and the candidates.
    slots: usize,
    candidates: Vec<u32>,
    labels: Vec<u32>,
    keep: bool,
    saved: Stash,
}

struct Saved<T> {
    pre_act: Vec<T>,
    normed: Normed<T>,
    /// `LN(act(dense(x)))`, the vector each slot is scored against.
    transformed: Vec<T>,
    /// Softmax over the slots, `[positions, K]`.
    probs: Vec<T>,
}

impl ChoiceOp {
    /// The slot vector and bias of slot `k` (0: reject) at position `i`.
    fn slot<'a, T: Float>(&self, p: &'a [T], word: &'a [T], i: usize, k: usize) -> (&'a [T], T) {
        let (s, h) = (&self.spec, self.spec.hidden);
        if k == 0 {
            return (&p[s.reject..s.reject + h], p[s.reject_bias]);
        }
        let c = self.candidates[i * (self.slots - 1) + k - 1] as usize;
        (&word[c * h..(c + 1) * h], p[s.bias + c])
    }

    fn forward<T: Float>(&self, x: &[T], p: &[T], e: &[T]) -> T {
        let s = &self.spec;
        let (h, v, k) = (s.hidden, s.vocab, self.slots);
        let mut pre = linear(
            x,
            &p[s.dense_w..s.dense_w + h * h],
            &p[s.dense_b..s.dense_b + h],
            h,
        );
        let pre_act = pre.clone();
        activate(s.act, &mut pre);
        let (transformed, normed) = layer_norm(
            &pre,
            &p[s.norm_g..s.norm_g + h],
            &p[s.norm_b..s.norm_b + h],
            s.eps,
        );
        let word = &e[s.word..s.word + v * h];
        let mut probs = zeros::<T>(self.labels.len() * k);
        let nll: f64 = probs
            .par_chunks_mut(k)
            .zip(transformed.par_chunks(h))
            .enumerate()
            .map(|(i, (row, t))| {
                for (slot, score) in row.iter_mut().enumerate() {
                    let (vector, bias) = self.slot(p, word, i, slot);
                    *score = dot(t, vector) + bias;
                }
                let m = max(row);
                let target = row[self.labels[i] as usize] - m;
                let mut total = T::ZERO;
                for z in row.iter_mut() {
                    *z = (*z - m).exp();
                    total += *z;
                }
                let inv = T::ONE / total;
                for z in row.iter_mut() {
                    *z *= inv;
                }
                total.to_f64().ln() - target.to_f64()
            })
            .sum();
        if self.keep {
            self.saved.put(Saved {
                pre_act,
                normed,
                transformed,
                probs,
            });
        }
        T::of(nll / self.labels.len() as f64)
    }

    /// Gradients for the hidden states, the head group and the embedding
    /// group (only the candidates' rows of its word block are non-zero).
    fn backward<T: Float>(
        &self,
        x: &[T],
        p: &[T],
        e: &[T],
        d_loss: T,
    ) -> candle_core::Result<(Vec<T>, Vec<T>, Vec<T>)> {
        let saved = self.saved.take::<Saved<T>>("fused multi-choice head")?;
        let s = &self.spec;
        let (h, v, k, n) = (s.hidden, s.vocab, self.slots, self.labels.len());
        // ∂loss/∂scores = (softmax − one-hot) · d_loss / n.
        let mut d_scores = saved.probs;
        let scale = d_loss * T::of(1.0 / n as f64);
        d_scores
            .par_chunks_mut(k)
            .zip(&self.labels)
            .for_each(|(row, &label)| {
                row[label as usize] -= T::ONE;
                for z in row.iter_mut() {
                    *z *= scale;
                }
            });
        let word = &e[s.word..s.word + v * h];
        // ∂loss/∂transformed: each slot's vector weighted by its score's gradient.
        let mut d_t = zeros::<T>(n * h);
        d_t.par_chunks_mut(h)
            .zip(d_scores.par_chunks(k))
            .enumerate()
            .for_each(|(i, (dt, ds))| {
                for (slot, &g) in ds.iter().enumerate() {
                    let (vector, _) = self.slot(p, word, i, slot);
                    for (d, w) in dt.iter_mut().zip(vector) {
                        *d += g * *w;
                    }
                }
            });
        // The slot vectors and biases: candidates repeat across positions,
        // so their gradients are added in one pass, in order.
        let mut dp = zeros::<T>(p.len());
        let mut de = zeros::<T>(e.len());
        for (i, (ds, t)) in d_scores
            .chunks(k)
            .zip(saved.transformed.chunks(h))
            .enumerate()
        {
            for (slot, &g) in ds.iter().enumerate() {
                let (row, bias) = match slot {
                    0 => (s.reject, s.reject_bias),
                    _ => {
                        let c = self.candidates[i * (k - 1) + slot - 1] as usize;
                        (s.word + c * h, s.bias + c)
                    }
                };
                let target = if slot == 0 { &mut dp } else { &mut de };
                for (d, x) in target[row..row + h].iter_mut().zip(t) {
                    *d += g * *x;
                }
                dp[bias] += g;
            }
        }
        let mut d_act = zeros::<T>(n * h);
        let (dg, db) = two_mut(&mut dp, ((s.norm_g, h), (s.norm_b, h)));
        let gamma = &p[s.norm_g..s.norm_g + h];
        layer_norm_backward(&d_t, &saved.normed, gamma, &mut d_act, dg, db);
        activation_backward(s.act, &mut d_act, &saved.pre_act);
        let (dw, dbias) = two_mut(&mut dp, ((s.dense_w, h * h), (s.dense_b, h)));
        let w = &p[s.dense_w..s.dense_w + h * h];
        let dx = linear_backward(&d_act, x, w, dw, dbias);
        Ok((dx, dp, de))
    }

    fn loss_storage<T: Float>(
        &self,
        x: (&CpuStorage, &Layout),
        p: (&CpuStorage, &Layout),
        e: (&CpuStorage, &Layout),
    ) -> candle_core::Result<CpuStorage> {
        let loss = self.forward(
            T::slice(x.0, x.1)?,
            T::slice(p.0, p.1)?,
            T::slice(e.0, e.1)?,
        );
        Ok(T::storage(vec![loss]))
    }

    fn run_backward<T: Float>(
        &self,
        x: &Tensor,
        p: &Tensor,
        e: &Tensor,
        d_loss: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d_loss = T::of(d_loss.to_dtype(DType::F64)?.to_scalar::<f64>()?);
        let (dx, dp, de) =
            with_slices::<T, _>(&[x, p, e], |s| self.backward(s[0], s[1], s[2], d_loss))?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dp, p.shape(), p.device())?),
            Some(Tensor::from_vec(de, e.shape(), e.device())?),
        ))
    }
}

impl CustomOp3 for ChoiceOp {
    fn name(&self) -> &'static str {
        "fused-choice-head"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let storage = match s1.dtype() {
            DType::F32 => self.loss_storage::<f32>((s1, l1), (s2, l2), (s3, l3))?,
            DType::F64 => self.loss_storage::<f64>((s1, l1), (s2, l2), (s3, l3))?,
            other => candle_core::bail!("fused multi-choice head: no kernel for {other:?}"),
        };
        Ok((storage, Shape::from(())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        e: &Tensor,
        _res: &Tensor,
        d_loss: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        match x.dtype() {
            DType::F32 => self.run_backward::<f32>(x, p, e, d_loss),
            DType::F64 => self.run_backward::<f64>(x, p, e, d_loss),
            other => candle_core::bail!("fused multi-choice head: no kernel for {other:?}"),
        }
    }
}
