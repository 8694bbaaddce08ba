//! ACE, Automated Concatenation of Embeddings (Wang et al., ACL 2021):
//! which of L candidate embeddings should a tagger or parser read? A
//! controller samples a subset, the task model trains on that
//! concatenation, and its dev score is the reward.
//!
//! - The controller is one logit θ_l per candidate, starting at 0; an
//!   action a ∈ {0,1}^L is drawn from Bernoulli(σ(θ)), redrawn while it is
//!   all zeros or equal to the previous episode's (the official code's
//!   rule). The first episode selects every candidate.
//! - Unselected candidates enter the model as zeros
//!   ([`crate::embed::Embedder::select`]), so one task model is trained
//!   across all episodes, its weights carried over; its optimiser and
//!   learning-rate schedule start afresh each episode (as in the official
//!   code).
//! - The reward of episode t, per candidate, compares its dev score R_t
//!   with every distinct earlier action a^i (scored by the best R_i it
//!   reached): r_l = Σ_i (R_t − R_i) · γ^(Ham(a^t, a^i) − 1) · |a^t_l − a^i_l|,
//!   so only candidates whose choice differed get credit, and actions far
//!   apart in Hamming distance count less. θ takes one SGD step (with
//!   momentum) on −Σ_l r_l log P(a^t_l; θ_l).
//! - Scores enter the reward in points (F1 × 100): with the official
//!   learning rate 0.1, rewards of a fraction of a point then move θ by
//!   hundredths per episode; on the [0, 1] scale σ(θ) would stay within a
//!   few thousandths of 1/2 over a whole search (`ace.reward_scale`).
//! - The result is the model and action with the best dev score over all
//!   episodes, kept (not retrained), as the official code keeps it. The run
//!   directory is an ordinary tagger or parser run (`model.json` with the
//!   selection, `best/`), so `brisk tag predict` uses it.
//!
//! Baselines share the loop: `random` draws from the untouched controller
//! (σ = 1/2, θ never updated); `all` selects every candidate each episode;
//! `weighted` selects all and scales each by a trained σ(w_l) ("All +
//! weight"). Each trains for the same episodes × epochs.
//!
//! Run directory, besides the tagger's files: `search.toml` (the resolved
//! search config), `episodes.jsonl` (one row per episode: action, dev
//! score, reward, θ and σ(θ) after it), `state/` (the model and the
//! controller after the last finished episode: what `--resume` continues
//! from), `search.json` (the outcome) and `report.html`.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::labelling::{
    self, epoch_lr, optimizer, score, train_epoch, write_conll, Prepared, SavedModel, Setup, Split,
    WordModelConfig, WordSummary,
};
use super::word_tasks::WordTask;
use crate::corpus::generated::Rng;
use crate::embed::EmbeddingConfig;
use crate::error::{Error, Result};
use crate::model::Params;
use crate::run::{read_json, write_atomic, write_dir_atomic, write_json};

/// How actions are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// The REINFORCE controller.
    Ace,
    /// Uniformly random non-empty subsets (the controller untouched).
    Random,
    /// Every candidate, every episode.
    All,
    /// Every candidate, each scaled by a trained σ(w_l).
    Weighted,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Ace => "ace",
            Strategy::Random => "random",
            Strategy::All => "all",
            Strategy::Weighted => "weighted",
        }
    }
}

/// `[ace]`: the search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AceSection {
    pub strategy: Strategy,
    /// Episodes (the official configs: 30).
    pub episodes: usize,
    /// γ, the Hamming discount of the reward (official: 0.5).
    pub discount: f64,
    /// The controller's SGD learning rate (official: 0.1).
    pub controller_lr: f64,
    /// Its momentum (official: 0.9).
    pub controller_momentum: f64,
    /// Dev scores are multiplied by this in the reward (100: points).
    pub reward_scale: f64,
}

/// One candidate embedding, named for tables and reports (default: its
/// kind and file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(flatten)]
    pub embedding: EmbeddingConfig,
}

impl Candidate {
    pub fn new(embedding: EmbeddingConfig) -> Candidate {
        Candidate {
            name: String::new(),
            embedding,
        }
    }

    pub fn label(&self) -> String {
        if self.name.is_empty() {
            self.embedding.label()
        } else {
            self.name.clone()
        }
    }
}

