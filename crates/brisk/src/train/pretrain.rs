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
use super::optim::{self, accumulate, clip_scale, grad_norm, gradients_or_zeros, AdamW};
use super::schedule::Budget;
use crate::config::{Config, Kernels, ObjectiveConfig};
use crate::corpus::generated::Rng;
use crate::corpus::generated::{self, ProbeKind};
use crate::corpus::shards::{splitmix64, PreparedCorpus, Split};
use crate::corpus::tokenizer::load_tokenizer;
use crate::dist::{self, Collective, Exchange};
use crate::error::{Error, Result};
use crate::model::{Ctx, InputMix, Params};
use crate::plot::{self, Reference, Series, PALETTE};
use crate::pretrain::mlm::{mask_tokens, MaskedBatch};
use crate::pretrain::notes::{
    rare_band, saved_band, NoteBook, NoteStats, Occurrence, RareBand, NOTES_FILE,
};
use crate::pretrain::objective::{self, Batch, Objective};
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
    /// The objective's own figures, averaged over the step: ELECTRA's
    /// `generator_loss`, `discriminator_loss` and `replaced` (the share of
    /// tokens its discriminator saw replaced); MC-BERT's `generator_loss`
    /// (its controller), `choice_loss` and `replaced`.
    #[serde(flatten)]
    pub objective: BTreeMap<String, f64>,
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
    /// Data-parallel runs: seconds of this step spent averaging gradients
    /// over the ranks (the all-reduce, with packing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allreduce_s: Option<f64>,
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
    /// Early exit: the mean share over the run's steps of token-layers
    /// skipped, overall (`skipped`) and per layer (`skipped_layer_{k}`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped: BTreeMap<String, f64>,
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
    /// The ranks of a data-parallel run ([`crate::dist::Single`] for one
    /// process). Each rank computes the gradients of its slice of every
    /// global batch; rank 0 alone writes to the run directory.
    pub collective: &'a dyn Collective,
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
    device: &Device,
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
            let mix = book.mix(&found, shape, &masked.rows, DType::F32, device)?;
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
    generator: crate::config::Generator::Learned,
    exit_layers: Vec::new(),
    exit_threshold: f64::INFINITY,
    exit_warmup: 0,
    exit_weight: 0.0,
    candidate_gradient: true,
    controller_shares: crate::config::SharedEmbeddings::All,
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
/// masked LM and run on masked-LM models. `None` for an objective without a
/// masked LM (ELECTRA with a fixed generator).
pub fn validate(
    model: &dyn Objective,
    corpus: &PreparedCorpus,
    config: &Config,
    evaluator: &Evaluator,
    batch: usize,
) -> Result<Option<Validation>> {
    let n = corpus.num_sequences(Split::Validation);
    if n == 0 {
        return Err(Error::Usage(
            "the corpus has no validation split (data.val_fraction = 0)".into(),
        ));
    }
    let b = batch.min(n);
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
        let Some(logits) = model.masked_lm_logits(&masked, (b, m.seq_len), &mut Ctx::eval())?
        else {
            return Ok(None);
        };
        // The loss in f32 whatever the activations' precision.
        let logits = logits.to_dtype(DType::F32)?;
        let loss =
            candle_nn::loss::cross_entropy(&logits, &masked.targets_tensor(logits.device())?)?;
        total += loss.to_scalar::<f32>()? as f64;
        let predicted: Vec<u32> = logits.argmax(candle_core::D::Minus1)?.to_vec1()?;
        for (p, t) in predicted.iter().zip(&masked.targets) {
            tally.add(evaluator.bands[*t as usize], p == t);
        }
    }
    let probes = match (model.as_masked_lm(), &evaluator.probes) {
        (Some(model), Some(set)) => set.score(model, batch)?,
        _ => BTreeMap::new(),
    };
    Ok(Some(Validation {
        loss: total / batches as f64,
        accuracy: tally.accuracy(),
        bands: tally.band_accuracies(),
        probes,
    }))
}

