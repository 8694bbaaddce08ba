//! `brisk check`: are a run's checkpoints and corpus intact? Every
//! checkpoint is checked against its `checksums.json` and a prepared corpus
//! against its manifest, with the time each check took; any damage is exit
//! code 1.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Run directories (`brisk pretrain`, `compare` variants) or prepared
    /// corpora (`brisk corpus prepare`).
    #[arg(value_name = "DIR", required = true)]
    pub dirs: Vec<PathBuf>,
}

/// One thing checked: what, how many bytes, how long, and the damage.
struct Checked {
    what: PathBuf,
    bytes: u64,
    secs: f64,
    damage: Option<String>,
}

pub(crate) fn check(args: CheckArgs) -> anyhow::Result<()> {
    let mut all = Vec::new();
    for dir in &args.dirs {
        let found = check_dir(dir)?;
        if found.is_empty() {
            return Err(brisk::Error::Usage(format!(
                "{} holds no checkpoint and no prepared corpus to check",
                dir.display()
            ))
            .into());
        }
        all.extend(found);
    }
    for c in &all {
        let rate = c.bytes as f64 / 1e6 / c.secs.max(1e-9);
        match &c.damage {
            None => println!(
                "intact   {}  ({:.1} MB in {:.2} s, {rate:.0} MB/s)",
                c.what.display(),
                c.bytes as f64 / 1e6,
                c.secs
            ),
            Some(why) => println!("DAMAGED  {}: {why}", c.what.display()),
        }
    }
    let damaged = all.iter().filter(|c| c.damage.is_some()).count();
    match damaged {
        0 => Ok(()),
        n => Err(brisk::Error::Training(format!(
            "{n} of {} checked were damaged; `pretrain --resume` falls back to the newest \
             intact checkpoint, and a damaged corpus must be prepared again",
            all.len()
        ))
        .into()),
    }
}

/// The checkpoints and corpus of `dir` (a run), or `dir` itself (a corpus).
fn check_dir(dir: &Path) -> anyhow::Result<Vec<Checked>> {
    if !dir.is_dir() {
        return Err(brisk::Error::Usage(format!("{} is not a directory", dir.display())).into());
    }
    let mut found = Vec::new();
    for (_, checkpoint) in brisk::train::checkpoint::list(dir)? {
        found.push(timed(&checkpoint, || {
            brisk::integrity::verify(&checkpoint).map(|_| ())
        })?);
    }
    for corpus in [dir.to_path_buf(), dir.join("corpus")] {
        if corpus.join("manifest.json").exists() {
            found.push(timed(&corpus, || {
                brisk::corpus::shards::PreparedCorpus::open(&corpus).map(|_| ())
            })?);
        }
    }
    Ok(found)
}

fn timed(what: &Path, check: impl FnOnce() -> brisk::Result<()>) -> anyhow::Result<Checked> {
    let bytes = dir_bytes(what)?;
    let start = Instant::now();
    let damage = check().err().map(|e| e.to_string());
    Ok(Checked {
        what: what.to_path_buf(),
        bytes,
        secs: start.elapsed().as_secs_f64(),
        damage,
    })
}

/// The bytes of the files directly in `dir`.
fn dir_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| brisk::Error::io(dir, e))? {
        let meta = entry
            .and_then(|e| e.metadata())
            .map_err(|e| brisk::Error::io(dir, e))?;
        if meta.is_file() {
            bytes += meta.len();
        }
    }
    Ok(bytes)
}
