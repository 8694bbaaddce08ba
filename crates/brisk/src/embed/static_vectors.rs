//! Pre-trained static word vectors in the word2vec / GloVe text format:
//! `word v1 v2 ...` per line, with an optional `count dim` header line,
//! or sparse rows `word index:value ...` (indices from 0) under the header,
//! as `brisk senses export` writes them.
//! Frozen.
//!
//! Lookup: the word as written, then lowercased (GloVe's vocabulary is
//! lowercase), then with every digit replaced by `0`; a word found none of
//! these ways gets the zero vector. How many words fell back is reported.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::FeatureTable;
use crate::error::{Error, Result};

/// `kind = "static"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    /// The vectors file (plain or `.gz`).
    pub path: PathBuf,
}

/// Vectors by word, all of one width.
#[derive(Debug)]
pub struct StaticVectors {
    pub dim: usize,
    index: HashMap<String, usize>,
    values: Vec<f32>,
}

impl StaticVectors {
    /// Reads the vectors of the words in `wanted` (and of their lowercase
    /// and digit-normalised forms) only, so a large file costs one pass and
    /// little memory.
    pub fn read(path: &Path, wanted: &dyn Fn(&str) -> bool) -> Result<StaticVectors> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let reader: Box<dyn std::io::Read> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(flate2::read::MultiGzDecoder::new(file))
        } else {
            Box::new(file)
        };
        let mut dim = None;
        // The word2vec header's width; sparse rows (`index:value`) need it.
        let mut header_dim = None;
        let mut index = HashMap::new();
        let mut values = Vec::new();
        for (i, line) in BufReader::new(reader).lines().enumerate() {
            let at = |m: String| Error::data(path, format!("line {}: {m}", i + 1));
            let line = line.map_err(|e| at(e.to_string()))?;
            let mut fields = line.split_whitespace();
            let Some(word) = fields.next() else { continue };
            let rest: Vec<&str> = fields.collect();
            if i == 0 && rest.len() == 1 && word.parse::<usize>().is_ok() {
                header_dim = rest[0].parse::<usize>().ok();
                continue; // the word2vec header: count and width
            }
            if rest.is_empty() {
                return Err(at(format!("the word {word:?} has no values")));
            }
            let sparse = rest[0].contains(':');
            let width = if sparse {
                header_dim.ok_or_else(|| {
                    at("sparse `index:value` rows need the `count dimensions` header line".into())
                })?
            } else {
                rest.len()
            };
            match dim {
                None => dim = Some(width),
                Some(d) if d != width => {
                    return Err(at(format!("{width} values where the first vector has {d}")))
                }
                _ => {}
            }
            if !wanted(word) || index.contains_key(word) {
                continue;
            }
            if sparse {
                let start = values.len();
                values.resize(start + width, 0.0);
                for entry in &rest {
                    let bad = || at(format!("{entry:?} is not `index:value`"));
                    let (k, v) = entry.split_once(':').ok_or_else(bad)?;
                    let k: usize = k.parse().map_err(|_| bad())?;
                    let v: f32 = v.parse().map_err(|_| bad())?;
                    if k >= width {
                        return Err(at(format!(
                            "index {k} is outside the header's {width} dimensions"
                        )));
                    }
                    values[start + k] = v;
                }
            } else {
                for v in &rest {
                    values.push(
                        v.parse::<f32>()
                            .map_err(|_| at(format!("{v:?} is not a number")))?,
                    );
                }
            }
            index.insert(word.to_string(), index.len());
        }
        let dim = dim.ok_or_else(|| Error::data(path, "holds no vectors"))?;
        Ok(StaticVectors { dim, index, values })
    }

    /// The forms a word is looked up by, in order.
    pub fn forms(word: &str) -> [String; 3] {
        let lower = word.to_lowercase();
        let digits = lower
            .chars()
            .map(|c| if c.is_ascii_digit() { '0' } else { c })
            .collect();
        [word.to_string(), lower, digits]
    }

    /// A word's vector, `None` when no form is known.
    pub fn get(&self, word: &str) -> Option<&[f32]> {
        Self::forms(word)
            .iter()
            .find_map(|f| self.index.get(f))
            .map(|&i| &self.values[i * self.dim..(i + 1) * self.dim])
    }

    /// The table of every word of `sentences`, and how many words had no
    /// vector.
    pub fn table(&self, sentences: &[Vec<String>]) -> (FeatureTable, usize) {
        let mut values = Vec::new();
        let mut missing = 0;
        let zero = vec![0f32; self.dim];
        for w in sentences.iter().flatten() {
            match self.get(w) {
                Some(v) => values.extend_from_slice(v),
                None => {
                    missing += 1;
                    values.extend_from_slice(&zero);
                }
            }
        }
        (FeatureTable::owned(self.dim, sentences, values), missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_formats_and_falls_back_to_lowercase_digits_then_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let glove = dir.path().join("glove.txt");
        std::fs::write(&glove, "the 1 2\nparis 3 4\n00 5 6\nunused 7 8\n").unwrap();
        let w2v = dir.path().join("w2v.txt");
        std::fs::write(&w2v, "2 2\nthe 1 2\nparis 3 4\n").unwrap();
        for path in [&glove, &w2v] {
            let v = StaticVectors::read(path, &|w| w != "unused").unwrap();
            assert_eq!(v.dim, 2);
            assert_eq!(v.get("Paris"), Some(&[3.0, 4.0][..]));
            assert_eq!(v.get("the"), Some(&[1.0, 2.0][..]));
            assert_eq!(v.get("unused"), None, "only wanted words are kept");
        }
        let v = StaticVectors::read(&glove, &|_| true).unwrap();
        assert_eq!(v.get("42"), Some(&[5.0, 6.0][..]), "digits read as 0");
        let sentences = vec![vec!["The".to_string(), "Atlantis".to_string()]];
        let (table, missing) = v.table(&sentences);
        assert_eq!(missing, 1);
        let mut row = [9f32; 2];
        table.copy_word(0, 1, &mut row);
        assert_eq!(row, [0.0, 0.0]);
        std::fs::write(&glove, "the 1 2\nparis 3\n").unwrap();
        let err = StaticVectors::read(&glove, &|_| true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn reads_sparse_rows_under_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("senses.txt");
        std::fs::write(&path, "2 4\nbank 0:0.25 3:0.75\nriver 1:1.000000\n").unwrap();
        let v = StaticVectors::read(&path, &|_| true).unwrap();
        assert_eq!(v.dim, 4);
        assert_eq!(v.get("bank"), Some(&[0.25, 0.0, 0.0, 0.75][..]));
        assert_eq!(v.get("river"), Some(&[0.0, 1.0, 0.0, 0.0][..]));
        for (text, wanted) in [
            ("bank 0:0.25\n", "header"),
            ("1 4\nbank 4:0.5\n", "outside"),
            ("1 4\nbank 1:0.5 2x\n", "index:value"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = StaticVectors::read(&path, &|_| true)
                .unwrap_err()
                .to_string();
            assert!(err.contains(wanted) && err.contains("senses.txt"), "{err}");
        }
    }
}
