//! ELECTRA's early exit: nobody leaving is plain ELECTRA exactly; tokens
//! that leave cost no query-side rows above their exit, keep their state
//! and remain keys and values; the fused path equals the reference; a run
//! logs what it skipped and counts only the FLOPs it spent.

mod support;

use support::SPECIAL;

use std::collections::BTreeMap;

use brisk::config::{Kernels, ModelConfig, Norm, Position, Preset};
use brisk::corpus::generated::Rng;
use brisk::model::electra::{Electra, Exiting};
use brisk::model::fused::layer::{record_product_rows, take_product_rows, ProductRows};
use brisk::model::{Active, Ctx, Params};
use brisk::pretrain::electra::ReplacedTokenDetection;
use brisk::pretrain::mlm::mask_tokens;
use brisk::pretrain::objective::{step_flops, Batch, Objective};
use brisk::train::optim::gradients_or_zeros;
use candle_core::{DType, Device, Tensor};

const SHAPE: (usize, usize) = (2, 12);
const TOKENS: usize = 24;

fn config(position: Position, norm: Norm, kernels: Kernels) -> ModelConfig {
    let mut cfg = Preset::Tiny.config().model;
    cfg.vocab_size = 40;
    cfg.hidden_size = 16;
    cfg.num_attention_heads = 4;
    cfg.intermediate_size = 32;
    cfg.num_hidden_layers = 3;
    cfg.max_position_embeddings = 16;
    cfg.hidden_dropout_prob = 0.0;
    cfg.attention_probs_dropout_prob = 0.0;
    (cfg.position, cfg.norm, cfg.kernels) = (position, norm, kernels);
    cfg
}

fn model(cfg: &ModelConfig, exits: &[usize]) -> (Electra, Params) {
    let mut params = Params::new(Device::Cpu, DType::F32);
    let model = Electra::new(cfg, Some(0.5), exits, &mut params, 7).unwrap();
    (model, params)
}

fn text() -> Vec<u32> {
    let mut rng = Rng::new(3);
    let mut tokens: Vec<u32> = (0..TOKENS).map(|_| 5 + rng.below(35) as u32).collect();
    for s in [0, 12] {
        (tokens[s], tokens[s + 11]) = (SPECIAL.cls, SPECIAL.sep);
    }
    tokens
}

fn ids() -> Tensor {
    Tensor::from_vec(text(), SHAPE, &Device::Cpu).unwrap()
}

