//! Word-level tasks as data: a TOML file names the file format, the word
//! and label columns, the tag scheme, the train/dev/test files and the
//! metric, so that any CoNLL-style labelling or dependency task runs
//! without code. `conll03-ner`, `ewt-upos` and `ewt-deps` are built in as
//! the same TOML (files under the shared data folder). See `docs/tasks.md`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::conll::{self, Format};
use super::scheme::Scheme;
use crate::error::{Error, Result};

/// What is predicted for each word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WordTaskKind {
    /// One label per word (BiLSTM-CRF).
    Tagging,
    /// A head and a relation per word (biaffine parser).
    Parsing,
}

/// A word-level task, as its TOML file gives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WordTaskSpec {
    pub name: String,
    pub kind: WordTaskKind,
    pub format: Format,
    /// 0-based column of the word.
    pub word: usize,
    /// 0-based column of the label (tagging) or of the relation (parsing).
    pub label: usize,
    /// 0-based column of the head (parsing; CoNLL-U: 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<usize>,
    /// How labels spell spans (`iob1`, `bio`, `bioes`; `none` for plain
    /// labels such as parts of speech).
    #[serde(default = "no_scheme")]
    pub scheme: Scheme,
    /// `span-f1`, `accuracy` (tagging) or `attachment` (parsing: LAS, UAS).
    pub metric: String,
    /// The files, relative to the task file's folder (built-in tasks: to
    /// the shared data folder).
    pub train: PathBuf,
    pub dev: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<PathBuf>,
}

fn no_scheme() -> Scheme {
    Scheme::None
}

const BUILT_IN: [(&str, &str); 3] = [
    (
        "conll03-ner",
        r#"
name = "conll03-ner"
kind = "tagging"
format = "conll"
word = 0
label = 3
scheme = "iob1"
metric = "span-f1"
train = "conll2003/train.txt"
dev = "conll2003/valid.txt"
test = "conll2003/test.txt"
"#,
    ),
    (
        "ewt-upos",
        r#"
name = "ewt-upos"
kind = "tagging"
format = "conllu"
word = 1
label = 3
metric = "accuracy"
train = "ud-ewt/en_ewt-ud-train.conllu.gz"
dev = "ud-ewt/en_ewt-ud-dev.conllu.gz"
test = "ud-ewt/en_ewt-ud-test.conllu.gz"
"#,
    ),
    (
        "ewt-deps",
        r#"
name = "ewt-deps"
kind = "parsing"
format = "conllu"
word = 1
head = 6
label = 7
metric = "attachment"
train = "ud-ewt/en_ewt-ud-train.conllu.gz"
dev = "ud-ewt/en_ewt-ud-dev.conllu.gz"
test = "ud-ewt/en_ewt-ud-test.conllu.gz"
"#,
    ),
];

/// The names of the built-in word-level tasks.
pub fn built_in_names() -> Vec<&'static str> {
    BUILT_IN.iter().map(|(n, _)| *n).collect()
}

/// One sentence with its gold annotation.
#[derive(Debug, Clone, PartialEq)]
pub struct Labelled {
    pub words: Vec<String>,
    /// Labels as the file spells them (tagging), or relations (parsing).
    pub labels: Vec<String>,
    /// Parsing: each word's head, 0 for the root, words counted from 1.
    pub heads: Vec<usize>,
}

/// A word-level task with its files resolved.
#[derive(Debug, Clone)]
pub struct WordTask {
    pub spec: WordTaskSpec,
    pub train: PathBuf,
    pub dev: PathBuf,
    pub test: Option<PathBuf>,
}

