//! A search's `report.html` ([`super::ace`]): one self-contained page, with
//! the page style and charts of `brisk report` — the dev score per
//! episode, σ(θ) per candidate over the episodes, the kept selection and
//! every episode's action and reward.

use std::fmt::Write;
use std::path::Path;

use super::ace::{Episode, SearchConfig, Strategy};
use crate::compare::report::{escape, STYLE};
use crate::error::Result;
use crate::plot::{line_chart_svg, Series, PALETTE};

/// Writes `report.html` in `out` for the episodes so far.
pub(crate) fn write(
    out: &Path,
    names: &[String],
    task: &str,
    config: &SearchConfig,
    history: &[Episode],
) -> Result<()> {
    crate::run::write_atomic(
        &out.join("report.html"),
        html(names, task, config, history)?.as_bytes(),
    )
}

fn html(
    names: &[String],
    task: &str,
    config: &SearchConfig,
    history: &[Episode],
) -> Result<String> {
    let strategy = config.ace.strategy;
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>brisk ace: {task} ({s})</title><style>{STYLE}</style></head><body>\n\
         <h1>Embedding search on {task}: strategy {s}</h1>\n",
        task = escape(task),
        s = strategy.name()
    );
    let Some(best) = history
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.dev.total_cmp(&b.1.dev).then(a.0.cmp(&b.0)))
        .map(|(_, e)| e)
    else {
        page.push_str("<p>No episode has finished yet.</p></body></html>\n");
        return Ok(page);
    };
    let _ = writeln!(
        page,
        "<p>{} of {} episodes, {} epoch(s) each, {} candidates. Best dev score {:.2} in episode {} \
         with {}. The run keeps that episode's model and selection.</p>",
        history.len(),
        config.ace.episodes,
        config.train.epochs,
        names.len(),
        100.0 * best.dev,
        best.episode,
        escape(&super::ace::describe(names, &best.action)),
    );
    let dev = [
        Series {
            name: "this episode",
            points: history
                .iter()
                .map(|e| (e.episode as f64, 100.0 * e.dev))
                .collect(),
            color: PALETTE[0],
        },
        Series {
            name: "best so far",
            points: history
                .iter()
                .map(|e| (e.episode as f64, 100.0 * e.best_dev))
                .collect(),
            color: PALETTE[1],
        },
    ];
    let svg = line_chart_svg(
        &format!("Dev score per episode ({task}, {})", strategy.name()),
        "episode",
        "dev score (x100)",
        &dev,
        None,
    )?;
    let _ = writeln!(page, "<h2>Dev score</h2>\n<figure>{svg}</figure>");
    let (what, title) = match strategy {
        Strategy::Weighted => ("σ(w)", "Trained scale σ(w) of each candidate per episode"),
        _ => (
            "σ(θ)",
            "Selection probability σ(θ) of each candidate per episode",
        ),
    };
    let probabilities: Vec<Series> = names
        .iter()
        .enumerate()
        .map(|(l, n)| Series {
            name: n,
            points: std::iter::once((0.0, 0.5))
                .chain(
                    history
                        .iter()
                        .map(|e| (e.episode as f64, e.probabilities[l])),
                )
                .collect(),
            color: PALETTE[l % PALETTE.len()],
        })
        .collect();
    let svg = line_chart_svg(title, "episode", what, &probabilities, None)?;
    let _ = writeln!(page, "<h2>Candidates</h2>\n<figure>{svg}</figure>");
    page.push_str(&format!(
        "<table><tr><th>candidate</th><th>kept</th><th>{what} at the end</th><th>episodes selected</th></tr>\n"
    ));
    let last = history.last().expect("at least one episode");
    for (l, n) in names.iter().enumerate() {
        let selected = history.iter().filter(|e| e.action[l]).count();
        let _ = writeln!(
            page,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{:.3}</td><td class=\"num\">{selected}</td></tr>",
            escape(n),
            if best.action[l] { "yes" } else { "no" },
            last.probabilities[l],
        );
    }
    page.push_str("</table>\n<h2>Episodes</h2>\n<table><tr><th>episode</th>");
    for n in names {
        let _ = write!(page, "<th>{}</th>", escape(n));
    }
    page.push_str("<th>dev</th><th>reward per candidate</th><th>train s</th></tr>\n");
    for e in history {
        let _ = write!(page, "<tr><td class=\"num\">{}</td>", e.episode);
        for &a in &e.action {
            page.push_str(if a { "<td>✓</td>" } else { "<td></td>" });
        }
        let rewards: Vec<String> = e.reward.iter().map(|r| format!("{r:+.2}")).collect();
        let _ = writeln!(
            page,
            "<td class=\"num\">{:.2}</td><td class=\"num\">{}</td><td class=\"num\">{:.0}</td></tr>",
            100.0 * e.dev,
            rewards.join(" "),
            e.train_s
        );
    }
    page.push_str("</table>\n</body></html>\n");
    Ok(page)
}
