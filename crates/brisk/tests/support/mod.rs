//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use brisk::config::{Config, DataConfig, Preset};
use brisk::corpus::{self, Input, PrepareReport};
use brisk::train::pretrain::Summary;

mod minilm;
#[allow(unused_imports)] // not every test file needs it
pub use minilm::minilm_dir;

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
    };
    let summary = pretrain(config, &corpus, &dir, &options).unwrap();
    (dir, summary)
}
