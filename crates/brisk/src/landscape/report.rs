//! A landscape run's `report.html`: one self-contained page (inline SVG and
//! CSS, no scripts) with the run's key numbers and every picture it drew.

use std::fmt::Write;
use std::path::Path;

use crate::compare::report::{escape, STYLE};
use crate::error::{Error, Result};
use crate::run::{read_text, write_atomic};

/// Writes `report.html` in `dir`: `facts` as a two-column table, then
/// every `.svg` file of `dir` (sorted by name), each under its file name;
/// and a PNG copy of every SVG.
pub fn write(dir: &Path, title: &str, facts: &[(String, String)]) -> Result<()> {
    let rows: Vec<Vec<String>> = facts
        .iter()
        .map(|(k, v)| vec![k.clone(), v.clone()])
        .collect();
    write_table(dir, title, &[], &rows)
}

/// [`write`] with a table of any width: `header` (may be empty), then
/// `rows`, each led by its name.
pub fn write_table(dir: &Path, title: &str, header: &[String], rows: &[Vec<String>]) -> Result<()> {
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{t}</title><style>{STYLE}</style></head><body>\n<h1>{t}</h1>\n<table>\n",
        t = escape(title)
    );
    if !header.is_empty() {
        page.push_str("<tr>");
        for h in header {
            let _ = write!(page, "<th>{}</th>", escape(h));
        }
        page.push_str("</tr>\n");
    }
    for row in rows {
        let Some((name, cells)) = row.split_first() else {
            continue;
        };
        let _ = write!(page, "<tr><th>{}</th>", escape(name));
        for c in cells {
            let _ = write!(page, "<td>{}</td>", escape(c));
        }
        page.push_str("</tr>\n");
    }
    page.push_str("</table>\n");
    let mut pictures: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "svg"))
        .collect();
    pictures.sort();
    let mut png_errors = Vec::new();
    for p in &pictures {
        if let Err(e) = crate::plot::svg_to_png(p, &p.with_extension("png")) {
            png_errors.push(e.to_string());
        }
    }
    if let Some(first) = png_errors.first() {
        let _ = writeln!(page, "<p>PNG copies: {}</p>", escape(first));
    }
    for p in pictures {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        let svg = read_text(&p)?;
        // The SVG's own XML declaration is not allowed inside HTML.
        let body = svg.find("<svg").map_or(svg.as_str(), |i| &svg[i..]);
        let _ = writeln!(
            page,
            "<figure>{body}<figcaption>{}</figcaption></figure>",
            escape(&name.unwrap_or_default())
        );
    }
    page.push_str("</body></html>\n");
    write_atomic(&dir.join("report.html"), page.as_bytes())
}

/// Facts from a JSON object: its scalar fields (numbers with five
/// significant digits), in order, nested objects' scalars as `a.b`.
pub fn facts_of(value: &serde_json::Value, prefix: &str, out: &mut Vec<(String, String)>) {
    let Some(map) = value.as_object() else {
        return;
    };
    for (k, v) in map {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            serde_json::Value::Number(n) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                let shown = if n.is_i64() || n.is_u64() {
                    n.to_string()
                } else {
                    format!("{x:.5}")
                };
                out.push((key, shown));
            }
            serde_json::Value::String(s) => out.push((key, s.clone())),
            serde_json::Value::Bool(b) => out.push((key, b.to_string())),
            serde_json::Value::Object(_) => facts_of(v, &key, out),
            _ => {}
        }
    }
}
