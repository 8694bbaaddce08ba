//! The run directory: where a job writes its resolved config, provenance and
//! results. Layout (see `docs/conventions.md`):
//!
//! ```text
//! config.toml        the resolved config, exactly what ran
//! provenance.json    brisk version, git commit, command line, CPU, threads, start time
//! metrics.jsonl      one JSON object per logged step
//! checkpoints/       step-NNNNNN/ directories
//! plots/             charts
//! summary.json       final figures
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::Config;
use crate::error::{Error, Result};

/// What to do when the run directory already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse (the default): never overwrite a run by accident.
    Refuse,
    /// `--force`: delete it and start again.
    Overwrite,
    /// `--resume`: keep it and continue.
    Resume,
}

/// An open run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
}

/// The default run directory: `runs/<command>-<preset>-<YYYYmmdd-HHMMSS>` (UTC).
pub fn default_run_path(command: &str, preset: &str) -> PathBuf {
    let stamp = utc_timestamp(SystemTime::now()).compact;
    PathBuf::from("runs").join(format!("{command}-{preset}-{stamp}"))
}

impl RunDir {
    /// Creates (or, with [`Existing::Resume`], reopens) a run directory,
    /// and holds its lock ([`LOCK_FILE`]) until the process ends: a run
    /// directory another process is writing is refused, whatever
    /// `existing` says.
    pub fn create(path: &Path, existing: Existing) -> Result<RunDir> {
        if path.exists() {
            // Checked before anything is removed or reopened; released at
            // once, because `--force` may remove the directory.
            if !held_here(path) {
                drop(lock(path)?);
            }
            let non_empty = std::fs::read_dir(path)
                .map_err(|e| Error::io(path, e))?
                .next()
                .is_some();
            match existing {
                Existing::Refuse if non_empty => {
                    return Err(Error::Usage(format!(
                        "{} already exists; pass --force to overwrite it{}",
                        path.display(),
                        ", or choose another --out"
                    )))
                }
                Existing::Overwrite if non_empty => {
                    std::fs::remove_dir_all(path).map_err(|e| Error::io(path, e))?;
                }
                _ => {}
            }
        } else if existing == Existing::Resume {
            return Err(Error::Usage(format!(
                "--resume: {} does not exist",
                path.display()
            )));
        }
        std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
        hold(path)?;
        if existing != Existing::Resume {
            CREATED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(path.to_path_buf());
        }
        Ok(RunDir {
            path: path.to_path_buf(),
        })
    }

    /// Writes the resolved config to `config.toml`.
    pub fn write_config(&self, config: &Config) -> Result<()> {
        write_atomic(&self.path.join("config.toml"), config.to_toml().as_bytes())
    }

    /// Writes `provenance.json` for this process.
    pub fn write_provenance(&self) -> Result<Provenance> {
        let provenance = Provenance::now();
        write_json(&self.path.join("provenance.json"), &provenance)?;
        Ok(provenance)
    }

    /// Records a resumed session: `provenance.json` keeps how the run was
    /// started and lists every later session under `resumed`.
    pub fn append_resumed_provenance(&self) -> Result<()> {
        let path = self.path.join("provenance.json");
        let session = serde_json::to_value(Provenance::now()).expect("serialisable");
        let mut record = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| Error::data(&path, format!("not valid JSON: {e}")))?,
            Err(_) => return self.write_provenance().map(|_| ()),
        };
        let Some(object) = record.as_object_mut() else {
            return Err(Error::data(&path, "is not a JSON object"));
        };
        let resumed = object
            .entry("resumed")
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        match resumed.as_array_mut() {
            Some(list) => list.push(session),
            None => return Err(Error::data(&path, "`resumed` is not a list")),
        }
        write_json(&path, &record)
    }
}

/// The lock file of a run directory: an advisory `flock` held by the
/// process writing the directory, with its pid inside for the message
/// another process gets. The kernel releases the lock when the holder
/// exits, however it exits, so a killed run leaves no stale lock.
pub const LOCK_FILE: &str = ".lock";

/// Locks held by this process (directory, lock file), released when it
/// exits.
static HELD: std::sync::Mutex<Vec<(PathBuf, std::fs::File)>> = std::sync::Mutex::new(Vec::new());

