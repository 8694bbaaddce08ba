//! Checkpoints: `checkpoints/step-NNNNNN/` holding `model.safetensors`,
//! `optimizer.safetensors` and `state.json` (format version, step, data
//! position, counters), sealed by `checksums.json` ([`crate::integrity`]).
//!
//! A checkpoint directory is assembled under a temporary name, synced,
//! sealed and renamed into place, so a crash or a kill never leaves a
//! half-written checkpoint under a real name, and a checkpoint damaged
//! afterwards (a flipped bit, a copy cut short) fails its check on loading;
//! resuming then falls back to the newest intact one. Random streams (masks, dropout) are derived from the
//! seed and the step, so the step and the data position are all the state
//! that resume needs besides weights and optimiser moments.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::integrity::{self, Damaged, Seal};
use crate::model::Params;
use crate::run::write_json;
use crate::train::optim::AdamW;

/// The checkpoint layout this brisk writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Where the data order stands: the epoch's permutation is derived from the
/// seed and the epoch, and `next` sequences of it have been used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    pub next: usize,
}

/// `state.json`: everything but the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub format_version: u32,
    /// Optimiser steps taken.
    pub step: u64,
    /// Training tokens seen.
    pub tokens: u64,
    /// Training FLOPs so far (ELECTRA's counting convention).
    pub flops: f64,
    /// Training wall-clock seconds so far, over every session of the run.
    pub wall_s: f64,
    pub data: DataPosition,
    /// The seed the per-step random streams derive from (`train.seed`).
    pub seed: u64,
    /// Worker threads of the session that wrote the checkpoint: resume is
    /// bitwise exact at the same count.
    pub threads: usize,
    pub last_loss: f64,
    pub last_val_loss: Option<f64>,
    /// Early exit: the sums over steps of the shares of token-layers
    /// skipped (`skipped`, `skipped_layer_{k}`), for the run's means.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped: BTreeMap<String, f64>,
    /// Micro-batches per step over all ranks (ranks × accumulation steps):
    /// masks and dropout are drawn per micro-batch, so a resume continues
    /// bitwise (up to summation order) only with the same count.
    #[serde(default = "one")]
    pub micro_batches: usize,
}

fn one() -> usize {
    1
}

impl TrainState {
    /// Adds a step's skip shares (its figures whose key starts with
    /// `skipped`) to the sums.
    pub fn add_skipped(&mut self, figures: &BTreeMap<String, f64>) {
        for (key, share) in figures.iter().filter(|(k, _)| k.starts_with("skipped")) {
            *self.skipped.entry(key.clone()).or_default() += share;
        }
    }

    /// The mean skip shares over the run's steps.
    pub fn mean_skipped(&self) -> BTreeMap<String, f64> {
        let steps = self.step.max(1) as f64;
        self.skipped
            .iter()
            .map(|(k, sum)| (k.clone(), sum / steps))
            .collect()
    }
}

/// `checkpoints/` of a run.
pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:06}")
}

/// The step of a `step-NNNNNN` directory name.
fn parse_step_dir(name: &str) -> Option<u64> {
    name.strip_prefix("step-")?.parse().ok()
}

