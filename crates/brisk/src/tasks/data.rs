//! Downstream tasks as data: a task is a TOML description of TSV files
//! (which columns hold the text and the label, whether there is a header,
//! the label set or regression) so that any GLUE-style task runs without
//! code. SST-2, CoLA, RTE, STS-B and MRPC are built in as the same TOML.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A column, by header name or by 0-based index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Column {
    Index(usize),
    Name(String),
}

impl std::fmt::Display for Column {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Column::Index(i) => write!(f, "column {i}"),
            Column::Name(n) => write!(f, "column {n:?}"),
        }
    }
}

/// What the label is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Classification,
    Regression,
}

/// A task, as its TOML file gives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    pub kind: Kind,
    /// The label values of a classification task; their order gives the
    /// class ids.
    #[serde(default)]
    pub labels: Vec<String>,
    /// `accuracy`, `f1`, `mcc`, `pearson`, `spearman`; the first chooses the
    /// best checkpoint on dev.
    pub metrics: Vec<String>,
    /// Whether the first line of each file names the columns.
    pub header: bool,
    pub text_a: Column,
    #[serde(default)]
    pub text_b: Option<Column>,
    pub label: Column,
    /// The files, relative to the task file's folder (built-in tasks: to
    /// the GLUE folder).
    pub train: PathBuf,
    pub dev: PathBuf,
}

const BUILT_IN: [(&str, &str); 5] = [
    (
        "sst2",
        r#"
name = "sst2"
kind = "classification"
labels = ["0", "1"]
metrics = ["accuracy"]
header = true
text_a = "sentence"
label = "label"
train = "SST-2/train.tsv"
dev = "SST-2/dev.tsv"
"#,
    ),
    (
        "cola",
        r#"
name = "cola"
kind = "classification"
labels = ["0", "1"]
metrics = ["mcc", "accuracy"]
header = false
text_a = 3
label = 1
train = "CoLA/in_domain_train.tsv"
dev = "CoLA/in_domain_dev.tsv"
"#,
    ),
    (
        "rte",
        r#"
name = "rte"
kind = "classification"
labels = ["not_entailment", "entailment"]
metrics = ["accuracy"]
header = true
text_a = "sentence1"
text_b = "sentence2"
label = "label"
train = "RTE/train.tsv"
dev = "RTE/dev.tsv"
"#,
    ),
    (
        "stsb",
        r#"
name = "stsb"
kind = "regression"
metrics = ["pearson", "spearman"]
header = false
text_a = 5
text_b = 6
label = 4
train = "STS-B/sts-train.tsv"
dev = "STS-B/sts-dev.tsv"
"#,
    ),
    // The MSR release that GLUE's MRPC is built from. GLUE's 408-pair dev
    // split is a subset of this train file whose ids are not published with
    // it, so the 1,725-pair test file (labelled) serves as dev.
    (
        "mrpc",
        r##"
name = "mrpc"
kind = "classification"
labels = ["0", "1"]
metrics = ["f1", "accuracy"]
header = true
text_a = "#1 String"
text_b = "#2 String"
label = "Quality"
train = "MRPC/train.tsv"
dev = "MRPC/test.tsv"
"##,
    ),
];

/// The names of the built-in tasks.
pub fn built_in_names() -> Vec<&'static str> {
    BUILT_IN.iter().map(|(n, _)| *n).collect()
}

/// A task with its files resolved.
#[derive(Debug, Clone)]
pub struct Task {
    pub spec: TaskSpec,
    pub train: PathBuf,
    pub dev: PathBuf,
}

impl Task {
    /// `name_or_file`: a built-in name (files under `glue_dir`) or a TOML
    /// task file (files relative to its folder).
    pub fn resolve(name_or_file: &str, glue_dir: &Path) -> Result<Task> {
        let (text, base, source) = match BUILT_IN.iter().find(|(n, _)| *n == name_or_file) {
            Some((_, toml)) => (toml.to_string(), glue_dir.to_path_buf(), None),
            None => {
                let path = Path::new(name_or_file);
                if !path.exists() {
                    return Err(Error::Usage(format!(
                        "--task {name_or_file:?}: neither a built-in task ({}) nor a TOML task file",
                        built_in_names().join(", ")
                    )));
                }
                let text = crate::run::read_text(path)?;
                let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
                (text, base, Some(path.to_path_buf()))
            }
        };
        let shown = source
            .clone()
            .unwrap_or_else(|| PathBuf::from(name_or_file));
        let spec: TaskSpec =
            toml::from_str(&text).map_err(|e| Error::data(&shown, format!("task file: {e}")))?;
        spec.check(&shown)?;
        let (train, dev) = (base.join(&spec.train), base.join(&spec.dev));
        let named_by = |e: Error| match &source {
            Some(file) => Error::data(file, format!("names data that does not fit it: {e}")),
            None => e,
        };
        for file in [&train, &dev] {
            if !file.is_file() {
                return Err(named_by(Error::data(
                    file,
                    format!("not found (a data file of task {:?})", spec.name),
                )));
            }
            // Named columns are checked now, before any run directory exists.
            if spec.header {
                Table::read(&spec, file, &first_line(file)?, true).map_err(named_by)?;
            }
        }
        Ok(Task { train, dev, spec })
    }

    /// The number of model outputs: classes, or 1 for regression.
    pub fn num_outputs(&self) -> usize {
        match self.spec.kind {
            Kind::Classification => self.spec.labels.len(),
            Kind::Regression => 1,
        }
    }
}

