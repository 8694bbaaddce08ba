//! ELECTRA's generator and discriminator: sizes, one shared set of
//! embeddings, gradients everywhere, a loss that falls, and pre-training
//! with `objective.kind = "electra"`.

mod support;

use support::SPECIAL;

use brisk::config::{Generator, Kernels, ModelConfig, Position, Preset};
use brisk::corpus::generated::Rng;
use brisk::model::discriminator::{replaced_token_loss, DiscriminatorHead};
use brisk::model::electra::{generator_config, Electra};
use brisk::model::{Ctx, Params};
use brisk::pretrain::electra::losses;
use brisk::pretrain::mlm::{mask_tokens, MaskedBatch};
use brisk::train::optim::{gradients, AdamW};
use candle_core::{DType, Device, Tensor};

fn config(position: Position, kernels: Kernels) -> ModelConfig {
    let mut cfg = Preset::Tiny.config().model;
    cfg.vocab_size = 40;
    cfg.hidden_size = 16;
    cfg.num_attention_heads = 4;
    cfg.intermediate_size = 32;
    cfg.num_hidden_layers = 2;
    cfg.max_position_embeddings = 16;
    cfg.position = position;
    cfg.kernels = kernels;
    cfg
}

/// Two sequences of 12 with `[CLS]`/`[SEP]`, masked ELECTRA's way (85%
/// `[MASK]`, 15% kept).
fn batch(seed: u64) -> (Vec<u32>, MaskedBatch) {
    let mut rng = Rng::new(seed);
    let mut tokens: Vec<u32> = (0..24).map(|_| 5 + rng.below(35) as u32).collect();
    for s in [0, 12] {
        (tokens[s], tokens[s + 11]) = (SPECIAL.cls, SPECIAL.sep);
    }
    let mut objective = Preset::Tiny.config().objective;
    (objective.mask_token_prob, objective.random_token_prob) = (0.85, 0.0);
    objective.mask_prob = 0.25;
    let masked = mask_tokens(&tokens, &SPECIAL, 40, &objective, &mut rng);
    (tokens, masked)
}

#[test]
fn the_generator_is_a_fraction_of_the_discriminator() {
    let mini = generator_config(&Preset::Mini.config().model, 0.25).unwrap();
    assert_eq!(
        (
            mini.hidden_size,
            mini.num_attention_heads,
            mini.intermediate_size
        ),
        (64, 1, 256)
    );
    let base = generator_config(&Preset::Base.config().model, 0.25).unwrap();
    assert_eq!(
        (
            base.hidden_size,
            base.num_attention_heads,
            base.intermediate_size
        ),
        (192, 3, 768)
    );
    assert_eq!(base.num_hidden_layers, 12);
    assert!(generator_config(&Preset::Mini.config().model, 0.0).is_err());
}

#[test]
fn both_models_share_one_set_of_embeddings() {
    let cfg = config(Position::Absolute, Kernels::Fused);
    let mut params = Params::new(Device::Cpu, DType::F32);
    let model = Electra::new(&cfg, Some(0.5), &[], &mut params, 1).unwrap();
    let names: Vec<&str> = params.iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"bert.embeddings.word_embeddings.weight"));
    assert!(names.contains(&"generator.embeddings_project.weight"));
    assert!(
        !names.iter().any(|n| n.starts_with("generator.embeddings.")),
        "the generator has no embeddings of its own: {names:?}"
    );

    // A step on the generator's loss alone moves the embeddings, and so the
    // discriminator's output, though no discriminator weight is touched.
    let (tokens, masked) = batch(3);
    let dev = Device::Cpu;
    let ids = Tensor::from_vec(tokens.clone(), (2, 12), &dev).unwrap();
    let before: Vec<f32> = model
        .discriminator
        .forward(&ids, None, None, None, &mut Ctx::eval())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let losses = losses(
        &model,
        &tokens,
        &masked,
        (2, 12),
        50.0,
        &mut Rng::new(4),
        None,
        &mut Ctx::eval(),
    )
    .unwrap();
    let store = losses.generator.unwrap().backward().unwrap();
    let mut grads = Vec::new();
    for group in params.groups() {
        let g = store.get(group.var.as_tensor());
        let name = group.name.as_str();
        if name == "bert.embeddings" || name.starts_with("generator") {
            let size = g.unwrap().abs().unwrap().sum_all().unwrap();
            assert!(
                size.to_scalar::<f32>().unwrap() > 0.0,
                "{name} gets the generator's gradient"
            );
        }
        if name.starts_with("bert.encoder") || name.starts_with("discriminator") {
            assert!(g.is_none(), "{name} gets no gradient from the generator");
        }
        grads.push(
            g.cloned()
                .unwrap_or_else(|| group.var.zeros_like().unwrap()),
        );
    }
    let mut train = Preset::Tiny.config().train;
    train.weight_decay = 0.0;
    let mut opt = AdamW::new(&params, &train).unwrap();
    opt.update(&grads, 1e-2, 1.0).unwrap();
    let after: Vec<f32> = model
        .discriminator
        .forward(&ids, None, None, None, &mut Ctx::eval())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_ne!(
        before, after,
        "the shared embeddings moved under the discriminator too"
    );
}

