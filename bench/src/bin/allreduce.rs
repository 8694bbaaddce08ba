//! brisk's side of `bench/allreduce.sh`: the gradient exchange of one
//! data-parallel step (`brisk::dist::all_reduce_mean`: pack every group's
//! gradient, sum over the ranks in buckets, divide, unpack) on gradients
//! shaped like a preset's masked-LM parameters, under `mpirun`. Rank 0
//! prints one JSON object per preset: the median seconds per exchange, of
//! the all-reduce calls alone on a flat buffer, and the bytes exchanged.

use std::time::Instant;

use anyhow::Context;
use brisk::config::Preset;
use brisk::dist::{mpi::Mpi, Collective, Exchange};
use brisk::model::Params;
use candle_core::{DType, Device, Tensor};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Presets whose parameter groups are exchanged.
    #[arg(long, default_value = "mini,base")]
    presets: String,
    /// Vocabulary size of the models (the corpus's, in a real run).
    #[arg(long, default_value_t = 30522)]
    vocab: usize,
    /// Timed exchanges (after 2 untimed ones); the time is their median.
    #[arg(long, default_value_t = 10)]
    repeats: usize,
}

fn main() -> anyhow::Result<()> {
    // As the `brisk` binary does: large buffers stay in the heap.
    brisk::runtime::keep_freed_memory();
    let args = Args::parse();
    let mpi = Mpi::init().context("joining the MPI job (run under mpirun)")?;
    for name in args.presets.split(',') {
        let preset = Preset::from_name(name)?;
        let mut config = preset.config();
        config.model.vocab_size = args.vocab;
        config.objective.kind = "mlm".into();
        let mut params = Params::new(Device::Cpu, DType::F32);
        let _model = brisk::pretrain::objective::build(&config, &mut params, None)?;
        // Gradients of the same shapes, different on each rank.
        let fill = 1.0 + mpi.rank() as f64;
        let grads: Vec<Tensor> = params
            .groups()
            .iter()
            .map(|g| (g.var.as_tensor().ones_like()? * fill)?.contiguous())
            .collect::<candle_core::Result<_>>()?;
        let elements: usize = grads.iter().map(Tensor::elem_count).sum();
        let mut times = Vec::new();
        let mut exchange = Exchange::default();
        for i in 0..args.repeats + 2 {
            let mut g = grads.clone();
            mpi.barrier()?;
            let start = Instant::now();
            exchange.all_reduce_mean(&mpi, &mut g)?;
            let secs = start.elapsed().as_secs_f64();
            if i >= 2 {
                times.push(secs);
            }
            // The mean of 1, 2, ... world.
            let want = (1 + mpi.world()) as f32 / 2.0;
            let got = g[0].flatten_all()?.get(0)?.to_scalar::<f32>()?;
            anyhow::ensure!((got - want).abs() < 1e-6, "mean {got}, expected {want}");
        }
        times.sort_by(f64::total_cmp);
        // The collective alone, on one flat buffer in the same buckets.
        let send = vec![fill as f32; elements];
        let mut sum = vec![0f32; elements];
        let mut raw = Vec::new();
        let bucket = brisk::dist::BUCKET;
        for i in 0..args.repeats + 2 {
            mpi.barrier()?;
            let start = Instant::now();
            for (s, r) in send.chunks(bucket).zip(sum.chunks_mut(bucket)) {
                mpi.all_reduce_sum_f32(s, r)?;
            }
            if i >= 2 {
                raw.push(start.elapsed().as_secs_f64());
            }
        }
        raw.sort_by(f64::total_cmp);
        if mpi.rank() == 0 {
            let row = serde_json::json!({
                "side": "brisk",
                "preset": name,
                "ranks": mpi.world(),
                "elements": elements,
                "bytes": elements * 4,
                "groups": grads.len(),
                "seconds": times[times.len() / 2],
                "collective_seconds": raw[raw.len() / 2],
            });
            println!("{row}");
        }
    }
    mpi.finish();
    Ok(())
}