fn labels() -> Tensor {
    let labels: Vec<f32> = (0..TOKENS).map(|i| (i % 4 == 1) as u8 as f32).collect();
    Tensor::from_vec(labels, SHAPE, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Every parameter's gradient of `loss`, by name.
fn named_gradients(params: &Params, loss: &Tensor) -> BTreeMap<String, Vec<f32>> {
    // Groups outside the loss (the generator, idle layers) read as zeros.
    let grads = gradients_or_zeros(params, &loss.backward().unwrap(), &|_| true).unwrap();
    params
        .split(&grads)
        .unwrap()
        .into_iter()
        .map(|(name, g)| (name.to_string(), values(&g)))
        .collect()
}

/// A rule by position among the tokens that reached a head: after layer
/// 1 every third token leaves, after layer 2 every other one of the rest.
fn some_leave(layer: usize, logits: &[f32]) -> Vec<bool> {
    let step = if layer == 1 { 3 } else { 2 };
    (0..logits.len()).map(|i| i % step != 0).collect()
}

fn exiting(model: &Electra, rule: &dyn Fn(usize, &[f32]) -> Vec<bool>) -> Exiting {
    model
        .discriminate_exiting(&ids(), &labels(), None, rule, &mut Ctx::eval())
        .unwrap()
}

#[test]
fn nobody_leaving_is_plain_electra_forward_and_backward() {
    let cfg = config(Position::Rope, Norm::Post, Kernels::Fused);
    let mut objective = Preset::Tiny.config().objective;
    objective.kind = "electra".into();
    let tokens = text();
    let batch_loss = |exits: &[usize]| {
        let mut objective = objective.clone();
        objective.exit_layers = exits.to_vec();
        (objective.exit_threshold, objective.exit_weight) = (f64::INFINITY, 0.0);
        let mut params = Params::new(Device::Cpu, DType::F32);
        let rtd = ReplacedTokenDetection::new(&cfg, &objective, None, &mut params, 7).unwrap();
        let mut rng = Rng::new(11);
        let masked = mask_tokens(&tokens, &SPECIAL, 40, &objective, &mut rng);
        let batch = Batch {
            tokens: &tokens,
            masked: &masked,
            shape: SHAPE,
            mix: None,
            special: &SPECIAL,
            step: 1000,
        };
        let loss = rtd.batch_loss(&batch, &mut rng, &mut Ctx::eval()).unwrap();
        let total = loss.total.to_scalar::<f32>().unwrap();
        (
            total,
            values(&loss.hidden),
            named_gradients(&params, &loss.total),
            loss,
        )
    };
    let (plain, plain_hidden, plain_grads, _) = batch_loss(&[]);
    let (with_heads, hidden, grads, loss) = batch_loss(&[1, 2]);
    assert_eq!(
        plain.to_bits(),
        with_heads.to_bits(),
        "{plain} vs {with_heads}"
    );
    assert_eq!(plain_hidden, hidden);
    for (name, g) in &plain_grads {
        assert_eq!(g, &grads[name], "{name}");
    }
    assert!(grads
        .keys()
        .any(|n| n.starts_with("discriminator_exits.2.")));
    let skipped: f64 = loss
        .logged
        .iter()
        .filter(|(k, _)| k.starts_with("skipped"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(skipped, 0.0);
    assert_eq!(loss.flops_skipped, 0.0);
}

#[test]
fn at_threshold_zero_the_layers_above_see_no_token() {
    let cfg = config(Position::Absolute, Norm::Post, Kernels::Fused);
    let (model, params) = model(&cfg, &[1, 2]);
    let mut after_first = None;
    model
        .discriminator
        .forward_exiting(
            &ids(),
            None,
            &mut |i, x, _| {
                if i == 0 {
                    after_first = Some(values(x));
                }
                Ok(None)
            },
            &mut Ctx::eval(),
        )
        .unwrap();
    record_product_rows();
    let pass = exiting(&model, &|_, logits| vec![false; logits.len()]);
    let rows = take_product_rows();
    let none = ProductRows {
        query: 0,
        key_value: 0,
    };
    let all = ProductRows {
        query: TOKENS,
        key_value: TOKENS,
    };
    assert_eq!(rows, vec![all, none, none]);
    assert_eq!(pass.updated, vec![TOKENS, 0, 0]);
    // The head after layer 2 had nobody to read.
    assert_eq!(pass.exits.len(), 1);
    // Every token's final state is its state after layer 1.
    assert_eq!(values(&pass.hidden), after_first.unwrap());
    // Layers 2 and 3 did nothing, so they learn nothing.
    let loss = model
        .discriminator_head
        .loss(&pass.hidden, &labels())
        .unwrap();
    for (name, g) in named_gradients(&params, &loss) {
        let idle =
            name.starts_with("bert.encoder.layer.1.") || name.starts_with("bert.encoder.layer.2.");
        if idle {
            assert!(g.iter().all(|v| *v == 0.0), "{name}");
        } else if name.starts_with("bert.") || name.starts_with("discriminator_predictions.") {
            assert!(g.iter().any(|v| *v != 0.0), "{name} has no gradient");
        }
    }
}

#[test]
fn products_shrink_with_the_active_tokens_and_exited_states_are_carried() {
    let cfg = config(Position::Absolute, Norm::Post, Kernels::Fused);
    let (model, _) = model(&cfg, &[1, 2]);
    let mut after = Vec::new();
    model
        .discriminator
        .forward_exiting(
            &ids(),
            None,
            &mut |_, x, _| {
                after.push(values(x));
                Ok(None)
            },
            &mut Ctx::eval(),
        )
        .unwrap();
    record_product_rows();
    let pass = exiting(&model, &some_leave);
    let rows = take_product_rows();
    // After layer 1, 8 of 24 leave (every third); after layer 2, 8 of the 16 left.
    assert_eq!(pass.updated, vec![24, 16, 8]);
    let want: Vec<ProductRows> = pass
        .updated
        .iter()
        .map(|&n| ProductRows {
            query: n,
            key_value: TOKENS,
        })
        .collect();
    assert_eq!(rows, want);
    let (first, second) = (&pass.exits[0].rows, &pass.exits[1].rows);
    assert_eq!(first.len(), 24);
    assert_eq!(second.len(), 16);
    let h = cfg.hidden_size;
    let hidden = values(&pass.hidden);
    let row = |v: &[f32], r: usize| v[r * h..(r + 1) * h].to_vec();
    let at_two = pass_layer_two(&model);
    for r in (0..TOKENS as u32).filter(|r| !second.contains(r)) {
        // Left after layer 1: unchanged since, bit for bit.
        assert_eq!(
            row(&hidden, r as usize),
            row(&after[0], r as usize),
            "token {r}"
        );
    }
    for (i, &r) in second.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        // Left after layer 2.
        assert_eq!(
            row(&hidden, r as usize),
            row(&at_two, r as usize),
            "token {r} ({i})"
        );
    }
}

/// The discriminator's states after layer 2 when every third token left
/// after layer 1, as under [`some_leave`].
fn pass_layer_two(model: &Electra) -> Vec<f32> {
    let mut out = Vec::new();
    let mut decide = |i: usize, x: &Tensor, _: Option<&Active>| match i {
        0 => {
            let rows: Vec<u32> = (0..TOKENS as u32).filter(|r| r % 3 != 0).collect();
            Ok(Some(Active::new(rows, SHAPE, &candle_core::Device::Cpu)?))
        }
        1 => {
            out = values(x);
            Ok(None)
        }
        _ => Ok(None),
    };
    model
        .discriminator
        .forward_exiting(&ids(), None, &mut decide, &mut Ctx::eval())
        .unwrap();
    out
}

/// The reference computes every layer whole, every token a query, key and
/// value, and keeps the active rows of the output: the fused kernel,
/// which computes queries for the active rows only, must match it, so the
/// tokens that left are still keys and values there.
#[test]
fn the_fused_active_rows_equal_the_reference_forward_and_backward() {
    for position in [Position::Absolute, Position::Rope, Position::TupeR] {
        for norm in [Norm::Post, Norm::Pre] {
            let run = |kernels| {
                let cfg = config(position, norm, kernels);
                let (model, params) = model(&cfg, &[1, 2]);
                let pass = exiting(&model, &some_leave);
                let mut loss = model
                    .discriminator_head
                    .loss(&pass.hidden, &labels())
                    .unwrap();
                for exit in &pass.exits {
                    loss = (loss + &exit.loss).unwrap();
                }
                (values(&pass.hidden), named_gradients(&params, &loss))
            };
            let (fused, fused_grads) = run(Kernels::Fused);
            let (reference, reference_grads) = run(Kernels::Reference);
            let case = format!("{position:?} {norm:?}");
            for (a, b) in fused.iter().zip(&reference) {
                assert!((a - b).abs() < 1e-5, "{case}: hidden {a} vs {b}");
            }
            for (name, g) in &reference_grads {
                let scale = g.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                for (a, b) in fused_grads[name].iter().zip(g) {
                    assert!(
                        (a - b).abs() <= 1e-5 * scale.max(1.0),
                        "{case}: {name} {a} vs {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_run_logs_what_it_skipped_and_counts_the_flops_it_spent() {
    let root = tempfile::tempdir().unwrap();
    let mut config = support::small_pretraining("electra");
    config.train.steps = 12;
    config.train.log_every = 1;
    config.objective.exit_layers = vec![1];
    config.objective.exit_threshold = 0.3;
    config.objective.exit_warmup = 4;
    let (run, summary) = support::pretrain_generated(root.path(), "exit", &mut config);
    let rows = support::metrics_rows(&run);
    let last = rows.last().unwrap();
    assert!(last["exit_loss"].as_f64().unwrap().is_finite());
    let skipped = last["skipped_layer_2"].as_f64().unwrap();
    assert!(skipped > 0.0 && skipped <= 1.0, "{skipped}");
    let early = rows.iter().find(|r| r["step"] == 1).unwrap();
    assert_eq!(early["skipped_layer_2"].as_f64(), Some(0.0), "warm-up");
    assert!(summary.skipped["skipped_layer_2"] > 0.0);
    let tokens_per_step = (config.train.batch_size * config.data.seq_len) as u64;
    let planned = step_flops(&config, config.data.seq_len, tokens_per_step).unwrap() * 12.0;
    assert!(summary.flops < planned, "{} vs {planned}", summary.flops);
    assert!(summary.flops > 0.8 * planned);
}

#[test]
fn exits_are_refused_where_they_mean_nothing() {
    let mut config = Preset::Tiny.config();
    config.objective.exit_layers = vec![1];
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("objective.exit_layers") && err.contains("electra"),
        "{err}"
    );
    config.objective.kind = "electra".into();
    config.validate().unwrap();
    config.objective.exit_layers = vec![2];
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("from 1 to 1"), "{err}");
    config.objective.exit_layers = vec![1];
    config.objective.exit_threshold = -1.0;
    assert!(config
        .validate()
        .unwrap_err()
        .to_string()
        .contains("objective.exit_threshold"));
}
