//! The `brisk` command line: raw flags and TOML are resolved into a checked
//! config here, then handed to the library.

mod args;
mod compare;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Parser;

use args::{
    Cli, Command, CorpusCommand, DetectArgs, EmbedArgs, EvalArgs, ExportArgs, FillMaskArgs,
    FinetuneArgs, GenerateArgs, JobArgs, PredictArgs, PrepareArgs, PretrainArgs, TuningArgs,
};
use brisk::config::{self, Config, ConfigSource};
use brisk::corpus::shards::PreparedCorpus;
use brisk::corpus::{self, generated, Input};
use brisk::run::{self, Existing, RunDir};
use brisk::tasks::{Recipe, SeedResult, Task};

fn main() -> ExitCode {
    brisk::runtime::keep_freed_memory();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            // A command that failed before doing any work leaves nothing
            // behind, so the corrected command can reuse its --out.
            for dir in run::discard_unfinished() {
                eprintln!("removed the unfinished run directory {}", dir.display());
            }
            let usage = err
                .downcast_ref::<brisk::Error>()
                .is_some_and(brisk::Error::is_usage);
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Pretrain(args) => pretrain(args),
        Command::FillMask(args) => fill_mask(args),
        Command::Detect(args) => detect(args),
        Command::Embed(args) => embed(args),
        Command::Export(args) => export(args),
        Command::Finetune(args) => finetune(args),
        Command::Eval(args) => eval(args),
        Command::Compare(args) => compare::compare(args),
        Command::Report(args) => compare::report(args),
        Command::Predict(args) => predict(args),
        Command::Corpus {
            command: CorpusCommand::Prepare(args),
        } => corpus_prepare(args),
        Command::Corpus {
            command: CorpusCommand::Generate(args),
        } => corpus_generate(args),
    }
}

