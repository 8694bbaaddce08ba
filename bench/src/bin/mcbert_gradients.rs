//! Why MC-BERT's meta controller learns slowly: the gradient each loss
//! sends into the word-embedding table that the controller, as its
//! decoder, shares with the main model.
//!
//! For a few batches of a prepared corpus it computes, on one model (fresh,
//! or a run's newest weights):
//! - the controller's own MLM loss's gradient on the table;
//! - λ × the multi-choice loss's gradient on the table, whole, and with the
//!   candidates' vectors detached (what remains arrives through the main
//!   model's input embeddings; the difference is the candidates' part);
//! - the cosine between the controller's gradient and the candidates' part.
//!
//! It prints one JSON object per batch and their means. With `--electra`
//! it measures ELECTRA instead, for comparison: its generator's MLM loss
//! and λ × the discriminator's (which reaches the table through the input
//! path only).
//!
//!   cargo run --release -p brisk-bench --bin mcbert-gradients -- \
//!       --corpus corpora/wiki-mini [--preset mini] [--run runs/x] [--batches 4]

use std::path::PathBuf;

use anyhow::Context;
use brisk::config::Preset;
use brisk::corpus::generated::Rng;
use brisk::corpus::shards::{PreparedCorpus, Split};
use brisk::model::mcbert::McBert;
use brisk::model::{Ctx, Params};
use brisk::pretrain::mcbert::losses;
use brisk::pretrain::mlm::mask_tokens;
use brisk::train::optim::gradients_or_zeros;
use candle_core::{DType, Device, Tensor};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// A prepared corpus (`brisk corpus prepare`).
    #[arg(long)]
    corpus: PathBuf,
    #[arg(long, default_value = "mini")]
    preset: String,
    /// A pre-training run (`objective.kind = "mcbert"`) whose newest weights
    /// to load; a fresh model without it.
    #[arg(long)]
    run: Option<PathBuf>,
    #[arg(long, default_value_t = 4)]
    batches: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Measure ELECTRA's generator and discriminator instead.
    #[arg(long)]
    electra: bool,
}

const WORDS: &str = "bert.embeddings.word_embeddings.weight";

/// The gradient of `loss` on the word-embedding table.
fn table_gradient(params: &Params, loss: &Tensor) -> anyhow::Result<Vec<f32>> {
    let grads = gradients_or_zeros(params, &loss.backward()?, &|_| true)?;
    let (_, g) = params
        .split(&grads)?
        .into_iter()
        .find(|(name, _)| *name == WORDS)
        .context("no word-embedding table")?;
    Ok(g.flatten_all()?.to_vec1()?)
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    dot / (norm(a) * norm(b)).max(1e-30)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build_global()?;
    let corpus = PreparedCorpus::open(&args.corpus)?;
    if args.electra {
        return electra(&args, &corpus);
    }
    let mut config = Preset::from_name(&args.preset)?.config();
    config.model.vocab_size = corpus.manifest.tokenizer.vocab_size;
    let o = &mut config.objective;
    (o.kind, o.mask_token_prob, o.random_token_prob) = ("mcbert".into(), 1.0, 0.0);
    let (m, o) = (&corpus.manifest, &config.objective);
    let mut params = Params::new(Device::Cpu, DType::F32);
    let mut model = McBert::new(
        &config.model,
        o.generator_size,
        o.controller_shares,
        &mut params,
        42,
    )?;
    if let Some(run) = &args.run {
        params.load(&brisk::train::checkpoint::latest_weights(run)?)?;
    }
    let batch = config.train.batch_size;
    let mut sums = [0.0f64; 5];
    for b in 0..args.batches {
        let tokens: Vec<u32> = (b * batch..(b + 1) * batch)
            .flat_map(|i| corpus.sequence(Split::Train, i).tokens.to_vec())
            .collect();
        let shape = (batch, m.seq_len);
        let mut masking = Rng::new(b as u64);
        let masked = mask_tokens(
            &tokens,
            &m.special_ids,
            m.tokenizer.vocab_size,
            o,
            &mut masking,
        );
        let mut pass = |candidate_gradient: bool| -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
            model.head.candidate_gradient = candidate_gradient;
            let mut rng = Rng::new(1000 + b as u64);
            let l = losses(
                &model,
                &tokens,
                &masked,
                shape,
                o.discriminator_weight,
                &m.special_ids,
                &mut rng,
                None,
                &mut Ctx::eval(),
            )?;
            let controller = table_gradient(&params, &l.controller)?;
            let choice = table_gradient(&params, &(&l.choice * o.discriminator_weight)?)?;
            Ok((controller, choice))
        };
        let (controller, choice) = pass(true)?;
        let (_, input_path) = pass(false)?;
        let candidates: Vec<f32> = choice.iter().zip(&input_path).map(|(a, b)| a - b).collect();
        let row = [
            norm(&controller),
            norm(&choice),
            norm(&input_path),
            norm(&candidates),
            cosine(&controller, &candidates),
        ];
        for (s, v) in sums.iter_mut().zip(row) {
            *s += v / args.batches as f64;
        }
        println!(
            "{}",
            serde_json::json!({
                "batch": b,
                "controller": row[0],
                "choice": row[1],
                "choice_input_path": row[2],
                "choice_candidates": row[3],
                "cosine_controller_candidates": row[4],
            })
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "mean": true,
            "controller": sums[0],
            "choice": sums[1],
            "choice_input_path": sums[2],
            "choice_candidates": sums[3],
            "cosine_controller_candidates": sums[4],
            "choice_over_controller": sums[1] / sums[0],
        })
    );
    Ok(())
}

