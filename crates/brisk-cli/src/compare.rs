//! `brisk compare` (pre-train variants of one config side by side) and
//! `brisk report` (the HTML page for any set of runs).

use std::path::{Path, PathBuf};

use anyhow::Context;
use brisk::compare::{parse_variants, report, Comparison, RunRecord, Variant};
use brisk::config::{self, Config, ConfigSource};
use brisk::corpus::shards::PreparedCorpus;
use brisk::pretrain::objective::step_flops;
use brisk::run::{Existing, RunDir};
use brisk::train::pretrain::{check_options, pretrain, Ending, Options};
use brisk::train::schedule::Budget;

use crate::args::{CompareArgs, ReportArgs};
use crate::pretrain::{
    install_stop_handler, open_corpus, pretrain_flag_sets, print_summary, rank_inputs,
    resume_config, STOP,
};
use crate::{create_run, init_threads, resolve_config, usage};

/// Where a variant's run stands.
enum Progress {
    /// Nothing usable yet: start it.
    Fresh,
    /// Checkpoints but not at its budget: resume it.
    Partial,
    /// At its budget: skip it.
    Done,
}

/// Where the run in `run` stands against the budget of `config` (with
/// `seq_len`-token sequences).
fn progress_of(run: &Path, config: &Config, seq_len: usize) -> anyhow::Result<Progress> {
    let summary = run.join("summary.json");
    if summary.exists() {
        let s: serde_json::Value = brisk::run::read_json(&summary)?;
        let steps = s["steps"].as_u64().unwrap_or(0);
        let tokens_per_step = (config.train.batch_size * seq_len) as u64;
        let budget = Budget::from_config(&config.train, tokens_per_step)?;
        // A wall-clock budget alone: a finished run is at its budget.
        let at_budget = budget.steps.is_none_or(|total| steps >= total);
        if s["ending"] == "finished" && at_budget {
            return Ok(Progress::Done);
        }
    }
    Ok(if brisk::train::checkpoint::latest(run)?.is_some() {
        Progress::Partial
    } else {
        Progress::Fresh
    })
}

/// A variant's config: the comparison's `config.toml` plus its overrides.
fn variant_config(dir: &Path, variant: &Variant) -> anyhow::Result<Config> {
    let config = config::resolve(&ConfigSource {
        preset: None,
        file: Some(dir.join("config.toml")),
        sets: variant.sets.clone(),
    })
    .with_context(|| format!("variant {}", variant.name))?;
    check_options(&config, crate::dist::group().world())
        .with_context(|| format!("variant {}", variant.name))?;
    Ok(config)
}

/// Sets each variant's step budget so that it trains for the FLOPs of the
/// first variant's budget.
fn equalise_flops(configs: &mut [Config], seq_len: usize) -> anyhow::Result<()> {
    let flops = |c: &Config| {
        let tokens_per_step = (c.train.batch_size * seq_len) as u64;
        step_flops(c, seq_len, tokens_per_step)
    };
    let base = &configs[0];
    if base.train.steps == 0 {
        return Err(usage(
            "--equal-flops needs a step budget (--steps) for the first variant",
        ));
    }
    let total = base.train.steps as f64 * flops(base)?;
    for c in configs.iter_mut().skip(1) {
        c.train.steps = (total / flops(c)?).round().max(1.0) as u64;
        c.train.tokens = 0;
    }
    Ok(())
}