/// Everything a search is configured by: the candidates, the task model
/// (`[model]`, `[train]`, where `train.epochs` counts epochs per
/// episode) and `[ace]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    pub candidates: Vec<Candidate>,
    pub model: labelling::ModelSection,
    pub train: labelling::TrainSection,
    pub ace: AceSection,
}

impl SearchConfig {
    /// The defaults for a tagging (`parser` false) or parsing search: the
    /// task model's defaults, one epoch per episode, 30 episodes.
    pub fn defaults(parser: bool) -> SearchConfig {
        let base = if parser {
            WordModelConfig::parser_default()
        } else {
            WordModelConfig::default()
        };
        let mut train = base.train;
        train.epochs = 1;
        train.patience = 0;
        SearchConfig {
            candidates: Vec::new(),
            model: base.model,
            train,
            ace: AceSection {
                strategy: Strategy::Ace,
                episodes: 30,
                discount: 0.5,
                controller_lr: 0.1,
                controller_momentum: 0.9,
                reward_scale: 100.0,
            },
        }
    }

    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.candidates.is_empty() {
            return bad("`candidates`: at least one candidate embedding is needed".into());
        }
        if self.ace.episodes == 0 {
            return bad("`ace.episodes` must be at least 1".into());
        }
        if !(self.ace.discount > 0.0 && self.ace.discount <= 1.0) {
            return bad(format!(
                "`ace.discount` must be in (0, 1], not {}",
                self.ace.discount
            ));
        }
        let mut names = std::collections::HashSet::new();
        for c in &self.candidates {
            if !names.insert(c.label()) {
                return bad(format!(
                    "two candidates are named {:?}: give them distinct `name`s",
                    c.label()
                ));
            }
        }
        self.word_config().check()
    }

    /// The task model's config: every candidate, in order.
    pub fn word_config(&self) -> WordModelConfig {
        let mut model = self.model.clone();
        model.embedding_weights = self.ace.strategy == Strategy::Weighted;
        WordModelConfig {
            embeddings: self
                .candidates
                .iter()
                .map(|c| c.embedding.clone())
                .collect(),
            model,
            train: self.train.clone(),
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a search config serialises to TOML")
    }

    /// Reads a run's `search.toml`.
    pub fn read(path: &Path) -> Result<SearchConfig> {
        toml::from_str(&crate::run::read_text(path)?)
            .map_err(|e| Error::data(path, format!("not a search config: {e}")))
    }
}

/// The `[[candidates]]` list of a TOML file (other tables are ignored, so
/// a search config can serve as a candidates file).
pub fn read_candidates(path: &Path) -> Result<Vec<Candidate>> {
    #[derive(Deserialize)]
    struct File {
        candidates: Vec<Candidate>,
    }
    let file: File = toml::from_str(&crate::run::read_text(path)?).map_err(|e| {
        Error::data(
            path,
            format!("not a candidates file ([[candidates]] tables, each with a kind): {e}"),
        )
    })?;
    Ok(file.candidates)
}

/// The controller: a logit per candidate and its SGD momentum buffer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Controller {
    pub theta: Vec<f64>,
    pub velocity: Vec<f64>,
}

/// How often a draw equal to the previous action is redrawn before it is
/// accepted (when σ(θ) saturates, the same action is all there is).
const MAX_REDRAWS: usize = 1000;

impl Controller {
    pub fn new(candidates: usize) -> Controller {
        Controller {
            theta: vec![0.0; candidates],
            velocity: vec![0.0; candidates],
        }
    }

    /// σ(θ_l): the probability of selecting each candidate.
    pub fn probabilities(&self) -> Vec<f64> {
        self.theta.iter().map(|&t| sigmoid(t)).collect()
    }

    /// Draws an action from Bernoulli(σ(θ)): never all zeros, and not
    /// `previous` again unless redrawing keeps giving it.
    pub fn sample(&self, rng: &mut Rng, previous: Option<&[bool]>) -> Vec<bool> {
        let p = self.probabilities();
        let mut fallback = None;
        for _ in 0..MAX_REDRAWS {
            let action: Vec<bool> = p.iter().map(|&p| rng.unit() < p).collect();
            if !action.iter().any(|&a| a) {
                continue;
            }
            if previous == Some(action.as_slice()) {
                fallback = Some(action);
                continue;
            }
            return action;
        }
        // Saturated: the previous action, or (σ all near 0) the most likely
        // single candidate.
        fallback.unwrap_or_else(|| {
            let best = (0..p.len())
                .max_by(|&a, &b| p[a].total_cmp(&p[b]))
                .unwrap_or(0);
            (0..p.len()).map(|l| l == best).collect()
        })
    }

