//! Run configuration: TOML sections, named presets and dotted overrides.
//!
//! A config is resolved in three layers, each overriding the one before:
//! 1. a named preset ([`Preset`]), which sets every field;
//! 2. an optional TOML file (`--config`), with the same sections;
//! 3. `--set key.path=value` overrides, in the order given.
//!
//! Every key is checked against the preset's tree, so a typo is an error that
//! names the key (and lists the keys its section does have). Values are
//! type-checked against the field they replace, then the whole config is
//! validated ([`Config::validate`]). The resolved config is what a run writes
//! to its `config.toml`, so `--config runs/X/config.toml` repeats a run.

mod presets;
mod resolve;

pub use presets::Preset;
pub use resolve::{layered, resolve, ConfigSource};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The whole run configuration, one struct per TOML section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The preset this config started from (informational; a config file may
    /// name it to choose its base).
    pub preset: String,
    pub model: ModelConfig,
    pub data: DataConfig,
    pub objective: ObjectiveConfig,
    pub train: TrainConfig,
    pub notes: NotesConfig,
    pub eval: EvalConfig,
}

/// Encoder shape. Field names follow HuggingFace `BertConfig` so that
/// `config.json` files move both ways; `norm` and `position` are brisk's own
/// options that HF BERT cannot represent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    /// `"gelu"` (exact, erf form, as in HF), `"gelu_new"` (tanh form) or `"relu"`.
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub initializer_range: f64,
    pub norm: Norm,
    pub position: Position,
    /// How the encoder layers run; not part of the model (a checkpoint
    /// trained with one runs with the other).
    pub kernels: Kernels,
}

/// Which implementation runs the encoder layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// Each layer is one op with a hand-written backward (CPU, f32/f64).
    Fused,
    /// The plain composition of candle ops: the tested reference, and the
    /// path for devices the fused kernels do not cover.
    Reference,
}

/// Where LayerNorm sits in each encoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// After the residual add, as in BERT.
    Post,
    /// Before each sub-layer.
    Pre,
}

/// How positions enter attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Position {
    /// Learned absolute embeddings added to the input, as in BERT.
    #[serde(rename = "absolute")]
    Absolute,
    /// TUPE: untied positional attention with [CLS] untying.
    #[serde(rename = "tupe-a")]
    TupeA,
    /// TUPE-A plus a relative position bias.
    #[serde(rename = "tupe-r")]
    TupeR,
    /// Rotary position embeddings: queries and keys rotated by their
    /// position, so scores depend on relative offsets; no position table.
    #[serde(rename = "rope")]
    Rope,
}

/// Where the training text comes from and how it is cut into sequences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A prepared corpus directory (from `brisk corpus prepare`); empty means
    /// the built-in generated corpus.
    pub corpus: String,
    /// Tokens per packed sequence, `[CLS]` and the final `[SEP]` included.
    pub seq_len: usize,
    /// Lowercase (and strip accents) before WordPiece, as BERT-uncased.
    pub lowercase: bool,
    /// An existing `tokenizer.json` or `vocab.txt`; empty means train a new
    /// WordPiece vocabulary of `model.vocab_size` entries.
    pub tokenizer: String,
    /// Words seen fewer times than this are not used to learn WordPiece merges.
    pub min_frequency: u64,
    /// Fraction of documents held out for validation.
    pub val_fraction: f64,
    /// Sequences per shard file.
    pub shard_sequences: usize,
    /// Size of the built-in generated corpus, in words.
    pub generated_words: usize,
    /// Seed for the generated corpus and the validation split.
    pub seed: u64,
}

