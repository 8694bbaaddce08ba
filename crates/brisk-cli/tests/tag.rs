//! `brisk tag` and `brisk parse`: bad input is an error naming the file and
//! line with no run directory left behind; a small tagger and parser train,
//! resume, predict and score end to end.

use std::path::{Path, PathBuf};

mod common;
use common::{brisk, stderr};

fn shared_data() -> PathBuf {
    let dir = match std::env::var_os("BRISK_SHARED_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    };
    assert!(
        dir.join("data").is_dir(),
        "shared data not found at {}",
        dir.display()
    );
    dir.join("data")
}

/// A task file over `file` (train and dev), in `format` with `scheme`.
fn task(dir: &Path, file: &str, format: &str, extra: &str) -> String {
    let toml = format!(
        "name = \"t\"\nformat = \"{format}\"\ntrain = \"{file}\"\ndev = \"{file}\"\n{extra}\n"
    );
    let path = dir.join(format!("{file}.toml"));
    std::fs::write(&path, toml).unwrap();
    path.to_str().unwrap().to_string()
}

const NER: &str = "kind = \"tagging\"\nword = 0\nlabel = 3\nscheme = \"bio\"\nmetric = \"span-f1\"";
const UPOS: &str = "kind = \"tagging\"\nword = 1\nlabel = 3\nmetric = \"accuracy\"";

fn conllu_row(id: usize, form: &str, upos: &str, head: usize, rel: &str) -> String {
    format!("{id}\t{form}\t_\t{upos}\t_\t_\t{head}\t{rel}\t_\t_")
}

#[test]
fn bad_input_names_the_file_and_line_and_leaves_no_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let good = conllu_row(1, "Hi", "INTJ", 0, "root");
    let cases: Vec<(&str, String, &str, &str, &str)> = vec![
        (
            "short.txt",
            "EU NNP B-NP B-ORG\nrejects VBZ\n".into(),
            "conll",
            NER,
            "line 2",
        ),
        (
            "scheme.txt",
            "EU NNP B-NP B-ORG\n\nPeter NNP B-NP E-PER\n".into(),
            "conll",
            NER,
            "line 3",
        ),
        (
            "columns.conllu",
            format!("{good}\n\n1\tBye\t_\tINTJ\n"),
            "conllu",
            UPOS,
            "line 3",
        ),
        (
            "empty.conllu",
            format!("{good}\n\n# sent_id = 2\n# text =\n\n"),
            "conllu",
            UPOS,
            "line 3",
        ),
    ];
    for (file, text, format, extra, line) in cases {
        std::fs::write(dir.join(file), text).unwrap();
        let t = task(dir, file, format, extra);
        let out = brisk(
            &[
                "tag", "train", "--task", &t, "--out", "run", "--epochs", "1",
            ],
            dir,
        );
        let err = stderr(&out);
        assert!(!out.status.success(), "{file}: {err}");
        assert!(err.contains(file) && err.contains(line), "{file}: {err}");
        assert!(!err.contains("panicked"), "{file}: {err}");
        assert!(
            !dir.join("run").exists(),
            "{file}: a run directory was left"
        );
    }
    // A parsing task through `tag train` is refused, naming the command.
    let t = task(dir, "empty.conllu", "conllu", UPOS);
    let out = brisk(&["parse", "train", "--task", &t, "--out", "run"], dir);
    assert!(stderr(&out).contains("brisk tag train"), "{}", stderr(&out));
}

/// The first `n` sentences of a file whose sentences are separated by
/// blank lines (document markers dropped).
fn first_sentences(text: &str, n: usize) -> String {
    text.split("\n\n")
        .filter(|b| !b.trim().is_empty() && !b.starts_with("-DOCSTART-"))
        .take(n)
        .map(|b| format!("{}\n\n", b.trim_end()))
        .collect()
}

