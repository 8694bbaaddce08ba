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
    for file in ["vectors.txt", "senses.tsv", "model/clusters.json"] {
        assert_eq!(
            std::fs::read(halves.join(file)).unwrap(),
            std::fs::read(run.join(file)).unwrap(),
            "{file}: the same vectors, bit for bit, after a resume"
        );
    }
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

/// A trained model read back: a word's senses, a sense's words, similar
/// words, in-context senses, export in both formats, and the evaluation.
#[test]
fn senses_model_is_read_by_show_similar_infer_export_and_eval() {
    let dir = tempfile::tempdir().unwrap();
    write_text(&dir.path().join("text.txt"), 90);
    let trained = train(
        dir.path(),
        "run",
        "12",
        &[
            "--iterations",
            "30",
            "--set",
            "vectors.raw_nnz=6",
            "--set",
            "vectors.merged=9",
        ],
    );
    assert!(trained.status.success(), "{}", stderr(&trained));
    let read = |args: &[&str]| {
        let mut all = vec!["senses", args[0], "--model", "run", "--threads", "1"];
        all.extend_from_slice(&args[1..]);
        brisk(&all, dir.path())
    };
    let stdout = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).to_string();

    let show = read(&["show", "guitar", "--words", "4"]);
    assert!(show.status.success(), "{}", stderr(&show));
    let text = stdout(&show);
    assert!(text.starts_with("guitar (count"), "{text}");
    assert!(text.contains("sense"), "{text}");

    // The similar words of a music word are music words.
    let similar = read(&["similar", "guitar", "--top", "3"]);
    assert!(similar.status.success(), "{}", stderr(&similar));
    let music = [
        "music", "song", "band", "drum", "concert", "album", "singer",
    ];
    let text = stdout(&similar);
    let found: Vec<&str> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(found.len(), 3, "{text}");
    assert!(found.iter().all(|w| music.contains(w)), "{text}");

    // "bank" is a river word and a money word: its heaviest sense in a
    // context follows the context.
    let top_sense = |context: &str, counted: &str| {
        let o = read(&[
            "infer", "--word", "bank", "--senses", "1", "--words", "12", context,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let text = stdout(&o);
        assert!(text.contains(counted), "{text}");
        text.lines().nth(1).unwrap().to_string()
    };
    let river = top_sense(
        "the boat on the water near the fish and the shore",
        "9 context words used, 2 unknown",
    );
    let money = top_sense(
        "a loan of cash from the account with interest",
        "7 context words used, 2 unknown",
    );
    assert!(river.contains("boat") || river.contains("shore"), "{river}");
    assert!(money.contains("loan") || money.contains("cash"), "{money}");

    let sense = read(&["sense", "0", "--words", "5"]);
    assert!(sense.status.success(), "{}", stderr(&sense));
    assert_eq!(stdout(&sense).lines().count(), 6);
    let missing_sense = read(&["sense", "99"]);
    assert_eq!(missing_sense.status.code(), Some(2));

    for (format, file) in [("sparse", "sparse.txt"), ("dense", "dense.txt")] {
        let o = read(&["export", "--output", file, "--format", format]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let sparse = std::fs::read_to_string(dir.path().join("sparse.txt")).unwrap();
    let dense = std::fs::read_to_string(dir.path().join("dense.txt")).unwrap();
    let header = sparse.lines().next().unwrap().to_string();
    assert_eq!(dense.lines().next().unwrap(), header);
    let dim: usize = header.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(dim <= 9, "{header}");
    // The same vectors both ways: every dense row holds its sparse row.
    for (s, d) in sparse.lines().zip(dense.lines()).skip(1) {
        let values: Vec<f64> = d.split(' ').skip(1).map(|x| x.parse().unwrap()).collect();
        assert_eq!(values.len(), dim);
        let mut from_sparse = vec![0f64; dim];
        for entry in s.split(' ').skip(1) {
            let (i, v) = entry.split_once(':').unwrap();
            from_sparse[i.parse::<usize>().unwrap()] = v.parse().unwrap();
        }
        for (a, b) in values.iter().zip(&from_sparse) {
            assert!((a - b).abs() < 1e-5, "{s} / {d}");
        }
    }
    let again = read(&["export", "--output", "sparse.txt"]);
    assert_eq!(again.status.code(), Some(2), "no overwrite without --force");

    let sets = dir.path().join("sets");
    std::fs::create_dir(&sets).unwrap();
    std::fs::write(
        sets.join("toy.txt"),
        "guitar\tsong\t9\nguitar\tloan\t1\nriver\tlake\t8\nriver\tcash\t2\nmoney\tcredit\t9\nzebra\tguitar\t5\n",
    )
    .unwrap();
    let eval = read(&["eval", "--word-sim", "sets", "--quiz", "3", "--out", "ev"]);
    assert!(eval.status.success(), "{}", stderr(&eval));
    let results: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("ev/word_similarity.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(results[0]["pairs"], 6);
    assert_eq!(results[0]["found"], 5, "zebra is not in the vocabulary");
    assert!(results[0]["spearman"].as_f64().unwrap() > 0.5, "{results}");
    let quiz = std::fs::read_to_string(dir.path().join("ev/quiz.tsv")).unwrap();
    let answers = std::fs::read_to_string(dir.path().join("ev/answers.tsv")).unwrap();
    assert_eq!(quiz.lines().count(), 4);
    for (q, a) in quiz.lines().zip(answers.lines()).skip(1) {
        let intruder = a.split('\t').nth(1).unwrap();
        let words: Vec<&str> = q.split('\t').nth(1).unwrap().split(' ').collect();
        assert_eq!(words.len(), 5, "{q}");
        assert!(words.contains(&intruder), "{q} / {a}");
    }

    // Output into a pipe whose reader has gone (`| true`) ends the command
    // quietly, not with a panic.
    #[cfg(unix)]
    {
        let exe = env!("CARGO_BIN_EXE_brisk");
        let piped = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "'{exe}' senses similar bank --model run --top 20 | true"
            ))
            .current_dir(dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&piped.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{err}"
        );
    }
    let unknown = read(&["show", "zebra"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        stderr(&unknown).contains("\"zebra\" is not in the vocabulary"),
        "{}",
        stderr(&unknown)
    );
    let unfinished = brisk(&["senses", "show", "the", "--model", "nowhere"], dir.path());
    assert_ne!(unfinished.status.code(), Some(0));
    assert!(!stderr(&unfinished).contains("panicked"));
}

/// Pseudo-words: a run trained with `pseudo.pairs` holds its test out, and
/// `eval` tells the two originals apart from their contexts far better than
/// always answering the more frequent one when they come from different
/// word groups.
#[test]
fn senses_pseudo_words_are_told_apart_by_their_contexts() {
    let dir = tempfile::tempdir().unwrap();
    write_text(&dir.path().join("text.txt"), 150);
    let trained = train(
        dir.path(),
        "run",
        "12",
        &[
            "--iterations",
            "30",
            "--set",
            "vectors.raw_nnz=6",
            "--set",
            "pseudo.pairs=2",
            "--set",
            "pseudo.min_rank=5",
            "--set",
            "pseudo.max_rank=28",
            "--set",
            "pseudo.held_out_every=4",
        ],
    );
    assert!(trained.status.success(), "{}", stderr(&trained));
    let test: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("run/pseudo.json")).unwrap())
            .unwrap();
    let pairs = test["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 2);
    let vocab = std::fs::read_to_string(dir.path().join("run/vocab.tsv")).unwrap();
    for pair in pairs {
        let (first, second) = (
            pair["first"].as_str().unwrap(),
            pair["second"].as_str().unwrap(),
        );
        assert!(vocab.contains(pair["pseudo"].as_str().unwrap()));
        // The originals are gone from the training text.
        for word in [first, second] {
            assert!(
                !vocab.lines().any(|l| l.split('\t').next() == Some(word)),
                "{word}"
            );
        }
    }
    let eval = brisk(
        &[
            "senses",
            "eval",
            "--model",
            "run",
            "--word-sim",
            "sets",
            "--quiz",
            "0",
            "--threads",
            "1",
        ],
        dir.path(),
    );
    // No similarity sets here: a clear error naming the folder.
    assert_ne!(eval.status.code(), Some(0));
    assert!(stderr(&eval).contains("sets"), "{}", stderr(&eval));
    std::fs::create_dir(dir.path().join("sets")).unwrap();
    std::fs::write(dir.path().join("sets/s.txt"), "the a 1\nthe of 2\na of 3\n").unwrap();
    let eval = brisk(
        &[
            "senses",
            "eval",
            "--model",
            "run",
            "--word-sim",
            "sets",
            "--quiz",
            "0",
            "--threads",
            "1",
        ],
        dir.path(),
    );
    assert!(eval.status.success(), "{}", stderr(&eval));
    let scores: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("run/eval/pseudo_words.json")).unwrap(),
    )
    .unwrap();
    let group = |w: &str| {
        std::fs::read_to_string(dir.path().join("text.txt"))
            .unwrap()
            .split("\n\n")
            .position(|doc| doc.split(' ').any(|x| x == w))
            .map(|d| d % 3)
    };
    let mut checked = 0;
    for (pair, score) in pairs.iter().zip(scores.as_array().unwrap()) {
        let (first, second) = (
            pair["first"].as_str().unwrap(),
            pair["second"].as_str().unwrap(),
        );
        let instances = score["instances"].as_u64().unwrap();
        assert!(instances >= 10, "{score}");
        let (accuracy, baseline) = (
            score["accuracy"].as_f64().unwrap(),
            score["most_frequent"].as_f64().unwrap(),
        );
        if group(first) != group(second) && first != "bank" && second != "bank" {
            assert!(
                accuracy > baseline + 0.2 && accuracy > 0.8,
                "{pair} {score}"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 1,
        "the seed drew no pair from two groups: {pairs:?}"
    );
    assert_eq!(scores.as_array().unwrap().last().unwrap()["pseudo"], "all");
}
