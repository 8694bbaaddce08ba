//! The pre-training loop: masked-LM on packed shards, AdamW with warm-up and
//! decay sized to the budget, clipping, gradient accumulation, periodic
//! validation and checkpoints, `metrics.jsonl`, and bitwise-exact resume.
//!
//! Every random choice of a step (which tokens are masked and how, dropout)
//! is drawn from a generator seeded by `train.seed` and the step number, and
//! the data order is a seeded permutation per epoch. A checkpoint therefore
//! only needs the weights, the optimiser moments and the data position to
//! continue exactly as an uninterrupted run would, at a fixed thread count.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::checkpoint::{self, DataPosition, TrainState, FORMAT_VERSION};
use super::flops::{
    electra_training_per_token, mcbert_training_per_token, mlm_training_per_token,
    position_term_forward,
};
use super::optim::{accumulate, clip_scale, grad_norm, gradients, AdamW};
use super::schedule::Budget;
use crate::config::{Config, ObjectiveConfig};
use crate::corpus::generated::Rng;
use crate::corpus::generated::{self, ProbeKind};
use crate::corpus::shards::{splitmix64, PreparedCorpus, Split};
use crate::corpus::tokenizer::load_tokenizer;
use crate::error::{Error, Result};
use crate::model::electra::{generator_config, Electra};
use crate::model::mcbert::McBert;
use crate::model::{BertForMaskedLm, Ctx, InputMix, Params};
use crate::plot::{self, Reference, Series, PALETTE};
use crate::pretrain::mlm::{mask_tokens, MaskedBatch};
use crate::pretrain::notes::{
    rare_band, saved_band, NoteBook, NoteStats, Occurrence, RareBand, NOTES_FILE,
};
use crate::pretrain::probes::{frequency_bands, token_counts, ProbeResult, ProbeSet, Tally};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    pub step: u64,
    pub loss: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: u64,
    pub flops: f64,
    pub wall_s: f64,
    pub tokens_per_s: f64,
    /// TNF: share of rare-word occurrences so far whose word had a note.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notes_read: Option<f64>,
    /// ELECTRA: the generator's MLM loss, the discriminator's loss and the
    /// share of tokens it saw replaced, over the step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generator_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discriminator_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced: Option<f64>,
    /// MC-BERT: the main model's multi-choice loss (its controller's MLM
    /// loss is `generator_loss`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub choice_loss: Option<f64>,
    /// At evaluations: masked-token accuracy (of the MLM, or of ELECTRA's
    /// generator and MC-BERT's controller) at the validation mask.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_accuracy: Option<f64>,
    /// The unigram entropy minus `val_loss` (nats): how far below the
    /// plateau of a model that ignores context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_margin: Option<f64>,
    /// At evaluations: `val_acc_<band>` (accuracy by the target's frequency
    /// band) and, on the built-in corpus, `probe_<kind>` (cloze accuracy).
    #[serde(flatten)]
    pub context: BTreeMap<String, f64>,
}

/// The margin below the unigram entropy (nats) at which a run counts as
/// off the plateau: well clear of the noise of a fixed validation set.
pub const PLATEAU_MARGIN: f64 = 0.3;

/// Each probe's accuracy in `validation` with the set's baselines.
fn probe_scores(
    validation: Option<&Validation>,
    set: Option<&ProbeSet>,
) -> BTreeMap<ProbeKind, ProbeScore> {
    let (Some(v), Some(set)) = (validation, set) else {
        return BTreeMap::new();
    };
    v.probes
        .iter()
        .filter_map(|(kind, r)| {
            let b = set.baselines.get(kind)?;
            Some((
                *kind,
                ProbeScore {
                    accuracy: r.accuracy,
                    paired: r.paired,
                    chance: b.chance,
                    unigram: b.unigram,
                    items: b.items,
                    pairs: b.pairs,
                },
            ))
        })
        .collect()
}

/// The `val_acc_<band>`, `probe_<kind>` and `probe_<kind>_paired` keys of
/// an evaluation.
fn context_keys(v: &Validation) -> BTreeMap<String, f64> {
    let bands = v.bands.iter().map(|(b, a)| (format!("val_acc_{b}"), *a));
    let probes = v.probes.iter().flat_map(|(k, r)| {
        [
            (format!("probe_{}", k.name()), r.accuracy),
            (format!("probe_{}_paired", k.name()), r.paired),
        ]
    });
    // A probe without one-token contrasts has no minimal-pair score.
    bands.chain(probes).filter(|(_, v)| v.is_finite()).collect()
}

/// What pre-training trains: BERT with its MLM head, or ELECTRA's pair.
pub enum Trainee {
    Mlm(Box<BertForMaskedLm>),
    Electra(Box<Electra>),
    McBert(Box<McBert>),
}

impl Trainee {
    /// A fresh model for `config.objective.kind`.
    pub fn new(config: &Config, params: &mut Params) -> Result<Trainee> {
        let (model, seed) = (&config.model, config.train.seed);
        Ok(match config.objective.kind.as_str() {
            "electra" => Trainee::Electra(Box::new(Electra::new(
                model,
                config.objective.generator_size,
                params,
                seed,
            )?)),
            "mcbert" => Trainee::McBert(Box::new(McBert::new(
                model,
                config.objective.generator_size,
                params,
                seed,
            )?)),
            _ => Trainee::Mlm(Box::new(BertForMaskedLm::new(model, params, seed)?)),
        })
    }