/// Sets the global thread pool from `--threads` (default: every core).
pub(crate) fn init_threads(threads: Option<usize>) -> anyhow::Result<()> {
    if let Some(n) = threads {
        if n == 0 {
            return Err(brisk::Error::Usage("--threads must be at least 1".into()).into());
        }
        // candle sizes its matrix-multiply parallelism from this variable
        // (as rayon does); set it before any thread starts.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    brisk::runtime::init_pool(threads).context("setting up the thread pool")
}

/// Resolves the config from preset, file, `--set` and command-specific flags
/// (which come last and so win).
pub(crate) fn resolve_config(job: &JobArgs, flag_sets: Vec<String>) -> anyhow::Result<Config> {
    let mut sets = job.set.clone();
    sets.extend(flag_sets);
    Ok(config::resolve(&ConfigSource {
        preset: job.preset.clone(),
        file: job.config.clone(),
        sets,
    })?)
}

/// Opens the run directory named by `--out` (or the default one) and records
/// the config and provenance in it.
fn open_run(job: &JobArgs, command: &str, config: &Config) -> anyhow::Result<RunDir> {
    let dir = create_run(job, command, config)?;
    dir.write_config(config)?;
    dir.write_provenance()?;
    Ok(dir)
}

/// Creates the run directory (refusing an existing one unless `--force`).
pub(crate) fn create_run(job: &JobArgs, command: &str, config: &Config) -> anyhow::Result<RunDir> {
    let path = job
        .out
        .clone()
        .unwrap_or_else(|| run::default_run_path(command, &config.preset));
    let existing = if job.force {
        Existing::Overwrite
    } else {
        Existing::Refuse
    };
    Ok(RunDir::create(&path, existing)?)
}

/// Set by Ctrl-C or SIGTERM: the training loop finishes its step, writes a
/// checkpoint and returns.
pub(crate) static STOP: AtomicBool = AtomicBool::new(false);

pub(crate) fn install_stop_handler() -> anyhow::Result<()> {
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
    sets
}

fn pretrain(args: PretrainArgs) -> anyhow::Result<()> {
    init_threads(args.job.threads)?;
    let flag_sets = pretrain_flag_sets(&args);
    let (mut config, run) = if args.resume {
        let (config, out) = resume_config(&args.job, flag_sets, "run")?;
        brisk::train::pretrain::check_options(&config)?;
        (config, RunDir::create(&out, Existing::Resume)?)
    } else {
        let config = resolve_config(&args.job, flag_sets)?;
        brisk::train::pretrain::check_options(&config)?;
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
    install_stop_handler()?;
    if !args.quiet {
        eprintln!("training in {}", run.path.display());
    }
    let options = brisk::train::pretrain::Options {
        resume: args.resume,
        verbose: !args.quiet,
        stop: &STOP,
    };
    let summary = brisk::runtime::on_pool(|| {
        brisk::train::pretrain::pretrain(&config, &prepared, &run.path, &options)
    })?;
    print_summary(&summary, &run.path);
    Ok(())
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

/// An output file that exists is refused unless `--force` was given.
fn refuse_existing(out: Option<&std::path::Path>, force: bool) -> anyhow::Result<()> {
    match out {
        Some(path) if path.exists() && !force => Err(usage(&format!(
            "{} already exists; pass --force to overwrite it",
            path.display()
        ))),
        _ => Ok(()),
    }
}

pub(crate) fn usage(message: &str) -> anyhow::Error {
    brisk::Error::Usage(message.to_string()).into()
}

fn corpus_prepare(args: PrepareArgs) -> anyhow::Result<()> {
    init_threads(args.job.threads)?;
    let mut flag_sets = Vec::new();
    if let Some(seed) = args.job.seed {
        flag_sets.push(format!("data.seed={seed}"));
    }
    if let Some(t) = &args.tokenizer {
        flag_sets.push(format!("data.tokenizer={}", t.display()));
    }
    if let Some(v) = args.vocab_size {
        flag_sets.push(format!("model.vocab_size={v}"));
    }
    let config = resolve_config(&args.job, flag_sets)?;
    let input = if args.input.is_empty() {
        Input::Generated
    } else {
        Input::Paths(args.input.clone())
    };
    let run = open_run(&args.job, "corpus", &config)?;
    eprintln!("preparing corpus in {}", run.path.display());
    let report = corpus::prepare(
        &config.data,
        config.model.vocab_size,
        &input,
        &run.path,
        !args.quiet,
    )?;
    run::write_json(&run.path.join("summary.json"), &report)?;
    println!(
        "{:.1} MB of text, {} documents, {} words ({} types) -> {} + {} sequences of {} tokens",
        report.text_bytes as f64 / 1e6,
        report.documents,
        report.words,
        report.word_types,
        report.train_sequences,
        report.validation_sequences,
        config.data.seq_len,
    );
    println!(
        "vocabulary {} WordPiece entries; unigram entropy {:.3} nats",
        report.vocab_size, report.unigram_entropy_nats
    );
    println!(
        "{:.2} s, {:.1} MB/s on {} threads; corpus in {}",
        report.seconds,
        report.mb_per_s,
        rayon::current_num_threads(),
        run.path.display()
    );
    Ok(())
}

fn fill_mask(args: FillMaskArgs) -> anyhow::Result<()> {
    let run = &args.model;
    let config = config::resolve(&ConfigSource {
        file: Some(run.join("config.toml")),
        ..Default::default()
    })?;
    if config.objective.kind != "mlm" {
        return Err(usage(&format!(
            "{} was pre-trained with objective.kind = {:?} and has no masked-LM head on its \
             main model (brisk detect reads an ELECTRA run)",
            run.display(),
            config.objective.kind
        )));
    }
    let tokenizer =
        corpus::tokenizer::load_tokenizer(&run.join("tokenizer.json"), config.data.lowercase)?;
    let mut params = brisk::model::Params::new(candle_core::Device::Cpu, candle_core::DType::F32);
    let model = brisk::model::BertForMaskedLm::new(&config.model, &mut params, 0)?;
    params.load(&brisk::train::checkpoint::latest_weights(run)?)?;
    let max_len = config.model.max_position_embeddings;
    let filled =
        brisk::pretrain::mlm::fill_mask(&model, &tokenizer, max_len, &args.text, args.top_k)?;
    for (i, candidates) in filled.iter().enumerate() {
        println!("[MASK] {}:", i + 1);
        for (token, p) in candidates {
            println!("  {p:>6.3}  {token}");
        }
    }
    Ok(())
}

fn detect(args: DetectArgs) -> anyhow::Result<()> {
    let run = &args.model;
    let config = config::resolve(&ConfigSource {
        file: Some(run.join("config.toml")),
        ..Default::default()
    })?;
    if config.objective.kind != "electra" {
        return Err(usage(&format!(
            "{} was pre-trained with objective.kind = {:?}; only ELECTRA runs have a \
             replaced-token detector",
            run.display(),
            config.objective.kind
        )));
    }
    let tokenizer =
        corpus::tokenizer::load_tokenizer(&run.join("tokenizer.json"), config.data.lowercase)?;
    let mut params = brisk::model::Params::new(candle_core::Device::Cpu, candle_core::DType::F32);
    let model = brisk::model::electra::Electra::new(
        &config.model,
        config.objective.generator_size,
        &mut params,
        0,
    )?;
    params.load(&brisk::train::checkpoint::latest_weights(run)?)?;
    let max_len = config.model.max_position_embeddings;
    let read =
        brisk::pretrain::electra::replaced_probabilities(&model, &tokenizer, max_len, &args.text)?;
    println!("p(replaced)  token");
    for (token, p) in read {
        println!("  {p:>6.3}  {token}");
    }
    Ok(())
}

/// The texts of `brisk embed`: the arguments, or the lines of `--input`
/// (a TAB makes a line a sentence pair).
fn embed_texts(args: &EmbedArgs) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let lines: Vec<String> = match &args.input {
        Some(path) => {
            if !args.text.is_empty() {
                return Err(usage("give texts as arguments or --input FILE, not both"));
            }
            let text = run::read_text(path)?;
            text.lines().map(str::to_string).collect()
        }
        None => args.text.clone(),
    };
    if lines.is_empty() {
        return Err(usage("nothing to encode: give texts, or --input FILE"));
    }
    Ok(lines
        .into_iter()
        .map(|l| match l.split_once('\t') {
            Some((a, b)) => (a.to_string(), Some(b.to_string())),
            None => (l, None),
        })
        .collect())
}

fn embed(args: EmbedArgs) -> anyhow::Result<()> {
    use brisk::encoder::{Encoder, Pooling, Text};
    init_threads(args.threads)?;
    let pooling = Pooling::from_name(&args.pooling)?;
    if args.batch_size == 0 {
        return Err(usage("--batch-size must be at least 1"));
    }
    refuse_existing(args.out.as_deref(), args.force)?;
    let texts = embed_texts(&args)?;
    let encoder = Encoder::load(&args.model)?;
    let mut lines = String::new();
    for chunk in texts.chunks(args.batch_size) {
        let inputs: Vec<Text> = chunk
            .iter()
            .map(|(a, b)| Text::of(a, b.as_deref()))
            .collect();
        let batch = encoder.tokenize(&inputs)?;
        let pooled = pooling.pool(&encoder.hidden_states(&batch)?, &batch)?;
        let vectors: Vec<Vec<f32>> = pooled.to_vec2()?;
        for (((a, b), v), n) in chunk.iter().zip(vectors).zip(&batch.lengths) {
            let text = match b {
                Some(b) => serde_json::json!([a, b]),
                None => serde_json::json!(a),
            };
            let row = serde_json::json!({ "text": text, "tokens": n, "vector": v });
            lines.push_str(&row.to_string());
            lines.push('\n');
        }
    }
    match &args.out {
        Some(path) => run::write_atomic(path, lines.as_bytes())?,
        None => print!("{lines}"),
    }
    Ok(())
}

/// A comma-separated list of numbers for `flag`.
fn number_list<T: std::str::FromStr>(flag: &str, text: &str) -> anyhow::Result<Vec<T>> {
    text.split(',')
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| usage(&format!("{flag} {text:?}: {v:?} is not a number")))
        })
        .collect()
}

