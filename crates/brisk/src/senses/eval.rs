//! `brisk senses eval`: how good and how readable the senses are.
//!
//! - Word similarity: Spearman ρ between human scores and −JS of the two
//!   words' vectors, per set, over the pairs whose words are both in the
//!   vocabulary (the coverage is reported beside ρ).
//! - Word intrusion (the paper's interpretability test): a quiz of five
//!   words per sense, its four most probable words and one intruder (a top
//!   word of another sense that is improbable in this one), shuffled, with
//!   the answers in a separate key, for a person to take.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::model::SensesModel;
use super::vectors::{js_divergence, Sparse};
use crate::corpus::generated::Rng;
use crate::error::{Error, Result};
use crate::run;
use crate::tasks::metrics::spearman;

/// One line of a similarity set: two words and a human score.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredPair {
    pub first: String,
    pub second: String,
    pub score: f64,
}

/// `word1<TAB>word2<TAB>score` per line (spaces also separate); blank and
/// `#` lines skipped.
pub fn read_pairs(path: &Path) -> Result<Vec<ScoredPair>> {
    let text = run::read_text(path)?;
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = |m: String| Error::data(path, format!("line {}: {m}", i + 1));
        if fields.len() != 3 {
            return Err(at(format!(
                "expected `word word score`, found {} fields",
                fields.len()
            )));
        }
        let score: f64 = fields[2]
            .parse()
            .map_err(|_| at(format!("the score {:?} is not a number", fields[2])))?;
        pairs.push(ScoredPair {
            first: fields[0].to_string(),
            second: fields[1].to_string(),
            score,
        });
    }
    if pairs.is_empty() {
        return Err(Error::data(path, "no word pairs"));
    }
    Ok(pairs)
}

/// One similarity set's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimilarityResult {
    pub set: String,
    pub pairs: usize,
    /// Pairs with both words in the vocabulary.
    pub found: usize,
    /// Spearman ρ over the found pairs (None under 3 pairs).
    pub spearman: Option<f64>,
}

/// Spearman ρ of `similarity` against the human scores over the pairs
/// `lookup` finds.
pub fn score_pairs(
    set: &str,
    pairs: &[ScoredPair],
    lookup: impl Fn(&str) -> Option<u32>,
    similarity: impl Fn(u32, u32) -> f64,
) -> SimilarityResult {
    let (mut human, mut model) = (Vec::new(), Vec::new());
    for pair in pairs {
        if let (Some(a), Some(b)) = (lookup(&pair.first), lookup(&pair.second)) {
            human.push(pair.score as f32);
            model.push(similarity(a, b) as f32);
        }
    }
    SimilarityResult {
        set: set.to_string(),
        pairs: pairs.len(),
        found: human.len(),
        spearman: (human.len() >= 3).then(|| spearman(&model, &human)),
    }
}

/// Every `.txt` set in `dir` (sorted by name), scored with −JS of the
/// final vectors.
pub fn word_similarity(
    model: &SensesModel,
    vectors: &[Sparse],
    dir: &Path,
) -> Result<Vec<SimilarityResult>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::data(dir, "no similarity sets (*.txt) here"));
    }
    files
        .iter()
        .map(|path| {
            let pairs = read_pairs(path)?;
            let name = path.file_stem().unwrap_or_default().to_string_lossy();
            Ok(score_pairs(
                &name,
                &pairs,
                |w| model.lookup(w),
                |a, b| -js_divergence(&vectors[a as usize], &vectors[b as usize]),
            ))
        })
        .collect()
}

/// One word-intrusion question.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Question {
    /// The merged sense asked about.
    pub sense: usize,
    /// Five words: the sense's top four and the intruder, shuffled.
    pub words: Vec<String>,
    pub intruder: String,
}

/// Words of the asked sense an intruder must not be among (at most a
/// quarter of the vocabulary).
const INTRUDER_EXCLUDED_TOP: usize = 100;

