//! BERT (Devlin et al., 2019): embeddings, encoder layers and the masked-LM
//! head, with HuggingFace tensor names.

use candle_core::{DType, Tensor};

use super::attention::{attention, Logits};
use super::norm::LayerNorm;
use super::params::{Ctx, Params};
use crate::config::{ModelConfig, Norm, Position};
use crate::corpus::generated::Rng;
use crate::error::{Error, Result};

/// `y = x Wᵀ + b` with HF's `[out, in]` weight layout.
#[derive(Debug, Clone)]
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(
        params: &mut Params,
        prefix: &str,
        inputs: usize,
        outputs: usize,
        std: f64,
        rng: &mut Rng,
    ) -> Result<Linear> {
        Ok(Linear {
            weight: params.normal(&format!("{prefix}.weight"), &[outputs, inputs], std, rng)?,
            bias: params.zeros(&format!("{prefix}.bias"), &[outputs])?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let inputs = *dims.last().unwrap();
        let rows = x.elem_count() / inputs;
        let y = x
            .reshape((rows, inputs))?
            .matmul(&self.weight.t()?)?
            .broadcast_add(&self.bias)?;
        let mut out = dims;
        *out.last_mut().unwrap() = self.bias.dim(0)?;
        Ok(y.reshape(out)?)
    }
}

fn activation(name: &str, x: &Tensor) -> Result<Tensor> {
    Ok(match name {
        "gelu" => x.gelu_erf()?,
        "gelu_new" => x.gelu()?,
        "relu" => x.relu()?,
        other => {
            return Err(Error::Config(format!(
                "`model.hidden_act`: unknown activation {other:?}"
            )))
        }
    })
}

/// Word, position and token-type embeddings, summed and normalised.
#[derive(Debug, Clone)]
struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
}

