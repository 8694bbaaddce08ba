//! The fused kernels against their reference, the plain composition of
//! candle ops: the same outputs and the same gradients (for the hidden
//! states, every parameter and the attention bias) on random layer shapes,
//! with and without bias, padding and dropout, and for a whole model
//! (embeddings with token types, layers, masked-LM head and loss); and
//! finite differences in f64.

use brisk::config::{Kernels, ModelConfig, Norm, Position, Preset};
use brisk::corpus::generated::Rng;
use brisk::model::bert::EncoderLayer;
use brisk::model::{BertForMaskedLm, Ctx, Params};
use brisk::train::optim::gradients;
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
    // Any head width, odd ones too: absolute positions (rotary needs even).
    cfg.position = Position::Absolute;
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

fn small_model(
    kernels: Kernels,
    dtype: DType,
    dropout: f64,
    position: Position,
) -> (BertForMaskedLm, Params) {
    let mut cfg = Preset::Tiny.config().model;
    cfg.position = position;
    cfg.vocab_size = 40;
    cfg.hidden_size = 12;
    cfg.num_hidden_layers = 2;
    cfg.num_attention_heads = 3;
    cfg.intermediate_size = 20;
    cfg.max_position_embeddings = 10;
    cfg.type_vocab_size = 2;
    cfg.hidden_dropout_prob = dropout;
    cfg.attention_probs_dropout_prob = dropout;
    cfg.kernels = kernels;
    let mut params = Params::new(Device::Cpu, dtype);
    let model = BertForMaskedLm::new(&cfg, &mut params, 3).unwrap();
    // Move LayerNorm gains and biases off 1 and 0 so their gradients and
    // their use in the forward pass are both tested.
    let mut rng = Rng::new(8);
    for g in params.groups() {
        let moved =
            (g.var.as_tensor() + random(g.var.dims(), dtype, &mut rng).as_tensor() * 0.1).unwrap();
        g.var.set(&moved).unwrap();
    }
    (model, params)
}

/// Input ids, token types, padding mask, masked rows and targets for a
/// 2 × 7 batch with padding in the second sequence.
fn model_batch() -> [Tensor; 5] {
    let dev = &Device::Cpu;
    let ids = Tensor::new(&[[2u32, 9, 4, 17, 30, 5, 3], [2, 11, 4, 3, 0, 0, 0]], dev).unwrap();
    let types = Tensor::new(&[[0u32, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0]], dev).unwrap();
    let mask = Tensor::new(&[[1u32; 7], [1, 1, 1, 1, 0, 0, 0]], dev).unwrap();
    let rows = Tensor::new(&[1u32, 2, 5, 8, 9], dev).unwrap();
    let targets = Tensor::new(&[6u32, 7, 39, 8, 10], dev).unwrap();
    [ids, types, mask, rows, targets]
}

/// `Σ weights ⊙ bert(ids, types)` plus the masked-LM loss: exercises token
/// types in the embeddings and the fused head.
fn model_loss(model: &BertForMaskedLm, batch: &[Tensor; 5], ctx: &mut Ctx) -> Tensor {
    let [ids, types, mask, rows, targets] = batch;
    let hidden = model
        .bert
        .forward(ids, Some(types), Some(mask), None, ctx)
        .unwrap();
    let n = hidden.elem_count();
    let weights: Vec<f64> = (0..n).map(|i| ((i * 7) % 11) as f64 / 11.0 - 0.5).collect();
    let weights = Tensor::from_vec(weights, hidden.shape(), &Device::Cpu)
        .unwrap()
        .to_dtype(hidden.dtype())
        .unwrap();
    let mlm = model.loss(ids, Some(mask), rows, targets, ctx).unwrap();
    let dtype = hidden.dtype();
    ((hidden * weights).unwrap().sum_all().unwrap() + mlm.to_dtype(dtype).unwrap()).unwrap()
}

#[test]
fn the_fused_model_equals_the_reference_model() {
    let cases = [
        (0.0, Position::Absolute),
        (0.1, Position::Absolute),
        (0.1, Position::TupeA),
        (0.0, Position::TupeR),
        (0.1, Position::Rope),
    ];
    for (dropout, position) in cases {
        let batch = model_batch();
        let mut results = Vec::new();
        for kernels in [Kernels::Fused, Kernels::Reference] {
            let (model, params) = small_model(kernels, DType::F32, dropout, position);
            assert_eq!(model.is_fused(), kernels == Kernels::Fused);
            let mut rng = Rng::new(5);
            let loss = model_loss(&model, &batch, &mut Ctx::train(&mut rng));
            let grads = gradients(&params, &loss.backward().unwrap()).unwrap();
            let value = loss.to_scalar::<f32>().unwrap() as f64;
            let named: Vec<(String, Vec<f64>)> = params
                .split(&grads)
                .unwrap()
                .into_iter()
                .map(|(name, g)| {
                    let g = g.flatten_all().unwrap().to_dtype(DType::F64).unwrap();
                    (name.to_string(), g.to_vec1().unwrap())
                })
                .collect();
            results.push((value, named));
        }
        let (fused, reference) = (&results[0], &results[1]);
        assert!(
            (fused.0 - reference.0).abs() < 1e-4 * reference.0.abs().max(1.0),
            "{position:?} dropout {dropout}: loss {} vs {}",
            fused.0,
            reference.0
        );
        for ((name, f), (_, r)) in fused.1.iter().zip(&reference.1) {
            let diff = max_relative_diff(r, f);
            assert!(
                diff < 2e-4,
                "{position:?} dropout {dropout}: {name} gradient differs by {diff}"
            );
        }
    }
}

/// Central finite differences of the whole fused model (embeddings with
/// token types, layers, head and loss) in f64, for every parameter, with
/// absolute positions, TUPE-R (its position term included) and rotary
/// positions.
#[test]
fn the_fused_model_matches_finite_differences() {
    for position in [Position::Absolute, Position::TupeR, Position::Rope] {
        fused_model_matches_finite_differences(position);
    }
}

fn fused_model_matches_finite_differences(position: Position) {
    let batch = model_batch();
    let (model, params) = small_model(Kernels::Fused, DType::F64, 0.0, position);
    let loss = model_loss(&model, &batch, &mut Ctx::eval());
    let grads = gradients(&params, &loss.backward().unwrap()).unwrap();
    let eps = 1e-6;
    for (group, grad) in params.groups().iter().zip(&grads) {
        let analytic: Vec<f64> = grad.to_vec1().unwrap();
        let base: Vec<f64> = group.var.as_tensor().to_vec1().unwrap();
        let n = base.len();
        let at = |values: Vec<f64>| -> f64 {
            group
                .var
                .set(&Tensor::from_vec(values, n, &Device::Cpu).unwrap())
                .unwrap();
            model_loss(&model, &batch, &mut Ctx::eval())
                .to_scalar::<f64>()
                .unwrap()
        };
        for i in 0..n {
            let mut moved = base.clone();
            moved[i] += eps;
            let up = at(moved.clone());
            moved[i] -= 2.0 * eps;
            let down = at(moved);
            let numeric = (up - down) / (2.0 * eps);
            assert!(
                (numeric - analytic[i]).abs() < 1e-6 * numeric.abs().max(1.0),
                "{position:?} {}[{i}]: fused backward {} vs finite difference {numeric}",
                group.name,
                analytic[i]
            );
        }
        at(base);
    }
}
