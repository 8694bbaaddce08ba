//! The BERT model: gradients reach every parameter, attention and LayerNorm
//! match finite differences, dropout is on only in training, and tensor
//! names follow HuggingFace.

use brisk::config::{Kernels, ModelConfig, Norm, Position, Preset};
use brisk::corpus::generated::Rng;
use brisk::model::attention::{attention, Logits};
use brisk::model::norm::layer_norm;
use brisk::model::{BertForMaskedLm, Ctx, Params};
use brisk::pretrain::mlm::mask_tokens;
use brisk::train::optim::{clip_scale, grad_norm, gradients, AdamW};
use brisk::train::schedule::linear_warmup_decay;
use candle_core::{DType, Device, Tensor, Var};

fn tiny_config(norm: Norm) -> ModelConfig {
    let mut cfg = Preset::Tiny.config().model;
    cfg.vocab_size = 50;
    cfg.hidden_size = 16;
    cfg.num_hidden_layers = 2;
    cfg.num_attention_heads = 2;
    cfg.intermediate_size = 32;
    cfg.max_position_embeddings = 12;
    cfg.norm = norm;
    cfg.position = Position::Absolute;
    cfg
}

fn u32s(values: Vec<u32>, shape: (usize, usize)) -> Tensor {
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// A batch of 2 × 10 with two padded positions, and 6 predicted rows.
fn batch() -> (Tensor, Tensor, Tensor, Tensor) {
    let mut rng = Rng::new(3);
    let ids: Vec<u32> = (0..20).map(|_| 5 + rng.below(45) as u32).collect();
    let mut mask = vec![1u32; 20];
    mask[18] = 0;
    mask[19] = 0;
    let rows = Tensor::new(&[1u32, 4, 7, 10, 13, 16], &Device::Cpu).unwrap();
    let targets = Tensor::new(&[6u32, 7, 8, 9, 10, 11], &Device::Cpu).unwrap();
    (u32s(ids, (2, 10)), u32s(mask, (2, 10)), rows, targets)
}

#[test]
fn every_parameter_gets_a_finite_non_zero_gradient() {
    use Position::{Absolute, Rope, TupeA, TupeR};
    for (norm, kernels, position) in [
        (Norm::Post, Kernels::Fused, Absolute),
        (Norm::Pre, Kernels::Fused, Absolute),
        (Norm::Post, Kernels::Reference, Absolute),
        (Norm::Pre, Kernels::Reference, Absolute),
        (Norm::Post, Kernels::Fused, TupeA),
        (Norm::Pre, Kernels::Fused, TupeR),
        (Norm::Post, Kernels::Reference, TupeR),
        (Norm::Post, Kernels::Fused, Rope),
        (Norm::Pre, Kernels::Reference, Rope),
    ] {
        let mut cfg = tiny_config(norm);
        cfg.kernels = kernels;
        cfg.position = position;
        let mut params = Params::new(Device::Cpu, DType::F32);
        let model = BertForMaskedLm::new(&cfg, &mut params, 1).unwrap();
        let fused = model.bert.layers.iter().all(|l| l.is_fused());
        assert_eq!(fused, kernels == Kernels::Fused);
        let (ids, mask, rows, targets) = batch();
        let mut rng = Rng::new(9);
        let loss = model
            .loss(
                &ids,
                Some(&mask),
                &rows,
                &targets,
                &mut Ctx::train(&mut rng),
            )
            .unwrap();
        let loss_value = loss.to_scalar::<f32>().unwrap();
        // An untrained model is close to uniform over the vocabulary.
        assert!((loss_value - (50f32).ln()).abs() < 0.5, "{loss_value}");
        let flat = gradients(&params, &loss.backward().unwrap()).unwrap();
        let named = params.split(&flat).unwrap();
        assert_eq!(named.len(), params.len());
        for (name, grad) in named {
            let values: Vec<f32> = grad.flatten_all().unwrap().to_vec1().unwrap();
            assert!(
                values.iter().all(|v| v.is_finite()),
                "{norm:?} {kernels:?} {position:?}: {name} has a non-finite gradient"
            );
            let size: f32 = values.iter().map(|v| v.abs()).sum();
            assert!(
                size > 0.0,
                "{norm:?} {kernels:?} {position:?}: {name} has a zero gradient"
            );
        }
    }
}

#[test]
fn tensor_names_follow_huggingface() {
    let mut cfg = tiny_config(Norm::Post);
    cfg.num_hidden_layers = 1;
    let mut params = Params::new(Device::Cpu, DType::F32);
    BertForMaskedLm::new(&cfg, &mut params, 1).unwrap();
    let mut names: Vec<&str> = params.iter().map(|(n, _)| n).collect();
    names.sort_unstable();
    let mut expect = vec![
        "bert.embeddings.word_embeddings.weight",
        "bert.embeddings.position_embeddings.weight",
        "bert.embeddings.token_type_embeddings.weight",
        "bert.embeddings.LayerNorm.weight",
        "bert.embeddings.LayerNorm.bias",
        "cls.predictions.transform.dense.weight",
        "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.LayerNorm.bias",
        "cls.predictions.bias",
    ];
    let layer = [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "attention.output.LayerNorm",
        "intermediate.dense",
        "output.dense",
        "output.LayerNorm",
    ];
    let owned: Vec<String> = layer
        .iter()
        .flat_map(|p| ["weight", "bias"].map(|s| format!("bert.encoder.layer.0.{p}.{s}")))
        .collect();
    expect.extend(owned.iter().map(String::as_str));
    expect.sort_unstable();
    assert_eq!(names, expect);
    // HF shapes: Linear weights are [out, in].
    let ffn = params
        .get("bert.encoder.layer.0.intermediate.dense.weight")
        .unwrap();
    assert_eq!(ffn.dims(), &[32, 16]);
}

#[test]
fn dropout_is_seeded_in_training_and_off_in_evaluation() {
    let cfg = tiny_config(Norm::Post);
    let mut params = Params::new(Device::Cpu, DType::F32);
    let model = BertForMaskedLm::new(&cfg, &mut params, 1).unwrap();
    let (ids, mask, rows, _) = batch();
    let run = |ctx: &mut Ctx| -> Vec<f32> {
        let logits = model.forward(&ids, Some(&mask), &rows, ctx).unwrap();
        logits.flatten_all().unwrap().to_vec1().unwrap()
    };
    let eval = run(&mut Ctx::eval());
    assert_eq!(eval, run(&mut Ctx::eval()), "evaluation is deterministic");
    let (mut a, mut b, mut c) = (Rng::new(5), Rng::new(5), Rng::new(6));
    let train_a = run(&mut Ctx::train(&mut a));
    assert_eq!(
        train_a,
        run(&mut Ctx::train(&mut b)),
        "same seed, same dropout"
    );
    assert_ne!(
        train_a,
        run(&mut Ctx::train(&mut c)),
        "another seed, other dropout"
    );
    assert_ne!(train_a, eval, "dropout is on in training");

    // The same seed gives the same initial weights.
    let mut again = Params::new(Device::Cpu, DType::F32);
    BertForMaskedLm::new(&cfg, &mut again, 1).unwrap();
    for ((_, x), (_, y)) in params.iter().zip(again.iter()) {
        let d = (x - y).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    }
}

fn logits<'a>(bias: Option<&'a Tensor>, pad_mask: Option<&'a Tensor>) -> Logits<'a> {
    Logits {
        scale: 0.5,
        bias,
        pad_mask,
    }
}

fn random(shape: &[usize], rng: &mut Rng) -> Var {
    let n: usize = shape.iter().product();
    let values: Vec<f64> = (0..n).map(|_| rng.unit() * 2.0 - 1.0).collect();
    Var::from_tensor(&Tensor::from_vec(values, shape, &Device::Cpu).unwrap()).unwrap()
}

/// Compares autograd gradients of `f` with central finite differences for
/// every element of every input, in f64.
fn check_gradients(inputs: &[Var], f: impl Fn(&[Tensor]) -> Tensor) {
    let tensors: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let grads = f(&tensors).backward().unwrap();
    let eps = 1e-5;
    for (which, var) in inputs.iter().enumerate() {
        let analytic: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..base.len() {
            let eval = |delta: f64| -> f64 {
                let mut values = base.clone();
                values[i] += delta;
                let moved = Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap();
                let mut args: Vec<Tensor> = tensors.iter().map(|t| t.detach()).collect();
                args[which] = moved;
                f(&args).to_scalar::<f64>().unwrap()
            };
            let numeric = (eval(eps) - eval(-eps)) / (2.0 * eps);
            let diff = (numeric - analytic[i]).abs();
            assert!(
                diff < 1e-6 * numeric.abs().max(1.0),
                "input {which}[{i}]: autograd {} vs finite difference {numeric}",
                analytic[i]
            );
        }
    }
}

#[test]
fn attention_with_bias_and_mask_matches_finite_differences() {
    let mut rng = Rng::new(11);
    let (b, h, l, d) = (2, 2, 4, 3);
    let q = random(&[b, h, l, d], &mut rng);
    let k = random(&[b, h, l, d], &mut rng);
    let v = random(&[b, h, l, d], &mut rng);
    let bias = random(&[h, l, l], &mut rng);
    let weights = random(&[b, h, l, d], &mut rng).as_tensor().detach();
    let mask = Tensor::from_vec(
        vec![1f64, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0],
        (b, l),
        &Device::Cpu,
    )
    .unwrap();
    check_gradients(&[q, k, v, bias], |t| {
        let out = attention(
            &t[0],
            &t[1],
            &t[2],
            logits(Some(&t[3]), Some(&mask)),
            0.0,
            &mut Ctx::eval(),
        )
        .unwrap();
        (out * &weights).unwrap().sum_all().unwrap()
    });

    // A padded key gets no attention: changing its value changes nothing.
    let (q, k, v) = (
        random(&[b, h, l, d], &mut rng),
        random(&[b, h, l, d], &mut rng),
        random(&[b, h, l, d], &mut rng),
    );
    let run = |v: &Tensor, bias: Option<&Tensor>, mask: Option<&Tensor>| {
        attention(
            q.as_tensor(),
            k.as_tensor(),
            v,
            logits(bias, mask),
            0.0,
            &mut Ctx::eval(),
        )
        .unwrap()
    };
    let max_diff = |a: Tensor, b: Tensor| -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let mut moved: Vec<f64> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    for j in 0..h * d {
        // Batch 0, key position 3 (padded), every head and feature.
        let (head, feat) = (j / d, j % d);
        moved[head * l * d + 3 * d + feat] += 10.0;
    }
    let moved = Tensor::from_vec(moved, (b, h, l, d), &Device::Cpu).unwrap();
    assert!(
        max_diff(
            run(v.as_tensor(), None, Some(&mask)),
            run(&moved, None, Some(&mask))
        ) < 1e-12
    );

    // A batch × heads bias works the same as a per-head one repeated.
    let per_head = random(&[h, l, l], &mut rng);
    let repeated = Tensor::cat(&[per_head.as_tensor(), per_head.as_tensor()], 0).unwrap();
    let shared = run(v.as_tensor(), Some(per_head.as_tensor()), None);
    assert!(max_diff(shared, run(v.as_tensor(), Some(&repeated), None)) < 1e-12);
}

#[test]
fn layer_norm_matches_finite_differences() {
    let mut rng = Rng::new(12);
    let x = random(&[3, 5], &mut rng);
    let w = random(&[5], &mut rng);
    let b = random(&[5], &mut rng);
    let weights = random(&[3, 5], &mut rng).as_tensor().detach();
    check_gradients(&[x, w, b], |t| {
        let y = layer_norm(&t[0], &t[1], &t[2], 1e-5).unwrap();
        (y * &weights).unwrap().sum_all().unwrap()
    });
}

#[test]
fn one_batch_is_overfit() {
    let mut cfg = tiny_config(Norm::Post);
    cfg.hidden_dropout_prob = 0.0;
    cfg.attention_probs_dropout_prob = 0.0;
    let mut params = Params::new(Device::Cpu, DType::F32);
    let model = BertForMaskedLm::new(&cfg, &mut params, 4).unwrap();
    let special = brisk::corpus::tokenizer::SpecialIds {
        pad: 0,
        unk: 1,
        cls: 2,
        sep: 3,
        mask: 4,
    };
    let mut rng = Rng::new(21);
    let (b, l) = (4, 12);
    let tokens: Vec<u32> = (0..b * l)
        .map(|i| match i % l {
            0 => special.cls,
            x if x == l - 1 => special.sep,
            _ => 5 + rng.below(45) as u32,
        })
        .collect();
    let objective = Preset::Tiny.config().objective;
    let masked = mask_tokens(&tokens, &special, cfg.vocab_size, &objective, &mut rng);
    let ids = u32s(masked.inputs.clone(), (b, l));
    let n = masked.rows.len();
    let rows = Tensor::from_vec(masked.rows.clone(), n, &Device::Cpu).unwrap();
    let targets = Tensor::from_vec(masked.targets.clone(), n, &Device::Cpu).unwrap();

    let mut train = Preset::Tiny.config().train;
    train.learning_rate = 3e-3;
    let mut opt = AdamW::new(&params, &train).unwrap();
    let mut last = f32::INFINITY;
    for step in 0..300 {
        let loss = model
            .loss(&ids, None, &rows, &targets, &mut Ctx::eval())
            .unwrap();
        last = loss.to_scalar::<f32>().unwrap();
        if last < 0.05 {
            break;
        }
        let grads = gradients(&params, &loss.backward().unwrap()).unwrap();
        let norm = grad_norm(&grads).unwrap();
        let lr = linear_warmup_decay(train.learning_rate, step, 10, 300);
        opt.update(&grads, lr, clip_scale(norm, train.max_grad_norm))
            .unwrap();
    }
    assert!(last < 0.1, "MLM loss after overfitting one batch: {last}");
}

#[test]
fn saved_weights_load_back_to_identical_logits() {
    let cfg = tiny_config(Norm::Pre);
    let mut params = Params::new(Device::Cpu, DType::F32);
    let model = BertForMaskedLm::new(&cfg, &mut params, 7).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    params.save(&path).unwrap();

    let mut other = Params::new(Device::Cpu, DType::F32);
    let restored = BertForMaskedLm::new(&cfg, &mut other, 8).unwrap();
    let (ids, mask, rows, _) = batch();
    let logits = |m: &BertForMaskedLm| -> Vec<f32> {
        let out = m
            .forward(&ids, Some(&mask), &rows, &mut Ctx::eval())
            .unwrap();
        out.flatten_all().unwrap().to_vec1().unwrap()
    };
    assert_ne!(logits(&model), logits(&restored), "different seeds differ");
    other.load(&path).unwrap();
    assert_eq!(
        logits(&model),
        logits(&restored),
        "loading restores every weight"
    );

    // A model of another shape is refused, naming the tensor.
    let mut wider = tiny_config(Norm::Pre);
    wider.intermediate_size = 48;
    let mut wide = Params::new(Device::Cpu, DType::F32);
    BertForMaskedLm::new(&wider, &mut wide, 1).unwrap();
    let msg = wide.load(&path).unwrap_err().to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("intermediate.dense.weight"),
        "{msg}"
    );
    // A post-LN file lacks the final LayerNorm that a pre-LN model needs.
    let mut post_params = Params::new(Device::Cpu, DType::F32);
    BertForMaskedLm::new(&tiny_config(Norm::Post), &mut post_params, 1).unwrap();
    let post_path = dir.path().join("post.safetensors");
    post_params.save(&post_path).unwrap();
    let msg = other.load(&post_path).unwrap_err().to_string();
    assert!(msg.contains("bert.encoder.LayerNorm"), "{msg}");
    std::fs::write(&path, b"garbage").unwrap();
    let msg = other.load(&path).unwrap_err().to_string();
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn accumulated_micro_batch_gradients_average_the_losses() {
    let cfg = tiny_config(Norm::Post);
    let mut params = Params::new(Device::Cpu, DType::F64);
    let model = BertForMaskedLm::new(&cfg, &mut params, 5).unwrap();
    let (ids, mask, rows, targets) = batch();
    let halves: Vec<_> = (0..2)
        .map(|i| {
            let ids = ids.narrow(0, i, 1).unwrap();
            let mask = mask.narrow(0, i, 1).unwrap();
            // Rows of sequence i, re-based to a one-sequence batch.
            let r: Vec<u32> = rows.to_vec1().unwrap();
            let t: Vec<u32> = targets.to_vec1().unwrap();
            let keep: Vec<usize> = (0..r.len()).filter(|&j| r[j] as usize / 10 == i).collect();
            let r: Vec<u32> = keep.iter().map(|&j| r[j] - 10 * i as u32).collect();
            let t: Vec<u32> = keep.iter().map(|&j| t[j]).collect();
            let n = r.len();
            (
                ids,
                mask,
                Tensor::from_vec(r, n, &Device::Cpu).unwrap(),
                Tensor::from_vec(t, n, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    let loss_of = |(ids, mask, rows, targets): &(Tensor, Tensor, Tensor, Tensor)| {
        model
            .loss(ids, Some(mask), rows, targets, &mut Ctx::eval())
            .unwrap()
    };
    // One graph: the mean of the two micro-batch losses.
    let joint = ((loss_of(&halves[0]) + loss_of(&halves[1])).unwrap() / 2.0).unwrap();
    let expected = gradients(&params, &joint.backward().unwrap()).unwrap();
    // Accumulation: each micro-batch's gradient divided by 2, summed.
    let mut sum = Vec::new();
    for half in &halves {
        let g = gradients(&params, &loss_of(half).backward().unwrap()).unwrap();
        let g = g.iter().map(|t| (t / 2.0).unwrap()).collect();
        brisk::train::optim::accumulate(&mut sum, g).unwrap();
    }
    for (a, b) in sum.iter().zip(&expected) {
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(diff < 1e-12, "accumulated gradient differs by {diff}");
    }
}

/// `model/` is the networks; the objectives in `pretrain/` build on it. An
/// import the other way would make the two a circle.
#[test]
fn the_model_imports_nothing_from_pretraining() {
    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    sources(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/model"),
        &mut files,
    );
    assert!(files.len() > 5, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, line) in text.lines().enumerate() {
            assert!(
                !line.contains("crate::pretrain") && !line.contains("crate::train"),
                "{}:{}: {line}",
                file.display(),
                i + 1
            );
        }
    }
}