    pub fn is_fused(&self) -> bool {
        match self {
            Trainee::Mlm(m) => m.is_fused(),
            Trainee::Electra(e) => e.is_fused(),
            Trainee::McBert(m) => m.is_fused(),
        }
    }
}

/// Training FLOPs of one optimiser step (`tokens_per_step` tokens of
/// `seq_len`-token sequences).
pub fn step_flops(config: &Config, seq_len: usize, tokens_per_step: u64) -> Result<f64> {
    let (m, o) = (&config.model, &config.objective);
    // TUPE's position term is computed once per forward pass (micro-batch),
    // by each encoder.
    let passes = 2.0 * config.train.grad_accum_steps as f64;
    Ok(match o.kind.as_str() {
        "electra" => {
            let g = generator_config(m, o.generator_size)?;
            tokens_per_step as f64 * electra_training_per_token(m, &g, seq_len, o.mask_prob)
                + passes * (position_term_forward(m, seq_len) + position_term_forward(&g, seq_len))
        }
        "mcbert" => {
            let g = generator_config(m, o.generator_size)?;
            let k = crate::pretrain::mcbert::CANDIDATES;
            tokens_per_step as f64 * mcbert_training_per_token(m, &g, seq_len, k, o.mask_prob)
                + passes * (position_term_forward(m, seq_len) + position_term_forward(&g, seq_len))
        }
        _ => {
            tokens_per_step as f64 * mlm_training_per_token(m, seq_len, o.mask_prob)
                + passes * position_term_forward(m, seq_len)
        }
    })
}

/// TNF's figures in `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct NotesSummary {
    pub band: RareBand,
    /// Rare words that have a note at the end.
    pub written: usize,
    pub stats: NoteStats,
    /// Share of training sequences that hold a rare word.
    pub sequence_share: f64,
    /// Share of rare-word occurrences whose word already had a note.
    pub read_share: f64,
    /// Share of rare-word occurrences whose input was mixed with the note
    /// (had one, and no token of it was masked).
    pub mixed_share: f64,
}

impl NotesSummary {
    fn of(book: &NoteBook) -> NotesSummary {
        NotesSummary {
            band: book.band.clone(),
            written: book.written(),
            stats: book.stats,
            sequence_share: book.stats.sequence_share(),
            read_share: book.stats.read_share(),
            mixed_share: book.stats.mixed_share(),
        }
    }
}

/// How a training session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ending {
    /// The budget was reached.
    Finished,
    /// Ctrl-C or SIGTERM: a checkpoint was written; `--resume` continues.
    Interrupted,
}

/// Final figures of a run (`summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub ending: Ending,
    /// `objective.kind`: what the run trained.
    pub objective: String,
    pub steps: u64,
    pub tokens: u64,
    pub flops: f64,
    pub final_loss: f64,
    pub final_val_loss: Option<f64>,
    pub unigram_entropy_nats: f64,
    pub parameters: usize,
    /// `"fused"` when every part of the model ran on the fused kernels,
    /// else `"reference"`.
    pub kernels: String,
    /// Training wall-clock seconds over every session of the run.
    pub wall_s: f64,
    /// Throughput of this session.
    pub tokens_per_s: f64,
    pub checkpoint: PathBuf,
    pub loss_plot: PathBuf,
    /// TNF's note dictionary, when `notes.enabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notes: Option<NotesSummary>,
    /// Masked-token accuracy at the last evaluation.
    pub final_val_accuracy: Option<f64>,
    /// `unigram_entropy_nats − final_val_loss`.
    pub final_val_margin: Option<f64>,
    /// The first evaluated step whose margin reached [`PLATEAU_MARGIN`].
    pub plateau_exit_step: Option<u64>,
    /// Accuracy by frequency band at the last evaluation.
    pub final_val_accuracy_by_band: BTreeMap<String, f64>,
    /// The cloze probes at the last evaluation, with their baselines
    /// (built-in corpus, masked-LM runs).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub probes: BTreeMap<ProbeKind, ProbeScore>,
}

/// A probe's accuracy against its baselines.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ProbeScore {
    pub accuracy: f64,
    /// The minimal-pair score (0.5 for a model that ignores context).
    pub paired: f64,
    pub chance: f64,
    pub unigram: f64,
    pub items: usize,
    /// Items the minimal-pair score counts (those with a contrast whose
    /// answer is one token).
    pub pairs: usize,
}

/// The first step of `metrics.jsonl` whose `val_margin` reached
/// [`PLATEAU_MARGIN`].
pub fn plateau_exit_step(run_dir: &Path) -> Result<Option<u64>> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    Ok(text.lines().find_map(|line| {
        let row: serde_json::Value = serde_json::from_str(line).ok()?;
        let margin = row.get("val_margin")?.as_f64()?;
        (margin >= PLATEAU_MARGIN).then(|| row.get("step")?.as_u64())?
    }))
}

/// How to run the loop.
pub struct Options<'a> {
    /// Continue from the run's newest checkpoint.
    pub resume: bool,
    /// Show progress on standard error.
    pub verbose: bool,
    /// Set by a Ctrl-C or SIGTERM handler: finish the step, checkpoint, stop.
    pub stop: &'a AtomicBool,
}

/// Sequence order: a fresh seeded permutation of the training split each epoch.
struct Order {
    seed: u64,
    perm: Vec<u32>,
    position: DataPosition,
}

