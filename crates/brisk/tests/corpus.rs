//! Corpus preparation end to end: edge cases of the input, packing
//! invariants, and a round trip of real Wikipedia text.

mod support;

use std::path::Path;

use brisk::corpus::generated;
use brisk::corpus::shards::{assign_splits, PreparedCorpus, Split, WordId};
use brisk::corpus::text::documents;
use brisk::corpus::tokenizer::{load_tokenizer, Scratch, SpecialIds, WordSplitter};
use brisk::corpus::words::read_word_counts;
use brisk::corpus::Input;
use support::{gzip, prepare, shared_dir, small_data, write};

fn sample_text(words: usize) -> String {
    generated::generate(words, 5)
}

fn error_text(result: brisk::Result<impl Sized>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn empty_and_missing_inputs_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_data();
    let empty = write(&dir.path().join("empty.txt"), b"");
    let msg = error_text(prepare(
        dir.path(),
        "a",
        &data,
        500,
        Input::Paths(vec![empty]),
    ));
    assert!(msg.contains("empty.txt") && msg.contains("empty"), "{msg}");

    let blank = write(&dir.path().join("blank.txt"), b"\n  \r\n\t\n");
    let msg = error_text(prepare(
        dir.path(),
        "b",
        &data,
        500,
        Input::Paths(vec![blank]),
    ));
    assert!(msg.contains("blank.txt") && msg.contains("empty"), "{msg}");

    let missing = dir.path().join("nowhere.txt");
    let msg = error_text(prepare(
        dir.path(),
        "c",
        &data,
        500,
        Input::Paths(vec![missing]),
    ));
    assert!(msg.contains("nowhere.txt"), "{msg}");

    let empty_dir = dir.path().join("nothing");
    std::fs::create_dir(&empty_dir).unwrap();
    let msg = error_text(prepare(
        dir.path(),
        "d",
        &data,
        500,
        Input::Paths(vec![empty_dir]),
    ));
    assert!(msg.contains("nothing") && msg.contains("no files"), "{msg}");

    let msg = error_text(prepare(dir.path(), "e", &data, 500, Input::Paths(vec![])));
    assert!(msg.contains("no input"), "{msg}");
}

#[test]
fn invalid_utf8_names_the_file_and_byte_offset() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_data();
    let mut bytes = b"hello world\nsecond line ".to_vec();
    let offset = bytes.len();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    bytes.extend_from_slice(b" more\n");
    let plain = write(&dir.path().join("bad.txt"), &bytes);
    let msg = error_text(prepare(
        dir.path(),
        "a",
        &data,
        500,
        Input::Paths(vec![plain]),
    ));
    assert!(
        msg.contains("bad.txt") && msg.contains(&format!("byte offset {offset}")),
        "{msg}"
    );

    let gz = write(&dir.path().join("bad.txt.gz"), &gzip(&bytes));
    let msg = error_text(prepare(dir.path(), "b", &data, 500, Input::Paths(vec![gz])));
    assert!(
        msg.contains("bad.txt.gz")
            && msg.contains(&format!("byte offset {offset} of the decompressed")),
        "{msg}"
    );

    let broken_gz = write(&dir.path().join("broken.gz"), b"not gzip at all");
    let msg = error_text(prepare(
        dir.path(),
        "c",
        &data,
        500,
        Input::Paths(vec![broken_gz]),
    ));
    assert!(msg.contains("broken.gz") && msg.contains("gzip"), "{msg}");
}

#[test]
fn too_little_text_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = write(&dir.path().join("tiny.txt"), b"just a few words\n");
    let mut data = small_data();
    data.val_fraction = 0.0;
    let msg = error_text(prepare(
        dir.path(),
        "a",
        &data,
        500,
        Input::Paths(vec![tiny]),
    ));
    assert!(
        msg.contains("train split") && msg.contains("seq_len"),
        "{msg}"
    );
}

