//! Applying a fine-tuned model: labels or scores for new text.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use tokenizers::Tokenizer;

use super::classifier::Classifier;
use super::data::{Kind, TaskSpec};
use crate::config::ModelConfig;
use crate::corpus::generated::Rng;
use crate::corpus::tokenizer::load_tokenizer;
use crate::encoder::{tokenize, Text};
use crate::error::{Error, Result};
use crate::model::{Ctx, Params};
use crate::run::read_json;

/// A fine-tuned classifier with its task and tokenizer.
pub struct Predictor {
    pub task: TaskSpec,
    model: Classifier,
    // Kept alive with the model: its tensors are views into these groups.
    _params: Params,
    tokenizer: Tokenizer,
    max_len: usize,
}

/// The folder of one fine-tuned model: `dir` itself, or, for a
/// `brisk finetune` run, its `best_run` (the best seed of its best
/// learning rate).
pub fn model_dir(dir: &Path) -> Result<PathBuf> {
    if dir.join("best/model.safetensors").exists() {
        return Ok(dir.to_path_buf());
    }
    let results = dir.join("results.json");
    if !results.exists() {
        return Err(Error::data(
            dir,
            "is not a fine-tuned model (no best/model.safetensors) nor a `brisk finetune` run \
             (no results.json)",
        ));
    }
    let value: serde_json::Value = read_json(&results)?;
    let best = value["best_run"]
        .as_str()
        .ok_or_else(|| Error::data(&results, "names no best_run"))?;
    Ok(dir.join(best))
}

impl Predictor {
    /// Loads a fine-tuned model (see [`model_dir`]) onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<Predictor> {
        let dir = model_dir(dir)?;
        let config: ModelConfig = read_json(&dir.join("model.json"))?;
        let task: TaskSpec = read_json(&dir.join("task.json"))?;
        let tokenizer = load_tokenizer(&dir.join("tokenizer.json"), true)?;
        let recipe: serde_json::Value = read_json(&dir.join("recipe.json"))?;
        if recipe["notes"].as_str().is_some_and(|m| m != "off") {
            return Err(Error::Usage(format!(
                "{} was fine-tuned with TNF notes (--notes {}); brisk predict does not read \
                 notes yet: fine-tune with --notes off to use predict",
                dir.display(),
                recipe["notes"].as_str().unwrap_or_default()
            )));
        }
        let max_len = recipe["max_len"]
            .as_u64()
            .map_or(config.max_position_embeddings, |n| n as usize);
        let outputs = match task.kind {
            Kind::Classification => task.labels.len(),
            Kind::Regression => 1,
        };
        let mut params = Params::new(device, DType::F32);
        let model = Classifier::new(&mut params, &config, outputs, &mut Rng::new(0))?;
        params.load(&dir.join("best/model.safetensors"))?;
        Ok(Predictor {
            task,
            model,
            _params: params,
            tokenizer,
            max_len: max_len.min(config.max_position_embeddings),
        })
    }

    /// The prediction for each text, as the task writes labels: the label
    /// value, or the score with four decimals.
    pub fn predict(&self, texts: &[(String, Option<String>)], batch: usize) -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(batch.max(1)) {
            let inputs: Vec<Text> = chunk
                .iter()
                .map(|(a, b)| Text::of(a, b.as_deref()))
                .collect();
            let batch =
                tokenize(&self.tokenizer, self.max_len, &inputs)?.to(self.model.device())?;
            let values = self
                .model
                .predict(&self.model.forward(&batch, &mut Ctx::eval())?)?;
            out.extend(values.into_iter().map(|v| match self.task.kind {
                Kind::Classification => self.task.labels[v as usize].clone(),
                Kind::Regression => format!("{v:.4}"),
            }));
        }
        Ok(out)
    }
}
