//! LayerNorm from differentiable primitives (candle's fused one has no
//! backward pass).

use candle_core::{Tensor, D};

use super::params::{Group, GroupBuilder};
use crate::error::Result;

/// `y = (x - mean) / sqrt(var + eps) * weight + bias` over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    /// Adds `{local}.weight` (ones) and `{local}.bias` (zeros) to a group.
    pub fn add(group: &mut GroupBuilder, local: &str, size: usize) {
        group.ones(&format!("{local}.weight"), &[size]);
        group.zeros(&format!("{local}.bias"), &[size]);
    }

    /// The LayerNorm whose tensors [`LayerNorm::add`] put in `group`.
    pub fn view(group: &Group, local: &str, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: group.view(&format!("{local}.weight"))?,
            bias: group.view(&format!("{local}.bias"))?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    // bf16 activations are normalised in f32 and handed on in bf16.
    let dtype = x.dtype();
    let stats = super::device::statistics_dtype(dtype);
    let x = x.to_dtype(stats)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    let y = normed
        .broadcast_mul(&weight.to_dtype(stats)?)?
        .broadcast_add(&bias.to_dtype(stats)?)?;
    Ok(y.to_dtype(dtype)?)
}
