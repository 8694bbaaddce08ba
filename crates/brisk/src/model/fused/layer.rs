//! The whole encoder layer as one candle op with a hand-written backward.
//!
//! Inputs: the hidden states `x` `[batch, len, hidden]`, the layer's flat
//! parameter group, and optionally an additive attention bias
//! (`[heads | batch·heads, len, len]`, TUPE's positional term). The op runs
//! attention (packed Q/K/V, padding mask, dropout on the probabilities),
//! the output projection, residuals, both LayerNorms (post- or pre-LN) and
//! the feed-forward block, keeping what its backward needs in the op itself
//! (nothing is recomputed but two cheap `x̂·g + b`). The backward returns one
//! gradient for `x`, one flat gradient for the whole group and one for the
//! bias, so candle's gradient store handles three tensors per layer instead
//! of dozens.
//!
//! With early exit the op takes the rows still active: only they are
//! queries, so the Q projection, the attention rows, the output projection
//! and the feed-forward block shrink with their number, while every token
//! is still projected to a key and a value. The rows that exited pass
//! through unchanged, forward and backward.
//!
//! [`super::super::bert::EncoderLayer`]'s plain composition of candle ops is
//! the reference this op is tested against.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::kernels::simd;
use super::kernels::{
    activate_and_derive, add, apply_mask, denormalise, dot, layer_norm, layer_norm_backward,
    linear, linear_backward, masked, matmul, multiply, softmax_in_place, two_mut, with_slices,
    zeros, Activation, Float, Mat, MatMut, Normed, Stash, Threads,
};
use crate::config::Norm;
use crate::error::{Error, Result};
use crate::model::params::{Ctx, Group};
use crate::model::rotary::{rotate_packed, rotate_rows, Rows};
use crate::profile::time;

// Profile sections of a layer's forward and backward (crate::profile).
const FWD_NORM: &str = "layer forward: LayerNorm";
const FWD_QKV: &str = "layer forward: Q/K/V projection";
const FWD_ATTENTION: &str = "layer forward: attention (scores, softmax, dropout, context)";
const FWD_OUT: &str = "layer forward: output projection";
const FWD_RESIDUAL: &str = "layer forward: dropout + residual";
const FWD_FFN_IN: &str = "layer forward: feed-forward in";
const FWD_ACT: &str = "layer forward: activation";
const FWD_FFN_OUT: &str = "layer forward: feed-forward out";
const BWD_ZEROS: &str = "layer backward: zeroed buffers";
const BWD_NORM: &str = "layer backward: LayerNorm";
const BWD_RESIDUAL: &str = "layer backward: dropout + residual";
const BWD_ACT: &str = "layer backward: activation";
const BWD_FFN_OUT: &str = "layer backward: feed-forward out";
const BWD_DENORMALISE: &str = "layer backward: LayerNorm outputs again";
const BWD_FFN_IN: &str = "layer backward: feed-forward in";
const BWD_OUT: &str = "layer backward: output projection";
const BWD_ATTENTION: &str = "layer backward: attention";
const BWD_ROTARY: &str = "layer backward: rotary positions";
const BWD_QKV: &str = "layer backward: Q/K/V projection";

/// Logit of a padded key: large and negative, but finite so that a fully
/// padded row stays finite (as in the reference).
const MASKED: f32 = -1e9;

/// Backward passes run by fused layers in this process: lets a test (and a
/// run's summary) confirm that training went through the fused kernels.
static BACKWARD_PASSES: AtomicU64 = AtomicU64::new(0);

/// How many fused-layer backward passes this process has run.
pub fn backward_passes() -> u64 {
    BACKWARD_PASSES.load(Ordering::Relaxed)
}

/// Where each tensor sits in a layer's flat group. Q, K and V are adjacent
/// (weights, then biases) so that one product computes all three.
#[derive(Debug, Clone, Copy)]
pub struct LayerLayout {
    wqkv: usize,
    bqkv: usize,
    wo: usize,
    bo: usize,
    attn_norm_g: usize,
    attn_norm_b: usize,
    w1: usize,
    b1: usize,
    w2: usize,
    b2: usize,
    ffn_norm_g: usize,
    ffn_norm_b: usize,
    len: usize,
}

