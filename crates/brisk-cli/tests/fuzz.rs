//! Hostile and broken input: every reader of brisk's files gets mutated
//! copies of a valid file (bit flips, truncation, inserted bytes, huge and
//! negative numbers, deep nesting, invalid UTF-8, repeated and zeroed
//! spans). Each case must end in `Ok` or in an error that names the file,
//! within a time bound, and never panic.
//!
//! The valid files come from a real run (ELECTRA with notes, on the
//! built-in corpus) and its HF export. CI runs a few hundred cases per
//! reader; the long version:
//!
//! ```sh
//! BRISK_FUZZ_CASES=10000 cargo test --release -p brisk-cli --test fuzz -- --nocapture
//! ```

mod common;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use brisk::config::ConfigSource;
use common::{brisk, brisk_owned, sets, small_pretrain, stderr, Rng};

/// The longest one case may take before it counts as a hang (debug builds
/// on a loaded 2-core machine included).
const CASE_LIMIT: Duration = Duration::from_secs(60);

fn cases() -> usize {
    std::env::var("BRISK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// Numbers that break naive readers.
const HOSTILE_NUMBERS: [&str; 8] = [
    "99999999999999999999999999",
    "18446744073709551616",
    "-1",
    "-9223372036854775809",
    "1e400",
    "NaN",
    "0",
    "4294967296",
];

/// One mutation of `seed`, chosen by `rng`.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    let at = rng.index(bytes.len() + 1);
    match rng.index(8) {
        0 => {
            for _ in 0..1 + rng.index(8) {
                if !bytes.is_empty() {
                    let i = rng.index(bytes.len());
                    bytes[i] ^= 1 << rng.index(8);
                }
            }
        }
        1 => bytes.truncate(at),
        2 => {
            let junk: Vec<u8> = (0..1 + rng.index(64)).map(|_| rng.next() as u8).collect();
            bytes.splice(at..at, junk);
        }
        3 => {
            // Replace a run of digits (or insert at random) by a hostile number.
            let number = HOSTILE_NUMBERS[rng.index(HOSTILE_NUMBERS.len())].as_bytes();
            let digits: Vec<usize> = (0..bytes.len())
                .filter(|&i| bytes[i].is_ascii_digit())
                .collect();
            match digits.is_empty() {
                true => {
                    bytes.splice(at..at, number.iter().copied());
                }
                false => {
                    let start = digits[rng.index(digits.len())];
                    let end = (start..bytes.len())
                        .find(|&i| !bytes[i].is_ascii_digit())
                        .unwrap_or(bytes.len());
                    bytes.splice(start..end, number.iter().copied());
                }
            }
        }
        4 => {
            let depth = 1 + rng.index(100_000);
            let (open, close) = match rng.index(3) {
                0 => (b'[', b']'),
                1 => (b'{', b'}'),
                _ => (b'[', b'['),
            };
            let nested: Vec<u8> = std::iter::repeat_n(open, depth)
                .chain(std::iter::repeat_n(close, depth))
                .collect();
            bytes.splice(at..at, nested);
        }
        5 => {
            let bad: &[u8] = match rng.index(4) {
                0 => &[0xff, 0xfe],
                1 => &[0x80],
                2 => &[0xc3],
                _ => &[0xed, 0xa0, 0x80],
            };
            bytes.splice(at..at, bad.iter().copied());
        }
        6 => {
            let end = (at + rng.index(4096)).min(bytes.len());
            let span = bytes[at..end].to_vec();
            for _ in 0..1 + rng.index(16) {
                bytes.splice(end..end, span.iter().copied());
            }
        }
        _ => {
            let end = (at + 1 + rng.index(256)).min(bytes.len());
            bytes[at..end].fill(0);
        }
    }
    bytes
}

/// Reads a file; an error is its message.
type ReadFn = Box<dyn Fn(&Path) -> Result<(), String> + Send + Sync>;

/// A reader under test: it reads `target` (a file a case overwrites), and
/// its errors must name `names`.
struct Reader {
    name: &'static str,
    target: PathBuf,
    names: String,
    read: ReadFn,
}

impl Reader {
    fn new(
        name: &'static str,
        target: PathBuf,
        read: impl Fn(&Path) -> Result<(), String> + Send + Sync + 'static,
    ) -> Reader {
        let names = target.file_name().unwrap().to_string_lossy().into_owned();
        Reader {
            name,
            target,
            names,
            read: Box::new(read),
        }
    }
}

fn text<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<(), String> {
    r.map(|_| ()).map_err(|e| format!("{e:#}"))
}

#[derive(Default, Debug)]
struct Outcome {
    cases: usize,
    accepted: usize,
    refused: usize,
    problems: Vec<String>,
}

/// Runs `n` mutated cases through a reader, each on its own thread with a
/// time bound; restores the valid file afterwards.
fn fuzz(reader: &std::sync::Arc<Reader>, n: usize, seed: u64) -> Outcome {
    let valid = std::fs::read(&reader.target).unwrap();
    let mut rng = Rng(seed);
    let mut outcome = Outcome::default();
    for case in 0..n {
        let bytes = mutate(&valid, &mut rng);
        std::fs::write(&reader.target, &bytes).unwrap();
        let (send, receive) = mpsc::channel();
        let r = reader.clone();
        let worker = std::thread::spawn(move || {
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (r.read)(&r.target)));
            let _ = send.send(result);
        });
        outcome.cases += 1;
        match receive.recv_timeout(CASE_LIMIT) {
            Ok(Ok(Ok(()))) => outcome.accepted += 1,
            Ok(Ok(Err(message))) if message.contains(&reader.names) => outcome.refused += 1,
            Ok(Ok(Err(message))) => outcome.problems.push(format!(
                "case {case}: the error does not name {}: {message}",
                reader.names
            )),
            Ok(Err(_)) => outcome.problems.push(format!("case {case}: panicked")),
            Err(_) => {
                outcome
                    .problems
                    .push(format!("case {case}: no answer in {CASE_LIMIT:?}"));
                break;
            }
        }
        let _ = worker.join();
        if outcome.problems.len() >= 5 {
            break;
        }
    }
    std::fs::write(&reader.target, &valid).unwrap();
    outcome
}