/// The folder of the built-in GLUE tasks' files.
fn glue_dir(flag: Option<&std::path::Path>) -> std::path::PathBuf {
    match (flag, std::env::var_os("BRISK_SHARED_DIR")) {
        (Some(dir), _) => dir.to_path_buf(),
        (None, Some(shared)) => std::path::PathBuf::from(shared).join("data/glue"),
        (None, None) => std::path::PathBuf::from("../shared/data/glue"),
    }
}

/// The recipes (one per learning rate) and seeds of `--lr` and `--seeds`.
fn recipes(args: &TuningArgs) -> anyhow::Result<(Vec<Recipe>, Vec<u64>)> {
    let rates: Vec<f64> = number_list("--lr", &args.lr)?;
    let seeds: Vec<u64> = number_list("--seeds", &args.seeds)?;
    if rates.iter().any(|&r| !(r > 0.0 && r.is_finite())) {
        return Err(usage("--lr: learning rates must be positive"));
    }
    for (flag, value) in [("--epochs", args.epochs), ("--batch-size", args.batch_size)] {
        if value == 0 {
            return Err(usage(&format!("{flag} must be at least 1")));
        }
    }
    if !(args.layer_decay > 0.0 && args.layer_decay <= 1.0) {
        return Err(usage("--layer-decay must be in (0, 1]"));
    }
    if args.max_len < 3 {
        return Err(usage(
            "--max-len must leave room for [CLS] and [SEP] (at least 3)",
        ));
    }
    let notes = brisk::tasks::NotesMode::from_name(&args.notes)?;
    let recipes = rates
        .into_iter()
        .map(|lr| Recipe {
            learning_rate: lr,
            epochs: args.epochs,
            batch_size: args.batch_size,
            max_len: args.max_len,
            patience: args.patience,
            max_train: args.max_train.unwrap_or(0),
            save_every: args.save_every,
            layer_decay: args.layer_decay,
            notes,
            ..Recipe::default()
        })
        .collect();
    Ok((recipes, seeds))
}