impl LayerLayout {
    /// Reads the offsets of a layer group built with HF names, checking the
    /// adjacency the kernels rely on.
    pub fn of(group: &Group, hidden: usize) -> Result<LayerLayout> {
        let at = |local: &str| -> Result<usize> { Ok(group.entry(local)?.offset) };
        let wqkv = at("attention.self.query.weight")?;
        let bqkv = at("attention.self.query.bias")?;
        let adjacent = at("attention.self.key.weight")? == wqkv + hidden * hidden
            && at("attention.self.value.weight")? == wqkv + 2 * hidden * hidden
            && at("attention.self.key.bias")? == bqkv + hidden
            && at("attention.self.value.bias")? == bqkv + 2 * hidden;
        if !adjacent {
            return Err(Error::Tensor(format!(
                "{}: query, key and value are not adjacent in the flat group",
                group.name
            )));
        }
        Ok(LayerLayout {
            wqkv,
            bqkv,
            wo: at("attention.output.dense.weight")?,
            bo: at("attention.output.dense.bias")?,
            attn_norm_g: at("attention.output.LayerNorm.weight")?,
            attn_norm_b: at("attention.output.LayerNorm.bias")?,
            w1: at("intermediate.dense.weight")?,
            b1: at("intermediate.dense.bias")?,
            w2: at("output.dense.weight")?,
            b2: at("output.dense.bias")?,
            ffn_norm_g: at("output.LayerNorm.weight")?,
            ffn_norm_b: at("output.LayerNorm.bias")?,
            len: group.var.elem_count(),
        })
    }
}

/// The shape-independent description of one layer.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    pub hidden: usize,
    pub heads: usize,
    /// Multiplies `q kᵀ` (`1/sqrt(head_dim)`, or `1/sqrt(2·head_dim)` with TUPE).
    pub scale: f64,
    /// Rotary positions: Q and K are rotated by position after projection.
    pub rotary: bool,
    pub ffn: usize,
    pub norm: Norm,
    pub act: Activation,
    pub eps: f64,
    pub hidden_dropout: f64,
    pub attn_dropout: f64,
    pub layout: LayerLayout,
}

impl LayerSpec {
    /// Runs the layer on `x` `[batch, len, hidden]`; `bias` and `pad_mask`
    /// are as in [`crate::model::attention::attention`]. Dropout masks are
    /// drawn from `ctx` in the reference's order (attention probabilities,
    /// attention output, feed-forward output).
    ///
    /// `rows` (early exit): the rows of the flattened batch the layer
    /// updates, increasing. Only they are queries: their Q projection,
    /// attention rows, output projection and feed-forward block are
    /// computed on the gathered rows, while every token is projected to a
    /// key and a value. The other rows pass through unchanged. `None`, or
    /// every row, runs the whole layer.
    pub fn forward(
        &self,
        x: &Tensor,
        params: &Tensor,
        bias: Option<&Tensor>,
        pad_mask: Option<&Tensor>,
        rows: Option<&[u32]>,
        ctx: &mut Ctx,
    ) -> Result<Tensor> {
        let (batch, len, hidden) = x.dims3()?;
        if hidden != self.hidden || params.elem_count() != self.layout.len {
            return Err(Error::Tensor(format!(
                "fused layer: hidden {hidden} and {} parameters, expected {} and {}",
                params.elem_count(),
                self.hidden,
                self.layout.len
            )));
        }
        let tokens = batch * len;
        let rows = match rows {
            Some(r) if r.len() < tokens => Some(query_rows(r, tokens)?),
            _ => None,
        };
        if rows.as_ref().is_some_and(Vec::is_empty) {
            // Nobody left to update: no product at all.
            record_rows(ProductRows {
                query: 0,
                key_value: 0,
            });
            return Ok(x.clone());
        }
        let bias_rows = match bias {
            None => 0,
            Some(b) => {
                let (rows, q, k) = b.dims3()?;
                if (rows != self.heads && rows != batch * self.heads) || q != len || k != len {
                    return Err(Error::Tensor(format!(
                        "attention bias has shape {:?}; expected [{} or {}, {len}, {len}]",
                        b.dims(),
                        self.heads,
                        batch * self.heads
                    )));
                }
                rows
            }
        };
        let pad = match pad_mask {
            None => None,
            Some(m) => {
                let keep: Vec<f32> = m.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
                Some(keep.iter().map(|k| (1.0 - k) * MASKED).collect())
            }
        };
        let queries = rows.as_ref().map_or(tokens, Vec::len);
        let masks = Masks {
            attn: ctx.dropout_mask(self.heads * queries * len, self.attn_dropout),
            attn_out: ctx.dropout_mask(queries * hidden, self.hidden_dropout),
            ffn_out: ctx.dropout_mask(queries * hidden, self.hidden_dropout),
        };
        let starts = sequence_starts(rows.as_deref(), batch, len);
        let op = LayerOp {
            spec: self.clone(),
            batch,
            len,
            bias_rows,
            pad,
            masks,
            rows,
            starts,
            keep: x.track_op() || params.track_op() || bias.is_some_and(Tensor::track_op),
            saved: Stash::default(),
        };
        let x = x.contiguous()?;
        let params = params.contiguous()?;
        Ok(match bias {
            None => x.apply_op2(&params, op)?,
            Some(b) => x.apply_op3(&params, &b.contiguous()?, op)?,
        })
    }
}

/// `rows` as indices, checked increasing and inside the batch.
fn query_rows(rows: &[u32], tokens: usize) -> Result<Vec<usize>> {
    let increasing = rows.windows(2).all(|w| w[0] < w[1]);
    if !increasing || rows.last().is_some_and(|&r| r as usize >= tokens) {
        return Err(Error::Tensor(format!(
            "fused layer: the active rows must increase and lie below {tokens}"
        )));
    }
    Ok(rows.iter().map(|&r| r as usize).collect())
}

