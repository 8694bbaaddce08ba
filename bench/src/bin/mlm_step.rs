//! brisk's side of `bench/mlm_step.sh`: one masked-LM training step of a
//! preset's BERT, on a batch of the built-in corpus.
//!
//! Besides the step rate it reports the step's matrix-multiply FLOPs and
//! the rate this machine multiplies matrices at (candle's `gemm`, the
//! step's largest shape, same threads): their quotient is the matmul-only
//! floor a step cannot beat, and the gap to it is per-op overhead.
//!
//! It writes what the PyTorch side needs to run the very same step
//! (`init.safetensors`: the initial weights under HF names;
//! `batch.safetensors`: input ids, masked rows and their targets), prints
//! the losses of that step without dropout (before and after one AdamW
//! update), then times full training steps (dropout on) and prints one JSON
//! object.
//!
//! `--device cuda --precision bf16` runs it on a GPU (the CUDA build,
//! `--features cuda`): the checked steps there, and with `--cpu-check` the
//! same steps on the CPU from the same weights, side by side; the report
//! adds the step's MFU against an H100's dense bf16 peak. `--synthetic`
//! draws the batch's tokens uniformly from the preset's vocabulary instead
//! of preparing the built-in corpus (whose vocabulary is smaller than
//! `base`'s 30,522).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use brisk::config::Preset;
use brisk::corpus::generated::Rng;
use brisk::corpus::shards::{PreparedCorpus, Split};
use brisk::corpus::tokenizer::SpecialIds;
use brisk::corpus::{self, Input};
use brisk::model::{BertForMaskedLm, Ctx, Params};
use brisk::pretrain::mlm::mask_tokens;
use brisk::profile::time;
use brisk::train::optim::{clip_scale, grad_norm, gradients, AdamW};
use candle_core::{DType, Device, Tensor};
use clap::Parser;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Preset whose model is timed.
    #[arg(long, default_value = "mini")]
    preset: String,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Timed steps (after `--warmup` untimed ones); the rate is their median.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    #[arg(long)]
    threads: usize,
    /// Learning rate of the checked update.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Where the corpus, weights and batch go.
    #[arg(long)]
    out: PathBuf,
    /// `fused` or `reference` (`model.kernels`).
    #[arg(long, default_value = "fused")]
    kernels: String,
    /// Also time each section of the timed steps (brisk::profile) and print
    /// the table on stderr.
    #[arg(long)]
    profile: bool,
    /// `cpu`, `cuda` or `cuda:N` (`train.device`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// `f32` or `bf16` (`train.precision`).
    #[arg(long, default_value = "f32")]
    precision: String,
    /// Checked optimiser steps (dropout off) before the timed ones.
    #[arg(long, default_value_t = 1)]
    checked_steps: usize,
    /// Also run the checked steps on the CPU (fused kernels, f32) from the
    /// same weights.
    #[arg(long)]
    cpu_check: bool,
    /// Uniform random tokens over the preset's vocabulary, no corpus.
    #[arg(long)]
    synthetic: bool,
}

/// Dense bf16 peak of one H100 SXM (TFLOP/s), the MFU's denominator.
const H100_BF16_TFLOPS: f64 = 989.0;

/// Multiply-add FLOPs of the matrix products in one training step: the
/// forward's products (Q/K/V/output projections, attention scores and
/// context, feed-forward, head transform and tied decoder on the masked
/// rows), three times (the backward computes two products per forward one).
fn step_matmul_flops(
    cfg: &brisk::config::ModelConfig,
    batch: usize,
    len: usize,
    masked: usize,
) -> f64 {
    let (h, f, v) = (
        cfg.hidden_size as f64,
        cfg.intermediate_size as f64,
        cfg.vocab_size as f64,
    );
    let tokens = (batch * len) as f64;
    let per_layer =
        tokens * 2.0 * (4.0 * h * h + 2.0 * h * f) + 2.0 * 2.0 * tokens * len as f64 * h;
    let head = masked as f64 * 2.0 * (h * h + h * v);
    3.0 * (cfg.num_hidden_layers as f64 * per_layer + head)
}

