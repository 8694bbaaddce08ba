//! The masked-LM head and its cross-entropy as one op: pick the masked
//! rows, dense + activation + LayerNorm, the decoder tied to the word
//! embeddings, log-softmax and the mean negative log-likelihood. The
//! backward writes the decoder's gradient straight into the embedding
//! group's word block.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::embeddings::EmbeddingSpec;
use super::kernels::simd;
use super::kernels::{
    activate, activation_backward, add_bias, add_column_sums, layer_norm, layer_norm_backward,
    linear, linear_backward, matmul, max, product, sum, two_mut, with_slices, zeros, Activation,
    Float, Mat, MatMut, Normed, Stash, Threads,
};
use crate::error::{Error, Result};
use crate::model::params::Group;

/// Where the head's tensors sit in its group (`cls.predictions`), and the
/// word block of the embedding group it is tied to.
#[derive(Debug, Clone)]
pub struct HeadSpec {
    hidden: usize,
    vocab: usize,
    dense_w: usize,
    dense_b: usize,
    norm_g: usize,
    norm_b: usize,
    bias: usize,
    /// Offset of the word embeddings in the embedding group.
    word: usize,
    act: Activation,
    eps: f64,
}

impl HeadSpec {
    pub fn of(
        group: &Group,
        embeddings: &EmbeddingSpec,
        act: Activation,
        eps: f64,
    ) -> Result<HeadSpec> {
        let bias = group.entry("bias")?;
        Ok(HeadSpec {
            hidden: group.entry("transform.dense.bias")?.len(),
            vocab: bias.len(),
            dense_w: group.entry("transform.dense.weight")?.offset,
            dense_b: group.entry("transform.dense.bias")?.offset,
            norm_g: group.entry("transform.LayerNorm.weight")?.offset,
            norm_b: group.entry("transform.LayerNorm.bias")?.offset,
            bias: bias.offset,
            word: embeddings.word_offset(),
            act,
            eps,
        })
    }

    /// Mean cross-entropy of `targets` at the flattened positions `rows`
    /// of `hidden` `[batch, len, hidden]`: a scalar.
    pub fn loss(
        &self,
        hidden: &Tensor,
        head: &Tensor,
        embeddings: &Tensor,
        rows: &Tensor,
        targets: &Tensor,
    ) -> Result<Tensor> {
        let rows: Vec<u32> = rows.to_vec1()?;
        let targets: Vec<u32> = targets.to_vec1()?;
        let positions = hidden.elem_count() / self.hidden.max(1);
        if rows.is_empty() || rows.len() != targets.len() {
            return Err(Error::Tensor(format!(
                "masked-LM loss over {} rows with {} targets",
                rows.len(),
                targets.len()
            )));
        }
        if let Some(r) = rows.iter().find(|&&r| r as usize >= positions) {
            return Err(Error::Tensor(format!(
                "row {r} is outside the {positions} positions"
            )));
        }
        if let Some(t) = targets.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(Error::Tensor(format!(
                "target {t} is outside the vocabulary of {}",
                self.vocab
            )));
        }
        let op = HeadOp {
            spec: self.clone(),
            keep: hidden.track_op() || head.track_op() || embeddings.track_op(),
            rows,
            targets,
            saved: Stash::default(),
        };
        Ok(hidden
            .contiguous()?
            .apply_op3(&head.contiguous()?, &embeddings.contiguous()?, op)?)
    }
}

struct HeadOp {
    spec: HeadSpec,
    rows: Vec<u32>,
    targets: Vec<u32>,
    keep: bool,
    saved: Stash,
}

struct Saved<T> {
    picked: Vec<T>,
    pre_act: Vec<T>,
    normed: Normed<T>,
    /// The transformed rows `x̂·g + b`, the decoder's input.
    transformed: Vec<T>,
    /// Softmax probabilities `[rows, vocab]`.
    probs: Vec<T>,
}

