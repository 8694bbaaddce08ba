//! BERT (Devlin et al., 2019): embeddings, encoder layers and the masked-LM
//! head, with HuggingFace tensor names.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::attention::{attention, Logits};
use super::fused::head::{draw_from_row, row_stream};
use super::fused::{Activation, EmbeddingSpec, HeadSpec, LayerLayout, LayerSpec};
use super::norm::LayerNorm;
use super::params::{Ctx, Group, GroupBuilder, Params};
use super::rotary;
use super::untied_positions::{content_scale, UntiedPositions};
use crate::config::{Kernels, ModelConfig, Norm, Position, SharedEmbeddings};
use crate::corpus::generated::Rng;
use crate::error::{Error, Result};

/// `y = x Wᵀ + b` with HF's `[out, in]` weight layout.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
}

impl Linear {
    /// Adds `{local}.weight` (N(0, std²), `[outputs, inputs]`) and
    /// `{local}.bias` (zeros) to a group.
    pub(crate) fn add(
        group: &mut GroupBuilder,
        local: &str,
        (inputs, outputs): (usize, usize),
        std: f64,
        rng: &mut Rng,
    ) {
        group.normal(&format!("{local}.weight"), &[outputs, inputs], std, rng);
        group.zeros(&format!("{local}.bias"), &[outputs]);
    }

    pub(crate) fn view(group: &Group, local: &str) -> Result<Linear> {
        Ok(Linear {
            weight: group.view(&format!("{local}.weight"))?,
            bias: group.view(&format!("{local}.bias"))?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let inputs = *dims.last().unwrap();
        let rows = x.elem_count() / inputs;
        // Mixed precision: the f32 weights are cast to the activations'
        // dtype here, and their gradients come back through the cast as f32.
        let y = x
            .reshape((rows, inputs))?
            .matmul(&self.weight.to_dtype(x.dtype())?.t()?)?
            .broadcast_add(&self.bias.to_dtype(x.dtype())?)?;
        let mut out = dims;
        *out.last_mut().unwrap() = self.bias.dim(0)?;
        Ok(y.reshape(out)?)
    }
}

/// The activation named by `model.hidden_act`.
pub(crate) fn activation_kind(cfg: &ModelConfig) -> Result<Activation> {
    Activation::from_name(&cfg.hidden_act).ok_or_else(|| {
        Error::Config(format!(
            "`model.hidden_act`: unknown activation {:?}",
            cfg.hidden_act
        ))
    })
}

/// Whether the fused kernels run a group: asked for, and on the CPU in
/// f32 or f64 without mixed precision (anything else takes the reference
/// path).
pub(crate) fn runs_fused(cfg: &ModelConfig, group: &Group) -> bool {
    cfg.kernels == Kernels::Fused
        && group.var.device().is_cpu()
        && matches!(group.var.dtype(), DType::F32 | DType::F64)
        && group.compute == group.var.dtype()
}

/// The reference path's activation: candle's ops for each [`Activation`]
/// (candle's `gelu` is the tanh form, HF's `"gelu"` the erf form).
pub(crate) fn activation(act: Activation, x: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::GeluErf => x.gelu_erf()?,
        Activation::GeluTanh => x.gelu()?,
        Activation::Relu => x.relu()?,
    })
}

/// Word, position and token-type embeddings, summed and normalised.
#[derive(Debug, Clone)]
struct Embeddings {
    word: Tensor,
    /// Absent with rotary positions.
    position: Option<Tensor>,
    token_type: Tensor,
    norm: LayerNorm,
    /// False with TUPE and rotary positions: positions enter attention instead.
    add_positions: bool,
    /// The flat group.
    group: Tensor,
    /// Set when the fused kernel runs the embeddings (dropout included).
    fused: Option<EmbeddingSpec>,
    /// The dtype the encoder computes in (its input is cast to it).
    compute: DType,
}

impl Embeddings {
    fn new(params: &mut Params, cfg: &ModelConfig, rng: &mut Rng) -> Result<Embeddings> {
        Embeddings::build(params, cfg, "bert.embeddings", cfg.hidden_size, None, rng)
    }

