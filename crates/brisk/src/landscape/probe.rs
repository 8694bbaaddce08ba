//! What the landscape views evaluate: a fine-tuned classifier's loss and
//! metric on a train subset and on dev, at any point of its parameter
//! space, and the train loss's gradient there.
//!
//! Texts are tokenised once, sorted by length and cut into batches padded
//! to their own longest text; moving the model writes the point into its
//! flat parameter buffers in place. Evaluation is deterministic (no
//! dropout), as in Li et al.'s `net.eval()`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use tokenizers::Tokenizer;

use super::space::{write_point, Layout, Point};
use crate::config::ModelConfig;
use crate::corpus::generated::Rng;
use crate::encoder::{tokenize, Batch, Pretrained, Text};
use crate::error::{Error, Result};
use crate::model::{Ctx, Params};
use crate::run::read_json;
use crate::tasks::classifier::{Classifier, HEAD_PREFIXES};
use crate::tasks::data::{read_split, Example};
use crate::tasks::{metrics, Task};
use crate::train::optim::gradients;

/// What a landscape view evaluates at the point the model was moved to.
pub trait Objective {
    fn layout(&self) -> &Layout;
    /// The names of [`Objective::measure`]'s values.
    fn measures(&self) -> Vec<String>;
    /// Moves the model to `base + Σ cᵢ·dᵢ`.
    fn move_to(&mut self, base: &Point, moves: &[(f64, &Point)]) -> Result<()>;
    /// The values at the current point.
    fn measure(&mut self) -> Result<Vec<f64>>;
    /// The train loss and its gradient at the current point.
    fn gradient(&mut self) -> Result<(f64, Point)>;
}

/// A fine-tuning run's folder (one seed of `brisk finetune`): the model's
/// config, tokenizer, input length, task, and checkpoints.
#[derive(Debug, Clone)]
pub struct TunedRun {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub tokenizer_file: PathBuf,
    pub max_len: usize,
    /// The task's name, as fine-tuning recorded it.
    pub task_name: String,
}

impl TunedRun {
    /// Opens `dir`: a seed's folder, or a `brisk finetune` run (its best seed).
    pub fn open(dir: &Path) -> Result<TunedRun> {
        let dir = crate::tasks::predict::model_dir(dir)?;
        let config: ModelConfig = read_json(&dir.join("model.json"))?;
        let recipe: serde_json::Value = read_json(&dir.join("recipe.json"))?;
        if recipe["notes"].as_str().is_some_and(|m| m != "off") {
            return Err(Error::Usage(format!(
                "{} was fine-tuned with TNF notes; the landscape views evaluate models without notes",
                dir.display()
            )));
        }
        let task: serde_json::Value = read_json(&dir.join("task.json"))?;
        let max_len = recipe["max_len"]
            .as_u64()
            .map_or(config.max_position_embeddings, |n| n as usize)
            .min(config.max_position_embeddings);
        Ok(TunedRun {
            tokenizer_file: dir.join("tokenizer.json"),
            task_name: task["name"].as_str().unwrap_or_default().to_string(),
            dir,
            config,
            max_len,
        })
    }

    /// Saved checkpoints `(step, weights file)`, by step.
    pub fn checkpoints(&self) -> Result<Vec<(u64, PathBuf)>> {
        let root = self.dir.join("checkpoints");
        let entries = std::fs::read_dir(&root).map_err(|e| Error::io(&root, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&root, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let file = entry.path().join("model.safetensors");
            if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse().ok()) {
                if file.exists() {
                    out.push((step, file));
                }
            }
        }
        out.sort();
        if out.is_empty() {
            return Err(Error::data(&root, "holds no step-N/model.safetensors"));
        }
        Ok(out)
    }

    /// The weights before any update (step 0, head initialisation included).
    pub fn start(&self) -> PathBuf {
        self.dir.join("checkpoints/step-000000/model.safetensors")
    }

    /// The best-on-dev weights.
    pub fn best(&self) -> PathBuf {
        self.dir.join("best/model.safetensors")
    }
}

/// The weights file a command-line path names: a safetensors file, a folder
/// with `model.safetensors` (a checkpoint), a fine-tuning seed's folder (its
/// best weights) or a `brisk finetune` run (its best seed's).
pub fn weights_file(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let direct = path.join("model.safetensors");
    if direct.exists() && !path.join("config.json").exists() {
        return Ok(direct);
    }
    if path.join("best/model.safetensors").exists() || path.join("results.json").exists() {
        return Ok(crate::tasks::predict::model_dir(path)?.join("best/model.safetensors"));
    }
    Err(Error::data(
        path,
        "names no weights: expected a .safetensors file, a checkpoint folder \
         (model.safetensors), a fine-tuning run, or a pre-trained model",
    ))
}

