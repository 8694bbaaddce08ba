//! Fine-tuning a pre-trained encoder on a task: BERT's recipe (AdamW,
//! linear warm-up over 10% then linear decay, 3 epochs, batch 32, length
//! 128), with batches padded to their longest text, dev evaluation after
//! each epoch, the best-on-dev checkpoint kept, and early stopping.
//!
//! One call runs one seed and one learning rate into its own directory:
//! `checkpoints/step-NNNNNN/model.safetensors` (step 0, the weights before
//! any update, head initialisation included, then every `save_every`
//! steps: what the loss-landscape views need), `best/model.safetensors`,
//! `predictions-dev.tsv` of the best epoch, `metrics.jsonl`, and what
//! [`super::predict`] needs to apply the model: `model.json` (the encoder's
//! config), `task.json` and `tokenizer.json`.
//!
//! With `--notes F` or `U` (a pre-training run with TNF's notes), rare
//! words read their notes in every forward pass; F keeps taking notes on
//! the fly during training (saved as `notes.safetensors`), U trains them by
//! back-propagation (the tensor `notes.weight` of the saved weights).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::classifier::{Classifier, HEAD_PREFIXES};
use super::data::{read_split, Example, Kind, Task};
use super::metrics;
use crate::config::Preset;
use crate::corpus::generated::Rng;
use crate::encoder::{tokenize, Batch, Pretrained, Text};
use crate::error::{Error, Result};
use crate::model::{Ctx, InputMix, Params};
use crate::pretrain::notes::{open_run_notes, NoteBook, NoteLookup, Occurrence, NOTES_FILE};
use crate::run::{write_atomic, write_json};
use crate::train::optim::{clip_scale, grad_norm, gradients, AdamW};
use crate::train::schedule::{linear_warmup_decay, warmup_steps};

/// The fine-tuning recipe.
#[derive(Debug, Clone, Serialize)]
pub struct Recipe {
    pub learning_rate: f64,
    pub epochs: usize,
    pub batch_size: usize,
    /// Longest input in tokens, specials included.
    pub max_len: usize,
    pub warmup_fraction: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    /// Stop after this many epochs without a better dev score (0: never).
    pub patience: usize,
    /// Keep only the first N training examples (0: all).
    pub max_train: usize,
    /// Save a checkpoint every N steps besides step 0 (0: only step 0).
    pub save_every: u64,
    /// Layer-wise learning-rate decay (ELECTRA's recipe; 1: off).
    pub layer_decay: f64,
    /// Whether TNF's notes of a pre-training run take part.
    pub notes: NotesMode,
    /// Start from a random initialisation of the model's architecture
    /// instead of its pre-trained weights (the baseline of Hao et al.'s
    /// landscapes).
    pub from_scratch: bool,
    /// Where fine-tuning and its evaluation run: `"cpu"`, `"cuda"` or
    /// `"cuda:N"` (the CUDA build; see `model::device`). The CPU runs the
    /// fused kernels, a GPU the reference composition.
    pub device: String,
}

/// How TNF's notes take part in fine-tuning (`--notes`; the seed's modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NotesMode {
    /// Not used (the default: the model is fine-tuned as it is deployed).
    #[serde(rename = "off")]
    Off,
    /// Used, and still taken on the fly with the pre-training rule.
    #[serde(rename = "F")]
    OnTheFly,
    /// Used, and trained by back-propagation.
    #[serde(rename = "U")]
    Trained,
}

impl NotesMode {
    pub fn from_name(name: &str) -> Result<NotesMode> {
        match name {
            "off" => Ok(NotesMode::Off),
            "F" | "f" => Ok(NotesMode::OnTheFly),
            "U" | "u" => Ok(NotesMode::Trained),
            other => Err(Error::Usage(format!(
                "--notes: unknown mode {other:?} (expected off, F: notes taken on the fly, or U: notes trained by back-propagation)"
            ))),
        }
    }
}

/// TNF's notes during fine-tuning: read by every forward pass (dev scoring
/// included); mode F takes notes after each training step, mode U trains a
/// copy of them (the group `notes`) with the model.
struct TaskNotes {
    mode: NotesMode,
    book: NoteBook,
    lookup: NoteLookup,
    /// Mode U: the trainable notes, `[rare words, hidden]`.
    trained: Option<Tensor>,
}