impl Order {
    fn at(seed: u64, len: usize, position: DataPosition) -> Order {
        let mut order = Order {
            seed,
            perm: Vec::new(),
            position,
        };
        order.shuffle(len);
        order
    }

    fn shuffle(&mut self, len: usize) {
        let mut rng = Rng::new(self.seed ^ splitmix64(self.position.epoch));
        self.perm = (0..len as u32).collect();
        for i in (1..len).rev() {
            self.perm.swap(i, rng.below(i + 1));
        }
    }

    fn take(&mut self) -> usize {
        if self.position.next == self.perm.len() {
            self.position = DataPosition {
                epoch: self.position.epoch + 1,
                next: 0,
            };
            self.shuffle(self.perm.len());
        }
        self.position.next += 1;
        self.perm[self.position.next - 1] as usize
    }
}

/// Token ids of sequences `indices` of a split, concatenated.
fn gather(corpus: &PreparedCorpus, split: Split, indices: impl Iterator<Item = usize>) -> Vec<u32> {
    indices
        .flat_map(|i| corpus.sequence(split, i).tokens.iter().copied())
        .collect()
}

/// Token ids and word ids of sequences `indices` of a split.
fn gather_with_words(
    corpus: &PreparedCorpus,
    split: Split,
    indices: &[usize],
) -> (Vec<u32>, Vec<u32>) {
    let words = indices
        .iter()
        .flat_map(|&i| corpus.sequence(split, i).words.iter().copied())
        .collect();
    (gather(corpus, split, indices.iter().copied()), words)
}

/// A batch masked by `objective` and, with TNF, the rare-word occurrences
/// and the notes mixed into the (main) encoder's input.
struct Prepared {
    masked: MaskedBatch,
    found: Option<Vec<Occurrence>>,
    mix: Option<InputMix>,
}

fn mask_and_mix(
    corpus: &PreparedCorpus,
    objective: &ObjectiveConfig,
    tokens: &[u32],
    batch: usize,
    notes: Option<(&mut NoteBook, &[u32])>,
    rng: &mut Rng,
) -> Result<Prepared> {
    let m = &corpus.manifest;
    let vocab = m.tokenizer.vocab_size;
    let masked = mask_tokens(tokens, &m.special_ids, vocab, objective, rng);
    let (found, mix) = match notes {
        Some((book, words)) => {
            let found = book.occurrences(words, m.seq_len);
            let shape = (batch, m.seq_len);
            let mix = book.mix(&found, shape, &masked.rows, DType::F32, &Device::Cpu)?;
            (Some(found), mix)
        }
        None => (None, None),
    };
    Ok(Prepared { masked, found, mix })
}

/// Notes to take after a step: the occurrences and the last hidden states.
type PendingNotes = (Vec<Occurrence>, Tensor);

/// Validation always masks as BERT does (15% of tokens; 80% `[MASK]`, 10%
/// random, 10% kept), whatever the training objective, so that validation
/// losses compare across runs and objectives.
pub const VALIDATION_MASKING: ObjectiveConfig = ObjectiveConfig {
    kind: String::new(),
    mask_prob: 0.15,
    mask_token_prob: 0.8,
    random_token_prob: 0.1,
    generator_size: 0.25,
    discriminator_weight: 50.0,
};

/// What one evaluation measured (see [`crate::pretrain::probes`]): the
/// masked-LM loss and accuracy at [`VALIDATION_MASKING`], accuracy by the
/// target's frequency band, and on the built-in corpus the cloze probes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Validation {
    pub loss: f64,
    pub accuracy: f64,
    pub bands: Vec<(&'static str, f64)>,
    pub probes: BTreeMap<ProbeKind, ProbeResult>,
}

/// What evaluations need of the corpus, computed once per run: each
/// token's frequency band and, on the built-in corpus, the probe set.
pub struct Evaluator {
    pub bands: Vec<u8>,
    pub probes: Option<ProbeSet>,
}

impl Evaluator {
    pub fn new(corpus: &PreparedCorpus) -> Result<Evaluator> {
        let counts = token_counts(corpus);
        let seed = match &corpus.manifest.inputs[..] {
            [only] => generated::seed_of_source(&only.path),
            _ => None,
        };
        let probes = match seed {
            Some(seed) => {
                let m = &corpus.manifest;
                let file = corpus.dir.join(&m.tokenizer.file);
                let tokenizer = load_tokenizer(&file, m.tokenizer.lowercase)?;
                Some(ProbeSet::generated(&tokenizer, seed, &counts)?)
            }
            None => None,
        };
        Ok(Evaluator {
            bands: frequency_bands(&counts),
            probes,
        })
    }
}