impl WordTask {
    /// `name_or_file`: a built-in name (files under `data_dir`, the shared
    /// data folder) or a TOML task file (files relative to its folder).
    pub fn resolve(name_or_file: &str, data_dir: &Path) -> Result<WordTask> {
        let (text, base, shown) = match BUILT_IN.iter().find(|(n, _)| *n == name_or_file) {
            Some((_, toml)) => (
                toml.to_string(),
                data_dir.to_path_buf(),
                PathBuf::from(name_or_file),
            ),
            None => {
                let path = Path::new(name_or_file);
                if !path.is_file() {
                    return Err(Error::Usage(format!(
                        "--task {name_or_file:?}: neither a built-in word-level task ({}) nor a TOML task file",
                        built_in_names().join(", ")
                    )));
                }
                let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
                (crate::run::read_text(path)?, base, path.to_path_buf())
            }
        };
        let spec: WordTaskSpec =
            toml::from_str(&text).map_err(|e| Error::data(&shown, format!("task file: {e}")))?;
        spec.check(&shown)?;
        let train = base.join(&spec.train);
        let dev = base.join(&spec.dev);
        let test = spec.test.as_ref().map(|t| base.join(t));
        for file in [Some(&train), Some(&dev), test.as_ref()]
            .into_iter()
            .flatten()
        {
            if !file.is_file() {
                return Err(Error::data(
                    file,
                    format!("not found (a data file of task {:?})", spec.name),
                ));
            }
        }
        Ok(WordTask {
            spec,
            train,
            dev,
            test,
        })
    }

    /// Reads and checks one of the task's files.
    pub fn read(&self, path: &Path) -> Result<Vec<Labelled>> {
        read_labelled(&self.spec, path)
    }
}

impl WordTaskSpec {
    fn check(&self, shown: &Path) -> Result<()> {
        let bad = |m: String| Err(Error::data(shown, m));
        let metrics: &[&str] = match self.kind {
            WordTaskKind::Tagging => &["span-f1", "accuracy"],
            WordTaskKind::Parsing => &["attachment"],
        };
        if !metrics.contains(&self.metric.as_str()) {
            return bad(format!(
                "metric {:?} is not one of a {:?} task's: {}",
                self.metric,
                self.kind,
                metrics.join(", ")
            ));
        }
        if self.metric == "span-f1" && self.scheme == Scheme::None {
            return bad("metric \"span-f1\" needs a scheme (iob1, bio or bioes)".into());
        }
        if self.kind == WordTaskKind::Parsing && self.head.is_none() {
            return bad("a parsing task needs `head`, the column of each word's head".into());
        }
        Ok(())
    }

    /// The columns a line must have.
    fn columns_needed(&self) -> usize {
        1 + self.word.max(self.label).max(self.head.unwrap_or(0))
    }
}

/// Reads a task file: words, labels checked against the scheme, heads
/// checked to be word indices. Errors name the file and the line.
pub fn read_labelled(spec: &WordTaskSpec, path: &Path) -> Result<Vec<Labelled>> {
    let sentences = conll::read(path, spec.format)?;
    let need = spec.columns_needed();
    let at = |line: usize, m: String| Error::data(path, format!("line {line}: {m}"));
    let mut out = Vec::with_capacity(sentences.len());
    for s in sentences {
        if s.rows[0].len() < need {
            return Err(at(
                s.lines[0],
                format!(
                    "{} columns, task {:?} reads column {} (0-based)",
                    s.rows[0].len(),
                    spec.name,
                    need - 1
                ),
            ));
        }
        let mut labelled = Labelled {
            words: s.column(spec.word).iter().map(|w| w.to_string()).collect(),
            labels: s.column(spec.label).iter().map(|w| w.to_string()).collect(),
            heads: Vec::new(),
        };
        for (label, &line) in labelled.labels.iter().zip(&s.lines) {
            spec.scheme.check(label).map_err(|m| at(line, m))?;
        }
        if let Some(h) = spec.head {
            for (head, &line) in s.column(h).iter().zip(&s.lines) {
                match head.parse::<usize>() {
                    Ok(v) if v <= s.len() => labelled.heads.push(v),
                    _ => {
                        return Err(at(
                            line,
                            format!(
                            "head {head:?} is not a word of this {}-word sentence (0: the root)",
                            s.len()
                        ),
                        ))
                    }
                }
            }
        }
        out.push(labelled);
    }
    Ok(out)
}

/// Plain text to predict on: one sentence per line, words split on
/// whitespace; blank lines are skipped.
pub fn read_plain(path: &Path) -> Result<Vec<Vec<String>>> {
    let text = crate::run::read_text(path)?;
    Ok(text
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter(|w| !w.is_empty())
        .collect())
}