impl TaskNotes {
    fn open(
        mode: NotesMode,
        run: &Path,
        tokenizer: &tokenizers::Tokenizer,
        params: &mut Params,
    ) -> Result<Option<TaskNotes>> {
        if mode == NotesMode::Off {
            return Ok(None);
        }
        let (book, lookup) = open_run_notes(run, tokenizer)?;
        let trained = if mode == NotesMode::Trained {
            let h = book.hidden();
            let n = book.values().len() / h;
            let mut g = params.group("notes");
            g.zeros("weight", &[n, h]);
            let g = g.finish()?;
            g.var
                .set(&Tensor::from_slice(book.values(), n * h, g.var.device())?)?;
            Some(g.view("weight")?)
        } else {
            None
        };
        Ok(Some(TaskNotes {
            mode,
            book,
            lookup,
            trained,
        }))
    }

    /// The rare-word occurrences of a batch and its input change.
    fn mix(&mut self, batch: &Batch) -> Result<(Vec<Occurrence>, Option<InputMix>)> {
        let found = self.lookup.occurrences(&batch.tokens);
        let shape = batch.ids.dims2()?;
        let mix = match &self.trained {
            Some(notes) => Some(self.book.mix_from(notes, &found, shape)?),
            None => self
                .book
                .mix(&found, shape, &[], DType::F32, batch.ids.device())?,
        };
        Ok((found, mix))
    }

    /// Mode F: takes notes from a training step's last hidden states.
    fn take(&mut self, found: &[Occurrence], hidden: &Tensor, batch: &Batch) -> Result<()> {
        if self.mode != NotesMode::OnTheFly {
            return Ok(());
        }
        self.book
            .take_notes(found, &hidden.detach(), Some(&batch.lengths))
    }
}

/// The outputs for a batch, with the notes read when there are any.
fn forward(
    model: &Classifier,
    notes: Option<&mut TaskNotes>,
    batch: &Batch,
    ctx: &mut Ctx,
) -> Result<(Tensor, Tensor, Vec<Occurrence>)> {
    let (found, mix) = match notes {
        Some(n) => n.mix(batch)?,
        None => (Vec::new(), None),
    };
    let (outputs, hidden) = model.forward_mixed(batch, mix.as_ref(), ctx)?;
    Ok((outputs, hidden, found))
}

impl Default for Recipe {
    fn default() -> Recipe {
        Recipe {
            learning_rate: 2e-5,
            epochs: 3,
            batch_size: 32,
            max_len: 128,
            warmup_fraction: 0.1,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            patience: 0,
            max_train: 0,
            save_every: 0,
            layer_decay: 1.0,
            notes: NotesMode::Off,
            from_scratch: false,
            device: "cpu".into(),
        }
    }
}

/// What one seed's run reached.
#[derive(Debug, Clone, Serialize)]
pub struct SeedResult {
    pub seed: u64,
    pub learning_rate: f64,
    /// The dev scores of the best epoch (chosen by the task's first metric).
    pub dev: BTreeMap<String, f64>,
    pub best_epoch: usize,
    pub steps: u64,
    pub dir: PathBuf,
}

/// A task's data, tokenization aside.
struct Split {
    examples: Vec<Example>,
}

impl Split {
    fn texts(&self, idx: &[usize]) -> Vec<Text<'_>> {
        idx.iter()
            .map(|&i| Text::of(&self.examples[i].a, self.examples[i].b.as_deref()))
            .collect()
    }

    fn labels(&self, idx: &[usize]) -> Vec<f32> {
        idx.iter().map(|&i| self.examples[i].label).collect()
    }
}

