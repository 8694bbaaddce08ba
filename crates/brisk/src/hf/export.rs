//! A `brisk pretrain` run as a HuggingFace checkpoint: `config.json`,
//! `model.safetensors` (HF names), `tokenizer.json`, `vocab.txt`,
//! `tokenizer_config.json` and `special_tokens_map.json`. The class follows
//! the objective: a masked-LM run becomes `BertForMaskedLM`
//! (`AutoModelForMaskedLM` loads it), an ELECTRA run its discriminator as
//! `ElectraForPreTraining` (the generator only serves pre-training and is
//! left out, as in the released ELECTRA checkpoints), and an MC-BERT run
//! its main encoder as `BertModel` (HF has no multi-choice head).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::config::{self, Config, ConfigSource, Norm, Position};
use crate::corpus::tokenizer::load_tokenizer;
use crate::error::{Error, Result};
use crate::model::Params;
use crate::pretrain::objective;
use crate::run::{write_atomic, write_json};

/// The HF class an export takes, by the run's objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    BertForMaskedLm,
    ElectraForPreTraining,
    BertModel,
}

impl Class {
    fn of(config: &Config) -> Class {
        match config.objective.kind.as_str() {
            "electra" => Class::ElectraForPreTraining,
            "mcbert" => Class::BertModel,
            _ => Class::BertForMaskedLm,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Class::BertForMaskedLm => "BertForMaskedLM",
            Class::ElectraForPreTraining => "ElectraForPreTraining",
            Class::BertModel => "BertModel",
        }
    }

    /// The HF name of a brisk parameter, or `None` for parameters the
    /// export leaves out (ELECTRA's generator, MC-BERT's controller and
    /// choice head).
    fn hf_name(self, name: &str) -> Option<String> {
        match self {
            Class::BertForMaskedLm => Some(name.to_string()),
            Class::ElectraForPreTraining => {
                if let Some(rest) = name.strip_prefix("bert.") {
                    Some(format!("electra.{rest}"))
                } else {
                    name.starts_with("discriminator_predictions.")
                        .then(|| name.to_string())
                }
            }
            Class::BertModel => name.starts_with("bert.").then(|| name.to_string()),
        }
    }
}

/// Why HF BERT cannot hold this model, if it cannot.
fn unrepresentable(config: &Config) -> Option<String> {
    let m = &config.model;
    if m.norm == Norm::Pre {
        return Some(
            "model.norm = \"pre\": HF BERT has post-LN layers only (LayerNorm after each \
             residual add) and no final LayerNorm"
                .into(),
        );
    }
    if m.position != Position::Absolute {
        return Some(format!(
            "model.position = {:?}: HF BERT has absolute position embeddings only, not TUPE's \
             untied positional attention or rotary positions",
            m.position
        ));
    }
    None
}

/// HF `BertConfig` (or `ElectraConfig`) for the run's model.
fn config_json(config: &Config, class: Class, pad_id: u32) -> serde_json::Value {
    let m = &config.model;
    let mut json = serde_json::json!({
        "architectures": [class.name()],
        "model_type": if class == Class::ElectraForPreTraining { "electra" } else { "bert" },
        "vocab_size": m.vocab_size,
        "hidden_size": m.hidden_size,
        "num_hidden_layers": m.num_hidden_layers,
        "num_attention_heads": m.num_attention_heads,
        "intermediate_size": m.intermediate_size,
        "hidden_act": m.hidden_act,
        "hidden_dropout_prob": m.hidden_dropout_prob,
        "attention_probs_dropout_prob": m.attention_probs_dropout_prob,
        "max_position_embeddings": m.max_position_embeddings,
        "type_vocab_size": m.type_vocab_size,
        "initializer_range": m.initializer_range,
        "layer_norm_eps": m.layer_norm_eps,
        "position_embedding_type": "absolute",
        "pad_token_id": pad_id,
        "tie_word_embeddings": true,
        "torch_dtype": "float32",
    });
    if class == Class::ElectraForPreTraining {
        // HF's ELECTRA defaults to 128-wide embeddings with a projection;
        // the discriminator's embeddings are as wide as its layers.
        json["embedding_size"] = m.hidden_size.into();
    }
    json
}