/// The run directory of `finetune` or `eval`.
fn tuning_run(command: &str, name: &str, args: &TuningArgs) -> anyhow::Result<RunDir> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| run::default_run_path(command, name));
    let existing = if args.force {
        Existing::Overwrite
    } else {
        Existing::Refuse
    };
    let run = RunDir::create(&out, existing)?;
    run.write_provenance()?;
    Ok(run)
}

/// Fine-tunes `model` on `task` for every recipe and seed, each in its own
/// folder of `dir`, and writes `dir/results.json`.
fn tune_task(
    model: &std::path::Path,
    task: &Task,
    (recipes, seeds): &(Vec<Recipe>, Vec<u64>),
    dir: &std::path::Path,
    quiet: bool,
) -> anyhow::Result<Vec<SeedResult>> {
    let mut results = Vec::new();
    for recipe in recipes {
        let lr = recipe.learning_rate;
        for &seed in seeds {
            let run = dir.join(format!("lr-{lr:e}-seed-{seed}"));
            std::fs::create_dir_all(&run).map_err(|e| brisk::Error::io(&run, e))?;
            if !quiet {
                eprintln!("{}: learning rate {lr:e}, seed {seed}", task.spec.name);
            }
            let result = brisk::runtime::on_pool(|| {
                brisk::tasks::finetune(model, task, recipe, seed, &run, |line| {
                    if !quiet {
                        eprintln!("  {line}");
                    }
                })
            })?;
            results.push(result);
        }
    }
    brisk::tasks::finetune::write_results(&dir.join("results.json"), task, &results)?;
    Ok(results)
}

/// "mean ± std" of each metric over the best learning rate's seeds.
fn summary_line(task: &Task, results: &[SeedResult]) -> (f64, usize, Vec<(String, f64, f64)>) {
    let (lr, best) = brisk::tasks::finetune::best_learning_rate(task, results);
    let best: Vec<SeedResult> = best.into_iter().cloned().collect();
    let scores = brisk::tasks::finetune::summarise(&best)
        .into_iter()
        .map(|(m, (mean, std))| (m, mean, std))
        .collect();
    (lr, best.len(), scores)
}

fn finetune(args: FinetuneArgs) -> anyhow::Result<()> {
    let t = &args.tuning;
    init_threads(t.threads)?;
    let task = Task::resolve(&args.task, &glue_dir(t.glue_dir.as_deref()))?;
    let plan = recipes(t)?;
    // A model that does not load is reported before a run directory exists.
    brisk::encoder::Pretrained::open(&args.model)?;
    let run = tuning_run("finetune", &task.spec.name, t)?;
    let results = tune_task(&args.model, &task, &plan, &run.path, t.quiet)?;
    let (lr, seeds, scores) = summary_line(&task, &results);
    println!(
        "{} on dev, learning rate {lr:e}, {seeds} seed(s):",
        task.spec.name
    );
    for (metric, mean, std) in scores {
        println!("  {metric:<9} {mean:.4} ± {std:.4}");
    }
    println!("results: {}", run.path.join("results.json").display());
    Ok(())
}

fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let t = &args.tuning;
    init_threads(t.threads)?;
    let glue = glue_dir(t.glue_dir.as_deref());
    let tasks = args
        .tasks
        .split(',')
        .map(|name| Task::resolve(name.trim(), &glue))
        .collect::<brisk::Result<Vec<_>>>()?;
    let plan = recipes(t)?;
    // Every model is checked before any tuning starts.
    for model in &args.model {
        brisk::encoder::Pretrained::open(model)?;
    }
    let run = tuning_run("eval", "glue", t)?;
    if let [model] = &args.model[..] {
        // One model keeps the task folders at the top of the run.
        let scores = eval_model(model, &tasks, &plan, &run.path, t.quiet)?;
        write_eval(
            &run.path,
            &results_json(model, &scores),
            &task_table(&scores),
        )?;
        return Ok(());
    }
    let mut all = serde_json::Map::new();
    let mut rows = Vec::new();
    for (model, label) in args.model.iter().zip(model_labels(&args.model)) {
        let dir = run.path.join(&label);
        let scores = eval_model(model, &tasks, &plan, &dir, t.quiet)?;
        let (results, table) = (results_json(model, &scores), task_table(&scores));
        run::write_json(&dir.join("results.json"), &results)?;
        run::write_atomic(&dir.join("results.md"), table.as_bytes())?;
        println!("{label}:\n{table}");
        all.insert(label.clone(), results);
        rows.push((label, scores));
    }
    write_eval(
        &run.path,
        &serde_json::json!({ "models": all }),
        &joint_table(&rows),
    )
}

/// Writes an eval run's `results.json` and `results.md` and prints the table.
fn write_eval(
    dir: &std::path::Path,
    results: &serde_json::Value,
    table: &str,
) -> anyhow::Result<()> {
    run::write_json(&dir.join("results.json"), results)?;
    run::write_atomic(&dir.join("results.md"), table.as_bytes())?;
    print!("{table}");
    println!("results: {}", dir.join("results.json").display());
    Ok(())
}

/// One task's dev scores at its best learning rate: (metric, mean, std),
/// the task's leading metric (the one the learning rate is chosen by) first.
struct TaskScores {
    task: String,
    learning_rate: f64,
    seeds: usize,
    scores: Vec<(String, f64, f64)>,
}

/// A short, unique folder name per model: its directory's name, with the
/// position appended where two share one.
fn model_labels(models: &[std::path::PathBuf]) -> Vec<String> {
    let names: Vec<String> = models
        .iter()
        .map(|m| {
            m.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        })
        .collect();
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            if names.iter().filter(|m| *m == n).count() > 1 {
                format!("{n}-{}", i + 1)
            } else {
                n.clone()
            }
        })
        .collect()
}

/// Tunes `model` on every task, each in its folder of `dir`.
fn eval_model(
    model: &std::path::Path,
    tasks: &[Task],
    plan: &(Vec<Recipe>, Vec<u64>),
    dir: &std::path::Path,
    quiet: bool,
) -> anyhow::Result<Vec<TaskScores>> {
    let mut all = Vec::new();
    for task in tasks {
        let results = tune_task(model, task, plan, &dir.join(&task.spec.name), quiet)?;
        let (learning_rate, seeds, mut scores) = summary_line(task, &results);
        let first = &task.spec.metrics[0];
        scores.sort_by_key(|(m, _, _)| m != first);
        all.push(TaskScores {
            task: task.spec.name.clone(),
            learning_rate,
            seeds,
            scores,
        });
    }
    Ok(all)
}