/// The pre-training objective.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveConfig {
    /// `"mlm"` (BERT), `"electra"` (replaced-token detection) or `"mcbert"`
    /// (multi-choice cloze with a meta controller).
    pub kind: String,
    /// Fraction of (non-special) tokens selected for prediction.
    pub mask_prob: f64,
    /// Of the selected tokens, the fraction replaced by `[MASK]`.
    pub mask_token_prob: f64,
    /// Of the selected tokens, the fraction replaced by a random token.
    pub random_token_prob: f64,
    /// ELECTRA and MC-BERT: the generator's (meta controller's) hidden
    /// size, heads and feed-forward as a fraction of the main model's.
    pub generator_size: f64,
    /// λ: the weight of the main model's loss (ELECTRA's discriminator,
    /// MC-BERT's multi-choice).
    pub discriminator_weight: f64,
    /// ELECTRA: where the replacements come from.
    pub generator: Generator,
    /// ELECTRA early exit: the discriminator layers (counted from 1, below
    /// the last) followed by an exit head; empty for none.
    pub exit_layers: Vec<usize>,
    /// ELECTRA early exit: a token leaves at an exit head whose
    /// replaced-token logit is at least this far from 0 (both sides; 3 is
    /// p ≥ 0.953 or ≤ 0.047); `inf` lets nobody leave.
    pub exit_threshold: f64,
    /// ELECTRA early exit: optimiser steps before any token may leave
    /// (the exit heads train from the start).
    pub exit_warmup: u64,
    /// ELECTRA early exit: the weight of the exit heads' mean loss beside
    /// the final head's (both inside λ).
    pub exit_weight: f64,
    /// MC-BERT: whether the multi-choice loss's gradient reaches the
    /// candidates' word embeddings (the table the controller decodes with);
    /// the main model's input path trains them either way.
    pub candidate_gradient: bool,
    /// MC-BERT: what the meta controller shares of the main model's
    /// embeddings.
    pub controller_shares: SharedEmbeddings,
}

impl ObjectiveConfig {
    /// The learned generator's size, when the objective trains one.
    pub fn learned_generator(&self) -> Option<f64> {
        (self.generator == Generator::Learned).then_some(self.generator_size)
    }
}

/// What a generator or meta controller shares with the main model's
/// embeddings (`objective.controller_shares`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SharedEmbeddings {
    /// Word, position and type embeddings and their LayerNorm: the same
    /// tensors (HF ELECTRA's layout).
    All,
    /// The word table alone; position and type embeddings and their
    /// LayerNorm are its own (MC-BERT's code, where the controller reads
    /// the main model's token embeddings through its own projection).
    Words,
}

/// ELECTRA's source of replacements (`objective.generator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Generator {
    /// A small masked LM trained jointly (the paper's).
    Learned,
    /// Tokens drawn from the corpus's unigram distribution: no network.
    Unigram,
    /// Tokens drawn uniformly from the vocabulary: no network.
    Uniform,
}

impl Generator {
    /// The config value.
    pub fn name(self) -> &'static str {
        match self {
            Generator::Learned => "learned",
            Generator::Unigram => "unigram",
            Generator::Uniform => "uniform",
        }
    }
}

/// Optimiser, schedule and budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Sequences per optimiser step (before accumulation is split).
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Fraction of the budget spent in linear warm-up.
    pub warmup_fraction: f64,
    /// After warm-up: `"linear"` decay to zero at the end of the budget, or
    /// `"constant"` (the rate no longer depends on the budget, so a run can
    /// be extended with `--resume` and still match an uninterrupted one).
    pub schedule: Schedule,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    /// Global gradient-norm clip; 0 disables clipping.
    pub max_grad_norm: f64,
    /// Micro-batches accumulated per optimiser step.
    pub grad_accum_steps: usize,
    /// Budget in optimiser steps (0: not used).
    pub steps: u64,
    /// Budget in training tokens (0: not used).
    pub tokens: u64,
    /// Budget in wall-clock time such as `"20m"`, `"90s"`, `"2h"` (empty: not used).
    pub budget: String,
    pub log_every: u64,
    pub save_every: u64,
    /// How many checkpoints to keep (the newest ones).
    pub keep_checkpoints: usize,
    pub seed: u64,
    /// Where training and evaluation run: `"cpu"`, `"cuda"` or `"cuda:N"`
    /// (the CUDA build). Not part of the run: a checkpoint written on one
    /// device resumes on another.
    #[serde(default = "default_device")]
    pub device: String,
    /// The number format of matrix products and activations; weights,
    /// optimiser state, LayerNorm and softmax statistics and the loss stay
    /// f32 either way.
    #[serde(default)]
    pub precision: Precision,
}

fn default_device() -> String {
    "cpu".into()
}

