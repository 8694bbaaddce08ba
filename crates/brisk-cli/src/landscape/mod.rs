//! `brisk landscape ...`: loss landscapes of fine-tuning (Hao et al., 2019,
//! with Li et al.'s 2018 tools): a line between checkpoints, a plane,
//! a trajectory on a plane, layer-by-layer lines, and sharpness.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use clap::{Args, Subcommand};

mod compare_starts;

use crate::pretrain::{install_stop_handler, STOP};
use crate::{init_threads, usage};
use brisk::landscape::draw::{self, ColourScale, Panel, Track};
use brisk::landscape::grid::Grid;
use brisk::landscape::probe::{Objective, Probe, ProbeData, TunedRun};
use brisk::landscape::project::{self, Projected};
use brisk::landscape::report;
use brisk::landscape::sharpness::{sharpness, SharpnessSpec};
use brisk::landscape::space::{filter_normalised, BiasNorm, Point};
use brisk::landscape::views::{self, Axis, Sink};
use brisk::plot::{line_chart, Series, PALETTE};
use brisk::run::{self, Existing, RunDir};
use brisk::tasks::Task;

#[derive(Debug, Subcommand)]
pub enum LandscapeCommand {
    /// Loss and metric along the line from checkpoint A to checkpoint B.
    Line(LineArgs),
    /// Loss over a plane: two fine-tuning directions (Hao et al.) or two
    /// random filter-normalised ones (Li et al.).
    Plane(PlaneArgs),
    /// A run's checkpoints on a plane, drawn over its loss surface.
    Trajectory(TrajectoryArgs),
    /// Per layer: the fine-tuned model with only that layer moved along its
    /// own fine-tuning direction.
    Layers(LayersArgs),
    /// The top Hessian eigenvalue and ε-sharpness of the train loss.
    Sharpness(SharpnessArgs),
    /// Fine-tune from a pre-trained model and from a random initialisation
    /// of its architecture, then compare lines, trajectories and sharpness.
    CompareStarts(compare_starts::CompareStartsArgs),
}

