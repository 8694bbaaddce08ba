//! brisk's side of `bench/bilstm_step.sh`: one forward and backward pass of
//! a BiLSTM layer over a batch of sentences of mixed lengths, with the
//! fused recurrence and with candle's per-step composition (the
//! reference).
//!
//! It writes what the PyTorch side needs to run the very same pass
//! (`init.safetensors`: the layer's weights; `batch.safetensors`: inputs,
//! lengths and the probe the loss is taken against), prints the loss and
//! the weight gradient's norm to check them, then times both and prints
//! one JSON object.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use brisk::corpus::generated::Rng;
use brisk::model::Params;
use brisk::tasks::bilstm::BiLstm;
use candle_core::{DType, Device, Tensor};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Sentences per batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Width of each word's input (MiniLM 384 + characters 50).
    #[arg(long, default_value_t = 434)]
    input: usize,
    /// Hidden size of each direction.
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    /// Mean sentence length (CoNLL-2003's is 14.5 words); lengths are drawn
    /// uniformly from 1 to twice this.
    #[arg(long, default_value_t = 14)]
    mean_len: usize,
    /// Timed passes of the fused op (after 3 untimed); the median is kept.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Timed passes of the per-step composition.
    #[arg(long, default_value_t = 3)]
    reference_steps: usize,
    #[arg(long)]
    threads: usize,
    #[arg(long)]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    brisk::runtime::keep_freed_memory();
    brisk::runtime::init_pool(Some(args.threads))?;
    brisk::runtime::on_pool(|| run(args))
}

fn median_ms(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    1e3 * times[times.len() / 2]
}

fn run(args: Args) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let mut rng = Rng::new(5);
    let lengths: Vec<usize> = (0..args.batch)
        .map(|_| 1 + rng.below(2 * args.mean_len))
        .collect();
    let steps = *lengths.iter().max().unwrap();
    let mut params = Params::new(dev.clone(), DType::F32);
    let lstm = BiLstm::new(&mut params, "lstm", args.input, args.hidden, &mut rng)?;
    params.save(&args.out.join("init.safetensors"))?;
    let x = Tensor::randn(0f32, 1.0, (args.batch, steps, args.input), &dev)?;
    let probe = Tensor::randn(0f32, 1.0, (args.batch, steps, 2 * args.hidden), &dev)?;
    let lens = Tensor::from_vec(
        lengths.iter().map(|&l| l as i64).collect::<Vec<_>>(),
        args.batch,
        &dev,
    )?;
    let batch: HashMap<String, Tensor> = [
        ("x", x.clone()),
        ("probe", probe.clone()),
        ("lengths", lens),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    candle_core::safetensors::save(&batch, args.out.join("batch.safetensors"))?;

    let group = params.groups()[0].var.as_tensor().clone();
    let pass = |fused: bool| -> anyhow::Result<(f32, f32)> {
        let y = if fused {
            lstm.forward(&x, &lengths)?
        } else {
            lstm.forward_reference(&x, &lengths)?
        };
        let loss = (&y * &probe)?.sum_all()?;
        let grads = loss.backward()?;
        let g = grads.get(&group).expect("a gradient");
        let norm = g.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
        Ok((loss.to_scalar::<f32>()?, norm))
    };
    let (loss, grad_norm) = pass(true)?;
    let (ref_loss, ref_norm) = pass(false)?;
    let time = |fused: bool, n: usize| -> anyhow::Result<f64> {
        let mut times = Vec::new();
        for i in 0..n + 3 {
            let start = Instant::now();
            pass(fused)?;
            if i >= 3 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        Ok(median_ms(times))
    };
    let fused_ms = time(true, args.steps)?;
    let reference_ms = time(false, args.reference_steps)?;
    let words: usize = lengths.iter().sum();
    println!(
        "{}",
        serde_json::json!({
            "batch": args.batch,
            "steps": steps,
            "words": words,
            "input": args.input,
            "hidden": args.hidden,
            "threads": args.threads,
            "loss": loss,
            "grad_norm": grad_norm,
            "reference_loss": ref_loss,
            "reference_grad_norm": ref_norm,
            "fused_ms": fused_ms,
            "reference_ms": reference_ms,
            "peak_rss_mb": brisk::tasks::labelling::peak_rss_mb(),
        })
    );
    Ok(())
}