    /// The embeddings as group `name`, `width` wide; with `word`, that
    /// (shared) word table instead of one of their own.
    fn build(
        params: &mut Params,
        cfg: &ModelConfig,
        name: &str,
        width: usize,
        word: Option<Tensor>,
        rng: &mut Rng,
    ) -> Result<Embeddings> {
        let (h, std) = (width, cfg.initializer_range);
        let mut g = params.group(name);
        if word.is_none() {
            g.normal("word_embeddings.weight", &[cfg.vocab_size, h], std, rng);
        }
        // Rotary positions need no table (and an unused one would get no
        // gradient); TUPE reads this one in its position term.
        if cfg.position != Position::Rope {
            g.normal(
                "position_embeddings.weight",
                &[cfg.max_position_embeddings, h],
                std,
                rng,
            );
        }
        g.normal(
            "token_type_embeddings.weight",
            &[cfg.type_vocab_size, h],
            std,
            rng,
        );
        LayerNorm::add(&mut g, "LayerNorm", h);
        let g = g.finish()?;
        let add_positions = cfg.position == Position::Absolute;
        // The fused kernel reads the word table from the group itself.
        let fused = (word.is_none() && runs_fused(cfg, g))
            .then(|| {
                EmbeddingSpec::of(
                    g,
                    cfg.layer_norm_eps,
                    cfg.hidden_dropout_prob,
                    add_positions,
                    cfg.max_position_embeddings,
                )
            })
            .transpose()?;
        Ok(Embeddings {
            word: match word {
                Some(word) => word,
                None => g.view("word_embeddings.weight")?,
            },
            position: (cfg.position != Position::Rope)
                .then(|| g.view("position_embeddings.weight"))
                .transpose()?,
            token_type: g.view("token_type_embeddings.weight")?,
            norm: LayerNorm::view(g, "LayerNorm", cfg.layer_norm_eps)?,
            add_positions,
            group: g.var.as_tensor().clone(),
            fused,
            compute: g.compute,
        })
    }

    /// `ids`, `token_types`: `[batch, len]` u32.
    fn forward(&self, ids: &Tensor, token_types: Option<&Tensor>) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let h = self.word.dim(1)?;
        let words = self
            .word
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, l, h))?;
        let types = match token_types {
            Some(t) => self
                .token_type
                .index_select(&t.flatten_all()?, 0)?
                .reshape((b, l, h))?,
            None => self.token_type.narrow(0, 0, 1)?.unsqueeze(0)?,
        };
        let mut sum = words.broadcast_add(&types)?;
        if let Some(position) = self.position.as_ref().filter(|_| self.add_positions) {
            sum = sum.broadcast_add(&position.narrow(0, 0, l)?.unsqueeze(0)?)?;
        }
        self.norm.forward(&sum)
    }
}

/// One encoder layer: self-attention and feed-forward, each with a residual
/// connection and LayerNorm (after it for `post`, before it for `pre`).
///
/// Its parameters are one flat group (Q, K and V adjacent). With
/// `model.kernels = "fused"` the layer runs as one op ([`LayerSpec`]);
/// otherwise as the plain composition below, the reference.
#[derive(Debug, Clone)]
pub struct EncoderLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    ffn_in: Linear,
    ffn_out: Linear,
    ffn_norm: LayerNorm,
    heads: usize,
    /// Multiplies `q kᵀ` ([`content_scale`]).
    scale: f64,
    /// Rotary positions: queries and keys are rotated ([`rotary`]).
    rotary: bool,
    norm: Norm,
    act: Activation,
    hidden_dropout: f64,
    attn_dropout: f64,
    /// The flat parameter group.
    params: Tensor,
    /// Set when the fused kernels run this layer.
    fused: Option<LayerSpec>,
}

