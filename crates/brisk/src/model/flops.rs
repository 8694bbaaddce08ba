//! Training FLOPs, counted as ELECTRA does (Clark et al., 2020, and its
//! `flops_computation.py`), so that objectives with different costs per step
//! can be compared on one axis:
//! - a matrix product counts 2 FLOPs per multiply-add;
//! - the backward pass costs as much as the forward pass, so training is
//!   2 × forward;
//! - embeddings are dense look-ups (a product with a one-hot vector);
//! - the MLM output layer is counted only at the masked fraction of tokens.
//!
//! Element-wise work (LayerNorm, GELU, softmax, dropout, residuals) is
//! counted with small per-element constants; it is a few percent of the
//! total for BERT shapes.

use crate::config::{ModelConfig, Position};

const LAYER_NORM: f64 = 5.0;
const GELU: f64 = 8.0;
const SOFTMAX: f64 = 5.0;
const DROPOUT: f64 = 4.0;

/// Forward FLOPs of the encoder for one token of a `seq_len`-token sequence.
pub fn encoder_forward_per_token(cfg: &ModelConfig, seq_len: usize) -> f64 {
    let h = cfg.hidden_size as f64;
    let lookups = (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) as f64;
    let embeddings = 2.0 * h * lookups + 2.0 * h + (LAYER_NORM + DROPOUT) * h;
    embeddings + cfg.num_hidden_layers as f64 * layer_forward_per_token(cfg, seq_len)
}

/// Forward FLOPs of one encoder layer for one token.
pub fn layer_forward_per_token(cfg: &ModelConfig, seq_len: usize) -> f64 {
    key_value_forward_per_token(cfg) + query_side_forward_per_token(cfg, seq_len)
}

/// Forward FLOPs of a layer's key and value projections for one token
/// (with rotary positions, the key's rotation): what a token that left
/// early still costs every layer above, as a key and a value.
pub fn key_value_forward_per_token(cfg: &ModelConfig) -> f64 {
    let h = cfg.hidden_size as f64;
    let rotation = match cfg.position {
        Position::Rope => 3.0 * h,
        _ => 0.0,
    };
    2.0 * 2.0 * h * h + 2.0 * h + rotation
}

/// Forward FLOPs of the rest of a layer for one query token: its query
/// projection, its attention row, the output projection and the
/// feed-forward block (what early exit saves for a token that left).
pub fn query_side_forward_per_token(cfg: &ModelConfig, seq_len: usize) -> f64 {
    let h = cfg.hidden_size as f64;
    let i = cfg.intermediate_size as f64;
    let l = seq_len as f64;
    let heads = cfg.num_attention_heads as f64;
    let attention = 2.0 * h * h + h // query
        + 2.0 * l * h // scores
        + l * heads * (2.0 + SOFTMAX + DROPOUT) // scale, mask, softmax, dropout
        + 2.0 * l * h // probabilities × values
        + 2.0 * h * h + h // output projection
        + (DROPOUT + 1.0 + LAYER_NORM) * h;
    let feed_forward =
        2.0 * h * i + i + GELU * i + 2.0 * i * h + h + (DROPOUT + 1.0 + LAYER_NORM) * h;
    // TUPE adds its position term to every layer's logits of every sequence.
    // Rotary positions: 3 operations per rotated query component.
    let position_bias = match cfg.position {
        Position::Absolute => 0.0,
        Position::Rope => 3.0 * h,
        Position::TupeA | Position::TupeR => heads * l,
    };
    attention + feed_forward + position_bias
}

/// Forward FLOPs of ELECTRA's replaced-token head for one token.
pub fn discriminator_head_forward_per_token(cfg: &ModelConfig) -> f64 {
    let d = cfg.hidden_size as f64;
    2.0 * d * d + d + GELU * d + 2.0 * d + 1.0
}

/// TUPE's position term, computed once per forward pass and shared by every
/// sequence and layer: LayerNorm and the two projections of `len + 2` rows
/// (the positions and the two [CLS] vectors), the per-head products, the
/// relative bias and the [CLS] reset. Absolute positions: nothing.
pub fn position_term_forward(cfg: &ModelConfig, seq_len: usize) -> f64 {
    if matches!(cfg.position, Position::Absolute | Position::Rope) {
        return 0.0;
    }
    let h = cfg.hidden_size as f64;
    let rows = seq_len as f64 + 2.0;
    let (l, heads) = (seq_len as f64, cfg.num_attention_heads as f64);
    rows * (LAYER_NORM * h + 2.0 * (2.0 * h * h + h)) + 2.0 * rows * rows * h + 3.0 * heads * l * l
}

/// Forward FLOPs of the MLM head for one predicted token.
pub fn mlm_head_forward_per_prediction(cfg: &ModelConfig) -> f64 {
    let h = cfg.hidden_size as f64;
    let v = cfg.vocab_size as f64;
    2.0 * h * h + h + (GELU + LAYER_NORM) * h + 2.0 * h * v + v + SOFTMAX * v
}

/// Training FLOPs per token of masked-LM pre-training with `mask_prob` of
/// the tokens predicted.
pub fn mlm_training_per_token(cfg: &ModelConfig, seq_len: usize, mask_prob: f64) -> f64 {
    2.0 * (encoder_forward_per_token(cfg, seq_len)
        + mask_prob * mlm_head_forward_per_prediction(cfg))
}