/// The note book of a TNF run: the rare band from the word counts and the
/// budget (or, on resume, the band the checkpoint's notes were taken for),
/// and the notes themselves when resuming.
fn open_notes(
    config: &Config,
    corpus: &PreparedCorpus,
    plan: &Plan,
    checkpoint: Option<&Path>,
) -> Result<NoteBook> {
    let (budget, tokens_per_step) = (&plan.budget, plan.tokens_per_step);
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

/// Checks what the loop needs of the config, run by `world` processes,
/// before any work is done.
pub fn check_options(config: &Config, world: usize) -> Result<()> {
    Budget::from_config(&config.train, 1)?;
    let (n, t) = (&config.notes, &config.train);
    if n.enabled && !n.absolute_band() && t.steps == 0 && t.tokens == 0 {
        return Err(Error::Config(NOTES_NEED_A_BUDGET.into()));
    }
    let (batch, accum) = (t.batch_size, t.grad_accum_steps.max(1));
    let slices = world * accum;
    if world > 1 && !batch.is_multiple_of(slices) {
        return Err(Error::Config(format!(
            "`train.batch_size` = {batch} is the global batch, split over {world} ranks \
             × {accum} accumulation steps (train.grad_accum_steps): it must be a multiple \
             of {slices}"
        )));
    }
    if world > 1 && n.enabled {
        return Err(Error::Config(
            "`notes` (TNF) keeps one note dictionary that every sequence reads and writes \
             in order; data-parallel runs do not share it yet: run TNF in one process"
                .into(),
        ));
    }
    objective::check_kind(&config.objective.kind)
}

/// The generator seed of micro-batch `micro` of step `step` (0-based).
fn micro_seed(seed: u64, step: u64, micro: usize) -> u64 {
    splitmix64(seed ^ splitmix64(step + 1) ^ splitmix64(micro as u64).rotate_left(17))
}

/// Keeps the rows of `metrics.jsonl` up to `step` (a resumed run repeats the
/// steps after its checkpoint, so their rows are dropped).
pub(crate) fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
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
    let (train, m) = (&config.train, &corpus.manifest);
    let c = options.collective;
    let plan = Plan::of(config, corpus, c)?;
    let budget = &plan.budget;
    let root = plan.rank == 0;

    // The objective's models, the optimiser and, on resume, their state.
    // f32 weights wherever the run is; bf16 products over them in mixed
    // precision.
    let device = crate::model::device::open(&train.device)?;
    let mut params = Params::mixed(device, DType::F32, train.precision.compute_dtype());
    let model = objective::build(config, &mut params, Some(corpus))?;
    // `model.kernels = "reference"` runs on the CPU what a GPU runs: the
    // composition of candle ops and the tensor-op update.
    let update = match params.device.is_cpu() && config.model.kernels == Kernels::Fused {
        true => optim::Kernel::Host,
        false => optim::Kernel::Tensors,
    };
    let mut opt = AdamW::with_kernel(&params, train, update)?;
    let resume_from = match options.resume {
        true => intact_checkpoint(run_dir, root)?,
        false => None,
    };
    let mut notes = config
        .notes
        .enabled
        .then(|| open_notes(config, corpus, &plan, resume_from.as_deref()))
        .transpose()?;
    let mut state = match &resume_from {
        Some(dir) => resume_state(
            (run_dir, dir),
            config,
            (&params, &mut opt),
            &plan,
            options.verbose,
        )?,
        None => fresh_state(train.seed),
    };
    state.micro_batches = plan.world * plan.accum;
    // Every rank must start from the same weights: a rank that read another
    // copy of the checkpoint would train a different model.
    dist::check_in_step(c, params_fingerprint(&params)?, "starting weights")?;
    let mut saved_step = resume_from.is_some().then_some(state.step);
    let metrics_path = run_dir.join("metrics.jsonl");
    if options.resume && root {
        truncate_metrics(&metrics_path, state.step)?;
    }
    let mut metrics = root
        .then(|| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&metrics_path)
                .map_err(|e| Error::io(&metrics_path, e))
        })
        .transpose()?;
    let mut order = Order::at(train.seed, corpus.num_sequences(Split::Train), state.data);
    let evaluator = Evaluator::new(corpus)?;
    let mut last_validation: Option<Validation> = None;
    let mut progress = Progress::new(options.verbose && root, budget, state.step);
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
    let (wall_before, tokens_before, step_at_start) = (state.wall_s, state.tokens, state.step);
    let elapsed = || wall_before + session.elapsed().as_secs_f64();
    let mut last_step_secs = 0.0;
    let mut exchange = Exchange::default();

    // Decisions that depend on the clock or a signal are rank 0's clock and
    // any rank's signal, agreed before they are used, so that every rank
    // takes the same number of steps at the same learning rates.
    let agree = |last_step_secs: f64| {
        let local = (
            elapsed(),
            options.stop.load(Ordering::SeqCst),
            last_step_secs,
        );
        Agreed::over(c, local)
    };
    let ending = loop {
        let now = agree(last_step_secs)?;
        if budget.exhausted(state.step, now.elapsed) {
            break Ending::Finished;
        }
        if now.stop {
            break Ending::Interrupted;
        }
        // One optimiser step: gradients, the guard, the update, the notes.
        let step_start = Instant::now();
        let lr = budget.learning_rate(train, state.step, now.elapsed + now.last_step_secs);
        let mut step = step_gradients(
            model.as_ref(),
            &params,
            (corpus, config, &plan),
            &mut order,
            notes.as_mut(),
            state.step,
        )?;
        let allreduce_s = step.average_over_ranks(c, &mut exchange)?;
        let bad = match (step.loss, step.norm) {
            (loss, _) if !loss.is_finite() => Some(("the loss", loss)),
            (_, norm) if !norm.is_finite() => Some(("the gradient norm", norm)),
            _ => None,
        };
        if let Some((what, value)) = bad {
            if !root {
                // Rank 0 saves the last good state and ends the job.
                c.barrier()?;
            }
            let keep = (train.keep_checkpoints, notes.as_ref());
            let (weights, opt) = (&params, &opt);
            return Err(diverged(
                run_dir, weights, opt, &state, saved_step, keep, what, value,
            ));
        }
        opt.update(&step.grads, lr, clip_scale(step.norm, train.max_grad_norm))?;
        if let Some(book) = notes.as_mut() {
            for (found, hidden) in &step.pending {
                book.take_notes(found, hidden, None)?;
            }
        }
        last_step_secs = step_start.elapsed().as_secs_f64();
        state.step += 1;
        state.tokens += plan.tokens_per_step;
        state.flops += plan.flops_per_step - step.flops_skipped;
        state.add_skipped(&step.logged);
        state.data = order.position;
        state.last_loss = step.loss;

        // Evaluation, the log line, checkpoints.
        let done = state.step;
        let now = agree(last_step_secs)?;
        let finished = budget.exhausted(done, now.elapsed);
        let last = finished || now.stop;
        let due = |every: u64| every > 0 && done.is_multiple_of(every);
        // Rank 0 evaluates; the others wait at the next collective.
        let validation = match (due(config.eval.every) || finished) && root {
            true => validate(model.as_ref(), corpus, config, &evaluator, plan.micro)?,
            false => None,
        };
        if let Some(v) = &validation {
            state.last_val_loss = Some(v.loss);
        }
        let val_loss = validation.as_ref().map(|v| v.loss);
        let logged = val_loss.is_some() || due(train.log_every) || last;
        state.wall_s = now.elapsed;
        let row = Metrics {
            step: done,
            loss: state.last_loss,
            val_loss,
            lr,
            grad_norm: step.norm,
            tokens: state.tokens,
            flops: state.flops,
            wall_s: state.wall_s,
            tokens_per_s: (state.tokens - tokens_before) as f64 / session.elapsed().as_secs_f64(),
            notes_read: notes.as_ref().map(|book| book.stats.read_share()),
            objective: step.logged,
            val_accuracy: validation.as_ref().map(|v| v.accuracy),
            val_margin: val_loss.map(|v| m.unigram_entropy_nats - v),
            context: validation.as_ref().map(context_keys).unwrap_or_default(),
            allreduce_s: (plan.world > 1).then_some(allreduce_s),
        };
        if validation.is_some() {
            last_validation = validation;
        }
        if let (true, Some(file)) = (logged, metrics.as_mut()) {
            let line = serde_json::to_string(&row).expect("serialisable");
            writeln!(file, "{line}").map_err(|e| Error::io(&metrics_path, e))?;
        }
        progress.step(&row, last, budget);
        if due(train.save_every) {
            dist::check_in_step(c, params_fingerprint(&params)?, "weights")?;
            if root {
                save_checkpoint(run_dir, &params, &opt, &state, notes.as_ref(), train)?;
            }
            saved_step = Some(done);
        }
    };
    progress.finish();
    if ending == Ending::Finished && state.step == step_at_start && root {
        // Finishing a run that had reached its budget (killed before its
        // summary): the final validation, as the last step made it.
        last_validation = validate(model.as_ref(), corpus, config, &evaluator, plan.micro)?;
    }
    state.wall_s = agree(last_step_secs)?.elapsed;
    let final_save = saved_step != Some(state.step);
    if final_save {
        dist::check_in_step(c, params_fingerprint(&params)?, "weights")?;
    }
    if !root {
        // Rank 0 writes the last checkpoint, the plot and the summary; the
        // others return once the run directory is complete.
        c.barrier()?;
        let checkpoint = checkpoint::latest(run_dir)?.unwrap_or_default();
        return Ok(rank_summary(ending, config, &state, &params, checkpoint));
    }
    let metrics_file = metrics.as_mut().expect("rank 0 logs");
    metrics_file
        .flush()
        .map_err(|e| Error::io(&metrics_path, e))?;
    let checkpoint = if final_save {
        save_checkpoint(run_dir, &params, &opt, &state, notes.as_ref(), train)?
    } else {
        checkpoint::latest(run_dir)?.expect("a checkpoint was just written")
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
        skipped: state.mean_skipped(),
    };
    if ending == Ending::Finished {
        crate::run::write_json(&run_dir.join("summary.json"), &summary)?;
    }
    c.barrier()?;
    Ok(summary)
}

