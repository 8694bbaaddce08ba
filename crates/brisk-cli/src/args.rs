//! Raw command-line flags, as clap parses them. Nothing here is validated
//! beyond its type: `main.rs` resolves the flags into a checked config.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// brisk: pre-train BERT-style encoders cheaply on one machine, and use and
/// understand what they learn.
#[derive(Debug, Parser)]
#[command(name = "brisk", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pre-train a BERT encoder with masked-LM (default: the tiny preset on
    /// the built-in generated corpus).
    Pretrain(PretrainArgs),
    /// Show the tokens a pre-trained model predicts at each [MASK].
    FillMask(FillMaskArgs),
    /// Show how likely an ELECTRA run's discriminator finds each token of a
    /// text to be a replacement.
    Detect(DetectArgs),
    /// Encode text with a pre-trained model (a HF BERT checkpoint or a
    /// brisk run): one vector per text, as JSON lines.
    Embed(EmbedArgs),
    /// Fine-tune a pre-trained model (a HF BERT checkpoint or a brisk run) on
    /// a task: a built-in GLUE task or a TOML task file.
    Finetune(FinetuneArgs),
    /// Apply a fine-tuned model to a TSV file: one label (or score) per row.
    Predict(PredictArgs),
    /// Fine-tune and score a pre-trained model on several tasks; writes
    /// results.json and a markdown table.
    Eval(EvalArgs),
    /// Write a pre-training run's newest checkpoint as a HuggingFace
    /// directory (config.json, model.safetensors, tokenizer): masked-LM runs
    /// as BertForMaskedLM, ELECTRA runs as ElectraForPreTraining (the
    /// discriminator), MC-BERT runs as BertModel (the main encoder).
    Export(ExportArgs),
    /// Pre-train variants of one config (baseline, TUPE, TNF, ...) on the
    /// same corpus, seed, data order and budget; writes each run, a table of
    /// the cost to reach the baseline's validation loss, and report.html.
    /// A finished variant is skipped, so --resume continues a comparison.
    Compare(CompareArgs),
    /// Write the HTML report (loss charts, config differences, final
    /// numbers) of any set of pre-training runs; the first is the baseline.
    Report(ReportArgs),
    /// Check runs and corpora for damaged files: each checkpoint against its
    /// checksums.json, each prepared corpus against its manifest.
    Check(crate::check::CheckArgs),
    /// Label every word (named entities, parts of speech) with a
    /// BiLSTM-CRF over concatenated embeddings: train, predict, eval.
    Tag {
        #[command(subcommand)]
        command: crate::tag::TagCommand,
    },
    /// Parse sentences into dependency trees with a biaffine parser over
    /// concatenated embeddings: train, predict, eval.
    Parse {
        #[command(subcommand)]
        command: crate::tag::TagCommand,
    },
    /// Search which embeddings a tagger or parser should concatenate (ACE:
    /// a REINFORCE controller over subsets, the dev score as reward), or
    /// run a baseline of the same budget (all, random, weighted).
    Ace(crate::ace::AceArgs),
    /// Word2Sense: sparse, interpretable sense embeddings from raw text
    /// (co-occurrence counts, LDA whose topics are the senses).
    Senses {
        #[command(subcommand)]
        command: crate::senses::SensesCommand,
    },
    /// Loss landscapes of fine-tuning: lines, planes, trajectories,
    /// layer-wise lines and sharpness (Hao et al., 2019; Li et al., 2018).
    Landscape {
        #[command(subcommand)]
        command: crate::landscape::LandscapeCommand,
    },
    /// Turn raw text into packed, memory-mapped training shards.
    Corpus {
        #[command(subcommand)]
        command: CorpusCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum CorpusCommand {
    /// Train (or load) a WordPiece tokenizer, count words and pack shards.
    ///
    /// Reads UTF-8 text (files, directories, `.gz`): one paragraph or sentence
    /// per line, a blank line between documents. Without --input, prepares
    /// the built-in generated corpus. Writes tokenizer.json, word_counts.tsv,
    /// the shards and manifest.json to the run directory.
    Prepare(PrepareArgs),
    /// Write the built-in generated corpus as text (to inspect it).
    Generate(GenerateArgs),
}

/// Flags shared by every command that runs a job.
#[derive(Debug, Clone, Args)]
pub struct JobArgs {
    /// A TOML run config (sections [model] [data] [objective] [train] [notes] [eval]).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Named preset: tiny, mini, small or base (default: tiny, or the config file's `preset`).
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// Override one config field by its dotted path, e.g. --set data.seq_len=256 (repeatable; later wins).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Run directory [default: runs/<command>-<preset>-<YYYYmmdd-HHMMSS>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Overwrite the run directory if it exists.
    #[arg(long)]
    pub force: bool,
    /// Random seed (training: initialisation, masks, data order; corpus preparation: the validation split and the generated corpus).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Worker threads [default: every core].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// Input files or directories (repeatable); `.gz` is decompressed. Omit for the built-in corpus.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Use this tokenizer.json or vocab.txt instead of training one (sets data.tokenizer).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// WordPiece vocabulary size to train (sets model.vocab_size).
    #[arg(long, value_name = "N")]
    pub vocab_size: Option<usize>,
    /// Print no stage timings.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub job: JobArgs,
}

#[derive(Debug, Args)]
pub struct PretrainArgs {
    /// Budget in optimiser steps (sets train.steps).
    #[arg(long, value_name = "N")]
    pub steps: Option<u64>,
    /// Budget in training tokens (sets train.tokens).
    #[arg(long, value_name = "N")]
    pub tokens: Option<u64>,
    /// Budget in wall-clock time, e.g. 90s, 20m, 2h (sets train.budget).
    #[arg(long, value_name = "TIME")]
    pub budget: Option<String>,
    /// Evaluate on the validation split every N steps (sets eval.every).
    #[arg(long, value_name = "N")]
    pub eval_every: Option<u64>,
    /// Write a checkpoint every N steps (sets train.save_every).
    #[arg(long, value_name = "N")]
    pub save_every: Option<u64>,
    /// Where to train: cpu, cuda or cuda:N (sets train.device; cuda needs
    /// the CUDA build). Checkpoints move between devices.
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// Continue the run in --out from its newest checkpoint, up to the
    /// (possibly raised) budget. The run's own config.toml is used; --set and
    /// the budget flags may change it.
    #[arg(long, conflicts_with = "force")]
    pub resume: bool,
    /// Print nothing while training.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub job: JobArgs,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Variants, comma-separated; the first is the baseline. Each is one of
    /// baseline, electra, mcbert, unigram-gen, uniform-gen (ELECTRA's fixed generators),
    /// exit (ELECTRA's early exit after layers 2 and 3),
    /// tupe-a, tupe-r, rope, tnf, pre-ln, no-dropout, or several joined by +;
    /// a key=value block sets any config field (replacing a named block's
    /// value for it, as in mcbert+objective.mask_token_prob=1).
    #[arg(long, value_name = "LIST", default_value = brisk::compare::DEFAULT_VARIANTS)]
    pub variants: String,
    /// Give every variant the training FLOPs of the first one's step
    /// budget (ELECTRA's counting): costlier steps get fewer of them.
    #[arg(long)]
    pub equal_flops: bool,
    #[command(flatten)]
    pub train: PretrainArgs,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Pre-training run directories; the first is the baseline.
    #[arg(value_name = "RUN", required = true, num_args = 1..)]
    pub runs: Vec<PathBuf>,
    /// The HTML file to write.
    #[arg(long, value_name = "FILE", default_value = "report.html")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct FillMaskArgs {
    /// A run directory made by `brisk pretrain`.
    #[arg(long, value_name = "RUN")]
    pub model: PathBuf,
    /// Text with one or more [MASK] tokens.
    #[arg(value_name = "TEXT")]
    pub text: String,
    /// How many candidates to show per [MASK].
    #[arg(long, default_value_t = 5, value_name = "K")]
    pub top_k: usize,
}

#[derive(Debug, Args)]
pub struct DetectArgs {
    /// A run directory made by `brisk pretrain` with objective.kind = "electra".
    #[arg(long, value_name = "RUN")]
    pub model: PathBuf,
    /// The text to read, possibly with replaced words.
    #[arg(value_name = "TEXT")]
    pub text: String,
}

#[derive(Debug, Args)]
pub struct FinetuneArgs {
    /// A HF BERT checkpoint directory or a run directory made by `brisk pretrain`.
    #[arg(long, value_name = "MODEL")]
    pub model: PathBuf,
    /// sst2, cola, rte, stsb, or a TOML task file (see docs/tasks.md).
    #[arg(long, value_name = "TASK")]
    pub task: String,
    #[command(flatten)]
    pub tuning: TuningArgs,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// HF BERT checkpoint directories or run directories made by `brisk
    /// pretrain`, comma-separated; several models are tuned alike and
    /// tabulated side by side.
    #[arg(
        long,
        value_name = "MODEL[,MODEL...]",
        value_delimiter = ',',
        required = true
    )]
    pub model: Vec<PathBuf>,
    /// Comma-separated tasks: built-in names or TOML task files.
    #[arg(long, default_value = "sst2,cola,rte,stsb", value_name = "T[,T...]")]
    pub tasks: String,
    #[command(flatten)]
    pub tuning: TuningArgs,
}