/// Evaluates on the first `eval.batches` validation batches, each with a
/// mask fixed by its index (so every evaluation sees the same masks), at
/// [`VALIDATION_MASKING`]. ELECTRA and MC-BERT are measured through their
/// generator (controller), the part that is a masked LM; the probes need a
/// masked LM and run on masked-LM models.
pub fn validate(
    model: &Trainee,
    corpus: &PreparedCorpus,
    config: &Config,
    evaluator: &Evaluator,
) -> Result<Validation> {
    let n = corpus.num_sequences(Split::Validation);
    if n == 0 {
        return Err(Error::Usage(
            "the corpus has no validation split (data.val_fraction = 0)".into(),
        ));
    }
    let b = micro_batch(config).min(n);
    let mut total = 0.0;
    let mut tally = Tally::default();
    let batches = config.eval.batches.min(n.div_ceil(b)).max(1);
    let m = &corpus.manifest;
    for i in 0..batches {
        let indices = (i * b..(i + 1) * b).map(|j| j % n);
        let tokens = gather(corpus, Split::Validation, indices);
        let mut rng = Rng::new(0x7a1 ^ splitmix64(i as u64));
        let masked = mask_tokens(
            &tokens,
            &m.special_ids,
            m.tokenizer.vocab_size,
            &VALIDATION_MASKING,
            &mut rng,
        );
        let (shape, ctx) = ((b, m.seq_len), &mut Ctx::eval());
        let (loss, logits) = match model {
            Trainee::Mlm(model) => {
                let dev = Device::Cpu;
                let rows = masked.rows.len();
                let logits = model.forward(
                    &Tensor::from_vec(masked.inputs.clone(), shape, &dev)?,
                    None,
                    &Tensor::from_vec(masked.rows.clone(), rows, &dev)?,
                    ctx,
                )?;
                let targets = Tensor::from_vec(masked.targets.clone(), rows, &dev)?;
                let logits = logits.to_dtype(DType::F32)?;
                let loss = candle_nn::loss::cross_entropy(&logits, &targets)?;
                (loss, logits)
            }
            Trainee::Electra(model) => model.generator_loss(&masked, shape, ctx)?,
            Trainee::McBert(model) => model.controller_loss(&masked, shape, ctx)?,
        };
        total += loss.to_scalar::<f32>()? as f64;
        let predicted: Vec<u32> = logits.argmax(candle_core::D::Minus1)?.to_vec1()?;
        for (p, t) in predicted.iter().zip(&masked.targets) {
            tally.add(evaluator.bands[*t as usize], p == t);
        }
    }
    let probes = match (model, &evaluator.probes) {
        (Trainee::Mlm(model), Some(set)) => set.score(model, micro_batch(config))?,
        _ => BTreeMap::new(),
    };
    Ok(Validation {
        loss: total / batches as f64,
        accuracy: tally.accuracy(),
        bands: tally.band_accuracies(),
        probes,
    })
}

/// The MLM loss of one batch. With `notes` (the note book and the batch's
/// word ids), rare words read their notes first; the notes to take from
/// this forward pass are returned, for the caller to apply once the loss
/// is known to be finite.
#[allow(clippy::too_many_arguments)]
fn batch_loss(
    model: &BertForMaskedLm,
    corpus: &PreparedCorpus,
    objective: &ObjectiveConfig,
    tokens: &[u32],
    batch: usize,
    notes: Option<(&mut NoteBook, &[u32])>,
    mask_rng: &mut Rng,
    ctx: &mut Ctx,
) -> Result<(Tensor, Option<PendingNotes>)> {
    let Prepared { masked, found, mix } =
        mask_and_mix(corpus, objective, tokens, batch, notes, mask_rng)?;
    let dev = Device::Cpu;
    let ids = Tensor::from_vec(masked.inputs, (batch, corpus.manifest.seq_len), &dev)?;
    let n = masked.rows.len();
    let rows = Tensor::from_vec(masked.rows, n, &dev)?;
    let targets = Tensor::from_vec(masked.targets, n, &dev)?;
    let (loss, hidden) = model.loss_and_hidden(&ids, None, mix.as_ref(), &rows, &targets, ctx)?;
    // Detached: the notes read values, and the graph is freed with the loss.
    Ok((loss, found.map(|f| (f, hidden.detach()))))
}

/// The corpus, objective, token ids and batch size of one micro-batch.
type BatchArgs<'a> = (&'a PreparedCorpus, &'a ObjectiveConfig, &'a [u32], usize);

/// ELECTRA's counterpart of [`batch_loss`]: the total loss, the notes to
/// take (from the discriminator) and `(generator loss, discriminator loss,
/// replaced share)`.
#[allow(clippy::too_many_arguments)]
fn electra_batch_loss(
    model: &Electra,
    (corpus, objective, tokens, batch): BatchArgs,
    notes: Option<(&mut NoteBook, &[u32])>,
    rng: &mut Rng,
    ctx: &mut Ctx,
) -> Result<(Tensor, Option<PendingNotes>, [f64; 3])> {
    let p = mask_and_mix(corpus, objective, tokens, batch, notes, rng)?;
    let shape = (batch, corpus.manifest.seq_len);
    let weight = objective.discriminator_weight;
    let losses = model.losses(tokens, &p.masked, shape, weight, rng, p.mix.as_ref(), ctx)?;
    let parts = [
        losses.generator.to_scalar::<f32>()? as f64,
        losses.discriminator.to_scalar::<f32>()? as f64,
        losses.replaced,
    ];
    let pending = p.found.map(|f| (f, losses.hidden.detach()));
    Ok((losses.total, pending, parts))
}

/// MC-BERT's counterpart of [`batch_loss`]: the total loss, the notes to
/// take (from the main model) and `(controller loss, multi-choice loss,
/// replaced share)`.
#[allow(clippy::too_many_arguments)]
fn mcbert_batch_loss(
    model: &McBert,
    (corpus, objective, tokens, batch): BatchArgs,
    notes: Option<(&mut NoteBook, &[u32])>,
    rng: &mut Rng,
    ctx: &mut Ctx,
) -> Result<(Tensor, Option<PendingNotes>, [f64; 3])> {
    let p = mask_and_mix(corpus, objective, tokens, batch, notes, rng)?;
    let m = &corpus.manifest;
    let (shape, weight) = ((batch, m.seq_len), objective.discriminator_weight);
    let special = &m.special_ids;
    let mix = p.mix.as_ref();
    let losses = model.losses(tokens, &p.masked, shape, weight, special, rng, mix, ctx)?;
    let parts = [
        losses.controller.to_scalar::<f32>()? as f64,
        losses.choice.to_scalar::<f32>()? as f64,
        losses.replaced,
    ];
    let pending = p.found.map(|f| (f, losses.hidden.detach()));
    Ok((losses.total, pending, parts))
}

