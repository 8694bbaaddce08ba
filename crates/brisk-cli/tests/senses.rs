//! `brisk senses train`: counts and samples end to end on a small text,
//! resumes to the same state as a run straight through, and refuses bad
//! input with a clear message.

use std::path::Path;

mod common;
use common::{brisk, stderr};

/// A text of `docs` paragraphs, each drawn from one of three word groups
/// (plus shared function words), so that topics have something to find.
fn write_text(path: &Path, docs: usize) {
    let groups = [
        [
            "river", "water", "boat", "fish", "bank", "shore", "stream", "lake",
        ],
        [
            "money", "loan", "bank", "account", "cash", "credit", "interest", "deposit",
        ],
        [
            "music", "song", "band", "guitar", "drum", "concert", "album", "singer",
        ],
    ];
    let glue = ["the", "a", "of", "and", "in"];
    let mut state = 17u64;
    let mut next = |n: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) % n as u64) as usize
    };
    let mut text = String::new();
    for d in 0..docs {
        let group = &groups[d % 3];
        let words: Vec<&str> = (0..120)
            .map(|i| {
                if i % 3 == 0 {
                    glue[next(glue.len())]
                } else {
                    group[next(group.len())]
                }
            })
            .collect();
        text.push_str(&words.join(" "));
        text.push_str("\n\n");
    }
    std::fs::write(path, text).unwrap();
}

fn train(dir: &Path, out: &str, topics: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "senses",
        "train",
        "--topics",
        topics,
        "--input",
        "text.txt",
        "--out",
        out,
        "--seed",
        "3",
        "--threads",
        "2",
        "--set",
        "cooc.min_count=5",
        "--set",
        "cooc.subsample=0",
        "--set",
        "save_every=2",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    brisk(&args, dir)
}

#[test]
fn senses_train_counts_samples_and_resumes_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    write_text(&dir.path().join("text.txt"), 60);

    let straight = train(dir.path(), "straight", "4", &["--iterations", "6"]);
    assert!(straight.status.success(), "{}", stderr(&straight));
    let run = dir.path().join("straight");
    for file in [
        "config.toml",
        "provenance.json",
        "vocab.tsv",
        "cooc.safetensors",
        "state/topics.u16",
        "summary.json",
    ] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 6);
    let ll = |i: usize| rows[i]["log_likelihood"].as_f64().unwrap();
    assert!(ll(5) > ll(0), "log-likelihood {} -> {}", ll(0), ll(5));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["vocab"], 28);
    assert_eq!(summary["iterations"], 6);
    // 4 senses: K/30 rounds up to 1 raw non-zero, 3K/4 = 3 merged senses,
    // so every word's final vector has ⌊3 · 1 / 4⌋ → 1 non-zero.
    assert_eq!(summary["vectors"]["sizes"]["merged"], 3);
    let vectors = std::fs::read_to_string(run.join("vectors.txt")).unwrap();
    let mut lines = vectors.lines();
    assert_eq!(lines.next(), Some("28 3"));
    for line in lines {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 2, "{line}");
        let (index, value) = fields[1].split_once(':').unwrap();
        assert!(index.parse::<usize>().unwrap() < 3);
        assert!((value.parse::<f64>().unwrap() - 1.0).abs() < 1e-6, "{line}");
    }
    let senses = std::fs::read_to_string(run.join("senses.tsv")).unwrap();
    assert_eq!(senses.lines().count(), 1 + 3, "{senses}");

    let first = train(dir.path(), "halves", "4", &["--iterations", "3"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let second = brisk(
        &[
            "senses",
            "train",
            "--out",
            "halves",
            "--resume",
            "--iterations",
            "6",
            "--threads",
            "1",
            "--quiet",
        ],
        dir.path(),
    );
    assert!(second.status.success(), "{}", stderr(&second));
    let halves = dir.path().join("halves");
    assert_eq!(
        std::fs::read(halves.join("state/topics.u16")).unwrap(),
        std::fs::read(run.join("state/topics.u16")).unwrap(),
        "3 + 3 iterations (at 2 then 1 threads) must equal 6 straight"
    );
    let resumed = std::fs::read_to_string(halves.join("metrics.jsonl")).unwrap();
    assert_eq!(resumed.lines().count(), 6);

    let again = train(dir.path(), "straight", "4", &["--iterations", "6"]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "an existing run needs --force or --resume"
    );
}

#[test]
fn senses_train_refuses_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("text.txt"), "").unwrap();
    let empty = train(dir.path(), "empty", "4", &["--iterations", "1"]);
    assert_ne!(empty.status.code(), Some(0));
    assert!(!stderr(&empty).contains("panicked"), "{}", stderr(&empty));
    assert!(
        !dir.path().join("empty").exists(),
        "no run directory is left behind"
    );

    write_text(&dir.path().join("text.txt"), 30);
    let few = train(dir.path(), "few", "500", &["--iterations", "1"]);
    assert_eq!(few.status.code(), Some(2), "{}", stderr(&few));
    assert!(
        stderr(&few).contains("fewer than lda.topics"),
        "{}",
        stderr(&few)
    );

    let bad_key = train(dir.path(), "bad", "4", &["--set", "lda.topicz=3"]);
    assert_eq!(bad_key.status.code(), Some(2));
    assert!(stderr(&bad_key).contains("topicz"), "{}", stderr(&bad_key));
}