impl Embeddings {
    fn new(params: &mut Params, cfg: &ModelConfig, rng: &mut Rng) -> Result<Embeddings> {
        let (h, std) = (cfg.hidden_size, cfg.initializer_range);
        Ok(Embeddings {
            word: params.normal(
                "bert.embeddings.word_embeddings.weight",
                &[cfg.vocab_size, h],
                std,
                rng,
            )?,
            position: params.normal(
                "bert.embeddings.position_embeddings.weight",
                &[cfg.max_position_embeddings, h],
                std,
                rng,
            )?,
            token_type: params.normal(
                "bert.embeddings.token_type_embeddings.weight",
                &[cfg.type_vocab_size, h],
                std,
                rng,
            )?,
            norm: LayerNorm::new(params, "bert.embeddings.LayerNorm", h, cfg.layer_norm_eps)?,
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
        let positions = self.position.narrow(0, 0, l)?.unsqueeze(0)?;
        let types = match token_types {
            Some(t) => self
                .token_type
                .index_select(&t.flatten_all()?, 0)?
                .reshape((b, l, h))?,
            None => self.token_type.narrow(0, 0, 1)?.unsqueeze(0)?,
        };
        self.norm
            .forward(&words.broadcast_add(&positions)?.broadcast_add(&types)?)
    }
}

/// One encoder layer: self-attention and feed-forward, each with a residual
/// connection and LayerNorm (after it for `post`, before it for `pre`).
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
    norm: Norm,
    act: String,
    hidden_dropout: f64,
    attn_dropout: f64,
}

impl EncoderLayer {
    fn new(
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
        let mut linear = |name: &str, i, o, rng: &mut Rng| {
            Linear::new(params, &format!("{prefix}.{name}"), i, o, std, rng)
        };
        let query = linear("attention.self.query", h, h, rng)?;
        let key = linear("attention.self.key", h, h, rng)?;
        let value = linear("attention.self.value", h, h, rng)?;
        let attn_out = linear("attention.output.dense", h, h, rng)?;
        let ffn_in = linear("intermediate.dense", h, f, rng)?;
        let ffn_out = linear("output.dense", f, h, rng)?;
        Ok(EncoderLayer {
            query,
            key,
            value,
            attn_out,
            attn_norm: LayerNorm::new(
                params,
                &format!("{prefix}.attention.output.LayerNorm"),
                h,
                eps,
            )?,
            ffn_in,
            ffn_out,
            ffn_norm: LayerNorm::new(params, &format!("{prefix}.output.LayerNorm"), h, eps)?,
            heads: cfg.num_attention_heads,
            norm: cfg.norm,
            act: cfg.hidden_act.clone(),
            hidden_dropout: cfg.hidden_dropout_prob,
            attn_dropout: cfg.attention_probs_dropout_prob,
        })
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
        let q = split(self.query.forward(x)?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let scale = 1.0 / (d as f64).sqrt();
        let logits = Logits {
            scale,
            bias,
            pad_mask,
        };
        let context = attention(&q, &k, &v, logits, self.attn_dropout, ctx)?;
        let context = context.transpose(1, 2)?.contiguous()?.reshape((b, l, h))?;
        ctx.dropout(&self.attn_out.forward(&context)?, self.hidden_dropout)
    }

    fn feed_forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let inner = activation(&self.act, &self.ffn_in.forward(x)?)?;
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

/// The BERT encoder.
#[derive(Debug, Clone)]
pub struct Bert {
    embeddings: Embeddings,
    pub layers: Vec<EncoderLayer>,
    /// Pre-LN only: the LayerNorm after the last layer (a brisk-only tensor,
    /// `bert.encoder.LayerNorm`).
    final_norm: Option<LayerNorm>,
    hidden_dropout: f64,
}

impl Bert {
    pub fn new(params: &mut Params, cfg: &ModelConfig, rng: &mut Rng) -> Result<Bert> {
        if cfg.position != Position::Absolute {
            return Err(Error::Config(format!(
                "`model.position`: {:?} is not available yet (only \"absolute\")",
                cfg.position
            )));
        }
        let embeddings = Embeddings::new(params, cfg, rng)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(params, &format!("bert.encoder.layer.{i}"), cfg, rng))
            .collect::<Result<_>>()?;
        let final_norm = match cfg.norm {
            Norm::Pre => Some(LayerNorm::new(
                params,
                "bert.encoder.LayerNorm",
                cfg.hidden_size,
                cfg.layer_norm_eps,
            )?),
            Norm::Post => None,
        };
        Ok(Bert {
            embeddings,
            layers,
            final_norm,
            hidden_dropout: cfg.hidden_dropout_prob,
        })
    }

    /// The word-embedding matrix `[vocab, hidden]` (tied to the MLM decoder).
    pub fn word_embeddings(&self) -> &Tensor {
        &self.embeddings.word
    }

    /// `ids`: `[batch, len]` u32; `pad_mask`: `[batch, len]`, 1 for tokens.
    pub fn forward(
        &self,
        ids: &Tensor,
        token_types: Option<&Tensor>,
        pad_mask: Option<&Tensor>,
        bias: Option<&Tensor>,
        ctx: &mut Ctx,
    ) -> Result<Tensor> {
        let mut x = ctx.dropout(
            &self.embeddings.forward(ids, token_types)?,
            self.hidden_dropout,
        )?;
        for layer in &self.layers {
            x = layer.forward(&x, bias, pad_mask, ctx)?;
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
    act: String,
}

impl MlmHead {
    pub fn new(params: &mut Params, cfg: &ModelConfig, rng: &mut Rng) -> Result<MlmHead> {
        let h = cfg.hidden_size;
        Ok(MlmHead {
            transform: Linear::new(
                params,
                "cls.predictions.transform.dense",
                h,
                h,
                cfg.initializer_range,
                rng,
            )?,
            norm: LayerNorm::new(
                params,
                "cls.predictions.transform.LayerNorm",
                h,
                cfg.layer_norm_eps,
            )?,
            bias: params.zeros("cls.predictions.bias", &[cfg.vocab_size])?,
            act: cfg.hidden_act.clone(),
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
            .forward(&activation(&self.act, &self.transform.forward(&picked)?)?)?;
        Ok(t.matmul(&word_embeddings.t()?)?.broadcast_add(&self.bias)?)
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
        let head = MlmHead::new(params, cfg, &mut rng)?;
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
        let logits = self.forward(ids, pad_mask, rows, ctx)?;
        Ok(candle_nn::loss::cross_entropy(
            &logits.to_dtype(DType::F32)?,
            targets,
        )?)
    }
}
