//! `brisk landscape compare-starts`: Hao et al.'s headline experiment in
//! one command. Fine-tunes from a pre-trained model and from a random
//! initialisation of the same architecture (same recipe and seed), runs the
//! line, trajectory and sharpness views on each, and draws the two side by
//! side on one colour scale. Every finished step is kept, so `--resume`
//! continues an interrupted comparison.

use std::path::{Path, PathBuf};

use clap::Args;

use super::{
    line, sharpness_command, trajectory, LineArgs, SharpnessArgs, TrajectoryArgs, ViewFlags,
};
use crate::usage;
use brisk::landscape::draw::{self, ColourScale, Panel, Track};
use brisk::landscape::grid::Grid;
use brisk::landscape::report;
use brisk::plot::{line_chart, Series, PALETTE};
use brisk::run::{self, read_json, RunDir};
use brisk::tasks::{Recipe, Task};

#[derive(Debug, Args)]
pub struct CompareStartsArgs {
    /// The pre-trained model: a HF BERT checkpoint or a `brisk pretrain` run.
    #[arg(long, value_name = "M")]
    pub model: PathBuf,
    /// Peak learning rate of both fine-tunings.
    #[arg(long, default_value_t = 2e-5)]
    pub lr: f64,
    /// Learning rate from the random start [default: --lr].
    #[arg(long)]
    pub scratch_lr: Option<f64>,
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 128)]
    pub max_len: usize,
    /// Use only the first N training examples for fine-tuning.
    #[arg(long, value_name = "N")]
    pub max_train: Option<usize>,
    /// Checkpoints saved per fine-tuning (the trajectory's points).
    #[arg(long, default_value_t = 12)]
    pub checkpoints: u64,
    /// Seed of both fine-tunings (head initialisation, order, dropout).
    #[arg(long, default_value_t = 1)]
    pub finetune_seed: u64,
    /// Points per axis of the trajectory surfaces.
    #[arg(long, default_value_t = 21)]
    pub grid: usize,
    /// Points of the lines from start to end.
    #[arg(long, default_value_t = 21)]
    pub points: usize,
    /// Power iterations of the sharpness measurement.
    #[arg(long, default_value_t = 20)]
    pub iterations: usize,
    #[command(flatten)]
    pub view: ViewFlags,
}

/// The range of α of both lines.
const LINE_RANGE: &str = "-0.5:1.5";

/// The two starts: folder name, caption, whether random.
const STARTS: [(&str, &str, bool); 2] = [
    ("pretrained", "pre-trained start", false),
    ("scratch", "random start", true),
];