#[test]
fn every_parameter_gets_a_gradient() {
    for (position, kernels) in [
        (Position::Absolute, Kernels::Fused),
        (Position::TupeR, Kernels::Fused),
        (Position::Absolute, Kernels::Reference),
    ] {
        let cfg = config(position, kernels);
        let mut params = Params::new(Device::Cpu, DType::F32);
        let model = Electra::new(&cfg, Some(0.5), &[], &mut params, 2).unwrap();
        let (tokens, masked) = batch(5);
        let mut rng = Rng::new(6);
        let losses = losses(
            &model,
            &tokens,
            &masked,
            (2, 12),
            50.0,
            &mut Rng::new(7),
            None,
            &mut Ctx::train(&mut rng),
        )
        .unwrap();
        let total = losses.total.to_scalar::<f32>().unwrap();
        assert!(total.is_finite());
        let grads = gradients(&params, &losses.total.backward().unwrap()).unwrap();
        for (name, g) in params.split(&grads).unwrap() {
            let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
            assert!(
                g.iter().all(|v| v.is_finite()),
                "{position:?} {kernels:?} {name}"
            );
            assert!(
                g.iter().any(|v| *v != 0.0),
                "{position:?} {kernels:?}: {name} has a zero gradient"
            );
        }
    }
}

#[test]
fn the_loss_falls_on_a_tiny_model() {
    let cfg = config(Position::Absolute, Kernels::Fused);
    let mut params = Params::new(Device::Cpu, DType::F32);
    let model = Electra::new(&cfg, Some(0.5), &[], &mut params, 3).unwrap();
    let mut train = Preset::Tiny.config().train;
    train.weight_decay = 0.0;
    let mut opt = AdamW::new(&params, &train).unwrap();
    let mut totals = Vec::new();
    for step in 0..60 {
        let (tokens, masked) = batch(100 + step % 4);
        let losses = losses(
            &model,
            &tokens,
            &masked,
            (2, 12),
            50.0,
            &mut Rng::new(step),
            None,
            &mut Ctx::eval(),
        )
        .unwrap();
        let total = losses.total.to_scalar::<f32>().unwrap();
        assert!(total.is_finite(), "step {step}: {total}");
        totals.push(total);
        let grads = gradients(&params, &losses.total.backward().unwrap()).unwrap();
        opt.update(&grads, 3e-3, 1.0).unwrap();
    }
    let mean = |s: &[f32]| s.iter().sum::<f32>() / s.len() as f32;
    let (first, last) = (mean(&totals[..8]), mean(&totals[52..]));
    assert!(last < 0.7 * first, "loss {first} -> {last}");
}

#[test]
fn pretraining_runs_electra_and_logs_both_losses() {
    let mut config = support::small_pretraining("electra");
    (
        config.objective.mask_token_prob,
        config.objective.random_token_prob,
    ) = (0.85, 0.0);
    let dir = tempfile::tempdir().unwrap();
    let (run, summary) = support::pretrain_generated(dir.path(), "run", &mut config);
    assert_eq!(summary.objective, "electra");
    assert!(summary.final_loss.is_finite() && summary.final_val_loss.unwrap().is_finite());
    let rows = support::metrics_rows(&run);
    let first = &rows[0];
    let last = rows.last().unwrap();
    for row in [first, last] {
        let (g, d) = (
            row["generator_loss"].as_f64().unwrap(),
            row["discriminator_loss"].as_f64().unwrap(),
        );
        // total = generator + 50 × discriminator
        assert!((row["loss"].as_f64().unwrap() - (g + 50.0 * d)).abs() < 1e-3 * (g + 50.0 * d));
        assert!((0.0..=0.3).contains(&row["replaced"].as_f64().unwrap()));
    }
    assert!(last["loss"].as_f64().unwrap() < first["loss"].as_f64().unwrap());
    // The discriminator loads as a BERT encoder for fine-tuning.
    let encoder = brisk::encoder::Encoder::load(&run).unwrap();
    assert_eq!(encoder.config.hidden_size, config.model.hidden_size);
}

