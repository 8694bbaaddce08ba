//! The HTML report of a set of runs: one self-contained page (inline SVG
//! and CSS, no scripts) with the comparison table, one chart per view of the
//! loss (against steps, wall-clock and FLOPs), the config keys that differ
//! between the runs, and each run's final numbers exactly as its
//! `metrics.jsonl` has them.

use std::fmt::Write;
use std::path::Path;

use super::{differing_keys, Comparison, RunRecord};
use crate::error::Result;
use crate::plot::{line_chart_svg, Series, PALETTE};
use crate::train::pretrain::PLATEAU_MARGIN;

pub(crate) const STYLE: &str = "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}\
table{border-collapse:collapse;margin:1em 0;display:block;overflow-x:auto}th,td{border:1px solid #ccc;padding:4px 8px}\
td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f3}\
figure{margin:1em 0}svg{max-width:100%;height:auto}";

/// The final numbers shown per run: `(metrics.jsonl key, column title)`.
pub const FINAL_KEYS: [(&str, &str); 8] = [
    ("step", "steps"),
    ("loss", "training loss"),
    ("val_loss", "validation loss"),
    ("val_margin", "margin below unigram entropy"),
    ("val_accuracy", "masked-token accuracy"),
    ("tokens", "tokens"),
    ("flops", "training FLOPs"),
    ("wall_s", "wall-clock s"),
];

pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// How a final number is shown (the exact value is in `data-value`).
fn shown(key: &str, value: f64) -> String {
    match key {
        "step" | "tokens" => format!("{value:.0}"),
        "flops" => format!("{value:.4e}"),
        "wall_s" => format!("{value:.1}"),
        _ => format!("{value:.4}"),
    }
}

/// The page for `runs` (the first is the baseline of the comparison).
pub fn html(runs: &[RunRecord]) -> Result<String> {
    let mut page = String::new();
    let names: Vec<String> = runs.iter().map(|r| escape(&r.name)).collect();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>brisk report: {}</title><style>{STYLE}</style></head><body>\n\
         <h1>brisk report</h1>\n<p>Runs: {}. The first is the baseline.</p>\n",
        names.join(", "),
        names.join(", ")
    );
    let comparison = Comparison::of(runs);
    comparison_table(&mut page, &comparison);
    context_table(&mut page, &comparison);
    charts(&mut page, runs, &comparison.probe_kinds())?;
    config_diff(&mut page, runs);
    final_numbers(&mut page, runs);
    page.push_str("</body></html>\n");
    Ok(page)
}

/// Writes [`html`] to `path` atomically.
pub fn write(runs: &[RunRecord], path: &Path) -> Result<()> {
    crate::run::write_atomic(path, html(runs)?.as_bytes())
}

fn comparison_table(page: &mut String, c: &Comparison) {
    let target = c
        .target_val_loss
        .map_or("(not evaluated)".to_string(), |t| format!("{t:.4}"));
    let _ = write!(
        page,
        "<h2>Cost to reach the baseline</h2>\n<p>Steps, wall-clock and training FLOPs each run \
         needed to reach the final validation loss of <b>{}</b> ({target}), interpolated between \
         evaluations; in brackets, as a fraction of the baseline's whole run. Per-step overhead \
         compares seconds per step with the baseline's.</p>\n<table class=\"comparison\">\
         <tr><th>run</th><th>steps</th><th>final validation loss</th><th>steps to target</th>\
         <th>wall-clock to target</th><th>FLOPs to target</th><th>s/step</th>\
         <th>per-step overhead</th></tr>\n",
        escape(&c.baseline)
    );
    for row in &c.rows {
        let val = row
            .final_val_loss
            .map_or("–".to_string(), |v| format!("{v:.4}"));
        let reached = match (row.reach, row.ratios) {
            (Some(r), Some(x)) => format!(
                "<td class=\"num\">{:.0} ({:.2}×)</td><td class=\"num\">{:.0} s ({:.2}×)</td>\
                 <td class=\"num\">{:.3e} ({:.2}×)</td>",
                r.step, x.step, r.wall_s, x.wall_s, r.flops, x.flops
            ),
            _ => "<td colspan=\"3\">not reached</td>".to_string(),
        };
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td class=\"num\">{:.0}</td><td class=\"num\">{val}</td>{reached}\
             <td class=\"num\">{:.3}</td><td class=\"num\">{:+.1}%</td></tr>",
            escape(&row.name),
            row.steps,
            row.seconds_per_step,
            100.0 * row.step_overhead
        );
    }
    page.push_str("</table>\n");
}