/// A finished ELECTRA run with notes in `dir/run`, and its HF export in
/// `dir/hf`.
fn real_files(dir: &Path) -> PathBuf {
    let own = sets(&[
        "objective.kind=electra",
        "model.position=absolute",
        "notes.enabled=true",
        "notes.min_count=3",
        "notes.max_count=60",
    ]);
    let args = small_pretrain("run", 1, &[&["-q", "--steps", "4"][..], &own].concat());
    let out = brisk_owned(&args, dir);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = brisk(&["export", "run", "--hf", "hf"], dir);
    assert!(out.status.success(), "{}", stderr(&out));
    dir.join("run")
}

/// Every reader, over copies of the real files in `dir`.
fn readers(dir: &Path) -> Vec<Reader> {
    let run = real_files(dir);
    let checkpoint = run.join("checkpoints/step-000004");
    let corpus = run.join("corpus");
    let config = brisk::config::resolve(&ConfigSource {
        file: Some(run.join("config.toml")),
        ..Default::default()
    })
    .unwrap();
    let mut list = Vec::new();

    // Config TOML (a copy, so the run keeps its own).
    let toml = dir.join("config.toml");
    std::fs::copy(run.join("config.toml"), &toml).unwrap();
    list.push(Reader::new("config TOML", toml, |path| {
        text(brisk::config::resolve(&ConfigSource {
            file: Some(path.to_path_buf()),
            ..Default::default()
        }))
    }));

    // `--set`: the override text itself is what is mutated; the error must
    // name the override's key or say what `--set` expects.
    let set = dir.join("set.txt");
    std::fs::write(&set, "train.learning_rate=0.0005").unwrap();
    let mut reader = Reader::new("--set", set, |path| {
        let line = String::from_utf8_lossy(&std::fs::read(path).unwrap()).into_owned();
        let key = line
            .split('=')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        brisk::config::resolve(&ConfigSource {
            sets: vec![line.clone()],
            ..Default::default()
        })
        .map(|_| ())
        .map_err(|e| {
            let e = e.to_string();
            match e.contains(&key) || e.contains("--set") || e.contains("key.path=value") {
                true => "set.txt".to_string(),
                false => e,
            }
        })
    });
    reader.names = "set.txt".into();
    list.push(reader);

    // Corpus text and `.gz`, through the whole preparation with the run's
    // tokenizer given.
    let sample: String = (0..300)
        .map(|i| {
            // Documents of ten lines, so that both splits get text.
            let end = if i % 10 == 9 { "\n\n" } else { "\n" };
            format!(
                "the {i} quick brown fox jumps over the lazy dog {}{end}",
                i * 7
            )
        })
        .collect();
    let plain = dir.join("text.txt");
    std::fs::write(&plain, &sample).unwrap();
    let gz = dir.join("text.txt.gz");
    {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(sample.as_bytes()).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    }
    let mut data = config.data.clone();
    data.tokenizer = corpus.join("tokenizer.json").display().to_string();
    data.seq_len = 32;
    let prepared = dir.join("prepared");
    for (name, file) in [("corpus text", plain), ("corpus .gz", gz)] {
        let (data, out) = (data.clone(), prepared.clone());
        list.push(Reader::new(name, file, move |path| {
            let out =
                out.join(format!("{:?}", std::thread::current().id()).replace(['(', ')'], ""));
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir_all(&out).unwrap();
            let r = brisk::corpus::prepare(
                &data,
                600,
                &brisk::corpus::Input::Paths(vec![path.to_path_buf()]),
                &out,
                false,
            );
            let _ = std::fs::remove_dir_all(&out);
            text(r)
        }));
    }

    // The prepared corpus: manifest, a shard, the tokenizer, the word table.
    let open_corpus = {
        let corpus = corpus.clone();
        move |_: &Path| text(brisk::corpus::shards::PreparedCorpus::open(&corpus))
    };
    list.push(Reader::new(
        "corpus manifest",
        corpus.join("manifest.json"),
        open_corpus.clone(),
    ));
    let shard = std::fs::read_dir(&corpus)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tokens.u32"))
        .unwrap();
    list.push(Reader::new("corpus shard", shard, open_corpus));
    let tokenizer = dir.join("tokenizer.json");
    std::fs::copy(corpus.join("tokenizer.json"), &tokenizer).unwrap();
    list.push(Reader::new("tokenizer.json", tokenizer, |path| {
        text(brisk::corpus::tokenizer::load_tokenizer(path, true))
    }));
    let vocab = dir.join("vocab.txt");
    let tok =
        brisk::corpus::tokenizer::load_tokenizer(&corpus.join("tokenizer.json"), true).unwrap();
    let mut words: Vec<(String, u32)> = tok.get_vocab(true).into_iter().collect();
    words.sort_by_key(|(_, id)| *id);
    let lines: String = words.iter().map(|(w, _)| format!("{w}\n")).collect();
    std::fs::write(&vocab, lines).unwrap();
    list.push(Reader::new("vocab.txt", vocab, |path| {
        text(brisk::corpus::tokenizer::load_tokenizer(path, true))
    }));
    list.push(Reader::new(
        "word counts",
        corpus.join("word_counts.tsv"),
        |path| text(brisk::corpus::words::read_word_counts(path)),
    ));

    // Checkpoint files, each through its own parser (a copy outside the
    // checkpoint, so the checksums do not answer first), then the sealed
    // checkpoint as `--resume` opens it.
    let mut params = brisk::model::Params::new(candle_core::Device::Cpu, candle_core::DType::F32);
    brisk::pretrain::objective::build(&config, &mut params, None).unwrap();
    let params = std::sync::Arc::new(params);
    let weights = dir.join("model.safetensors");
    std::fs::copy(checkpoint.join("model.safetensors"), &weights).unwrap();
    {
        let params = params.clone();
        list.push(Reader::new("model safetensors", weights, move |path| {
            text(params.load(path))
        }));
    }
    let moments = dir.join("optimizer.safetensors");
    std::fs::copy(checkpoint.join("optimizer.safetensors"), &moments).unwrap();
    {
        let (params, train) = (params.clone(), config.train.clone());
        list.push(Reader::new("optimizer safetensors", moments, move |path| {
            let mut opt = brisk::train::optim::AdamW::new(&params, &train).unwrap();
            text(opt.load(path, 4))
        }));
    }
    let notes = dir.join("notes.safetensors");
    std::fs::copy(checkpoint.join("notes.safetensors"), &notes).unwrap();
    {
        let (first, last) = brisk::pretrain::notes::saved_band(&notes).unwrap();
        let counts: Vec<u64> =
            brisk::corpus::words::read_word_counts(&corpus.join("word_counts.tsv"))
                .unwrap()
                .into_iter()
                .map(|(_, c)| c)
                .collect();
        let band = brisk::pretrain::notes::RareBand::of_ranks(&counts, first, last, 1.0).unwrap();
        let (hidden, cfg) = (config.model.hidden_size, config.notes.clone());
        list.push(Reader::new("notes safetensors", notes, move |path| {
            brisk::pretrain::notes::saved_band(path).map_err(|e| e.to_string())?;
            let mut book = brisk::pretrain::notes::NoteBook::new(band.clone(), hidden, &cfg);
            text(book.load(path))
        }));
    }
    let state_dir = dir.join("state");
    std::fs::create_dir(&state_dir).unwrap();
    std::fs::copy(checkpoint.join("state.json"), state_dir.join("state.json")).unwrap();
    list.push(Reader::new(
        "state.json",
        state_dir.join("state.json"),
        |path| text(brisk::train::checkpoint::read_state(path.parent().unwrap())),
    ));
    list.push(Reader::new(
        "checksums.json",
        checkpoint.join("checksums.json"),
        |path| text(brisk::integrity::verify(path.parent().unwrap())),
    ));

    // HF config.json.
    list.push(Reader::new(
        "HF config.json",
        dir.join("hf/config.json"),
        |path| text(brisk::hf::Checkpoint::open(path.parent().unwrap())),
    ));

    // A task: its TOML and its TSV.
    let task = dir.join("task");
    std::fs::create_dir(&task).unwrap();
    let rows: String = (0..40)
        .map(|i| format!("a sentence number {i}\t{}\n", ["no", "yes"][i % 2]))
        .collect();
    std::fs::write(task.join("train.tsv"), format!("text\tverdict\n{rows}")).unwrap();
    std::fs::write(task.join("dev.tsv"), format!("text\tverdict\n{rows}")).unwrap();
    std::fs::write(
        task.join("toy.toml"),
        "name = \"toy\"\nkind = \"classification\"\nlabels = [\"no\", \"yes\"]\n\
         metrics = [\"accuracy\"]\nheader = true\ntext_a = \"text\"\nlabel = \"verdict\"\n\
         train = \"train.tsv\"\ndev = \"dev.tsv\"\n",
    )
    .unwrap();
    let glue = dir.to_path_buf();
    {
        let glue = glue.clone();
        list.push(Reader::new(
            "task TOML",
            task.join("toy.toml"),
            move |path| {
                text(brisk::tasks::data::Task::resolve(
                    &path.display().to_string(),
                    &glue,
                ))
            },
        ));
    }
    let toml = task.join("toy.toml");
    list.push(Reader::new("task TSV", task.join("dev.tsv"), move |path| {
        let task = brisk::tasks::data::Task::resolve(&toml.display().to_string(), &glue)
            .map_err(|e| e.to_string())?;
        text(brisk::tasks::data::read_split(&task.spec, path))
    }));
    list
}

#[test]
fn every_reader_survives_mutated_files_without_panics_or_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let n = cases();
    let mut failed = Vec::new();
    let mut table = String::from("| reader | cases | accepted | refused naming the file | problems |\n| --- | ---: | ---: | ---: | ---: |\n");
    for (i, reader) in readers(dir.path()).into_iter().enumerate() {
        let reader = std::sync::Arc::new(reader);
        let outcome = fuzz(&reader, n, 1000 + i as u64);
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            reader.name,
            outcome.cases,
            outcome.accepted,
            outcome.refused,
            outcome.problems.len()
        ));
        for p in &outcome.problems {
            failed.push(format!("{}: {p}", reader.name));
        }
    }
    eprintln!("{table}");
    assert!(failed.is_empty(), "{failed:#?}");
}