/// True when this process holds the lock of `dir` (a command may open a
/// run directory more than once; a second `flock` of its own would fail).
fn held_here(dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    let held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    // `--force` may have removed the directory and its lock file since.
    held.iter().any(|(d, _)| *d == dir) && dir.join(LOCK_FILE).exists()
}

/// Holds the lock of `dir` until the process ends.
fn hold(dir: &Path) -> Result<()> {
    if held_here(dir) {
        return Ok(());
    }
    let file = lock(dir)?;
    let dir = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    held.retain(|(d, _)| *d != dir);
    held.push((dir, file));
    Ok(())
}

/// Takes the lock of run directory `dir` (which exists), or says which
/// process holds it.
fn lock(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    if !try_lock(&file) {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        let holder = holder.trim();
        let who = if holder.is_empty() {
            "another process".to_string()
        } else {
            format!("process {holder}")
        };
        return Err(Error::Usage(format!(
            "{} is in use by {who} (it holds {}); wait for it to finish or stop it first",
            dir.display(),
            path.display()
        )));
    }
    // Ours now: record who holds it.
    let pid = std::process::id().to_string();
    file.set_len(0).map_err(|e| Error::io(&path, e))?;
    file.write_all(pid.as_bytes())
        .map_err(|e| Error::io(&path, e))?;
    Ok(file)
}

/// An exclusive advisory lock on `file`, without waiting.
#[cfg(unix)]
fn try_lock(file: &std::fs::File) -> bool {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file descriptor this function borrows.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Elsewhere run directories are not locked.
#[cfg(not(unix))]
fn try_lock(_: &std::fs::File) -> bool {
    true
}

/// Run directories this process created (not reopened with `--resume`),
/// for [`discard_unfinished`].
static CREATED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Files that mean a run directory holds work worth keeping: training
/// metrics, checkpoints, results and summaries anywhere in it, or a
/// prepared corpus at its top.
const WORK_FILES: [&str; 5] = [
    "metrics.jsonl",
    "episodes.jsonl",
    "checkpoints",
    "results.json",
    "summary.json",
];

fn holds_work(dir: &Path, top: bool) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        WORK_FILES.contains(&name.as_ref())
            || (top && name == "manifest.json")
            || (entry.path().is_dir() && holds_work(&entry.path(), false))
    })
}

/// After a command failed: removes the run directories it created that
/// hold no work yet (only its config, provenance, a prepared built-in
/// corpus or empty folders), so that the corrected command can run with
/// the same `--out` without `--force`. Returns the directories removed.
pub fn discard_unfinished() -> Vec<PathBuf> {
    let created = std::mem::take(&mut *CREATED.lock().unwrap_or_else(|e| e.into_inner()));
    created
        .into_iter()
        .filter(|dir| dir.is_dir() && !holds_work(dir, true))
        .filter(|dir| std::fs::remove_dir_all(dir).is_ok())
        .collect()
}

/// Where and how a run was made.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    pub brisk_version: String,
    pub git_commit: String,
    pub command_line: Vec<String>,
    pub cpu_model: String,
    pub threads: usize,
    /// Processes of a data-parallel run (MPI ranks; 1 for one process).
    pub ranks: usize,
    pub start_time: String,
}