#[test]
fn a_tagger_trains_resumes_predicts_and_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let text = std::fs::read_to_string(shared_data().join("conll2003/train.txt")).unwrap();
    std::fs::write(dir.join("ner.txt"), first_sentences(&text, 40)).unwrap();
    let t = task(
        dir,
        "ner.txt",
        "conll",
        "kind = \"tagging\"\nword = 0\nlabel = 3\nscheme = \"iob1\"\nmetric = \"span-f1\"",
    );
    let small = [
        "--set",
        "model.hidden=32",
        "--set",
        "train.batch_size=8",
        "--embeddings",
        "word+dim=16,chars+dim=8+hidden=8",
        "--quiet",
    ];
    let mut args = vec![
        "tag", "train", "--task", &t, "--out", "run", "--epochs", "1",
    ];
    args.extend_from_slice(&small);
    let out = brisk(&args, dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = dir.join("run");
    for f in [
        "model.json",
        "config.toml",
        "metrics.jsonl",
        "summary.json",
        "best/model.safetensors",
    ] {
        assert!(run.join(f).exists(), "{f}");
    }
    // Resume to three epochs: the metrics continue from epoch 2.
    std::fs::remove_file(run.join("summary.json")).unwrap();
    let out = brisk(
        &[
            "tag", "train", "--task", &t, "--out", "run", "--epochs", "3", "--resume", "--quiet",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let epochs: Vec<u64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(epochs, [1, 2, 3]);
    // Existing run without --force or --resume: refused.
    let out = brisk(&args, dir);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    std::fs::write(
        dir.join("plain.txt"),
        "EU rejects German call\n\nPeter Blackburn\n",
    )
    .unwrap();
    let out = brisk(&["tag", "predict", "--model", "run", "plain.txt"], dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(rows.len(), 6, "{text}");
    assert!(rows[0].starts_with("1\tEU\t"), "{text}");

    let out = brisk(&["tag", "eval", "--model", "run", "ner.txt"], dir);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8(out.stdout).unwrap().contains("f1"));
}

#[test]
fn a_parser_trains_and_writes_trees() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A toy treebank: subject-verb-object sentences and a punctuation mark.
    let mut text = String::new();
    for (s, v, o) in [
        ("She", "saw", "it"),
        ("We", "like", "tea"),
        ("They", "read", "books"),
    ] {
        text += &[
            conllu_row(1, s, "PRON", 2, "nsubj"),
            conllu_row(2, v, "VERB", 0, "root"),
            conllu_row(3, o, "NOUN", 2, "obj"),
            conllu_row(4, ".", "PUNCT", 2, "punct"),
        ]
        .join("\n");
        text += "\n\n";
    }
    std::fs::write(dir.join("toy.conllu"), text.repeat(4)).unwrap();
    let t = task(
        dir,
        "toy.conllu",
        "conllu",
        "kind = \"parsing\"\nword = 1\nhead = 6\nlabel = 7\nmetric = \"attachment\"",
    );
    let out = brisk(
        &[
            "parse",
            "train",
            "--task",
            &t,
            "--out",
            "run",
            "--epochs",
            "30",
            "--quiet",
            "--embeddings",
            "word+dim=16",
            "--set",
            "model.hidden=16",
            "--set",
            "model.layers=1",
            "--set",
            "model.arc_mlp=16",
            "--set",
            "model.rel_mlp=8",
            "--set",
            "model.dropout=0",
            "--set",
            "train.batch_size=4",
            "--set",
            "train.learning_rate=0.01",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["metric"], "las");
    assert_eq!(summary["dev"].as_f64().unwrap(), 1.0, "{summary}");
    std::fs::write(dir.join("plain.txt"), "She saw books .\n").unwrap();
    let out = brisk(&["parse", "predict", "--model", "run", "plain.txt"], dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.lines().filter(|l| !l.is_empty()).collect::<Vec<_>>(),
        [
            "1\tShe\t2\tnsubj",
            "2\tsaw\t0\troot",
            "3\tbooks\t2\tobj",
            "4\t.\t2\tpunct"
        ],
        "{text}"
    );
    // A search over two candidates gives a parser that reads its subset
    // (the ROOT's features narrowed to it).
    let out = brisk(
        &[
            "ace",
            "--task",
            &t,
            "--out",
            "search",
            "--episodes",
            "3",
            "--quiet",
            "--candidates",
            "word+dim=16,chars+dim=8+hidden=8",
            "--set",
            "model.hidden=16",
            "--set",
            "model.layers=1",
            "--set",
            "train.batch_size=4",
        ],
        dir,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let episodes = std::fs::read_to_string(dir.join("search/episodes.jsonl")).unwrap();
    assert!(
        episodes.contains("[true,false]") || episodes.contains("[false,true]"),
        "a subset was tried: {episodes}"
    );
    let out = brisk(&["parse", "predict", "--model", "search", "plain.txt"], dir);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn an_embedding_search_runs_resumes_and_gives_a_tagger() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let text = std::fs::read_to_string(shared_data().join("conll2003/train.txt")).unwrap();
    std::fs::write(dir.join("ner.txt"), first_sentences(&text, 30)).unwrap();
    let t = task(
        dir,
        "ner.txt",
        "conll",
        "kind = \"tagging\"\nword = 0\nlabel = 3\nscheme = \"iob1\"\nmetric = \"span-f1\"",
    );
    // Candidates named once in a file, reused by each run.
    std::fs::write(
        dir.join("candidates.toml"),
        "[[candidates]]\nname = \"words\"\nkind = \"word\"\ndim = 16\n\n\
         [[candidates]]\nname = \"letters\"\nkind = \"chars\"\ndim = 8\nhidden = 8\n",
    )
    .unwrap();
    let search = |strategy: &str, out: &str, episodes: &str, resume: bool| {
        let mut args = vec![
            "ace",
            "--task",
            &t,
            "--candidates",
            "candidates.toml",
            "--strategy",
            strategy,
            "--episodes",
            episodes,
            "--out",
            out,
            "--set",
            "model.hidden=16",
            "--set",
            "train.batch_size=8",
        ];
        if resume {
            args.push("--resume");
        }
        brisk(&args, dir)
    };
    let out = search("ace", "run", "2", false);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(log.contains("episode 2/2  action"), "{log}");
    assert!(log.contains("best"), "{log}");
    let out = search("ace", "run", "3", true);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("resuming after episode 2 of 3"));
    let episodes = std::fs::read_to_string(dir.join("run/episodes.jsonl")).unwrap();
    assert_eq!(episodes.lines().count(), 3);
    for f in ["report.html", "search.json", "summary.json", "model.json"] {
        assert!(dir.join("run").join(f).exists(), "{f}");
    }
    let html = std::fs::read_to_string(dir.join("run/report.html")).unwrap();
    assert!(html.contains("letters") && html.contains("<svg"), "{html}");
    // The result is a tagger.
    std::fs::write(dir.join("plain.txt"), "EU rejects German call\n").unwrap();
    let out = brisk(&["tag", "predict", "--model", "run", "plain.txt"], dir);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 5);

    let out = search("weighted", "weighted", "1", false);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = search("best", "bad", "1", false);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--strategy"), "{}", stderr(&out));
    assert!(!dir.join("bad").exists());
}