#[test]
fn crlf_line_endings_give_the_same_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let text = sample_text(20_000);
    let lf = write(&dir.path().join("lf.txt"), text.as_bytes());
    let crlf = write(
        &dir.path().join("crlf.txt"),
        text.replace('\n', "\r\n").as_bytes(),
    );
    let data = small_data();
    let (a, _) = prepare(dir.path(), "a", &data, 800, Input::Paths(vec![lf])).unwrap();
    let (b, _) = prepare(dir.path(), "b", &data, 800, Input::Paths(vec![crlf])).unwrap();
    let (a, b) = (
        PreparedCorpus::open(&a).unwrap(),
        PreparedCorpus::open(&b).unwrap(),
    );
    assert_eq!(a.manifest.tokenizer.sha256, b.manifest.tokenizer.sha256);
    assert_eq!(a.manifest.train, b.manifest.train);
    assert_eq!(a.manifest.validation, b.manifest.validation);
}

#[test]
fn one_very_long_line_is_one_document() {
    let dir = tempfile::tempdir().unwrap();
    let line = sample_text(60_000)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(line.len() > 300_000);
    let path = write(&dir.path().join("long.txt"), format!("{line}\n").as_bytes());
    let mut data = small_data();
    data.val_fraction = 0.0;
    let (out, report) = prepare(dir.path(), "a", &data, 800, Input::Paths(vec![path])).unwrap();
    assert_eq!(report.documents, 1);
    let corpus = PreparedCorpus::open(&out).unwrap();
    let m = &corpus.manifest;
    // The stream is the document plus one [SEP]; all but the tail is packed.
    let body = (data.seq_len - 2) as u64;
    let stream = m.train.sequences as u64 * body + m.train.dropped_tokens;
    assert!(m.train.dropped_tokens < body);
    let special = m.special_ids;
    let sep_inside = (0..m.train.sequences)
        .flat_map(|i| corpus.sequence(Split::Train, i).tokens[1..data.seq_len - 1].to_vec())
        .filter(|&t| t == special.sep)
        .count();
    let expect = usize::from(m.train.dropped_tokens == 0);
    assert_eq!(sep_inside, expect, "the one separator ends the stream");
    assert!(stream > 60_000, "{stream}");
}

#[test]
fn directories_mix_plain_and_gzip_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    std::fs::create_dir_all(input.join("nested")).unwrap();
    let parts: Vec<String> = (0..3)
        .map(|i| generated::generate(8_000, 100 + i))
        .collect();
    write(&input.join("a.txt"), parts[0].as_bytes());
    write(&input.join("b.txt.gz"), &gzip(parts[1].as_bytes()));
    write(&input.join("nested/c.txt"), parts[2].as_bytes());
    write(&input.join(".hidden.txt"), b"\xff not read");
    let data = small_data();
    let (out, report) = prepare(dir.path(), "a", &data, 800, Input::Paths(vec![input])).unwrap();
    let expect_docs: usize = parts.iter().map(|p| documents(p).count()).sum();
    let expect_bytes: usize = parts.iter().map(String::len).sum();
    assert_eq!(report.documents, expect_docs);
    assert_eq!(report.text_bytes, expect_bytes as u64);
    let manifest = PreparedCorpus::open(&out).unwrap().manifest;
    let names: Vec<&str> = manifest
        .inputs
        .iter()
        .map(|i| i.path.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(names, ["a.txt", "b.txt.gz", "c.txt"]);
}

