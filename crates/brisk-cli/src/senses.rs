//! `brisk senses ...`: Word2Sense sparse sense embeddings (Panigrahi et
//! al., 2019): train the LDA over word documents from raw text.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::pretrain::{install_stop_handler, STOP};
use crate::tag::{data_dir, WordRunFlags};
use crate::{init_threads, usage};
use brisk::run;
use brisk::senses::train::{self, SensesConfig, SensesData, TrainOptions};

#[derive(Debug, Subcommand)]
pub enum SensesCommand {
    /// Count word-context co-occurrences in text and train the LDA whose
    /// topics are the senses.
    Train(SensesTrainArgs),
}

#[derive(Debug, Args)]
pub struct SensesTrainArgs {
    /// Text files or directories (.gz read) [default: the shared Wikipedia
    /// sample, <data-dir>/wiki].
    #[arg(long, value_name = "PATH", num_args = 1.., conflicts_with = "corpus")]
    pub input: Vec<PathBuf>,
    /// A `brisk corpus prepare` directory (its training split's words).
    #[arg(long, value_name = "DIR")]
    pub corpus: Option<PathBuf>,
    /// Sampling iterations (lda.iterations) [default: 100]; on --resume, may be raised.
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Senses K (lda.topics) [default: 3000].
    #[arg(long)]
    pub topics: Option<usize>,
    /// A TOML config ([cooc], [lda], seed, save_every).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one config field, e.g. --set cooc.min_count=50 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    #[command(flatten)]
    pub run: WordRunFlags,
}

pub(crate) fn run_command(command: SensesCommand) -> anyhow::Result<()> {
    match command {
        SensesCommand::Train(args) => train(args),
    }
}

/// Defaults, then the file, then `--set` and the flags; with no text given
/// anywhere, the shared Wikipedia sample.
fn resolve(args: &SensesTrainArgs) -> anyhow::Result<SensesConfig> {
    let mut sets = args.set.clone();
    if let Some(seed) = args.run.seed {
        sets.push(format!("seed={seed}"));
    }
    if let Some(n) = args.iterations {
        sets.push(format!("lda.iterations={n}"));
    }
    if let Some(k) = args.topics {
        sets.push(format!("lda.topics={k}"));
    }
    let mut config =
        brisk::config::layered(&SensesConfig::default(), args.config.as_deref(), &sets)?;
    if let Some(dir) = &args.corpus {
        config.data = SensesData {
            input: Vec::new(),
            corpus: Some(dir.clone()),
        };
    } else if !args.input.is_empty() {
        config.data = SensesData {
            input: args.input.clone(),
            corpus: None,
        };
    }
    if config.data.corpus.is_none() && config.data.input.is_empty() {
        let wiki = data_dir(args.run.data_dir.as_deref()).join("wiki");
        if !wiki.is_dir() {
            return Err(usage(&format!(
                "no --input or --corpus, and the default text {} is missing",
                wiki.display()
            )));
        }
        config.data.input = vec![wiki];
    }
    config.check()?;
    Ok(config)
}

fn train(args: SensesTrainArgs) -> anyhow::Result<()> {
    init_threads(args.run.threads)?;
    let config = if args.run.resume {
        let out = args.run.resumed_out()?;
        let mut config = SensesConfig::read(&out.join("config.toml"))?;
        if let Some(n) = args.iterations {
            config.lda.iterations = n;
        }
        config.check()?;
        config
    } else {
        resolve(&args)?
    };
    let out = args
        .run
        .out
        .clone()
        .unwrap_or_else(|| run::default_run_path("senses", &format!("k{}", config.lda.topics)));
    args.run.open(&out, &config.to_toml())?;
    install_stop_handler()?;
    if !args.run.quiet {
        eprintln!("training senses in {}", out.display());
    }
    let options = TrainOptions {
        resume: args.run.resume,
        stop: &STOP,
    };
    let summary =
        brisk::runtime::on_pool(|| train::train(&config, &out, &options, args.run.progress()))?;
    println!(
        "{} senses over a vocabulary of {}: {} iterations, {:.1} s each, {:.1} M tokens/s; counting {:.0} s, peak memory {:.0} MB{}",
        summary.topics,
        summary.vocab,
        summary.iterations,
        summary.seconds_per_iteration,
        summary.tokens_per_s / 1e6,
        summary.count_s,
        summary.peak_rss_mb,
        if summary.stopped {
            format!("; stopped: `brisk senses train --resume --out {}` continues", out.display())
        } else {
            String::new()
        }
    );
    Ok(())
}
