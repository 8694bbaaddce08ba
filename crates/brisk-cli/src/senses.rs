//! `brisk senses ...`: Word2Sense sparse sense embeddings (Panigrahi et
//! al., 2019): train the LDA over word documents from raw text, then read
//! a word's senses, a sense's words, similar words, a word's senses in a
//! context (WordCtx2Sense), export the vectors and evaluate them.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::pretrain::{install_stop_handler, STOP};
use crate::tag::{data_dir, WordRunFlags};
use crate::{init_threads, usage};
use brisk::run;
use brisk::senses::context::InferConfig;
use brisk::senses::model::SensesModel;
use brisk::senses::train::{self, SensesConfig, SensesData, TrainOptions};
use brisk::senses::vectors::Sparse;
use brisk::senses::{eval, pseudo};

#[derive(Debug, Subcommand)]
pub enum SensesCommand {
    /// Count word-context co-occurrences in text and train the LDA whose
    /// topics are the senses.
    Train(SensesTrainArgs),
    /// A word's senses: weight and top context words of each.
    Show(ShowArgs),
    /// A merged sense's most probable context words.
    Sense(SenseArgs),
    /// The words whose vectors are closest to a word's (−JS divergence).
    Similar(SimilarArgs),
    /// WordCtx2Sense: the senses of a word that its context supports.
    Infer(InferArgs),
    /// Write the vectors in the word2vec text format (sparse or dense).
    Export(ExportArgs),
    /// Word similarity on every set of a folder, pseudo-word disambiguation
    /// (runs trained with `pseudo.pairs`), and a word-intrusion quiz.
    Eval(EvalArgs),
}

/// The trained run every reading command takes.
#[derive(Debug, Args)]
pub struct ModelFlags {
    /// A finished `brisk senses train` run directory.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    pub word: String,
    /// Senses shown, heaviest first (0: all of the vector's).
    #[arg(long, default_value_t = 10)]
    pub senses: usize,
    /// Context words shown per sense.
    #[arg(long, default_value_t = 8)]
    pub words: usize,
    #[command(flatten)]
    pub model: ModelFlags,
}

#[derive(Debug, Args)]
pub struct SenseArgs {
    /// The merged sense's number (as `show` prints it).
    pub sense: usize,
    #[arg(long, default_value_t = 20)]
    pub words: usize,
    #[command(flatten)]
    pub model: ModelFlags,
}

#[derive(Debug, Args)]
pub struct SimilarArgs {
    pub word: String,
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    #[command(flatten)]
    pub model: ModelFlags,
}