/// Writes the newest checkpoint of `run` as a HF checkpoint in `out` and
/// returns the HF class that loads it. The directory is assembled under a
/// temporary name and renamed into place; an existing `out` is replaced
/// only with `force`.
pub fn export_run(run: &Path, out: &Path, force: bool) -> Result<&'static str> {
    if out.exists() && !force {
        return Err(Error::Usage(format!(
            "{} already exists; pass --force to replace it",
            out.display()
        )));
    }
    let config = config::resolve(&ConfigSource {
        file: Some(run.join("config.toml")),
        ..Default::default()
    })?;
    let class = Class::of(&config);
    if let Some(why) = unrepresentable(&config) {
        return Err(Error::Usage(format!(
            "{} cannot be exported to HF {}: {why}",
            run.display(),
            class.name()
        )));
    }
    let tokenizer_file = run.join("tokenizer.json");
    let tokenizer = load_tokenizer(&tokenizer_file, config.data.lowercase)?;
    let mut params = Params::new(Device::Cpu, DType::F32);
    objective::build(&config, &mut params, None)?;
    params.load(&crate::train::checkpoint::latest_weights(run)?)?;

    let tmp = crate::run::temporary_sibling(out);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let pad = tokenizer.token_to_id("[PAD]").unwrap_or(0);
    write_json(&tmp.join("config.json"), &config_json(&config, class, pad))?;
    write_weights(&params, class, &tmp.join("model.safetensors"))?;
    std::fs::copy(&tokenizer_file, tmp.join("tokenizer.json"))
        .map_err(|e| Error::io(&tokenizer_file, e))?;
    write_vocab(&tokenizer, &tmp.join("vocab.txt"))?;
    write_json(
        &tmp.join("tokenizer_config.json"),
        &serde_json::json!({
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": config.data.lowercase,
            "model_max_length": config.model.max_position_embeddings,
        }),
    )?;
    write_json(
        &tmp.join("special_tokens_map.json"),
        &serde_json::json!({
            "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
            "cls_token": "[CLS]", "mask_token": "[MASK]",
        }),
    )?;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    Ok(class.name())
}

/// Every exported parameter under its HF name; for `BertForMaskedLM` also
/// the decoder HF ties to the word embeddings and the head bias (written
/// out, so loaders that do not tie still find them).
fn write_weights(params: &Params, class: Class, path: &Path) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = params
        .iter()
        .filter_map(|(name, t)| Some((class.hf_name(name)?, t.clone())))
        .collect();
    if class != Class::BertForMaskedLm {
        return crate::run::save_safetensors(&tensors, path);
    }
    let tied = [
        (
            "cls.predictions.decoder.weight",
            "bert.embeddings.word_embeddings.weight",
        ),
        ("cls.predictions.decoder.bias", "cls.predictions.bias"),
    ];
    for (name, source) in tied {
        let t = tensors[source].clone();
        tensors.insert(name.to_string(), t);
    }
    crate::run::save_safetensors(&tensors, path)
}

/// `vocab.txt`: one token per line, in id order.
fn write_vocab(tokenizer: &tokenizers::Tokenizer, path: &Path) -> Result<()> {
    let vocab = tokenizer.get_vocab(false);
    let mut tokens = vec![None; vocab.len()];
    for (token, id) in vocab {
        match tokens.get_mut(id as usize) {
            Some(slot) => *slot = Some(token),
            None => {
                return Err(Error::Tokenizer(format!(
                    "token id {id} is outside the vocabulary of {}",
                    tokens.len()
                )))
            }
        }
    }
    let mut text = String::new();
    for (id, token) in tokens.into_iter().enumerate() {
        let token =
            token.ok_or_else(|| Error::Tokenizer(format!("the vocabulary has no id {id}")))?;
        text.push_str(&token);
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}