/// Examples tokenised once into length-sorted batches.
struct Prepared {
    batches: Vec<(Batch, Vec<f32>)>,
    count: usize,
}

impl Prepared {
    fn new(
        examples: &[Example],
        tokenizer: &Tokenizer,
        max_len: usize,
        batch_size: usize,
    ) -> Result<Prepared> {
        let texts: Vec<Text> = examples
            .iter()
            .map(|e| Text::of(&e.a, e.b.as_deref()))
            .collect();
        let mut lengths = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(256) {
            lengths.extend(tokenize(tokenizer, max_len, chunk)?.lengths);
        }
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| (lengths[i], i));
        let batches = order
            .chunks(batch_size.max(1))
            .map(|idx| {
                let chunk: Vec<Text> = idx.iter().map(|&i| texts[i]).collect();
                let labels = idx.iter().map(|&i| examples[i].label).collect();
                Ok((tokenize(tokenizer, max_len, &chunk)?, labels))
            })
            .collect::<Result<_>>()?;
        Ok(Prepared {
            batches,
            count: examples.len(),
        })
    }
}

/// Which examples a probe evaluates.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeData {
    /// Train examples, a seeded sample (0: all).
    pub train_examples: usize,
    /// Dev examples, the first N (0: all; none when `with_dev` is false).
    pub dev_examples: usize,
    pub with_dev: bool,
    pub batch_size: usize,
    pub seed: u64,
}

impl Default for ProbeData {
    fn default() -> ProbeData {
        ProbeData {
            train_examples: 2000,
            dev_examples: 0,
            with_dev: true,
            batch_size: 64,
            seed: 0,
        }
    }
}

/// A classifier with its evaluation data: the [`Objective`] of the views.
pub struct Probe {
    params: Params,
    model: Classifier,
    layout: Layout,
    train: Prepared,
    dev: Option<Prepared>,
    metric: String,
}

impl Probe {
    /// A probe for `task` with `run`'s model and tokenizer.
    pub fn new(run: &TunedRun, task: &Task, data: &ProbeData) -> Result<Probe> {
        let tokenizer = crate::corpus::tokenizer::load_tokenizer(&run.tokenizer_file, true)?;
        let mut cfg = run.config.clone();
        cfg.kernels = crate::config::Kernels::Fused;
        let mut params = Params::new(Device::Cpu, DType::F32);
        let model = Classifier::new(&mut params, &cfg, task.num_outputs(), &mut Rng::new(0))?;
        let mut train = read_split(&task.spec, &task.train)?;
        if data.train_examples > 0 && data.train_examples < train.len() {
            let mut rng = Rng::new(data.seed ^ 0x1a4d);
            for i in (1..train.len()).rev() {
                train.swap(i, rng.below(i + 1));
            }
            train.truncate(data.train_examples);
        }
        let train = Prepared::new(&train, &tokenizer, run.max_len, data.batch_size)?;
        let dev = if data.with_dev {
            let mut dev = read_split(&task.spec, &task.dev)?;
            if data.dev_examples > 0 {
                dev.truncate(data.dev_examples);
            }
            Some(Prepared::new(
                &dev,
                &tokenizer,
                run.max_len,
                data.batch_size,
            )?)
        } else {
            None
        };
        Ok(Probe {
            layout: Layout::of(&params),
            params,
            model,
            train,
            dev,
            metric: task.spec.metrics[0].clone(),
        })
    }

    /// The task's first metric, the one the views report.
    pub fn metric(&self) -> &str {
        &self.metric
    }

    /// Examples evaluated: (train, dev).
    pub fn examples(&self) -> (usize, usize) {
        (self.train.count, self.dev.as_ref().map_or(0, |d| d.count))
    }