/// The clock and the stop signal as every rank sees them: rank 0's
/// elapsed time and step time, and a stop if any rank was signalled.
struct Agreed {
    elapsed: f64,
    stop: bool,
    last_step_secs: f64,
}

impl Agreed {
    fn over(
        c: &dyn Collective,
        (elapsed, stop, last_step_secs): (f64, bool, f64),
    ) -> Result<Agreed> {
        if c.world() == 1 {
            return Ok(Agreed {
                elapsed,
                stop,
                last_step_secs,
            });
        }
        let root = if c.rank() == 0 { 1.0 } else { 0.0 };
        let mut v = [root * elapsed, stop as u8 as f64, root * last_step_secs];
        dist::sum_f64(c, &mut v)?;
        Ok(Agreed {
            elapsed: v[0],
            stop: v[1] > 0.0,
            last_step_secs: v[2],
        })
    }
}

/// A fingerprint of every weight, for ranks to compare.
fn params_fingerprint(params: &Params) -> Result<u64> {
    let mut hash = 0u64;
    for group in params.groups() {
        let flat = group.var.as_tensor().flatten_all()?;
        let bits: Vec<u8> = match flat.dtype() {
            DType::F64 => flat
                .to_vec1::<f64>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            _ => flat
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        };
        hash = hash.rotate_left(5) ^ dist::fingerprint(bits);
    }
    Ok(hash)
}

