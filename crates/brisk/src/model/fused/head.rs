//! The masked-LM head and its cross-entropy as one op: pick the masked
//! rows, dense + activation + LayerNorm, the decoder tied to the word
//! embeddings, log-softmax and the mean negative log-likelihood. The
//! backward writes the decoder's gradient straight into the embedding
//! group's word block.
//!
//! The same op serves ELECTRA's generator and MC-BERT's controller, whose
//! dense layer maps their narrower width to the embeddings', and can draw
//! one sample per row from the softmax it has computed anyway (ELECTRA's
//! replacements), so the logits never leave the op.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::embeddings::EmbeddingSpec;
use super::kernels::simd;
use super::kernels::{
    activate, activation_backward, add_bias, layer_norm, layer_norm_backward, linear,
    linear_backward, matmul, max, product, sum, two_mut, with_slices, zeros, Activation, Float,
    Mat, MatMut, Normed, Stash, Threads,
};
use crate::corpus::generated::Rng;
use crate::error::{Error, Result};
use crate::model::params::Group;
use crate::profile::time;

// Profile sections of the head (crate::profile).
const FWD_TRANSFORM: &str = "MLM head forward: transform (dense, activation, LayerNorm)";
const FWD_DECODER: &str = "MLM head forward: decoder product";
const FWD_SOFTMAX: &str = "MLM head forward: bias, softmax, loss";
const FWD_SAMPLE: &str = "MLM head forward: sampling (ELECTRA's generator)";
const BWD_LOGITS: &str = "MLM head backward: logit and bias gradients";
const BWD_DECODER: &str = "MLM head backward: decoder products";
const BWD_TRANSFORM: &str = "MLM head backward: transform";

