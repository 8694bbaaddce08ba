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

/// Runs the `brisk` binary in `cwd` with owned arguments.
pub fn brisk_owned(args: &[String], cwd: &Path) -> Output {
    brisk(&args.iter().map(String::as_str).collect::<Vec<_>>(), cwd)
}

/// The arguments of `brisk pretrain` into `out` on `threads` threads, for a
/// run small enough for tests: 20,000 generated words, 32-token sequences,
/// a 600-entry vocabulary, batch 4. `extra` (flags and `--set`s) follows,
/// so its `--set`s win.
pub fn small_pretrain(out: &str, threads: usize, extra: &[&str]) -> Vec<String> {
    let threads = threads.to_string();
    let base = [
        "pretrain",
        "--out",
        out,
        "--threads",
        &threads,
        "--set",
        "data.generated_words=20000",
        "--set",
        "data.seq_len=32",
        "--set",
        "model.vocab_size=600",
        "--set",
        "train.batch_size=4",
    ];
    base.iter().chain(extra).map(|s| s.to_string()).collect()
}

/// `--set KEY=VALUE` for each of `sets`.
pub fn sets<'a>(sets: &[&'a str]) -> Vec<&'a str> {
    sets.iter().flat_map(|s| ["--set", s]).collect()
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
