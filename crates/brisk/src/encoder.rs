//! A pre-trained encoder and its tokenizer, from a HuggingFace BERT
//! checkpoint or a `brisk pretrain` run: text in; hidden states and pooled
//! sentence vectors out.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use tokenizers::{EncodeInput, Tokenizer};

use crate::config::{self, ConfigSource, ModelConfig};
use crate::corpus::generated::Rng;
use crate::corpus::tokenizer::load_tokenizer;
use crate::error::{Error, Result};
use crate::hf::{self, Checkpoint};
use crate::model::{Bert, Ctx, Params};

/// One text to encode: a sentence, or a sentence pair (token types 0, 1).
#[derive(Debug, Clone, Copy)]
pub enum Text<'a> {
    Single(&'a str),
    Pair(&'a str, &'a str),
}

impl<'a> Text<'a> {
    /// A sentence, or a pair when there is a second part.
    pub fn of(a: &'a str, b: Option<&'a str>) -> Text<'a> {
        match b {
            Some(b) => Text::Pair(a, b),
            None => Text::Single(a),
        }
    }
}

/// A tokenized batch, padded to its longest sequence.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[batch, len]` u32.
    pub ids: Tensor,
    /// `[batch, len]` u32.
    pub token_types: Tensor,
    /// `[batch, len]` f32: 1 for tokens, 0 for padding.
    pub mask: Tensor,
    /// Tokens per sequence, specials included.
    pub lengths: Vec<usize>,
    /// The token ids of each sequence, unpadded.
    pub tokens: Vec<Vec<u32>>,
}

impl Batch {
    /// The batch with its tensors on `device` (tokenizing happens on the
    /// host; a GPU receives only the ids, types and mask).
    pub fn to(self, device: &Device) -> Result<Batch> {
        if device.same_device(self.ids.device()) {
            return Ok(self);
        }
        Ok(Batch {
            ids: self.ids.to_device(device)?,
            token_types: self.token_types.to_device(device)?,
            mask: self.mask.to_device(device)?,
            ..self
        })
    }
}

/// A pre-trained model's config, tokenizer and weights file: a HF
/// checkpoint directory (with `config.json`) or a `brisk pretrain` run
/// (with `config.toml`; its newest checkpoint).
pub struct Pretrained {
    pub config: ModelConfig,
    pub tokenizer: Tokenizer,
    pub tokenizer_file: PathBuf,
    pub weights: PathBuf,
}

impl Pretrained {
    pub fn open(path: &Path) -> Result<Pretrained> {
        let (config, tokenizer_file, lowercase, weights) = if path.join("config.json").exists() {
            let ckpt = Checkpoint::open(path)?;
            (ckpt.config, ckpt.tokenizer, ckpt.lowercase, ckpt.weights)
        } else if path.join("config.toml").exists() {
            let config = config::resolve(&ConfigSource {
                file: Some(path.join("config.toml")),
                ..Default::default()
            })?;
            let weights = crate::train::checkpoint::latest_weights(path)?;
            let lowercase = config.data.lowercase;
            (
                config.model,
                path.join("tokenizer.json"),
                lowercase,
                weights,
            )
        } else {
            return Err(Error::data(
                path,
                "is neither a HF checkpoint (config.json, model.safetensors, tokenizer) \
                 nor a brisk run directory (config.toml, checkpoints/)",
            ));
        };
        let mut tokenizer = load_tokenizer(&tokenizer_file, lowercase)?;
        // Batches are padded to their longest sequence and cut to the
        // model's positions here; a padding or length saved in the
        // tokenizer would change the inputs.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let vocab = tokenizer.get_vocab_size(true);
        if vocab > config.vocab_size {
            return Err(Error::data(
                &tokenizer_file,
                format!(
                    "has {vocab} tokens but the model's vocab_size is {}",
                    config.vocab_size
                ),
            ));
        }
        Ok(Pretrained {
            config,
            tokenizer,
            tokenizer_file,
            weights,
        })
    }

    /// Fills `params` from the weights file by HF name; parameters whose
    /// names start with one of `optional` may be missing there (a new task
    /// head keeps its initial values).
    pub fn load_into(&self, params: &Params, optional: &[&str]) -> Result<()> {
        hf::load_weights(params, &self.weights, optional)
    }
}

/// A pre-trained encoder with its tokenizer, ready to encode text.
pub struct Encoder {
    pub config: ModelConfig,
    pub params: Params,
    pub bert: Bert,
    pub tokenizer: Tokenizer,
    /// Longest sequence fed to the model (its position embeddings).
    pub max_len: usize,
}

impl Encoder {
    /// Loads a HF checkpoint directory or a `brisk pretrain` run (see
    /// [`Pretrained`]).
    pub fn load(path: &Path) -> Result<Encoder> {
        Encoder::load_on(path, Device::Cpu)
    }

    /// [`Encoder::load`] onto `device` (see `model::device::open`).
    pub fn load_on(path: &Path, device: Device) -> Result<Encoder> {
        let pre = Pretrained::open(path)?;
        let mut params = Params::new(device, DType::F32);
        let bert = Bert::new(&mut params, &pre.config, &mut Rng::new(0))?;
        pre.load_into(&params, &[])?;
        Ok(Encoder {
            max_len: pre.config.max_position_embeddings,
            config: pre.config,
            params,
            bert,
            tokenizer: pre.tokenizer,
        })
    }