/// Where each sequence's query rows start among the rows the layer
/// updates (`batch + 1` entries, the last one their count).
fn sequence_starts(rows: Option<&[usize]>, batch: usize, len: usize) -> Vec<usize> {
    match rows {
        None => (0..=batch).map(|b| b * len).collect(),
        Some(rows) => (0..=batch)
            .map(|b| rows.partition_point(|&r| r < b * len))
            .collect(),
    }
}

/// The sizes of one layer application's matrix products, in rows: the
/// query side (Q projection, attention rows, output projection,
/// feed-forward) and the key and value projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProductRows {
    pub query: usize,
    pub key_value: usize,
}

thread_local! {
    /// `Some` while this thread records the product sizes of its layers.
    static PRODUCT_ROWS: std::cell::RefCell<Option<Vec<ProductRows>>> =
        const { std::cell::RefCell::new(None) };
}

/// Starts recording, on this thread, the product sizes of every fused
/// layer it runs (so that a test can check that exited tokens cost
/// nothing); [`take_product_rows`] returns them and stops.
pub fn record_product_rows() {
    PRODUCT_ROWS.with(|r| *r.borrow_mut() = Some(Vec::new()));
}

/// The product sizes recorded since [`record_product_rows`], one entry per
/// layer application, in order.
pub fn take_product_rows() -> Vec<ProductRows> {
    PRODUCT_ROWS.with(|r| r.borrow_mut().take().unwrap_or_default())
}

fn record_rows(rows: ProductRows) {
    PRODUCT_ROWS.with(|r| {
        if let Some(log) = r.borrow_mut().as_mut() {
            log.push(rows);
        }
    });
}

/// Dropout multipliers, `None` where dropout is off.
struct Masks {
    attn: Option<Vec<f32>>,
    attn_out: Option<Vec<f32>>,
    ffn_out: Option<Vec<f32>>,
}

/// One application of a layer: its shapes, masks and saved activations.
struct LayerOp {
    spec: LayerSpec,
    batch: usize,
    len: usize,
    bias_rows: usize,
    /// Additive logit per `(batch, key)`: 0 for tokens, [`MASKED`] for padding.
    pad: Option<Vec<f32>>,
    masks: Masks,
    /// The rows updated (early exit); `None` for all.
    rows: Option<Vec<usize>>,
    /// `starts[b]..starts[b + 1]`: sequence `b`'s query rows.
    starts: Vec<usize>,
    /// Whether a backward pass can follow (otherwise nothing is saved).
    keep: bool,
    saved: Stash,
}

/// The attention's projections of one layer application.
enum Projections<T> {
    /// Every token a query: Q, K and V packed `[tokens, 3·hidden]`.
    Packed(Vec<T>),
    /// Early exit: the queries of the active rows `[queries, hidden]`, and
    /// every token's keys and values packed `[tokens, 2·hidden]`.
    Split { q: Vec<T>, kv: Vec<T> },
}

impl<T: Float> Projections<T> {
    /// Zeros shaped like `self` (for its gradient).
    fn zeros_like(&self) -> Projections<T> {
        match self {
            Projections::Packed(qkv) => Projections::Packed(zeros(qkv.len())),
            Projections::Split { q, kv } => Projections::Split {
                q: zeros(q.len()),
                kv: zeros(kv.len()),
            },
        }
    }

    /// The Q, K and V matrices (rows: query rows for Q, tokens for K, V).
    fn operands(&self, h: usize) -> [Mat<T>; 3] {
        match self {
            Projections::Packed(qkv) => {
                let m = Mat::rows(qkv, 3 * h);
                [m, m.col(h), m.col(2 * h)]
            }
            Projections::Split { q, kv } => {
                let kv = Mat::rows(kv, 2 * h);
                [Mat::rows(q, h), kv, kv.col(h)]
            }
        }
    }

    fn operands_mut(&mut self, h: usize) -> [MatMut<T>; 3] {
        match self {
            Projections::Packed(qkv) => {
                let m = MatMut::rows(qkv, 3 * h);
                [m, m.col(h), m.col(2 * h)]
            }
            Projections::Split { q, kv } => {
                let kv = MatMut::rows(kv, 2 * h);
                [MatMut::rows(q, h), kv, kv.col(h)]
            }
        }
    }
}

/// What the backward needs of the forward.
struct Saved<T> {
    /// Post-LN: the norm after attention; pre-LN: the norm before it.
    attn_norm: Normed<T>,
    /// Post-LN: the norm after the feed-forward block; pre-LN: before it.
    ffn_norm: Normed<T>,
    projections: Projections<T>,
    probs: Vec<T>,
    context: Vec<T>,
    /// Feed-forward activations (the second product's input) and their
    /// derivatives at the pre-activations.
    act: Vec<T>,
    act_derivative: Vec<T>,
}