pub(crate) fn compare_starts(args: CompareStartsArgs) -> anyhow::Result<()> {
    let v = &args.view;
    if v.run.is_some() {
        return Err(usage(
            "compare-starts fine-tunes its own runs from --model; --run is not used",
        ));
    }
    let task_name = v
        .task
        .clone()
        .ok_or_else(|| usage("compare-starts needs --task"))?;
    if args.epochs == 0 || args.batch_size == 0 || args.checkpoints == 0 {
        return Err(usage(
            "--epochs, --batch-size and --checkpoints must be at least 1",
        ));
    }
    super::parse_alpha_axis(LINE_RANGE, args.points)?;
    super::init_threads_once(v.threads)?;
    let task = Task::resolve(&task_name, &crate::tune::glue_dir(v.glue_dir.as_deref()))?;
    brisk::encoder::Pretrained::open(&args.model)?;
    let out = v
        .out
        .clone()
        .unwrap_or_else(|| run::default_run_path("landscape-compare-starts", &task.spec.name));
    let dir = RunDir::create(&out, super::existing(v))?;
    dir.write_provenance()?;
    let started = std::time::Instant::now();
    let mut rows = Vec::new();
    for (name, caption, scratch) in STARTS {
        let tuned = fine_tune(&args, &task, &dir.path, name, scratch)?;
        let flags = |view: &str| {
            let out = dir.path.join(format!("{name}-{view}"));
            ViewFlags {
                run: Some(tuned.clone()),
                resume: out.exists(),
                out: Some(out),
                force: false,
                ..v.clone()
            }
        };
        let done = |view: &str| dir.path.join(format!("{name}-{view}/view.json")).exists();
        // Ctrl-C: the view saved its grid; stop here, to be resumed.
        let stopped = || {
            let stop = super::STOP.load(std::sync::atomic::Ordering::SeqCst);
            if stop {
                eprintln!(
                    "stopped; continue with the same command and --resume --out {}",
                    dir.path.display()
                );
            }
            stop
        };
        if !done("line") {
            line(LineArgs {
                from: None,
                to: None,
                range: LINE_RANGE.into(),
                points: args.points,
                view: flags("line"),
            })?;
        }
        if stopped() {
            return Ok(());
        }
        if !done("trajectory") {
            trajectory(TrajectoryArgs {
                plane: "pca".into(),
                other: None,
                grid: args.grid,
                margin: 0.25,
                view: flags("trajectory"),
            })?;
        }
        if stopped() {
            return Ok(());
        }
        if !done("sharpness") {
            sharpness_command(SharpnessArgs {
                at: None,
                iterations: args.iterations,
                epsilon: 1e-3,
                fd_step: 1e-3,
                ascent_steps: 10,
                view: flags("sharpness"),
            })?;
        }
        if stopped() {
            return Ok(());
        }
        rows.push(summary_row(&dir.path, name, caption, &tuned)?);
    }
    draw_comparison(&dir.path, &task.spec.name)?;
    let summary = serde_json::json!({
        "model": args.model,
        "task": task.spec.name,
        "starts": rows,
        "wall_s": started.elapsed().as_secs_f64(),
    });
    run::write_json(&dir.path.join("summary.json"), &summary)?;
    let header: Vec<String> = std::iter::once(String::new())
        .chain(STARTS.iter().map(|(_, caption, _)| caption.to_string()))
        .collect();
    let table: Vec<Vec<String>> = [
        "dev",
        "best_epoch",
        "steps",
        "train_loss_start",
        "train_loss_end",
        "dev_loss_end",
        "distance",
        "top_eigenvalue",
        "epsilon_sharpness",
        "pca_explained",
    ]
    .iter()
    .map(|key| {
        let name = match *key {
            "dev" => format!(
                "dev {} (best epoch)",
                rows[0]["metric"].as_str().unwrap_or("")
            ),
            "distance" => "‖θ_end − θ_start‖".to_string(),
            "pca_explained" => "variance explained by the PCA plane".to_string(),
            other => other.replace('_', " "),
        };
        std::iter::once(name)
            .chain(rows.iter().map(|r| shown(&r[*key])))
            .collect()
    })
    .collect();
    report::write_table(
        &dir.path,
        &format!(
            "Pre-trained against random start: {} on {}",
            args.model.display(),
            task.spec.name
        ),
        &header,
        &table,
    )?;
    for row in &rows {
        println!(
            "{:<11} dev {} {:.4}  top Hessian eigenvalue {:.4}  ε-sharpness {:.4}",
            row["start"].as_str().unwrap_or_default(),
            row["metric"].as_str().unwrap_or_default(),
            row["dev"].as_f64().unwrap_or(f64::NAN),
            row["top_eigenvalue"].as_f64().unwrap_or(f64::NAN),
            row["epsilon_sharpness"].as_f64().unwrap_or(f64::NAN),
        );
    }
    println!("report: {}", dir.path.join("report.html").display());
    Ok(())
}