/// Checks every packing invariant of a prepared corpus against an
/// independent encoding of its documents by the saved HF tokenizer.
fn check_packing(out: &Path, docs: &[&str], val_fraction: f64, seed: u64) {
    let corpus = PreparedCorpus::open(out).unwrap();
    corpus.verify_checksums().unwrap();
    let m = &corpus.manifest;
    let tokenizer = load_tokenizer(&out.join(&m.tokenizer.file), m.tokenizer.lowercase).unwrap();
    let special = SpecialIds::of(&tokenizer, "test").unwrap();
    assert_eq!(special, m.special_ids);
    let words = read_word_counts(&out.join(&m.word_counts.file)).unwrap();
    let total_words: u64 = words.iter().map(|(_, c)| c).sum();
    assert_eq!(total_words, m.word_counts.words);
    let splitter = WordSplitter::new(&tokenizer);
    let splits = assign_splits(docs.len(), val_fraction, seed);
    let len = m.seq_len;

    for split in [Split::Train, Split::Validation] {
        // The stream as the HF tokenizer encodes it: each document, then [SEP].
        let mut expect_tokens = Vec::new();
        let mut expect_words = Vec::new();
        let mut scratch = Scratch::default();
        for (doc, _) in docs.iter().zip(&splits).filter(|(_, s)| **s == split) {
            let enc = tokenizer.encode(*doc, false).unwrap();
            expect_tokens.extend_from_slice(enc.get_ids());
            expect_tokens.push(special.sep);
            splitter
                .for_each_word(doc, &mut scratch, |w| expect_words.push(w.to_string()))
                .unwrap();
        }

        let n = corpus.num_sequences(split);
        assert_eq!(n, m.split(split).sequences);
        let mut stream_tokens = Vec::new();
        let mut stream_words: Vec<String> = Vec::new();
        let mut current: Option<(u32, String)> = None;
        for i in 0..n {
            let seq = corpus.sequence(split, i);
            assert_eq!(seq.tokens.len(), len);
            assert_eq!(
                seq.tokens[0], special.cls,
                "every sequence starts with [CLS]"
            );
            assert_eq!(seq.tokens[len - 1], special.sep, "and ends with [SEP]");
            assert!(!seq.tokens.contains(&special.pad), "no padding");
            assert_eq!(WordId(seq.words[0]), WordId::NONE);
            for (&t, &w) in seq.tokens[1..len - 1].iter().zip(&seq.words[1..len - 1]) {
                stream_tokens.push(t);
                let w = WordId(w);
                match w.word_type() {
                    None => assert!(special.contains(t), "only special tokens lack a word"),
                    Some(ty) => {
                        if w.starts_word() {
                            if let Some((_, word)) = current.take() {
                                stream_words.push(word);
                            }
                            current = Some((ty, String::new()));
                        }
                        // A sequence may start mid-word; the word continues.
                        let (cur_ty, text) =
                            current.as_mut().expect("a word starts before its pieces");
                        assert_eq!(*cur_ty, ty, "pieces of one word share its word type");
                        let piece = tokenizer.id_to_token(t).unwrap();
                        text.push_str(piece.strip_prefix("##").unwrap_or(&piece));
                        if t == special.unk {
                            *text = words[ty as usize].0.clone();
                        }
                    }
                }
            }
        }
        if let Some((_, word)) = current.take() {
            stream_words.push(word);
        }
        // Each token is packed once, in order; only the tail is dropped.
        let kept = stream_tokens.len();
        assert_eq!(
            kept as u64 + m.split(split).dropped_tokens,
            expect_tokens.len() as u64
        );
        assert_eq!(stream_tokens[..], expect_tokens[..kept], "{split:?} stream");
        // Word ids give back the words (the last one may be cut by the tail).
        let whole = stream_words.len().saturating_sub(1);
        assert_eq!(
            stream_words[..whole],
            expect_words[..whole],
            "{split:?} words"
        );
    }
}

#[test]
fn packing_invariants_hold_on_generated_text() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_data();
    let (out, report) = prepare(dir.path(), "gen", &data, 1000, Input::Generated).unwrap();
    assert!(report.validation_sequences > 0 && report.train_sequences > 100);
    let text = generated::generate(data.generated_words, data.seed);
    let docs: Vec<&str> = documents(&text).collect();
    check_packing(&out, &docs, data.val_fraction, data.seed);
}

#[test]
fn short_documents_are_joined_by_sep() {
    let dir = tempfile::tempdir().unwrap();
    let text: String = (0..3000)
        .map(|i| format!("doc number {i} is short.\n\n"))
        .collect();
    let path = write(&dir.path().join("short.txt"), text.as_bytes());
    let data = small_data();
    let (out, report) = prepare(dir.path(), "a", &data, 300, Input::Paths(vec![path])).unwrap();
    assert_eq!(report.documents, 3000);
    let docs: Vec<&str> = documents(&text).collect();
    check_packing(&out, &docs, data.val_fraction, data.seed);
    let corpus = PreparedCorpus::open(&out).unwrap();
    let seps = corpus.sequence(Split::Train, 0).tokens[1..31]
        .iter()
        .filter(|&&t| t == corpus.manifest.special_ids.sep)
        .count();
    assert!(seps >= 2, "several documents share a sequence");
}

