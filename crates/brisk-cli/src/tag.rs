//! `brisk tag train | predict | eval` and `brisk parse train | predict |
//! eval`: word-level labelling (BiLSTM-CRF) and dependency parsing
//! (biaffine) over concatenated embeddings, on a built-in or TOML
//! word-level task.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::pretrain::{install_stop_handler, STOP};
use crate::{init_threads, usage};
use brisk::run::{self, Existing, RunDir};
use brisk::tasks::labelling::{self, Predictor, WordModelConfig};
use brisk::tasks::word_tasks::WordTaskKind;
use brisk::tasks::word_tasks::{read_labelled, read_plain, WordTask};

#[derive(Debug, Subcommand)]
pub enum TagCommand {
    /// Train on a word-level task (a built-in one or a TOML task file) over
    /// a list of embeddings; keeps the best model on dev and scores test
    /// with it.
    Train(TagTrainArgs),
    /// Label (or parse) sentences with a trained model: plain text (one
    /// sentence per line) or a file in the task's format; writes CoNLL
    /// columns (position, word, gold when the input has it, prediction).
    Predict(TagPredictArgs),
    /// Score a trained model on a labelled file (default: the task's test
    /// file) with the task's metric.
    Eval(TagEvalArgs),
}

#[derive(Debug, Args)]
pub struct TagTrainArgs {
    /// A built-in task (tag: conll03-ner, ewt-upos; parse: ewt-deps) or a TOML task file.
    #[arg(long)]
    pub task: String,
    /// The features to concatenate: comma-separated `kind[:path][+key=value]`,
    /// kinds encoder:MODEL, static:VECTORS, chars, word [default: word,chars].
    #[arg(long, value_name = "SPEC")]
    pub embeddings: Option<String>,
    /// A TOML config ([[embeddings]], [model], [train]).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one config field, e.g. --set model.hidden=128 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Training epochs (train.epochs).
    #[arg(long)]
    pub epochs: Option<usize>,
    #[command(flatten)]
    pub run: WordRunFlags,
}

/// The flags of a word-level run (`tag train`, `parse train`, `ace`).
#[derive(Debug, Args)]
pub struct WordRunFlags {
    /// Run directory [default: runs/<command>-<task>-<YYYYmmdd-HHMMSS>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Overwrite the run directory if it exists.
    #[arg(long)]
    pub force: bool,
    /// Continue the run in --out from its last finished epoch (ace: episode;
    /// senses: saved iteration).
    #[arg(long)]
    pub resume: bool,
    /// Random seed (initialisation, data order, dropout; ace: the draws;
    /// senses: subsampling and sampler).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads [default: every core].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where the built-in tasks' files are [default: $BRISK_SHARED_DIR/data, else ../shared/data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

impl WordRunFlags {
    /// The `--out` a resumed run needs.
    pub(crate) fn resumed_out(&self) -> anyhow::Result<&Path> {
        self.out
            .as_deref()
            .ok_or_else(|| usage("--resume needs --out DIR, the run to continue"))
    }

    /// Creates (or, resuming, reopens) the run directory `out`, records how
    /// it was made and, for a new run, writes `config_toml` as
    /// `config.toml`.
    pub(crate) fn open(&self, out: &Path, config_toml: &str) -> anyhow::Result<()> {
        let existing = match (self.resume, self.force) {
            (true, _) => Existing::Resume,
            (false, true) => Existing::Overwrite,
            (false, false) => Existing::Refuse,
        };
        let dir = RunDir::create(out, existing)?;
        if self.resume {
            dir.append_resumed_provenance()?;
        } else {
            dir.write_provenance()?;
            run::write_atomic(&out.join("config.toml"), config_toml.as_bytes())?;
        }
        Ok(())
    }

    /// Prints a progress line unless `--quiet`.
    pub(crate) fn progress(&self) -> impl Fn(&str) + '_ {
        move |line| {
            if !self.quiet {
                eprintln!("  {line}");
            }
        }
    }
}

