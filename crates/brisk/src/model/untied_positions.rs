//! TUPE: untied positional attention (Ke, He & Liu, "Rethinking Positional
//! Encoding in Language Pre-training", ICLR 2021).
//!
//! Absolute position embeddings are not added to the word embeddings.
//! Instead, every layer's attention logit is the content term plus one
//! position term shared by all layers:
//!
//! ```text
//! α_ij = (x_i W^Q)(x_j W^K)ᵀ / sqrt(2d) + reset_θ( (p_i U^Q)(p_j U^K)ᵀ / sqrt(2d) [+ b_{j−i}] )
//! ```
//!
//! - `p` is the LayerNorm-ed absolute position embedding; `U^Q`, `U^K` have
//!   one projection per head (one `hidden × hidden` matrix each) and are
//!   shared by every layer, so the `[heads, len, len]` term is computed once
//!   per forward and broadcast over the batch (never copied per sequence).
//! - `reset_θ` unties `[CLS]` (position 0) from positions: its row
//!   (`[CLS]` → others) becomes θ1 and its column (others → `[CLS]`) θ2,
//!   per head. As the paper's appendix parameterises them, θ1 and θ2 come
//!   from two learnable vectors `p_θ1`, `p_θ2` through the same LayerNorm and
//!   projections: `θ = (p_θ U^Q)(p_θ U^K)ᵀ / sqrt(2d)`, so their scale
//!   matches the other entries.
//! - TUPE-R adds `b_{j−i}`, one learned scalar per head and T5 bucket
//!   (bidirectional, 32 buckets, maximum distance 128), before the reset, as
//!   the paper's equation has it. (The authors' code resets the absolute and
//!   relative terms separately, with two extra relative buckets for
//!   `[CLS]`; the paper's form is the one built here.)
//! - Both terms are scaled by `1/sqrt(2d)` (d the head size), so their sum
//!   keeps the usual magnitude; the encoder layers take the content scale
//!   from [`content_scale`].
//!
//! The tensors are brisk-only (HF BERT cannot hold them) and live in the
//! group `bert.encoder.tupe`; the position table stays
//! `bert.embeddings.position_embeddings.weight`.

use candle_core::{DType, Device, Tensor};

use super::bert::Linear;
use super::norm::LayerNorm;
use super::params::Params;
use crate::config::{ModelConfig, Position};
use crate::corpus::generated::Rng;
use crate::error::Result;

/// T5 relative-position buckets used by TUPE-R.
pub const RELATIVE_BUCKETS: usize = 32;
/// Distances at or beyond this share the last bucket.
pub const RELATIVE_MAX_DISTANCE: usize = 128;

/// The attention-logit scale of `q kᵀ` for a head of size `head_dim`:
/// `1/sqrt(d)` with absolute positions, `1/sqrt(2d)` with TUPE.
pub fn content_scale(cfg: &ModelConfig) -> f64 {
    let d = (cfg.hidden_size / cfg.num_attention_heads) as f64;
    match cfg.position {
        Position::Absolute | Position::Rope => 1.0 / d.sqrt(),
        Position::TupeA | Position::TupeR => 1.0 / (2.0 * d).sqrt(),
    }
}

/// T5's bidirectional relative-position bucket of `relative = j − i` (key
/// minus query): half the buckets for keys before the query, half for keys
/// after; within each half, exact buckets for distances below a quarter of
/// the buckets, then logarithmically wider ones up to `max_distance`.
pub fn relative_bucket(relative: i64, buckets: usize, max_distance: usize) -> usize {
    let half = buckets / 2;
    let base = if relative > 0 { half } else { 0 };
    let n = relative.unsigned_abs() as usize;
    let exact = half / 2;
    if n < exact {
        return base + n;
    }
    let log_ratio = (n as f64 / exact as f64).ln() / (max_distance as f64 / exact as f64).ln();
    let large = exact + (log_ratio * (half - exact) as f64) as usize;
    base + large.min(half - 1)
}

/// The position term's parameters and how to compute it.
#[derive(Debug, Clone)]
pub struct UntiedPositions {
    /// `[max_positions, hidden]`, a view of the embeddings group.
    positions: Tensor,
    /// `[2, hidden]`: `p_θ1` ([CLS] → others) and `p_θ2` (others → [CLS]).
    cls_theta: Tensor,
    norm: LayerNorm,
    query: Linear,
    key: Linear,
    /// TUPE-R: `[RELATIVE_BUCKETS, heads]`.
    relative: Option<Tensor>,
    heads: usize,
}