    /// The gradient of −Σ_l r_l log P(a_l; θ_l) in θ:
    /// −r_l (a_l − σ(θ_l)).
    pub fn gradient(&self, action: &[bool], reward: &[f64]) -> Vec<f64> {
        self.probabilities()
            .iter()
            .zip(action)
            .zip(reward)
            .map(|((&p, &a), &r)| -r * (f64::from(u8::from(a)) - p))
            .collect()
    }

    /// One SGD step with momentum (PyTorch's: v ← μv + g, θ ← θ − lr·v).
    pub fn step(&mut self, gradient: &[f64], lr: f64, momentum: f64) {
        for ((t, v), &g) in self.theta.iter_mut().zip(&mut self.velocity).zip(gradient) {
            *v = momentum * *v + g;
            *t -= lr * *v;
        }
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn hamming(a: &[bool], b: &[bool]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

/// ACE's reward for `action`, scored `score`, against the `earlier`
/// episodes' (action, score) pairs: each distinct earlier action counts
/// once, with the best score it reached.
pub fn reward(
    earlier: &[(Vec<bool>, f64)],
    action: &[bool],
    score: f64,
    discount: f64,
) -> Vec<f64> {
    let mut best: Vec<(&[bool], f64)> = Vec::new();
    for (a, s) in earlier {
        match best.iter_mut().find(|(b, _)| *b == a.as_slice()) {
            Some(entry) => entry.1 = entry.1.max(*s),
            None => best.push((a, *s)),
        }
    }
    let mut r = vec![0.0; action.len()];
    for (a, s) in best {
        let distance = hamming(a, action);
        if distance == 0 {
            continue;
        }
        let g = (score - s) * discount.powi(distance as i32 - 1);
        for (l, r) in r.iter_mut().enumerate() {
            if a[l] != action[l] {
                *r += g;
            }
        }
    }
    r
}

/// One finished episode (a row of `episodes.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// From 1.
    pub episode: usize,
    pub action: Vec<bool>,
    /// The best dev score within the episode.
    pub dev: f64,
    /// The dev score after each of its epochs.
    pub dev_epochs: Vec<f64>,
    /// The reward per candidate (zeros where the controller is not
    /// trained).
    pub reward: Vec<f64>,
    /// θ after the episode's update.
    pub theta: Vec<f64>,
    /// σ(θ) after the update (`weighted`: the trained scales σ(w)).
    pub probabilities: Vec<f64>,
    pub best_dev: f64,
    pub train_s: f64,
    pub eval_s: f64,
}

/// `state/controller.json`: the search after its last finished episode.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SearchState {
    format_version: u32,
    controller: Controller,
    history: Vec<Episode>,
    /// (dev score, episode, epoch, action) of the kept model.
    best: Option<Best>,
    step: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub dev: f64,
    pub episode: usize,
    pub epoch: usize,
    pub action: Vec<bool>,
}

const STATE_VERSION: u32 = 1;

/// `search.json`: the outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchSummary {
    pub task: String,
    pub strategy: Strategy,
    pub candidates: Vec<String>,
    pub episodes: usize,
    pub epochs_per_episode: usize,
    pub metric: String,
    pub best: Best,
    /// The kept selection, by name.
    pub selected: Vec<String>,
    /// σ(θ) at the end (`weighted`: σ(w)).
    pub probabilities: Vec<f64>,
    pub dev: f64,
    pub test: Option<f64>,
    pub test_details: Option<serde_json::Value>,
    /// Seconds of the whole search (features, episodes, final scoring) in
    /// this process; a resumed search counts only its own part.
    pub wall_s: f64,
    /// Seconds of task-model training summed over all episodes.
    pub train_s: f64,
    pub encoder_s: f64,
    pub peak_rss_mb: f64,
    pub stopped: bool,
}

/// Options of a search.
pub struct SearchOptions<'a> {
    pub resume: bool,
    /// Set by Ctrl-C: stop after the current batch; the search resumes from
    /// the last finished episode.
    pub stop: &'a AtomicBool,
}

/// The search's task and data, read and checked.
pub struct PreparedSearch {
    pub config: SearchConfig,
    pub prepared: Prepared,
}

