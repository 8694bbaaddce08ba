//! Helpers shared by the CLI test files.
#![allow(dead_code)] // not every test file uses every helper

use std::path::Path;
use std::process::{Command, Output};

/// Runs the `brisk` binary in `cwd`.
pub fn brisk(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_brisk"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("the brisk binary runs")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The step of a run's newest checkpoint (0 when it has none).
pub fn newest_checkpoint(run: &Path) -> u64 {
    brisk::train::checkpoint::list(run)
        .unwrap()
        .last()
        .map_or(0, |(step, _)| *step)
}
