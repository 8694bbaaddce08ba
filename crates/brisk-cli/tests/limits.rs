//! Limits: values at and past the edge of what makes sense are refused up
//! front with a message naming the key, or work.
//!
//! The long version makes the one-line corpus 100 MB:
//!
//! ```sh
//! BRISK_LIMIT_LINE_MB=100 cargo test --release -p brisk-cli --test limits -- --nocapture
//! ```

mod common;

use common::{brisk, brisk_owned as run, sets, small_pretrain, stderr};

/// A pre-training command on the built-in corpus with one step and `sets`.
fn pretrain(out: &str, extra: &[&str]) -> Vec<String> {
    small_pretrain(
        out,
        1,
        &[&["-q", "--steps", "1"][..], &sets(extra)].concat(),
    )
}

#[test]
fn impossible_values_are_refused_up_front_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (set, says) in [
        ("train.batch_size=0", "train.batch_size"),
        ("train.learning_rate=-1", "train.learning_rate"),
        ("train.learning_rate=nan", "train.learning_rate"),
        ("train.learning_rate=inf", "train.learning_rate"),
        ("train.max_grad_norm=nan", "train.max_grad_norm"),
        ("data.seq_len=1", "data.seq_len"),
        ("data.seq_len=100000", "data.seq_len"),
        ("model.vocab_size=0", "model.vocab_size"),
        ("train.warmup_fraction=2", "train.warmup_fraction"),
        ("eval.every=-1", "eval.every"),
    ] {
        let out = run(&pretrain("refused", &[set]), dir.path());
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{set}: {err}");
        assert!(err.contains(says), "{set}: {err}");
        assert!(!err.contains("panicked"), "{set}: {err}");
        assert!(
            !dir.path().join("refused").exists(),
            "{set}: left a run directory"
        );
    }
}

#[test]
fn sequences_longer_than_the_corpus_are_refused_and_a_vocabulary_larger_than_it_shrinks() {
    let dir = tempfile::tempdir().unwrap();
    // Sequences of 100,000 tokens (positions allowed) from a corpus of
    // 20,000 words: not one sequence can be packed.
    let long = [
        "data.seq_len=100000",
        "model.max_position_embeddings=100000",
    ];
    let out = run(&pretrain("long", &long), dir.path());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("less than one sequence of data.seq_len = 100000"),
        "{err}"
    );

    // A vocabulary of a million entries from that corpus: WordPiece learns
    // what the corpus holds and the model takes its size.
    // (A later --set wins over the 600 set before it.)
    let mut args = pretrain("big-vocab", &["model.vocab_size=1000000"]);
    args.retain(|a| a != "-q");
    let out = run(&args, dir.path());
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("note: model.vocab_size set to"), "{err}");
}

#[test]
fn a_single_huge_line_and_a_million_character_word_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let mb: usize = std::env::var("BRISK_LIMIT_LINE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    // One line of `mb` MB of words, no line break anywhere; then a
    // document holding a single word of a million characters.
    let words = [
        "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta",
    ];
    let mut line = String::with_capacity(mb << 20);
    let mut i = 0usize;
    while line.len() < mb << 20 {
        line.push_str(words[i % words.len()]);
        line.push_str(if i.is_multiple_of(13) { "s " } else { " " });
        i += 1;
    }
    std::fs::write(dir.path().join("line.txt"), &line).unwrap();
    let word = "x".repeat(1_000_000);
    std::fs::write(
        dir.path().join("word.txt"),
        format!("{}\n\n{word}\n\n{}\n", &line[..4000], &line[4000..8000]),
    )
    .unwrap();
    for input in ["line.txt", "word.txt"] {
        let out = brisk(
            &[
                "corpus",
                "prepare",
                "--input",
                input,
                "--out",
                &format!("prepared-{input}"),
                "--set",
                "model.vocab_size=200",
                "--set",
                "data.seq_len=64",
                "--set",
                "data.val_fraction=0",
            ],
            dir.path(),
        );
        assert!(out.status.success(), "{input}: {}", stderr(&out));
        let corpus = brisk::corpus::shards::PreparedCorpus::open(
            &dir.path().join(format!("prepared-{input}")),
        )
        .unwrap();
        assert!(corpus.manifest.train.sequences > 0, "{input}");
    }
}