/// ELECTRA without a generator network: replacements from the corpus's
/// unigram distribution or uniform; no generator weights, no validation
/// loss (nothing is a masked LM), cheaper steps.
#[test]
fn fixed_generators_train_the_discriminator_alone() {
    for generator in [Generator::Unigram, Generator::Uniform] {
        let mut config = support::small_pretraining("electra");
        config.train.steps = 30;
        // Only ELECTRA takes a fixed generator.
        let mut mlm = support::small_pretraining("mlm");
        mlm.objective.generator = generator;
        let err = mlm.validate().unwrap_err().to_string();
        assert!(err.contains("objective.generator"), "{err}");
        config.objective.generator = generator;
        config.objective.mask_prob = 0.15;
        let flops =
            |c: &brisk::config::Config| brisk::pretrain::objective::step_flops(c, 32, 256).unwrap();
        let mut learned = config.clone();
        learned.objective.generator = Generator::Learned;
        // The generator is a quarter of the width: a few percent of the cost.
        let saved = 1.0 - flops(&config) / flops(&learned);
        assert!((0.02..0.3).contains(&saved), "{generator:?}: {saved}");
        let dir = tempfile::tempdir().unwrap();
        let (run, summary) = support::pretrain_generated(dir.path(), "run", &mut config);
        assert_eq!(summary.final_val_loss, None);
        assert!(summary.final_loss.is_finite());
        let rows = support::metrics_rows(&run);
        for row in [&rows[0], rows.last().unwrap()] {
            assert!(row.get("generator_loss").is_none() && row.get("val_loss").is_none());
            let d = row["discriminator_loss"].as_f64().unwrap();
            assert!((row["loss"].as_f64().unwrap() - 50.0 * d).abs() < 1e-3 * 50.0 * d);
            // Nearly every draw differs from the original: about 15% of a
            // step's 256 tokens (±2.2% binomial noise; [CLS]/[SEP] never).
            let replaced = row["replaced"].as_f64().unwrap();
            assert!(
                (0.06..0.24).contains(&replaced),
                "{generator:?}: {replaced}"
            );
        }
        let weights = safetensors_names(&run);
        assert!(weights
            .iter()
            .any(|n| n.starts_with("discriminator_predictions")));
        assert!(
            !weights.iter().any(|n| n.starts_with("generator")),
            "{weights:?}"
        );
    }
}

/// The tensor names of a run's newest checkpoint.
fn safetensors_names(run: &std::path::Path) -> Vec<String> {
    let file = brisk::train::checkpoint::latest_weights(run).unwrap();
    let tensors = candle_core::safetensors::load(file, &Device::Cpu).unwrap();
    tensors.into_keys().collect()
}

#[test]
fn the_discriminator_learns_to_spot_an_odd_token_out() {
    // Each sequence repeats one token; one position holds another. Alone, a
    // token says nothing (every token is sometimes the odd one), so only a
    // discriminator that reads the context beats the prior's entropy.
    let cfg = config(Position::Absolute, Kernels::Fused);
    let mut params = Params::new(Device::Cpu, DType::F32);
    let mut init = Rng::new(5);
    let encoder = brisk::model::Bert::new(&mut params, &cfg, &mut init).unwrap();
    let head = DiscriminatorHead::new(&mut params, &cfg, &mut init).unwrap();
    let mut train = Preset::Tiny.config().train;
    train.weight_decay = 0.0;
    let mut opt = AdamW::new(&params, &train).unwrap();
    let (batch, len) = (8, 12);
    let mut rng = Rng::new(9);
    let mut losses = Vec::new();
    let p = 1.0 / len as f32;
    let prior = -(p * p.ln() + (1.0 - p) * (1.0 - p).ln());
    // Like a BERT on text, it first sits on the prior's plateau before it
    // learns to compare tokens. When it leaves is chaotic: about step 400
    // on the AVX-512 path, later on the AVX2 path, whose matrix products
    // round differently. What the method guarantees is that it does leave,
    // so train until the loss is clearly below the prior, with a cap far
    // above either path's exit.
    let (cap, window) = (3000, 20);
    let recent =
        |losses: &[f32]| losses[losses.len() - window..].iter().sum::<f32>() / window as f32;
    while losses.len() < cap && (losses.len() < window || recent(&losses) >= 0.5 * prior) {
        let mut ids = Vec::with_capacity(batch * len);
        let mut labels = Vec::with_capacity(batch * len);
        for _ in 0..batch {
            let token = 5 + rng.below(35) as u32;
            let odd_at = rng.below(len);
            let odd = 5 + (token - 5 + 1 + rng.below(34) as u32) % 35;
            for i in 0..len {
                ids.push(if i == odd_at { odd } else { token });
                labels.push((i == odd_at) as u32 as f32);
            }
        }
        let ids = Tensor::from_vec(ids, (batch, len), &Device::Cpu).unwrap();
        let labels = Tensor::from_vec(labels, (batch, len), &Device::Cpu).unwrap();
        let mut ctx = Ctx::eval();
        let hidden = encoder.forward(&ids, None, None, None, &mut ctx).unwrap();
        let logits = head.forward(&hidden).unwrap();
        let loss = replaced_token_loss(&logits, &labels, None).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        let grads = gradients(&params, &loss.backward().unwrap()).unwrap();
        opt.update(&grads, 3e-3, 1.0).unwrap();
    }
    let last = recent(&losses);
    assert!(
        last < 0.5 * prior,
        "loss {last} after {} steps, prior entropy {prior}",
        losses.len()
    );
}

