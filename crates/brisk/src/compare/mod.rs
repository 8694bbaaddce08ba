//! Comparing pre-training runs: the variants `brisk compare` trains from one
//! base config, the "cost to reach the baseline" table, and the HTML report
//! ([`report`]) that `brisk compare` and `brisk report` both write.
//!
//! Fairness (see the method notes on measuring efficiency): every variant
//! shares the corpus, seed, data order and budget, and its learning-rate
//! schedule is sized to that same budget; no variant gets tuning the
//! baseline does not get. Validation loss is always masked-LM loss at a
//! fixed 15% mask, so it is comparable across variants.

pub mod report;

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::train::pretrain::PLATEAU_MARGIN;

/// A variant of the base config: a name and the `--set` overrides it adds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Variant {
    pub name: String,
    pub sets: Vec<String>,
}

/// The named building blocks of variants; `a+b` combines blocks.
const BLOCKS: [(&str, &[&str]); 12] = [
    ("baseline", &[]),
    (
        "electra",
        &[
            "objective.kind=electra",
            "objective.mask_token_prob=0.85",
            "objective.random_token_prob=0",
        ],
    ),
    // MC-BERT with ELECTRA's masking (15% of the selected tokens left as
    // they are: the code's `--leave-unmasked-prob 0.15`), under which its
    // controller learns what ELECTRA's generator learns; with every
    // selected token `[MASK]`ed (the code's default) neither leaves the
    // unigram level at our budgets (docs/results/early-exit-mini-wiki.md).
    (
        "mcbert",
        &[
            "objective.kind=mcbert",
            "objective.mask_token_prob=0.85",
            "objective.random_token_prob=0",
        ],
    ),
    ("unigram-gen", &["objective.generator=unigram"]),
    ("uniform-gen", &["objective.generator=uniform"]),
    // Early exit for a 4-layer discriminator (`mini`): heads after layers
    // 2 and 3; other depths set objective.exit_layers themselves.
    ("exit", &["objective.exit_layers=[2, 3]"]),
    ("tupe-a", &["model.position=tupe-a"]),
    ("tupe-r", &["model.position=tupe-r"]),
    ("rope", &["model.position=rope"]),
    ("tnf", &["notes.enabled=true"]),
    ("pre-ln", &["model.norm=pre"]),
    (
        "no-dropout",
        &[
            "model.hidden_dropout_prob=0",
            "model.attention_probs_dropout_prob=0",
        ],
    ),
];

/// The comparison of issue "speed-ups for any objective": the baseline,
/// TUPE-R, TNF and both.
pub const DEFAULT_VARIANTS: &str = "baseline,tupe-r,tnf,tupe-r+tnf";

/// Parses `baseline,tupe-r,tnf,tupe-r+tnf`: each variant is a block or
/// blocks joined by `+`, where a block is a name above or a `key=value`
/// override of its own (`rope+train.learning_rate=4e-3`), for studies of
/// any setting. The first variant is the baseline of the table.
pub fn parse_variants(text: &str) -> Result<Vec<Variant>> {
    let mut variants: Vec<Variant> = Vec::new();
    for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        // Each setting with whether it was written out (`key=value`) rather
        // than taken from a named block.
        let mut sets: Vec<(String, bool)> = Vec::new();
        let key = |s: &str| s.split('=').next().unwrap_or_default().to_string();
        for block in name.split('+') {
            if block.contains('=') {
                // A written-out setting replaces a block's (`mcbert+objective.
                // mask_token_prob=1`); written out twice is a mistake.
                match sets.iter().position(|(s, _)| key(s) == key(block)) {
                    Some(i) if !sets[i].1 => sets[i] = (block.to_string(), true),
                    Some(_) => {
                        return Err(Error::Usage(format!(
                            "--variants: {name:?} sets the same config key twice"
                        )))
                    }
                    None => sets.push((block.to_string(), true)),
                }
                continue;
            }
            let Some((_, block_sets)) = BLOCKS.iter().find(|(b, _)| *b == block) else {
                let known: Vec<&str> = BLOCKS.iter().map(|(b, _)| *b).collect();
                return Err(Error::Usage(format!(
                    "--variants: unknown variant {block:?} in {name:?} (known: {}; combine with +; \
                     any key=value overrides a config field)",
                    known.join(", ")
                )));
            };
            for set in block_sets.iter() {
                match sets.iter().find(|(s, _)| key(s) == key(set)) {
                    // Written out earlier: that one stands.
                    Some((_, true)) => {}
                    Some((_, false)) => {
                        return Err(Error::Usage(format!(
                            "--variants: {name:?} sets the same config key twice"
                        )))
                    }
                    None => sets.push((set.to_string(), false)),
                }
            }
        }
        let sets: Vec<String> = sets.into_iter().map(|(s, _)| s).collect();
        if variants.iter().any(|v| v.name == name) {
            return Err(Error::Usage(format!(
                "--variants: {name:?} is listed twice"
            )));
        }
        variants.push(Variant {
            name: name.to_string(),
            sets,
        });
    }
    if variants.is_empty() {
        return Err(Error::Usage("--variants: no variant given".into()));
    }
    Ok(variants)
}