/// ELECTRA's generator loss and λ × discriminator loss on the table, per
/// batch and their means.
fn electra(args: &Args, corpus: &PreparedCorpus) -> anyhow::Result<()> {
    use brisk::model::electra::Electra;
    let mut config = Preset::from_name(&args.preset)?.config();
    config.model.vocab_size = corpus.manifest.tokenizer.vocab_size;
    let o = &mut config.objective;
    (o.kind, o.mask_token_prob, o.random_token_prob) = ("electra".into(), 0.85, 0.0);
    let (m, o) = (&corpus.manifest, &config.objective);
    let mut params = Params::new(Device::Cpu, DType::F32);
    let model = Electra::new(&config.model, Some(o.generator_size), &[], &mut params, 42)?;
    if let Some(run) = &args.run {
        params.load(&brisk::train::checkpoint::latest_weights(run)?)?;
    }
    let batch = config.train.batch_size;
    let mut sums = [0.0f64; 2];
    for b in 0..args.batches {
        let tokens: Vec<u32> = (b * batch..(b + 1) * batch)
            .flat_map(|i| corpus.sequence(Split::Train, i).tokens.to_vec())
            .collect();
        let mut masking = Rng::new(b as u64);
        let masked = mask_tokens(
            &tokens,
            &m.special_ids,
            m.tokenizer.vocab_size,
            o,
            &mut masking,
        );
        let l = brisk::pretrain::electra::losses(
            &model,
            &tokens,
            &masked,
            (batch, m.seq_len),
            o.discriminator_weight,
            &mut Rng::new(1000 + b as u64),
            None,
            &mut Ctx::eval(),
        )?;
        let generator = l.generator.context("a learned generator")?;
        let row = [
            norm(&table_gradient(&params, &generator)?),
            norm(&table_gradient(
                &params,
                &(&l.discriminator * o.discriminator_weight)?,
            )?),
        ];
        for (s, v) in sums.iter_mut().zip(row) {
            *s += v / args.batches as f64;
        }
        println!(
            "{}",
            serde_json::json!({"batch": b, "generator": row[0], "discriminator": row[1]})
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "mean": true,
            "generator": sums[0],
            "discriminator": sums[1],
            "discriminator_over_generator": sums[1] / sums[0],
        })
    );
    Ok(())
}