/// `count` questions on distinct merged senses drawn with `seed`. The
/// intruder is the most probable word of another random sense that is not
/// among the asked sense's top 100 words.
pub fn intrusion_quiz(model: &SensesModel, count: usize, seed: u64) -> Result<Vec<Question>> {
    let senses = model.clusters.count;
    if count > senses {
        return Err(Error::Usage(format!(
            "{count} questions asked of a model with {senses} merged senses"
        )));
    }
    let mut rng = Rng::new(seed);
    let mut order: Vec<usize> = (0..senses).collect();
    for i in 0..count {
        let j = i + rng.below(senses - i);
        order.swap(i, j);
    }
    let mut quiz = Vec::with_capacity(count);
    for &sense in &order[..count] {
        let excluded = INTRUDER_EXCLUDED_TOP.min(model.vocab.len() / 4).max(4);
        let top: Vec<u32> = model
            .sense_words(sense, excluded)
            .iter()
            .map(|e| e.0)
            .collect();
        let mut intruder = None;
        for _ in 0..100 {
            let other = rng.below(senses);
            if other == sense {
                continue;
            }
            intruder = model
                .sense_words(other, 10)
                .into_iter()
                .map(|e| e.0)
                .find(|w| !top.contains(w));
            if intruder.is_some() {
                break;
            }
        }
        let intruder = intruder.ok_or_else(|| {
            Error::Usage(format!(
                "no intruder found for sense {sense}: the vocabulary is too small for a quiz"
            ))
        })?;
        let mut words: Vec<String> = top[..4.min(top.len())]
            .iter()
            .map(|&w| model.word(w).to_string())
            .collect();
        let intruder = model.word(intruder).to_string();
        words.insert(rng.below(words.len() + 1), intruder.clone());
        quiz.push(Question {
            sense,
            words,
            intruder,
        });
    }
    Ok(quiz)
}

/// `quiz.tsv` (question number and its five words, for the person) and
/// `answers.tsv` (the intruder and the sense, for the marker).
pub fn write_quiz(dir: &Path, quiz: &[Question]) -> Result<()> {
    let mut questions = String::from("question\twords\n");
    let mut answers = String::from("question\tintruder\tsense\n");
    for (i, q) in quiz.iter().enumerate() {
        questions.push_str(&format!("{}\t{}\n", i + 1, q.words.join(" ")));
        answers.push_str(&format!("{}\t{}\t{}\n", i + 1, q.intruder, q.sense));
    }
    run::write_atomic(&dir.join("quiz.tsv"), questions.as_bytes())?;
    run::write_atomic(&dir.join("answers.tsv"), answers.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_read_and_bad_lines_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("set.txt");
        std::fs::write(&good, "car\tautomobile\t3.9\n\n# note\ngem jewel 3.8\n").unwrap();
        let pairs = read_pairs(&good).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[1].second, "jewel");
        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, "car\tautomobile\t3.9\ngem jewel high\n").unwrap();
        let e = read_pairs(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.txt") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn spearman_over_found_pairs_with_coverage() {
        let pairs: Vec<ScoredPair> = [
            ("a", "b", 1.0),
            ("a", "c", 2.0),
            ("b", "c", 3.0),
            ("a", "zz", 4.0),
        ]
        .iter()
        .map(|&(x, y, s)| ScoredPair {
            first: x.into(),
            second: y.into(),
            score: s,
        })
        .collect();
        let lookup = |w: &str| {
            ["a", "b", "c"]
                .iter()
                .position(|&x| x == w)
                .map(|i| i as u32)
        };
        // Similarity rising with the pair's score: ρ = 1.
        let result = score_pairs("t", &pairs, lookup, |a, b| (a + b) as f64);
        assert_eq!((result.pairs, result.found), (4, 3));
        assert!((result.spearman.unwrap() - 1.0).abs() < 1e-9);
        let reversed = score_pairs("t", &pairs, lookup, |a, b| -((a + b) as f64));
        assert!((reversed.spearman.unwrap() + 1.0).abs() < 1e-9);
    }
}