#[test]
fn the_fused_generator_head_equals_the_reference_and_draws_the_same_samples() {
    use brisk::train::optim::gradients_or_zeros;
    // A generator half as wide as the embeddings: the head's dense layer
    // maps 8 to 16 before the tied decoder.
    let cfg = config(Position::Rope, Kernels::Fused);
    let mut params = Params::new(Device::Cpu, DType::F32);
    let model = Electra::new(&cfg, Some(0.5), &[], &mut params, 4).unwrap();
    let g = model.generator.as_ref().unwrap();
    assert!(g.head.is_fused());
    let (_, masked) = batch(5);
    let ids = masked.inputs_tensor((2, 12), &Device::Cpu).unwrap();
    let (rows, targets) = (
        masked.rows_tensor(&Device::Cpu).unwrap(),
        masked.targets_tensor(&Device::Cpu).unwrap(),
    );
    let run = |fused: bool| {
        let hidden = g
            .encoder
            .forward(&ids, None, None, None, &mut Ctx::eval())
            .unwrap();
        let at = (&rows, &targets);
        let (loss, samples) = match fused {
            true => g.head.loss(&hidden, &model.discriminator, at, Some(9)),
            false => g
                .head
                .reference_loss(&hidden, &model.discriminator, at, Some(9)),
        }
        .unwrap();
        let store = loss.backward().unwrap();
        let grads = gradients_or_zeros(&params, &store, &|_| true).unwrap();
        let grads: Vec<Vec<f32>> = grads
            .iter()
            .map(|t| t.flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        (loss.to_scalar::<f32>().unwrap(), samples.unwrap(), grads)
    };
    let (fused_loss, fused_samples, fused_grads) = run(true);
    let (loss, samples, grads) = run(false);
    assert!((fused_loss - loss).abs() < 1e-5, "{fused_loss} vs {loss}");
    assert_eq!(fused_samples, samples);
    assert_eq!(samples.len(), masked.rows.len());
    for (a, b) in fused_grads.iter().zip(&grads) {
        let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5 * scale, "{x} vs {y}");
        }
    }
    assert!(grads.iter().flatten().any(|v| *v != 0.0));
}

#[test]
fn the_fused_replaced_token_head_equals_the_reference() {
    use brisk::train::optim::gradients_or_zeros;
    let cfg = config(Position::Absolute, Kernels::Fused);
    let mut params = Params::new(Device::Cpu, DType::F32);
    let model = Electra::new(&cfg, None, &[], &mut params, 4).unwrap();
    let head = &model.discriminator_head;
    assert!(head.is_fused());
    let mut rng = Rng::new(6);
    let values: Vec<f32> = (0..24 * 16)
        .map(|_| rng.unit() as f32 * 4.0 - 2.0)
        .collect();
    let hidden = candle_core::Var::from_vec(values, (2, 12, 16), &Device::Cpu).unwrap();
    let labels: Vec<f32> = (0..24).map(|i| (i % 5 == 2) as u8 as f32).collect();
    let labels = Tensor::from_vec(labels, (2, 12), &Device::Cpu).unwrap();
    let run = |fused: bool| {
        let h = hidden.as_tensor();
        let loss = match fused {
            true => head.loss(h, &labels),
            false => head.reference_loss(h, &labels),
        }
        .unwrap();
        let store = loss.backward().unwrap();
        let mut grads = gradients_or_zeros(&params, &store, &|_| true).unwrap();
        grads.push(store.get(h).unwrap().clone());
        let grads: Vec<Vec<f32>> = grads
            .iter()
            .map(|t| t.flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        (loss.to_scalar::<f32>().unwrap(), grads)
    };
    let (fused_loss, fused_grads) = run(true);
    let (loss, grads) = run(false);
    assert!((fused_loss - loss).abs() < 1e-5, "{fused_loss} vs {loss}");
    for (a, b) in fused_grads.iter().zip(&grads) {
        let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5 * scale, "{x} vs {y}");
        }
    }
}
