//! Rotary position embeddings (RoPE; Su et al., "RoFormer: Enhanced
//! Transformer with Rotary Position Embedding", 2021), as
//! `model.position = "rope"`.
//!
//! Each head's query and key vectors are rotated by an angle proportional
//! to their position before the dot product: pair `j` of a `d`-wide head
//! (components `j` and `j + d/2`, the "rotate half" layout) turns by
//! `pos · θ_j` with `θ_j = base^(−2j/d)`. A rotation by `a` of the query
//! and by `b` of the key leaves their dot product depending on `a − b`
//! only, so attention scores see relative offsets while no position
//! vector is added to the input (the model has no position table).
//!
//! The rotation is linear and orthogonal, so its backward is the rotation
//! by the opposite angle. The fused layer rotates its packed Q/K in place
//! ([`rotate_packed`]); the reference path composes candle ops ([`apply`]).

use candle_core::Tensor;

use super::fused::kernels::Float;
use crate::error::Result;

/// The base of the angles (RoFormer's and most models' 10,000).
pub const BASE: f64 = 10_000.0;

/// `cos` and `sin` of `pos · θ_j`, `[len, d/2]` row-major, in f64.
pub fn angles(len: usize, head_dim: usize) -> (Vec<f64>, Vec<f64>) {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(len * half);
    let mut sin = Vec::with_capacity(len * half);
    for pos in 0..len {
        for j in 0..half {
            let theta = BASE.powf(-2.0 * j as f64 / head_dim as f64);
            let a = pos as f64 * theta;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    (cos, sin)
}

/// Rotates the query and key parts of packed projections `[batch·len,
/// 3·hidden]` (Q, K, V side by side, heads of `head_dim` within each) in
/// place: by `+pos·θ` (`inverse = false`, the forward) or `−pos·θ`
/// (`inverse = true`, the backward of the forward).
pub fn rotate_packed<T: Float>(
    qkv: &mut [T],
    len: usize,
    hidden: usize,
    head_dim: usize,
    inverse: bool,
) {
    let rows = Rows {
        width: 3 * hidden,
        rotated: 2 * hidden,
        head_dim,
        len,
    };
    rotate_rows(qkv, rows, |token| token % len, inverse);
}

/// The shape [`rotate_rows`] reads: rows `width` wide whose first
/// `rotated` columns are heads of `head_dim` to rotate, in sequences of
/// `len` positions.
#[derive(Debug, Clone, Copy)]
pub struct Rows {
    pub width: usize,
    pub rotated: usize,
    pub head_dim: usize,
    pub len: usize,
}

/// Rotates, in place, the first `rows.rotated` columns of each row of `x`,
/// row `r` by the angles of position `position(r)` (below `rows.len`):
/// by `+pos·θ`, or `−pos·θ` when `inverse`. Early exit gathers the query
/// rows of the tokens still active, so their positions are not their row
/// numbers.
pub fn rotate_rows<T: Float>(
    x: &mut [T],
    rows: Rows,
    position: impl Fn(usize) -> usize + Sync,
    inverse: bool,
) {
    use rayon::prelude::*;
    let (head_dim, half) = (rows.head_dim, rows.head_dim / 2);
    let (cos, sin) = angles(rows.len, head_dim);
    let sign = if inverse { -1.0 } else { 1.0 };
    let cos: Vec<T> = cos.into_iter().map(T::of).collect();
    let sin: Vec<T> = sin.into_iter().map(|s| T::of(sign * s)).collect();
    x.par_chunks_mut(rows.width)
        .enumerate()
        .for_each(|(r, row)| {
            let pos = position(r);
            let (c, s) = (
                &cos[pos * half..(pos + 1) * half],
                &sin[pos * half..(pos + 1) * half],
            );
            // Q and K only: the values are not rotated.
            for head in row[..rows.rotated].chunks_mut(head_dim) {
                let (x1, x2) = head.split_at_mut(half);
                for j in 0..half {
                    let (a, b) = (x1[j], x2[j]);
                    x1[j] = a * c[j] - b * s[j];
                    x2[j] = b * c[j] + a * s[j];
                }
            }
        });
}

/// Rotates `x` `[batch, heads, len, head_dim]` by `pos·θ` with candle ops
/// (the reference path; every op has a backward).
pub fn apply(x: &Tensor) -> Result<Tensor> {
    let (_, _, len, d) = x.dims4()?;
    let half = d / 2;
    let (cos, sin) = angles(len, d);
    let table = |v: Vec<f64>| -> Result<Tensor> {
        // [len, d/2] repeated to [len, d]: both halves of a pair share it.
        let t = Tensor::from_vec(v, (len, half), x.device())?.to_dtype(x.dtype())?;
        Ok(Tensor::cat(&[&t, &t], 1)?)
    };
    let (cos, sin) = (table(cos)?, table(sin)?);
    let x1 = x.narrow(3, 0, half)?;
    let x2 = x.narrow(3, half, half)?;
    let rotated_half = Tensor::cat(&[&x2.neg()?, &x1], 3)?;
    Ok(x.broadcast_mul(&cos)?
        .add(&rotated_half.broadcast_mul(&sin)?)?)
}

/// Checks that a head width can be rotated (pairs need an even width).
pub fn check_head_dim(head_dim: usize) -> std::result::Result<(), String> {
    if head_dim.is_multiple_of(2) {
        Ok(())
    } else {
        Err(format!(
            "rotary positions pair up each head's components, so the head width \
             (hidden_size / num_attention_heads = {head_dim}) must be even"
        ))
    }
}
