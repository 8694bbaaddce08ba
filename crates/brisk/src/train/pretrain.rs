//! The pre-training loop (first cut): masked-LM on packed shards, AdamW with
//! warm-up and linear decay, clipping, periodic validation, `metrics.jsonl`
//! and a final checkpoint.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use super::optim::{clip_scale, grad_norm, AdamW};
use super::schedule::{linear_warmup_decay, warmup_steps};
use crate::config::Config;
use crate::corpus::generated::Rng;
use crate::corpus::shards::{splitmix64, PreparedCorpus, Split};
use crate::error::{Error, Result};
use crate::model::{BertForMaskedLm, Ctx, Params};
use crate::pretrain::mlm::mask_tokens;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    pub step: u64,
    pub loss: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: u64,
    pub wall_s: f64,
    pub tokens_per_s: f64,
}

/// Final figures of a run (`summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub steps: u64,
    pub tokens: u64,
    pub final_loss: f64,
    pub final_val_loss: f64,
    pub unigram_entropy_nats: f64,
    pub parameters: usize,
    pub wall_s: f64,
    pub tokens_per_s: f64,
}

/// Sequence order: a fresh seeded permutation of the training split each epoch.
struct Order {
    seed: u64,
    len: usize,
    epoch: u64,
    perm: Vec<u32>,
    next: usize,
}

impl Order {
    fn new(seed: u64, len: usize) -> Order {
        let mut order = Order {
            seed,
            len,
            epoch: 0,
            perm: Vec::new(),
            next: 0,
        };
        order.shuffle();
        order
    }

    fn shuffle(&mut self) {
        let mut rng = Rng::new(self.seed ^ splitmix64(self.epoch));
        self.perm = (0..self.len as u32).collect();
        for i in (1..self.len).rev() {
            self.perm.swap(i, rng.below(i + 1));
        }
        self.next = 0;
    }

    fn take(&mut self) -> usize {
        if self.next == self.len {
            self.epoch += 1;
            self.shuffle();
        }
        self.next += 1;
        self.perm[self.next - 1] as usize
    }
}

/// Token ids of sequences `indices` of a split, concatenated.
fn gather(corpus: &PreparedCorpus, split: Split, indices: impl Iterator<Item = usize>) -> Vec<u32> {
    indices
        .flat_map(|i| corpus.sequence(split, i).tokens.iter().copied())
        .collect()
}

/// Mean MLM loss over the first `batches` validation batches, each with a
/// mask fixed by its index (so every evaluation sees the same masks).
pub fn validation_loss(
    model: &BertForMaskedLm,
    corpus: &PreparedCorpus,
    config: &Config,
) -> Result<f64> {
    let n = corpus.num_sequences(Split::Validation);
    if n == 0 {
        return Err(Error::Usage(
            "the corpus has no validation split (data.val_fraction = 0)".into(),
        ));
    }
    let b = config.train.batch_size.min(n);
    let mut total = 0.0;
    let batches = config.eval.batches.min(n.div_ceil(b)).max(1);
    for i in 0..batches {
        let indices = (i * b..(i + 1) * b).map(|j| j % n);
        let tokens = gather(corpus, Split::Validation, indices);
        let mut rng = Rng::new(0x7a1 ^ splitmix64(i as u64));
        total += batch_loss(
            model,
            corpus,
            config,
            &tokens,
            b,
            &mut rng,
            &mut Ctx::eval(),
        )?
        .to_scalar::<f32>()? as f64;
    }
    Ok(total / batches as f64)
}

fn batch_loss(
    model: &BertForMaskedLm,
    corpus: &PreparedCorpus,
    config: &Config,
    tokens: &[u32],
    batch: usize,
    mask_rng: &mut Rng,
    ctx: &mut Ctx,
) -> Result<Tensor> {
    let m = &corpus.manifest;
    let masked = mask_tokens(
        tokens,
        &m.special_ids,
        m.tokenizer.vocab_size,
        &config.objective,
        mask_rng,
    );
    let dev = Device::Cpu;
    let ids = Tensor::from_vec(masked.inputs, (batch, m.seq_len), &dev)?;
    let n = masked.rows.len();
    let rows = Tensor::from_vec(masked.rows, n, &dev)?;
    let targets = Tensor::from_vec(masked.targets, n, &dev)?;
    model.loss(&ids, None, &rows, &targets, ctx)
}

/// Refuses the options of the config that this first-cut loop does not
/// honour yet, rather than silently ignoring them.
pub fn check_options(config: &Config) -> Result<()> {
    let t = &config.train;
    if t.tokens != 0 || !t.budget.is_empty() || t.grad_accum_steps != 1 {
        return Err(Error::Config(
            "`train.tokens`, `train.budget` and `train.grad_accum_steps` are not available in pretrain yet: \
             use train.steps, and leave the others at 0, \"\" and 1"
                .into(),
        ));
    }
    if t.steps == 0 {
        return Err(Error::Usage(
            "`train.steps` must be at least 1 (set --steps N)".into(),
        ));
    }
    Ok(())
}

