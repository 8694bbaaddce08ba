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

/// A small, seeded generator for test faults (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `0..n`, as an index.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }
}