impl EncoderLayer {
    /// Creates the layer's parameter group `prefix` (HF names) in `params`.
    pub fn new(
        params: &mut Params,
        prefix: &str,
        cfg: &ModelConfig,
        rng: &mut Rng,
    ) -> Result<EncoderLayer> {
        let (h, f, std, eps) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.initializer_range,
            cfg.layer_norm_eps,
        );
        let mut g = params.group(prefix);
        // Q, K, V weights then their biases, adjacent: the fused kernel
        // projects all three with one product.
        for name in ["query", "key", "value"] {
            g.normal(&format!("attention.self.{name}.weight"), &[h, h], std, rng);
        }
        for name in ["query", "key", "value"] {
            g.zeros(&format!("attention.self.{name}.bias"), &[h]);
        }
        Linear::add(&mut g, "attention.output.dense", (h, h), std, rng);
        LayerNorm::add(&mut g, "attention.output.LayerNorm", h);
        Linear::add(&mut g, "intermediate.dense", (h, f), std, rng);
        Linear::add(&mut g, "output.dense", (f, h), std, rng);
        LayerNorm::add(&mut g, "output.LayerNorm", h);
        let g = g.finish()?;
        let act = activation_kind(cfg)?;
        let fused = runs_fused(cfg, g)
            .then(|| -> Result<LayerSpec> {
                Ok(LayerSpec {
                    hidden: h,
                    heads: cfg.num_attention_heads,
                    scale: content_scale(cfg),
                    rotary: cfg.position == Position::Rope,
                    ffn: f,
                    norm: cfg.norm,
                    act,
                    eps,
                    hidden_dropout: cfg.hidden_dropout_prob,
                    attn_dropout: cfg.attention_probs_dropout_prob,
                    layout: LayerLayout::of(g, h)?,
                })
            })
            .transpose()?;
        Ok(EncoderLayer {
            query: Linear::view(g, "attention.self.query")?,
            key: Linear::view(g, "attention.self.key")?,
            value: Linear::view(g, "attention.self.value")?,
            attn_out: Linear::view(g, "attention.output.dense")?,
            attn_norm: LayerNorm::view(g, "attention.output.LayerNorm", eps)?,
            ffn_in: Linear::view(g, "intermediate.dense")?,
            ffn_out: Linear::view(g, "output.dense")?,
            ffn_norm: LayerNorm::view(g, "output.LayerNorm", eps)?,
            heads: cfg.num_attention_heads,
            scale: content_scale(cfg),
            rotary: cfg.position == Position::Rope,
            norm: cfg.norm,
            act,
            hidden_dropout: cfg.hidden_dropout_prob,
            attn_dropout: cfg.attention_probs_dropout_prob,
            params: g.var.as_tensor().clone(),
            fused,
        })
    }

    /// The flat parameter group.
    pub fn params(&self) -> &Tensor {
        &self.params
    }

    /// True when this layer runs on the fused kernels.
    pub fn is_fused(&self) -> bool {
        self.fused.is_some()
    }

    fn self_attention(
        &self,
        x: &Tensor,
        bias: Option<&Tensor>,
        pad_mask: Option<&Tensor>,
        ctx: &mut Ctx,
    ) -> Result<Tensor> {
        let (b, l, h) = x.dims3()?;
        let d = h / self.heads;
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, l, self.heads, d))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let mut q = split(self.query.forward(x)?)?;
        let mut k = split(self.key.forward(x)?)?;
        if self.rotary {
            (q, k) = (rotary::apply(&q)?, rotary::apply(&k)?);
        }
        let v = split(self.value.forward(x)?)?;
        let logits = Logits {
            scale: self.scale,
            bias,
            pad_mask,
        };
        let context = attention(&q, &k, &v, logits, self.attn_dropout, ctx)?;
        let context = context.transpose(1, 2)?.contiguous()?.reshape((b, l, h))?;
        ctx.dropout(&self.attn_out.forward(&context)?, self.hidden_dropout)
    }

    fn feed_forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let inner = activation(self.act, &self.ffn_in.forward(x)?)?;
        ctx.dropout(&self.ffn_out.forward(&inner)?, self.hidden_dropout)
    }

    /// Hidden states `[batch, len, hidden]` → hidden states. `bias` and
    /// `pad_mask` are as in [`attention`].
    pub fn forward(
        &self,
        x: &Tensor,
        bias: Option<&Tensor>,
        pad_mask: Option<&Tensor>,
        ctx: &mut Ctx,
    ) -> Result<Tensor> {
        self.forward_active(x, bias, pad_mask, None, ctx)
    }

    /// As [`EncoderLayer::forward`], updating only the `active` tokens
    /// (early exit; all of them when `None`): the others are carried
    /// unchanged and still serve as keys and values. The fused kernel
    /// computes the query side on the active rows alone; the reference
    /// computes the whole layer and keeps the active rows of its output.
    pub fn forward_active(
        &self,
        x: &Tensor,
        bias: Option<&Tensor>,
        pad_mask: Option<&Tensor>,
        active: Option<&Active>,
        ctx: &mut Ctx,
    ) -> Result<Tensor> {
        let rows = active.map(|a| a.rows());
        match (&self.fused, active) {
            (Some(spec), _) => spec.forward(x, &self.params, bias, pad_mask, rows, ctx),
            (None, None) => self.reference_forward(x, bias, pad_mask, ctx),
            (None, Some(active)) => {
                let updated = self.reference_forward(x, bias, pad_mask, ctx)?;
                let keep = active.mask.broadcast_as(updated.shape())?;
                Ok(keep.where_cond(&updated, x)?)
            }
        }
    }

    /// The plain composition of candle ops (the fused kernel's reference).
    pub fn reference_forward(
        &self,
        x: &Tensor,
        bias: Option<&Tensor>,
        pad_mask: Option<&Tensor>,
        ctx: &mut Ctx,
    ) -> Result<Tensor> {
        match self.norm {
            Norm::Post => {
                let x = self
                    .attn_norm
                    .forward(&(x + self.self_attention(x, bias, pad_mask, ctx)?)?)?;
                self.ffn_norm.forward(&(&x + self.feed_forward(&x, ctx)?)?)
            }
            Norm::Pre => {
                let x =
                    (x + self.self_attention(&self.attn_norm.forward(x)?, bias, pad_mask, ctx)?)?;
                Ok((&x + self.feed_forward(&self.ffn_norm.forward(&x)?, ctx)?)?)
            }
        }
    }
}

