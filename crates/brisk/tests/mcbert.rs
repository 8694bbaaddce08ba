//! MC-BERT's controller and main model: the multi-choice head's scores,
//! gradients everywhere, one shared set of embeddings, a loss that falls,
//! and pre-training with `objective.kind = "mcbert"`.

mod support;

use support::SPECIAL;

use brisk::config::{Kernels, ModelConfig, Position, Preset, SharedEmbeddings};
use brisk::corpus::generated::Rng;
use brisk::model::mcbert::McBert;
use brisk::model::{Ctx, Params};
use brisk::pretrain::mcbert::losses;
use brisk::pretrain::mlm::{mask_tokens, MaskedBatch};
use brisk::train::optim::{gradients, gradients_or_zeros, AdamW};
use candle_core::{DType, Device};

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

/// Two sequences of 12, 25% masked with `[MASK]` only (MC-BERT's masking).
fn batch(seed: u64) -> (Vec<u32>, MaskedBatch) {
    let mut rng = Rng::new(seed);
    let mut tokens: Vec<u32> = (0..24).map(|_| 5 + rng.below(35) as u32).collect();
    for s in [0, 12] {
        (tokens[s], tokens[s + 11]) = (SPECIAL.cls, SPECIAL.sep);
    }
    let mut objective = Preset::Tiny.config().objective;
    (objective.mask_token_prob, objective.random_token_prob) = (1.0, 0.0);
    objective.mask_prob = 0.25;
    let masked = mask_tokens(&tokens, &SPECIAL, 40, &objective, &mut rng);
    (tokens, masked)
}

#[test]
fn every_parameter_gets_a_gradient_and_embeddings_are_shared() {
    for (position, kernels, share) in [
        (Position::Absolute, Kernels::Fused, SharedEmbeddings::All),
        (Position::TupeR, Kernels::Reference, SharedEmbeddings::All),
        (Position::Absolute, Kernels::Fused, SharedEmbeddings::Words),
        (Position::Rope, Kernels::Fused, SharedEmbeddings::Words),
    ] {
        let cfg = config(position, kernels);
        let mut params = Params::new(Device::Cpu, DType::F32);
        let model = McBert::new(&cfg, 0.5, share, &mut params, 2).unwrap();
        let own: Vec<String> = params
            .iter()
            .map(|(n, _)| n.to_string())
            .filter(|n| n.starts_with("generator.embeddings."))
            .collect();
        match share {
            SharedEmbeddings::All => {
                assert!(
                    own.is_empty(),
                    "the controller reads the main model's embeddings: {own:?}"
                )
            }
            // Its own type embeddings and LayerNorm (and positions where the
            // model has a table), never a word table.
            SharedEmbeddings::Words => {
                assert!(own.iter().any(|n| n.contains("LayerNorm")), "{own:?}");
                assert!(own.iter().all(|n| !n.contains("word")), "{own:?}");
                assert_eq!(
                    own.iter().any(|n| n.contains("position")),
                    position != Position::Rope,
                    "{own:?}"
                );
            }
        }
        let (tokens, masked) = batch(5);
        // Fused ops keep their activations for one backward: one forward
        // per backward.
        let forward = || {
            let mut rng = Rng::new(6);
            losses(
                &model,
                &tokens,
                &masked,
                (2, 12),
                50.0,
                &SPECIAL,
                &mut Rng::new(7),
                None,
                &mut Ctx::train(&mut rng),
            )
            .unwrap()
        };
        let losses = forward();
        let total = losses.total.to_scalar::<f32>().unwrap();
        // An untrained main model is close to uniform over the 10 slots.
        let choice = losses.choice.to_scalar::<f32>().unwrap();
        assert!((choice - 10f32.ln()).abs() < 0.5, "{choice}");
        assert!(total.is_finite());
        // The controller's own loss reaches the main model's word table
        // whatever else it shares.
        let store = forward().controller.backward().unwrap();
        let grads = gradients_or_zeros(&params, &store, &|_| true).unwrap();
        let (_, words) = params
            .split(&grads)
            .unwrap()
            .into_iter()
            .find(|(n, _)| *n == "bert.embeddings.word_embeddings.weight")
            .unwrap();
        let words: Vec<f32> = words.flatten_all().unwrap().to_vec1().unwrap();
        assert!(words.iter().any(|v| *v != 0.0), "{share:?}");
        let grads = gradients(&params, &losses.total.backward().unwrap()).unwrap();
        for (name, g) in params.split(&grads).unwrap() {
            let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
            assert!(g.iter().all(|v| v.is_finite()), "{position:?} {name}");
            assert!(
                g.iter().any(|v| *v != 0.0),
                "{position:?} {kernels:?} {share:?}: {name} has a zero gradient"
            );
        }
    }
}