/// The note book of a TNF run: the rare band from the word counts and the
/// budget (or, on resume, the band the checkpoint's notes were taken for),
/// and the notes themselves when resuming.
fn open_notes(
    config: &Config,
    corpus: &PreparedCorpus,
    budget: &Budget,
    tokens_per_step: u64,
    checkpoint: Option<&Path>,
) -> Result<NoteBook> {
    let m = &corpus.manifest;
    let table = corpus.dir.join(&m.word_counts.file);
    let counts: Vec<u64> = crate::corpus::words::read_word_counts(&table)?
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    let corpus_tokens = (m.train.tokens + m.validation.tokens) as f64;
    let absolute = config.notes.absolute_band();
    let run_tokens = match budget.steps {
        Some(steps) => (steps * tokens_per_step) as f64,
        None if absolute => corpus_tokens,
        None => return Err(Error::Config(NOTES_NEED_A_BUDGET.into())),
    };
    let saved = checkpoint
        .map(|dir| dir.join(NOTES_FILE))
        .filter(|p| p.exists());
    let band = match &saved {
        Some(file) => {
            let (first, last) = saved_band(file)?;
            RareBand::of_ranks(&counts, first, last, run_tokens / corpus_tokens)
                .map_err(|e| Error::data(file, e))?
        }
        None => rare_band(&counts, &config.notes, run_tokens, corpus_tokens)?,
    };
    let mut book = NoteBook::new(band, config.model.hidden_size, &config.notes);
    if let Some(file) = &saved {
        book.load(file)?;
    }
    Ok(book)
}

/// Why a notes run without a step or token budget is refused.
const NOTES_NEED_A_BUDGET: &str = "`notes`: the rare-word band is sized by expected sightings \
    in the run, which needs a step or token budget (--steps, --tokens); with a wall-clock \
    budget alone, set notes.min_count and notes.max_count";

/// Writes TNF's notes (if any) into a checkpoint being assembled.
fn notes_writer(notes: Option<&NoteBook>) -> impl Fn(&Path) -> Result<()> + '_ {
    move |dir| match notes {
        Some(book) => book.save(&dir.join(NOTES_FILE)),
        None => Ok(()),
    }
}

/// A checkpoint of the weights, the optimiser, the state and the notes.
fn save_checkpoint(
    run_dir: &Path,
    params: &Params,
    opt: &AdamW,
    state: &TrainState,
    notes: Option<&NoteBook>,
    train: &crate::config::TrainConfig,
) -> Result<PathBuf> {
    let write_notes = notes_writer(notes);
    checkpoint::save(
        run_dir,
        params,
        opt,
        state,
        train.keep_checkpoints,
        &write_notes,
    )
}

/// Sequences per micro-batch.
fn micro_batch(config: &Config) -> usize {
    config.train.batch_size / config.train.grad_accum_steps.max(1)
}

/// Checks what the loop needs of the config before any work is done.
pub fn check_options(config: &Config) -> Result<()> {
    Budget::from_config(&config.train, 1)?;
    let (n, t) = (&config.notes, &config.train);
    if n.enabled && !n.absolute_band() && t.steps == 0 && t.tokens == 0 {
        return Err(Error::Config(NOTES_NEED_A_BUDGET.into()));
    }
    if !["mlm", "electra", "mcbert"].contains(&config.objective.kind.as_str()) {
        return Err(Error::Config(format!(
            "`objective.kind`: {:?} is not available in pretrain (expected \"mlm\", \"electra\" or \"mcbert\")",
            config.objective.kind
        )));
    }
    Ok(())
}

/// The generator seed of micro-batch `micro` of step `step` (0-based).
fn micro_seed(seed: u64, step: u64, micro: usize) -> u64 {
    splitmix64(seed ^ splitmix64(step + 1) ^ splitmix64(micro as u64).rotate_left(17))
}

/// Keeps the rows of `metrics.jsonl` up to `step` (a resumed run repeats the
/// steps after its checkpoint, so their rows are dropped).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let kept: String = text
        .lines()
        .filter(|line| row_step(line).is_some_and(|s| s <= step))
        .map(|line| format!("{line}\n"))
        .collect();
    crate::run::write_atomic(path, kept.as_bytes())
}

fn row_step(line: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()?
        .get("step")?
        .as_u64()
}

/// Draws `plots/loss.svg` from `metrics.jsonl`: training and validation
/// loss against steps, with the corpus's unigram entropy for reference (a
/// model that ignores context cannot do better).
pub fn plot_losses(run_dir: &Path, unigram_entropy: f64) -> Result<PathBuf> {
    let metrics = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics).map_err(|e| Error::io(&metrics, e))?;
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let Ok(row) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let step = row.get("step").and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        if let Some(loss) = row.get("loss").and_then(|v| v.as_f64()) {
            train.push((step, loss));
        }
        if let Some(loss) = row.get("val_loss").and_then(|v| v.as_f64()) {
            val.push((step, loss));
        }
    }
    let dir = run_dir.join("plots");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let path = dir.join("loss.svg");
    let series = [
        Series {
            name: "training loss",
            points: train,
            color: PALETTE[0],
        },
        Series {
            name: "validation loss",
            points: val,
            color: PALETTE[1],
        },
    ];
    let tmp = crate::run::temporary_sibling(&path);
    plot::line_chart(
        &tmp,
        "masked-LM loss",
        "step",
        "cross-entropy (nats)",
        &series,
        Some(Reference {
            name: "unigram entropy",
            value: unigram_entropy,
        }),
    )?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