#[test]
fn preparation_is_repeatable_and_accepts_a_given_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_data();
    let (a, _) = prepare(dir.path(), "a", &data, 1000, Input::Generated).unwrap();
    let (b, _) = prepare(dir.path(), "b", &data, 1000, Input::Generated).unwrap();
    let (ma, mb) = (
        PreparedCorpus::open(&a).unwrap().manifest,
        PreparedCorpus::open(&b).unwrap().manifest,
    );
    assert_eq!(
        ma.tokenizer.sha256, mb.tokenizer.sha256,
        "same tokenizer twice"
    );
    assert_eq!(ma.train, mb.train, "same shards twice");

    // The saved tokenizer.json, given back, reproduces the shards.
    let mut given = data.clone();
    given.tokenizer = a.join("tokenizer.json").display().to_string();
    let (c, _) = prepare(dir.path(), "c", &given, 1000, Input::Generated).unwrap();
    let mc = PreparedCorpus::open(&c).unwrap().manifest;
    assert!(!mc.tokenizer.trained);
    assert_eq!(mc.train, ma.train);

    // So does the same vocabulary as a vocab.txt.
    let tokenizer = load_tokenizer(&a.join("tokenizer.json"), true).unwrap();
    let mut vocab: Vec<(String, u32)> = tokenizer.get_vocab(true).into_iter().collect();
    vocab.sort_by_key(|(_, id)| *id);
    let lines: String = vocab.iter().map(|(t, _)| format!("{t}\n")).collect();
    let vocab_txt = write(&dir.path().join("vocab.txt"), lines.as_bytes());
    given.tokenizer = vocab_txt.display().to_string();
    let (d, _) = prepare(dir.path(), "d", &given, 1000, Input::Generated).unwrap();
    assert_eq!(PreparedCorpus::open(&d).unwrap().manifest.train, ma.train);

    // A tokenizer without BERT's special tokens is refused by name.
    let bad = write(&dir.path().join("bad-vocab.txt"), b"a\nb\nc\n");
    given.tokenizer = bad.display().to_string();
    let msg = error_text(prepare(dir.path(), "e", &given, 1000, Input::Generated));
    assert!(
        msg.contains("bad-vocab.txt") && msg.contains("[PAD]"),
        "{msg}"
    );
}

#[test]
fn corpus_with_another_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = prepare(dir.path(), "a", &small_data(), 500, Input::Generated).unwrap();
    let path = out.join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"format_version\": 1", "\"format_version\": 99"),
    )
    .unwrap();
    let msg = error_text(PreparedCorpus::open(&out));
    assert!(
        msg.contains("manifest.json") && msg.contains("version 99"),
        "{msg}"
    );

    std::fs::write(&path, text).unwrap();
    std::fs::write(out.join("train-00000.tokens.u32"), b"1234").unwrap();
    let msg = error_text(PreparedCorpus::open(&out));
    assert!(msg.contains("train-00000.tokens.u32"), "{msg}");
}

#[test]
fn real_wikipedia_shards_round_trip() {
    let file = shared_dir().join("data/wiki/wiki-00.txt.gz");
    let dir = tempfile::tempdir().unwrap();
    let mut data = small_data();
    data.seq_len = 128;
    data.shard_sequences = 4096;
    let (out, report) = prepare(
        dir.path(),
        "wiki",
        &data,
        8192,
        Input::Paths(vec![file.clone()]),
    )
    .unwrap();
    assert!(report.text_bytes > 5_000_000, "{}", report.text_bytes);
    assert!(report.unigram_entropy_nats > 5.0);
    let text = brisk::corpus::text::read_text(&file).unwrap().text;
    let docs: Vec<&str> = documents(&text).collect();
    check_packing(&out, &docs, data.val_fraction, data.seed);
}
