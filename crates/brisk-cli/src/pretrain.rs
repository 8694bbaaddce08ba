//! `brisk pretrain`: flags and TOML to a resolved config, the run
//! directory (new or resumed), the training loop, and the summary it prints.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;

use crate::args::{JobArgs, PretrainArgs};
use crate::{create_run, init_threads, resolve_config, usage};
use brisk::config::Config;
use brisk::corpus::shards::PreparedCorpus;
use brisk::corpus::{self, Input};
use brisk::run::{Existing, RunDir};

/// Set by Ctrl-C or SIGTERM: the training loop finishes its step, writes a
/// checkpoint and returns.
pub(crate) static STOP: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C/SIGTERM handler (once per process: a command that
/// runs others, as `landscape compare-starts` does, may ask again).
pub(crate) fn install_stop_handler() -> anyhow::Result<()> {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            eprintln!("\nstopping now, without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step and writing a checkpoint (press Ctrl-C again to quit at once)");
    })
    .context("installing the Ctrl-C/SIGTERM handler")
}

/// With `--resume`: the config of the run (or comparison, `what`) in
/// `--out`, from its own `config.toml` plus `--set` and the budget flags;
/// and its directory.
pub(crate) fn resume_config(
    job: &JobArgs,
    flag_sets: Vec<String>,
    what: &str,
) -> anyhow::Result<(Config, std::path::PathBuf)> {
    let Some(out) = &job.out else {
        return Err(usage(&format!(
            "--resume needs --out DIR, the {what} to continue"
        )));
    };
    if job.config.is_some() || job.preset.is_some() {
        return Err(usage(&format!(
            "--resume continues with the {what}'s own config.toml: drop --config and --preset \
             (--set and the budget flags may still change it)"
        )));
    }
    let file = out.join("config.toml");
    if !file.exists() {
        return Err(usage(&format!(
            "--resume: {} is not a brisk {what} (it has no config.toml)",
            out.display()
        )));
    }
    let job = JobArgs {
        config: Some(file),
        ..job.clone()
    };
    Ok((resolve_config(&job, flag_sets)?, out.clone()))
}

/// The flags of `pretrain` that set config fields, as `--set` overrides.
pub(crate) fn pretrain_flag_sets(args: &PretrainArgs) -> Vec<String> {
    let mut sets = Vec::new();
    if let Some(seed) = args.job.seed {
        sets.push(format!("train.seed={seed}"));
    }
    // A budget flag replaces the config's budget instead of adding to it.
    if args.steps.is_some() || args.tokens.is_some() || args.budget.is_some() {
        sets.push(format!("train.steps={}", args.steps.unwrap_or(0)));
        sets.push(format!("train.tokens={}", args.tokens.unwrap_or(0)));
        let budget = args.budget.clone().unwrap_or_default();
        sets.push(format!("train.budget={budget}"));
    }
    if let Some(n) = args.eval_every {
        sets.push(format!("eval.every={n}"));
    }
    if let Some(n) = args.save_every {
        sets.push(format!("train.save_every={n}"));
    }
    if let Some(device) = &args.device {
        sets.push(format!("train.device={device}"));
    }
    sets
}

pub(crate) fn pretrain(args: PretrainArgs) -> anyhow::Result<()> {
    init_threads(args.job.threads)?;
    let quiet = args.quiet || crate::dist::rank() != 0;
    // Rank 0 resolves the config, opens (or creates) the run directory and
    // prepares the corpus; every rank then trains from what it decided.
    let mut opened = None;
    let (config_toml, run_path) = crate::dist::from_root(|| {
        let flag_sets = pretrain_flag_sets(&args);
        let (mut config, run) = if args.resume {
            let (config, out) = resume_config(&args.job, flag_sets, "run")?;
            brisk::train::pretrain::check_options(&config, crate::dist::group().world())?;
            (config, RunDir::create(&out, Existing::Resume)?)
        } else {
            let config = resolve_config(&args.job, flag_sets)?;
            brisk::train::pretrain::check_options(&config, crate::dist::group().world())?;
            let run = create_run(&args.job, "pretrain", &config)?;
            (config, run)
        };
        let prepared = open_corpus(&mut config, &run.path, args.quiet)?;
        run.write_config(&config)?;
        if args.resume {
            run.append_resumed_provenance()?;
        } else {
            run.write_provenance()?;
        }
        let shared = (config.to_toml(), run.path.clone());
        opened = Some((config, prepared));
        Ok(shared)
    })?;
    let (config, prepared) = match opened {
        Some(opened) => opened,
        None => rank_inputs(&config_toml, &run_path)?,
    };
    install_stop_handler()?;
    if !quiet {
        eprintln!("training in {}", run_path.display());
        let world = crate::dist::group().world();
        if world > 1 {
            eprintln!(
                "data-parallel over {world} ranks ({}): {} sequences per rank per micro-batch",
                crate::dist::group().engine(),
                config.train.batch_size / (world * config.train.grad_accum_steps.max(1))
            );
        }
    }
    let options = brisk::train::pretrain::Options {
        resume: args.resume,
        verbose: !quiet,
        stop: &STOP,
        collective: crate::dist::group(),
    };
    let summary = brisk::runtime::on_pool(|| {
        brisk::train::pretrain::pretrain(&config, &prepared, &run_path, &options)
    })?;
    if crate::dist::rank() == 0 {
        print_summary(&summary, &run_path);
    }
    Ok(())
}