/// What a rank other than 0 returns: the run's figures without the files
/// rank 0 wrote.
fn rank_summary(
    ending: Ending,
    config: &Config,
    state: &TrainState,
    params: &Params,
    checkpoint: PathBuf,
) -> Summary {
    Summary {
        ending,
        objective: config.objective.kind.clone(),
        steps: state.step,
        tokens: state.tokens,
        flops: state.flops,
        final_loss: state.last_loss,
        final_val_loss: None,
        unigram_entropy_nats: f64::NAN,
        parameters: params.count(),
        kernels: String::new(),
        wall_s: state.wall_s,
        tokens_per_s: f64::NAN,
        checkpoint,
        loss_plot: PathBuf::new(),
        notes: None,
        final_val_accuracy: None,
        final_val_margin: None,
        plateau_exit_step: None,
        final_val_accuracy_by_band: BTreeMap::new(),
        probes: BTreeMap::new(),
        skipped: BTreeMap::new(),
    }
}

/// What a run's config, corpus and world size fix before any work: the
/// micro-batch, the budget and the cost of a step.
struct Plan {
    tokens_per_step: u64,
    budget: Budget,
    flops_per_step: f64,
    /// Sequences per micro-batch (on each rank).
    micro: usize,
    /// Micro-batches per step on each rank (`train.grad_accum_steps`).
    accum: usize,
    /// This rank and the number of ranks.
    rank: usize,
    world: usize,
}