/// One evaluation point of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalPoint {
    pub step: f64,
    pub wall_s: f64,
    pub flops: f64,
    pub val_loss: f64,
}

/// A finished (or partial) pre-training run, read from its directory.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// The directory's name.
    pub name: String,
    pub dir: PathBuf,
    /// `config.toml` as dotted keys and values, in file order.
    pub config: Vec<(String, String)>,
    /// Every row of `metrics.jsonl`.
    pub metrics: Vec<Value>,
}

impl RunRecord {
    /// Reads `config.toml` and `metrics.jsonl` of a run directory.
    pub fn open(dir: &Path) -> Result<RunRecord> {
        let config_path = dir.join("config.toml");
        let text = crate::run::read_text(&config_path).map_err(|e| {
            Error::data(
                &config_path,
                format!("cannot read it ({e}); is {} a brisk run?", dir.display()),
            )
        })?;
        let table: toml::Table = toml::from_str(&text)
            .map_err(|e| Error::data(&config_path, format!("not valid TOML: {e}")))?;
        let mut config = Vec::new();
        flatten("", &toml::Value::Table(table), &mut config);
        let metrics_path = dir.join("metrics.jsonl");
        let text =
            std::fs::read_to_string(&metrics_path).map_err(|e| Error::io(&metrics_path, e))?;
        let metrics = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| {
                    Error::data(
                        &metrics_path,
                        format!("line {}: not valid JSON: {e}", i + 1),
                    )
                })
            })
            .collect::<Result<Vec<Value>>>()?;
        if metrics.is_empty() {
            return Err(Error::data(&metrics_path, "has no rows yet"));
        }
        let name = dir.file_name().map_or_else(
            || dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        Ok(RunRecord {
            name,
            dir: dir.to_path_buf(),
            config,
            metrics,
        })
    }

    /// `(x, key)` points of every row that has both.
    pub fn series(&self, x: &str, y: &str) -> Vec<(f64, f64)> {
        self.metrics
            .iter()
            .filter_map(|row| Some((row.get(x)?.as_f64()?, row.get(y)?.as_f64()?)))
            .collect()
    }

    /// The evaluation points (rows with a validation loss), in order.
    pub fn evaluations(&self) -> Vec<EvalPoint> {
        self.metrics
            .iter()
            .filter_map(|row| {
                Some(EvalPoint {
                    step: row.get("step")?.as_f64()?,
                    wall_s: row.get("wall_s")?.as_f64()?,
                    flops: row.get("flops")?.as_f64()?,
                    val_loss: row.get("val_loss")?.as_f64()?,
                })
            })
            .collect()
    }

    /// Where validation first reached [`PLATEAU_MARGIN`] below the unigram
    /// entropy (interpolated between evaluations), as a step.
    pub fn plateau_exit(&self) -> Option<f64> {
        let entropy = self.metrics.iter().find_map(|row| {
            Some(row.get("val_loss")?.as_f64()? + row.get("val_margin")?.as_f64()?)
        })?;
        reach(&self.evaluations(), entropy - PLATEAU_MARGIN).map(|r| r.step)
    }

    /// The `probe_<kind>` keys of the last evaluation, in order.
    pub fn final_probes(&self) -> Vec<(String, f64)> {
        let Some(row) = self
            .metrics
            .iter()
            .rev()
            .find(|r| r.get("val_loss").is_some())
        else {
            return Vec::new();
        };
        let Some(object) = row.as_object() else {
            return Vec::new();
        };
        object
            .iter()
            .filter(|(k, _)| k.starts_with("probe_"))
            .filter_map(|(k, v)| Some((k["probe_".len()..].to_string(), v.as_f64()?)))
            .collect()
    }

    /// The last value of `key` in `metrics.jsonl`.
    pub fn last(&self, key: &str) -> Option<f64> {
        self.metrics
            .iter()
            .rev()
            .find_map(|row| row.get(key)?.as_f64())
    }

    /// The value of a dotted config key.
    pub fn config_value(&self, key: &str) -> Option<&str> {
        self.config
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut Vec<(String, String)>) {
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// The config keys whose values differ between runs (a key missing from a
/// run counts as different), in the first run's order.
pub fn differing_keys(runs: &[RunRecord]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for run in runs {
        for (k, _) in &run.config {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    keys.into_iter()
        .filter(|k| {
            let first = runs[0].config_value(k);
            runs.iter().any(|r| r.config_value(k) != first)
        })
        .collect()
}

/// Where a run first reached a validation loss: step, wall-clock seconds
/// and FLOPs, interpolated linearly between the two evaluations around the
/// crossing.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Reach {
    pub step: f64,
    pub wall_s: f64,
    pub flops: f64,
}

/// The first point at which `points` reach `target` (`None` if never).
pub fn reach(points: &[EvalPoint], target: f64) -> Option<Reach> {
    let i = points.iter().position(|p| p.val_loss <= target)?;
    let at = points[i];
    if i == 0 || points[i - 1].val_loss == at.val_loss {
        return Some(Reach {
            step: at.step,
            wall_s: at.wall_s,
            flops: at.flops,
        });
    }
    let before = points[i - 1];
    let t = (before.val_loss - target) / (before.val_loss - at.val_loss);
    let lerp = |a: f64, b: f64| a + t * (b - a);
    Some(Reach {
        step: lerp(before.step, at.step),
        wall_s: lerp(before.wall_s, at.wall_s),
        flops: lerp(before.flops, at.flops),
    })
}

/// One row of the comparison table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub steps: f64,
    pub final_val_loss: Option<f64>,
    /// Seconds per optimiser step over the whole run.
    pub seconds_per_step: f64,
    /// Per-step time against the baseline's, minus one.
    pub step_overhead: f64,
    /// Where the run reached the baseline's final validation loss.
    pub reach: Option<Reach>,
    /// `reach` as fractions of the baseline's own cost (steps, wall, FLOPs).
    pub ratios: Option<Reach>,
    /// The step at which validation left the plateau ([`RunRecord::plateau_exit`]).
    pub plateau_exit: Option<f64>,
    /// Unigram entropy minus the final validation loss.
    pub final_margin: Option<f64>,
    /// Masked-token accuracy at the last evaluation.
    pub final_accuracy: Option<f64>,
    /// Cloze probe accuracies at the last evaluation (built-in corpus).
    pub probes: Vec<(String, f64)>,
}

/// The comparison: the first run is the baseline, and its final validation
/// loss is the target every run is measured against.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub baseline: String,
    pub target_val_loss: Option<f64>,
    pub rows: Vec<Row>,
}