/// A seeded permutation of `0..n` (Fisher–Yates).
fn shuffled(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

fn save_weights(params: &Params, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    params.save(&dir.join("model.safetensors"))
}

/// A group's learning-rate factor under layer-wise decay `decay` in a
/// `layers`-layer encoder, as ELECTRA's fine-tuning computes it: depth 0
/// for the embeddings, `i + 1` for layer `i`, `layers + 2` for the task
/// head (pooler and classifier), and a factor `decay^(layers + 2 - depth)`.
pub fn layer_lr_factor(group: &str, layers: usize, decay: f64) -> f64 {
    let depth = if group == "bert.embeddings" {
        0
    } else if let Some(i) = group
        .strip_prefix("bert.encoder.layer.")
        .and_then(|i| i.parse::<usize>().ok())
    {
        i + 1
    } else {
        layers + 2
    };
    decay.powi((layers + 2 - depth) as i32)
}

/// The checkpoint directory of `step`.
fn step_dir(out: &Path, step: u64) -> PathBuf {
    out.join("checkpoints").join(format!("step-{step:06}"))
}

/// Fine-tunes `model` (a HF checkpoint or a brisk run) on `task` with one
/// seed, writing into `out` (which must exist).
pub fn finetune(
    model_dir: &Path,
    task: &Task,
    recipe: &Recipe,
    seed: u64,
    out: &Path,
    mut progress: impl FnMut(&str),
) -> Result<SeedResult> {
    if recipe.epochs == 0 || recipe.batch_size == 0 {
        return Err(Error::Usage(
            "fine-tuning needs at least one epoch and a batch of at least one".into(),
        ));
    }
    let pre = Pretrained::open(model_dir)?;
    let mut cfg = pre.config.clone();
    cfg.kernels = crate::config::Kernels::Fused;
    let max_len = recipe.max_len.min(cfg.max_position_embeddings);
    let mut train = read_split(&task.spec, &task.train)?;
    if recipe.max_train > 0 {
        train.truncate(recipe.max_train);
    }
    let train = Split { examples: train };
    let dev = Split {
        examples: read_split(&task.spec, &task.dev)?,
    };

    let device = crate::model::device::open(&recipe.device)?;
    let mut params = Params::new(device, DType::F32);
    let model = Classifier::new(&mut params, &cfg, task.num_outputs(), &mut Rng::new(seed))?;
    if !recipe.from_scratch {
        pre.load_into(&params, &HEAD_PREFIXES)?;
    }
    // Mode U's trainable notes come from the run's notes, not its weights.
    let mut notes = TaskNotes::open(recipe.notes, model_dir, &pre.tokenizer, &mut params)?;
    save_weights(&params, &step_dir(out, 0))?;
    // What `brisk predict` needs besides the weights.
    let tokenizer_json = out.join("tokenizer.json");
    pre.tokenizer
        .save(&tokenizer_json, false)
        .map_err(|e| Error::Tokenizer(format!("{}: {e}", tokenizer_json.display())))?;
    write_json(&out.join("model.json"), &cfg)?;
    write_json(&out.join("recipe.json"), recipe)?;
    write_json(&out.join("task.json"), &task.spec)?;

    let mut train_cfg = Preset::Tiny.config().train;
    train_cfg.weight_decay = recipe.weight_decay;
    train_cfg.adam_epsilon = 1e-6;
    let mut opt = AdamW::new(&params, &train_cfg)?;
    let layers = cfg.num_hidden_layers;
    opt.set_lr_factors(|group| layer_lr_factor(group, layers, recipe.layer_decay));
    let per_epoch = train.examples.len().div_ceil(recipe.batch_size) as u64;
    let total = per_epoch * recipe.epochs as u64;
    let warmup = warmup_steps(total, recipe.warmup_fraction);
    let metric = task.spec.metrics[0].as_str();
    let mut rng = Rng::new(seed ^ 0x5eed);
    let mut step = 0u64;
    let mut best: Option<(f64, usize, BTreeMap<String, f64>)> = None;
    let mut stale = 0;
    let mut log = String::new();

    for epoch in 1..=recipe.epochs {
        let order = shuffled(train.examples.len(), &mut rng);
        let mut loss_sum = 0.0;
        let started = std::time::Instant::now();
        let mut heartbeat = crate::progress::Heartbeat::new();
        for (batch_index, idx) in order.chunks(recipe.batch_size).enumerate() {
            let batch = tokenize(&pre.tokenizer, max_len, &train.texts(idx))?.to(&params.device)?;
            let (outputs, hidden, found) =
                forward(&model, notes.as_mut(), &batch, &mut Ctx::train(&mut rng))?;
            let loss = model.loss(&outputs, &train.labels(idx))?;
            let value = loss.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                return Err(Error::Training(format!(
                    "the loss became {value} at step {step} (try a smaller learning rate)"
                )));
            }
            loss_sum += value;
            let grads = gradients(&params, &loss.backward()?)?;
            let norm = grad_norm(&grads)?;
            let lr = linear_warmup_decay(recipe.learning_rate, step, warmup, total);
            opt.update(&grads, lr, clip_scale(norm, recipe.max_grad_norm))?;
            if let Some(n) = notes.as_mut() {
                n.take(&found, &hidden, &batch)?;
            }
            step += 1;
            if heartbeat.due() {
                let done = batch_index as f64 + 1.0;
                let secs = started.elapsed().as_secs_f64();
                progress(&format!(
                    "epoch {epoch}/{}  batch {}/{per_epoch}  train loss {:.4}  {:.1} examples/s  epoch ends in {}",
                    recipe.epochs,
                    batch_index + 1,
                    loss_sum / done,
                    done * recipe.batch_size as f64 / secs,
                    crate::progress::short_duration(secs / done * (per_epoch as f64 - done)),
                ));
            }
            if recipe.save_every > 0 && step.is_multiple_of(recipe.save_every) {
                save_weights(&params, &step_dir(out, step))?;
            }
        }
        let train_s = started.elapsed().as_secs_f64();
        let (predicted, scores) = evaluate(
            &model,
            notes.as_mut(),
            &pre,
            max_len,
            &dev,
            task,
            recipe.batch_size,
        )?;
        let score = scores[metric];
        let row = serde_json::json!({
            "epoch": epoch,
            "step": step,
            "loss": loss_sum / per_epoch as f64,
            "train_s": train_s,
            "dev": scores,
        });
        log.push_str(&row.to_string());
        log.push('\n');
        write_atomic(&out.join("metrics.jsonl"), log.as_bytes())?;
        progress(&format!(
            "epoch {epoch}/{}  train loss {:.4}  dev {metric} {score:.4}",
            recipe.epochs,
            loss_sum / per_epoch as f64
        ));
        if best.as_ref().is_none_or(|(b, _, _)| score > *b) {
            save_weights(&params, &out.join("best"))?;
            write_predictions(&out.join("predictions-dev.tsv"), &dev, &predicted, task)?;
            best = Some((score, epoch, scores));
            stale = 0;
        } else {
            stale += 1;
            if recipe.patience > 0 && stale >= recipe.patience {
                progress(&format!(
                    "no better dev {metric} for {stale} epochs: stopping"
                ));
                break;
            }
        }
    }
    if let Some(n) = notes.as_ref().filter(|n| n.mode == NotesMode::OnTheFly) {
        // The notes as fine-tuning left them (mode U's are in the weights).
        n.book.save(&out.join(NOTES_FILE))?;
    }
    let (_, best_epoch, dev_scores) = best.expect("epochs >= 1 ran");
    Ok(SeedResult {
        seed,
        learning_rate: recipe.learning_rate,
        dev: dev_scores,
        best_epoch,
        steps: step,
        dir: out.to_path_buf(),
    })
}