/// The fine-tuning recipe and run flags of `finetune` and `eval`.
#[derive(Debug, Clone, Args)]
pub struct TuningArgs {
    /// Peak learning rate, or a comma-separated grid (the best by mean dev score is reported).
    #[arg(long, default_value = "2e-5", value_name = "LR[,LR...]")]
    pub lr: String,
    /// Seeds, comma-separated; results are reported as mean ± std over them.
    #[arg(long, default_value = "1", value_name = "S[,S...]")]
    pub seeds: String,
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub epochs: usize,
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub batch_size: usize,
    /// Longest input in tokens, specials included.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub max_len: usize,
    /// Use only the first N training examples (for quick runs).
    #[arg(long, value_name = "N")]
    pub max_train: Option<usize>,
    /// Save a checkpoint every K steps (step 0 is always saved).
    #[arg(long, default_value_t = 0, value_name = "K")]
    pub save_every: u64,
    /// Stop after P epochs without a better dev score (0: never).
    #[arg(long, default_value_t = 0, value_name = "P")]
    pub patience: usize,
    /// Layer-wise learning-rate decay, ELECTRA's recipe (e.g. 0.8; 1: off).
    #[arg(long, default_value_t = 1.0, value_name = "D")]
    pub layer_decay: f64,
    /// TNF's notes of a pre-training run with notes: off, F (read, and
    /// still taken on the fly) or U (read, and trained by back-propagation).
    #[arg(long, default_value = "off", value_name = "MODE")]
    pub notes: String,
    /// Start from a random initialisation of the model's architecture, not
    /// its pre-trained weights (the from-scratch baseline).
    #[arg(long)]
    pub from_scratch: bool,
    /// Where to fine-tune and evaluate: cpu, cuda or cuda:N (cuda needs the
    /// CUDA build).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: String,
    /// Where the built-in tasks' files are [default: $BRISK_SHARED_DIR/data/glue, else ../shared/data/glue].
    #[arg(long, value_name = "DIR")]
    pub glue_dir: Option<PathBuf>,
    /// Run directory [default: runs/<command>-<task>-<YYYYmmdd-HHMMSS>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Overwrite the run directory if it exists.
    #[arg(long)]
    pub force: bool,
    /// Worker threads [default: every core].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// A `brisk finetune` run (its best seed is used) or one of its
    /// `lr-*-seed-*` folders.
    #[arg(long, value_name = "FINETUNED")]
    pub model: PathBuf,
    /// A TSV file with the task's text columns (and header, if the task has
    /// one); a label column may be there or not.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Write the predictions (TSV: index, prediction) here instead of
    /// standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Overwrite --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub batch_size: usize,
    /// Worker threads [default: every core].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Where to predict: cpu, cuda or cuda:N (cuda needs the CUDA build).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: String,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A run directory made by `brisk pretrain`.
    #[arg(value_name = "RUN")]
    pub run: PathBuf,
    /// The HF checkpoint directory to write.
    #[arg(long, value_name = "DIR")]
    pub hf: PathBuf,
    /// Replace DIR if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// A HF BERT checkpoint directory (config.json, model.safetensors,
    /// tokenizer.json or vocab.txt) or a run directory made by `brisk pretrain`.
    #[arg(long, value_name = "MODEL")]
    pub model: PathBuf,
    /// Texts to encode (or give --input).
    #[arg(value_name = "TEXT")]
    pub text: Vec<String>,
    /// A UTF-8 file with one text per line; a TAB splits a line into a
    /// sentence pair.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// How a text's hidden states become its vector: mean (over its tokens) or cls.
    #[arg(long, default_value = "mean", value_name = "HOW")]
    pub pooling: String,
    /// Texts per forward pass (each batch is padded to its longest text).
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub batch_size: usize,
    /// Write the JSON lines to FILE instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Overwrite --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// Worker threads [default: every core].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Where to encode: cpu, cuda or cuda:N (cuda needs the CUDA build).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: String,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Words to generate [default: data.generated_words of the presets].
    #[arg(long, value_name = "N")]
    pub words: Option<usize>,
    /// Seed [default: data.seed of the presets].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Write the text here instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Overwrite --out if it exists.
    #[arg(long)]
    pub force: bool,
    /// Print statistics (Zipf slope, agreement, rare names) to standard error.
    #[arg(long)]
    pub stats: bool,
    /// Worker threads [default: every core].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}