pub fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let train = &args.train;
    init_threads(train.job.threads)?;
    let variants = parse_variants(&args.variants)?;
    let root = crate::dist::rank() == 0;
    let quiet = train.quiet || !root;
    // Rank 0 sets the comparison up; every rank trains each variant.
    let mut opened = None;
    let (tomls, dir) = crate::dist::from_root(|| {
        let (configs, dir, prepared) = set_up(&args, &variants)?;
        let shared = (
            configs.iter().map(Config::to_toml).collect::<Vec<_>>(),
            dir.clone(),
        );
        opened = Some((configs, prepared));
        Ok(shared)
    })?;
    let (configs, prepared) = match opened {
        Some(opened) => opened,
        None => {
            // Every variant reads the comparison's one corpus.
            let first = tomls.first().context("a comparison needs a variant")?;
            let (_, prepared) = rank_inputs(first, &dir)?;
            let configs = tomls
                .iter()
                .map(|text| toml::from_str(text).context("reading rank 0's variant configs"))
                .collect::<anyhow::Result<Vec<Config>>>()?;
            (configs, prepared)
        }
    };
    install_stop_handler()?;
    for (variant, config) in variants.iter().zip(&configs) {
        let path = dir.join(&variant.name);
        let resume = crate::dist::from_root(|| {
            open_variant(&path, config, &prepared, &variant.name, quiet)
        })?;
        let Some(resume) = resume else {
            continue;
        };
        let options = Options {
            resume,
            verbose: !quiet,
            stop: &STOP,
            collective: crate::dist::group(),
        };
        let summary = brisk::runtime::on_pool(|| pretrain(config, &prepared, &path, &options))?;
        if !quiet {
            print_summary(&summary, &path);
        }
        if summary.ending == Ending::Interrupted {
            if root {
                println!(
                    "comparison interrupted; continue with:  brisk compare --out {} --resume",
                    dir.display()
                );
            }
            return Ok(());
        }
    }
    if !root {
        return Ok(());
    }
    let records = variants
        .iter()
        .map(|v| RunRecord::open(&dir.join(&v.name)))
        .collect::<brisk::Result<Vec<_>>>()?;
    let comparison = Comparison::of(&records);
    let table = comparison.markdown();
    brisk::run::write_atomic(&dir.join("comparison.md"), table.as_bytes())?;
    brisk::run::write_json(&dir.join("comparison.json"), &comparison)?;
    let page = dir.join("report.html");
    report::write(&records, &page)?;
    println!("\n{table}");
    println!("report: {}", page.display());
    Ok(())
}

/// The comparison's directory (new or resumed), its prepared corpus and
/// every variant's checked config.
fn set_up(
    args: &CompareArgs,
    variants: &[Variant],
) -> anyhow::Result<(Vec<Config>, PathBuf, PreparedCorpus)> {
    let train = &args.train;
    let flag_sets = pretrain_flag_sets(train);
    let (mut base, dir) = if train.resume {
        let (config, out) = resume_config(&train.job, flag_sets, "comparison")?;
        (config, RunDir::create(&out, Existing::Resume)?)
    } else {
        let config = resolve_config(&train.job, flag_sets)?;
        let dir = create_run(&train.job, "compare", &config)?;
        (config, dir)
    };
    check_options(&base, crate::dist::group().world())?;
    // One prepared corpus, so every variant reads the same sequences in the
    // same order.
    let prepared = open_corpus(&mut base, &dir.path, train.quiet)?;
    let corpus = std::fs::canonicalize(&prepared.dir)
        .with_context(|| format!("resolving {}", prepared.dir.display()))?;
    base.data.corpus = corpus.display().to_string();
    dir.write_config(&base)?;
    if train.resume {
        dir.append_resumed_provenance()?;
    } else {
        dir.write_provenance()?;
    }
    // Every variant's config is checked before any training starts.
    let mut configs = variants
        .iter()
        .map(|v| variant_config(&dir.path, v))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.equal_flops {
        equalise_flops(&mut configs, prepared.manifest.seq_len)?;
    }
    Ok((configs, dir.path, prepared))
}

/// Opens variant `name`'s run directory at `path`: `Some(resume)` to train
/// it, `None` when it finished earlier.
fn open_variant(
    path: &Path,
    config: &Config,
    prepared: &PreparedCorpus,
    name: &str,
    quiet: bool,
) -> anyhow::Result<Option<bool>> {
    let resume = match progress_of(path, config, prepared.manifest.seq_len)? {
        Progress::Done => {
            if !quiet {
                eprintln!("{name}: finished earlier, skipped");
            }
            return Ok(None);
        }
        Progress::Partial => true,
        Progress::Fresh => false,
    };
    let run = if resume {
        RunDir::create(path, Existing::Resume)?
    } else {
        RunDir::create(path, Existing::Overwrite)?
    };
    run.write_config(config)?;
    if resume {
        run.append_resumed_provenance()?;
    } else {
        run.write_provenance()?;
    }
    if !quiet {
        let how = if resume { "resuming" } else { "training" };
        eprintln!("\n{how} variant {name} in {}", run.path.display());
    }
    Ok(Some(resume))
}

pub fn report(args: ReportArgs) -> anyhow::Result<()> {
    let records = args
        .runs
        .iter()
        .map(|dir| RunRecord::open(dir))
        .collect::<brisk::Result<Vec<_>>>()?;
    report::write(&records, &args.out)?;
    println!("{}", Comparison::of(&records).markdown());
    println!("report: {}", args.out.display());
    Ok(())
}