/// Where the head's tensors sit in its group (`cls.predictions`), and the
/// word block of the embedding group it is tied to.
#[derive(Debug, Clone)]
pub struct HeadSpec {
    /// The encoder's width (the dense layer's input).
    input: usize,
    /// The embeddings' width (the dense layer's output).
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
        let hidden = group.entry("transform.dense.bias")?.len();
        Ok(HeadSpec {
            input: group.entry("transform.dense.weight")?.len() / hidden.max(1),
            hidden,
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
    /// of `hidden` `[batch, len, input]`: a scalar; with `sample`, also one
    /// draw per row from the softmax ([`draw_from_row`], row `i` reading
    /// [`row_stream`]`(sample, i)`).
    pub fn loss(
        &self,
        hidden: &Tensor,
        head: &Tensor,
        embeddings: &Tensor,
        (rows, targets): (&Tensor, &Tensor),
        sample: Option<u64>,
    ) -> Result<(Tensor, Option<Vec<u32>>)> {
        let rows: Vec<u32> = rows.to_vec1()?;
        let targets: Vec<u32> = targets.to_vec1()?;
        let positions = hidden.elem_count() / self.input.max(1);
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
        let samples = Arc::new(Mutex::new(None));
        let op = HeadOp {
            spec: self.clone(),
            keep: hidden.track_op() || head.track_op() || embeddings.track_op(),
            rows,
            targets,
            sample: sample.map(|seed| (seed, samples.clone())),
            saved: Stash::default(),
        };
        let loss =
            hidden
                .contiguous()?
                .apply_op3(&head.contiguous()?, &embeddings.contiguous()?, op)?;
        let drawn = samples.lock().expect("the head's samples").take();
        Ok((loss, drawn))
    }
}

impl HeadSpec {
    /// `f(i, logits of row i)` for every row of `hidden` `[.., input]`,
    /// forward only (f32): the rows' logits are computed a block at a time
    /// and handed over, so the whole `[rows, vocab]` matrix never exists
    /// (MC-BERT's controller proposes candidates at every position).
    pub fn visit_rows<R: Send>(
        &self,
        hidden: &Tensor,
        head: &Tensor,
        embeddings: &Tensor,
        f: &(dyn Fn(usize, &[f32]) -> R + Sync),
    ) -> Result<Vec<R>> {
        let f32_of =
            |t: &Tensor| -> Result<Tensor> { Ok(t.detach().to_dtype(DType::F32)?.contiguous()?) };
        let (x, p, e) = (f32_of(hidden)?, f32_of(head)?, f32_of(embeddings)?);
        Ok(with_slices::<f32, _>(&[&x, &p, &e], |s| {
            Ok(self.visit(s[0], s[1], s[2], f))
        })?)
    }

    fn visit<R: Send>(
        &self,
        x: &[f32],
        p: &[f32],
        e: &[f32],
        f: &(dyn Fn(usize, &[f32]) -> R + Sync),
    ) -> Vec<R> {
        /// Rows per block: their logits stay within a few tens of MB.
        const BLOCK: usize = 256;
        let (g, h, v) = (self.input, self.hidden, self.vocab);
        let n = x.len() / g.max(1);
        let mut t = linear(
            x,
            &p[self.dense_w..self.dense_w + h * g],
            &p[self.dense_b..self.dense_b + h],
            g,
        );
        activate(self.act, &mut t);
        let (t, _) = layer_norm(
            &t,
            &p[self.norm_g..self.norm_g + h],
            &p[self.norm_b..self.norm_b + h],
            self.eps,
        );
        let word = &e[self.word..self.word + v * h];
        let mut out = Vec::with_capacity(n);
        for start in (0..n).step_by(BLOCK) {
            let m = BLOCK.min(n - start);
            // SAFETY: the block is `m × h` inside `t`, the word block `v × h`.
            let mut logits = unsafe {
                product(
                    (m, v, h),
                    Mat::rows(&t[start * h..(start + m) * h], h),
                    Mat::rows(word, h).t(),
                    1.0,
                    Threads::Pool,
                )
            };
            add_bias(&mut logits, &p[self.bias..self.bias + v]);
            out.par_extend(
                logits
                    .par_chunks(v)
                    .enumerate()
                    .map(|(i, row)| f(start + i, row)),
            );
        }
        out
    }
}

/// Rows per task of [`softmax_rows`]: a fixed number, so that the column
/// sums add up in the same order whatever the threads.
const SOFTMAX_ROWS: usize = 32;

/// Adds `bias` to every row of `logits` and turns the row into its softmax,
/// in place, in one visit while the row is in cache. Returns the summed
/// negative log-likelihood of `targets` and, when `with_sums`, the column
/// sums of the probabilities (for the bias gradient).
fn softmax_rows<T: Float>(
    logits: &mut [T],
    bias: &[T],
    targets: &[u32],
    with_sums: bool,
) -> (f64, Vec<T>) {
    let v = bias.len();
    let parts: Vec<(f64, Vec<T>)> = logits
        .par_chunks_mut(SOFTMAX_ROWS * v)
        .zip(targets.par_chunks(SOFTMAX_ROWS))
        .map(|(rows, targets)| {
            let mut sums = if with_sums { zeros::<T>(v) } else { Vec::new() };
            let mut nll = 0.0;
            for (row, &t) in rows.chunks_mut(v).zip(targets) {
                simd!({
                    for (z, b) in row.iter_mut().zip(bias) {
                        *z += *b;
                    }
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
                    for (s, z) in sums.iter_mut().zip(row.iter()) {
                        *s += *z;
                    }
                    nll += total.to_f64().ln() - target.to_f64();
                })
            }
            (nll, sums)
        })
        .collect();
    let nll = parts.iter().map(|(nll, _)| nll).sum();
    let mut sums = if with_sums { zeros::<T>(v) } else { Vec::new() };
    // Column blocks in parallel, each adding the parts in order.
    const COLUMNS: usize = 1024;
    sums.par_chunks_mut(COLUMNS)
        .enumerate()
        .for_each(|(c, out)| {
            for (_, part) in &parts {
                let part = &part[c * COLUMNS..c * COLUMNS + out.len()];
                simd!({
                    for (o, x) in out.iter_mut().zip(part) {
                        *o += *x;
                    }
                })
            }
        });
    (nll, sums)
}

/// Row `i`'s random stream for sampling from seed `seed` (so that rows can
/// be drawn in parallel, in any order).
pub fn row_stream(seed: u64, i: usize) -> Rng {
    Rng::new(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// One draw from the distribution `row` (probabilities, or weights of any
/// positive total) by its cumulative sums, with `u` uniform in [0, 1).
/// Sums of blocks first, vectorised, then element by element only inside
/// the block the draw falls in: a row is a whole vocabulary, and ELECTRA's
/// generator draws one per masked position every step.
pub fn draw_from_row<T: Float>(row: &[T], u: f64) -> u32 {
    const BLOCK: usize = 64;
    simd!({
        let blocks: Vec<f64> = row.chunks(BLOCK).map(|b| sum(b).to_f64()).collect();
        let target = u * blocks.iter().sum::<f64>();
        let mut cumulative = 0.0;
        for (k, (block, mass)) in row.chunks(BLOCK).zip(&blocks).enumerate() {
            if cumulative + mass <= target {
                cumulative += mass;
                continue;
            }
            // Should rounding leave the elements' running sum short of
            // the target, the next block goes on from it.
            for (t, p) in block.iter().enumerate() {
                cumulative += p.to_f64();
                if cumulative > target {
                    return (k * BLOCK + t) as u32;
                }
            }
        }
        // Rounding at the very end: the last token with any mass.
        row.iter().rposition(|p| p.to_f64() > 0.0).unwrap_or(0) as u32
    })
}

/// Where the op leaves its samples for the caller.
type Samples = Arc<Mutex<Option<Vec<u32>>>>;

struct HeadOp {
    spec: HeadSpec,
    rows: Vec<u32>,
    targets: Vec<u32>,
    /// The seed to sample with, and where the samples go.
    sample: Option<(u64, Samples)>,
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
    /// Their column sums (the bias gradient but for the one-hot targets).
    prob_sums: Vec<T>,
}

impl HeadOp {
    fn forward<T: Float>(&self, x: &[T], p: &[T], e: &[T]) -> T {
        let s = &self.spec;
        let (g, h, v, n) = (s.input, s.hidden, s.vocab, self.rows.len());
        let (picked, pre_act, normed, transformed) = time(FWD_TRANSFORM, || {
            let mut picked = zeros::<T>(n * g);
            for (row, &r) in picked.chunks_mut(g).zip(&self.rows) {
                row.copy_from_slice(&x[r as usize * g..(r as usize + 1) * g]);
            }
            let pre_act = linear(
                &picked,
                &p[s.dense_w..s.dense_w + h * g],
                &p[s.dense_b..s.dense_b + h],
                g,
            );
            let mut act = pre_act.clone();
            activate(s.act, &mut act);
            let (transformed, normed) = layer_norm(
                &act,
                &p[s.norm_g..s.norm_g + h],
                &p[s.norm_b..s.norm_b + h],
                s.eps,
            );
            (picked, pre_act, normed, transformed)
        });
        // SAFETY: `transformed` is `n × h`, the word block `v × h`.
        let mut logits = time(FWD_DECODER, || unsafe {
            product(
                (n, v, h),
                Mat::rows(&transformed, h),
                Mat::rows(&e[s.word..s.word + v * h], h).t(),
                T::ONE,
                Threads::Pool,
            )
        });
        let (nll, prob_sums) = time(FWD_SOFTMAX, || {
            softmax_rows(
                &mut logits,
                &p[s.bias..s.bias + v],
                &self.targets,
                self.keep,
            )
        });
        let loss = nll / n as f64;
        if let Some((seed, out)) = &self.sample {
            let drawn: Vec<u32> = time(FWD_SAMPLE, || {
                logits
                    .par_chunks(v)
                    .enumerate()
                    .map(|(i, row)| draw_from_row(row, row_stream(*seed, i).unit()))
                    .collect()
            });
            *out.lock().expect("the head's samples") = Some(drawn);
        }
        if self.keep {
            self.saved.put(Saved {
                picked,
                pre_act,
                normed,
                transformed,
                probs: logits,
                prob_sums,
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
        let (g, h, v, n) = (s.input, s.hidden, s.vocab, self.rows.len());
        // ∂loss/∂logits = (softmax − one-hot) · d_loss / n. The factor
        // goes to the products' alpha and to the bias sums, so the
        // probabilities are not passed over again to scale them.
        let scale = d_loss * T::of(1.0 / n as f64);
        let mut d_logits = saved.probs;
        let (mut dp, mut de) = time(BWD_LOGITS, || {
            let mut dp = zeros::<T>(p.len());
            for (row, &t) in d_logits.chunks_mut(v).zip(&self.targets) {
                row[t as usize] -= T::ONE;
            }
            let d_bias = &mut dp[s.bias..s.bias + v];
            for (d, sum) in d_bias.iter_mut().zip(&saved.prob_sums) {
                *d = *sum * scale;
            }
            for &t in &self.targets {
                d_bias[t as usize] -= scale;
            }
            (dp, zeros::<T>(e.len()))
        });
        let word = &e[s.word..s.word + v * h];
        // SAFETY: `de`'s word block is `v × h`, `d_logits` `n × v`,
        // `transformed` `n × h`.
        let d_transformed = time(BWD_DECODER, || unsafe {
            matmul(
                (v, h, n),
                MatMut::rows(&mut de[s.word..s.word + v * h], h),
                Mat::rows(&d_logits, v).t(),
                Mat::rows(&saved.transformed, h),
                scale,
                false,
                Threads::Pool,
            );
            product(
                (n, h, v),
                Mat::rows(&d_logits, v),
                Mat::rows(word, h),
                scale,
                Threads::Pool,
            )
        });
        drop(d_logits);
        let dx = time(BWD_TRANSFORM, || {
            let mut d_act = zeros::<T>(n * h);
            let (dg, db) = two_mut(&mut dp, ((s.norm_g, h), (s.norm_b, h)));
            let gamma = &p[s.norm_g..s.norm_g + h];
            layer_norm_backward(&d_transformed, &saved.normed, gamma, &mut d_act, dg, db);
            activation_backward(s.act, &mut d_act, &saved.pre_act);
            let (dw, dbias) = two_mut(&mut dp, ((s.dense_w, h * g), (s.dense_b, h)));
            let w = &p[s.dense_w..s.dense_w + h * g];
            let d_picked = linear_backward(&d_act, &saved.picked, w, dw, dbias);
            let mut dx = zeros::<T>(x_len);
            for (row, &r) in d_picked.chunks(g).zip(&self.rows) {
                for (d, grad) in dx[r as usize * g..(r as usize + 1) * g].iter_mut().zip(row) {
                    *d += *grad;
                }
            }
            dx
        });
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
            DType::F32 => self.loss_storage::<f32>((s1, l1), (s2, l2), (s3, l3)),
            DType::F64 => self.loss_storage::<f64>((s1, l1), (s2, l2), (s3, l3)),
            other => candle_core::bail!("fused MLM head: no kernel for {other:?}"),
        }?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The plain scan the block-wise draw must agree with.
    fn draw_by_scan(row: &[f32], u: f64) -> u32 {
        let total: f64 = row.iter().map(|&p| p as f64).sum();
        let mut cumulative = 0.0;
        for (t, &p) in row.iter().enumerate() {
            cumulative += p as f64;
            if cumulative > u * total {
                return t as u32;
            }
        }
        row.iter().rposition(|&p| p > 0.0).unwrap_or(0) as u32
    }

    proptest! {
        // Small whole-number weights add up exactly in any order, so the
        // block sums and the scan see the same cumulative sums.
        #[test]
        fn block_wise_draws_equal_the_plain_scan(
            weights in proptest::collection::vec(0u8..4, 1..300),
            zero_run in 0usize..200,
            u in 0.0f64..1.0,
        ) {
            let mut row: Vec<f32> = vec![0.0; zero_run];
            row.extend(weights.iter().map(|&w| w as f32));
            prop_assume!(row.iter().any(|&p| p > 0.0));
            let drawn = draw_from_row(&row, u);
            prop_assert_eq!(drawn, draw_by_scan(&row, u));
            prop_assert!(row[drawn as usize] > 0.0);
        }
    }
}
