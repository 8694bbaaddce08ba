//! Embeddings as one op: word + position + token-type look-ups, LayerNorm
//! and dropout forward; the backward scatters straight into the flat
//! embedding group (no `[vocab, hidden]` zero tensor per look-up, no
//! padding of views back to the group's size).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use super::kernels::{
    apply_mask, layer_norm, layer_norm_backward, masked, two_mut, with_slices, zeros, Float,
    Normed, Stash,
};
use crate::error::{Error, Result};
use crate::model::params::{Ctx, Group};

/// Where the embedding tables sit in the flat group, and the sizes.
#[derive(Debug, Clone)]
pub struct EmbeddingSpec {
    hidden: usize,
    vocab: usize,
    positions: usize,
    types: usize,
    word: usize,
    position: usize,
    token_type: usize,
    norm_g: usize,
    norm_b: usize,
    eps: f64,
    dropout: f64,
    /// False with TUPE and rotary positions, which enter attention instead.
    add_positions: bool,
}

impl EmbeddingSpec {
    /// Reads the layout of a `bert.embeddings` group (whose position table
    /// is read only when `add_positions`) for sequences of at most
    /// `max_positions` tokens.
    pub fn of(
        group: &Group,
        eps: f64,
        dropout: f64,
        add_positions: bool,
        max_positions: usize,
    ) -> Result<EmbeddingSpec> {
        let word = group.entry("word_embeddings.weight")?;
        let position = match add_positions {
            true => group.entry("position_embeddings.weight")?.offset,
            false => 0,
        };
        let token_type = group.entry("token_type_embeddings.weight")?;
        Ok(EmbeddingSpec {
            hidden: word.shape[1],
            vocab: word.shape[0],
            positions: max_positions,
            types: token_type.shape[0],
            word: word.offset,
            position,
            token_type: token_type.offset,
            norm_g: group.entry("LayerNorm.weight")?.offset,
            norm_b: group.entry("LayerNorm.bias")?.offset,
            eps,
            dropout,
            add_positions,
        })
    }

    /// Offset of the word embeddings in their group.
    pub fn word_offset(&self) -> usize {
        self.word
    }

    /// `ids`, `token_types`: `[batch, len]` u32 → `[batch, len, hidden]`,
    /// normalised, with dropout drawn from `ctx`.
    pub fn forward(
        &self,
        group: &Tensor,
        ids: &Tensor,
        token_types: Option<&Tensor>,
        ctx: &mut Ctx,
    ) -> Result<Tensor> {
        let (batch, len) = ids.dims2()?;
        if len > self.positions {
            return Err(Error::Tensor(format!(
                "sequences of {len} tokens; the model has {} positions",
                self.positions
            )));
        }
        let ids: Vec<u32> = ids.flatten_all()?.to_vec1()?;
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.vocab) {
            return Err(Error::Tensor(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.vocab
            )));
        }
        let types: Vec<u32> = match token_types {
            Some(t) => t.flatten_all()?.to_vec1()?,
            None => vec![0; ids.len()],
        };
        if let Some(bad) = types.iter().find(|&&t| t as usize >= self.types) {
            return Err(Error::Tensor(format!(
                "token type {bad} is outside the {} types",
                self.types
            )));
        }
        let op = EmbeddingOp {
            spec: self.clone(),
            batch,
            len,
            mask: ctx.dropout_mask(batch * len * self.hidden, self.dropout),
            ids,
            types,
            keep: group.track_op(),
            saved: Stash::default(),
        };
        Ok(group.contiguous()?.apply_op1(op)?)
    }
}

struct EmbeddingOp {
    spec: EmbeddingSpec,
    batch: usize,
    len: usize,
    ids: Vec<u32>,
    types: Vec<u32>,
    mask: Option<Vec<f32>>,
    keep: bool,
    saved: Stash,
}

impl EmbeddingOp {
    fn forward<T: Float>(&self, p: &[T]) -> Vec<T> {
        let (h, s) = (self.spec.hidden, &self.spec);
        let mut sum = zeros::<T>(self.ids.len() * h);
        for (r, row) in sum.chunks_mut(h).enumerate() {
            let w = s.word + self.ids[r] as usize * h;
            let ty = s.token_type + self.types[r] as usize * h;
            for j in 0..h {
                row[j] = p[w + j] + p[ty + j];
            }
            if s.add_positions {
                let pos = s.position + (r % self.len) * h;
                for j in 0..h {
                    row[j] += p[pos + j];
                }
            }
        }
        let (g, b) = (&p[s.norm_g..s.norm_g + h], &p[s.norm_b..s.norm_b + h]);
        let (mut y, normed) = layer_norm(&sum, g, b, s.eps);
        apply_mask(&mut y, self.mask.as_deref());
        if self.keep {
            self.saved.put(normed);
        }
        y
    }

    fn backward<T: Float>(&self, p: &[T], dy: &[T]) -> candle_core::Result<Vec<T>> {
        let normed = self.saved.take::<Normed<T>>("fused embeddings")?;
        let (h, s) = (self.spec.hidden, &self.spec);
        let d = masked(dy, self.mask.as_deref());
        let mut d_sum = zeros::<T>(d.len());
        let mut dp = zeros::<T>(p.len());
        let (dg, db) = two_mut(&mut dp, ((s.norm_g, h), (s.norm_b, h)));
        let g = &p[s.norm_g..s.norm_g + h];
        layer_norm_backward(&d, &normed, g, &mut d_sum, dg, db);
        for (r, row) in d_sum.chunks(h).enumerate() {
            let w = s.word + self.ids[r] as usize * h;
            let ty = s.token_type + self.types[r] as usize * h;
            for (j, v) in row.iter().enumerate() {
                dp[w + j] += *v;
                dp[ty + j] += *v;
            }
            if s.add_positions {
                let pos = s.position + (r % self.len) * h;
                for (j, v) in row.iter().enumerate() {
                    dp[pos + j] += *v;
                }
            }
        }
        Ok(dp)
    }
}

impl CustomOp1 for EmbeddingOp {
    fn name(&self) -> &'static str {
        "fused-embeddings"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let shape = Shape::from((self.batch, self.len, self.spec.hidden));
        crate::profile::time("embeddings forward", || {
            Ok(match s.dtype() {
                DType::F32 => (f32::storage(self.forward(f32::slice(s, l)?)), shape),
                DType::F64 => (f64::storage(self.forward(f64::slice(s, l)?)), shape),
                other => candle_core::bail!("fused embeddings: no kernel for {other:?}"),
            })
        })
    }

    fn bwd(&self, p: &Tensor, _res: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dy = dy.contiguous()?;
        let dp = crate::profile::time("embeddings backward", || match p.dtype() {
            DType::F32 => Tensor::new(
                with_slices::<f32, _>(&[p, &dy], |s| self.backward(s[0], s[1]))?,
                p.device(),
            ),
            DType::F64 => Tensor::new(
                with_slices::<f64, _>(&[p, &dy], |s| self.backward(s[0], s[1]))?,
                p.device(),
            ),
            other => candle_core::bail!("fused embeddings: no kernel for {other:?}"),
        })?;
        Ok(Some(dp))
    }
}