/// Training FLOPs per token of ELECTRA, counted as its
/// `flops_computation.py` does: the generator (when there is a learned
/// one: its encoder over the embeddings projected to its width, and its
/// MLM head at the masked fraction, mapping back to the embedding width
/// for the tied decoder), and the discriminator's encoder and head on
/// every token.
pub fn electra_training_per_token(
    cfg: &ModelConfig,
    generator: Option<&ModelConfig>,
    seq_len: usize,
    mask_prob: f64,
) -> f64 {
    let (d, v) = (cfg.hidden_size as f64, cfg.vocab_size as f64);
    let discriminator_head = discriminator_head_forward_per_token(cfg);
    let generator = generator.map_or(0.0, |generator| {
        let g = generator.hidden_size as f64;
        let project = if g != d { 2.0 * d * g + g } else { 0.0 };
        let head = 2.0 * g * d + d + (GELU + LAYER_NORM) * d + 2.0 * d * v + v + SOFTMAX * v;
        encoder_forward_per_token(generator, seq_len) + project + mask_prob * head
    });
    2.0 * (generator + encoder_forward_per_token(cfg, seq_len) + discriminator_head)
}

/// Training FLOPs per token of MC-BERT: the meta controller (its encoder,
/// and its MLM head: forward at every position, since it proposes
/// candidates everywhere, backward at the masked fraction only, where its
/// loss is) and the main model (its encoder and the multi-choice head: the
/// transform and `K` candidate scores).
pub fn mcbert_training_per_token(
    cfg: &ModelConfig,
    controller: &ModelConfig,
    seq_len: usize,
    candidates: usize,
    mask_prob: f64,
) -> f64 {
    let (d, g, v, k) = (
        cfg.hidden_size as f64,
        controller.hidden_size as f64,
        cfg.vocab_size as f64,
        candidates as f64,
    );
    let project = if g != d { 2.0 * d * g + g } else { 0.0 };
    let controller_head = 2.0 * g * d + d + (GELU + LAYER_NORM) * d + 2.0 * d * v + v + SOFTMAX * v;
    let choice_head = 2.0 * d * d + d + (GELU + LAYER_NORM) * d + k * (2.0 * d + 1.0) + SOFTMAX * k;
    2.0 * (encoder_forward_per_token(controller, seq_len)
        + project
        + encoder_forward_per_token(cfg, seq_len)
        + choice_head)
        + (1.0 + mask_prob) * controller_head
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    #[test]
    fn matrix_products_dominate_and_scale_as_expected() {
        let cfg = Preset::Base.config().model;
        // 12 layers × (4h² + 2hi) × 2 FLOPs: the familiar 2 × parameters rule.
        let matmuls = 12.0 * 2.0 * (4.0 * 768.0 * 768.0 + 2.0 * 768.0 * 3072.0);
        let forward = encoder_forward_per_token(&cfg, 128);
        assert!(
            forward > matmuls && forward < 1.6 * matmuls,
            "{forward} vs {matmuls}"
        );
        let bigger = ModelConfig {
            num_hidden_layers: 24,
            ..cfg.clone()
        };
        let embeddings = encoder_forward_per_token(
            &ModelConfig {
                num_hidden_layers: 0,
                ..cfg.clone()
            },
            128,
        );
        let per_layer = (forward - embeddings) / 12.0;
        assert!(
            (encoder_forward_per_token(&bigger, 128) - embeddings - 24.0 * per_layer).abs() < 1.0
        );
        assert!(mlm_training_per_token(&cfg, 128, 0.15) > 2.0 * forward);
    }

    #[test]
    fn electra_counts_the_generator_too() {
        let cfg = Preset::Base.config().model;
        let quarter = ModelConfig {
            hidden_size: 192,
            num_attention_heads: 3,
            intermediate_size: 768,
            ..cfg.clone()
        };
        let electra = electra_training_per_token(&cfg, Some(&quarter), 128, 0.15);
        let bert = mlm_training_per_token(&cfg, 128, 0.15);
        // The discriminator's encoder alone is most of BERT; the quarter-size
        // generator adds a few percent more.
        assert!(
            electra > 0.9 * bert && electra < 1.3 * bert,
            "{electra} vs {bert}"
        );
    }

    #[test]
    fn mcbert_counts_the_controller_head_forward_everywhere_backward_where_masked() {
        let cfg = Preset::Base.config().model;
        let quarter = ModelConfig {
            hidden_size: 192,
            num_attention_heads: 3,
            intermediate_size: 768,
            ..cfg.clone()
        };
        let at = |p: f64| mcbert_training_per_token(&cfg, &quarter, 128, 10, p);
        // The head's cost per position, from the difference of mask rates.
        let head = at(1.0) - at(0.0);
        assert!((at(0.15) - at(0.0) - 0.15 * head).abs() < 1e-3 * head);
        // Forward at every position: more than ELECTRA, whose generator head
        // works at the masked positions only.
        let electra = electra_training_per_token(&cfg, Some(&quarter), 128, 0.15);
        assert!(at(0.15) - electra > 0.8 * head, "{} vs {electra}", at(0.15));
    }

    #[test]
    fn tupe_adds_a_small_term() {
        let cfg = ModelConfig {
            position: Position::Absolute,
            ..Preset::Mini.config().model
        };
        let tupe = ModelConfig {
            position: Position::TupeR,
            ..cfg.clone()
        };
        assert_eq!(position_term_forward(&cfg, 128), 0.0);
        let (plain, untied) = (
            encoder_forward_per_token(&cfg, 128),
            encoder_forward_per_token(&tupe, 128),
        );
        // Per token: one addition per head and key in every layer.
        assert_eq!(untied - plain, 4.0 * 4.0 * 128.0);
        // Once per forward pass: well under one sequence's encoder work.
        let once = position_term_forward(&tupe, 128);
        assert!(
            once > 0.0 && once < 0.1 * 128.0 * plain,
            "{once} vs {plain}"
        );
    }
}