/// A number with five significant digits; arrays as comma-separated lists.
fn shown(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => format!("{:.5}", n.as_f64().unwrap_or(0.0)),
        serde_json::Value::Array(items) => items.iter().map(shown).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// Fine-tunes one start into `root/name` unless a finished one is there.
fn fine_tune(
    args: &CompareStartsArgs,
    task: &Task,
    root: &Path,
    name: &str,
    scratch: bool,
) -> anyhow::Result<PathBuf> {
    let out = root.join(name);
    if out.join("result.json").exists() {
        return Ok(out);
    }
    if out.exists() {
        std::fs::remove_dir_all(&out).map_err(|e| brisk::Error::io(&out, e))?;
    }
    std::fs::create_dir_all(&out).map_err(|e| brisk::Error::io(&out, e))?;
    let train = brisk::tasks::data::read_split(&task.spec, &task.train)?.len();
    let train = args.max_train.map_or(train, |m| m.min(train));
    let steps = (train.div_ceil(args.batch_size) * args.epochs) as u64;
    let recipe = Recipe {
        learning_rate: if scratch {
            args.scratch_lr.unwrap_or(args.lr)
        } else {
            args.lr
        },
        epochs: args.epochs,
        batch_size: args.batch_size,
        max_len: args.max_len,
        max_train: args.max_train.unwrap_or(0),
        save_every: (steps / args.checkpoints).max(1),
        from_scratch: scratch,
        ..Recipe::default()
    };
    let quiet = args.view.quiet;
    if !quiet {
        eprintln!("fine-tuning from the {name} start ({steps} steps)");
    }
    let result = brisk::runtime::on_pool(|| {
        brisk::tasks::finetune(&args.model, task, &recipe, args.finetune_seed, &out, |l| {
            if !quiet {
                eprintln!("  {l}");
            }
        })
    })?;
    run::write_json(&out.join("result.json"), &result)?;
    Ok(out)
}

/// One start's numbers, from its views' outputs.
fn summary_row(
    root: &Path,
    name: &str,
    caption: &str,
    tuned: &Path,
) -> anyhow::Result<serde_json::Value> {
    let result: serde_json::Value = read_json(&tuned.join("result.json"))?;
    let line: serde_json::Value = read_json(&root.join(format!("{name}-line/view.json")))?;
    let traj: serde_json::Value = read_json(&root.join(format!("{name}-trajectory/view.json")))?;
    let sharp: serde_json::Value = read_json(&root.join(format!("{name}-sharpness/view.json")))?;
    let metric = line["metric"].as_str().unwrap_or("accuracy").to_string();
    let grid: Grid = read_json(&root.join(format!("{name}-line/line.json")))?;
    let at = |measure: &str, alpha: f64| -> f64 {
        grid.measure(measure)
            .map_or(f64::NAN, |m| grid.at_x(m, alpha, 0))
    };
    let r = &sharp["details"]["result"];
    Ok(serde_json::json!({
        "start": name,
        "caption": caption,
        "metric": metric,
        "dev": result["dev"][&metric],
        "best_epoch": result["best_epoch"],
        "steps": result["steps"],
        "train_loss_start": at("train_loss", 0.0),
        "train_loss_end": at("train_loss", 1.0),
        "dev_loss_end": at("dev_loss", 1.0),
        "distance": line["details"]["distance"],
        "top_eigenvalue": r["top_eigenvalue"],
        "epsilon_sharpness": r["epsilon_sharpness"],
        "pca_explained": traj["details"]["plane_details"]["explained_variance"],
    }))
}

/// The lines of both starts on one chart, and their trajectories side by
/// side on one colour scale.
fn draw_comparison(root: &Path, task: &str) -> anyhow::Result<()> {
    let mut lines = Vec::new();
    let mut surfaces = Vec::new();
    for (name, caption, _) in STARTS {
        let grid: Grid = read_json(&root.join(format!("{name}-line/line.json")))?;
        lines.push((caption, grid));
        let grid: Grid = read_json(&root.join(format!("{name}-trajectory/trajectory.json")))?;
        let path: Vec<serde_json::Value> =
            read_json(&root.join(format!("{name}-trajectory/path.json")))?;
        let points: Vec<(f64, f64)> = path
            .iter()
            .map(|p| {
                (
                    p["x"].as_f64().unwrap_or(0.0),
                    p["y"].as_f64().unwrap_or(0.0),
                )
            })
            .collect();
        surfaces.push((caption, grid, points));
    }
    let metric = lines[0].1.measures[1]
        .trim_start_matches("train_")
        .to_string();
    for measure in ["loss", metric.as_str()] {
        let mut series = Vec::new();
        let mut names = Vec::new();
        for (caption, _) in &lines {
            for split in ["train", "dev"] {
                names.push(format!("{caption}, {split}"));
            }
        }
        let mut k = 0;
        for (i, (_, grid)) in lines.iter().enumerate() {
            for split in ["train", "dev"] {
                if let Some(m) = grid.measure(&format!("{split}_{measure}")) {
                    series.push(Series {
                        name: &names[k],
                        points: (0..grid.x.len())
                            .map(|ix| (grid.x[ix], grid.at(m, ix, 0)))
                            .filter(|p| p.1.is_finite())
                            .collect(),
                        color: PALETTE[2 * i + usize::from(split == "dev")],
                    });
                }
                k += 1;
            }
        }
        line_chart(
            &root.join(format!("compare-line-{measure}.svg")),
            &format!("{measure} from start (α = 0) to fine-tuned (α = 1), {task}"),
            "α",
            measure,
            &series,
            None,
        )?;
    }
    for split in ["train", "dev"] {
        let panels: Vec<Panel> = surfaces
            .iter()
            .filter_map(|(caption, grid, points)| {
                let m = grid.measure(&format!("{split}_loss"))?;
                Some(Panel {
                    title: format!("{caption}: {split} loss"),
                    x: grid.x.clone(),
                    y: grid.y.clone(),
                    z: grid.surface(m),
                    tracks: vec![Track {
                        name: "checkpoints".into(),
                        points: points.clone(),
                        color: draw::track_colour(0),
                    }],
                    marks: vec![
                        ("start".into(), points[0].0, points[0].1),
                        ("end".into(), 0.0, 0.0),
                    ],
                })
            })
            .collect();
        if panels.is_empty() {
            continue;
        }
        let scale = ColourScale::spanning(&panels);
        draw::surfaces_svg(
            &root.join(format!("compare-trajectory-{split}-loss.svg")),
            &format!("Fine-tuning trajectories on their PCA planes, {split} loss, {task}"),
            ("PCA direction 1", "PCA direction 2"),
            &format!("{split} loss"),
            &panels,
            scale,
        )?;
    }
    Ok(())
}