impl UntiedPositions {
    /// Creates the group `name` (`bert.encoder.tupe` for BERT);
    /// `positions` is the position table of the embeddings.
    pub fn new(
        params: &mut Params,
        cfg: &ModelConfig,
        name: &str,
        positions: Tensor,
        rng: &mut Rng,
    ) -> Result<UntiedPositions> {
        // The positions may be wider than this encoder (a generator sharing
        // a discriminator's table): the projections map to its width.
        let (p, h) = (positions.dim(1)?, cfg.hidden_size);
        let std = cfg.initializer_range;
        let mut g = params.group(name);
        g.normal("cls_theta", &[2, p], std, rng);
        LayerNorm::add(&mut g, "LayerNorm", p);
        Linear::add(&mut g, "query", (p, h), std, rng);
        Linear::add(&mut g, "key", (p, h), std, rng);
        let relative = cfg.position == Position::TupeR;
        if relative {
            g.normal(
                "relative_attention_bias.weight",
                &[RELATIVE_BUCKETS, cfg.num_attention_heads],
                std,
                rng,
            );
        }
        let g = g.finish()?;
        Ok(UntiedPositions {
            positions,
            cls_theta: g.view("cls_theta")?,
            norm: LayerNorm::view(g, "LayerNorm", cfg.layer_norm_eps)?,
            query: Linear::view(g, "query")?,
            key: Linear::view(g, "key")?,
            relative: relative
                .then(|| g.view("relative_attention_bias.weight"))
                .transpose()?,
            heads: cfg.num_attention_heads,
        })
    }

    /// The position term for sequences of `len` tokens, `[heads, len, len]`,
    /// with `[CLS]` at position 0.
    pub fn bias(&self, len: usize) -> Result<Tensor> {
        let h = self.query.bias.dim(0)?;
        let (heads, d) = (self.heads, h / self.heads);
        let dev = self.positions.device();
        // Rows 0 and 1 are p_θ1 and p_θ2, then the positions 0..len.
        let p = Tensor::cat(&[&self.cls_theta, &self.positions.narrow(0, 0, len)?], 0)?;
        let p = self.norm.forward(&p)?;
        let per_head = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((len + 2, heads, d))?
                .transpose(0, 1)?
                .contiguous()?)
        };
        let q = per_head(self.query.forward(&p)?)?;
        let k = per_head(self.key.forward(&p)?)?;
        let scale = 1.0 / ((2 * d) as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let theta1 = scores.narrow(1, 0, 1)?.narrow(2, 0, 1)?;
        let theta2 = scores.narrow(1, 1, 1)?.narrow(2, 1, 1)?;
        let mut term = scores.narrow(1, 2, len)?.narrow(2, 2, len)?;
        if let Some(table) = &self.relative {
            let buckets = Tensor::from_vec(bucket_grid(len), len * len, dev)?;
            let b = table
                .index_select(&buckets, 0)?
                .t()?
                .reshape((heads, len, len))?;
            term = (term + b)?;
        }
        let [keep, row, column] = reset_masks(len, dev, term.dtype())?;
        let term = term.broadcast_mul(&keep)?;
        let term = term.broadcast_add(&theta1.broadcast_mul(&row)?)?;
        Ok(term.broadcast_add(&theta2.broadcast_mul(&column)?)?)
    }
}

/// The bucket of every `(query i, key j)` pair of a `len`-token sequence,
/// row-major.
fn bucket_grid(len: usize) -> Vec<u32> {
    let mut grid = Vec::with_capacity(len * len);
    for i in 0..len as i64 {
        for j in 0..len as i64 {
            grid.push(relative_bucket(j - i, RELATIVE_BUCKETS, RELATIVE_MAX_DISTANCE) as u32);
        }
    }
    grid
}

/// `[len, len]` masks of `reset_θ`: the entries kept (neither row 0 nor
/// column 0), row 0 (θ1, `[CLS]` → others, the corner included) and
/// column 0 below it (θ2, others → `[CLS]`).
fn reset_masks(len: usize, dev: &Device, dtype: DType) -> Result<[Tensor; 3]> {
    let mut keep = vec![1f32; len * len];
    let mut row = vec![0f32; len * len];
    let mut column = vec![0f32; len * len];
    for j in 0..len {
        keep[j] = 0.0;
        row[j] = 1.0;
    }
    for i in 1..len {
        keep[i * len] = 0.0;
        column[i * len] = 1.0;
    }
    let t = |v: Vec<f32>| Tensor::from_vec(v, (len, len), dev)?.to_dtype(dtype);
    Ok([t(keep)?, t(row)?, t(column)?])
}