#[derive(Debug, Args)]
pub struct TagPredictArgs {
    /// A `brisk tag train` run directory.
    #[arg(long)]
    pub model: PathBuf,
    /// The sentences to label.
    pub file: PathBuf,
    /// `text` (one sentence per line, words split on spaces) or `task`
    /// (the task's own file format, gold labels kept in the output).
    #[arg(long, default_value = "text")]
    pub format: String,
    /// Write here instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Args)]
pub struct TagEvalArgs {
    /// A `brisk tag train` run directory.
    #[arg(long)]
    pub model: PathBuf,
    /// A labelled file in the task's format [default: the task's test file].
    pub file: Option<PathBuf>,
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where the built-in tasks' files are [default: $BRISK_SHARED_DIR/data, else ../shared/data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// The shared data folder the built-in word-level tasks read.
pub(crate) fn data_dir(flag: Option<&Path>) -> PathBuf {
    match (flag, std::env::var_os("BRISK_SHARED_DIR")) {
        (Some(dir), _) => dir.to_path_buf(),
        (None, Some(shared)) => PathBuf::from(shared).join("data"),
        (None, None) => PathBuf::from("../shared/data"),
    }
}

/// `brisk tag ...` (`kind` Tagging) or `brisk parse ...` (Parsing).
pub(crate) fn run_command(kind: WordTaskKind, command: TagCommand) -> anyhow::Result<()> {
    match command {
        TagCommand::Train(args) => train(kind, args),
        TagCommand::Predict(args) => predict(args),
        TagCommand::Eval(args) => eval(args),
    }
}

/// Defaults, then the file, then `--embeddings`, `--set` and the flags.
fn resolve(kind: WordTaskKind, args: &TagTrainArgs) -> anyhow::Result<WordModelConfig> {
    let mut sets = args.set.clone();
    if let Some(seed) = args.run.seed {
        sets.push(format!("train.seed={seed}"));
    }
    if let Some(e) = args.epochs {
        sets.push(format!("train.epochs={e}"));
    }
    let defaults = match kind {
        WordTaskKind::Tagging => WordModelConfig::default(),
        WordTaskKind::Parsing => WordModelConfig::parser_default(),
    };
    let mut config = brisk::config::layered(&defaults, args.config.as_deref(), &sets)?;
    if let Some(spec) = &args.embeddings {
        config.embeddings = brisk::embed::parse_spec(spec)?;
    }
    config.check()?;
    Ok(config)
}

fn train(kind: WordTaskKind, args: TagTrainArgs) -> anyhow::Result<()> {
    init_threads(args.run.threads)?;
    let task = WordTask::resolve(&args.task, &data_dir(args.run.data_dir.as_deref()))?;
    if task.spec.kind != kind {
        let (is, command) = match task.spec.kind {
            WordTaskKind::Tagging => ("a tagging", "brisk tag train"),
            WordTaskKind::Parsing => ("a parsing", "brisk parse train"),
        };
        return Err(usage(&format!(
            "task {:?} is {is} task: use `{command}`",
            task.spec.name
        )));
    }
    let config = if args.run.resume {
        let out = args.run.resumed_out()?;
        let saved: labelling::SavedModel = run::read_json(&out.join("model.json"))?;
        let mut config = saved.config;
        if let Some(e) = args.epochs {
            config.train.epochs = e;
        }
        config
    } else {
        resolve(kind, &args)?
    };
    // Bad data is an error before a run directory exists.
    let prepared = labelling::prepare(task, config)?;
    let out = args.run.out.clone().unwrap_or_else(|| {
        let command = match kind {
            WordTaskKind::Tagging => "tag",
            WordTaskKind::Parsing => "parse",
        };
        run::default_run_path(command, &prepared.task.spec.name)
    });
    args.run.open(&out, &prepared.config.to_toml())?;
    install_stop_handler()?;
    if !args.run.quiet {
        eprintln!("training in {}", out.display());
    }
    let options = labelling::TrainOptions {
        resume: args.run.resume,
        stop: &STOP,
    };
    let summary = brisk::runtime::on_pool(|| {
        labelling::train(prepared, &out, &options, args.run.progress())
    })?;
    println!(
        "{}: best dev {} {:.2} (epoch {}){}",
        summary.task,
        summary.metric,
        100.0 * summary.dev,
        summary.best_epoch,
        summary
            .test
            .map(|t| format!(", test {:.2}", 100.0 * t))
            .unwrap_or_default()
    );
    println!(
        "{:.1} s per epoch, peak memory {:.0} MB; summary: {}",
        summary.epoch_s,
        summary.peak_rss_mb,
        out.join("summary.json").display()
    );
    Ok(())
}

fn predict(args: TagPredictArgs) -> anyhow::Result<()> {
    init_threads(args.threads)?;
    let predictor = Predictor::load(&args.model)?;
    let (words, gold) = match args.format.as_str() {
        "text" => (read_plain(&args.file)?, None),
        "task" => {
            let data = read_labelled(&predictor.saved.task, &args.file)?;
            (data.iter().map(|s| s.words.clone()).collect(), Some(data))
        }
        other => return Err(usage(&format!("--format {other:?}: expected text or task"))),
    };
    let predicted = brisk::runtime::on_pool(|| {
        predictor.predict(words.clone(), &mut |line| eprintln!("  {line}"))
    })?;
    match &args.output {
        Some(path) => labelling::write_conll(path, &words, gold.as_deref(), &predicted)?,
        None => print!(
            "{}",
            labelling::conll_text(&words, gold.as_deref(), &predicted)
        ),
    }
    Ok(())
}

fn eval(args: TagEvalArgs) -> anyhow::Result<()> {
    init_threads(args.threads)?;
    let predictor = Predictor::load(&args.model)?;
    let spec = &predictor.saved.task;
    let file = match &args.file {
        Some(f) => f.clone(),
        None => {
            let task = WordTask::resolve(&spec.name, &data_dir(args.data_dir.as_deref())).map_err(
                |_| {
                    usage(&format!(
                        "task {:?} is not built in: name the labelled file to score",
                        spec.name
                    ))
                },
            )?;
            task.test
                .ok_or_else(|| usage("the task has no test file: name one"))?
        }
    };
    let data = read_labelled(spec, &file)?;
    let words: Vec<Vec<String>> = data.iter().map(|s| s.words.clone()).collect();
    let predicted =
        brisk::runtime::on_pool(|| predictor.predict(words, &mut |line| eprintln!("  {line}")))?;
    let scores = labelling::score(spec, &data, &predicted);
    println!(
        "{}: {} {:.2}",
        file.display(),
        scores.metric,
        100.0 * scores.main
    );
    println!("{}", serde_json::to_string_pretty(&scores.details)?);
    Ok(())
}
