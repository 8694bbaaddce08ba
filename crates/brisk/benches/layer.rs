//! One encoder layer of the `mini` shape (batch 16 × 128, hidden 256, 4
//! heads, FFN 1024), fused kernel against the reference composition of
//! candle ops: forward alone, and forward + backward.
//!
//! `cargo bench -p brisk --bench layer` (threads: `RAYON_NUM_THREADS`).

use brisk::config::{Kernels, Preset};
use brisk::corpus::generated::Rng;
use brisk::model::bert::EncoderLayer;
use brisk::model::{Ctx, Params};
use candle_core::{DType, Device, Tensor, Var};

fn main() {
    brisk::runtime::keep_freed_memory();
    divan::main();
}

struct Setup {
    layer: EncoderLayer,
    x: Var,
}

fn setup() -> Setup {
    let cfg = Preset::Mini.config().model;
    assert_eq!(cfg.kernels, Kernels::Fused);
    let mut params = Params::new(Device::Cpu, DType::F32);
    let layer = EncoderLayer::new(&mut params, "layer", &cfg, &mut Rng::new(1)).unwrap();
    let x = Tensor::randn(0f32, 1.0, (16, 128, cfg.hidden_size), &Device::Cpu).unwrap();
    Setup {
        layer,
        x: Var::from_tensor(&x).unwrap(),
    }
}

fn run(s: &Setup, fused: bool, backward: bool) {
    let mut rng = Rng::new(2);
    let mut ctx = Ctx::train(&mut rng);
    let y = if fused {
        s.layer.forward(s.x.as_tensor(), None, None, &mut ctx)
    } else {
        s.layer
            .reference_forward(s.x.as_tensor(), None, None, &mut ctx)
    }
    .unwrap();
    if backward {
        divan::black_box(y.sum_all().unwrap().backward().unwrap());
    } else {
        divan::black_box(y);
    }
}

#[divan::bench(args = ["fused", "reference"], sample_count = 20)]
fn forward(bencher: divan::Bencher, kernels: &str) {
    let s = setup();
    bencher.bench_local(|| run(&s, kernels == "fused", false));
}

#[divan::bench(args = ["fused", "reference"], sample_count = 20)]
fn forward_backward(bencher: divan::Bencher, kernels: &str) {
    let s = setup();
    bencher.bench_local(|| run(&s, kernels == "fused", true));
}
