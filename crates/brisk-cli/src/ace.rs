//! `brisk ace`: search for the best concatenation of embeddings for a
//! word-level task (ACE, Wang et al., 2021), or run a baseline of the
//! same budget (`--strategy all | random | weighted`).

use std::path::{Path, PathBuf};

use clap::Args;

use crate::pretrain::{install_stop_handler, STOP};
use crate::tag::{data_dir, WordRunFlags};
use crate::{init_threads, usage};
use brisk::run;
use brisk::tasks::ace::{self, Candidate, SearchConfig, SearchOptions, Strategy};
use brisk::tasks::word_tasks::{WordTask, WordTaskKind};

#[derive(Debug, Args)]
pub struct AceArgs {
    /// A built-in word-level task (conll03-ner, ewt-upos, ewt-deps) or a TOML task file.
    #[arg(long)]
    pub task: String,
    /// The candidate embeddings: comma-separated `kind[:path][+key=value]`
    /// (as `brisk tag train --embeddings`), or a TOML file with a
    /// `[[candidates]]` list (each a `name` and an embedding's keys).
    #[arg(long, value_name = "SPEC|FILE")]
    pub candidates: Option<String>,
    /// ace (the REINFORCE controller), random (random subsets), all (every
    /// candidate), weighted (every candidate scaled by a trained σ(w))
    /// [default: ace].
    #[arg(long)]
    pub strategy: Option<String>,
    /// Episodes (ace.episodes) [default: 30]; on --resume, may be raised.
    #[arg(long)]
    pub episodes: Option<usize>,
    /// Training epochs per episode (train.epochs) [default: 1].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// A TOML config ([[candidates]], [model], [train], [ace]).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override one config field, e.g. --set ace.discount=0.5 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    #[command(flatten)]
    pub run: WordRunFlags,
}

/// `--candidates`: a TOML file's `[[candidates]]`, or a spec string.
fn candidates(value: &str) -> anyhow::Result<Vec<Candidate>> {
    let path = Path::new(value);
    if path.is_file() || value.ends_with(".toml") {
        return Ok(ace::read_candidates(path)?);
    }
    Ok(brisk::embed::parse_spec(value)?
        .into_iter()
        .map(Candidate::new)
        .collect())
}

/// Defaults, then the file, then `--set` and the flags.
fn resolve(kind: WordTaskKind, args: &AceArgs) -> anyhow::Result<SearchConfig> {
    let mut sets = args.set.clone();
    if let Some(seed) = args.run.seed {
        sets.push(format!("train.seed={seed}"));
    }
    if let Some(e) = args.epochs {
        sets.push(format!("train.epochs={e}"));
    }
    if let Some(e) = args.episodes {
        sets.push(format!("ace.episodes={e}"));
    }
    if let Some(s) = &args.strategy {
        sets.push(format!("ace.strategy=\"{s}\""));
    }
    let defaults = SearchConfig::defaults(kind == WordTaskKind::Parsing);
    let mut config = brisk::config::layered(&defaults, args.config.as_deref(), &sets)?;
    if let Some(spec) = &args.candidates {
        config.candidates = candidates(spec)?;
    }
    if config.candidates.is_empty() {
        return Err(usage(
            "no candidates: give --candidates SPEC|FILE or [[candidates]] in --config",
        ));
    }
    config.check()?;
    Ok(config)
}

pub(crate) fn ace(args: AceArgs) -> anyhow::Result<()> {
    init_threads(args.run.threads)?;
    if let Some(s) = &args.strategy {
        if !["ace", "random", "all", "weighted"].contains(&s.as_str()) {
            return Err(usage(&format!(
                "--strategy {s:?}: expected ace, random, all or weighted"
            )));
        }
    }
    let task = WordTask::resolve(&args.task, &data_dir(args.run.data_dir.as_deref()))?;
    let config = if args.run.resume {
        let out = args.run.resumed_out()?;
        let mut config = SearchConfig::read(&out.join("search.toml"))?;
        if let Some(e) = args.episodes {
            config.ace.episodes = e;
        }
        config
    } else {
        resolve(task.spec.kind, &args)?
    };
    // Bad data or candidates are an error before a run directory exists.
    let prepared = ace::prepare(task, config)?;
    let strategy = prepared.config.ace.strategy;
    let out = args.run.out.clone().unwrap_or_else(|| {
        run::default_run_path(
            strategy_command(strategy),
            &prepared.prepared.task.spec.name,
        )
    });
    args.run.open(&out, &prepared.prepared.config.to_toml())?;
    install_stop_handler()?;
    if !args.run.quiet {
        eprintln!(
            "searching in {} (strategy {})",
            out.display(),
            strategy.name()
        );
    }
    let options = SearchOptions {
        resume: args.run.resume,
        stop: &STOP,
    };
    let summary =
        brisk::runtime::on_pool(|| ace::search(prepared, &out, &options, args.run.progress()))?;
    println!(
        "{} ({}): best dev {} {:.2} in episode {} with {}{}",
        summary.task,
        summary.strategy.name(),
        summary.metric,
        100.0 * summary.dev,
        summary.best.episode,
        ace::describe(&summary.candidates, &summary.best.action),
        summary
            .test
            .map(|t| format!(", test {:.2}", 100.0 * t))
            .unwrap_or_default()
    );
    println!(
        "{:.0} s, peak memory {:.0} MB; report: {}; use it with `brisk tag predict --model {}`",
        summary.wall_s,
        summary.peak_rss_mb,
        out.join("report.html").display(),
        out.display()
    );
    Ok(())
}

/// The default run folder's prefix.
fn strategy_command(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::Ace => "ace",
        Strategy::Random => "ace-random",
        Strategy::All => "ace-all",
        Strategy::Weighted => "ace-weighted",
    }
}