/// A change to the input embeddings before the first layer:
/// `x ← x ⊙ keep + add`, with `keep` `[batch, len, 1]` and `add`
/// `[batch, len, hidden]` (TNF mixes its notes in this way).
#[derive(Debug, Clone)]
pub struct InputMix {
    pub keep: Tensor,
    pub add: Tensor,
}

/// Early exit: the tokens the next layers still update, as rows of the
/// flattened `[batch·len]` batch, increasing.
#[derive(Debug, Clone)]
pub struct Active {
    rows: Vec<u32>,
    /// 1 at the active tokens, `[batch, len, 1]` u8 (the reference path's
    /// selection).
    mask: Tensor,
}

impl Active {
    /// The active `rows` of a `(batch, len)` batch.
    pub fn new(
        rows: Vec<u32>,
        (batch, len): (usize, usize),
        device: &candle_core::Device,
    ) -> Result<Active> {
        let mut mask = vec![0u8; batch * len];
        for &r in &rows {
            *mask.get_mut(r as usize).ok_or_else(|| {
                Error::Tensor(format!("active row {r} is outside a {batch}×{len} batch"))
            })? = 1;
        }
        let mask = Tensor::from_vec(mask, (batch, len, 1), device)?;
        Ok(Active { rows, mask })
    }

    /// The active rows, increasing.
    pub fn rows(&self) -> &[u32] {
        &self.rows
    }
}

/// What [`Bert::forward_exiting`] asks after each layer: given the layer's
/// index (from 0), its output and the tokens it updated (`None`: all), the
/// tokens the following layers update (`None`: the same).
pub type ExitDecision<'a> =
    dyn FnMut(usize, &Tensor, Option<&Active>) -> Result<Option<Active>> + 'a;

/// The BERT encoder.
#[derive(Debug, Clone)]
pub struct Bert {
    embeddings: Embeddings,
    /// A generator sharing a wider model's embeddings: their projection to
    /// this encoder's width (`{prefix}.embeddings_project`, as HF ELECTRA).
    project: Option<Linear>,
    /// TUPE's position term (`model.position = "tupe-a" | "tupe-r"`).
    positions: Option<UntiedPositions>,
    pub layers: Vec<EncoderLayer>,
    /// Pre-LN only: the LayerNorm after the last layer (a brisk-only tensor,
    /// `bert.encoder.LayerNorm`).
    final_norm: Option<LayerNorm>,
    hidden_dropout: f64,
}

impl Bert {
    /// BERT with its own embeddings, tensors named `bert.*`.
    pub fn new(params: &mut Params, cfg: &ModelConfig, rng: &mut Rng) -> Result<Bert> {
        let embeddings = Embeddings::new(params, cfg, rng)?;
        Bert::build(params, cfg, "bert", embeddings, rng)
    }