/// What every view reads and where it writes.
#[derive(Debug, Clone, Args)]
pub struct ViewFlags {
    /// The fine-tuning run that gives the model's architecture, tokenizer
    /// and checkpoints: a `brisk finetune` run (its best seed) or one
    /// seed's folder [default: the run holding --to or --from].
    #[arg(long, value_name = "DIR")]
    pub run: Option<PathBuf>,
    /// Built-in task name or TOML task file [default: the run's task].
    #[arg(long, value_name = "T")]
    pub task: Option<String>,
    /// Where the built-in tasks' files are [default: $BRISK_SHARED_DIR/data/glue, else ../shared/data/glue].
    #[arg(long, value_name = "DIR")]
    pub glue_dir: Option<PathBuf>,
    /// Train examples evaluated (a seeded sample; 0: all) [default: 2000
    /// for line, 512 otherwise].
    #[arg(long, value_name = "N")]
    pub train_examples: Option<usize>,
    /// Dev examples evaluated (the first N; 0: all) [default: all for
    /// line, 512 otherwise].
    #[arg(long, value_name = "N")]
    pub dev_examples: Option<usize>,
    /// Evaluate the train subset only.
    #[arg(long)]
    pub no_dev: bool,
    /// Examples per evaluation batch.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub eval_batch_size: usize,
    /// Seed of the train sample and of random directions.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run directory [default: runs/landscape-<view>-<task>-<YYYYmmdd-HHMMSS>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Overwrite the run directory if it exists.
    #[arg(long)]
    pub force: bool,
    /// Continue the grid of an interrupted run in --out.
    #[arg(long, conflicts_with = "force")]
    pub resume: bool,
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct LineArgs {
    /// Start: a checkpoint, a fine-tuning run, or a pre-trained model
    /// [default: the run's step 0].
    #[arg(long, value_name = "A")]
    pub from: Option<PathBuf>,
    /// End [default: the run's best checkpoint].
    #[arg(long, value_name = "B")]
    pub to: Option<PathBuf>,
    /// Range of α, `LO:HI`.
    #[arg(long, default_value = "-0.5:1.5", allow_hyphen_values = true)]
    pub range: String,
    #[arg(long, default_value_t = 41)]
    pub points: usize,
    #[command(flatten)]
    pub view: ViewFlags,
}

#[derive(Debug, Args)]
pub struct PlaneArgs {
    /// A second fine-tuning run from the same pre-trained model (another
    /// seed or task): the plane of the two fine-tuning directions, centred
    /// at the run's start. Without it, two random filter-normalised
    /// directions around the run's best checkpoint.
    #[arg(long, value_name = "DIR")]
    pub other: Option<PathBuf>,
    /// Centre of a random plane [default: the run's best checkpoint].
    #[arg(long, value_name = "CKPT")]
    pub center: Option<PathBuf>,
    /// Random directions' biases and LayerNorm: ignore (zero) or copy (the
    /// centre's values).
    #[arg(long, default_value = "ignore")]
    pub bias_norm: String,
    /// Range of both coefficients, `LO:HI` [default: -1:1 random, -0.5:1.5 fine-tuning].
    #[arg(long, allow_hyphen_values = true)]
    pub range: Option<String>,
    /// Points per axis.
    #[arg(long, default_value_t = 21)]
    pub grid: usize,
    #[command(flatten)]
    pub view: ViewFlags,
}

#[derive(Debug, Args)]
pub struct TrajectoryArgs {
    /// The plane: pca (Li et al.: PCA of θ_t − θ_final) or finetune (Hao
    /// et al.: the run's and --other's fine-tuning directions, angles and
    /// norms kept).
    #[arg(long, default_value = "pca")]
    pub plane: String,
    /// The second run of a finetune plane.
    #[arg(long, value_name = "DIR")]
    pub other: Option<PathBuf>,
    /// Points per axis of the surface under the path.
    #[arg(long, default_value_t = 21)]
    pub grid: usize,
    /// Margin around the path, as a fraction of its extent.
    #[arg(long, default_value_t = 0.25)]
    pub margin: f64,
    #[command(flatten)]
    pub view: ViewFlags,
}

#[derive(Debug, Args)]
pub struct LayersArgs {
    /// Start of every layer's direction [default: the run's step 0].
    #[arg(long, value_name = "A")]
    pub from: Option<PathBuf>,
    /// The fine-tuned model [default: the run's best checkpoint].
    #[arg(long, value_name = "B")]
    pub to: Option<PathBuf>,
    /// Range of α (1: fine-tuned, 0: that layer back at its start), `LO:HI`.
    #[arg(long, default_value = "-0.5:1.5", allow_hyphen_values = true)]
    pub range: String,
    #[arg(long, default_value_t = 21)]
    pub points: usize,
    #[command(flatten)]
    pub view: ViewFlags,
}

#[derive(Debug, Args)]
pub struct SharpnessArgs {
    /// The checkpoint measured [default: the run's best].
    #[arg(long, value_name = "CKPT")]
    pub at: Option<PathBuf>,
    /// Power iterations at most.
    #[arg(long, default_value_t = 20)]
    pub iterations: usize,
    /// Keskar's ε: the box's half-width relative to |θ| + 1.
    #[arg(long, default_value_t = 1e-3)]
    pub epsilon: f64,
    /// Finite-difference step of Hessian-vector products.
    #[arg(long, default_value_t = 1e-3)]
    pub fd_step: f64,
    /// Ascent steps in the ε box.
    #[arg(long, default_value_t = 10)]
    pub ascent_steps: usize,
    #[command(flatten)]
    pub view: ViewFlags,
}

pub(crate) fn run_command(command: LandscapeCommand) -> anyhow::Result<()> {
    match command {
        LandscapeCommand::Line(args) => line(args),
        LandscapeCommand::Plane(args) => plane(args),
        LandscapeCommand::Trajectory(args) => trajectory(args),
        LandscapeCommand::Layers(args) => layers(args),
        LandscapeCommand::Sharpness(args) => sharpness_command(args),
        LandscapeCommand::CompareStarts(args) => compare_starts::compare_starts(args),
    }
}

/// Sets the thread pool once per process (compare-starts runs several views).
fn init_threads_once(threads: Option<usize>) -> anyhow::Result<()> {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if DONE.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    init_threads(threads)
}

/// `LO:HI` as an axis of `points` values.
/// The α axis of a line or of the layer curves, which must hold both ends
/// (α = 0 and 1): the lines' numbers are read there.
fn parse_alpha_axis(text: &str, points: usize) -> anyhow::Result<Axis> {
    let axis = parse_axis("--range", text, points)?;
    if axis.has(0.0) && axis.has(1.0) {
        Ok(axis)
    } else {
        Err(usage(&format!(
            "--range {text} with --points {points} misses α = 0 or α = 1 (the two ends); \
             choose --points so that the spacing divides 1 (for -0.5:1.5: 5, 9, 21 or 41)"
        )))
    }
}

fn parse_axis(flag: &str, text: &str, points: usize) -> anyhow::Result<Axis> {
    let parsed = text
        .split_once(':')
        .and_then(|(a, b)| Some((a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?)));
    match parsed {
        Some((lo, hi)) if lo < hi && lo.is_finite() && hi.is_finite() && points >= 2 => {
            Ok(Axis { lo, hi, points })
        }
        Some(_) if points < 2 => Err(usage(&format!("{flag}: at least 2 points are needed"))),
        _ => Err(usage(&format!(
            "{flag} {text:?}: expected LO:HI with LO < HI, e.g. -0.5:1.5"
        ))),
    }
}

/// What `--force` and `--resume` make of an existing run directory.
fn existing(flags: &ViewFlags) -> Existing {
    if flags.force {
        Existing::Overwrite
    } else if flags.resume {
        Existing::Resume
    } else {
        Existing::Refuse
    }
}

/// The fine-tuning run folder holding `path` (a checkpoint inside it).
fn run_holding(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .find(|d| d.join("recipe.json").exists() && d.join("model.json").exists())
        .map(Path::to_path_buf)
}

/// Everything a view works with: the run, its probe, the run directory.
struct Setup {
    run: TunedRun,
    task: Task,
    probe: Probe,
    dir: RunDir,
    flags: ViewFlags,
    started: Instant,
}

impl Setup {
    fn open(
        view: &str,
        flags: &ViewFlags,
        hints: &[Option<&PathBuf>],
        (train_default, dev_default): (usize, usize),
    ) -> anyhow::Result<Setup> {
        init_threads_once(flags.threads)?;
        let run_path = match &flags.run {
            Some(r) => r.clone(),
            None => hints
                .iter()
                .flatten()
                .find_map(|p| run_holding(p))
                .ok_or_else(|| {
                    usage("--run is needed: the fine-tuning run whose model and tokenizer to use")
                })?,
        };
        let run = TunedRun::open(&run_path)?;
        let glue = crate::tune::glue_dir(flags.glue_dir.as_deref());
        let task = match &flags.task {
            Some(name) => Task::resolve(name, &glue)?,
            None => Task::resolve(&run.task_name, &glue).map_err(|_| {
                usage(&format!(
                    "{} was fine-tuned on the task {:?}, which is not built in: \
                     pass --task with its TOML file",
                    run.dir.display(),
                    run.task_name
                ))
            })?,
        };
        if flags.eval_batch_size == 0 {
            return Err(usage("--eval-batch-size must be at least 1"));
        }
        let data = ProbeData {
            train_examples: flags.train_examples.unwrap_or(train_default),
            dev_examples: flags.dev_examples.unwrap_or(dev_default),
            with_dev: !flags.no_dev,
            batch_size: flags.eval_batch_size,
            seed: flags.seed,
        };
        let probe = Probe::new(&run, &task, &data)?;
        let out = flags.out.clone().unwrap_or_else(|| {
            run::default_run_path(&format!("landscape-{view}"), &task.spec.name)
        });
        let dir = RunDir::create(&out, existing(flags))?;
        dir.write_provenance()?;
        install_stop_handler()?;
        let (train, dev) = probe.examples();
        if !flags.quiet {
            eprintln!(
                "{view} of {} on {}: {train} train and {dev} dev examples, {} parameters",
                run.dir.display(),
                task.spec.name,
                probe.layout().count()
            );
        }
        Ok(Setup {
            run,
            task,
            probe,
            dir,
            flags: flags.clone(),
            started: Instant::now(),
        })
    }