/// A parameter slice of the flat group.
fn part<T>(p: &[T], offset: usize, len: usize) -> &[T] {
    &p[offset..offset + len]
}

/// `probs[t] · mask[t]` for one head's block, or the block itself.
fn dropped<'a, T: Float>(p: &'a [T], mask: Option<&[f32]>, scratch: &'a mut Vec<T>) -> &'a [T] {
    match mask {
        None => p,
        Some(m) => {
            scratch.clear();
            scratch.extend(p.iter().zip(m).map(|(v, k)| *v * T::of(*k as f64)));
            scratch
        }
    }
}

/// Rows `rows` of `x` (rows `width` wide), in order.
fn gather<T: Float>(x: &[T], rows: &[usize], width: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(rows.len() * width);
    for &r in rows {
        out.extend_from_slice(&x[r * width..(r + 1) * width]);
    }
    out
}

/// `dst[rows[i]] = src[i]` (or `+=` when `add`), rows `width` wide.
fn scatter<T: Float>(dst: &mut [T], rows: &[usize], src: &[T], width: usize, add: bool) {
    for (&r, s) in rows.iter().zip(src.chunks(width)) {
        let d = &mut dst[r * width..(r + 1) * width];
        if add {
            for (d, s) in d.iter_mut().zip(s) {
                *d += *s;
            }
        } else {
            d.copy_from_slice(s);
        }
    }
}

impl LayerOp {
    fn head_dim(&self) -> usize {
        self.spec.hidden / self.spec.heads
    }

    /// How many rows are queries.
    fn queries(&self) -> usize {
        self.starts[self.batch]
    }

    /// Head task `t`: its batch index, head, first query row and number
    /// of query rows.
    fn task(&self, t: usize) -> (usize, usize, usize, usize) {
        let (b, head) = (t / self.spec.heads, t % self.spec.heads);
        (b, head, self.starts[b], self.starts[b + 1] - self.starts[b])
    }

    /// Where head task `t`'s `queries × len` block of probabilities starts.
    /// The blocks follow each other in task order.
    fn task_offset(&self, t: usize) -> usize {
        let (_, head, start, n) = self.task(t);
        (start * self.spec.heads + head * n) * self.len
    }