/// Predictions on `split` and the task's metrics on them.
fn evaluate(
    model: &Classifier,
    mut notes: Option<&mut TaskNotes>,
    pre: &Pretrained,
    max_len: usize,
    split: &Split,
    task: &Task,
    batch_size: usize,
) -> Result<(Vec<f32>, BTreeMap<String, f64>)> {
    let all: Vec<usize> = (0..split.examples.len()).collect();
    let mut predicted = Vec::with_capacity(all.len());
    for idx in all.chunks(batch_size) {
        let batch = tokenize(&pre.tokenizer, max_len, &split.texts(idx))?.to(model.device())?;
        let (outputs, _, _) = forward(model, notes.as_deref_mut(), &batch, &mut Ctx::eval())?;
        predicted.extend(model.predict(&outputs)?);
    }
    let gold = split.labels(&all);
    let scores = task
        .spec
        .metrics
        .iter()
        .map(|m| {
            let s = metrics::score(m, &predicted, &gold).expect("checked metric name");
            (m.clone(), s)
        })
        .collect();
    Ok((predicted, scores))
}

/// `predictions-dev.tsv`: index, prediction (label value or score), gold.
fn write_predictions(path: &Path, split: &Split, predicted: &[f32], task: &Task) -> Result<()> {
    let shown = |v: f32| match task.spec.kind {
        Kind::Classification => task.spec.labels[v as usize].clone(),
        Kind::Regression => format!("{v:.4}"),
    };
    let mut text = String::from("index\tprediction\tlabel\n");
    for (i, (p, e)) in predicted.iter().zip(&split.examples).enumerate() {
        text.push_str(&format!("{i}\t{}\t{}\n", shown(*p), shown(e.label)));
    }
    write_atomic(path, text.as_bytes())
}

