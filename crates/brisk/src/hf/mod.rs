//! HuggingFace BERT checkpoints: a directory with `config.json`,
//! `model.safetensors` and `tokenizer.json` or `vocab.txt`, as
//! `save_pretrained` writes it. This module reads them; [`export`] writes a
//! brisk run as one.
//!
//! brisk's tensor names are HF's (`bert.embeddings.word_embeddings.weight`,
//! ...), so a checkpoint loads by name. A bare `BertModel` checkpoint names
//! its tensors without the `bert.` prefix; both forms are read. Weights are
//! read from safetensors only: a pickled `pytorch_model.bin` can run code
//! when it is loaded, so it is refused with the command that converts it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::Deserialize;

use crate::config::{Kernels, ModelConfig, Norm, Position};
use crate::error::{Error, Result};
use crate::model::Params;

pub mod export;
pub use export::export_run;

/// The files of a HF checkpoint directory, found and checked.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub weights: PathBuf,
    /// `tokenizer.json` when there is one, else `vocab.txt`.
    pub tokenizer: PathBuf,
    /// `do_lower_case` of `tokenizer_config.json` (used with a `vocab.txt`).
    pub lowercase: bool,
}

impl Checkpoint {
    /// Finds the config, weights and tokenizer in `dir`; each missing file
    /// is an error that names it.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        if !dir.is_dir() {
            return Err(Error::data(dir, "not a directory (expected a HF checkpoint: config.json, model.safetensors, tokenizer.json or vocab.txt)"));
        }
        let config = read_config(&dir.join("config.json"))?;
        let weights = dir.join("model.safetensors");
        if !weights.exists() {
            let pickle = dir.join("pytorch_model.bin");
            let message = if pickle.exists() {
                format!(
                    "has pytorch_model.bin but no model.safetensors; brisk reads safetensors only \
                     (a pickle file can run code when loaded). Convert it with: python -c \
                     \"from transformers import AutoModel; \
                     AutoModel.from_pretrained('{0}').save_pretrained('{0}', safe_serialization=True)\"",
                    dir.display()
                )
            } else {
                "has no model.safetensors".to_string()
            };
            return Err(Error::data(dir, message));
        }
        let tokenizer = ["tokenizer.json", "vocab.txt"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.exists())
            .ok_or_else(|| Error::data(dir, "has neither tokenizer.json nor vocab.txt"))?;
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            config,
            weights,
            tokenizer,
            lowercase: read_lowercase(&dir.join("tokenizer_config.json"))?,
        })
    }
}

/// The `config.json` fields brisk reads, with `BertConfig`'s defaults.
#[derive(Debug, Deserialize)]
struct HfBertConfig {
    #[serde(default)]
    model_type: Option<String>,
    /// ELECTRA's embedding width (HF's default 128 when absent).
    #[serde(default)]
    embedding_size: Option<usize>,
    vocab_size: usize,
    #[serde(default = "defaults::hidden_size")]
    hidden_size: usize,
    #[serde(default = "defaults::num_hidden_layers")]
    num_hidden_layers: usize,
    #[serde(default = "defaults::num_attention_heads")]
    num_attention_heads: usize,
    #[serde(default = "defaults::intermediate_size")]
    intermediate_size: usize,
    #[serde(default = "defaults::hidden_act")]
    hidden_act: String,
    #[serde(default = "defaults::dropout")]
    hidden_dropout_prob: f64,
    #[serde(default = "defaults::dropout")]
    attention_probs_dropout_prob: f64,
    #[serde(default = "defaults::max_position_embeddings")]
    max_position_embeddings: usize,
    #[serde(default = "defaults::type_vocab_size")]
    type_vocab_size: usize,
    #[serde(default = "defaults::initializer_range")]
    initializer_range: f64,
    #[serde(default = "defaults::layer_norm_eps")]
    layer_norm_eps: f64,
    #[serde(default = "defaults::position_embedding_type")]
    position_embedding_type: String,
}

/// HF `BertConfig`'s defaults, for fields a `config.json` leaves out.
mod defaults {
    pub fn hidden_size() -> usize {
        768
    }
    pub fn num_hidden_layers() -> usize {
        12
    }
    pub fn num_attention_heads() -> usize {
        12
    }
    pub fn intermediate_size() -> usize {
        3072
    }
    pub fn hidden_act() -> String {
        "gelu".into()
    }
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn max_position_embeddings() -> usize {
        512
    }
    pub fn type_vocab_size() -> usize {
        2
    }
    pub fn initializer_range() -> f64 {
        0.02
    }
    pub fn layer_norm_eps() -> f64 {
        1e-12
    }
    pub fn position_embedding_type() -> String {
        "absolute".into()
    }
}