impl HeadOp {
    fn forward<T: Float>(&self, x: &[T], p: &[T], e: &[T]) -> T {
        let s = &self.spec;
        let (h, v, n) = (s.hidden, s.vocab, self.rows.len());
        let mut picked = zeros::<T>(n * h);
        for (row, &r) in picked.chunks_mut(h).zip(&self.rows) {
            row.copy_from_slice(&x[r as usize * h..(r as usize + 1) * h]);
        }
        let pre_act = linear(
            &picked,
            &p[s.dense_w..s.dense_w + h * h],
            &p[s.dense_b..s.dense_b + h],
            h,
        );
        let mut act = pre_act.clone();
        activate(s.act, &mut act);
        let (transformed, normed) = layer_norm(
            &act,
            &p[s.norm_g..s.norm_g + h],
            &p[s.norm_b..s.norm_b + h],
            s.eps,
        );
        // SAFETY: `transformed` is `n × h`, the word block `v × h`.
        let mut logits = unsafe {
            product(
                (n, v, h),
                Mat::rows(&transformed, h),
                Mat::rows(&e[s.word..s.word + v * h], h).t(),
                T::ONE,
                Threads::Pool,
            )
        };
        add_bias(&mut logits, &p[s.bias..s.bias + v]);
        // Softmax in place; the loss is log Σ exp − the target's logit.
        let nll: Vec<f64> = logits
            .par_chunks_mut(v)
            .zip(&self.targets)
            .map(|(row, &t)| {
                simd!({
                    let m = max(row);
                    let target = row[t as usize] - m;
                    for z in row.iter_mut() {
                        *z = (*z - m).exp();
                    }
                    let total = sum(row);
                    let inv = T::ONE / total;
                    for z in row.iter_mut() {
                        *z *= inv;
                    }
                    total.to_f64().ln() - target.to_f64()
                })
            })
            .collect();
        let loss = nll.iter().sum::<f64>() / n as f64;
        if self.keep {
            self.saved.put(Saved {
                picked,
                pre_act,
                normed,
                transformed,
                probs: logits,
            });
        }
        T::of(loss)
    }

    /// Gradients for the hidden states, the head group and the embedding
    /// group (only its word block is non-zero).
    fn backward<T: Float>(
        &self,
        x_len: usize,
        p: &[T],
        e: &[T],
        d_loss: T,
    ) -> candle_core::Result<(Vec<T>, Vec<T>, Vec<T>)> {
        let saved = self.saved.take::<Saved<T>>("fused MLM head")?;
        let s = &self.spec;
        let (h, v, n) = (s.hidden, s.vocab, self.rows.len());
        // ∂loss/∂logits = (softmax − one-hot) · d_loss / n.
        let mut d_logits = saved.probs;
        let scale = d_loss * T::of(1.0 / n as f64);
        d_logits
            .par_chunks_mut(v)
            .zip(&self.targets)
            .for_each(|(row, &t)| {
                row[t as usize] -= T::ONE;
                simd!({
                    for z in row.iter_mut() {
                        *z *= scale;
                    }
                })
            });
        let mut dp = zeros::<T>(p.len());
        add_column_sums(&mut dp[s.bias..s.bias + v], &d_logits);
        let mut de = zeros::<T>(e.len());
        let word = &e[s.word..s.word + v * h];
        // SAFETY: `de`'s word block is `v × h`, `d_logits` `n × v`,
        // `transformed` `n × h`.
        let d_transformed = unsafe {
            matmul(
                (v, h, n),
                MatMut::rows(&mut de[s.word..s.word + v * h], h),
                Mat::rows(&d_logits, v).t(),
                Mat::rows(&saved.transformed, h),
                T::ONE,
                false,
                Threads::Pool,
            );
            product(
                (n, h, v),
                Mat::rows(&d_logits, v),
                Mat::rows(word, h),
                T::ONE,
                Threads::Pool,
            )
        };
        drop(d_logits);
        let mut d_act = zeros::<T>(n * h);
        let (dg, db) = two_mut(&mut dp, ((s.norm_g, h), (s.norm_b, h)));
        let g = &p[s.norm_g..s.norm_g + h];
        layer_norm_backward(&d_transformed, &saved.normed, g, &mut d_act, dg, db);
        activation_backward(s.act, &mut d_act, &saved.pre_act);
        let (dw, dbias) = two_mut(&mut dp, ((s.dense_w, h * h), (s.dense_b, h)));
        let w = &p[s.dense_w..s.dense_w + h * h];
        let d_picked = linear_backward(&d_act, &saved.picked, w, dw, dbias);
        let mut dx = zeros::<T>(x_len);
        for (row, &r) in d_picked.chunks(h).zip(&self.rows) {
            for (d, g) in dx[r as usize * h..(r as usize + 1) * h].iter_mut().zip(row) {
                *d += *g;
            }
        }
        Ok((dx, dp, de))
    }

    /// The forward on raw storages: the loss as a one-element storage.
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
        let (dx, dp, de) = with_slices::<T, _>(&[p, e], |s| {
            self.backward(x.elem_count(), s[0], s[1], d_loss)
        })?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dp, p.shape(), p.device())?),
            Some(Tensor::from_vec(de, e.shape(), e.device())?),
        ))
    }
}

impl CustomOp3 for HeadOp {
    fn name(&self) -> &'static str {
        "fused-mlm-head"
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
            other => candle_core::bail!("fused MLM head: no kernel for {other:?}"),
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
            other => candle_core::bail!("fused MLM head: no kernel for {other:?}"),
        }
    }
}