    /// The tensors of a weights file (see [`weights_file`]) or of a
    /// pre-trained model (which may lack the task head) by brisk's names.
    pub fn read_weights(&self, path: &Path) -> Result<HashMap<String, Tensor>> {
        let pretrained = path.is_dir()
            && (path.join("config.json").exists() || path.join("config.toml").exists());
        if pretrained {
            let pre = Pretrained::open(path)?;
            return crate::hf::read_weights(&self.params, &pre.weights, &HEAD_PREFIXES);
        }
        let file = weights_file(path)?;
        candle_core::safetensors::load(&file, &Device::Cpu)
            .map_err(|e| Error::data(&file, format!("not a readable safetensors file: {e}")))
    }

    /// Points for several ends (`A`, `B`, ...). A tensor that some ends
    /// lack takes the value of the first end that has it, so it stays
    /// fixed along any direction between ends (a pre-trained model's
    /// missing task head, say); the names of such tensors are returned.
    pub fn load_ends(&self, paths: &[&Path]) -> Result<(Vec<Point>, Vec<String>)> {
        let maps = paths
            .iter()
            .map(|p| self.read_weights(p))
            .collect::<Result<Vec<_>>>()?;
        let mut shared = Vec::new();
        let mut filled = maps.clone();
        for (name, _) in self.params.iter() {
            let Some(first) = maps.iter().find_map(|m| m.get(name)) else {
                return Err(Error::data(
                    paths[0],
                    format!("tensor {name} is in none of the given weights"),
                ));
            };
            if maps.iter().any(|m| !m.contains_key(name)) {
                shared.push(name.to_string());
                for m in &mut filled {
                    m.entry(name.to_string()).or_insert_with(|| first.clone());
                }
            }
        }
        let points = filled
            .iter()
            .zip(paths)
            .map(|(m, p)| {
                self.params.assign(m, p, |_| false)?;
                Point::read(&self.params)
            })
            .collect::<Result<_>>()?;
        Ok((points, shared))
    }

    /// Mean loss and the metric over `data` at the current point (on a
    /// worker of the pool, as training steps run: its many parallel loops
    /// then start without a hand-off).
    fn score(&self, data: &Prepared) -> Result<(f64, f64)> {
        crate::runtime::on_pool(|| self.score_here(data))
    }

    fn score_here(&self, data: &Prepared) -> Result<(f64, f64)> {
        let mut loss = 0.0;
        let (mut predicted, mut gold) = (Vec::new(), Vec::new());
        for (batch, labels) in &data.batches {
            let outputs = self.model.forward(batch, &mut Ctx::eval())?;
            let l = self.model.loss(&outputs, labels)?.to_scalar::<f32>()? as f64;
            loss += l * labels.len() as f64;
            predicted.extend(self.model.predict(&outputs)?);
            gold.extend_from_slice(labels);
        }
        let metric = metrics::score(&self.metric, &predicted, &gold).unwrap_or(f64::NAN);
        Ok((loss / data.count.max(1) as f64, metric))
    }
}

impl Objective for Probe {
    fn layout(&self) -> &Layout {
        &self.layout
    }

    fn measures(&self) -> Vec<String> {
        let mut names = vec!["train_loss".to_string(), format!("train_{}", self.metric)];
        if self.dev.is_some() {
            names.extend(["dev_loss".to_string(), format!("dev_{}", self.metric)]);
        }
        names
    }

    fn move_to(&mut self, base: &Point, moves: &[(f64, &Point)]) -> Result<()> {
        write_point(&self.params, base, moves)
    }

    fn measure(&mut self) -> Result<Vec<f64>> {
        let (loss, metric) = self.score(&self.train)?;
        let mut out = vec![loss, metric];
        if let Some(dev) = &self.dev {
            let (loss, metric) = self.score(dev)?;
            out.extend([loss, metric]);
        }
        Ok(out)
    }

    fn gradient(&mut self) -> Result<(f64, Point)> {
        crate::runtime::on_pool(|| self.gradient_here())
    }
}

impl Probe {
    /// The train loss and its gradient, on the calling thread.
    fn gradient_here(&self) -> Result<(f64, Point)> {
        let n = self.train.count.max(1) as f64;
        let mut total = Point::zeros(&self.layout);
        let mut loss = 0.0;
        for (batch, labels) in &self.train.batches {
            let outputs = self.model.forward(batch, &mut Ctx::eval())?;
            let l = self.model.loss(&outputs, labels)?;
            loss += l.to_scalar::<f32>()? as f64 * labels.len() as f64 / n;
            let grads = gradients(&self.params, &l.backward()?)?;
            total.add_scaled(labels.len() as f64 / n, &Point::from_tensors(&grads)?);
        }
        Ok((loss, total))
    }
}
