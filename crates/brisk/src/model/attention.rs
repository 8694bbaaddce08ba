//! Scaled dot-product attention: the one entry point every attention variant
//! (absolute, TUPE's untied positional bias, the fused layer) goes through.

use candle_core::{Tensor, D};

use super::params::Ctx;
use crate::error::Result;

/// Large negative logit for padded keys (finite, so fully padded rows stay
/// finite).
const MASKED: f64 = -1e9;

/// What shapes the attention logits besides `q` and `k`.
#[derive(Debug, Clone, Copy)]
pub struct Logits<'a> {
    /// Multiplies `q kᵀ` (usually `1/sqrt(head_dim)`).
    pub scale: f64,
    /// Additive logits, `[heads, len, len]` (shared by the batch) or
    /// `[batch·heads, len, len]`.
    pub bias: Option<&'a Tensor>,
    /// `[batch, len]`, 1 for real tokens and 0 for padding (keys that are
    /// padding get no attention).
    pub pad_mask: Option<&'a Tensor>,
}

/// `softmax(q kᵀ · scale + bias + pad) v`, with dropout on the attention
/// probabilities; `q`, `k`, `v`: `[batch, heads, len, head_dim]`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    logits: Logits,
    dropout: f64,
    ctx: &mut Ctx,
) -> Result<Tensor> {
    let (b, h, l, _) = q.dims4()?;
    // Softmax statistics in f32 for bf16 activations.
    let stats = super::device::statistics_dtype(q.dtype());
    let mut scores = (q.matmul(&k.t()?)?.to_dtype(stats)? * logits.scale)?;
    if let Some(bias) = logits.bias {
        let bias = match bias.dims3()? {
            (n, _, _) if n == h => bias.unsqueeze(0)?,
            (n, _, _) if n == b * h => bias.reshape((b, h, l, l))?,
            (n, _, _) => {
                return Err(crate::Error::Tensor(format!(
                    "attention bias has {n} rows; expected heads ({h}) or batch×heads ({})",
                    b * h
                )))
            }
        };
        scores = scores.broadcast_add(&bias.to_dtype(stats)?)?;
    }
    if let Some(mask) = logits.pad_mask {
        let additive = ((mask.to_dtype(scores.dtype())? - 1.0)? * -MASKED)?;
        scores = scores.broadcast_add(&additive.reshape((b, 1, 1, l))?)?;
    }
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(v.dtype())?;
    let probs = ctx.dropout(&probs, dropout)?;
    Ok(probs.matmul(v)?)
}
