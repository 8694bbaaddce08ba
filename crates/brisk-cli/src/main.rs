//! The `brisk` command line: raw flags and TOML are resolved into a checked
//! config here, then handed to the library.

mod ace;
mod args;
mod check;
mod compare;
mod dist;
mod landscape;
mod pretrain;
mod senses;
mod tag;
mod tune;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use args::{
    Cli, Command, CorpusCommand, DetectArgs, EmbedArgs, ExportArgs, FillMaskArgs, GenerateArgs,
    JobArgs, PrepareArgs,
};
use brisk::config::{self, Config, ConfigSource};
use brisk::corpus::{self, generated, Input};
use brisk::run::{self, Existing, RunDir};
use brisk::tasks::word_tasks::WordTaskKind;

fn main() -> ExitCode {
    brisk::runtime::keep_freed_memory();
    brisk::runtime::exit_quietly_on_closed_pipe();
    let cli = Cli::parse();
    let outcome = dist::init().and_then(|()| dispatch(cli));
    match outcome {
        Ok(()) => {
            dist::finish();
            ExitCode::SUCCESS
        }
        Err(err) => {
            let usage = err
                .downcast_ref::<brisk::Error>()
                .is_some_and(brisk::Error::is_usage);
            // Usage errors are the same on every rank: rank 0 says it.
            match dist::rank() {
                0 => eprintln!("error: {err:#}"),
                r if !usage => eprintln!("error on rank {r}: {err:#}"),
                _ => {}
            }
            // A command that failed before doing any work leaves nothing
            // behind, so the corrected command can reuse its --out.
            for dir in run::discard_unfinished() {
                eprintln!("removed the unfinished run directory {}", dir.display());
            }
            let code = if usage { 2 } else { 1 };
            if usage && dist::rank() != 0 {
                // Rank 0 found the same mistake: let it say so and end the
                // job; end it here only if it does not.
                std::thread::sleep(std::time::Duration::from_secs(5));
            }
            dist::fail(code);
            ExitCode::from(code)
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    if !matches!(cli.command, Command::Pretrain(_) | Command::Compare(_)) {
        // The subcommand as typed (the first argument: brisk has no global flags).
        let name = std::env::args().nth(1).unwrap_or_default();
        dist::one_process_only(&name)?;
    }
    match cli.command {
        Command::Pretrain(args) => pretrain::pretrain(args),
        Command::FillMask(args) => fill_mask(args),
        Command::Detect(args) => detect(args),
        Command::Embed(args) => embed(args),
        Command::Export(args) => export(args),
        Command::Finetune(args) => tune::finetune(args),
        Command::Eval(args) => tune::eval(args),
        Command::Compare(args) => compare::compare(args),
        Command::Report(args) => compare::report(args),
        Command::Check(args) => check::check(args),
        Command::Predict(args) => tune::predict(args),
        Command::Ace(args) => ace::ace(args),
        Command::Senses { command } => senses::run_command(command),
        Command::Landscape { command } => landscape::run_command(command),
        Command::Tag { command } => tag::run_command(WordTaskKind::Tagging, command),
        Command::Parse { command } => tag::run_command(WordTaskKind::Parsing, command),
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
pub(crate) fn open_run(job: &JobArgs, command: &str, config: &Config) -> anyhow::Result<RunDir> {
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

pub(crate) fn refuse_existing(out: Option<&std::path::Path>, force: bool) -> anyhow::Result<()> {
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
        config.objective.learned_generator(),
        &config.objective.exit_layers,
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
    let encoder = Encoder::load_on(&args.model, brisk::model::device::open(&args.device)?)?;
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