/// Reads and checks the task's files and the config (candidate paths made
/// absolute).
pub fn prepare(task: WordTask, mut config: SearchConfig) -> Result<PreparedSearch> {
    config.check()?;
    let prepared = labelling::prepare(task, config.word_config())?;
    for (c, e) in config
        .candidates
        .iter_mut()
        .zip(&prepared.config.embeddings)
    {
        c.embedding = e.clone();
    }
    Ok(PreparedSearch { config, prepared })
}

/// The generator of episode `episode`'s draw: fixed by the seed and the
/// episode, so a resumed search draws what an uninterrupted one would.
fn episode_rng(seed: u64, episode: usize) -> Rng {
    Rng::new(seed ^ 0xace0_0000 ^ (episode as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// Runs (or resumes) a search into `out`, which exists.
pub fn search(
    search: PreparedSearch,
    out: &Path,
    options: &SearchOptions,
    mut progress: impl FnMut(&str),
) -> Result<SearchSummary> {
    let started = Instant::now();
    let PreparedSearch {
        config,
        mut prepared,
    } = search;
    let spec = prepared.task.spec.clone();
    let names: Vec<String> = config.candidates.iter().map(Candidate::label).collect();
    let state_dir = out.join("state");
    let resumed = options.resume && state_dir.join("controller.json").is_file();
    let saved = if resumed {
        Some(read_json::<SavedModel>(&out.join("model.json"))?)
    } else {
        None
    };
    let Setup {
        mut saved,
        params,
        model,
        encoder_s,
    } = labelling::setup(&mut prepared, saved, &mut progress)?;
    let mut state = if resumed {
        let state: SearchState = read_json(&state_dir.join("controller.json"))?;
        if state.format_version != STATE_VERSION {
            return Err(Error::data(
                state_dir.join("controller.json"),
                format!(
                    "search state format {}, this brisk reads {STATE_VERSION}",
                    state.format_version
                ),
            ));
        }
        params.load(&state_dir.join("model.safetensors"))?;
        progress(&format!(
            "resuming after episode {} of {}",
            state.history.len(),
            config.ace.episodes
        ));
        state
    } else {
        write_json(&out.join("model.json"), &saved)?;
        write_atomic(&out.join("search.toml"), config.to_toml().as_bytes())?;
        SearchState {
            format_version: STATE_VERSION,
            controller: Controller::new(names.len()),
            history: Vec::new(),
            best: None,
            step: 0,
        }
    };
    let (train, dev) = (&prepared.train, &prepared.dev);
    let epochs = config.train.epochs;
    let mut stopped = false;
    while state.history.len() < config.ace.episodes {
        let t = state.history.len() + 1;
        let action = choose(&config, &state, t);
        model.encoder().embedder().select(&action)?;
        progress(&format!(
            "episode {t}/{}  action {}",
            config.ace.episodes,
            describe(&names, &action)
        ));
        // A fresh optimiser each episode; the weights carry over.
        let mut opt = optimizer(&params)?;
        let mut episode = Episode {
            episode: t,
            action: action.clone(),
            dev: f64::NEG_INFINITY,
            dev_epochs: Vec::new(),
            reward: vec![0.0; names.len()],
            theta: Vec::new(),
            probabilities: Vec::new(),
            best_dev: 0.0,
            train_s: 0.0,
            eval_s: 0.0,
        };
        for e in 1..=epochs {
            // Batch order and dropout differ in every epoch of the search.
            let global_epoch = (t - 1) * epochs + e;
            let epoch_started = Instant::now();
            let label = format!("episode {t}/{}  epoch {e}/{epochs}", config.ace.episodes);
            let loss = train_epoch(
                model.as_ref(),
                &params,
                &mut opt,
                train,
                &config.train,
                global_epoch,
                epoch_lr(&config.train, e),
                &mut state.step,
                options.stop,
                &label,
                &mut progress,
            )?;
            if loss.is_none() {
                stopped = true;
                break;
            }
            episode.train_s += epoch_started.elapsed().as_secs_f64();
            let eval_started = Instant::now();
            let predicted = model.predict(dev, 64)?;
            let scores = score(&spec, &dev.data, &predicted);
            episode.eval_s += eval_started.elapsed().as_secs_f64();
            episode.dev_epochs.push(scores.main);
            episode.dev = episode.dev.max(scores.main);
            // Ties go to the later model, as in the official code.
            if state.best.as_ref().is_none_or(|b| scores.main >= b.dev) {
                state.best = Some(Best {
                    dev: scores.main,
                    episode: t,
                    epoch: e,
                    action: action.clone(),
                });
                keep_best(out, &params, &mut saved, &action, dev, &predicted)?;
            }
        }
        if stopped {
            progress(&format!(
                "stopped in episode {t}; --resume continues after episode {}",
                t - 1
            ));
            break;
        }
        update_controller(&config, &mut state, &mut episode);
        episode.probabilities = match config.ace.strategy {
            Strategy::Weighted => model
                .encoder()
                .embedder()
                .scales()?
                .unwrap_or_else(|| state.controller.probabilities()),
            _ => state.controller.probabilities(),
        };
        episode.theta = state.controller.theta.clone();
        episode.best_dev = state.best.as_ref().map_or(0.0, |b| b.dev);
        progress(&format!(
            "episode {t}/{}  action {}  dev {} {:.2}  best {:.2} (episode {})  σ(θ) {}",
            config.ace.episodes,
            describe(&names, &action),
            metric_name(&spec),
            100.0 * episode.dev,
            100.0 * episode.best_dev,
            state.best.as_ref().map_or(0, |b| b.episode),
            episode
                .probabilities
                .iter()
                .map(|p| format!("{p:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        state.history.push(episode);
        save_state(out, &params, &state)?;
        super::ace_report::write(out, &names, &spec.name, &config, &state.history)?;
    }
    let best = state.best.clone().ok_or_else(|| {
        Error::Training("stopped before the first episode ended: nothing to keep".into())
    })?;
    // The kept model, with the selection it was trained on.
    params.load(&out.join("best").join("model.safetensors"))?;
    model.encoder().embedder().select(&best.action)?;
    let (dev_scores, test_scores) =
        labelling::final_scores(model.as_ref(), &spec, dev, prepared.test.as_ref(), out)?;
    let train_s: f64 = state.history.iter().map(|e| e.train_s).sum();
    let selected: Vec<String> = names
        .iter()
        .zip(&best.action)
        .filter(|(_, &a)| a)
        .map(|(n, _)| n.clone())
        .collect();
    let probabilities = state
        .history
        .last()
        .map(|e| e.probabilities.clone())
        .unwrap_or_default();
    let summary = SearchSummary {
        task: spec.name.clone(),
        strategy: config.ace.strategy,
        candidates: names.clone(),
        episodes: state.history.len(),
        epochs_per_episode: epochs,
        metric: dev_scores.metric.clone(),
        best: best.clone(),
        selected: selected.clone(),
        probabilities,
        dev: best.dev,
        test: test_scores.as_ref().map(|s| s.main),
        test_details: test_scores.as_ref().map(|s| s.details.clone()),
        wall_s: started.elapsed().as_secs_f64(),
        train_s,
        encoder_s,
        peak_rss_mb: labelling::peak_rss_mb(),
        stopped,
    };
    write_json(&out.join("search.json"), &summary)?;
    // The tagger's own summary, so the run reads like any tagger run.
    let word_summary = WordSummary {
        task: spec.name.clone(),
        embeddings: selected,
        metric: dev_scores.metric.clone(),
        best_epoch: (best.episode - 1) * epochs + best.epoch,
        epochs_run: state.history.len() * epochs,
        dev: best.dev,
        test: summary.test,
        dev_details: dev_scores.details,
        test_details: summary.test_details.clone(),
        parameters: params.count(),
        epoch_s: train_s / (state.history.len() * epochs).max(1) as f64,
        encoder_s,
        peak_rss_mb: summary.peak_rss_mb,
        stopped,
    };
    write_json(&out.join("summary.json"), &word_summary)?;
    super::ace_report::write(out, &names, &spec.name, &config, &state.history)?;
    Ok(summary)
}

/// Episode `t`'s action under the configured strategy.
fn choose(config: &SearchConfig, state: &SearchState, t: usize) -> Vec<bool> {
    let l = config.candidates.len();
    let previous = state.history.last().map(|e| e.action.as_slice());
    let mut rng = episode_rng(config.train.seed, t);
    match config.ace.strategy {
        Strategy::All | Strategy::Weighted => vec![true; l],
        Strategy::Ace if t == 1 => vec![true; l],
        Strategy::Ace => state.controller.sample(&mut rng, previous),
        Strategy::Random => Controller::new(l).sample(&mut rng, previous),
    }
}

/// ACE: the reward against the earlier episodes and one controller step.
fn update_controller(config: &SearchConfig, state: &mut SearchState, episode: &mut Episode) {
    if config.ace.strategy != Strategy::Ace || state.history.is_empty() {
        return;
    }
    let scale = config.ace.reward_scale;
    let earlier: Vec<(Vec<bool>, f64)> = state
        .history
        .iter()
        .map(|e| (e.action.clone(), scale * e.dev))
        .collect();
    episode.reward = reward(
        &earlier,
        &episode.action,
        scale * episode.dev,
        config.ace.discount,
    );
    let gradient = state.controller.gradient(&episode.action, &episode.reward);
    state.controller.step(
        &gradient,
        config.ace.controller_lr,
        config.ace.controller_momentum,
    );
}

/// Saves the kept model: its weights, `model.json` with its selection, its
/// dev predictions.
fn keep_best(
    out: &Path,
    params: &Params,
    saved: &mut SavedModel,
    action: &[bool],
    dev: &Split,
    predicted: &labelling::Predicted,
) -> Result<()> {
    let best = out.join("best");
    std::fs::create_dir_all(&best).map_err(|e| Error::io(&best, e))?;
    params.save(&best.join("model.safetensors"))?;
    saved.selection = Some(action.to_vec());
    write_json(&out.join("model.json"), saved)?;
    write_conll(
        &out.join("predictions-dev.conll"),
        &dev.words,
        Some(&dev.data),
        predicted,
    )
}

fn save_state(out: &Path, params: &Params, state: &SearchState) -> Result<()> {
    write_dir_atomic(&out.join("state"), |tmp| {
        params.save(&tmp.join("model.safetensors"))?;
        write_json(&tmp.join("controller.json"), state)
    })?;
    let mut log = String::new();
    for e in &state.history {
        log.push_str(&serde_json::to_string(e).expect("an episode serialises"));
        log.push('\n');
    }
    write_atomic(&out.join("episodes.jsonl"), log.as_bytes())
}

/// `[name, -name-, ...]`: selected candidates plain, the others struck.
pub fn describe(names: &[String], action: &[bool]) -> String {
    let parts: Vec<String> = names
        .iter()
        .zip(action)
        .map(|(n, &a)| if a { n.clone() } else { format!("-{n}-") })
        .collect();
    format!("[{}]", parts.join(", "))
}

fn metric_name(spec: &super::word_tasks::WordTaskSpec) -> &'static str {
    match spec.metric.as_str() {
        "span-f1" => "f1",
        "attachment" => "las",
        _ => "accuracy",
    }
}

/// Reads a search run's `search.json`.
pub fn read_summary(run: &Path) -> Result<SearchSummary> {
    read_json(&run.join("search.json"))
}

/// Reads a search run's `episodes.jsonl`.
pub fn read_episodes(run: &Path) -> Result<Vec<Episode>> {
    let path = run.join("episodes.jsonl");
    let text = crate::run::read_text(&path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| Error::data(&path, e.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_parse_from_toml_with_and_without_names() {
        let text = r#"
            [[candidates]]
            name = "minilm-last4"
            kind = "encoder"
            model = "/m"
            layers = "last4"

            [[candidates]]
            kind = "chars"
        "#;
        #[derive(Deserialize)]
        struct File {
            candidates: Vec<Candidate>,
        }
        let file: File = toml::from_str(text).unwrap();
        assert_eq!(file.candidates[0].label(), "minilm-last4");
        assert_eq!(file.candidates[1].label(), "chars");
        let err = toml::from_str::<File>("[[candidates]]\nkind = \"chars\"\nwidth = 3\n")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("width"), "{err}");
    }

    #[test]
    fn a_saturated_controller_still_returns_a_valid_action() {
        let mut c = Controller::new(3);
        c.theta = vec![40.0, 40.0, 40.0];
        let a = c.sample(&mut Rng::new(1), Some(&[true, true, true]));
        assert_eq!(a, vec![true, true, true]);
        c.theta = vec![-40.0, -30.0, -40.0];
        let a = c.sample(&mut Rng::new(1), None);
        assert_eq!(a, vec![false, true, false]);
    }
}