    /// An encoder (`cfg`, tensors named `{prefix}.*`) that reads the
    /// embeddings of `other`: the same tensors, so a step moves both
    /// models' views. `share` says which: all of them (HF ELECTRA's
    /// layout), or the word table alone, with position and type embeddings
    /// and their LayerNorm of its own (`{prefix}.embeddings.*`, MC-BERT's
    /// code). When the widths differ, the embeddings are projected to
    /// `cfg.hidden_size`. With TUPE it has its own position projections
    /// over the (shared or own) position table.
    pub fn sharing_embeddings(
        params: &mut Params,
        cfg: &ModelConfig,
        prefix: &str,
        other: &Bert,
        share: SharedEmbeddings,
        rng: &mut Rng,
    ) -> Result<Bert> {
        let embeddings = match share {
            SharedEmbeddings::All => other.embeddings.clone(),
            SharedEmbeddings::Words => Embeddings::build(
                params,
                cfg,
                &format!("{prefix}.embeddings"),
                other.embeddings.word.dim(1)?,
                Some(other.embeddings.word.clone()),
                rng,
            )?,
        };
        let mut bert = Bert::build(params, cfg, prefix, embeddings, rng)?;
        let width = other.embeddings.word.dim(1)?;
        if width != cfg.hidden_size {
            let mut g = params.group(&format!("{prefix}.embeddings_project"));
            g.normal(
                "weight",
                &[cfg.hidden_size, width],
                cfg.initializer_range,
                rng,
            );
            g.zeros("bias", &[cfg.hidden_size]);
            let g = g.finish()?;
            bert.project = Some(Linear {
                weight: g.view("weight")?,
                bias: g.view("bias")?,
            });
        }
        Ok(bert)
    }

    fn build(
        params: &mut Params,
        cfg: &ModelConfig,
        prefix: &str,
        embeddings: Embeddings,
        rng: &mut Rng,
    ) -> Result<Bert> {
        let positions = match cfg.position {
            Position::Absolute | Position::Rope => None,
            Position::TupeA | Position::TupeR => Some(UntiedPositions::new(
                params,
                cfg,
                &format!("{prefix}.encoder.tupe"),
                embeddings
                    .position
                    .clone()
                    .expect("TUPE models have a position table"),
                rng,
            )?),
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(params, &format!("{prefix}.encoder.layer.{i}"), cfg, rng))
            .collect::<Result<_>>()?;
        let final_norm = match cfg.norm {
            Norm::Pre => {
                let mut g = params.group(&format!("{prefix}.encoder.LayerNorm"));
                g.ones("weight", &[cfg.hidden_size]);
                g.zeros("bias", &[cfg.hidden_size]);
                let g = g.finish()?;
                Some(LayerNorm {
                    weight: g.view("weight")?,
                    bias: g.view("bias")?,
                    eps: cfg.layer_norm_eps,
                })
            }
            Norm::Post => None,
        };
        Ok(Bert {
            embeddings,
            project: None,
            positions,
            layers,
            final_norm,
            hidden_dropout: cfg.hidden_dropout_prob,
        })
    }

    /// The device the encoder's weights are on.
    pub fn device(&self) -> &candle_core::Device {
        self.embeddings.group.device()
    }

    /// The embeddings' flat group (the fused heads write the decoder's
    /// gradient into its word block).
    pub fn embedding_group(&self) -> &Tensor {
        &self.embeddings.group
    }

    /// The fused embeddings' layout, when they run fused.
    pub fn fused_embeddings(&self) -> Option<&EmbeddingSpec> {
        self.embeddings.fused.as_ref()
    }

    /// The word-embedding matrix `[vocab, hidden]` (tied to the MLM decoder).
    pub fn word_embeddings(&self) -> &Tensor {
        &self.embeddings.word
    }

    /// TUPE's position term for `len`-token sequences, `[heads, len, len]`;
    /// `None` with absolute positions.
    pub fn position_bias(&self, len: usize) -> Result<Option<Tensor>> {
        self.positions.as_ref().map(|p| p.bias(len)).transpose()
    }

    /// `ids`: `[batch, len]` u32; `pad_mask`: `[batch, len]`, 1 for tokens;
    /// `mix`: an optional change to the input embeddings ([`InputMix`]).
    pub fn forward(
        &self,
        ids: &Tensor,
        token_types: Option<&Tensor>,
        pad_mask: Option<&Tensor>,
        mix: Option<&InputMix>,
        ctx: &mut Ctx,
    ) -> Result<Tensor> {
        self.run(ids, token_types, pad_mask, mix, None, ctx)
    }

