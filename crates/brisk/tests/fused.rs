//! The fused encoder layer against its reference, the plain composition of
//! candle ops: the same outputs and the same gradients (for the hidden
//! states, every parameter and the attention bias) on random shapes, with
//! and without bias, padding and dropout; and finite differences in f64.

use brisk::config::{Kernels, ModelConfig, Norm, Preset};
use brisk::corpus::generated::Rng;
use brisk::model::bert::EncoderLayer;
use brisk::model::{Ctx, Params};
use candle_core::{DType, Device, Tensor, Var};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Case {
    batch: usize,
    len: usize,
    heads: usize,
    head_dim: usize,
    ffn: usize,
    norm: Norm,
    act: &'static str,
    /// 0: none; 1: one per head; 2: one per batch × head.
    bias: u8,
    pad: bool,
    dropout: bool,
    seed: u64,
}

fn config(c: &Case) -> ModelConfig {
    let mut cfg = Preset::Tiny.config().model;
    cfg.hidden_size = c.heads * c.head_dim;
    cfg.num_attention_heads = c.heads;
    cfg.intermediate_size = c.ffn;
    cfg.norm = c.norm;
    cfg.hidden_act = c.act.to_string();
    cfg.kernels = Kernels::Fused;
    let p = if c.dropout { 0.2 } else { 0.0 };
    cfg.hidden_dropout_prob = p;
    cfg.attention_probs_dropout_prob = p;
    cfg
}

fn random(shape: &[usize], dtype: DType, rng: &mut Rng) -> Var {
    let n: usize = shape.iter().product();
    let values: Vec<f64> = (0..n).map(|_| rng.unit() * 2.0 - 1.0).collect();
    let t = Tensor::from_vec(values, shape, &Device::Cpu).unwrap();
    Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap()
}

/// Everything one case needs: a layer with random parameters (not the
/// usual init: LayerNorm gains and biases away from 1 and 0 so their
/// gradients are tested), inputs, bias, padding mask and output weights.
struct Setup {
    layer: EncoderLayer,
    params: Params,
    x: Var,
    bias: Option<Var>,
    pad: Option<Tensor>,
    weights: Tensor,
    dropout_seed: u64,
}

fn setup(c: &Case, dtype: DType) -> Setup {
    let cfg = config(c);
    let mut params = Params::new(Device::Cpu, dtype);
    let mut rng = Rng::new(c.seed);
    let layer = EncoderLayer::new(&mut params, "layer", &cfg, &mut rng).unwrap();
    assert!(layer.is_fused());
    let flat = params.groups()[0].var.clone();
    flat.set(random(flat.dims(), dtype, &mut rng).as_tensor())
        .unwrap();
    let h = cfg.hidden_size;
    let x = random(&[c.batch, c.len, h], dtype, &mut rng);
    let bias = match c.bias {
        0 => None,
        1 => Some(random(&[c.heads, c.len, c.len], dtype, &mut rng)),
        _ => Some(random(&[c.batch * c.heads, c.len, c.len], dtype, &mut rng)),
    };
    let pad = c.pad.then(|| {
        // The last sequence keeps only its first token.
        let keep: Vec<f64> = (0..c.batch * c.len)
            .map(|i| {
                if i / c.len == c.batch - 1 && i % c.len > 0 {
                    0.0
                } else {
                    1.0
                }
            })
            .collect();
        Tensor::from_vec(keep, (c.batch, c.len), &Device::Cpu).unwrap()
    });
    let weights = random(&[c.batch, c.len, h], dtype, &mut rng)
        .as_tensor()
        .detach();
    Setup {
        layer,
        params,
        x,
        bias,
        pad,
        weights,
        dropout_seed: c.seed ^ 0xd0,
    }
}