    /// `buf` cut into the tasks' blocks of probabilities, in task order.
    fn task_blocks<'a, T>(&self, mut buf: &'a mut [T]) -> Vec<&'a mut [T]> {
        let tasks = self.batch * self.spec.heads;
        let mut out = Vec::with_capacity(tasks);
        for t in 0..tasks {
            let (block, rest) = std::mem::take(&mut buf).split_at_mut(self.task(t).3 * self.len);
            out.push(block);
            buf = rest;
        }
        out
    }

    /// The position in its sequence of query row `q`.
    fn position(&self, q: usize) -> usize {
        self.rows.as_ref().map_or(q, |rows| rows[q]) % self.len
    }

    /// The bias block added to head task `t` (batch `t / heads`), `len ×
    /// len`.
    fn bias_block<'a, T>(&self, bias: Option<&'a [T]>, t: usize) -> Option<&'a [T]> {
        let ll = self.len * self.len;
        let row = if self.bias_rows == self.spec.heads {
            t % self.spec.heads
        } else {
            t
        };
        bias.map(|b| &b[row * ll..(row + 1) * ll])
    }

    /// The attention projections of `a_in` `[tokens, hidden]`, rotated
    /// when the layer uses rotary positions: all three for every token,
    /// or (early exit) queries for the active rows only.
    fn project<T: Float>(&self, a_in: &[T], p: &[T]) -> Projections<T> {
        let (h, lay) = (self.spec.hidden, &self.spec.layout);
        let (w, b) = (part(p, lay.wqkv, 3 * h * h), part(p, lay.bqkv, 3 * h));
        let tokens = a_in.len() / h;
        let mut rotation = Rows {
            width: h,
            rotated: h,
            head_dim: self.head_dim(),
            len: self.len,
        };
        let projections = match &self.rows {
            None => {
                let mut qkv = linear(a_in, w, b, h);
                if self.spec.rotary {
                    // Saved rotated: attention and its backward read Q and K as used.
                    rotate_packed(&mut qkv, self.len, h, self.head_dim(), false);
                }
                Projections::Packed(qkv)
            }
            Some(rows) => {
                let mut q = linear(&gather(a_in, rows, h), &w[..h * h], &b[..h], h);
                let mut kv = linear(a_in, &w[h * h..], &b[h..], h);
                if self.spec.rotary {
                    rotate_rows(&mut q, rotation, |r| self.position(r), false);
                    rotation.width = 2 * h;
                    rotate_rows(&mut kv, rotation, |r| r % self.len, false);
                }
                Projections::Split { q, kv }
            }
        };
        record_rows(ProductRows {
            query: self.queries(),
            key_value: tokens,
        });
        projections
    }

    /// Turns the rotary gradients of the projections back (the rotation
    /// is orthogonal: its backward turns the other way).
    fn unrotate<T: Float>(&self, grads: &mut Projections<T>) {
        let h = self.spec.hidden;
        match grads {
            Projections::Packed(d_qkv) => rotate_packed(d_qkv, self.len, h, self.head_dim(), true),
            Projections::Split { q, kv } => {
                let mut rotation = Rows {
                    width: h,
                    rotated: h,
                    head_dim: self.head_dim(),
                    len: self.len,
                };
                rotate_rows(q, rotation, |r| self.position(r), true);
                rotation.width = 2 * h;
                rotate_rows(kv, rotation, |r| r % self.len, true);
            }
        }
    }

    /// Softmax attention of the query rows over every token of their
    /// sequence: returns the probabilities (each task's `queries × len`
    /// block, before dropout) and the context `[queries, hidden]`.
    fn attention<T: Float>(&self, [q, k, v]: [Mat<T>; 3], bias: Option<&[T]>) -> (Vec<T>, Vec<T>) {
        let (l, h, heads, d) = (self.len, self.spec.hidden, self.spec.heads, self.head_dim());
        let scale = T::of(self.spec.scale);
        let mut probs = zeros::<T>(self.queries() * heads * l);
        let mut context = zeros::<T>(self.queries() * h);
        let out = MatMut::rows(&mut context, h);
        self.task_blocks(&mut probs)
            .into_par_iter()
            .enumerate()
            .for_each_init(Vec::new, |scratch, (t, p)| {
                let (b, head, start, n) = self.task(t);
                if n == 0 {
                    return;
                }
                let (q, k, v) = (
                    q.row(start).col(head * d),
                    k.row(b * l).col(head * d),
                    v.row(b * l).col(head * d),
                );
                // SAFETY: `p` is this task's `n × l` block; q is an `n × d`
                // block and k, v are `l × d` blocks of the projections;
                // each task writes its own `n × d` block of `context`.
                unsafe {
                    matmul(
                        (n, l, d),
                        MatMut::rows(p, l),
                        q,
                        k.t(),
                        scale,
                        false,
                        Threads::One,
                    )
                };
                let bias = self.bias_block(bias, t);
                let pad = self.pad.as_ref().map(|m| &m[b * l..(b + 1) * l]);
                simd!({
                    for (i, row) in p.chunks_mut(l).enumerate() {
                        if let Some(bias) = bias {
                            let pos = self.position(start + i);
                            for (s, add) in row.iter_mut().zip(&bias[pos * l..(pos + 1) * l]) {
                                *s += *add;
                            }
                        }
                        if let Some(pad) = pad {
                            for (s, add) in row.iter_mut().zip(pad) {
                                *s += T::of(*add as f64);
                            }
                        }
                        softmax_in_place(row);
                    }
                });
                let offset = self.task_offset(t);
                let mask = self.masks.attn.as_ref().map(|m| &m[offset..offset + n * l]);
                let pd = dropped(p, mask, scratch);
                unsafe {
                    matmul(
                        (n, d, l),
                        out.row(start).col(head * d),
                        Mat::rows(pd, l),
                        v,
                        T::ONE,
                        false,
                        Threads::One,
                    )
                };
            });
        (probs, context)
    }

    /// The backward of [`LayerOp::attention`]: writes `∂L/∂(Q, K, V)` into
    /// `grads` (zeros shaped like the projections) and returns, per head
    /// task, `∂L/∂logits` (the bias gradient, laid out as the
    /// probabilities).
    fn attention_backward<T: Float>(
        &self,
        d_context: &[T],
        [q, k, v]: [Mat<T>; 3],
        [dq, dk, dv]: [MatMut<T>; 3],
        probs: &[T],
    ) -> Vec<T> {
        let (l, h, d) = (self.len, self.spec.hidden, self.head_dim());
        let scale = T::of(self.spec.scale);
        let mut d_logits = zeros::<T>(probs.len());
        let dc = Mat::rows(d_context, h);
        self.task_blocks(&mut d_logits)
            .into_par_iter()
            .enumerate()
            .for_each_init(Vec::new, |scratch, (t, ds)| {
                let (b, head, start, n) = self.task(t);
                if n == 0 {
                    return;
                }
                let (q, k, v) = (
                    q.row(start).col(head * d),
                    k.row(b * l).col(head * d),
                    v.row(b * l).col(head * d),
                );
                let (dq, dk, dv) = (
                    dq.row(start).col(head * d),
                    dk.row(b * l).col(head * d),
                    dv.row(b * l).col(head * d),
                );
                let dc = dc.row(start).col(head * d);
                let offset = self.task_offset(t);
                let p = &probs[offset..offset + n * l];
                let mask = self.masks.attn.as_ref().map(|m| &m[offset..offset + n * l]);
                let pd = dropped(p, mask, scratch);
                // SAFETY: every block is `n × l`, `n × d` or `l × d` inside
                // its buffer; each task writes only its own head's columns
                // of its own sequence's rows, and its own `ds` block.
                unsafe {
                    // ∂L/∂(dropped probs) = dC · vᵀ; ∂L/∂v = dropped probsᵀ · dC.
                    matmul(
                        (n, l, d),
                        MatMut::rows(ds, l),
                        dc,
                        v.t(),
                        T::ONE,
                        false,
                        Threads::One,
                    );
                    matmul(
                        (l, d, n),
                        dv,
                        Mat::rows(pd, l).t(),
                        dc,
                        T::ONE,
                        false,
                        Threads::One,
                    );
                }
                simd!({
                    if let Some(m) = mask {
                        for (g, k) in ds.iter_mut().zip(m) {
                            *g *= T::of(*k as f64);
                        }
                    }
                    // Softmax backward, row by row: p ⊙ (g − Σ p·g).
                    for (g, p) in ds.chunks_mut(l).zip(p.chunks(l)) {
                        let gp = dot(g, p);
                        for (g, p) in g.iter_mut().zip(p) {
                            *g = *p * (*g - gp);
                        }
                    }
                });
                let ds = Mat::rows(&*ds, l);
                unsafe {
                    matmul((n, d, l), dq, ds, k, scale, false, Threads::One);
                    matmul((l, d, n), dk, ds.t(), q, scale, false, Threads::One);
                }
            });
        d_logits
    }

    fn forward<T: Float>(&self, x: &[T], p: &[T], bias: Option<&[T]>) -> Vec<T> {
        let s = &self.spec;
        let (h, f, lay) = (s.hidden, s.ffn, &s.layout);
        let post = s.norm == Norm::Post;
        let attn_g = part(p, lay.attn_norm_g, h);
        let attn_b = part(p, lay.attn_norm_b, h);
        let ffn_g = part(p, lay.ffn_norm_g, h);
        let ffn_b = part(p, lay.ffn_norm_b, h);

        // Every token is a key and a value, so pre-LN normalises them all.
        let norm = |x: &[T], g, b| time(FWD_NORM, || layer_norm(x, g, b, s.eps));
        let pre_attn = (!post).then(|| norm(x, attn_g, attn_b));
        let a_in = pre_attn.as_ref().map_or(x, |(y, _)| y.as_slice());
        let projections = time(FWD_QKV, || self.project(a_in, p));
        let (probs, context) = time(FWD_ATTENTION, || {
            self.attention(projections.operands(h), bias)
        });
        // From here on, the query rows only.
        let mut z1 = time(FWD_OUT, || {
            linear(&context, part(p, lay.wo, h * h), part(p, lay.bo, h), h)
        });
        time(FWD_RESIDUAL, || {
            apply_mask(&mut z1, self.masks.attn_out.as_deref());
            match &self.rows {
                None => add(&mut z1, x),
                Some(rows) => add(&mut z1, &gather(x, rows, h)),
            }
        });
        let (h1, attn_norm) = match pre_attn {
            Some((_, normed)) => (z1, normed),
            None => norm(&z1, attn_g, attn_b),
        };

        let pre_ffn = (!post).then(|| norm(&h1, ffn_g, ffn_b));
        let f_in = pre_ffn
            .as_ref()
            .map_or(h1.as_slice(), |(y, _)| y.as_slice());
        let pre_act = time(FWD_FFN_IN, || {
            linear(f_in, part(p, lay.w1, f * h), part(p, lay.b1, f), h)
        });
        let (act, act_derivative) = time(FWD_ACT, || activate_and_derive(s.act, &pre_act));
        drop(pre_act);
        let mut z2 = time(FWD_FFN_OUT, || {
            linear(&act, part(p, lay.w2, h * f), part(p, lay.b2, h), f)
        });
        time(FWD_RESIDUAL, || {
            apply_mask(&mut z2, self.masks.ffn_out.as_deref());
            add(&mut z2, &h1);
        });
        let (y, ffn_norm) = match pre_ffn {
            Some((_, normed)) => (z2, normed),
            None => norm(&z2, ffn_g, ffn_b),
        };
        if self.keep {
            self.saved.put(Saved {
                attn_norm,
                ffn_norm,
                projections,
                probs,
                context,
                act,
                act_derivative,
            });
        }
        match &self.rows {
            None => y,
            Some(rows) => {
                // The exited rows are carried unchanged.
                let mut out = x.to_vec();
                scatter(&mut out, rows, &y, h, false);
                out
            }
        }
    }

    /// Gradients of `x`, of the flat parameters and (per head task) of the
    /// attention logits.
    fn backward<T: Float>(
        &self,
        x: &[T],
        p: &[T],
        dy: &[T],
    ) -> candle_core::Result<(Vec<T>, Vec<T>, Vec<T>)> {
        let saved = self.saved.take::<Saved<T>>("fused encoder layer")?;
        BACKWARD_PASSES.fetch_add(1, Ordering::Relaxed);
        let s = &self.spec;
        let (h, f, lay) = (s.hidden, s.ffn, &s.layout);
        let post = s.norm == Norm::Post;
        let mut dp = time(BWD_ZEROS, || zeros::<T>(p.len()));
        let attn_g = part(p, lay.attn_norm_g, h);
        let ffn_g = part(p, lay.ffn_norm_g, h);
        let attn_b = part(p, lay.attn_norm_b, h);
        let ffn_b = part(p, lay.ffn_norm_b, h);
        // Gradients are added straight into the flat group's slices.
        let ffn_norm = ((lay.ffn_norm_g, h), (lay.ffn_norm_b, h));
        let attn_norm = ((lay.attn_norm_g, h), (lay.attn_norm_b, h));
        let gathered;
        let dy_rows = match &self.rows {
            None => dy,
            Some(rows) => {
                gathered = gather(dy, rows, h);
                &gathered
            }
        };
        let row_values = self.queries() * h;

        // Feed-forward block: y = LN(h1 + drop(W2·act(W1·f_in))) (post) or
        // h1 + drop(...) with f_in = LN(h1) (pre).
        let mut dh1 = if post {
            let mut dz2 = time(BWD_ZEROS, || zeros::<T>(row_values));
            let (dg, db) = two_mut(&mut dp, ffn_norm);
            time(BWD_NORM, || {
                layer_norm_backward(dy_rows, &saved.ffn_norm, ffn_g, &mut dz2, dg, db)
            });
            dz2
        } else {
            time(BWD_RESIDUAL, || dy_rows.to_vec())
        };
        let d_out = time(BWD_RESIDUAL, || masked(&dh1, self.masks.ffn_out.as_deref()));
        let (dw, db) = two_mut(&mut dp, ((lay.w2, h * f), (lay.b2, h)));
        let mut d_act = time(BWD_FFN_OUT, || {
            linear_backward(&d_out, &saved.act, part(p, lay.w2, h * f), dw, db)
        });
        drop(d_out);
        time(BWD_ACT, || multiply(&mut d_act, &saved.act_derivative));
        let f_in = time(BWD_DENORMALISE, || {
            if post {
                denormalise(&saved.attn_norm, attn_g, attn_b)
            } else {
                denormalise(&saved.ffn_norm, ffn_g, ffn_b)
            }
        });
        let (dw, db) = two_mut(&mut dp, ((lay.w1, f * h), (lay.b1, f)));
        let df_in = time(BWD_FFN_IN, || {
            linear_backward(&d_act, &f_in, part(p, lay.w1, f * h), dw, db)
        });
        drop((d_act, f_in));

        // Attention block: h1 = LN(x + drop(Wo·attn(a_in))) (post) or
        // x + drop(...) with a_in = LN(x) (pre). `d_rows`: the gradient of
        // the query rows' residual input.
        let d_rows = if post {
            time(BWD_RESIDUAL, || add(&mut dh1, &df_in));
            let mut dz1 = time(BWD_ZEROS, || zeros::<T>(row_values));
            let (dg, db) = two_mut(&mut dp, attn_norm);
            time(BWD_NORM, || {
                layer_norm_backward(&dh1, &saved.attn_norm, attn_g, &mut dz1, dg, db)
            });
            dz1
        } else {
            let (dg, db) = two_mut(&mut dp, ffn_norm);
            time(BWD_NORM, || {
                layer_norm_backward(&df_in, &saved.ffn_norm, ffn_g, &mut dh1, dg, db)
            });
            dh1
        };
        let d_out = time(BWD_RESIDUAL, || {
            masked(&d_rows, self.masks.attn_out.as_deref())
        });
        let (dw, db) = two_mut(&mut dp, ((lay.wo, h * h), (lay.bo, h)));
        let d_context = time(BWD_OUT, || {
            linear_backward(&d_out, &saved.context, part(p, lay.wo, h * h), dw, db)
        });
        drop(d_out);
        let mut d_proj = time(BWD_ZEROS, || saved.projections.zeros_like());
        let d_logits = time(BWD_ATTENTION, || {
            self.attention_backward(
                &d_context,
                saved.projections.operands(h),
                d_proj.operands_mut(h),
                &saved.probs,
            )
        });
        if s.rotary {
            time(BWD_ROTARY, || self.unrotate(&mut d_proj));
        }
        let pre_attn = (!post).then(|| {
            time(BWD_DENORMALISE, || {
                denormalise(&saved.attn_norm, attn_g, attn_b)
            })
        });
        let a_in = pre_attn.as_deref().unwrap_or(x);
        let w = part(p, lay.wqkv, 3 * h * h);
        let (dw, db) = two_mut(&mut dp, ((lay.wqkv, 3 * h * h), (lay.bqkv, 3 * h)));
        let (da_in, mut dx) = time(BWD_QKV, || match (d_proj, &self.rows) {
            (Projections::Packed(d_qkv), _) => (linear_backward(&d_qkv, a_in, w, dw, db), d_rows),
            (Projections::Split { q: dq, kv: dkv }, Some(rows)) => {
                let ((dwq, dwkv), (dbq, dbkv)) = (dw.split_at_mut(h * h), db.split_at_mut(h));
                let mut da_in = linear_backward(&dkv, a_in, &w[h * h..], dwkv, dbkv);
                let a_rows = gather(a_in, rows, h);
                let da_rows = linear_backward(&dq, &a_rows, &w[..h * h], dwq, dbq);
                scatter(&mut da_in, rows, &da_rows, h, true);
                // The exited rows pass their gradient straight through.
                let mut dx = dy.to_vec();
                scatter(&mut dx, rows, &d_rows, h, false);
                (da_in, dx)
            }
            (Projections::Split { .. }, None) => unreachable!("split projections have rows"),
        });
        if post {
            time(BWD_RESIDUAL, || add(&mut dx, &da_in));
        } else {
            let (dg, db) = two_mut(&mut dp, attn_norm);
            time(BWD_NORM, || {
                layer_norm_backward(&da_in, &saved.attn_norm, attn_g, &mut dx, dg, db)
            });
        }
        Ok((dx, dp, d_logits))
    }

    /// Sums per-task logit gradients into the bias's shape (with early
    /// exit, the exited queries' rows are zeros).
    fn bias_gradient<T: Float>(&self, d_logits: Vec<T>) -> Vec<T> {
        let (l, ll) = (self.len, self.len * self.len);
        let d_logits = match &self.rows {
            None => d_logits,
            Some(_) => {
                let mut full = zeros::<T>(self.batch * self.spec.heads * ll);
                for t in 0..self.batch * self.spec.heads {
                    let (_, _, start, n) = self.task(t);
                    let offset = self.task_offset(t);
                    for i in 0..n {
                        let pos = self.position(start + i);
                        full[t * ll + pos * l..t * ll + (pos + 1) * l]
                            .copy_from_slice(&d_logits[offset + i * l..offset + (i + 1) * l]);
                    }
                }
                full
            }
        };
        if self.bias_rows != self.spec.heads || self.batch == 1 {
            return d_logits;
        }
        let block = self.spec.heads * ll;
        let mut sum = d_logits[..block].to_vec();
        for b in 1..self.batch {
            for (s, g) in sum.iter_mut().zip(&d_logits[b * block..(b + 1) * block]) {
                *s += *g;
            }
        }
        sum
    }

    fn run_forward<T: Float>(
        &self,
        x: (&CpuStorage, &Layout),
        p: (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let bias = match bias {
            Some((s, l)) => Some(T::slice(s, l)?),
            None => None,
        };
        let y = self.forward(T::slice(x.0, x.1)?, T::slice(p.0, p.1)?, bias);
        Ok((T::storage(y), x.1.shape().clone()))
    }

    fn dispatch_forward(
        &self,
        x: (&CpuStorage, &Layout),
        p: (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        match x.0.dtype() {
            DType::F32 => self.run_forward::<f32>(x, p, bias),
            DType::F64 => self.run_forward::<f64>(x, p, bias),
            other => candle_core::bail!("fused encoder layer: no kernel for {other:?}"),
        }
    }

    fn run_backward<T: Float>(
        &self,
        x: &Tensor,
        p: &Tensor,
        bias: Option<&Tensor>,
        dy: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let (dx, dp, d_logits) =
            with_slices::<T, _>(&[x, p, &dy], |s| self.backward(s[0], s[1], s[2]))?;
        let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
        let dp = Tensor::from_vec(dp, p.shape(), p.device())?;
        let d_bias = match bias {
            Some(b) if b.track_op() => Some(Tensor::from_vec(
                self.bias_gradient(d_logits),
                b.shape(),
                b.device(),
            )?),
            _ => None,
        };
        Ok((dx, dp, d_bias))
    }

    fn dispatch_backward(
        &self,
        x: &Tensor,
        p: &Tensor,
        bias: Option<&Tensor>,
        dy: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor, Option<Tensor>)> {
        match x.dtype() {
            DType::F32 => self.run_backward::<f32>(x, p, bias, dy),
            DType::F64 => self.run_backward::<f64>(x, p, bias, dy),
            other => candle_core::bail!("fused encoder layer: no kernel for {other:?}"),
        }
    }
}

impl CustomOp2 for LayerOp {
    fn name(&self) -> &'static str {
        "fused-encoder-layer"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.dispatch_forward((s1, l1), (s2, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dp, _) = self.dispatch_backward(x, p, None, dy)?;
        Ok((Some(dx), Some(dp)))
    }
}

impl CustomOp3 for LayerOp {
    fn name(&self) -> &'static str {
        "fused-encoder-layer"
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
        self.dispatch_forward((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dp, db) = self.dispatch_backward(x, p, Some(bias), dy)?;
        Ok((Some(dx), Some(dp), db))
    }
}