    /// Every layer's output `[batch, len, hidden]`, in order (the last one
    /// through the final LayerNorm, with pre-LN), for features that mix
    /// layers.
    pub fn forward_layers(
        &self,
        ids: &Tensor,
        token_types: Option<&Tensor>,
        pad_mask: Option<&Tensor>,
        ctx: &mut Ctx,
    ) -> Result<Vec<Tensor>> {
        let mut outputs = Vec::with_capacity(self.layers.len());
        let last = {
            let mut keep = |_: usize, x: &Tensor, _: Option<&Active>| {
                outputs.push(x.clone());
                Ok(None)
            };
            self.run(ids, token_types, pad_mask, None, Some(&mut keep), ctx)?
        };
        if let Some(l) = outputs.last_mut() {
            *l = last;
        }
        Ok(outputs)
    }

    /// The encoder with early exit (pre-training: no padding, one segment):
    /// after each layer `exit` may shrink the set of tokens the following
    /// layers update ([`ExitDecision`]). The tokens that left keep their
    /// hidden state to the end (through the final LayerNorm, with pre-LN).
    pub fn forward_exiting(
        &self,
        ids: &Tensor,
        mix: Option<&InputMix>,
        exit: &mut ExitDecision,
        ctx: &mut Ctx,
    ) -> Result<Tensor> {
        self.run(ids, None, None, mix, Some(exit), ctx)
    }

    fn run(
        &self,
        ids: &Tensor,
        token_types: Option<&Tensor>,
        pad_mask: Option<&Tensor>,
        mix: Option<&InputMix>,
        mut exit: Option<&mut ExitDecision>,
        ctx: &mut Ctx,
    ) -> Result<Tensor> {
        let emb = &self.embeddings;
        let mut x = match &emb.fused {
            Some(spec) => spec.forward(&emb.group, ids, token_types, ctx)?,
            None => {
                let x = emb.forward(ids, token_types)?.to_dtype(emb.compute)?;
                ctx.dropout(&x, self.hidden_dropout)?
            }
        };
        if let Some(mix) = mix {
            let like = |t: &Tensor| t.to_dtype(x.dtype());
            x = x.broadcast_mul(&like(&mix.keep)?)?.add(&like(&mix.add)?)?;
        }
        if let Some(project) = &self.project {
            x = project.forward(&x)?;
        }
        // Computed once, shared by every layer and broadcast over the batch.
        let bias = self.position_bias(ids.dim(1)?)?;
        let mut active: Option<Active> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward_active(&x, bias.as_ref(), pad_mask, active.as_ref(), ctx)?;
            if let Some(exit) = exit.as_deref_mut() {
                if let Some(next) = exit(i, &x, active.as_ref())? {
                    active = Some(next);
                }
            }
        }
        match &self.final_norm {
            Some(norm) => norm.forward(&x),
            None => Ok(x),
        }
    }
}

/// The masked-LM head: dense, activation, LayerNorm, then a decoder tied to
/// the word embeddings plus a bias. Computed only at the rows asked for.
#[derive(Debug, Clone)]
pub struct MlmHead {
    transform: Linear,
    norm: LayerNorm,
    bias: Tensor,
    act: Activation,
    /// The flat group.
    group: Tensor,
    /// Set when the fused kernel computes the head and its loss.
    fused: Option<HeadSpec>,
}

impl MlmHead {
    /// The head for `bert`, whose word embeddings its decoder is tied to.
    pub fn new(
        params: &mut Params,
        cfg: &ModelConfig,
        bert: &Bert,
        rng: &mut Rng,
    ) -> Result<MlmHead> {
        MlmHead::named(params, "cls.predictions", cfg, bert, rng)
    }