    /// What the grid depends on besides the view's own settings.
    fn key(&self, view: serde_json::Value) -> serde_json::Value {
        let (train, dev) = self.probe.examples();
        serde_json::json!({
            "run": self.run.dir,
            "task": self.task.spec.name,
            "train_examples": train,
            "dev_examples": dev,
            "seed": self.flags.seed,
            "view": view,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path.join(name)
    }

    /// Fills a grid through `f`, with progress lines and Ctrl-C; `None`
    /// when Ctrl-C stopped it (saved, to be resumed).
    fn fill(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Probe, Sink) -> brisk::Result<Grid>,
    ) -> anyhow::Result<Option<Grid>> {
        let path = self.path(&format!("{name}.json"));
        let quiet = self.flags.quiet;
        let mut heartbeat = brisk::progress::Heartbeat::new();
        let started = Instant::now();
        let mut progress = |done: usize, total: usize| {
            if !quiet && (heartbeat.due() || done == total) {
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "  {done}/{total} points  {:.2} s/point",
                    secs / done.max(1) as f64
                );
            }
        };
        let stop = || STOP.load(Ordering::SeqCst);
        let sink = Sink {
            path: &path,
            resume: self.flags.resume,
            save_s: 30.0,
            progress: &mut progress,
            stop: &stop,
        };
        let grid = f(&mut self.probe, sink)?;
        grid.save_csv(&self.path(&format!("{name}.csv")))?;
        if !grid.complete() {
            eprintln!(
                "stopped with {}/{} points; continue with --resume --out {}",
                grid.done(),
                grid.values.len(),
                self.dir.path.display()
            );
            return Ok(None);
        }
        Ok(Some(grid))
    }

