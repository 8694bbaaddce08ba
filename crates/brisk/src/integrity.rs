//! Checksums of the files a run resumes from or trains on, so that a
//! damaged file (a flipped bit, a copy cut short, a disk that lost its last
//! writes) is found and named instead of loaded.
//!
//! A checkpoint directory is sealed with `checksums.json`: the size and
//! SHA-256 of every other file in it, written after those files are synced
//! to disk. A prepared corpus's manifest lists its shards' checksums the
//! same way. Checking reads each file once (SHA-256 runs at well over a
//! GB/s with the CPU's SHA instructions, and the files are read in
//! parallel), which costs a fraction of a second against the minutes a
//! damaged resume would waste.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The file that seals a directory.
pub const CHECKSUMS_FILE: &str = "checksums.json";

/// One file's size and SHA-256 (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub bytes: u64,
    pub sha256: String,
}

/// `checksums.json`: every sealed file, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksums {
    pub files: BTreeMap<String, FileSum>,
}

/// Whether a directory's files were checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seal {
    /// Every file listed in `checksums.json` is there and matches it.
    Intact,
    /// No `checksums.json`: the directory was written by a brisk from
    /// before checkpoints were sealed, so nothing could be checked.
    Unsealed,
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `bytes`, as hex.
pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The size and SHA-256 of a file, read in blocks so that memory stays
/// bounded whatever its size.
pub fn sum_file(path: &Path) -> Result<FileSum> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut block).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&block[..n]);
        bytes += n as u64;
    }
    Ok(FileSum {
        bytes,
        sha256: hex(&hasher.finalize()),
    })
}

/// SHA-256 of a file's bytes, as hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    Ok(sum_file(path)?.sha256)
}

/// The regular files of `dir` but `checksums.json`, by name.
fn files_of(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let kind = entry.file_type().map_err(|e| Error::io(entry.path(), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if kind.is_file() && name != CHECKSUMS_FILE {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Seals `dir`: syncs every file in it to disk, then writes (and syncs)
/// `checksums.json` listing them, then syncs the directory. Syncing first
/// means that after a power cut a sealed directory either matches its
/// checksums or is found damaged, never half-written yet believed.
pub fn seal(dir: &Path) -> Result<()> {
    let names = files_of(dir)?;
    let sums = names
        .par_iter()
        .map(|name| {
            let path = dir.join(name);
            sync_file(&path)?;
            Ok((name.clone(), sum_file(&path)?))
        })
        .collect::<Result<BTreeMap<_, _>>>()?;
    crate::run::write_json(&dir.join(CHECKSUMS_FILE), &Checksums { files: sums })?;
    sync_dir(dir)
}

/// Checks every file `checksums.json` lists against it. A missing,
/// resized or altered file is an error naming it.
pub fn verify(dir: &Path) -> Result<Seal> {
    let list = dir.join(CHECKSUMS_FILE);
    if !list.exists() {
        return Ok(Seal::Unsealed);
    }
    let sums: Checksums = crate::run::read_json(&list)?;
    sums.files
        .par_iter()
        .map(|(name, want)| verify_file(&dir.join(name), want, &list))
        .collect::<Result<Vec<()>>>()?;
    Ok(Seal::Intact)
}

/// Checks one file against its expected size and SHA-256; `list` names
/// where the expectation came from.
pub fn verify_file(path: &Path, want: &FileSum, list: &Path) -> Result<()> {
    let list = list.display();
    let got = match std::fs::metadata(path) {
        Ok(_) => sum_file(path)?,
        Err(e) => {
            return Err(Error::data(
                path,
                format!("is missing ({e}), though {list} lists it"),
            ))
        }
    };
    if got.bytes != want.bytes {
        return Err(Error::data(
            path,
            format!(
                "is damaged: it has {} bytes where {list} says {} (a copy or a write cut short?)",
                got.bytes, want.bytes
            ),
        ));
    }
    if got.sha256 != want.sha256 {
        return Err(Error::data(
            path,
            format!("is damaged: its SHA-256 does not match {list}"),
        ));
    }
    Ok(())
}

/// Flushes a file's data to disk.
fn sync_file(path: &Path) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    file.sync_all().map_err(|e| Error::io(path, e))
}

/// Flushes a directory's entries (the names of the files just written).
pub fn sync_dir(dir: &Path) -> Result<()> {
    // Directories cannot be opened for syncing on every platform; where
    // they cannot, the rename that follows is all we have.
    match std::fs::File::open(dir) {
        Ok(file) => file.sync_all().or(Ok(())),
        Err(_) => Ok(()),
    }
}

/// A directory that failed its check, and why.
#[derive(Debug)]
pub struct Damaged {
    pub dir: PathBuf,
    pub error: Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.bin"), vec![7u8; 5000]).unwrap();
        std::fs::write(dir.path().join("b.json"), b"{\"x\": 1}").unwrap();
        seal(dir.path()).unwrap();
        dir
    }

    #[test]
    fn a_sealed_directory_verifies_and_lists_every_file() {
        let dir = sealed();
        assert_eq!(verify(dir.path()).unwrap(), Seal::Intact);
        let sums: Checksums = crate::run::read_json(&dir.path().join(CHECKSUMS_FILE)).unwrap();
        let names: Vec<_> = sums.files.keys().cloned().collect();
        assert_eq!(names, ["a.bin", "b.json"]);
        assert_eq!(sums.files["a.bin"].bytes, 5000);
    }

    #[test]
    fn a_flipped_byte_a_cut_file_and_a_missing_file_are_named() {
        let dir = sealed();
        let a = dir.path().join("a.bin");
        let mut bytes = std::fs::read(&a).unwrap();
        bytes[1234] ^= 0x10;
        std::fs::write(&a, &bytes).unwrap();
        let err = verify(dir.path()).unwrap_err().to_string();
        assert!(err.contains("a.bin") && err.contains("SHA-256"), "{err}");

        std::fs::write(&a, &bytes[..100]).unwrap();
        let err = verify(dir.path()).unwrap_err().to_string();
        assert!(err.contains("a.bin") && err.contains("100 bytes"), "{err}");

        std::fs::remove_file(&a).unwrap();
        let err = verify(dir.path()).unwrap_err().to_string();
        assert!(err.contains("a.bin") && err.contains("missing"), "{err}");
    }

    #[test]
    fn a_directory_without_checksums_is_unsealed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.bin"), b"x").unwrap();
        assert_eq!(verify(dir.path()).unwrap(), Seal::Unsealed);
    }

    #[test]
    fn the_block_reader_matches_the_one_shot_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(sha256_file(&path).unwrap(), sha256(&bytes));
    }
}
