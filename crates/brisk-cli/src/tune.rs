//! `brisk finetune`, `brisk eval` and `brisk predict`: the fine-tuning
//! recipes of `--lr` and `--seeds`, their run directories, and the tables
//! of dev scores.

use crate::args::{EvalArgs, FinetuneArgs, PredictArgs, TuningArgs};
use crate::{init_threads, refuse_existing, usage};
use brisk::run::{self, Existing, RunDir};
use brisk::tasks::{Recipe, SeedResult, Task};

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
pub(crate) fn glue_dir(flag: Option<&std::path::Path>) -> std::path::PathBuf {
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
    // Refused before any run directory exists.
    brisk::model::device::open(&args.device)?;
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
            from_scratch: args.from_scratch,
            device: args.device.clone(),
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

pub(crate) fn finetune(args: FinetuneArgs) -> anyhow::Result<()> {
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

pub(crate) fn eval(args: EvalArgs) -> anyhow::Result<()> {
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

pub(crate) fn predict(args: PredictArgs) -> anyhow::Result<()> {
    init_threads(args.threads)?;
    refuse_existing(args.out.as_deref(), args.force)?;
    let device = brisk::model::device::open(&args.device)?;
    let predictor = brisk::tasks::predict::Predictor::load(&args.model, device)?;
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