#[test]
fn the_loss_falls_on_a_tiny_model() {
    let cfg = config(Position::Absolute, Kernels::Fused);
    let mut params = Params::new(Device::Cpu, DType::F32);
    let model = McBert::new(&cfg, 0.5, SharedEmbeddings::All, &mut params, 3).unwrap();
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
            &SPECIAL,
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
fn pretraining_runs_mcbert_and_logs_both_losses() {
    let mut config = support::small_pretraining("mcbert");
    (
        config.objective.mask_token_prob,
        config.objective.random_token_prob,
    ) = (1.0, 0.0);
    let dir = tempfile::tempdir().unwrap();
    let (run, summary) = support::pretrain_generated(dir.path(), "run", &mut config);
    assert_eq!(summary.objective, "mcbert");
    assert!(summary.final_loss.is_finite() && summary.final_val_loss.unwrap().is_finite());
    let rows = support::metrics_rows(&run);
    let (first, last) = (&rows[0], rows.last().unwrap());
    for row in [first, last] {
        let (c, m) = (
            row["generator_loss"].as_f64().unwrap(),
            row["choice_loss"].as_f64().unwrap(),
        );
        assert!((row["loss"].as_f64().unwrap() - (c + 50.0 * m)).abs() < 1e-3 * (c + 50.0 * m));
    }
    // The controller learns; the main model beats a uniform choice among
    // the 10 slots (its task hardens as the controller's samples improve,
    // so its loss need not fall over a short run).
    let gen = |r: &serde_json::Value| r["generator_loss"].as_f64().unwrap();
    assert!(gen(last) < gen(first), "{} -> {}", gen(first), gen(last));
    assert!(last["choice_loss"].as_f64().unwrap() < 10f64.ln());
    // The main model loads as a BERT encoder for fine-tuning.
    brisk::encoder::Encoder::load(&run).unwrap();
}

fn random_values(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| rng.unit() as f32 * 2.0 - 1.0).collect()
}

#[test]
fn the_fused_choice_head_equals_the_reference() {
    use brisk::train::optim::gradients_or_zeros;
    use candle_core::Var;
    let cfg = config(Position::Absolute, Kernels::Fused);
    let mut params = Params::new(Device::Cpu, DType::F32);
    let model = McBert::new(&cfg, 0.5, SharedEmbeddings::All, &mut params, 3).unwrap();
    assert!(model.head.is_fused());
    let mut rng = Rng::new(4);
    let hidden =
        Var::from_vec(random_values(24 * 16, &mut rng), (2, 12, 16), &Device::Cpu).unwrap();
    // Repeated candidates: their gradients add up in the embeddings.
    let candidates: Vec<u32> = (0..24 * 9).map(|_| 5 + rng.below(10) as u32).collect();
    let labels: Vec<u32> = (0..24).map(|i| (i % 3 == 0) as u32).collect();
    let run = |fused: bool| {
        let h = hidden.as_tensor();
        let loss = match fused {
            true => model.head.loss(h, &candidates, &labels, &model.main),
            false => model
                .head
                .reference_loss(h, &candidates, &labels, &model.main),
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

#[test]
fn the_fused_controller_reads_every_row_as_the_reference() {
    let cfg = config(Position::Absolute, Kernels::Fused);
    let mut params = Params::new(Device::Cpu, DType::F32);
    let model = McBert::new(&cfg, 0.5, SharedEmbeddings::All, &mut params, 3).unwrap();
    let (tokens, _) = batch(8);
    let ids = candle_core::Tensor::from_vec(tokens, (2, 12), &Device::Cpu).unwrap();
    let hidden = model.control(&ids, &mut Ctx::eval()).unwrap();
    let row = |i: usize, logits: &[f32]| (i, logits.to_vec());
    let head = &model.controller_head;
    let fused = head.visit_rows(&hidden, &model.main, &row).unwrap();
    let reference = head
        .reference_visit_rows(&hidden, &model.main, &row)
        .unwrap();
    assert_eq!(fused.len(), 24);
    for ((i, a), (j, b)) in fused.iter().zip(&reference) {
        assert_eq!(i, j);
        assert_eq!(a.len(), 40);
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "row {i}: {x} vs {y}");
        }
    }
}

#[test]
fn stopping_the_candidate_gradient_leaves_the_table_to_the_input_path() {
    use candle_core::Var;
    for kernels in [Kernels::Fused, Kernels::Reference] {
        let cfg = config(Position::Absolute, kernels);
        let mut params = Params::new(Device::Cpu, DType::F32);
        let mut model = McBert::new(&cfg, 0.5, SharedEmbeddings::All, &mut params, 3).unwrap();
        let mut rng = Rng::new(4);
        let values = random_values(24 * 16, &mut rng);
        let hidden = Var::from_vec(values, (2, 12, 16), &Device::Cpu).unwrap();
        let candidates: Vec<u32> = (0..24 * 9).map(|_| 5 + rng.below(30) as u32).collect();
        let labels: Vec<u32> = (0..24).map(|i| (i % 2) as u32).collect();
        let table_gradient = |model: &McBert| {
            let loss = model
                .head
                .loss(hidden.as_tensor(), &candidates, &labels, &model.main)
                .unwrap();
            let store = loss.backward().unwrap();
            let table = model.main.embedding_group();
            store.get(table).map(|g| {
                let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
                g.iter().map(|v| v.abs()).sum::<f32>()
            })
        };
        assert!(table_gradient(&model).unwrap() > 0.0, "{kernels:?}");
        model.head.candidate_gradient = false;
        assert_eq!(table_gradient(&model).unwrap_or(0.0), 0.0, "{kernels:?}");
    }
}
