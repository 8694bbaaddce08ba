//! The process group this `brisk` runs in: one process, or the ranks of an
//! MPI job (`mpirun -np N brisk pretrain ...`, `srun brisk pretrain ...`,
//! built with `--features mpi`). Rank 0 makes every decision that touches
//! the run directory and tells the others; a rank that fails ends the job.

#[cfg(feature = "mpi")]
use std::sync::OnceLock;

use anyhow::Context;
use brisk::dist::{Collective, Single};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[cfg(feature = "mpi")]
static MPI: OnceLock<brisk::dist::mpi::Mpi> = OnceLock::new();
static SINGLE: Single = Single;

/// Joins the MPI job this process was launched into, if any. Without the
/// `mpi` feature, a launch as one of several ranks is refused: every rank
/// would train the whole run on its own and they would overwrite each
/// other's files.
pub(crate) fn init() -> anyhow::Result<()> {
    let launched = brisk::dist::launcher_world_size().filter(|&n| n > 1);
    if let Some(refusal) = refusal(launched, cfg!(feature = "mpi")) {
        return Err(brisk::Error::Usage(refusal).into());
    }
    #[cfg(feature = "mpi")]
    if launched.is_some() {
        let mpi = brisk::dist::mpi::Mpi::init().context("joining the MPI job")?;
        let _ = MPI.set(mpi);
    }
    Ok(())
}

/// Why a process launched as one of `launched` ranks cannot run, if it
/// cannot: this build has no MPI.
fn refusal(launched: Option<usize>, built_with_mpi: bool) -> Option<String> {
    let n = launched.filter(|_| !built_with_mpi)?;
    Some(format!(
        "brisk was launched as one of {n} MPI ranks, but this build has no MPI support: \
         build it with `cargo build --release -p brisk-cli --features mpi` (needs \
         libopenmpi-dev and libclang-dev), or run it as one process"
    ))
}

/// The group: the MPI world when launched by MPI, else one process.
pub(crate) fn group() -> &'static dyn Collective {
    #[cfg(feature = "mpi")]
    if let Some(mpi) = MPI.get() {
        return mpi;
    }
    &SINGLE
}

/// This process's rank (0 in one process).
pub(crate) fn rank() -> usize {
    group().rank()
}

/// Ends MPI after the last collective (every rank, on success).
pub(crate) fn finish() {
    #[cfg(feature = "mpi")]
    if let Some(mpi) = MPI.get() {
        mpi.finish();
    }
}

/// Ends every rank of the job with `code` after this rank failed, so that
/// none waits for it in a collective. Returns in one process.
pub(crate) fn fail(code: u8) {
    group().abort(code.into());
}

/// Runs `decide` on rank 0 and hands its value to every rank (serialised
/// as JSON). An error on rank 0 is returned there; the other ranks wait
/// until rank 0 ends the job.
pub(crate) fn from_root<T: Serialize + DeserializeOwned>(
    decide: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let g = group();
    if g.world() == 1 {
        return decide();
    }
    let mut bytes = Vec::new();
    let value = if g.rank() == 0 {
        let value = decide()?;
        bytes = serde_json::to_vec(&value).context("encoding rank 0's decision")?;
        Some(value)
    } else {
        None
    };
    g.broadcast_bytes(&mut bytes)?;
    match value {
        Some(value) => Ok(value),
        None => serde_json::from_slice(&bytes).context("decoding rank 0's decision"),
    }
}

/// Refuses a command that runs in one process only when launched as
/// several ranks.
pub(crate) fn one_process_only(command: &str) -> anyhow::Result<()> {
    let world = group().world();
    if world > 1 {
        return Err(brisk::Error::Usage(format!(
            "`brisk {command}` runs in one process; it was launched as {world} MPI ranks. \
             Data-parallel runs are `brisk pretrain` and `brisk compare`; launch {command} \
             without mpirun/srun"
        ))
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::refusal;

    #[test]
    fn only_a_build_without_mpi_refuses_several_ranks() {
        assert_eq!(refusal(None, false), None);
        assert_eq!(refusal(None, true), None);
        assert_eq!(refusal(Some(4), true), None);
        let message = refusal(Some(4), false).unwrap();
        assert!(message.contains("one of 4 MPI ranks") && message.contains("--features mpi"));
    }
}
