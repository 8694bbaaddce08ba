//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use brisk::config::{Config, DataConfig, Preset};
use brisk::corpus::tokenizer::SpecialIds;
use brisk::corpus::{self, Input, PrepareReport};
use brisk::train::pretrain::Summary;

mod minilm;
#[allow(unused_imports)] // not every test file needs it
pub use minilm::minilm_dir;

/// The special tokens' ids of the integration tests' hand-made batches.
pub const SPECIAL: SpecialIds = SpecialIds {
    pad: 0,
    unk: 1,
    cls: 2,
    sep: 3,
    mask: 4,
};

/// The shared data directory: `$BRISK_SHARED_DIR`, else `../shared` next to
/// the workspace root. Panics with a clear message when it is missing: a
/// test that needs shared data fails rather than silently skipping.
pub fn shared_dir() -> PathBuf {
    let dir = match std::env::var_os("BRISK_SHARED_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    };
    assert!(
        dir.join("data").is_dir(),
        "shared data not found at {} (set BRISK_SHARED_DIR to the folder holding data/)",
        dir.display()
    );
    dir
}

/// `[data]` of the tiny preset, with a small validation split and small shards.
pub fn small_data() -> DataConfig {
    let mut data = Preset::Tiny.config().data;
    data.seq_len = 32;
    data.shard_sequences = 64;
    data.generated_words = 20_000;
    data
}

/// Prepares `input` into a fresh directory inside `root`.
pub fn prepare(
    root: &Path,
    name: &str,
    data: &DataConfig,
    vocab: usize,
    input: Input,
) -> brisk::Result<(PathBuf, PrepareReport)> {
    let out = root.join(name);
    std::fs::create_dir_all(&out).unwrap();
    let report = corpus::prepare(data, vocab, &input, &out, false)?;
    Ok((out, report))
}

pub fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    std::fs::write(path, bytes).unwrap();
    path.to_path_buf()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Prepares the built-in corpus of `config` into `root/corpus` (once), then
/// pre-trains on it into `root/{run}` (with its `config.toml`, so the run
/// can be opened as a model). `config.model.vocab_size` and
/// `config.data.corpus` are set to the corpus's.
pub fn pretrain_generated(root: &Path, run: &str, config: &mut Config) -> (PathBuf, Summary) {
    use std::sync::atomic::AtomicBool;

    use brisk::corpus::shards::PreparedCorpus;
    use brisk::train::pretrain::{pretrain, Options};

    let corpus_dir = root.join("corpus");
    if !corpus_dir.join("manifest.json").exists() {
        std::fs::create_dir_all(&corpus_dir).unwrap();
        corpus::prepare(
            &config.data,
            config.model.vocab_size,
            &Input::Generated,
            &corpus_dir,
            false,
        )
        .unwrap();
    }
    let corpus = PreparedCorpus::open(&corpus_dir).unwrap();
    config.model.vocab_size = corpus.manifest.tokenizer.vocab_size;
    config.data.corpus = corpus_dir.display().to_string();
    let dir = root.join(run);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.toml"), config.to_toml()).unwrap();
    let stop = AtomicBool::new(false);
    let options = Options {
        resume: false,
        verbose: false,
        stop: &stop,
        collective: &brisk::dist::Single,
    };
    let summary = pretrain(config, &corpus, &dir, &options).unwrap();
    (dir, summary)
}

/// A `tiny` config small enough for a pre-training test of `objective.kind
/// = kind`: 20,000 generated words, 32-token sequences, batch 8, 40 steps.
pub fn small_pretraining(kind: &str) -> Config {
    let mut config = Preset::Tiny.config();
    config.data.generated_words = 20_000;
    config.data.seq_len = 32;
    config.model.vocab_size = 600;
    config.train.batch_size = 8;
    config.train.steps = 40;
    config.eval.batches = 2;
    config.objective.kind = kind.into();
    config
}

/// The rows of a run's `metrics.jsonl`.
pub fn metrics_rows(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