/// `train.precision`: what the encoder computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Mixed precision: bf16 products and activations over f32 master
    /// weights (on the CPU too, slowly: its products widen to f32).
    Bf16,
}

impl Precision {
    /// The dtype activations and products are computed in.
    pub fn compute_dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
        }
    }
}

/// The learning-rate shape after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Linear,
    Constant,
}

/// Taking Notes on the Fly (note dictionary for rare words).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotesConfig {
    pub enabled: bool,
    /// k: tokens on each side of the word averaged into its note.
    pub half_window: usize,
    /// γ: weight of the new context in the note's moving average.
    pub gamma: f64,
    /// λ: weight of the note in a rare word's input embedding.
    pub lambda: f64,
    /// The rare band in expected sightings within the run's budget.
    pub min_sightings: f64,
    pub max_sightings: f64,
    /// An absolute band of corpus counts instead (used when either is set).
    pub min_count: u64,
    pub max_count: u64,
}

impl NotesConfig {
    /// True when the rare band is given in corpus counts, not sightings.
    pub fn absolute_band(&self) -> bool {
        self.min_count > 0 || self.max_count > 0
    }
}

/// Validation cadence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Evaluate every N optimiser steps (0: only at the end).
    pub every: u64,
    /// Validation batches per evaluation.
    pub batches: usize,
}

/// Parses a wall-clock budget such as `"90s"`, `"20m"`, `"1.5h"` into seconds.
pub fn parse_duration_secs(text: &str) -> Option<f64> {
    let text = text.trim();
    let (number, scale) = match text.chars().last()? {
        's' => (&text[..text.len() - 1], 1.0),
        'm' => (&text[..text.len() - 1], 60.0),
        'h' => (&text[..text.len() - 1], 3600.0),
        _ => (text, 1.0),
    };
    let value: f64 = number.trim().parse().ok()?;
    (value.is_finite() && value > 0.0).then_some(value * scale)
}

fn check(ok: bool, key: &str, message: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!("`{key}`: {}", message())))
    }
}

/// Every number of a config must be finite: an infinite or NaN learning
/// rate, decay or threshold would only show up as a NaN loss later.
fn check_finite(value: &toml::Value, key: &str) -> Result<()> {
    match value {
        toml::Value::Float(x) if !x.is_finite() => {
            check(false, key, || format!("{x} is not a finite number"))
        }
        toml::Value::Table(table) => table.iter().try_for_each(|(k, v)| {
            let path = match key.is_empty() {
                true => k.clone(),
                false => format!("{key}.{k}"),
            };
            check_finite(v, &path)
        }),
        toml::Value::Array(items) => items.iter().try_for_each(|v| check_finite(v, key)),
        _ => Ok(()),
    }
}

fn check_probability(key: &str, value: f64) -> Result<()> {
    check((0.0..=1.0).contains(&value), key, || {
        format!("{value} is not a probability (expected 0 to 1)")
    })
}

