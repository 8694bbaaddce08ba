//! TUPE (untied positional attention): the encoder equals a naive f64 loop
//! over the paper's equations on random weights, [CLS] is untied from
//! positions, and TUPE-R's buckets are T5's.

#![allow(clippy::needless_range_loop)] // index loops mirror the equations

use brisk::config::{Kernels, ModelConfig, Position, Preset};
use brisk::corpus::generated::Rng;
use brisk::model::untied_positions::{relative_bucket, RELATIVE_BUCKETS, RELATIVE_MAX_DISTANCE};
use brisk::model::{Bert, Ctx, Params};
use candle_core::{DType, Device, Tensor};

const HIDDEN: usize = 8;
const HEADS: usize = 2;
const LEN: usize = 20;

fn config(position: Position, kernels: Kernels) -> ModelConfig {
    let mut cfg = Preset::Tiny.config().model;
    cfg.vocab_size = 30;
    cfg.hidden_size = HIDDEN;
    cfg.num_attention_heads = HEADS;
    cfg.num_hidden_layers = 1;
    cfg.intermediate_size = 16;
    cfg.max_position_embeddings = 24;
    // ReLU keeps the loop below free of erf; large weights make the
    // position term as large as the content term.
    cfg.hidden_act = "relu".into();
    cfg.initializer_range = 0.5;
    cfg.position = position;
    cfg.kernels = kernels;
    cfg
}