/// What a rank other than 0 trains from: rank 0's resolved config and the
/// corpus it names (the built-in one in the run directory), which must be
/// at the same path on every machine.
pub(crate) fn rank_inputs(
    config_toml: &str,
    run: &std::path::Path,
) -> anyhow::Result<(Config, PreparedCorpus)> {
    let config: Config =
        toml::from_str(config_toml).context("reading the config rank 0 resolved")?;
    let dir = match config.data.corpus.as_str() {
        "" => run.join("corpus"),
        path => std::path::PathBuf::from(path),
    };
    let prepared = PreparedCorpus::open(&dir).with_context(|| {
        format!(
            "opening the corpus {} (every rank reads it at the path rank 0 uses)",
            dir.display()
        )
    })?;
    Ok((config, prepared))
}

/// The corpus a pre-training config names, or the built-in one, prepared
/// into `run/corpus` the first time; sets `model.vocab_size` to the corpus
/// vocabulary.
pub(crate) fn open_corpus(
    config: &mut Config,
    run: &std::path::Path,
    quiet: bool,
) -> anyhow::Result<PreparedCorpus> {
    let corpus_dir = if config.data.corpus.is_empty() {
        let dir = run.join("corpus");
        if !dir.join("manifest.json").exists() {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            if !quiet {
                eprintln!("preparing the built-in corpus in {}", dir.display());
            }
            corpus::prepare(
                &config.data,
                config.model.vocab_size,
                &Input::Generated,
                &dir,
                !quiet,
            )?;
        }
        dir
    } else {
        std::path::PathBuf::from(&config.data.corpus)
    };
    let prepared = PreparedCorpus::open(&corpus_dir)?;
    let vocab = prepared.manifest.tokenizer.vocab_size;
    if vocab != config.model.vocab_size {
        if !quiet {
            eprintln!("note: model.vocab_size set to {vocab}, the corpus vocabulary");
        }
        config.model.vocab_size = vocab;
    }
    if prepared.manifest.seq_len > config.model.max_position_embeddings {
        return Err(brisk::Error::Config(format!(
            "the corpus packs sequences of {} tokens, more than model.max_position_embeddings = {}",
            prepared.manifest.seq_len, config.model.max_position_embeddings
        ))
        .into());
    }
    Ok(prepared)
}

/// The one-screen summary at the end of a training session.
pub(crate) fn print_summary(s: &brisk::train::pretrain::Summary, run: &std::path::Path) {
    use brisk::train::pretrain::Ending;
    let val = s
        .final_val_loss
        .map_or("not evaluated".to_string(), |v| format!("{v:.3}"));
    println!();
    match s.ending {
        Ending::Finished => println!("pre-training finished: {}", run.display()),
        Ending::Interrupted => println!("pre-training interrupted: {}", run.display()),
    }
    println!("  steps            {}", s.steps);
    println!(
        "  tokens           {} ({:.2e} training FLOPs)",
        s.tokens, s.flops
    );
    println!(
        "  parameters       {} ({} kernels)",
        s.parameters, s.kernels
    );
    println!(
        "  wall clock       {:.1} s, {:.0} tokens/s this session",
        s.wall_s, s.tokens_per_s
    );
    println!("  training loss    {:.3}", s.final_loss);
    println!("  validation loss  {val}");
    println!(
        "  unigram entropy  {:.3} (a model that ignores context scores this)",
        s.unigram_entropy_nats
    );
    if let Some(margin) = s.final_val_margin {
        let exit = match s.plateau_exit_step {
            Some(step) => format!("off the plateau since step {step}"),
            None => format!(
                "still on the plateau (off at {})",
                brisk::train::pretrain::PLATEAU_MARGIN
            ),
        };
        println!("  below unigram    {margin:.3} nats: {exit}");
    }
    if let Some(acc) = s.final_val_accuracy {
        let bands: Vec<String> = s
            .final_val_accuracy_by_band
            .iter()
            .map(|(band, a)| format!("{band} {:.1}%", 100.0 * a))
            .collect();
        println!(
            "  masked accuracy  {:.1}% ({})",
            100.0 * acc,
            bands.join(", ")
        );
    }
    for (kind, p) in &s.probes {
        println!(
            "  probe {:<10} {:.1}% (chance {:.1}%, unigram guess {:.1}%; {} items); \
             minimal pairs {:.1}% of {} (50% without context)",
            kind.name(),
            100.0 * p.accuracy,
            100.0 * p.chance,
            100.0 * p.unigram,
            p.items,
            100.0 * p.paired,
            p.pairs
        );
    }
    if let Some(n) = &s.notes {
        println!(
            "  notes            {} rare words, {} with a note; {:.1}% of sequences hold one; \
             {:.1}% of occurrences read a note ({:.1}% mixed in, the rest masked)",
            n.band.words,
            n.written,
            100.0 * n.sequence_share,
            100.0 * n.read_share,
            100.0 * n.mixed_share
        );
    }
    println!("  checkpoint       {}", s.checkpoint.display());
    println!("  loss curve       {}", s.loss_plot.display());
    match s.ending {
        Ending::Finished if s.objective != "mlm" => println!(
            "try it:  brisk finetune --model {} --task rte   (its main model is the encoder)",
            run.display()
        ),
        Ending::Finished => println!(
            "try it:  brisk fill-mask --model {} \"text with a [MASK] in it\"",
            run.display()
        ),
        Ending::Interrupted => println!(
            "continue with:  brisk pretrain --out {} --resume",
            run.display()
        ),
    }
}