/// Every checkpoint of a run, oldest first.
pub fn list(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = checkpoints_dir(run_dir);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = parse_step_dir(&name) {
            found.push((step, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// The newest checkpoint of a run, if any.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(list(run_dir)?.pop().map(|(_, path)| path))
}

/// Writes a checkpoint of `params`, `opt` and `state` atomically, then keeps
/// only the newest `keep` checkpoints (at least this one). `extra` writes
/// any further files (TNF's notes) into the directory being assembled.
/// Returns its path.
pub fn save(
    run_dir: &Path,
    params: &Params,
    opt: &AdamW,
    state: &TrainState,
    keep: usize,
    extra: &dyn Fn(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let target = checkpoints_dir(run_dir).join(step_dir_name(state.step));
    let previous = latest(run_dir)?;
    crate::run::write_dir_atomic(&target, |tmp| {
        params.save(&tmp.join("model.safetensors"))?;
        opt.save(&tmp.join("optimizer.safetensors"))?;
        write_json(&tmp.join("state.json"), state)?;
        extra(tmp)?;
        pause_for_fault_tests();
        integrity::seal(tmp)
    })
    .map_err(|e| {
        let kept = match &previous {
            Some(dir) => format!("the previous checkpoint, {}, is intact", dir.display()),
            None => "there is no earlier checkpoint".into(),
        };
        Error::Training(format!(
            "writing the checkpoint of step {} failed: {e}; training stopped and {kept}. \
             Fix the cause, then continue with --resume",
            state.step
        ))
    })?;
    prune(run_dir, keep.max(1))?;
    Ok(target)
}

/// Deletes all but the newest `keep` checkpoints, and what killed writers
/// and deleters left behind. A checkpoint is renamed out of the way before
/// it is deleted, so a kill during the deletion never leaves a checkpoint
/// with some of its files under a real name.
fn prune(run_dir: &Path, keep: usize) -> Result<()> {
    let all = list(run_dir)?;
    let excess = all.len().saturating_sub(keep);
    for (_, path) in all.into_iter().take(excess) {
        let doomed = path.with_file_name(format!(
            ".{}.old",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        std::fs::rename(&path, &doomed).map_err(|e| Error::io(&path, e))?;
    }
    let dir = checkpoints_dir(run_dir);
    for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let leftover =
            name.starts_with(".step-") && (name.ends_with(".old") || name.ends_with(".tmp"));
        if leftover {
            let path = entry.path();
            std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// Reads a checkpoint's `state.json`, refusing another format version.
pub fn read_state(dir: &Path) -> Result<TrainState> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::data(&path, format!("not valid JSON: {e}")))?;
    let version = value.get("format_version").and_then(|v| v.as_u64());
    if version != Some(FORMAT_VERSION as u64) {
        let found = version.map_or("none".to_string(), |v| v.to_string());
        return Err(Error::data(
            &path,
            format!(
                "checkpoint format version {found}, but this brisk reads version {FORMAT_VERSION}; \
                 resume it with the brisk that wrote it"
            ),
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| Error::data(&path, format!("bad checkpoint state: {e}")))
}

/// Loads a checkpoint into `params` and `opt` and returns its state,
/// checking its files against their checksums first.
pub fn load(dir: &Path, params: &Params, opt: &mut AdamW) -> Result<TrainState> {
    integrity::verify(dir)?;
    let state = read_state(dir)?;
    params.load(&dir.join("model.safetensors"))?;
    opt.load(&dir.join("optimizer.safetensors"), state.step)?;
    Ok(state)
}

/// The newest checkpoint of a run whose files match their checksums, and
/// the newer ones that did not (newest first), for the caller to report.
/// A checkpoint from before checkpoints were sealed counts as intact. An
/// intact checkpoint that cannot be used (another format version) is
/// returned too: loading it says why, rather than falling back past it.
pub fn latest_intact(run_dir: &Path) -> Result<(Option<PathBuf>, Vec<Damaged>)> {
    let mut damaged = Vec::new();
    for (_, dir) in list(run_dir)?.into_iter().rev() {
        match integrity::verify(&dir) {
            Ok(Seal::Intact | Seal::Unsealed) => return Ok((Some(dir), damaged)),
            Err(error) => damaged.push(Damaged { dir, error }),
        }
    }
    Ok((None, damaged))
}

/// Says on stderr which checkpoints were passed over as damaged, and which
/// one is used instead.
pub fn report_fallback(damaged: &[Damaged], used: Option<&Path>) {
    for d in damaged {
        eprintln!(
            "warning: checkpoint {} is damaged and was skipped: {}",
            d.dir.display(),
            d.error
        );
    }
    if !damaged.is_empty() {
        match used {
            Some(dir) => eprintln!("using the newest intact checkpoint, {}", dir.display()),
            None => eprintln!("no intact checkpoint is left"),
        }
    }
}

/// The weights file of a run's newest intact checkpoint, for commands that
/// use a trained model (`fill-mask`, export, fine-tuning); damaged newer
/// ones are reported and passed over.
pub fn latest_weights(run_dir: &Path) -> Result<PathBuf> {
    Ok(newest_usable(run_dir)?.join("model.safetensors"))
}

/// A run's newest intact checkpoint directory, reporting damaged newer
/// ones; an error when there is none.
pub fn newest_usable(run_dir: &Path) -> Result<PathBuf> {
    let (dir, damaged) = latest_intact(run_dir)?;
    report_fallback(&damaged, dir.as_deref());
    let dir = match (dir, damaged.into_iter().next()) {
        (Some(dir), _) => dir,
        (None, Some(first)) => return Err(first.error),
        (None, None) => {
            return Err(Error::data(
                checkpoints_dir(run_dir),
                "has no checkpoint (is this a `brisk pretrain` run directory?)",
            ))
        }
    };
    Ok(dir)
}

/// For the fault tests (`tests/faults.rs`): with `BRISK_FAULT_PAUSE_MS`
/// set, sleeps that long between writing a checkpoint's files and sealing
/// it, so that a kill lands inside a checkpoint write often enough to test.
fn pause_for_fault_tests() {
    if let Some(ms) = std::env::var("BRISK_FAULT_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;
    use candle_core::{DType, Device};

    fn state(step: u64) -> TrainState {
        TrainState {
            format_version: FORMAT_VERSION,
            step,
            tokens: step * 10,
            flops: 1.5e9,
            wall_s: 2.0,
            data: DataPosition { epoch: 1, next: 3 },
            seed: 42,
            threads: 2,
            last_loss: 3.0,
            last_val_loss: None,
            skipped: BTreeMap::new(),
            micro_batches: 1,
        }
    }

    #[test]
    fn checkpoints_round_trip_and_only_the_newest_are_kept() {
        let run = tempfile::tempdir().unwrap();
        let mut params = Params::new(Device::Cpu, DType::F32);
        params.ones("w.weight", &[3]).unwrap();
        let mut opt = AdamW::new(&params, &Preset::Tiny.config().train).unwrap();
        for step in [5, 10, 15] {
            save(run.path(), &params, &opt, &state(step), 2, &|_| Ok(())).unwrap();
        }
        let kept: Vec<u64> = list(run.path())
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(kept, vec![10, 15]);
        let dir = latest(run.path()).unwrap().unwrap();
        assert!(dir.ends_with("step-000015"));
        assert_eq!(load(&dir, &params, &mut opt).unwrap(), state(15));
        assert_eq!(opt.step, 15);
        let leftovers: Vec<_> = std::fs::read_dir(checkpoints_dir(run.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn another_format_version_is_a_clear_error() {
        let run = tempfile::tempdir().unwrap();
        let mut params = Params::new(Device::Cpu, DType::F32);
        params.ones("w.weight", &[3]).unwrap();
        let opt = AdamW::new(&params, &Preset::Tiny.config().train).unwrap();
        let dir = save(run.path(), &params, &opt, &state(1), 3, &|_| Ok(())).unwrap();
        let path = dir.join("state.json");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("\"format_version\": 1", "\"format_version\": 99"),
        )
        .unwrap();
        let err = read_state(&dir).unwrap_err().to_string();
        assert!(
            err.contains("state.json") && err.contains("format version 99"),
            "{err}"
        );
    }
}