impl Config {
    /// Checks the relations between fields that a single field's type cannot
    /// express. The message names the key and the accepted values.
    pub fn validate(&self) -> Result<()> {
        check_finite(
            &toml::Value::try_from(self).expect("a config always serialises"),
            "",
        )?;
        let m = &self.model;
        for (key, value) in [
            ("model.vocab_size", m.vocab_size),
            ("model.hidden_size", m.hidden_size),
            ("model.num_hidden_layers", m.num_hidden_layers),
            ("model.num_attention_heads", m.num_attention_heads),
            ("model.intermediate_size", m.intermediate_size),
            ("model.max_position_embeddings", m.max_position_embeddings),
            ("model.type_vocab_size", m.type_vocab_size),
            ("data.shard_sequences", self.data.shard_sequences),
            ("train.batch_size", self.train.batch_size),
            ("train.grad_accum_steps", self.train.grad_accum_steps),
            ("eval.batches", self.eval.batches),
        ] {
            check(value > 0, key, || "must be at least 1".into())?;
        }
        check(
            m.hidden_size.is_multiple_of(m.num_attention_heads),
            "model.hidden_size",
            || {
                format!(
                    "{} is not divisible by model.num_attention_heads = {}",
                    m.hidden_size, m.num_attention_heads
                )
            },
        )?;
        if m.position == Position::Rope {
            let head_dim = m.hidden_size / m.num_attention_heads;
            crate::model::rotary::check_head_dim(head_dim)
                .or_else(|why| check(false, "model.position", || why))?;
        }
        check(
            ["gelu", "gelu_new", "relu"].contains(&m.hidden_act.as_str()),
            "model.hidden_act",
            || {
                format!(
                    "unknown activation {:?} (expected \"gelu\", \"gelu_new\" or \"relu\")",
                    m.hidden_act
                )
            },
        )?;
        check(m.layer_norm_eps > 0.0, "model.layer_norm_eps", || {
            "must be positive".into()
        })?;
        check(m.initializer_range > 0.0, "model.initializer_range", || {
            "must be positive".into()
        })?;
        check_probability("model.hidden_dropout_prob", m.hidden_dropout_prob)?;
        check_probability(
            "model.attention_probs_dropout_prob",
            m.attention_probs_dropout_prob,
        )?;
        check(m.vocab_size >= 16, "model.vocab_size", || {
            format!(
                "{} is too small (at least 16: the special tokens and some text)",
                m.vocab_size
            )
        })?;

        if let Err(why) = crate::model::device::parse(&self.train.device) {
            check(false, "train.device", || why)?;
        }

        let d = &self.data;
        check(d.seq_len >= 4, "data.seq_len", || {
            format!("{} is too short (at least 4)", d.seq_len)
        })?;
        check(
            d.seq_len <= m.max_position_embeddings,
            "data.seq_len",
            || {
                format!(
                    "{} exceeds model.max_position_embeddings = {}",
                    d.seq_len, m.max_position_embeddings
                )
            },
        )?;
        check(
            (0.0..0.5).contains(&d.val_fraction),
            "data.val_fraction",
            || format!("{} is out of range (expected 0 to 0.5)", d.val_fraction),
        )?;
        check(d.min_frequency >= 1, "data.min_frequency", || {
            "must be at least 1".into()
        })?;
        check(d.generated_words >= 1000, "data.generated_words", || {
            format!("{} is too small (at least 1000)", d.generated_words)
        })?;

        let o = &self.objective;
        check(
            ["mlm", "electra", "mcbert"].contains(&o.kind.as_str()),
            "objective.kind",
            || {
                format!(
                    "unknown objective {:?} (expected \"mlm\", \"electra\" or \"mcbert\")",
                    o.kind
                )
            },
        )?;
        check(
            o.generator_size > 0.0 && o.generator_size <= 1.0,
            "objective.generator_size",
            || {
                format!(
                    "{} is out of range (expected above 0, at most 1)",
                    o.generator_size
                )
            },
        )?;
        check(
            o.generator == Generator::Learned || o.kind == "electra",
            "objective.generator",
            || {
                format!(
                    "{:?} replacements are for objective.kind = \"electra\" (this config's is {:?})",
                    o.generator.name(),
                    o.kind
                )
            },
        )?;
        self.check_exits()?;
        check(
            o.discriminator_weight > 0.0,
            "objective.discriminator_weight",
            || "must be positive".into(),
        )?;
        check(
            o.mask_prob > 0.0 && o.mask_prob < 1.0,
            "objective.mask_prob",
            || format!("{} is out of range (expected between 0 and 1)", o.mask_prob),
        )?;
        check_probability("objective.mask_token_prob", o.mask_token_prob)?;
        check_probability("objective.random_token_prob", o.random_token_prob)?;
        check(
            o.mask_token_prob + o.random_token_prob <= 1.0,
            "objective.random_token_prob",
            || "objective.mask_token_prob + objective.random_token_prob must not exceed 1".into(),
        )?;

        let t = &self.train;
        check(t.learning_rate > 0.0, "train.learning_rate", || {
            "must be positive".into()
        })?;
        check(
            (0.0..1.0).contains(&t.warmup_fraction),
            "train.warmup_fraction",
            || format!("{} is out of range (expected 0 to 1)", t.warmup_fraction),
        )?;
        check(t.weight_decay >= 0.0, "train.weight_decay", || {
            "must not be negative".into()
        })?;
        check(
            (0.0..1.0).contains(&t.adam_beta1),
            "train.adam_beta1",
            || "expected 0 to 1".into(),
        )?;
        check(
            (0.0..1.0).contains(&t.adam_beta2),
            "train.adam_beta2",
            || "expected 0 to 1".into(),
        )?;
        check(t.adam_epsilon > 0.0, "train.adam_epsilon", || {
            "must be positive".into()
        })?;
        check(t.max_grad_norm >= 0.0, "train.max_grad_norm", || {
            "must not be negative".into()
        })?;
        check(
            t.batch_size.is_multiple_of(t.grad_accum_steps),
            "train.grad_accum_steps",
            || {
                format!(
                    "{} does not divide train.batch_size = {}",
                    t.grad_accum_steps, t.batch_size
                )
            },
        )?;
        check(
            t.budget.is_empty() || parse_duration_secs(&t.budget).is_some(),
            "train.budget",
            || {
                format!(
                    "{:?} is not a duration (expected e.g. \"90s\", \"20m\", \"2h\")",
                    t.budget
                )
            },
        )?;
        check(t.log_every > 0, "train.log_every", || {
            "must be at least 1".into()
        })?;

        let n = &self.notes;
        check_probability("notes.gamma", n.gamma)?;
        check_probability("notes.lambda", n.lambda)?;
        check(
            n.min_sightings > 0.0 && n.min_sightings <= n.max_sightings,
            "notes.min_sightings",
            || {
                format!(
                    "{} must be positive and at most notes.max_sightings = {}",
                    n.min_sightings, n.max_sightings
                )
            },
        )?;
        check(
            n.min_count == 0 && n.max_count == 0 || (1..=n.max_count).contains(&n.min_count),
            "notes.min_count",
            || {
                format!(
                    "{} with notes.max_count = {}: set both (1 ≤ min ≤ max) for an absolute band, or neither",
                    n.min_count, n.max_count
                )
            },
        )?;
        Ok(())
    }