    /// The head as group `prefix`, for an encoder of `cfg`'s width whose
    /// (possibly wider, shared) word embeddings its decoder is tied to: the
    /// transform maps the encoder's width to the embeddings' (ELECTRA's
    /// generator).
    pub fn named(
        params: &mut Params,
        prefix: &str,
        cfg: &ModelConfig,
        bert: &Bert,
        rng: &mut Rng,
    ) -> Result<MlmHead> {
        let (h, e) = (cfg.hidden_size, bert.embeddings.word.dim(1)?);
        let mut g = params.group(prefix);
        Linear::add(
            &mut g,
            "transform.dense",
            (h, e),
            cfg.initializer_range,
            rng,
        );
        LayerNorm::add(&mut g, "transform.LayerNorm", e);
        g.zeros("bias", &[cfg.vocab_size]);
        let g = g.finish()?;
        let act = activation_kind(cfg)?;
        let fused = match (&bert.embeddings.fused, runs_fused(cfg, g)) {
            (Some(embeddings), true) => Some(HeadSpec::of(g, embeddings, act, cfg.layer_norm_eps)?),
            _ => None,
        };
        Ok(MlmHead {
            transform: Linear::view(g, "transform.dense")?,
            norm: LayerNorm::view(g, "transform.LayerNorm", cfg.layer_norm_eps)?,
            bias: g.view("bias")?,
            act,
            group: g.var.as_tensor().clone(),
            fused,
        })
    }

    /// `hidden`: `[batch, len, hidden]`; `rows`: u32 indices into the
    /// flattened `batch·len` positions. Returns logits `[rows, vocab]`.
    pub fn forward(
        &self,
        hidden: &Tensor,
        rows: &Tensor,
        word_embeddings: &Tensor,
    ) -> Result<Tensor> {
        let h = hidden.dim(2)?;
        let picked = hidden.reshape(((), h))?.index_select(rows, 0)?;
        let t = self
            .norm
            .forward(&activation(self.act, &self.transform.forward(&picked)?)?)?;
        let decoder = word_embeddings.to_dtype(t.dtype())?;
        Ok(t.matmul(&decoder.t()?)?
            .broadcast_add(&self.bias.to_dtype(t.dtype())?)?)
    }

    /// Mean cross-entropy of `targets` (one per row) at the flattened
    /// positions `rows` of `hidden`, through the decoder tied to `tied`'s
    /// word embeddings; with `sample`, also one draw per row from the
    /// head's softmax (no gradient; row `i` reads
    /// [`row_stream`]`(sample, i)`). On the fused kernel when the model
    /// runs fused, else [`MlmHead::reference_loss`].
    pub fn loss(
        &self,
        hidden: &Tensor,
        tied: &Bert,
        (rows, targets): (&Tensor, &Tensor),
        sample: Option<u64>,
    ) -> Result<(Tensor, Option<Vec<u32>>)> {
        match &self.fused {
            Some(spec) => spec.loss(
                hidden,
                &self.group,
                &tied.embeddings.group,
                (rows, targets),
                sample,
            ),
            None => self.reference_loss(hidden, tied, (rows, targets), sample),
        }
    }

    /// `f(i, logits of row i)` for every position of `hidden` (no
    /// gradient), through the decoder tied to `tied`'s word embeddings; on
    /// the fused kernel a block of rows at a time.
    pub fn visit_rows<R: Send>(
        &self,
        hidden: &Tensor,
        tied: &Bert,
        f: &(dyn Fn(usize, &[f32]) -> R + Sync),
    ) -> Result<Vec<R>> {
        match &self.fused {
            Some(spec) => spec.visit_rows(hidden, &self.group, &tied.embeddings.group, f),
            None => self.reference_visit_rows(hidden, tied, f),
        }
    }

    /// [`MlmHead::visit_rows`] through candle's ops (the whole logits
    /// matrix at once).
    pub fn reference_visit_rows<R: Send>(
        &self,
        hidden: &Tensor,
        tied: &Bert,
        f: &(dyn Fn(usize, &[f32]) -> R + Sync),
    ) -> Result<Vec<R>> {
        let n = hidden.elem_count() / hidden.dim(hidden.rank() - 1)?;
        let every = Tensor::from_vec((0..n as u32).collect(), n, hidden.device())?;
        let logits = self.forward(&hidden.detach(), &every, &tied.word_embeddings().detach())?;
        let rows: Vec<Vec<f32>> = logits.to_dtype(DType::F32)?.to_vec2()?;
        Ok(rows
            .par_iter()
            .enumerate()
            .map(|(i, row)| f(i, row))
            .collect())
    }

    /// True when the fused kernel computes the head and its loss.
    pub fn is_fused(&self) -> bool {
        self.fused.is_some()
    }