impl Provenance {
    pub fn now() -> Provenance {
        Provenance {
            brisk_version: env!("CARGO_PKG_VERSION").to_string(),
            git_commit: env!("BRISK_GIT_COMMIT").to_string(),
            command_line: std::env::args().collect(),
            cpu_model: cpu_model(),
            threads: rayon::current_num_threads(),
            ranks: crate::dist::launcher_world_size().unwrap_or(1),
            start_time: utc_timestamp(SystemTime::now()).iso,
        }
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// A UTC time in two spellings.
pub struct Timestamp {
    /// `2026-11-23T17:04:05Z`
    pub iso: String,
    /// `20261123-170405`, for directory names.
    pub compact: String,
}

/// Formats a system time as UTC without a time-zone database.
pub fn utc_timestamp(time: SystemTime) -> Timestamp {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    Timestamp {
        iso: format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z"),
        compact: format!("{y:04}{m:02}{d:02}-{hh:02}{mm:02}{ss:02}"),
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Builds the directory `target` atomically: `fill` writes into a
/// temporary sibling (`.NAME.tmp`), which then replaces `target`, so a
/// crash never leaves a half-written directory under the real name.
pub fn write_dir_atomic(target: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let tmp = parent.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        // Give back the space at once: on a full disk the half-written
        // files are what fills it.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if target.exists() {
        std::fs::remove_dir_all(target).map_err(|e| Error::io(target, e))?;
    }
    std::fs::rename(&tmp, target).map_err(|e| Error::io(target, e))
}

/// Writes a file atomically: a temporary name in the same directory, then a
/// rename, so a crash never leaves a half-written file under the real name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary_sibling(path);
    let mut file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    file.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Writes tensors as a safetensors file atomically (a temporary sibling,
/// then a rename). A failed write is an I/O error naming `path`, so a full
/// disk says so, and leaves nothing behind.
pub fn save_safetensors<K: AsRef<str> + Ord + std::fmt::Display>(
    tensors: &std::collections::HashMap<K, candle_core::Tensor>,
    path: &Path,
) -> Result<()> {
    let tmp = temporary_sibling(path);
    if let Err(e) = candle_core::safetensors::save(tensors, &tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_error(path, &e));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// The I/O error under a library's write error, if there is one, as an
/// error naming `path`.
fn write_error(path: &Path, error: &(dyn std::error::Error + 'static)) -> Error {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            let copy = match io.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::new(io.kind(), io.to_string()),
            };
            return Error::io(path, copy);
        }
        cause = e.source();
    }
    Error::data(path, format!("cannot be written: {error}"))
}

/// `dir/.name.tmp` next to `dir/name`.
pub fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Drops a leading UTF-8 byte-order mark: editors on Windows and some
/// data releases (MRPC's) write one, and it is invisible in error messages,
/// so a header column `\u{feff}Quality` would not match `Quality`.
pub fn strip_bom(mut text: String) -> String {
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    text
}

/// Reads a UTF-8 text file without its byte-order mark (if any); every
/// text reader (TSV, TOML, JSON, word lists) goes through here.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::data(
            path,
            format!(
                "invalid UTF-8 at byte offset {}",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    Ok(strip_bom(text))
}

/// Reads a JSON file into `T`; errors name the file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = read_text(path)?;
    serde_json::from_str(&text).map_err(|e| Error::data(path, format!("not readable: {e}")))
}

/// Writes pretty JSON atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).expect("serialisable");
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[cfg(unix)]
    #[test]
    fn a_locked_run_directory_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        RunDir::create(&run, Existing::Refuse).unwrap();
        // The same process may open its own run again (a command that
        // resumes what it just created) ...
        RunDir::create(&run, Existing::Resume).unwrap();
        RunDir::create(&run, Existing::Overwrite).unwrap();
        assert!(held_here(&run));
        // ... but a second lock, as another process would take, is refused.
        let err = lock(&run).unwrap_err().to_string();
        let pid = std::process::id().to_string();
        assert!(
            err.contains("is in use by process") && err.contains(&pid),
            "{err}"
        );
        // Once released (the holder exited), the directory is free.
        let canonical = run.canonicalize().unwrap();
        HELD.lock().unwrap().retain(|(d, _)| *d != canonical);
        drop(lock(&run).unwrap());
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let t = utc_timestamp(UNIX_EPOCH + Duration::from_secs(0));
        assert_eq!(t.iso, "1970-01-01T00:00:00Z");
        // 2024-02-29T12:34:56Z, a leap day.
        let t = utc_timestamp(UNIX_EPOCH + Duration::from_secs(1_709_210_096));
        assert_eq!(t.iso, "2024-02-29T12:34:56Z");
        assert_eq!(t.compact, "20240229-123456");
    }

    #[test]
    fn existing_runs_are_refused_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        RunDir::create(&run, Existing::Refuse).unwrap();
        std::fs::write(run.join("config.toml"), "x").unwrap();
        let err = RunDir::create(&run, Existing::Refuse).unwrap_err();
        assert!(
            err.is_usage() && err.to_string().contains("--force"),
            "{err}"
        );
        RunDir::create(&run, Existing::Resume).unwrap();
        assert!(run.join("config.toml").exists(), "resume keeps the run");
        RunDir::create(&run, Existing::Overwrite).unwrap();
        assert!(!run.join("config.toml").exists(), "force starts afresh");
        let err = RunDir::create(&dir.path().join("none"), Existing::Resume).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
