//! Word-per-line data files: CoNLL columns (CoNLL-2003: `word POS chunk
//! NER`, blank lines between sentences, `-DOCSTART-` lines between
//! documents) and CoNLL-U (Universal Dependencies: ten tab-separated
//! columns, `#` comments, multi-word token ranges and empty nodes, which
//! are skipped). Plain or gzip. Every malformed line is an error naming
//! the file and the line.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The layout of a data file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Whitespace-separated columns, the same number on every line.
    Conll,
    /// CoNLL-U: ten tab-separated columns.
    Conllu,
}

/// One sentence: its tokens' columns and where it starts in its file.
#[derive(Debug, Clone, PartialEq)]
pub struct Sentence {
    /// The 1-based line of each token.
    pub lines: Vec<usize>,
    /// Each token's columns.
    pub rows: Vec<Vec<String>>,
}

impl Sentence {
    /// Column `c` of every token.
    pub fn column(&self, c: usize) -> Vec<&str> {
        self.rows.iter().map(|r| r[c].as_str()).collect()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// The lines of a file, decompressed when its name ends in `.gz`.
fn lines(path: &Path) -> Result<Vec<String>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut out = Vec::new();
    for (i, line) in BufReader::new(reader).lines().enumerate() {
        let line = line.map_err(|e| Error::data(path, format!("line {}: {e}", i + 1)))?;
        out.push(if i == 0 {
            line.trim_start_matches('\u{feff}').to_string()
        } else {
            line
        });
    }
    Ok(out)
}

/// Reads every sentence of a file.
pub fn read(path: &Path, format: Format) -> Result<Vec<Sentence>> {
    let lines = lines(path)?;
    let sentences = match format {
        Format::Conll => parse_conll(&lines),
        Format::Conllu => parse_conllu(&lines),
    }
    .map_err(|(line, message)| Error::data(path, format!("line {line}: {message}")))?;
    if sentences.is_empty() {
        return Err(Error::data(path, "holds no sentence"));
    }
    Ok(sentences)
}

type Parsed = std::result::Result<Vec<Sentence>, (usize, String)>;

fn parse_conll(lines: &[String]) -> Parsed {
    let mut out = Vec::new();
    let mut current = Sentence {
        lines: Vec::new(),
        rows: Vec::new(),
    };
    let mut width = None;
    for (i, line) in lines.iter().enumerate() {
        let number = i + 1;
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() || fields[0] == "-DOCSTART-" {
            if !current.rows.is_empty() {
                out.push(std::mem::replace(
                    &mut current,
                    Sentence {
                        lines: Vec::new(),
                        rows: Vec::new(),
                    },
                ));
            }
            continue;
        }
        match width {
            None => width = Some(fields.len()),
            Some(w) if w != fields.len() => {
                return Err((
                    number,
                    format!(
                        "{} columns where the file's first token line has {w}: {line:?}",
                        fields.len()
                    ),
                ))
            }
            _ => {}
        }
        current.lines.push(number);
        current
            .rows
            .push(fields.into_iter().map(str::to_string).collect());
    }
    if !current.rows.is_empty() {
        out.push(current);
    }
    Ok(out)
}

fn parse_conllu(lines: &[String]) -> Parsed {
    let mut out = Vec::new();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut numbers = Vec::new();
    // The line where the current block (comments included) began.
    let mut block = None;
    for (i, line) in lines.iter().enumerate() {
        let number = i + 1;
        if line.trim().is_empty() {
            if let Some(start) = block.take() {
                if rows.is_empty() {
                    return Err((start, "a sentence without tokens".into()));
                }
                out.push(Sentence {
                    lines: std::mem::take(&mut numbers),
                    rows: std::mem::take(&mut rows),
                });
            }
            continue;
        }
        block.get_or_insert(number);
        if line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != 10 {
            return Err((
                number,
                format!(
                    "{} tab-separated columns, CoNLL-U has 10: {line:?}",
                    fields.len()
                ),
            ));
        }
        let id = fields[0];
        if id.contains('-') || id.contains('.') {
            // A multi-word token's range or an empty node: not a word of
            // the basic tree.
            continue;
        }
        match id.parse::<usize>() {
            Ok(n) if n == rows.len() + 1 => {}
            _ => {
                return Err((
                    number,
                    format!("token id {id:?} where {} was expected", rows.len() + 1),
                ))
            }
        }
        numbers.push(number);
        rows.push(fields.into_iter().map(str::to_string).collect());
    }
    if let Some(start) = block {
        if rows.is_empty() {
            return Err((start, "a sentence without tokens".into()));
        }
        out.push(Sentence {
            lines: numbers,
            rows,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn conll_skips_document_markers_and_blank_runs() {
        let text = "-DOCSTART- -X- -X- O\n\nEU NNP B-NP I-ORG\nrejects VBZ B-VP O\n\n\nPeter NNP B-NP I-PER\n";
        let s = parse_conll(&lines(text)).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].column(0), ["EU", "rejects"]);
        assert_eq!(s[0].lines, [3, 4]);
        assert_eq!(s[1].column(3), ["I-PER"]);
    }

    #[test]
    fn conll_names_the_line_of_a_short_row() {
        let err = parse_conll(&lines("EU NNP B-NP I-ORG\nrejects VBZ\n")).unwrap_err();
        assert_eq!(err.0, 2);
        assert!(err.1.contains("2 columns"), "{}", err.1);
    }

    #[test]
    fn conllu_skips_ranges_and_empty_nodes_and_checks_columns() {
        let row = |id: &str, form: &str| format!("{id}\t{form}\t_\tX\t_\t_\t0\troot\t_\t_");
        let text = [
            "# sent_id = 1".to_string(),
            row("1-2", "don't"),
            row("1", "do"),
            row("2", "n't"),
            row("2.1", "gone"),
            String::new(),
            "# text = a".into(),
            row("1", "a"),
        ]
        .join("\n");
        let s = parse_conllu(&lines(&text)).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].column(1), ["do", "n't"]);
        assert_eq!(s[1].lines, [8]);
        let bad = format!("{}\n1\tx\t_\n", row("1", "a"));
        assert_eq!(parse_conllu(&lines(&bad)).unwrap_err().0, 2);
        let empty = "# sent_id = 3\n# text =\n\n".to_string();
        let err = parse_conllu(&lines(&empty)).unwrap_err();
        assert_eq!(err.0, 1);
        assert!(err.1.contains("without tokens"));
    }
}