    /// Writes `view.json` (the inputs, settings and wall time) and
    /// `report.html`.
    fn finish(&self, view: &str, extra: serde_json::Value) -> anyhow::Result<()> {
        let (train, dev) = self.probe.examples();
        let summary = serde_json::json!({
            "view": view,
            "run": self.run.dir,
            "task": self.task.spec.name,
            "metric": self.probe.metric(),
            "train_examples": train,
            "dev_examples": dev,
            "wall_s": self.started.elapsed().as_secs_f64(),
            "details": extra,
        });
        run::write_json(&self.path("view.json"), &summary)?;
        let mut facts = Vec::new();
        report::facts_of(&summary, "", &mut facts);
        report::write(
            &self.dir.path,
            &self.title(&format!("brisk landscape {view}")),
            &facts,
        )?;
        if !self.flags.quiet {
            eprintln!("{view}: {}", self.dir.path.join("report.html").display());
        }
        Ok(())
    }

    fn title(&self, what: &str) -> String {
        let name = self
            .run
            .dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        format!("{what}: {} on {}", name, self.task.spec.name)
    }
}

/// One series per split for `measure` ("loss" or the metric) of a 1-D grid row.
fn split_series<'a>(grid: &Grid, measure: &str, row: usize) -> Vec<Series<'a>> {
    ["train", "dev"]
        .iter()
        .enumerate()
        .filter_map(|(i, split)| {
            let m = grid.measure(&format!("{split}_{measure}"))?;
            Some(Series {
                name: split,
                points: grid
                    .x
                    .iter()
                    .enumerate()
                    .map(|(ix, &x)| (x, grid.at(m, ix, row)))
                    .filter(|p| p.1.is_finite())
                    .collect(),
                color: PALETTE[i],
            })
        })
        .collect()
}

fn line(args: LineArgs) -> anyhow::Result<()> {
    let axis = parse_alpha_axis(&args.range, args.points)?;
    let mut s = Setup::open(
        "line",
        &args.view,
        &[args.to.as_ref(), args.from.as_ref()],
        (2000, 0),
    )?;
    let from = args.from.clone().unwrap_or_else(|| s.run.start());
    let to = args.to.clone().unwrap_or_else(|| s.run.best());
    let (ends, shared) = s.probe.load_ends(&[&from, &to])?;
    let key = s.key(serde_json::json!({ "from": from, "to": to, "axis": axis }));
    let Some(grid) = s.fill("line", |p, sink| {
        views::line(p, &ends[0], &ends[1], axis, key, sink)
    })?
    else {
        return Ok(());
    };
    let metric = s.probe.metric().to_string();
    for measure in ["loss", metric.as_str()] {
        line_chart(
            &s.path(&format!("line-{measure}.svg")),
            &s.title(&format!("{measure} from A (α = 0) to B (α = 1)")),
            "α",
            measure,
            &split_series(&grid, measure, 0),
            None,
        )?;
    }
    let distance = ends[1].minus(&ends[0]).norm();
    s.finish(
        "line",
        serde_json::json!({
            "from": from, "to": to, "distance": distance,
            "fixed_tensors": shared, "grid_s": grid.seconds,
        }),
    )
}

/// A plane's directions: the fine-tuning pair or a random pair.
struct PlaneDirections {
    centre: Point,
    d1: Point,
    d2: Point,
    kind: &'static str,
    fixed: Vec<String>,
}

/// Hao et al.'s plane: centre the run's start, d₁ its fine-tuning
/// displacement, d₂ the other run's; a tensor whose start differs between
/// the runs (a freshly initialised head) moves along d₁ only.
fn finetune_plane(s: &Setup, other: &Path) -> anyhow::Result<PlaneDirections> {
    let other = TunedRun::open(other)?;
    let (p, shared) =
        s.probe
            .load_ends(&[&s.run.start(), &s.run.best(), &other.start(), &other.best()])?;
    let d1 = p[1].minus(&p[0]);
    let mut d2 = p[3].minus(&p[2]);
    let layout = s.probe.layout();
    let differs: Vec<String> = layout
        .groups
        .iter()
        .enumerate()
        .flat_map(|(gi, g)| g.tensors.iter().map(move |t| (gi, t)))
        .filter(|(gi, t)| {
            let r = t.offset..t.offset + t.len();
            p[0].groups[*gi][r.clone()] != p[2].groups[*gi][r]
        })
        .map(|(_, t)| t.name.clone())
        .collect();
    d2.zero_tensors(layout, |name| differs.iter().any(|n| n == name));
    let mut fixed = shared;
    fixed.extend(differs.iter().map(|n| format!("{n} (along d1 only)")));
    Ok(PlaneDirections {
        centre: p[0].clone(),
        d1,
        d2,
        kind: "finetune",
        fixed,
    })
}

fn random_plane(s: &Setup, centre: &Path, bias_norm: BiasNorm) -> anyhow::Result<PlaneDirections> {
    let (p, _) = s.probe.load_ends(&[centre])?;
    let layout = s.probe.layout();
    let d1 = filter_normalised(layout, &p[0], s.flags.seed * 2 + 1, bias_norm);
    let d2 = filter_normalised(layout, &p[0], s.flags.seed * 2 + 2, bias_norm);
    Ok(PlaneDirections {
        centre: p[0].clone(),
        d1,
        d2,
        kind: "random",
        fixed: Vec::new(),
    })
}

/// What is drawn over a surface: tracks, and labelled marks.
type Overlay = (Vec<Track>, Vec<(String, f64, f64)>);

/// Train and dev surfaces of `measure` side by side, on one colour scale.
fn draw_surfaces(
    s: &Setup,
    grid: &Grid,
    measure: &str,
    name: &str,
    what: &str,
    axes: (&str, &str),
    tracks: &dyn Fn(&str) -> Overlay,
) -> anyhow::Result<PathBuf> {
    let panels: Vec<Panel> = ["train", "dev"]
        .iter()
        .filter_map(|split| {
            let m = grid.measure(&format!("{split}_{measure}"))?;
            let z = grid.surface(m);
            let (tracks, marks) = tracks(split);
            Some(Panel {
                title: format!("{split} {measure}"),
                x: grid.x.clone(),
                y: grid.y.clone(),
                z,
                tracks,
                marks,
            })
        })
        .collect();
    let path = s.path(&format!("{name}-{measure}.svg"));
    let scale = ColourScale::spanning(&panels);
    draw::surfaces_svg(&path, &s.title(what), axes, measure, &panels, scale)?;
    Ok(path)
}

fn plane(args: PlaneArgs) -> anyhow::Result<()> {
    let bias_norm = match args.bias_norm.as_str() {
        "ignore" => BiasNorm::Ignore,
        "copy" => BiasNorm::Copy,
        other => {
            return Err(usage(&format!(
                "--bias-norm {other:?}: expected ignore or copy"
            )))
        }
    };
    if args.other.is_some() && args.center.is_some() {
        return Err(usage(
            "--center is for random planes; a fine-tuning plane (--other) is centred at the run's step 0",
        ));
    }
    let default_range = if args.other.is_some() {
        "-0.5:1.5"
    } else {
        "-1:1"
    };
    let axis = parse_axis(
        "--range",
        args.range.as_deref().unwrap_or(default_range),
        args.grid,
    )?;
    let mut s = Setup::open(
        "plane",
        &args.view,
        &[args.center.as_ref(), args.other.as_ref()],
        (512, 512),
    )?;
    let dirs = match &args.other {
        Some(other) => finetune_plane(&s, other)?,
        None => {
            let centre = args.center.clone().unwrap_or_else(|| s.run.best());
            random_plane(&s, &centre, bias_norm)?
        }
    };
    let key = s.key(serde_json::json!({
        "kind": dirs.kind, "other": args.other, "center": args.center,
        "bias_norm": format!("{bias_norm:?}"), "axis": axis,
    }));
    let Some(grid) = s.fill("plane", |p, sink| {
        views::plane(
            p,
            &dirs.centre,
            (&dirs.d1, &dirs.d2),
            (axis, axis),
            key,
            sink,
        )
    })?
    else {
        return Ok(());
    };
    let marks = |_: &str| -> Overlay {
        let mut marks = vec![("θ₀".to_string(), 0.0, 0.0)];
        if dirs.kind == "finetune" {
            marks.push(("run".into(), 1.0, 0.0));
            marks.push(("other".into(), 0.0, 1.0));
        }
        (Vec::new(), marks)
    };
    let (xl, yl) = if dirs.kind == "finetune" {
        ("α (this run's fine-tuning direction)", "β (other run's)")
    } else {
        ("α (random direction 1)", "β (random direction 2)")
    };
    let metric = s.probe.metric().to_string();
    for measure in ["loss", metric.as_str()] {
        draw_surfaces(
            &s,
            &grid,
            measure,
            "plane",
            &format!("{} plane", dirs.kind),
            (xl, yl),
            &marks,
        )?;
    }
    s.finish(
        "plane",
        serde_json::json!({
            "kind": dirs.kind,
            "d1_norm": dirs.d1.norm(), "d2_norm": dirs.d2.norm(),
            "cosine": dirs.d1.dot(&dirs.d2) / (dirs.d1.norm() * dirs.d2.norm()).max(f64::MIN_POSITIVE),
            "fixed_tensors": dirs.fixed, "grid_s": grid.seconds,
        }),
    )
}

fn trajectory(args: TrajectoryArgs) -> anyhow::Result<()> {
    if args.grid < 2 {
        return Err(usage("--grid needs at least 2 points"));
    }
    if !(args.margin >= 0.0 && args.margin.is_finite()) {
        return Err(usage("--margin must be 0 or more"));
    }
    let mut s = Setup::open("trajectory", &args.view, &[args.other.as_ref()], (512, 512))?;
    let checkpoints = s.run.checkpoints()?;
    if checkpoints.len() < 3 {
        return Err(usage(&format!(
            "{} has {} checkpoint(s); a trajectory needs at least 3 \
             (fine-tune with --save-every K)",
            s.run.dir.display(),
            checkpoints.len()
        )));
    }
    let files: Vec<&Path> = checkpoints.iter().map(|(_, f)| f.as_path()).collect();
    let (points, _) = s.probe.load_ends(&files)?;
    // Plane: origin, two orthonormal axes, and each checkpoint's place.
    let (origin, axes, coords, details) = match args.plane.as_str() {
        "pca" => {
            let plane = project::pca_plane(&points).expect("at least 3 points");
            let last = points.last().expect("checked").clone();
            let coords: Vec<Projected> = points
                .iter()
                .map(|p| project::onto_orthonormal(&p.minus(&last), &plane.axes))
                .collect();
            let details = serde_json::json!({ "explained_variance": plane.explained });
            (last, plane.axes, coords, details)
        }
        "finetune" => {
            let other = args
                .other
                .as_ref()
                .ok_or_else(|| usage("--plane finetune needs --other RUN"))?;
            let dirs = finetune_plane(&s, other)?;
            let mut e1 = dirs.d1.clone();
            e1.scale(1.0 / dirs.d1.norm().max(f64::MIN_POSITIVE));
            let mut e2 = project::orthogonal_part(&dirs.d2, &dirs.d1);
            e2.scale(1.0 / e2.norm().max(f64::MIN_POSITIVE));
            let coords: Vec<Projected> = points
                .iter()
                .map(|p| project::keep_angle_and_norm(&p.minus(&dirs.centre), &dirs.d1, &dirs.d2))
                .collect();
            let cos = dirs.d1.dot(&dirs.d2) / (dirs.d1.norm() * dirs.d2.norm()).max(1e-30);
            let details = serde_json::json!({ "cosine_d1_d2": cos, "fixed_tensors": dirs.fixed });
            (dirs.centre, [e1, e2], coords, details)
        }
        other => {
            return Err(usage(&format!(
                "--plane {other:?}: expected pca or finetune"
            )))
        }
    };
    let extent = |f: &dyn Fn(&Projected) -> f64| -> Axis {
        let lo = coords.iter().map(f).fold(0.0f64, f64::min);
        let hi = coords.iter().map(f).fold(0.0f64, f64::max);
        let pad = ((hi - lo) * args.margin).max(1e-3);
        Axis {
            lo: lo - pad,
            hi: hi + pad,
            points: args.grid,
        }
    };
    let (xa, ya) = (extent(&|p| p.x), extent(&|p| p.y));
    let key = s.key(serde_json::json!({
        "plane": args.plane, "other": args.other, "x": xa, "y": ya,
        "checkpoints": checkpoints.iter().map(|(k, _)| k).collect::<Vec<_>>(),
    }));
    let Some(grid) = s.fill("trajectory", |p, sink| {
        views::plane(p, &origin, (&axes[0], &axes[1]), (xa, ya), key, sink)
    })?
    else {
        return Ok(());
    };
    let path: Vec<(f64, f64)> = coords.iter().map(|c| (c.x, c.y)).collect();
    let tracks = |_: &str| -> Overlay {
        let first = path[0];
        let last = *path.last().expect("checked");
        (
            vec![Track {
                name: "checkpoints".into(),
                points: path.clone(),
                color: draw::track_colour(0),
            }],
            vec![
                ("start".into(), first.0, first.1),
                ("end".into(), last.0, last.1),
            ],
        )
    };
    let metric = s.probe.metric().to_string();
    for measure in ["loss", metric.as_str()] {
        draw_surfaces(
            &s,
            &grid,
            measure,
            "trajectory",
            &format!("trajectory on the {} plane", args.plane),
            ("x", "y"),
            &tracks,
        )?;
    }
    let rows: Vec<serde_json::Value> = checkpoints
        .iter()
        .zip(&coords)
        .map(|((step, _), c)| {
            serde_json::json!({ "step": step, "x": c.x, "y": c.y, "residual": c.residual })
        })
        .collect();
    run::write_json(&s.path("path.json"), &rows)?;
    s.finish(
        "trajectory",
        serde_json::json!({ "plane": args.plane, "plane_details": details, "path": rows, "grid_s": grid.seconds }),
    )
}

fn layers(args: LayersArgs) -> anyhow::Result<()> {
    let axis = parse_alpha_axis(&args.range, args.points)?;
    let mut s = Setup::open(
        "layers",
        &args.view,
        &[args.to.as_ref(), args.from.as_ref()],
        (512, 512),
    )?;
    let from = args.from.clone().unwrap_or_else(|| s.run.start());
    let to = args.to.clone().unwrap_or_else(|| s.run.best());
    let (ends, shared) = s.probe.load_ends(&[&from, &to])?;
    let groups = views::layer_groups(s.probe.layout());
    let key = s.key(serde_json::json!({ "from": from, "to": to, "axis": axis }));
    let Some(grid) = s.fill("layers", |p, sink| {
        views::layers(p, &ends[0], &ends[1], &groups, axis, key, sink)
    })?
    else {
        return Ok(());
    };
    let metric = s.probe.metric().to_string();
    let mut shown = Vec::new();
    for split in ["train", "dev"] {
        for measure in ["loss", metric.as_str()] {
            let Some(m) = grid.measure(&format!("{split}_{measure}")) else {
                continue;
            };
            let series: Vec<Series> = grid
                .y_names
                .iter()
                .enumerate()
                .map(|(iy, name)| Series {
                    name,
                    points: grid
                        .x
                        .iter()
                        .enumerate()
                        .map(|(ix, &x)| (x, grid.at(m, ix, iy)))
                        .filter(|p| p.1.is_finite())
                        .collect(),
                    color: PALETTE[iy % PALETTE.len()],
                })
                .collect();
            let file = format!("layers-{split}-{measure}.svg");
            line_chart(
                &s.path(&file),
                &s.title(&format!(
                    "{split} {measure}, one group moved (α = 1: fine-tuned)"
                )),
                "α",
                &format!("{split} {measure}"),
                &series,
                None,
            )?;
            shown.push(file);
        }
    }
    // The change in loss when a group goes back to its start (α = 0).
    let reverted: Vec<serde_json::Value> = match grid.measure("train_loss") {
        Some(m) => grid
            .y_names
            .iter()
            .enumerate()
            .map(|(iy, n)| {
                serde_json::json!({
                    "group": n,
                    "displacement_norm": ends[1].minus(&ends[0]).only_groups(&groups[iy].1).norm(),
                    "train_loss_fine_tuned": grid.at_x(m, 1.0, iy),
                    "train_loss_reverted": grid.at_x(m, 0.0, iy),
                })
            })
            .collect(),
        None => Vec::new(),
    };
    s.finish(
        "layers",
        serde_json::json!({ "from": from, "to": to, "groups": reverted, "fixed_tensors": shared, "pictures": shown, "grid_s": grid.seconds }),
    )
}

fn sharpness_command(args: SharpnessArgs) -> anyhow::Result<()> {
    let positive = |v: f64| v > 0.0 && v.is_finite();
    if args.iterations == 0 || !positive(args.epsilon) || !positive(args.fd_step) {
        return Err(usage(
            "--iterations must be at least 1, --epsilon and --fd-step positive",
        ));
    }
    let mut view = args.view.clone();
    view.no_dev = true;
    let mut s = Setup::open("sharpness", &view, &[args.at.as_ref()], (512, 0))?;
    let at = args.at.clone().unwrap_or_else(|| s.run.best());
    let (p, _) = s.probe.load_ends(&[&at])?;
    let spec = SharpnessSpec {
        iterations: args.iterations,
        epsilon: args.epsilon,
        fd_step: args.fd_step,
        ascent_steps: args.ascent_steps,
        seed: s.flags.seed,
        ..SharpnessSpec::default()
    };
    let quiet = s.flags.quiet;
    let result = sharpness(&mut s.probe, &p[0], &spec, |line| {
        if !quiet {
            eprintln!("  {line}");
        }
    })?;
    run::write_json(&s.path("sharpness.json"), &result)?;
    println!(
        "train loss {:.5}  top Hessian eigenvalue {:.4}  ε-sharpness (ε = {}) {:.4}",
        result.loss, result.top_eigenvalue, result.epsilon, result.epsilon_sharpness
    );
    s.finish(
        "sharpness",
        serde_json::json!({ "at": at, "spec": spec, "result": result }),
    )
}