/// Trains `config.train.steps` steps on `corpus`, writing `metrics.jsonl`,
/// `checkpoints/final/model.safetensors` and `summary.json` into `run_dir`.
pub fn pretrain(
    config: &Config,
    corpus: &PreparedCorpus,
    run_dir: &Path,
    verbose: bool,
) -> Result<Summary> {
    check_options(config)?;
    let steps = config.train.steps;
    if steps == 0 {
        return Err(Error::Usage(
            "`train.steps` must be at least 1 (set --steps N)".into(),
        ));
    }
    let m = &corpus.manifest;
    if m.tokenizer.vocab_size != config.model.vocab_size {
        return Err(Error::Config(format!(
            "`model.vocab_size` is {} but the corpus vocabulary has {} entries",
            config.model.vocab_size, m.tokenizer.vocab_size
        )));
    }
    let mut params = Params::new(Device::Cpu, DType::F32);
    let model = BertForMaskedLm::new(&config.model, &mut params, config.train.seed)?;
    let mut opt = AdamW::new(&params, &config.train)?;
    let train_len = corpus.num_sequences(Split::Train);
    let mut order = Order::new(config.train.seed, train_len);
    let batch = config.train.batch_size;
    let warmup = warmup_steps(steps, config.train.warmup_fraction);
    let metrics_path = run_dir.join("metrics.jsonl");
    let mut metrics =
        std::fs::File::create(&metrics_path).map_err(|e| Error::io(&metrics_path, e))?;
    let start = Instant::now();
    let mut tokens = 0u64;
    let (mut last_loss, mut last_val) = (f64::NAN, f64::NAN);

    for step in 0..steps {
        let step_seed = splitmix64(config.train.seed ^ splitmix64(step + 1));
        let mut mask_rng = Rng::new(step_seed);
        let mut dropout_rng = Rng::new(!step_seed);
        let indices: Vec<usize> = (0..batch).map(|_| order.take()).collect();
        let ids = gather(corpus, Split::Train, indices.into_iter());
        let loss = batch_loss(
            &model,
            corpus,
            config,
            &ids,
            batch,
            &mut mask_rng,
            &mut Ctx::train(&mut dropout_rng),
        )?;
        let loss_value = loss.to_scalar::<f32>()? as f64;
        if !loss_value.is_finite() {
            return Err(Error::Tensor(format!(
                "loss became {loss_value} at step {}",
                step + 1
            )));
        }
        let grads = loss.backward()?;
        let norm = grad_norm(&params, &grads)?;
        let lr = linear_warmup_decay(config.train.learning_rate, step, warmup, steps);
        opt.update(&grads, lr, clip_scale(norm, config.train.max_grad_norm))?;
        tokens += (batch * m.seq_len) as u64;
        last_loss = loss_value;

        let done = step + 1;
        let evaluate = done == steps || (config.eval.every > 0 && done % config.eval.every == 0);
        let val_loss = if evaluate {
            last_val = validation_loss(&model, corpus, config)?;
            Some(last_val)
        } else {
            None
        };
        if evaluate || done % config.train.log_every == 0 {
            let wall_s = start.elapsed().as_secs_f64();
            let row = Metrics {
                step: done,
                loss: loss_value,
                val_loss,
                lr,
                grad_norm: norm,
                tokens,
                wall_s,
                tokens_per_s: tokens as f64 / wall_s,
            };
            let line = serde_json::to_string(&row).expect("serialisable");
            writeln!(metrics, "{line}").map_err(|e| Error::io(&metrics_path, e))?;
            if verbose {
                let val = val_loss.map_or(String::new(), |v| format!("  val {v:.3}"));
                eprintln!(
                    "step {done:>6}/{steps}  loss {loss_value:.3}{val}  lr {lr:.2e}  {:.0} tok/s",
                    row.tokens_per_s
                );
            }
        }
    }

    // The run directory holds everything needed to use the model.
    let tokenizer = corpus.dir.join(&m.tokenizer.file);
    let copy = run_dir.join("tokenizer.json");
    std::fs::copy(&tokenizer, &copy).map_err(|e| Error::io(&copy, e))?;
    let dir = run_dir.join("checkpoints").join("final");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    params.save(&dir.join("model.safetensors"))?;
    let wall_s = start.elapsed().as_secs_f64();
    let summary = Summary {
        steps,
        tokens,
        final_loss: last_loss,
        final_val_loss: last_val,
        unigram_entropy_nats: m.unigram_entropy_nats,
        parameters: params.count(),
        wall_s,
        tokens_per_s: tokens as f64 / wall_s,
    };
    crate::run::write_json(&run_dir.join("summary.json"), &summary)?;
    Ok(summary)
}