impl TaskSpec {
    fn check(&self, source: &Path) -> Result<()> {
        let bad = |msg: String| Err(Error::data(source, msg));
        match self.kind {
            Kind::Classification if self.labels.len() < 2 => {
                return bad("a classification task needs `labels` with at least two values".into())
            }
            Kind::Regression if !self.labels.is_empty() => {
                return bad("a regression task has no `labels`".into())
            }
            _ => {}
        }
        if self.metrics.is_empty() {
            return bad("`metrics` is empty".into());
        }
        for m in &self.metrics {
            if !super::metrics::NAMES.contains(&m.as_str()) {
                return bad(format!(
                    "unknown metric {m:?} (known: {})",
                    super::metrics::NAMES.join(", ")
                ));
            }
        }
        if !self.header {
            for c in [Some(&self.text_a), self.text_b.as_ref(), Some(&self.label)]
                .into_iter()
                .flatten()
            {
                if let Column::Name(n) = c {
                    return bad(format!(
                        "column {n:?} is named, but `header = false`: give its index"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// One example: the text (or pair) and the label (a class id, or the
/// regression target).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub a: String,
    pub b: Option<String>,
    pub label: f32,
}

/// The first line of a text file (without a byte-order mark).
fn first_line(path: &Path) -> Result<String> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut line = String::new();
    std::io::BufReader::new(file)
        .read_line(&mut line)
        .map_err(|e| Error::data(path, format!("cannot read its first line as UTF-8 ({e})")))?;
    Ok(crate::run::strip_bom(line))
}

/// The rows of a TSV file (header skipped when the task has one) with the
/// index of each column the task names: `[text_a, text_b, label]`, where
/// the label is looked up only when `with_label`.
struct Table<'a> {
    rows: Vec<(usize, Vec<&'a str>)>,
    columns: [Option<usize>; 3],
}

impl<'a> Table<'a> {
    fn read(spec: &TaskSpec, path: &Path, text: &'a str, with_label: bool) -> Result<Table<'a>> {
        let mut lines = text.lines().enumerate();
        let header: Vec<&str> = if spec.header {
            match lines.next() {
                Some((_, h)) => h.split('\t').collect(),
                None => return Err(Error::data(path, "is empty (expected a header line)")),
            }
        } else {
            Vec::new()
        };
        let index = |c: &Column| -> Result<usize> {
            match c {
                Column::Index(i) => Ok(*i),
                Column::Name(n) => header.iter().position(|h| h == n).ok_or_else(|| {
                    Error::data(
                        path,
                        format!(
                            "the header has no column {n:?} (it has: {})",
                            header.join(", ")
                        ),
                    )
                }),
            }
        };
        let columns = [
            Some(index(&spec.text_a)?),
            spec.text_b.as_ref().map(index).transpose()?,
            with_label.then(|| index(&spec.label)).transpose()?,
        ];
        let rows = lines
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, l)| (n + 1, l.split('\t').collect()))
            .collect();
        Ok(Table { rows, columns })
    }
}

/// Column `i` of a row, or an error naming the file, line and `what`.
fn cell<'a>(path: &Path, line: usize, cols: &[&'a str], i: usize, what: &str) -> Result<&'a str> {
    cols.get(i).copied().ok_or_else(|| {
        Error::data(
            path,
            format!(
                "line {line}: has {} columns; the task reads {what} from column {i}",
                cols.len()
            ),
        )
    })
}

/// The text (or pair) of each row of a task-shaped TSV file; a label
/// column need not be there (for prediction).
pub fn read_texts(spec: &TaskSpec, path: &Path) -> Result<Vec<(String, Option<String>)>> {
    let text = crate::run::read_text(path)?;
    let table = Table::read(spec, path, &text, false)?;
    let [ia, ib, _] = table.columns;
    let mut out = Vec::new();
    for (line, cols) in &table.rows {
        let a = cell(path, *line, cols, ia.expect("text_a"), "the text")?.to_string();
        let b = ib
            .map(|i| cell(path, *line, cols, i, "the second text"))
            .transpose()?
            .map(str::to_string);
        out.push((a, b));
    }
    if out.is_empty() {
        return Err(Error::data(path, "has no examples"));
    }
    Ok(out)
}

/// Reads one split of a task. A short row, a missing header column or a
/// label outside the task's set is an error naming the file and line.
pub fn read_split(spec: &TaskSpec, path: &Path) -> Result<Vec<Example>> {
    let text = crate::run::read_text(path)?;
    let table = Table::read(spec, path, &text, true)?;
    let [ia, ib, il] = table.columns;
    let mut out = Vec::new();
    for (line, cols) in &table.rows {
        let raw = cell(path, *line, cols, il.expect("label"), "the label")?.trim();
        let label = match spec.kind {
            Kind::Classification => spec.labels.iter().position(|l| l == raw).ok_or_else(|| {
                Error::data(
                    path,
                    format!(
                        "line {line}: label {raw:?} is not one of the task's labels ({})",
                        spec.labels.join(", ")
                    ),
                )
            })? as f32,
            Kind::Regression => raw.parse::<f32>().map_err(|_| {
                Error::data(path, format!("line {line}: label {raw:?} is not a number"))
            })?,
        };
        out.push(Example {
            a: cell(path, *line, cols, ia.expect("text_a"), "the text")?.to_string(),
            b: ib
                .map(|i| cell(path, *line, cols, i, "the second text"))
                .transpose()?
                .map(str::to_string),
            label,
        });
    }
    if out.is_empty() {
        return Err(Error::data(path, "has no examples"));
    }
    Ok(out)
}