/// Output and gradients (x, flat parameters, bias) of `Σ weights ⊙ layer(x)`.
fn run(s: &Setup, fused: bool) -> Vec<Vec<f64>> {
    let mut rng = Rng::new(s.dropout_seed);
    let mut ctx = Ctx::train(&mut rng);
    let bias = s.bias.as_ref().map(|b| b.as_tensor());
    let y = if fused {
        s.layer
            .forward(s.x.as_tensor(), bias, s.pad.as_ref(), &mut ctx)
    } else {
        s.layer
            .reference_forward(s.x.as_tensor(), bias, s.pad.as_ref(), &mut ctx)
    }
    .unwrap();
    let loss = (&y * &s.weights).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let flat = |t: &Tensor| -> Vec<f64> {
        t.flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let mut out = vec![flat(&y)];
    let mut wrt = vec![s.x.as_tensor(), s.params.groups()[0].var.as_tensor()];
    wrt.extend(bias);
    for t in wrt {
        out.push(flat(grads.get(t).expect("a gradient")));
    }
    out
}

fn max_relative_diff(a: &[f64], b: &[f64]) -> f64 {
    let scale = a.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / scale)
        .fold(0.0, f64::max)
}

fn case() -> impl Strategy<Value = Case> {
    (
        // Hidden width from 3: LayerNorm over 1 or 2 features is piecewise
        // constant, its gradient pure rounding noise.
        (1usize..4, 1usize..10, 1usize..4, 3usize..7, 1usize..13),
        prop_oneof![Just(Norm::Post), Just(Norm::Pre)],
        prop_oneof![Just("gelu"), Just("gelu_new"), Just("relu")],
        (0u8..3, any::<bool>(), any::<bool>(), any::<u64>()),
    )
        .prop_map(
            |((batch, len, heads, head_dim, ffn), norm, act, (bias, pad, dropout, seed))| Case {
                batch,
                len,
                heads,
                head_dim,
                ffn,
                norm,
                act,
                bias,
                pad,
                dropout,
                seed,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn fused_layer_equals_the_reference(c in case()) {
        let s = setup(&c, DType::F32);
        let fused = run(&s, true);
        let reference = run(&s, false);
        let names = ["output", "d x", "d params", "d bias"];
        for ((f, r), name) in fused.iter().zip(&reference).zip(names) {
            let diff = max_relative_diff(r, f);
            prop_assert!(diff < 2e-4, "{name} differs by {diff} (relative) in {c:?}");
        }
    }
}

/// Central finite differences of the fused layer in f64, every element of
/// x, the flat parameters and the bias.
#[test]
fn fused_layer_gradients_match_finite_differences() {
    for (norm, act, bias, pad) in [
        (Norm::Post, "gelu", 1, true),
        (Norm::Pre, "gelu_new", 2, false),
    ] {
        let c = Case {
            batch: 2,
            len: 3,
            heads: 2,
            head_dim: 2,
            ffn: 5,
            norm,
            act,
            bias,
            pad,
            dropout: false,
            seed: 17,
        };
        let s = setup(&c, DType::F64);
        let analytic = run(&s, true);
        let group = s.params.groups()[0].var.clone();
        let mut inputs = vec![s.x.clone(), group];
        inputs.extend(s.bias.clone());
        let loss = |s: &Setup| -> f64 {
            let bias = s.bias.as_ref().map(|b| b.as_tensor());
            let y = s
                .layer
                .forward(s.x.as_tensor(), bias, s.pad.as_ref(), &mut Ctx::eval())
                .unwrap();
            (y * &s.weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let eps = 1e-6;
        for (which, var) in inputs.iter().enumerate() {
            let base: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let set = |values: Vec<f64>| {
                var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap())
                    .unwrap()
            };
            for i in 0..base.len() {
                let mut moved = base.clone();
                moved[i] += eps;
                set(moved.clone());
                let up = loss(&s);
                moved[i] -= 2.0 * eps;
                set(moved);
                let down = loss(&s);
                set(base.clone());
                let numeric = (up - down) / (2.0 * eps);
                let grad = analytic[which + 1][i];
                assert!(
                    (numeric - grad).abs() < 1e-6 * numeric.abs().max(1.0),
                    "{norm:?} input {which}[{i}]: fused backward {grad} vs finite difference {numeric}"
                );
            }
        }
    }
}