fn context_table(page: &mut String, c: &Comparison) {
    let kinds = c.probe_kinds();
    let _ = write!(
        page,
        "<h2>Context use</h2>\n<p>A model that ignores context reaches the unigram entropy and no \
         lower (the plateau). <i>Left the plateau</i>: the step at which validation loss first \
         reached {PLATEAU_MARGIN} nats below it (interpolated); then the final margin below it, \
         masked-token accuracy, and (built-in corpus) the cloze probes' accuracy.</p>\n\
         <table class=\"context\"><tr><th>run</th><th>left the plateau at step</th>\
         <th>final margin (nats)</th><th>masked-token accuracy</th>"
    );
    for k in &kinds {
        let _ = write!(page, "<th>probe: {}</th>", escape(k));
    }
    page.push_str("</tr>\n");
    let cell = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.3}"));
    for row in &c.rows {
        let exit = row
            .plateau_exit
            .map_or("not left".to_string(), |s| format!("{s:.0}"));
        let _ = write!(
            page,
            "<tr><td>{}</td><td class=\"num\">{exit}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td>",
            escape(&row.name),
            cell(row.final_margin),
            cell(row.final_accuracy)
        );
        for k in &kinds {
            let v = row.probes.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
            let _ = write!(page, "<td class=\"num\">{}</td>", cell(v));
        }
        page.push_str("</tr>\n");
    }
    page.push_str("</table>\n");
}

fn charts(page: &mut String, runs: &[RunRecord], probe_kinds: &[String]) -> Result<()> {
    page.push_str("<h2>Loss</h2>\n");
    let nats = "cross-entropy (nats)";
    let mut views: Vec<(String, &str, String, &str, &str)> = [
        ("val_loss", "step", "Validation loss against steps", "step"),
        (
            "val_loss",
            "wall_s",
            "Validation loss against wall-clock",
            "seconds",
        ),
        (
            "val_loss",
            "flops",
            "Validation loss against training FLOPs",
            "FLOPs",
        ),
        ("loss", "step", "Training loss against steps", "step"),
    ]
    .into_iter()
    .map(|(y, x, title, x_label)| (y.to_string(), x, title.to_string(), x_label, nats))
    .collect();
    views.push((
        "val_accuracy".into(),
        "step",
        "Masked-token accuracy against steps".into(),
        "step",
        "accuracy",
    ));
    for kind in probe_kinds {
        views.push((
            format!("probe_{kind}"),
            "step",
            format!("Cloze probe \"{kind}\": accuracy against steps"),
            "step",
            "accuracy",
        ));
    }
    for (y, x, title, x_label, y_label) in views {
        let y = y.as_str();
        let series: Vec<Series> = runs
            .iter()
            .enumerate()
            .map(|(i, r)| Series {
                name: &r.name,
                points: r.series(x, y),
                color: PALETTE[i % PALETTE.len()],
            })
            .collect();
        if series.iter().all(|s| s.points.is_empty()) {
            continue;
        }
        let svg = line_chart_svg(&title, x_label, y_label, &series, None)?;
        let _ = writeln!(
            page,
            "<figure class=\"chart\" data-x=\"{x}\" data-y=\"{y}\">{svg}</figure>"
        );
    }
    Ok(())
}

fn config_diff(page: &mut String, runs: &[RunRecord]) {
    let keys = differing_keys(runs);
    page.push_str(
        "<h2>Config keys that differ</h2>\n<table class=\"config-diff\"><tr><th>key</th>",
    );
    for r in runs {
        let _ = write!(page, "<th>{}</th>", escape(&r.name));
    }
    page.push_str("</tr>\n");
    for key in &keys {
        let _ = write!(page, "<tr><td>{}</td>", escape(key));
        for r in runs {
            let value = r.config_value(key).unwrap_or("(absent)");
            let _ = write!(page, "<td>{}</td>", escape(value));
        }
        page.push_str("</tr>\n");
    }
    page.push_str("</table>\n");
    if keys.is_empty() {
        page.push_str("<p>The runs' configs are identical.</p>\n");
    }
}

fn final_numbers(page: &mut String, runs: &[RunRecord]) {
    page.push_str("<h2>Final numbers</h2>\n<p>The last value of each key in the run's <code>metrics.jsonl</code>.</p>\n<table class=\"final\"><tr><th>run</th>");
    for (_, title) in FINAL_KEYS {
        let _ = write!(page, "<th>{title}</th>");
    }
    page.push_str("</tr>\n");
    for r in runs {
        let _ = write!(page, "<tr data-run=\"{0}\"><td>{0}</td>", escape(&r.name));
        for (key, _) in FINAL_KEYS {
            match r.last(key) {
                Some(v) => {
                    let _ = write!(
                        page,
                        "<td class=\"num\" data-key=\"{key}\" data-value=\"{v}\">{}</td>",
                        shown(key, v)
                    );
                }
                None => {
                    let _ = write!(page, "<td data-key=\"{key}\">–</td>");
                }
            }
        }
        page.push_str("</tr>\n");
    }
    page.push_str("</table>\n");
}