    /// Early exit: ELECTRA only, heads below the last layer, in order, a
    /// threshold and weight that mean something.
    fn check_exits(&self) -> Result<()> {
        let (o, layers) = (&self.objective, self.model.num_hidden_layers);
        if o.exit_layers.is_empty() {
            return Ok(());
        }
        check(o.kind == "electra", "objective.exit_layers", || {
            format!(
                "early exit is for objective.kind = \"electra\" (this config's is {:?})",
                o.kind
            )
        })?;
        let increasing = o.exit_layers.windows(2).all(|w| w[0] < w[1]);
        let inside = o.exit_layers.iter().all(|&k| k >= 1 && k < layers);
        check(increasing && inside, "objective.exit_layers", || {
            format!(
                "{:?}: expected increasing layer numbers from 1 to {} (below the last of \
                 model.num_hidden_layers = {layers}, whose head is the final one)",
                o.exit_layers,
                layers.saturating_sub(1)
            )
        })?;
        check(o.exit_threshold >= 0.0, "objective.exit_threshold", || {
            format!(
                "{} must be at least 0 (a logit magnitude; inf: nobody exits)",
                o.exit_threshold
            )
        })?;
        check(
            o.exit_weight >= 0.0 && o.exit_weight.is_finite(),
            "objective.exit_weight",
            || format!("{} must be a finite weight of at least 0", o.exit_weight),
        )
    }

    /// The config as TOML text, as written to a run's `config.toml`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a Config always serialises to TOML")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_secs("90s"), Some(90.0));
        assert_eq!(parse_duration_secs("20m"), Some(1200.0));
        assert_eq!(parse_duration_secs("1.5h"), Some(5400.0));
        assert_eq!(parse_duration_secs("45"), Some(45.0));
        assert_eq!(parse_duration_secs("soon"), None);
        assert_eq!(parse_duration_secs("-3m"), None);
        assert_eq!(parse_duration_secs(""), None);
    }

    #[test]
    fn every_preset_is_valid_and_round_trips_through_toml() {
        for preset in Preset::ALL {
            let config = preset.config();
            config.validate().unwrap();
            let back: Config = toml::from_str(&config.to_toml()).unwrap();
            assert_eq!(back, config, "{preset:?}");
        }
    }
}