/// A named parameter as f64 values.
fn values(params: &Params, name: &str) -> Vec<f64> {
    params
        .get(name)
        .unwrap_or_else(|| panic!("no parameter {name}"))
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn layer_norm(x: &[f64], g: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    x.iter()
        .zip(g.iter().zip(b))
        .map(|(v, (g, b))| (v - mean) / (var + eps).sqrt() * g + b)
        .collect()
}

/// `W x + b` with HF's `[out, in]` layout.
fn linear(params: &Params, name: &str, x: &[f64]) -> Vec<f64> {
    let w = values(params, &format!("{name}.weight"));
    let b = values(params, &format!("{name}.bias"));
    b.iter()
        .enumerate()
        .map(|(o, b)| b + (0..x.len()).map(|i| w[o * x.len() + i] * x[i]).sum::<f64>())
        .collect()
}

/// The paper's position term, `[heads][i][j]`, entry by entry.
fn naive_position_term(params: &Params, cfg: &ModelConfig, len: usize) -> Vec<Vec<Vec<f64>>> {
    let (h, d) = (HIDDEN, HIDDEN / HEADS);
    let eps = cfg.layer_norm_eps;
    let theta = values(params, "bert.encoder.tupe.cls_theta");
    let table = values(params, "bert.embeddings.position_embeddings.weight");
    let g = values(params, "bert.encoder.tupe.LayerNorm.weight");
    let b = values(params, "bert.encoder.tupe.LayerNorm.bias");
    // Row r: p_θ1, p_θ2, then positions 0..len.
    let row = |r: usize| -> Vec<f64> {
        let raw = if r < 2 {
            &theta[r * h..(r + 1) * h]
        } else {
            &table[(r - 2) * h..(r - 1) * h]
        };
        layer_norm(raw, &g, &b, eps)
    };
    let uq: Vec<Vec<f64>> = (0..len + 2)
        .map(|r| linear(params, "bert.encoder.tupe.query", &row(r)))
        .collect();
    let uk: Vec<Vec<f64>> = (0..len + 2)
        .map(|r| linear(params, "bert.encoder.tupe.key", &row(r)))
        .collect();
    let score = |head: usize, a: usize, b: usize| -> f64 {
        (head * d..(head + 1) * d)
            .map(|c| uq[a][c] * uk[b][c])
            .sum::<f64>()
            / ((2 * d) as f64).sqrt()
    };
    let relative = (cfg.position == Position::TupeR)
        .then(|| values(params, "bert.encoder.tupe.relative_attention_bias.weight"));
    (0..HEADS)
        .map(|head| {
            (0..len)
                .map(|i| {
                    (0..len)
                        .map(|j| {
                            if i == 0 {
                                return score(head, 0, 0);
                            }
                            if j == 0 {
                                return score(head, 1, 1);
                            }
                            let rel = relative.as_ref().map_or(0.0, |r| {
                                let bucket = relative_bucket(
                                    j as i64 - i as i64,
                                    RELATIVE_BUCKETS,
                                    RELATIVE_MAX_DISTANCE,
                                );
                                r[bucket * HEADS + head]
                            });
                            score(head, i + 2, j + 2) + rel
                        })
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// One post-LN TUPE layer over one sequence, in plain loops:
/// word + type embeddings (no positions), then attention with logits
/// `q·k / sqrt(2d) + position term` over the unpadded keys.
fn naive_encoder(params: &Params, cfg: &ModelConfig, ids: &[u32], keep: &[bool]) -> Vec<Vec<f64>> {
    let (h, d, eps) = (HIDDEN, HIDDEN / HEADS, cfg.layer_norm_eps);
    let len = ids.len();
    let word = values(params, "bert.embeddings.word_embeddings.weight");
    let types = values(params, "bert.embeddings.token_type_embeddings.weight");
    let (eg, eb) = (
        values(params, "bert.embeddings.LayerNorm.weight"),
        values(params, "bert.embeddings.LayerNorm.bias"),
    );
    let x: Vec<Vec<f64>> = ids
        .iter()
        .map(|&id| {
            let sum: Vec<f64> = (0..h)
                .map(|c| word[id as usize * h + c] + types[c])
                .collect();
            layer_norm(&sum, &eg, &eb, eps)
        })
        .collect();
    let p = "bert.encoder.layer.0";
    let project = |name: &str| -> Vec<Vec<f64>> {
        x.iter()
            .map(|t| linear(params, &format!("{p}.attention.self.{name}"), t))
            .collect()
    };
    let (q, k, v) = (project("query"), project("key"), project("value"));
    let term = naive_position_term(params, cfg, len);
    let mut context = vec![vec![0.0; h]; len];
    for head in 0..HEADS {
        let cols = head * d..(head + 1) * d;
        for i in 0..len {
            let logits: Vec<Option<f64>> = (0..len)
                .map(|j| {
                    keep[j].then(|| {
                        cols.clone().map(|c| q[i][c] * k[j][c]).sum::<f64>()
                            / ((2 * d) as f64).sqrt()
                            + term[head][i][j]
                    })
                })
                .collect();
            let max = logits.iter().flatten().fold(f64::MIN, |m, &l| m.max(l));
            let weights: Vec<f64> = logits
                .iter()
                .map(|l| l.map_or(0.0, |l| (l - max).exp()))
                .collect();
            let total: f64 = weights.iter().sum();
            for c in cols.clone() {
                context[i][c] = (0..len).map(|j| weights[j] / total * v[j][c]).sum();
            }
        }
    }
    let norm = |name: &str| {
        (
            values(params, &format!("{p}.{name}.weight")),
            values(params, &format!("{p}.{name}.bias")),
        )
    };
    let (ag, ab) = norm("attention.output.LayerNorm");
    let (fg, fb) = norm("output.LayerNorm");
    (0..len)
        .map(|i| {
            let out = linear(params, &format!("{p}.attention.output.dense"), &context[i]);
            let z: Vec<f64> = (0..h).map(|c| x[i][c] + out[c]).collect();
            let h1 = layer_norm(&z, &ag, &ab, eps);
            let inner: Vec<f64> = linear(params, &format!("{p}.intermediate.dense"), &h1)
                .into_iter()
                .map(|v| v.max(0.0))
                .collect();
            let ffn = linear(params, &format!("{p}.output.dense"), &inner);
            let z: Vec<f64> = (0..h).map(|c| h1[c] + ffn[c]).collect();
            layer_norm(&z, &fg, &fb, eps)
        })
        .collect()
}

fn model(position: Position, kernels: Kernels, seed: u64) -> (Bert, Params, ModelConfig) {
    let cfg = config(position, kernels);
    let mut params = Params::new(Device::Cpu, DType::F64);
    let bert = Bert::new(&mut params, &cfg, &mut Rng::new(seed)).unwrap();
    // LayerNorm gains and biases away from 1 and 0, so they count too.
    let mut rng = Rng::new(seed + 100);
    for g in params.groups() {
        let n = g.var.elem_count();
        let noise: Vec<f64> = (0..n).map(|_| 0.2 * (rng.unit() - 0.5)).collect();
        let noise = Tensor::from_vec(noise, n, &Device::Cpu).unwrap();
        g.var.set(&(g.var.as_tensor() + noise).unwrap()).unwrap();
    }
    (bert, params, cfg)
}

#[test]
fn the_encoder_equals_a_naive_loop_over_the_equations() {
    let mut rng = Rng::new(4);
    let ids: Vec<Vec<u32>> = (0..2)
        .map(|_| {
            let mut s: Vec<u32> = (0..LEN).map(|_| 5 + rng.below(25) as u32).collect();
            s[0] = 2; // [CLS]
            s
        })
        .collect();
    // The second sequence has three padded positions.
    let keep: Vec<Vec<bool>> = vec![vec![true; LEN], (0..LEN).map(|j| j < LEN - 3).collect()];
    let dev = &Device::Cpu;
    let id_tensor = Tensor::from_vec(ids.concat(), (2, LEN), dev).unwrap();
    let mask: Vec<u32> = keep.concat().iter().map(|&k| k as u32).collect();
    let mask = Tensor::from_vec(mask, (2, LEN), dev).unwrap();
    for position in [Position::TupeA, Position::TupeR] {
        for kernels in [Kernels::Fused, Kernels::Reference] {
            let (bert, params, cfg) = model(position, kernels, 11);
            assert_eq!(bert.layers[0].is_fused(), kernels == Kernels::Fused);
            let out = bert
                .forward(&id_tensor, None, Some(&mask), None, &mut Ctx::eval())
                .unwrap();
            let out: Vec<Vec<Vec<f64>>> = out.to_vec3().unwrap();
            let mut worst = 0f64;
            for s in 0..2 {
                let want = naive_encoder(&params, &cfg, &ids[s], &keep[s]);
                for i in 0..LEN {
                    if !keep[s][i] {
                        continue; // padded rows are not defined by the equations
                    }
                    for c in 0..HIDDEN {
                        worst = worst.max((out[s][i][c] - want[i][c]).abs());
                    }
                }
            }
            assert!(
                worst < 1e-10,
                "{position:?} {kernels:?}: max |diff| {worst}"
            );
        }
    }
}

#[test]
fn the_position_term_is_the_naive_one_and_cls_is_untied() {
    for position in [Position::TupeA, Position::TupeR] {
        let (bert, params, cfg) = model(position, Kernels::Fused, 3);
        let term: Vec<Vec<Vec<f64>>> = bert.position_bias(LEN).unwrap().unwrap().to_vec3().unwrap();
        let want = naive_position_term(&params, &cfg, LEN);
        for head in 0..HEADS {
            for i in 0..LEN {
                for j in 0..LEN {
                    let diff = (term[head][i][j] - want[head][i][j]).abs();
                    assert!(diff < 1e-12, "{position:?} [{head},{i},{j}]: {diff}");
                }
            }
            let (theta1, theta2) = (term[head][0][0], term[head][1][0]);
            assert!((theta1 - theta2).abs() > 1e-6, "θ1 and θ2 are distinct");
            assert!(
                term[head][0].iter().all(|&v| v == theta1),
                "[CLS] row is θ1"
            );
            assert!(
                (1..LEN).all(|i| term[head][i][0] == theta2),
                "[CLS] column is θ2"
            );
        }

        // New position embeddings change every entry but [CLS]'s row and column.
        let embeddings = params
            .groups()
            .iter()
            .find(|g| g.name == "bert.embeddings")
            .unwrap();
        let mut rng = Rng::new(17);
        let n = embeddings.var.elem_count();
        let noise: Vec<f64> = (0..n).map(|_| rng.unit() - 0.5).collect();
        let noise = Tensor::from_vec(noise, n, &Device::Cpu).unwrap();
        let moved = (embeddings.var.as_tensor() + noise).unwrap();
        embeddings.var.set(&moved).unwrap();
        let after: Vec<Vec<Vec<f64>>> =
            bert.position_bias(LEN).unwrap().unwrap().to_vec3().unwrap();
        for head in 0..HEADS {
            assert_eq!(after[head][0], term[head][0]);
            for i in 1..LEN {
                assert_eq!(after[head][i][0], term[head][i][0]);
                assert!((1..LEN).all(|j| after[head][i][j] != term[head][i][j]));
            }
        }
    }
}

#[test]
fn absolute_positions_have_no_position_term() {
    let (bert, params, _) = model(Position::Absolute, Kernels::Fused, 1);
    assert!(bert.position_bias(LEN).unwrap().is_none());
    assert!(params.iter().all(|(name, _)| !name.contains("tupe")));
}

#[test]
fn relative_buckets_match_t5() {
    // T5's bidirectional bucketing (32 buckets, max distance 128); the
    // expected values were computed with T5's formula, key minus query.
    let known = [
        (0, 0),
        (-1, 1),
        (-7, 7),
        (-8, 8),
        (-12, 9),
        (-20, 10),
        (-60, 13),
        (-100, 15),
        (-127, 15),
        (-128, 15),
        (-1000, 15),
        (1, 17),
        (7, 23),
        (8, 24),
        (12, 25),
        (20, 26),
        (60, 29),
        (100, 31),
        (1000, 31),
    ];
    for (relative, bucket) in known {
        assert_eq!(
            relative_bucket(relative, RELATIVE_BUCKETS, RELATIVE_MAX_DISTANCE),
            bucket,
            "relative position {relative}"
        );
    }
}