impl Comparison {
    pub fn of(runs: &[RunRecord]) -> Comparison {
        let base = &runs[0];
        let target = base.evaluations().last().map(|p| p.val_loss);
        let per_step = |r: &RunRecord| {
            let steps = r.last("step").unwrap_or(0.0);
            r.last("wall_s").unwrap_or(f64::NAN) / steps.max(1.0)
        };
        let base_step = per_step(base);
        let base_cost = Reach {
            step: base.last("step").unwrap_or(f64::NAN),
            wall_s: base.last("wall_s").unwrap_or(f64::NAN),
            flops: base.last("flops").unwrap_or(f64::NAN),
        };
        let rows = runs
            .iter()
            .map(|r| {
                let reach = target.and_then(|t| reach(&r.evaluations(), t));
                Row {
                    name: r.name.clone(),
                    steps: r.last("step").unwrap_or(0.0),
                    final_val_loss: r.evaluations().last().map(|p| p.val_loss),
                    seconds_per_step: per_step(r),
                    step_overhead: per_step(r) / base_step - 1.0,
                    reach,
                    ratios: reach.map(|x| Reach {
                        step: x.step / base_cost.step,
                        wall_s: x.wall_s / base_cost.wall_s,
                        flops: x.flops / base_cost.flops,
                    }),
                    plateau_exit: r.plateau_exit(),
                    final_margin: r.last("val_margin"),
                    final_accuracy: r.last("val_accuracy"),
                    probes: r.final_probes(),
                }
            })
            .collect();
        Comparison {
            baseline: base.name.clone(),
            target_val_loss: target,
            rows,
        }
    }

