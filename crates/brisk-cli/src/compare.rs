//! `brisk compare` (pre-train variants of one config side by side) and
//! `brisk report` (the HTML page for any set of runs).

use std::path::Path;

use anyhow::Context;
use brisk::compare::{parse_variants, report, Comparison, RunRecord, Variant};
use brisk::config::{self, Config, ConfigSource};
use brisk::pretrain::objective::step_flops;
use brisk::run::{Existing, RunDir};
use brisk::train::pretrain::{check_options, pretrain, Ending, Options};
use brisk::train::schedule::Budget;

use crate::args::{CompareArgs, ReportArgs};
use crate::pretrain::{
    install_stop_handler, open_corpus, pretrain_flag_sets, print_summary, resume_config, STOP,
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
    check_options(&config).with_context(|| format!("variant {}", variant.name))?;
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
    let flag_sets = pretrain_flag_sets(train);
    let quiet = train.quiet;
    let (mut base, dir) = if train.resume {
        let (config, out) = resume_config(&train.job, flag_sets, "comparison")?;
        (config, RunDir::create(&out, Existing::Resume)?)
    } else {
        let config = resolve_config(&train.job, flag_sets)?;
        let dir = create_run(&train.job, "compare", &config)?;
        (config, dir)
    };
    check_options(&base)?;
    // One prepared corpus, so every variant reads the same sequences in the
    // same order.
    let prepared = open_corpus(&mut base, &dir.path, quiet)?;
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
    install_stop_handler()?;
    for (variant, config) in variants.iter().zip(&configs) {
        let path = dir.path.join(&variant.name);
        let resume = match progress_of(&path, config, prepared.manifest.seq_len)? {
            Progress::Done => {
                if !quiet {
                    eprintln!("{}: finished earlier, skipped", variant.name);
                }
                continue;
            }
            Progress::Partial => true,
            Progress::Fresh => false,
        };
        let run = if resume {
            RunDir::create(&path, Existing::Resume)?
        } else {
            RunDir::create(&path, Existing::Overwrite)?
        };
        run.write_config(config)?;
        if resume {
            run.append_resumed_provenance()?;
        } else {
            run.write_provenance()?;
        }
        if !quiet {
            let how = if resume { "resuming" } else { "training" };
            eprintln!("\n{how} variant {} in {}", variant.name, run.path.display());
        }
        let options = Options {
            resume,
            verbose: !quiet,
            stop: &STOP,
        };
        let summary = brisk::runtime::on_pool(|| pretrain(config, &prepared, &run.path, &options))?;
        if !quiet {
            print_summary(&summary, &run.path);
        }
        if summary.ending == Ending::Interrupted {
            println!(
                "comparison interrupted; continue with:  brisk compare --out {} --resume",
                dir.path.display()
            );
            return Ok(());
        }
    }
    let records = variants
        .iter()
        .map(|v| RunRecord::open(&dir.path.join(&v.name)))
        .collect::<brisk::Result<Vec<_>>>()?;
    let comparison = Comparison::of(&records);
    let table = comparison.markdown();
    brisk::run::write_atomic(&dir.path.join("comparison.md"), table.as_bytes())?;
    brisk::run::write_json(&dir.path.join("comparison.json"), &comparison)?;
    let page = dir.path.join("report.html");
    report::write(&records, &page)?;
    println!("\n{table}");
    println!("report: {}", page.display());
    Ok(())
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
