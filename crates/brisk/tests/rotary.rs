//! Rotary position embeddings: scores depend only on relative offsets, the
//! fused in-place rotation equals the reference composition, and a whole
//! encoder with rotary positions reads a sequence the same wherever it
//! starts.

use brisk::config::{Kernels, ModelConfig, Position, Preset};
use brisk::corpus::generated::Rng;
use brisk::model::rotary::{apply, rotate_packed};
use brisk::model::{Bert, Ctx, Params};
use candle_core::{DType, Device, Tensor};

fn random(n: usize, rng: &mut Rng) -> Vec<f64> {
    (0..n).map(|_| rng.unit() - 0.5).collect()
}

/// `q_i · k_j` after rotation, for one head of width `d`, with the same
/// query vector at every position and the same key vector at every position.
fn rotated_scores(q: &[f64], k: &[f64], len: usize) -> Vec<Vec<f64>> {
    let d = q.len();
    let repeat = |v: &[f64]| {
        let all: Vec<f64> = (0..len).flat_map(|_| v.iter().copied()).collect();
        apply(&Tensor::from_vec(all, (1, 1, len, d), &Device::Cpu).unwrap()).unwrap()
    };
    let (qr, kr) = (repeat(q), repeat(k));
    let scores = qr.matmul(&kr.t().unwrap()).unwrap();
    scores
        .squeeze(0)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap()
}

#[test]
fn scores_depend_only_on_the_offset() {
    let mut rng = Rng::new(1);
    let (d, len) = (16, 40);
    let (q, k) = (random(d, &mut rng), random(d, &mut rng));
    let s = rotated_scores(&q, &k, len);
    for i in 0..len - 5 {
        for j in 0..len - 5 {
            for shift in [1, 5] {
                let diff = (s[i][j] - s[i + shift][j + shift]).abs();
                assert!(diff < 1e-12, "[{i},{j}] vs shifted by {shift}: {diff}");
            }
        }
    }
    // And offsets do matter: the rotation is not the identity.
    let plain: f64 = q.iter().zip(&k).map(|(a, b)| a * b).sum();
    assert!(
        (s[0][0] - plain).abs() < 1e-12,
        "offset 0 is the plain product"
    );
    assert!((1..len).any(|j| (s[0][j] - plain).abs() > 1e-3));
}

#[test]
fn the_in_place_rotation_equals_the_reference_and_inverts() {
    let mut rng = Rng::new(2);
    let (batch, len, heads, d) = (2, 7, 3, 4);
    let hidden = heads * d;
    let packed = random(batch * len * 3 * hidden, &mut rng);
    let mut fused = packed.clone();
    rotate_packed(&mut fused, len, hidden, d, false);
    // The reference on Q, K and V laid out as [batch, heads, len, d].
    let t = Tensor::from_vec(packed.clone(), (batch, len, 3, heads, d), &Device::Cpu).unwrap();
    for (part, rotated) in [(0, true), (1, true), (2, false)] {
        let x = t.narrow(2, part, 1).unwrap().squeeze(2).unwrap();
        let x = x.transpose(1, 2).unwrap().contiguous().unwrap();
        let want = if rotated { apply(&x).unwrap() } else { x };
        let want: Vec<f64> = want
            .transpose(1, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let got = Tensor::from_vec(fused.clone(), (batch, len, 3, heads, d), &Device::Cpu)
            .unwrap()
            .narrow(2, part, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let worst = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-12, "part {part}: {worst}");
    }
    rotate_packed(&mut fused, len, hidden, d, true);
    let worst = fused
        .iter()
        .zip(&packed)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        worst < 1e-12,
        "the inverse rotation restores the input: {worst}"
    );
}

fn config(kernels: Kernels) -> ModelConfig {
    let mut cfg = Preset::Tiny.config().model;
    cfg.vocab_size = 30;
    cfg.hidden_size = 16;
    cfg.num_attention_heads = 2;
    cfg.num_hidden_layers = 2;
    cfg.intermediate_size = 32;
    cfg.max_position_embeddings = 16;
    cfg.position = Position::Rope;
    cfg.kernels = kernels;
    cfg
}

#[test]
fn an_encoder_reads_a_sequence_the_same_wherever_it_starts() {
    // Three padded (masked-out) positions before the tokens shift every
    // absolute position by 3 and no relative offset between tokens: with
    // rotary positions and no position table the outputs are the same.
    for kernels in [Kernels::Fused, Kernels::Reference] {
        let cfg = config(kernels);
        let mut params = Params::new(Device::Cpu, DType::F64);
        let bert = Bert::new(&mut params, &cfg, &mut Rng::new(4)).unwrap();
        assert!(params
            .iter()
            .all(|(n, _)| !n.contains("position_embeddings")));
        let tokens = [2u32, 9, 14, 7, 21, 3];
        let n = tokens.len();
        let dev = &Device::Cpu;
        let run = |ids: Vec<u32>, mask: Vec<u32>| -> Vec<Vec<f64>> {
            let len = ids.len();
            let out = bert
                .forward(
                    &Tensor::from_vec(ids, (1, len), dev).unwrap(),
                    None,
                    Some(&Tensor::from_vec(mask, (1, len), dev).unwrap()),
                    None,
                    &mut Ctx::eval(),
                )
                .unwrap();
            out.squeeze(0).unwrap().to_vec2().unwrap()
        };
        let plain = run(tokens.to_vec(), vec![1; n]);
        let shifted_ids: Vec<u32> = [0, 0, 0].iter().chain(&tokens).copied().collect();
        let shifted_mask: Vec<u32> = [0, 0, 0].iter().chain(&[1; 6]).copied().collect();
        let shifted = run(shifted_ids, shifted_mask);
        let mut worst = 0f64;
        for i in 0..n {
            for c in 0..cfg.hidden_size {
                worst = worst.max((plain[i][c] - shifted[i + 3][c]).abs());
            }
        }
        assert!(worst < 1e-9, "{kernels:?}: {worst}");
    }
}

#[test]
fn odd_head_widths_are_refused() {
    let mut config = Preset::Tiny.config();
    config.model.position = Position::Rope;
    config.model.hidden_size = 18;
    config.model.num_attention_heads = 6;
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("model.position") && err.contains("even"),
        "{err}"
    );
}