    /// The table as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let target = self
            .target_val_loss
            .map_or("(not evaluated)".to_string(), |t| format!("{t:.4}"));
        out.push_str(&format!(
            "Cost to reach the baseline's ({}) final validation loss {target}, as a fraction of the baseline's whole run:\n\n",
            self.baseline
        ));
        out.push_str("| variant | steps | final val loss | steps to target | wall to target | FLOPs to target | s/step | per-step overhead |\n");
        out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for row in &self.rows {
            let val = row
                .final_val_loss
                .map_or("–".to_string(), |v| format!("{v:.4}"));
            let cells = match (row.reach, row.ratios) {
                (Some(r), Some(x)) => [
                    format!("{:.0} ({:.2}×)", r.step, x.step),
                    format!("{:.0} s ({:.2}×)", r.wall_s, x.wall_s),
                    format!("{:.3e} ({:.2}×)", r.flops, x.flops),
                ],
                _ => ["not reached".to_string(), "–".to_string(), "–".to_string()],
            };
            out.push_str(&format!(
                "| {} | {:.0} | {val} | {} | {} | {} | {:.3} | {:+.1}% |\n",
                row.name,
                row.steps,
                cells[0],
                cells[1],
                cells[2],
                row.seconds_per_step,
                100.0 * row.step_overhead
            ));
        }
        out.push('\n');
        out.push_str(&self.context_markdown());
        out
    }

    /// Probe kinds present in any row, in order.
    pub fn probe_kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = Vec::new();
        for (k, _) in self.rows.iter().flat_map(|r| &r.probes) {
            if !kinds.contains(k) {
                kinds.push(k.clone());
            }
        }
        kinds
    }

    /// The table of context use: when each run left the plateau, its final
    /// margin below the unigram entropy, masked-token accuracy and probes.
    pub fn context_markdown(&self) -> String {
        let kinds = self.probe_kinds();
        let mut out = format!(
            "Context use: the step at which validation first reached {PLATEAU_MARGIN} nats below the unigram entropy (off the plateau), and the final margin, masked-token accuracy and cloze probes:\n\n| variant | left the plateau at step | final margin (nats) | masked-token accuracy |"
        );
        for k in &kinds {
            out.push_str(&format!(" probe: {k} |"));
        }
        out.push_str("\n| --- | ---: | ---: | ---: |");
        out.push_str(&" ---: |".repeat(kinds.len()));
        out.push('\n');
        for row in &self.rows {
            let opt = |v: Option<f64>, digits: usize| {
                v.map_or("–".to_string(), |v| format!("{v:.digits$}"))
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} |",
                row.name,
                row.plateau_exit
                    .map_or("not left".to_string(), |s| format!("{s:.0}")),
                opt(row.final_margin, 3),
                opt(row.final_accuracy, 3),
            ));
            for k in &kinds {
                let v = row.probes.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
                out.push_str(&format!(" {} |", opt(v, 3)));
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_parse_and_combine() {
        let v = parse_variants(DEFAULT_VARIANTS).unwrap();
        let names: Vec<&str> = v.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["baseline", "tupe-r", "tnf", "tupe-r+tnf"]);
        assert!(v[0].sets.is_empty());
        assert_eq!(v[3].sets, ["model.position=tupe-r", "notes.enabled=true"]);
        let err = parse_variants("baseline,fast").unwrap_err().to_string();
        assert!(err.contains("\"fast\"") && err.contains("tupe-r"), "{err}");
        assert!(parse_variants("tnf,tnf").is_err());
        let v = parse_variants("rope+train.learning_rate=4e-3").unwrap();
        assert_eq!(
            v[0].sets,
            ["model.position=rope", "train.learning_rate=4e-3"]
        );
        assert!(parse_variants("tupe-a+tupe-r").is_err());
        // A written-out setting replaces a block's, wherever it stands.
        for text in [
            "mcbert+objective.mask_token_prob=1",
            "objective.mask_token_prob=1+mcbert",
        ] {
            let v = parse_variants(text).unwrap();
            let masking: Vec<&String> = v[0]
                .sets
                .iter()
                .filter(|s| s.contains("mask_token"))
                .collect();
            assert_eq!(masking, ["objective.mask_token_prob=1"], "{text}");
            assert_eq!(v[0].sets.len(), 3, "{text}");
        }
        assert!(parse_variants("rope+train.steps=1+train.steps=2").is_err());
    }

    fn point(step: f64, val_loss: f64) -> EvalPoint {
        EvalPoint {
            step,
            wall_s: 2.0 * step,
            flops: 1e9 * step,
            val_loss,
        }
    }

    #[test]
    fn reach_interpolates_between_evaluations() {
        let points = [point(10.0, 6.0), point(20.0, 5.0), point(30.0, 4.0)];
        assert_eq!(reach(&points, 7.0).unwrap().step, 10.0);
        let r = reach(&points, 4.5).unwrap();
        assert!((r.step - 25.0).abs() < 1e-12);
        assert!((r.wall_s - 50.0).abs() < 1e-12);
        assert!((r.flops - 25e9).abs() < 1.0);
        assert!(reach(&points, 3.9).is_none());
    }
}