#[derive(Debug, Args)]
pub struct InferArgs {
    /// The word whose senses are wanted.
    #[arg(long)]
    pub word: String,
    /// The context, as text (split on whitespace; case ignored).
    #[arg(required = true, num_args = 1..)]
    pub context: Vec<String>,
    /// Senses shown, heaviest first.
    #[arg(long, default_value_t = 5)]
    pub senses: usize,
    /// Context words shown per sense.
    #[arg(long, default_value_t = 8)]
    pub words: usize,
    /// Override a WordCtx2Sense constant, e.g. --set lambda=0.1 (fields of
    /// [infer]: lambda, iterations, lipschitz, retries, sif).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    #[command(flatten)]
    pub model: ModelFlags,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The file to write (word2vec text format, `count dimensions` header).
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    /// `sparse` (`word index:value ...`, indices from 0) or `dense`.
    #[arg(long, default_value = "sparse")]
    pub format: String,
    /// The raw K-dimensional vectors instead of the merged ones.
    #[arg(long)]
    pub raw: bool,
    /// Overwrite the file if it exists.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub model: ModelFlags,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Similarity sets (`word word score` per line, *.txt) [default:
    /// <data-dir>/word-sim].
    #[arg(long, value_name = "DIR")]
    pub word_sim: Option<PathBuf>,
    /// Word-intrusion questions to write (0: none).
    #[arg(long, default_value_t = 50)]
    pub quiz: usize,
    /// Seeds the quiz's senses, intruders and word order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where the results go [default: <model>/eval].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Where the built-in data is [default: $BRISK_SHARED_DIR/data, else ../shared/data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelFlags,
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
        SensesCommand::Show(args) => show(args),
        SensesCommand::Sense(args) => sense(args),
        SensesCommand::Similar(args) => similar(args),
        SensesCommand::Infer(args) => infer(args),
        SensesCommand::Export(args) => export(args),
        SensesCommand::Eval(args) => evaluate(args),
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

fn load(flags: &ModelFlags) -> anyhow::Result<SensesModel> {
    init_threads(flags.threads)?;
    Ok(brisk::runtime::on_pool(|| SensesModel::load(&flags.model))?)
}

/// `word:probability` for a sense's first `n` words.
fn sense_line(model: &SensesModel, sense: usize, n: usize) -> String {
    model
        .sense_words(sense, n)
        .iter()
        .map(|&(w, p)| format!("{} {:.3}", model.word(w), p))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The heaviest `n` entries of a sparse vector (0: all), heaviest first.
fn heaviest(v: &Sparse, n: usize) -> Vec<(u32, f32)> {
    let mut v = v.clone();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if n > 0 {
        v.truncate(n);
    }
    v
}

fn show(args: ShowArgs) -> anyhow::Result<()> {
    let model = load(&args.model)?;
    let w = model.word_id(&args.word)?;
    let vector = model.vector(w);
    println!(
        "{} (count {}): {} of {} senses non-zero",
        model.word(w),
        model.vocab[w as usize].1,
        vector.len(),
        model.clusters.count
    );
    for (sense, weight) in heaviest(&vector, args.senses) {
        println!(
            "  sense {sense:>5}  {weight:.3}  {}",
            sense_line(&model, sense as usize, args.words)
        );
    }
    Ok(())
}

fn sense(args: SenseArgs) -> anyhow::Result<()> {
    let model = load(&args.model)?;
    if args.sense >= model.clusters.count {
        return Err(usage(&format!(
            "sense {} does not exist: {} has senses 0 to {}",
            args.sense,
            args.model.model.display(),
            model.clusters.count - 1
        )));
    }
    println!(
        "sense {} (prior {:.5}, {} of the {} LDA topics merged into it)",
        args.sense,
        model.clusters.prior[args.sense],
        model
            .clusters
            .of_sense
            .iter()
            .filter(|&&c| c as usize == args.sense)
            .count(),
        model.estimates.topics
    );
    for (w, p) in model.sense_words(args.sense, args.words) {
        println!("  {:<20} {p:.4}", model.word(w));
    }
    Ok(())
}

fn similar(args: SimilarArgs) -> anyhow::Result<()> {
    let model = load(&args.model)?;
    let w = model.word_id(&args.word)?;
    let vectors = brisk::runtime::on_pool(|| model.vectors());
    println!(
        "closest to {} (−JS divergence; 0 is identical):",
        model.word(w)
    );
    for (other, score) in model.similar(w, &vectors, args.top) {
        println!("  {:<20} {score:.4}", model.word(other));
    }
    Ok(())
}

fn infer(args: InferArgs) -> anyhow::Result<()> {
    let config: InferConfig = brisk::config::layered(&InferConfig::default(), None, &args.set)?;
    let model = load(&args.model)?;
    let w = model.word_id(&args.word)?;
    let text = args.context.join(" ").to_lowercase();
    let context: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || (c.is_ascii_punctuation() && c != '\'' && c != '-'))
        .filter(|t| !t.is_empty())
        .collect();
    let found = model.infer(w, &context, &config)?;
    if found.known == 0 {
        eprintln!("no context word is in the vocabulary: the answer is the word's prior");
    }
    println!(
        "{} in this context ({} context words used, {} unknown; log-likelihood {:.3} -> {:.3}):",
        model.word(w),
        found.known,
        found.unknown,
        found.objective[0],
        found.objective.last().copied().unwrap_or(f64::NAN)
    );
    let prior = model.merge(&model.raw_vector(w));
    for (sense, weight) in heaviest(&found.merged, args.senses) {
        let before = prior.iter().find(|e| e.0 == sense).map_or(0.0, |e| e.1);
        println!(
            "  sense {sense:>5}  {weight:.3} (prior {before:.3})  {}",
            sense_line(&model, sense as usize, args.words)
        );
    }
    Ok(())
}

fn export(args: ExportArgs) -> anyhow::Result<()> {
    let dense = match args.format.as_str() {
        "sparse" => false,
        "dense" => true,
        other => {
            return Err(usage(&format!(
                "--format {other:?}: expected sparse or dense"
            )))
        }
    };
    if args.output.exists() && !args.force {
        return Err(usage(&format!(
            "{} exists; --force overwrites it",
            args.output.display()
        )));
    }
    let model = load(&args.model)?;
    let (vectors, dim) = brisk::runtime::on_pool(|| {
        if args.raw {
            let v: Vec<Sparse> = (0..model.vocab.len() as u32)
                .map(|w| model.raw_vector(w))
                .collect();
            (v, model.estimates.topics)
        } else {
            (model.vectors(), model.clusters.count)
        }
    });
    let words: Vec<&str> = model.vocab.iter().map(|(w, _)| w.as_str()).collect();
    brisk::senses::vectors::write_word2vec(&args.output, &words, &vectors, dim, dense)?;
    println!(
        "wrote {} {} vectors of {} dimensions to {}",
        words.len(),
        if dense { "dense" } else { "sparse" },
        dim,
        args.output.display()
    );
    Ok(())
}

fn evaluate(args: EvalArgs) -> anyhow::Result<()> {
    let model = load(&args.model)?;
    let sets = args
        .word_sim
        .clone()
        .unwrap_or_else(|| data_dir(args.data_dir.as_deref()).join("word-sim"));
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.model.model.join("eval"));
    std::fs::create_dir_all(&out).map_err(|e| brisk::Error::io(&out, e))?;
    let vectors = brisk::runtime::on_pool(|| model.vectors());
    let results = eval::word_similarity(&model, &vectors, &sets)?;
    println!(
        "{:<22} {:>7} {:>7} {:>9}",
        "set", "pairs", "found", "spearman"
    );
    for r in &results {
        println!(
            "{:<22} {:>7} {:>7} {:>9}",
            r.set,
            r.pairs,
            r.found,
            r.spearman.map_or("-".into(), |s| format!("{s:.3}"))
        );
    }
    run::write_json(&out.join("word_similarity.json"), &results)?;
    let test_path = args.model.model.join(pseudo::TEST_FILE);
    if test_path.exists() {
        let test: pseudo::PseudoTest = run::read_json(&test_path)?;
        let scores =
            brisk::runtime::on_pool(|| pseudo::score(&model, &test, &InferConfig::default()))?;
        println!(
            "\npseudo-word disambiguation ({} pairs; the second half of each pair's instances):",
            test.pairs.len()
        );
        println!(
            "{:<28} {:>9} {:>9} {:>9} {:>14}",
            "pseudo-word", "instances", "heaviest", "raised", "most frequent"
        );
        for s in &scores {
            println!(
                "{:<28} {:>9} {:>9.3} {:>9.3} {:>14.3}",
                s.pseudo, s.instances, s.accuracy, s.raised_accuracy, s.most_frequent
            );
        }
        run::write_json(&out.join("pseudo_words.json"), &scores)?;
    }
    if args.quiz > 0 {
        let quiz = eval::intrusion_quiz(&model, args.quiz, args.seed)?;
        eval::write_quiz(&out, &quiz)?;
        println!(
            "word intrusion: {} questions in {}, answers in {}",
            quiz.len(),
            out.join("quiz.tsv").display(),
            out.join("answers.tsv").display()
        );
    }
    println!("results in {}", out.display());
    Ok(())
}
