//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use brisk::config::{DataConfig, Preset};
use brisk::corpus::{self, Input, PrepareReport};

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