/// Mean and sample standard deviation of each metric over seeds.
pub fn summarise(results: &[SeedResult]) -> BTreeMap<String, (f64, f64)> {
    let mut out = BTreeMap::new();
    if let Some(first) = results.first() {
        for name in first.dev.keys() {
            let v: Vec<f64> = results.iter().map(|r| r.dev[name]).collect();
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let var = if v.len() > 1 {
                v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64
            } else {
                0.0
            };
            out.insert(name.clone(), (mean, var.sqrt()));
        }
    }
    out
}

/// The learning rate whose seeds score best on average (by the task's
/// first metric), with those seeds' results, best first.
pub fn best_learning_rate<'a>(
    task: &Task,
    results: &'a [SeedResult],
) -> (f64, Vec<&'a SeedResult>) {
    let metric = &task.spec.metrics[0];
    let mut rates: Vec<f64> = results.iter().map(|r| r.learning_rate).collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    let of = |lr: f64| -> Vec<&SeedResult> {
        let mut runs: Vec<&SeedResult> = results.iter().filter(|r| r.learning_rate == lr).collect();
        runs.sort_by(|a, b| b.dev[metric].total_cmp(&a.dev[metric]));
        runs
    };
    let mean = |lr: f64| -> f64 {
        let runs = of(lr);
        runs.iter().map(|r| r.dev[metric]).sum::<f64>() / runs.len().max(1) as f64
    };
    let best = rates
        .into_iter()
        .max_by(|a, b| mean(*a).total_cmp(&mean(*b)))
        .unwrap_or(0.0);
    (best, of(best))
}

/// Writes `results.json`: every run, the mean ± std over the seeds of the
/// best learning rate, and `best_run`, the folder (next to the file) of
/// that rate's best seed, which `brisk predict` uses.
pub fn write_results(path: &Path, task: &Task, results: &[SeedResult]) -> Result<()> {
    let (lr, best) = best_learning_rate(task, results);
    let best_run = best
        .first()
        .and_then(|r| r.dir.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    let best: Vec<SeedResult> = best.into_iter().cloned().collect();
    let summary: BTreeMap<String, serde_json::Value> = summarise(&best)
        .into_iter()
        .map(|(k, (m, s))| (k, serde_json::json!({ "mean": m, "std": s })))
        .collect();
    write_json(
        path,
        &serde_json::json!({
            "task": task.spec.name,
            "runs": results,
            "best_learning_rate": lr,
            "best_run": best_run,
            "seeds": best.len(),
            "dev": summary,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_decay_follows_electra_depths() {
        let f = |g: &str| layer_lr_factor(g, 4, 0.5);
        assert_eq!(f("classifier"), 1.0);
        assert_eq!(f("bert.pooler"), 1.0);
        assert_eq!(f("bert.encoder.layer.3"), 0.25);
        assert_eq!(f("bert.encoder.layer.0"), 0.5f64.powi(5));
        assert_eq!(f("bert.embeddings"), 0.5f64.powi(6));
        assert_eq!(layer_lr_factor("bert.embeddings", 4, 1.0), 1.0);
    }

    #[test]
    fn shuffles_are_permutations_fixed_by_the_seed() {
        let a = shuffled(100, &mut Rng::new(3));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, shuffled(100, &mut Rng::new(3)));
        assert_ne!(a, shuffled(100, &mut Rng::new(4)));
    }
}