/// Progress on standard error: a bar on a terminal; otherwise (logs, CI,
/// cluster jobs) a plain line at each evaluation and at a steady interval
/// ([`crate::progress::Heartbeat`]).
struct Progress {
    bar: Option<ProgressBar>,
    verbose: bool,
    heartbeat: crate::progress::Heartbeat,
}

impl Progress {
    fn new(verbose: bool, budget: &Budget, done: u64) -> Progress {
        let bar = (verbose && std::io::stderr().is_terminal()).then(|| {
            let bar = match budget.steps {
                Some(total) => ProgressBar::new(total),
                None => ProgressBar::new_spinner(),
            };
            let template = if budget.steps.is_some() {
                "{bar:30.cyan/blue} {pos}/{len} steps  {msg}  eta {eta}"
            } else {
                "{spinner} step {pos}  {msg}  {elapsed}"
            };
            bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
            bar.set_position(done);
            bar
        });
        Progress {
            bar,
            verbose,
            heartbeat: crate::progress::Heartbeat::new(),
        }
    }

    fn step(&mut self, row: &Metrics, last: bool, budget: &Budget) {
        let msg = format!(
            "loss {:.3}  lr {:.2e}  {:.0} tok/s",
            row.loss, row.lr, row.tokens_per_s
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(row.step);
                bar.set_message(msg);
                if let Some(v) = row.val_loss {
                    bar.println(format!("step {:>6}  validation loss {v:.3}", row.step));
                }
            }
            None if self.verbose && (row.val_loss.is_some() || last || self.heartbeat.due()) => {
                let total = budget.steps.map_or(String::new(), |t| format!("/{t}"));
                let val = row
                    .val_loss
                    .map_or(String::new(), |v| format!("  val {v:.3}"));
                let eta = budget.steps.map_or(String::new(), |t| {
                    let left = t.saturating_sub(row.step) as f64;
                    let per_step = row.wall_s / row.step.max(1) as f64;
                    format!("  eta {}", crate::progress::short_duration(left * per_step))
                });
                eprintln!("step {:>6}{total}  {msg}{val}{eta}", row.step);
            }
            None => {}
        }
    }

    fn println(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None if self.verbose => eprintln!("{line}"),
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Trains on `corpus` until the budget is reached or `options.stop` is set,
/// writing `metrics.jsonl`, checkpoints, `plots/loss.svg` and (when the
/// budget is reached) `summary.json` into `run_dir`.
pub fn pretrain(
    config: &Config,
    corpus: &PreparedCorpus,
    run_dir: &Path,
    options: &Options,
) -> Result<Summary> {
    check_options(config)?;
    let train = &config.train;
    let m = &corpus.manifest;
    if m.tokenizer.vocab_size != config.model.vocab_size {
        return Err(Error::Config(format!(
            "`model.vocab_size` is {} but the corpus vocabulary has {} entries",
            config.model.vocab_size, m.tokenizer.vocab_size
        )));
    }
    let train_len = corpus.num_sequences(Split::Train);
    if train_len == 0 {
        return Err(Error::data(
            &corpus.dir,
            "the corpus has no training sequences",
        ));
    }
    let micro = micro_batch(config);
    let tokens_per_step = (train.batch_size * m.seq_len) as u64;
    let budget = Budget::from_config(train, tokens_per_step)?;
    // TUPE's position term is computed once per forward pass (micro-batch).
    let flops_per_step = step_flops(config, m.seq_len, tokens_per_step)?;

    let mut params = Params::new(Device::Cpu, DType::F32);
    let model = Trainee::new(config, &mut params)?;
    let mut opt = AdamW::new(&params, train)?;
    let mut state = TrainState {
        format_version: FORMAT_VERSION,
        step: 0,
        tokens: 0,
        flops: 0.0,
        wall_s: 0.0,
        data: DataPosition { epoch: 0, next: 0 },
        seed: train.seed,
        threads: rayon::current_num_threads(),
        last_loss: f64::NAN,
        last_val_loss: None,
    };
    let metrics_path = run_dir.join("metrics.jsonl");
    let mut saved_step = None;
    let resume_from = if options.resume {
        checkpoint::latest(run_dir)?
    } else {
        None
    };
    let mut notes = config
        .notes
        .enabled
        .then(|| {
            open_notes(
                config,
                corpus,
                &budget,
                tokens_per_step,
                resume_from.as_deref(),
            )
        })
        .transpose()?;
    if options.resume {
        if let Some(dir) = &resume_from {
            state = checkpoint::load(dir, &params, &mut opt)?;
            if state.seed != train.seed {
                return Err(Error::Config(format!(
                    "{}: the checkpoint was trained with train.seed = {}, the config says {}",
                    dir.display(),
                    state.seed,
                    train.seed
                )));
            }
            saved_step = Some(state.step);
            let threads = rayon::current_num_threads();
            if state.threads != threads && options.verbose {
                eprintln!(
                    "note: resuming on {threads} threads; the checkpoint was written on {}, \
                     so the losses may differ from an uninterrupted run in the last bits",
                    state.threads
                );
            }
            state.threads = threads;
            if budget.exhausted(state.step, state.wall_s) {
                return Err(Error::Usage(format!(
                    "{} already reached its budget at step {}: give a larger --steps, --tokens or --budget to continue",
                    run_dir.display(),
                    state.step
                )));
            }
        }
        truncate_metrics(&metrics_path, state.step)?;
    }
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;
    let mut order = Order::at(train.seed, train_len, state.data);

    let evaluator = Evaluator::new(corpus)?;
    let mut last_validation: Option<Validation> = None;
    let mut progress = Progress::new(options.verbose, &budget, state.step);
    if options.resume && state.step > 0 {
        progress.println(format!("resuming at step {}", state.step));
    }
    if let Some(book) = &notes {
        let b = &book.band;
        progress.println(format!(
            "notes: {} rare words (corpus counts {} to {}, about {:.0} to {:.0} sightings each in this run)",
            b.words, b.min_count, b.max_count, b.min_sightings, b.max_sightings
        ));
    }

    let session = Instant::now();
    let (wall_before, tokens_before) = (state.wall_s, state.tokens);
    let elapsed = || wall_before + session.elapsed().as_secs_f64();
    let mut last_step_secs = 0.0;

    let ending = loop {
        if budget.exhausted(state.step, elapsed()) {
            break Ending::Finished;
        }
        if options.stop.load(Ordering::SeqCst) {
            break Ending::Interrupted;
        }
        let step_start = Instant::now();
        let step = state.step;
        let stop_diverged = |what: &str, value: f64, notes: Option<&NoteBook>| {
            let keep = (train.keep_checkpoints, notes);
            diverged(
                run_dir, &params, &opt, &state, saved_step, keep, what, value,
            )
        };
        let lr = budget.learning_rate(train, step, elapsed() + last_step_secs);
        let mut grads = Vec::new();
        let mut loss_sum = 0.0;
        let accum = train.grad_accum_steps.max(1);
        // TNF: notes taken this step are written once the step is good, so
        // a checkpoint always pairs weights and notes of the same step.
        let mut pending = Vec::new();
        // ELECTRA's generator loss, discriminator loss and replaced share.
        let mut parts = [0.0; 3];
        for k in 0..accum {
            let seed = micro_seed(train.seed, step, k);
            let (mut mask_rng, mut dropout_rng) = (Rng::new(seed), Rng::new(!seed));
            let indices: Vec<usize> = (0..micro).map(|_| order.take()).collect();
            let (ids, words) = gather_with_words(corpus, Split::Train, &indices);
            let book = notes.as_mut().map(|book| (book, words.as_slice()));
            let mut ctx = Ctx::train(&mut dropout_rng);
            let (loss, taken) = match &model {
                Trainee::Mlm(model) => batch_loss(
                    model,
                    corpus,
                    &config.objective,
                    &ids,
                    micro,
                    book,
                    &mut mask_rng,
                    &mut ctx,
                )?,
                Trainee::McBert(_) | Trainee::Electra(_) => {
                    let args = (corpus, &config.objective, ids.as_slice(), micro);
                    let (loss, taken, p) = match &model {
                        Trainee::McBert(m) => {
                            mcbert_batch_loss(m, args, book, &mut mask_rng, &mut ctx)?
                        }
                        Trainee::Electra(m) => {
                            electra_batch_loss(m, args, book, &mut mask_rng, &mut ctx)?
                        }
                        Trainee::Mlm(_) => unreachable!("matched above"),
                    };
                    for (sum, v) in parts.iter_mut().zip(p) {
                        *sum += v / accum as f64;
                    }
                    (loss, taken)
                }
            };
            pending.extend(taken);
            let value = loss.to_scalar::<f32>()? as f64;
            if !value.is_finite() {
                return Err(stop_diverged("the loss", value, notes.as_ref()));
            }
            loss_sum += value;
            let mut g = gradients(&params, &loss.backward()?)?;
            if accum > 1 {
                g = g
                    .iter()
                    .map(|t| t / accum as f64)
                    .collect::<candle_core::Result<_>>()?;
            }
            accumulate(&mut grads, g)?;
        }
        let norm = grad_norm(&grads)?;
        if !norm.is_finite() {
            return Err(stop_diverged("the gradient norm", norm, notes.as_ref()));
        }
        opt.update(&grads, lr, clip_scale(norm, train.max_grad_norm))?;
        if let Some(book) = notes.as_mut() {
            for (found, hidden) in pending {
                book.take_notes(&found, &hidden, None)?;
            }
        }
        last_step_secs = step_start.elapsed().as_secs_f64();
        state.step += 1;
        state.tokens += tokens_per_step;
        state.flops += flops_per_step;
        state.data = order.position;
        state.last_loss = loss_sum / accum as f64;

        let done = state.step;
        let last = budget.exhausted(done, elapsed()) || options.stop.load(Ordering::SeqCst);
        let due = |every: u64| every > 0 && done.is_multiple_of(every);
        let validation = if due(config.eval.every) || (last && budget.exhausted(done, elapsed())) {
            let v = validate(&model, corpus, config, &evaluator)?;
            state.last_val_loss = Some(v.loss);
            Some(v)
        } else {
            None
        };
        let val_loss = validation.as_ref().map(|v| v.loss);
        let logged = val_loss.is_some() || due(train.log_every) || last;
        state.wall_s = elapsed();
        let row = Metrics {
            step: done,
            loss: state.last_loss,
            val_loss,
            lr,
            grad_norm: norm,
            tokens: state.tokens,
            flops: state.flops,
            wall_s: state.wall_s,
            tokens_per_s: (state.tokens - tokens_before) as f64 / session.elapsed().as_secs_f64(),
            notes_read: notes.as_ref().map(|book| book.stats.read_share()),
            generator_loss: None,
            discriminator_loss: None,
            replaced: None,
            choice_loss: None,
            val_accuracy: validation.as_ref().map(|v| v.accuracy),
            val_margin: val_loss.map(|v| m.unigram_entropy_nats - v),
            context: validation.as_ref().map(context_keys).unwrap_or_default(),
        };
        if validation.is_some() {
            last_validation = validation;
        }
        let row = match model {
            Trainee::Electra(_) => Metrics {
                generator_loss: Some(parts[0]),
                discriminator_loss: Some(parts[1]),
                replaced: Some(parts[2]),
                ..row
            },
            Trainee::McBert(_) => Metrics {
                generator_loss: Some(parts[0]),
                choice_loss: Some(parts[1]),
                replaced: Some(parts[2]),
                ..row
            },
            Trainee::Mlm(_) => row,
        };
        if logged {
            let line = serde_json::to_string(&row).expect("serialisable");
            writeln!(metrics, "{line}").map_err(|e| Error::io(&metrics_path, e))?;
        }
        progress.step(&row, last, &budget);
        if due(train.save_every) {
            save_checkpoint(run_dir, &params, &opt, &state, notes.as_ref(), train)?;
            saved_step = Some(done);
        }
    };
    progress.finish();
    metrics.flush().map_err(|e| Error::io(&metrics_path, e))?;
    state.wall_s = elapsed();
    let checkpoint = if saved_step == Some(state.step) {
        checkpoint::latest(run_dir)?.expect("a checkpoint was just written")
    } else {
        save_checkpoint(run_dir, &params, &opt, &state, notes.as_ref(), train)?
    };

    // The run directory holds everything needed to use the model.
    let tokenizer = corpus.dir.join(&m.tokenizer.file);
    let copy = run_dir.join("tokenizer.json");
    std::fs::copy(&tokenizer, &copy).map_err(|e| Error::io(&copy, e))?;
    if notes.is_some() {
        // Fine-tuning with notes matches them to words through this table.
        let table = corpus.dir.join(&m.word_counts.file);
        let copy = run_dir.join("word_counts.tsv");
        std::fs::copy(&table, &copy).map_err(|e| Error::io(&copy, e))?;
    }
    let loss_plot = plot_losses(run_dir, m.unigram_entropy_nats)?;
    let summary = Summary {
        ending,
        objective: config.objective.kind.clone(),
        steps: state.step,
        tokens: state.tokens,
        flops: state.flops,
        final_loss: state.last_loss,
        final_val_loss: state.last_val_loss,
        unigram_entropy_nats: m.unigram_entropy_nats,
        parameters: params.count(),
        kernels: if model.is_fused() {
            "fused"
        } else {
            "reference"
        }
        .to_string(),
        wall_s: state.wall_s,
        tokens_per_s: (state.tokens - tokens_before) as f64 / session.elapsed().as_secs_f64(),
        checkpoint,
        loss_plot,
        notes: notes.as_ref().map(NotesSummary::of),
        final_val_accuracy: last_validation.as_ref().map(|v| v.accuracy),
        final_val_margin: state.last_val_loss.map(|v| m.unigram_entropy_nats - v),
        plateau_exit_step: plateau_exit_step(run_dir)?,
        final_val_accuracy_by_band: last_validation
            .as_ref()
            .map(|v| v.bands.iter().map(|(b, a)| (b.to_string(), *a)).collect())
            .unwrap_or_default(),
        probes: probe_scores(last_validation.as_ref(), evaluator.probes.as_ref()),
    };
    if ending == Ending::Finished {
        crate::run::write_json(&run_dir.join("summary.json"), &summary)?;
    }
    Ok(summary)
}

/// The NaN/inf guard: the update that would have used `what` is not applied,
/// so the model is still the last good one; it is checkpointed (unless it
/// already is) and the run stops with an error that says where it is.
#[allow(clippy::too_many_arguments)]
fn diverged(
    run_dir: &Path,
    params: &Params,
    opt: &AdamW,
    state: &TrainState,
    saved_step: Option<u64>,
    (keep, notes): (usize, Option<&NoteBook>),
    what: &str,
    value: f64,
) -> Error {
    let step = state.step + 1;
    let kept = if state.step == 0 {
        Ok(None)
    } else if saved_step == Some(state.step) {
        checkpoint::latest(run_dir)
    } else {
        checkpoint::save(run_dir, params, opt, state, keep, &notes_writer(notes)).map(Some)
    };
    let where_ = match kept {
        Ok(Some(dir)) => format!(
            "the last good state (step {}) is in {}",
            state.step,
            dir.display()
        ),
        Ok(None) => "no step had completed, so there is no checkpoint".into(),
        Err(e) => format!("writing the last good checkpoint failed too: {e}"),
    };
    Error::Training(format!(
        "{what} became {value} at step {step}; training stopped and {where_}. \
         Lower train.learning_rate or train.max_grad_norm, then continue with --resume"
    ))
}