impl Plan {
    fn of(config: &Config, corpus: &PreparedCorpus, collective: &dyn Collective) -> Result<Plan> {
        let (rank, world) = (collective.rank(), collective.world());
        check_options(config, world)?;
        let (batch, accum) = (
            config.train.batch_size,
            config.train.grad_accum_steps.max(1),
        );
        let slices = world * accum;
        let m = &corpus.manifest;
        if m.tokenizer.vocab_size != config.model.vocab_size {
            return Err(Error::Config(format!(
                "`model.vocab_size` is {} but the corpus vocabulary has {} entries",
                config.model.vocab_size, m.tokenizer.vocab_size
            )));
        }
        if corpus.num_sequences(Split::Train) == 0 {
            return Err(Error::data(
                &corpus.dir,
                "the corpus has no training sequences",
            ));
        }
        let tokens_per_step = (config.train.batch_size * m.seq_len) as u64;
        Ok(Plan {
            tokens_per_step,
            budget: Budget::from_config(&config.train, tokens_per_step)?,
            flops_per_step: objective::step_flops(config, m.seq_len, tokens_per_step)?,
            micro: batch / slices,
            accum,
            rank,
            world,
        })
    }
}

/// The state of a run that has taken no step.
fn fresh_state(seed: u64) -> TrainState {
    TrainState {
        format_version: FORMAT_VERSION,
        step: 0,
        tokens: 0,
        flops: 0.0,
        wall_s: 0.0,
        data: DataPosition { epoch: 0, next: 0 },
        seed,
        threads: rayon::current_num_threads(),
        last_loss: f64::NAN,
        last_val_loss: None,
        skipped: BTreeMap::new(),
        micro_batches: 1,
    }
}

/// The checkpoint to resume from: the newest whose files match their
/// checksums. Damaged newer ones are reported and passed over; when every
/// checkpoint is damaged, the first error stands.
fn intact_checkpoint(run_dir: &Path, report: bool) -> Result<Option<PathBuf>> {
    let (dir, damaged) = checkpoint::latest_intact(run_dir)?;
    if report {
        checkpoint::report_fallback(&damaged, dir.as_deref());
    }
    match (dir, damaged.into_iter().next()) {
        (None, Some(first)) => Err(first.error),
        (dir, _) => Ok(dir),
    }
}

/// Loads checkpoint `dir` of `run_dir` into the weights and the optimiser and returns
/// its state, refusing a different seed or a run already at its budget.
fn resume_state(
    (run_dir, dir): (&Path, &Path),
    config: &Config,
    (params, opt): (&Params, &mut AdamW),
    plan: &Plan,
    verbose: bool,
) -> Result<TrainState> {
    let train = &config.train;
    let mut state = checkpoint::load(dir, params, opt)?;
    if state.seed != train.seed {
        return Err(Error::Config(format!(
            "{}: the checkpoint was trained with train.seed = {}, the config says {}",
            dir.display(),
            state.seed,
            train.seed
        )));
    }
    let threads = rayon::current_num_threads();
    if state.threads != threads && verbose && plan.rank == 0 {
        eprintln!(
            "note: resuming on {threads} threads; the checkpoint was written on {}, \
             so the losses may differ from an uninterrupted run in the last bits",
            state.threads
        );
    }
    state.threads = threads;
    let micro_batches = plan.world * plan.accum;
    if state.micro_batches != micro_batches && verbose && plan.rank == 0 {
        eprintln!(
            "note: each step is now cut into {micro_batches} micro-batches ({} ranks × {} \
             accumulation steps), the checkpoint's into {}: the data order is the same, but \
             masks and dropout are drawn per micro-batch, so the losses differ from an \
             uninterrupted run (keep ranks × train.grad_accum_steps to continue it exactly)",
            plan.world, plan.accum, state.micro_batches
        );
    }
    // A run killed after its last checkpoint but before its summary is
    // finished by resuming it: no steps, just the outputs.
    let summarised = run_dir.join("summary.json").exists();
    if plan.budget.exhausted(state.step, state.wall_s) && summarised {
        return Err(Error::Usage(format!(
            "{} already reached its budget at step {}: give a larger --steps, --tokens or --budget to continue",
            run_dir.display(),
            state.step
        )));
    }
    Ok(state)
}

/// What one optimiser step computed, before its update is applied.
struct StepGradients {
    /// The mean loss over the micro-batches; non-finite (and nothing else
    /// filled in) when a micro-batch's loss was.
    loss: f64,
    grads: Vec<Tensor>,
    norm: f64,
    /// The objective's figures, averaged over the micro-batches.
    logged: BTreeMap<String, f64>,
    /// Planned FLOPs the objective did not spend (early exit).
    flops_skipped: f64,
    /// TNF: the notes to take once the step is known to be good, so that a
    /// checkpoint always pairs weights and notes of the same step.
    pending: Vec<PendingNotes>,
}