    /// Tokenizes texts with the special tokens, truncated to `max_len`
    /// (longest part first, for pairs), padded to the longest, on the
    /// encoder's device.
    pub fn tokenize(&self, texts: &[Text]) -> Result<Batch> {
        tokenize(&self.tokenizer, self.max_len, texts)?.to(&self.params.device)
    }

    /// The last hidden states `[batch, len, hidden]` (padding rows included).
    pub fn hidden_states(&self, batch: &Batch) -> Result<Tensor> {
        self.bert.forward(
            &batch.ids,
            Some(&batch.token_types),
            Some(&batch.mask),
            None,
            &mut Ctx::eval(),
        )
    }
}

/// Tokenizes texts with the special tokens, truncated to `max_len`
/// (longest part first, for pairs), padded to the longest.
pub fn tokenize(tokenizer: &Tokenizer, max_len: usize, texts: &[Text]) -> Result<Batch> {
    let inputs: Vec<EncodeInput> = texts
        .iter()
        .map(|t| match *t {
            Text::Single(a) => EncodeInput::Single(a.into()),
            Text::Pair(a, b) => EncodeInput::Dual(a.into(), b.into()),
        })
        .collect();
    let encodings = tokenizer.encode_batch(inputs, true)?;
    let mut tokens = Vec::with_capacity(encodings.len());
    let mut types = Vec::with_capacity(encodings.len());
    for (enc, text) in encodings.iter().zip(texts) {
        let (ids, tt) = truncate(enc.get_ids(), enc.get_type_ids(), max_len, *text);
        tokens.push(ids);
        types.push(tt);
    }
    let len = tokens.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let pad = |rows: &[Vec<u32>]| -> Vec<u32> {
        rows.iter()
            .flat_map(|r| r.iter().copied().chain(std::iter::repeat(0)).take(len))
            .collect()
    };
    let mask: Vec<f32> = tokens
        .iter()
        .flat_map(|r| (0..len).map(move |i| if i < r.len() { 1.0 } else { 0.0 }))
        .collect();
    let shape = (tokens.len(), len);
    let dev = Device::Cpu;
    Ok(Batch {
        ids: Tensor::from_vec(pad(&tokens), shape, &dev)?,
        token_types: Tensor::from_vec(pad(&types), shape, &dev)?,
        mask: Tensor::from_vec(mask, shape, &dev)?,
        lengths: tokens.iter().map(Vec::len).collect(),
        tokens,
    })
}

/// How a sequence's hidden states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over its tokens (padding excluded), specials included.
    Mean,
    /// The `[CLS]` row.
    Cls,
}

impl Pooling {
    pub fn from_name(name: &str) -> Result<Pooling> {
        match name {
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            other => Err(Error::Usage(format!(
                "--pooling {other:?}: expected \"mean\" or \"cls\""
            ))),
        }
    }

    /// `[batch, hidden]` from hidden states `[batch, len, hidden]`.
    pub fn pool(self, hidden: &Tensor, batch: &Batch) -> Result<Tensor> {
        Ok(match self {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => {
                let mask = batch.mask.unsqueeze(D::Minus1)?;
                let sums = hidden.broadcast_mul(&mask)?.sum(1)?;
                sums.broadcast_div(&mask.sum(1)?)?
            }
        })
    }
}

/// Cuts an encoding to `max_len` tokens, keeping `[CLS]` and the final
/// `[SEP]` of each part: a single text loses its tail; a pair loses tokens
/// from its longer part first (HF's `longest_first`).
fn truncate(ids: &[u32], types: &[u32], max_len: usize, text: Text) -> (Vec<u32>, Vec<u32>) {
    if ids.len() <= max_len {
        return (ids.to_vec(), types.to_vec());
    }
    // [CLS] a.. [SEP] b.. [SEP]: the second part starts at the first
    // type-1 token. A tokenizer whose template marks no second part is cut
    // as a single text.
    let split = types.iter().position(|&t| t == 1).filter(|&s| s >= 2);
    match (text, split) {
        (Text::Single(_), _) | (Text::Pair(..), None) => {
            let mut out = ids[..max_len - 1].to_vec();
            out.extend(ids.last());
            let types = types[..max_len - 1]
                .iter()
                .chain(types.last())
                .copied()
                .collect();
            (out, types)
        }
        (Text::Pair(..), Some(split)) => {
            let a = &ids[1..split - 1];
            let b = &ids[split..ids.len() - 1];
            let (sep, cls) = (ids[split - 1], ids[0]);
            let budget = max_len - 3;
            let (mut na, mut nb) = (a.len(), b.len());
            while na + nb > budget {
                if na >= nb {
                    na -= 1;
                } else {
                    nb -= 1;
                }
            }
            let mut out = vec![cls];
            out.extend_from_slice(&a[..na]);
            out.push(sep);
            let first = out.len();
            out.extend_from_slice(&b[..nb]);
            out.push(sep);
            let types = (0..out.len()).map(|i| u32::from(i >= first)).collect();
            (out, types)
        }
    }
}