    /// [`MlmHead::loss`] through candle's ops (the fused head's reference).
    pub fn reference_loss(
        &self,
        hidden: &Tensor,
        tied: &Bert,
        (rows, targets): (&Tensor, &Tensor),
        sample: Option<u64>,
    ) -> Result<(Tensor, Option<Vec<u32>>)> {
        let logits = self.forward(hidden, rows, tied.word_embeddings())?;
        let loss = candle_nn::loss::cross_entropy(&logits.to_dtype(DType::F32)?, targets)?;
        let samples = sample
            .map(|seed| -> Result<Vec<u32>> {
                if !logits.device().is_cpu() {
                    // Drawn on the device: only the draws cross to the host.
                    return Ok(super::device::gumbel_argmax(&logits, seed)?.to_vec1()?);
                }
                let probs = candle_nn::ops::softmax_last_dim(&logits.detach())?;
                let rows: Vec<Vec<f32>> = probs.to_dtype(DType::F32)?.to_vec2()?;
                Ok(rows
                    .iter()
                    .enumerate()
                    .map(|(i, row)| draw_from_row(row, row_stream(seed, i).unit()))
                    .collect())
            })
            .transpose()?;
        Ok((loss, samples))
    }
}

/// BERT with its masked-LM head, as HF's `BertForMaskedLM`.
#[derive(Debug, Clone)]
pub struct BertForMaskedLm {
    pub bert: Bert,
    pub head: MlmHead,
}

impl BertForMaskedLm {
    /// A freshly initialised model: weights N(0, initializer_range²), biases
    /// 0, LayerNorm 1/0; drawn from `seed` so the same seed gives the same model.
    pub fn new(cfg: &ModelConfig, params: &mut Params, seed: u64) -> Result<BertForMaskedLm> {
        let mut rng = Rng::new(seed);
        let bert = Bert::new(params, cfg, &mut rng)?;
        let head = MlmHead::new(params, cfg, &bert, &mut rng)?;
        Ok(BertForMaskedLm { bert, head })
    }

    /// Logits `[rows, vocab]` at the given flattened positions.
    pub fn forward(
        &self,
        ids: &Tensor,
        pad_mask: Option<&Tensor>,
        rows: &Tensor,
        ctx: &mut Ctx,
    ) -> Result<Tensor> {
        let hidden = self.bert.forward(ids, None, pad_mask, None, ctx)?;
        self.head
            .forward(&hidden, rows, self.bert.word_embeddings())
    }

    /// Mean cross-entropy of `targets` (u32, one per row).
    pub fn loss(
        &self,
        ids: &Tensor,
        pad_mask: Option<&Tensor>,
        rows: &Tensor,
        targets: &Tensor,
        ctx: &mut Ctx,
    ) -> Result<Tensor> {
        Ok(self
            .loss_and_hidden(ids, pad_mask, None, rows, targets, ctx)?
            .0)
    }

    /// [`BertForMaskedLm::loss`] with an optional change to the input
    /// embeddings, also returning the last hidden states `[batch, len,
    /// hidden]` (TNF takes its notes from them).
    pub fn loss_and_hidden(
        &self,
        ids: &Tensor,
        pad_mask: Option<&Tensor>,
        mix: Option<&InputMix>,
        rows: &Tensor,
        targets: &Tensor,
        ctx: &mut Ctx,
    ) -> Result<(Tensor, Tensor)> {
        let hidden = self.bert.forward(ids, None, pad_mask, mix, ctx)?;
        let (loss, _) = self.head.loss(&hidden, &self.bert, (rows, targets), None)?;
        Ok((loss, hidden))
    }

    /// [`BertForMaskedLm::loss`] through candle's ops (the head's reference).
    pub fn reference_loss(
        &self,
        ids: &Tensor,
        pad_mask: Option<&Tensor>,
        rows: &Tensor,
        targets: &Tensor,
        ctx: &mut Ctx,
    ) -> Result<Tensor> {
        let logits = self.forward(ids, pad_mask, rows, ctx)?;
        Ok(candle_nn::loss::cross_entropy(
            &logits.to_dtype(DType::F32)?,
            targets,
        )?)
    }

    /// True when every part of the model runs on the fused kernels.
    pub fn is_fused(&self) -> bool {
        self.head.fused.is_some()
            && self.bert.embeddings.fused.is_some()
            && self.bert.layers.iter().all(EncoderLayer::is_fused)
    }
}