/// GFLOP/s of candle's matmul on `[m, k] × [k, n]` in `dtype` on `dev`
/// (median of 9).
fn matmul_rate(m: usize, k: usize, n: usize, dev: &Device, dtype: DType) -> anyhow::Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (m, k), dev)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1.0, (k, n), dev)?.to_dtype(dtype)?;
    let mut times = Vec::new();
    for _ in 0..10 {
        dev.synchronize()?;
        let start = Instant::now();
        let c = a.matmul(&b)?;
        dev.synchronize()?;
        std::hint::black_box(c);
        times.push(start.elapsed().as_secs_f64());
    }
    times.remove(0);
    times.sort_by(f64::total_cmp);
    Ok(2.0 * (m * k * n) as f64 / times[times.len() / 2] / 1e9)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !cfg!(feature = "mimalloc") && std::env::var_os("BRISK_GLIBC_DEFAULTS").is_none() {
        brisk::runtime::keep_freed_memory();
    }
    brisk::runtime::init_pool(Some(args.threads))?;
    brisk::runtime::on_pool(|| run(args))
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut config = Preset::from_name(&args.preset)?.config();
    // HF BERT's layout, which the PyTorch side builds: learned absolute
    // positions (tiny and mini default to rotary ones).
    config.model.position = brisk::config::Position::Absolute;
    config.train.batch_size = args.batch;
    config.train.learning_rate = args.lr;
    config.model.kernels = match args.kernels.as_str() {
        "fused" => brisk::config::Kernels::Fused,
        "reference" => brisk::config::Kernels::Reference,
        other => anyhow::bail!("--kernels: {other:?} is neither fused nor reference"),
    };
    let device = brisk::model::device::open(&args.device)?;
    let compute = match args.precision.as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        other => anyhow::bail!("--precision: {other:?} is neither f32 nor bf16"),
    };
    std::fs::create_dir_all(&args.out)?;
    let (tokens, special, l) = batch_tokens(&args, &mut config)?;
    let b = args.batch;

    let mut params = Params::mixed(device.clone(), DType::F32, compute);
    let model = BertForMaskedLm::new(&config.model, &mut params, config.train.seed)?;
    params.save(&args.out.join("init.safetensors"))?;

    let masked = mask_tokens(
        &tokens,
        &special,
        config.model.vocab_size,
        &config.objective,
        &mut Rng::new(7),
    );
    let n = masked.rows.len();
    let on = |dev: &Device| -> anyhow::Result<[Tensor; 3]> {
        Ok([
            Tensor::from_vec(masked.inputs.clone(), (b, l), dev)?,
            Tensor::from_vec(masked.rows.clone(), n, dev)?,
            Tensor::from_vec(masked.targets.clone(), n, dev)?,
        ])
    };
    let [ids, rows, targets] = on(&Device::Cpu)?;
    let as_i64 = |t: &Tensor| t.to_dtype(DType::I64);
    let batch: HashMap<String, Tensor> = [
        ("input_ids", as_i64(&ids)?),
        ("rows", as_i64(&rows)?),
        ("targets", as_i64(&targets)?),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    candle_core::safetensors::save(&batch, args.out.join("batch.safetensors"))?;

    // The checked steps: no dropout, so both frameworks (and both devices)
    // compute the same thing.
    let batch = on(&device)?;
    let mut opt = AdamW::new(&params, &config.train)?;
    let checked = checked_steps(
        &model,
        &params,
        &mut opt,
        &batch,
        &config,
        args.checked_steps,
    )?;
    let cpu_checked = match args.cpu_check && !device.is_cpu() {
        true => {
            let mut cpu = config.clone();
            cpu.model.kernels = brisk::config::Kernels::Fused;
            let mut p = Params::new(Device::Cpu, DType::F32);
            let m = BertForMaskedLm::new(&cpu.model, &mut p, cpu.train.seed)?;
            let mut o = AdamW::new(&p, &cpu.train)?;
            let batch = on(&Device::Cpu)?;
            Some(checked_steps(&m, &p, &mut o, &batch, &cpu, args.checked_steps)?.losses)
        }
        false => None,
    };

    // Timed training steps, dropout on, as in pre-training.
    // The machine is a shared VM: the median step resists the odd slow one.
    let mut rng = Rng::new(11);
    let mut times = Vec::with_capacity(args.steps);
    for i in 0..args.warmup + args.steps {
        brisk::profile::enable(args.profile && i >= args.warmup);
        let start = Instant::now();
        // The loss's read-back waits for the device: the step is done.
        train_step(
            &model,
            &params,
            &mut opt,
            &batch,
            &config,
            &mut Ctx::train(&mut rng),
        )?;
        if i >= args.warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    brisk::profile::enable(false);
    if args.profile {
        print_profile(&times, &brisk::profile::take());
    }
    times.sort_by(f64::total_cmp);
    let steps_per_s = 1.0 / times[times.len() / 2];
    let flops = step_matmul_flops(&config.model, b, l, n);
    let rate = matmul_rate(
        b * l,
        config.model.hidden_size,
        config.model.intermediate_size,
        &device,
        compute,
    )?;
    let mut report = serde_json::json!({
        "isa_kernels": format!("{:?}", brisk::model::fused::kernels::isa()),
        "framework": if args.kernels == "fused" && device.is_cpu() { "brisk".to_string() } else { format!("brisk ({})", args.kernels) },
        "device": brisk::model::device::name(&device),
        "precision": args.precision,
        "preset": args.preset,
        "batch": b,
        "seq_len": l,
        "threads": args.threads,
        "parameters": params.count(),
        "masked": n,
        "loss_step1": checked.losses[0],
        "checked_losses": checked.losses,
        "loss_after_update": checked.after,
        "grad_norm_step1": checked.norm,
        "steps_per_s": steps_per_s,
        "step_ms_min": times[0] * 1e3,
        "tokens_per_s": steps_per_s * (b * l) as f64,
        "peak_rss_mb": peak_rss_mb().context("reading /proc/self/status")?,
        "matmul_flops": flops,
        "matmul_gflops_rate": rate,
    });
    if let Some(losses) = cpu_checked {
        report["cpu_checked_losses"] = serde_json::json!(losses);
    }
    if !device.is_cpu() {
        report["mfu"] = serde_json::json!(flops * steps_per_s / (H100_BF16_TFLOPS * 1e12));
    }
    println!("{report}");
    Ok(())
}

/// The batch's text `[batch·len]`, its special ids and its length: the
/// first sequences of the built-in corpus (prepared under `--out` once, the
/// model's vocabulary set to the corpus's), or with `--synthetic` uniform
/// draws over the preset's vocabulary between `[CLS]` and `[SEP]`.
fn batch_tokens(
    args: &Args,
    config: &mut brisk::config::Config,
) -> anyhow::Result<(Vec<u32>, SpecialIds, usize)> {
    let l = config.data.seq_len;
    if args.synthetic {
        let special = SpecialIds {
            pad: 0,
            unk: 100,
            cls: 101,
            sep: 102,
            mask: 103,
        };
        let vocab = config.model.vocab_size;
        let mut rng = Rng::new(5);
        let tokens = (0..args.batch * l)
            .map(|i| match i % l {
                0 => special.cls,
                j if j == l - 1 => special.sep,
                _ => 1000 + rng.below(vocab - 1000) as u32,
            })
            .collect();
        return Ok((tokens, special, l));
    }
    let corpus_dir = args.out.join("corpus");
    if !corpus_dir.join("manifest.json").exists() {
        std::fs::create_dir_all(&corpus_dir)?;
        corpus::prepare(
            &config.data,
            config.model.vocab_size,
            &Input::Generated,
            &corpus_dir,
            false,
        )?;
    }
    let corpus = PreparedCorpus::open(&corpus_dir)?;
    let m = &corpus.manifest;
    config.model.vocab_size = m.tokenizer.vocab_size;
    let tokens = (0..args.batch)
        .flat_map(|i| corpus.sequence(Split::Train, i).tokens.to_vec())
        .collect();
    Ok((tokens, m.special_ids, m.seq_len))
}

/// What the checked steps gave: each step's loss, the loss after the
/// last update, and the first step's gradient norm.
struct Checked {
    losses: Vec<f32>,
    after: f32,
    norm: f64,
}

/// One optimiser step on `[ids, rows, targets]`: the loss and gradient
/// norm.
fn train_step(
    model: &BertForMaskedLm,
    params: &Params,
    opt: &mut AdamW,
    [ids, rows, targets]: &[Tensor; 3],
    config: &brisk::config::Config,
    ctx: &mut Ctx,
) -> anyhow::Result<(f32, f64)> {
    let loss = model.loss(ids, None, rows, targets, ctx)?;
    let grads = loss.backward()?;
    let grads = time("gradients out of the store", || gradients(params, &grads))?;
    let norm = time("gradient norm", || grad_norm(&grads))?;
    let lr = config.train.learning_rate;
    time("optimiser (AdamW)", || {
        opt.update(&grads, lr, clip_scale(norm, config.train.max_grad_norm))
    })?;
    Ok((loss.to_dtype(DType::F32)?.to_scalar::<f32>()?, norm))
}

/// `n` optimiser steps without dropout, then the loss once more.
fn checked_steps(
    model: &BertForMaskedLm,
    params: &Params,
    opt: &mut AdamW,
    batch: &[Tensor; 3],
    config: &brisk::config::Config,
    n: usize,
) -> anyhow::Result<Checked> {
    let mut losses = Vec::with_capacity(n);
    let mut first_norm = f64::NAN;
    for i in 0..n.max(1) {
        let (loss, norm) = train_step(model, params, opt, batch, config, &mut Ctx::eval())?;
        losses.push(loss);
        if i == 0 {
            first_norm = norm;
        }
    }
    let [ids, rows, targets] = batch;
    let after = model
        .loss(ids, None, rows, targets, &mut Ctx::eval())?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    Ok(Checked {
        losses,
        after,
        norm: first_norm,
    })
}

/// The mean step's time per profiled section, largest first, and what is
/// outside them all, on stderr as a Markdown table.
fn print_profile(times: &[f64], sections: &[brisk::profile::Section]) {
    let steps = times.len() as f64;
    let step_ms = times.iter().sum::<f64>() / steps * 1e3;
    let mut rows: Vec<(&str, f64, f64)> = sections
        .iter()
        .map(|s| (s.name, s.seconds / steps * 1e3, s.calls as f64 / steps))
        .collect();
    let inside: f64 = rows.iter().map(|r| r.1).sum();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    rows.push((
        "outside every section (autograd, tensor glue)",
        step_ms - inside,
        0.0,
    ));
    eprintln!("\n| section | ms per step | % of step | calls per step |");
    eprintln!("| --- | ---: | ---: | ---: |");
    for (name, ms, calls) in rows {
        let calls = if calls > 0.0 {
            format!("{calls:.0}")
        } else {
            String::new()
        };
        eprintln!(
            "| {name} | {ms:.1} | {:.1} | {calls} |",
            100.0 * ms / step_ms
        );
    }
    eprintln!("| mean step | {step_ms:.1} | 100.0 | |\n");
}

/// The process's peak resident set (VmHWM), in MB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