fn results_json(model: &std::path::Path, scores: &[TaskScores]) -> serde_json::Value {
    let mut tasks = serde_json::Map::new();
    for t in scores {
        let dev: serde_json::Map<String, serde_json::Value> = t
            .scores
            .iter()
            .map(|(m, mean, std)| (m.clone(), serde_json::json!({ "mean": mean, "std": std })))
            .collect();
        tasks.insert(
            t.task.clone(),
            serde_json::json!({ "dev": dev, "seeds": t.seeds, "best_learning_rate": t.learning_rate }),
        );
    }
    serde_json::json!({ "model": model, "tasks": tasks })
}

/// One model's scores: a row per task and metric (dev, ×100).
fn task_table(scores: &[TaskScores]) -> String {
    let mut table = String::from("| task | metric | dev (mean ± std) | seeds | learning rate |\n");
    table.push_str("| --- | --- | ---: | ---: | ---: |\n");
    for t in scores {
        for (metric, mean, std) in &t.scores {
            table.push_str(&format!(
                "| {} | {metric} | {:.2} ± {:.2} | {} | {:e} |\n",
                t.task,
                100.0 * mean,
                100.0 * std,
                t.seeds,
                t.learning_rate
            ));
        }
    }
    table
}

/// Models as rows, each task's leading metric as a column (dev, mean ± std
/// over the seeds, ×100), and the mean of those task means.
fn joint_table(rows: &[(String, Vec<TaskScores>)]) -> String {
    let Some((_, first)) = rows.first() else {
        return String::new();
    };
    let headers: Vec<String> = first
        .iter()
        .map(|t| format!("{} {}", t.task, t.scores.first().map_or("", |s| &s.0)))
        .collect();
    let mut table = format!("| model | {} | mean |\n", headers.join(" | "));
    table.push_str(&format!(
        "| --- |{} ---: |\n",
        " ---: |".repeat(headers.len())
    ));
    for (label, scores) in rows {
        let leading: Vec<(f64, f64)> = scores
            .iter()
            .filter_map(|t| t.scores.first().map(|(_, m, s)| (*m, *s)))
            .collect();
        let cells: Vec<String> = leading
            .iter()
            .map(|(m, s)| format!("{:.2} ± {:.2}", 100.0 * m, 100.0 * s))
            .collect();
        let mean = leading.iter().map(|(m, _)| m).sum::<f64>() / leading.len().max(1) as f64;
        table.push_str(&format!(
            "| {label} | {} | {:.2} |\n",
            cells.join(" | "),
            100.0 * mean
        ));
    }
    table
}

fn predict(args: PredictArgs) -> anyhow::Result<()> {
    init_threads(args.threads)?;
    refuse_existing(args.out.as_deref(), args.force)?;
    let predictor = brisk::tasks::predict::Predictor::load(&args.model)?;
    let texts = brisk::tasks::data::read_texts(&predictor.task, &args.input)?;
    let predictions = brisk::runtime::on_pool(|| predictor.predict(&texts, args.batch_size))?;
    let mut text = String::from("index\tprediction\n");
    for (i, p) in predictions.iter().enumerate() {
        text.push_str(&format!("{i}\t{p}\n"));
    }
    match &args.out {
        Some(path) => run::write_atomic(path, text.as_bytes())?,
        None => print!("{text}"),
    }
    Ok(())
}

fn export(args: ExportArgs) -> anyhow::Result<()> {
    let class = brisk::hf::export_run(&args.run, &args.hf, args.force)?;
    println!(
        "wrote {} (load it with transformers.{class}.from_pretrained)",
        args.hf.display()
    );
    Ok(())
}

fn corpus_generate(args: GenerateArgs) -> anyhow::Result<()> {
    init_threads(args.threads)?;
    let defaults = config::Preset::Tiny.config().data;
    let words = args.words.unwrap_or(defaults.generated_words);
    let seed = args.seed.unwrap_or(defaults.seed);
    if words < 1000 {
        return Err(brisk::Error::Usage(format!("--words {words}: at least 1000")).into());
    }
    let text = generated::generate(words, seed);
    match &args.out {
        Some(path) => {
            refuse_existing(Some(path), args.force)?;
            run::write_atomic(path, text.as_bytes())?;
        }
        None => print!("{text}"),
    }
    if args.stats {
        let stats = generated::statistics(&text, seed);
        eprintln!("{}", serde_json::to_string_pretty(&stats)?);
    }
    Ok(())
}