/// Reads a HF BERT `config.json` into brisk's model config. Models brisk
/// cannot run the same way (another architecture, relative position
/// embeddings, an unknown activation) are errors naming the field.
pub fn read_config(path: &Path) -> Result<ModelConfig> {
    let text = crate::run::read_text(path)?;
    let hf: HfBertConfig = serde_json::from_str(&text)
        .map_err(|e| Error::data(path, format!("not a BERT config.json: {e}")))?;
    match hf.model_type.as_deref() {
        None | Some("bert") => {}
        // An ELECTRA discriminator is a BERT encoder; with embeddings as
        // wide as its layers it needs no projection.
        Some("electra") => {
            let width = hf.embedding_size.unwrap_or(128);
            if width != hf.hidden_size {
                return Err(Error::data(
                    path,
                    format!(
                        "embedding_size {width} differs from hidden_size {}: brisk reads ELECTRA \
                         checkpoints whose embeddings are as wide as their layers",
                        hf.hidden_size
                    ),
                ));
            }
        }
        Some(kind) => {
            return Err(Error::data(
                path,
                format!(
                    "model_type {kind:?}: brisk reads BERT and ELECTRA checkpoints (\"bert\", \
                     \"electra\")"
                ),
            ))
        }
    }
    if hf.position_embedding_type != "absolute" {
        return Err(Error::data(
            path,
            format!(
                "position_embedding_type {:?}: brisk reads \"absolute\" only",
                hf.position_embedding_type
            ),
        ));
    }
    if crate::model::fused::Activation::from_name(&hf.hidden_act).is_none() {
        return Err(Error::data(
            path,
            format!(
                "hidden_act {:?}: brisk runs \"gelu\", \"gelu_new\" and \"relu\"",
                hf.hidden_act
            ),
        ));
    }
    if hf.num_attention_heads == 0 || !hf.hidden_size.is_multiple_of(hf.num_attention_heads) {
        return Err(Error::data(
            path,
            format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                hf.hidden_size, hf.num_attention_heads
            ),
        ));
    }
    Ok(ModelConfig {
        vocab_size: hf.vocab_size,
        hidden_size: hf.hidden_size,
        num_hidden_layers: hf.num_hidden_layers,
        num_attention_heads: hf.num_attention_heads,
        intermediate_size: hf.intermediate_size,
        hidden_act: hf.hidden_act,
        max_position_embeddings: hf.max_position_embeddings,
        type_vocab_size: hf.type_vocab_size,
        layer_norm_eps: hf.layer_norm_eps,
        hidden_dropout_prob: hf.hidden_dropout_prob,
        attention_probs_dropout_prob: hf.attention_probs_dropout_prob,
        initializer_range: hf.initializer_range,
        norm: Norm::Post,
        position: Position::Absolute,
        kernels: Kernels::Fused,
    })
}

/// `do_lower_case` from a `tokenizer_config.json` (true when absent, as
/// for the uncased models).
fn read_lowercase(path: &Path) -> Result<bool> {
    if !path.exists() {
        return Ok(true);
    }
    let value: serde_json::Value = crate::run::read_json(path)?;
    Ok(value
        .get("do_lower_case")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(true))
}

/// Loads the weights of `file` into `params`, by HF name. An ELECTRA file
/// (`electra.` names) is read as if its encoder were `bert.`; a file
/// without either prefix (a bare `BertModel`) as if it had it. A
/// missing tensor or a shape mismatch is an error naming the tensor, as the
/// file names it, and both shapes; parameters whose names start with one
/// of `optional` may be missing (they keep their initial values). Other
/// tensors (a pooler, `position_ids`, another head) are ignored.
pub fn load_weights(params: &Params, file: &Path, optional: &[&str]) -> Result<()> {
    let renamed = read_weights(params, file, optional)?;
    let may_miss = |name: &str| optional.iter().any(|p| name.starts_with(p));
    params.assign(&renamed, file, may_miss)
}

/// The tensors of `file` that `params` has, by brisk's (HF BERT) names,
/// checked as [`load_weights`] checks them; an `optional` one the file
/// lacks is absent from the map.
pub fn read_weights(
    params: &Params,
    file: &Path,
    optional: &[&str],
) -> Result<HashMap<String, Tensor>> {
    let tensors = candle_core::safetensors::load(file, &Device::Cpu)
        .map_err(|e| Error::data(file, format!("not a readable safetensors file: {e}")))?;
    let has_prefix = |p: &str| tensors.keys().any(|k| k.starts_with(p));
    let prefix = if has_prefix("bert.") {
        "bert."
    } else if has_prefix("electra.") {
        "electra."
    } else {
        ""
    };
    let file_name = |name: &str| -> String {
        match name.strip_prefix("bert.") {
            Some(rest) => format!("{prefix}{rest}"),
            None => name.to_string(),
        }
    };
    let may_miss = |name: &str| optional.iter().any(|p| name.starts_with(p));
    let mut renamed = HashMap::new();
    for (name, wanted) in params.iter() {
        let in_file = file_name(name);
        let Some(t) = tensors.get(&in_file) else {
            if may_miss(name) {
                continue;
            }
            return Err(Error::data(
                file,
                format!("has no tensor {in_file} (shape {:?})", wanted.dims()),
            ));
        };
        if t.dims() != wanted.dims() {
            return Err(Error::data(
                file,
                format!(
                    "tensor {in_file} has shape {:?}; the config asks for {:?}",
                    t.dims(),
                    wanted.dims()
                ),
            ));
        }
        renamed.insert(name.to_string(), t.clone());
    }
    Ok(renamed)
}