impl StepGradients {
    /// Turns this rank's figures into the step's: the loss, the objective's
    /// figures and the gradients averaged over the ranks, the skipped FLOPs
    /// summed, the norm of the averaged gradients. A non-finite loss on any
    /// rank makes the step's loss non-finite on every rank, and then no
    /// gradients are exchanged. Returns the seconds the gradient exchange took.
    fn average_over_ranks(&mut self, c: &dyn Collective, exchange: &mut Exchange) -> Result<f64> {
        let world = c.world();
        if world == 1 {
            return Ok(0.0);
        }
        let mut head = [self.loss, self.flops_skipped];
        dist::sum_f64(c, &mut head)?;
        self.loss = head[0] / world as f64;
        self.flops_skipped = head[1];
        if !self.loss.is_finite() {
            return Ok(0.0);
        }
        let mut logged: Vec<f64> = self.logged.values().copied().collect();
        dist::sum_f64(c, &mut logged)?;
        for (v, sum) in self.logged.values_mut().zip(logged) {
            *v = sum / world as f64;
        }
        let secs = exchange.all_reduce_mean(c, &mut self.grads)?;
        self.norm = grad_norm(&self.grads)?;
        Ok(secs)
    }
}

/// The gradients of step `step` on this rank: the step's global batch is
/// drawn from the data order and cut into `world × grad_accum_steps`
/// micro-batches; this rank takes micro-batches `rank·accum ..
/// (rank+1)·accum`, each masked (and with TNF mixed with notes) from the
/// generator seeded by its global index, so that N ranks compute exactly
/// the micro-batches one process with N times the accumulation would.
/// Averaged over this rank's micro-batches.
fn step_gradients(
    model: &dyn Objective,
    params: &Params,
    (corpus, config, plan): (&PreparedCorpus, &Config, &Plan),
    order: &mut Order,
    mut notes: Option<&mut NoteBook>,
    step: u64,
) -> Result<StepGradients> {
    let m = &corpus.manifest;
    let (micro, accum) = (plan.micro, plan.accum);
    let global: Vec<usize> = (0..micro * accum * plan.world)
        .map(|_| order.take())
        .collect();
    let mut out = StepGradients {
        loss: 0.0,
        grads: Vec::new(),
        norm: f64::NAN,
        logged: BTreeMap::new(),
        flops_skipped: 0.0,
        pending: Vec::new(),
    };
    for k in 0..accum {
        let j = plan.rank * accum + k;
        let seed = micro_seed(config.train.seed, step, j);
        let (mut rng, mut dropout_rng) = (Rng::new(seed), Rng::new(!seed));
        let indices = &global[j * micro..(j + 1) * micro];
        let (tokens, words) = gather_with_words(corpus, Split::Train, indices);
        let book = notes.as_deref_mut().map(|book| (book, words.as_slice()));
        let p = mask_and_mix(
            &params.device,
            corpus,
            &config.objective,
            &tokens,
            micro,
            book,
            &mut rng,
        )?;
        let batch = Batch {
            tokens: &tokens,
            masked: &p.masked,
            shape: (micro, m.seq_len),
            mix: p.mix.as_ref(),
            special: &m.special_ids,
            step,
        };
        let loss = model.batch_loss(&batch, &mut rng, &mut Ctx::train(&mut dropout_rng))?;
        let value = loss.total.to_scalar::<f32>()? as f64;
        if !value.is_finite() {
            out.loss = value;
            return Ok(out);
        }
        out.loss += value;
        for (key, v) in loss.logged {
            *out.logged.entry(key).or_default() += v / accum as f64;
        }
        out.flops_skipped += loss.flops_skipped;
        // Detached: the notes read values, and the graph is freed with the loss.
        out.pending
            .extend(p.found.map(|found| (found, loss.hidden.detach())));
        let mut g = gradients_or_zeros(params, &loss.total.backward()?, &|group| {
            model.may_idle(group)
        })?;
        if accum > 1 {
            g = g
                .iter()
                .map(|t| t / accum as f64)
                .collect::<candle_core::Result<_>>()?;
        }
        accumulate(&mut out.grads, g)?;
    }
    out.loss /= accum as f64;
    out.norm = grad_norm(&out.grads)?;
    Ok(out)
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
