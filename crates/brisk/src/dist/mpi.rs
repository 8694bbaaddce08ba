//! [`Collective`] over MPI (Open MPI or MPICH), through the `mpi` crate.
//!
//! MPI is initialised with `MPI_THREAD_SERIALIZED`: training runs on a
//! worker of the thread pool, not on the thread that initialised MPI, and a
//! mutex makes sure only one thread is inside MPI at a time. MPI's default
//! error handler on `MPI_COMM_WORLD` is `MPI_ERRORS_ARE_FATAL`, so a failed
//! call ends the job; the launcher ends every rank when one dies.

use std::sync::Mutex;

use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};
use mpi::Threading;

use super::Collective;
use crate::error::{Error, Result};

/// The MPI world of this job.
pub struct Mpi {
    /// Finalises MPI when dropped; `None` once [`Mpi::finish`] did.
    universe: Mutex<Option<mpi::environment::Universe>>,
    world: Mutex<SimpleCommunicator>,
    rank: usize,
    size: usize,
}

// SAFETY: MPI was initialised with MPI_THREAD_SERIALIZED (checked in
// `init`), which lets any thread call MPI as long as calls do not overlap;
// every call goes through the `world` mutex.
unsafe impl Send for Mpi {}
unsafe impl Sync for Mpi {}

impl Mpi {
    /// Initialises MPI. Fails if it already was, or if the library cannot
    /// serialise calls from several threads.
    pub fn init() -> Result<Mpi> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| Error::Usage("MPI was already initialised in this process".into()))?;
        if threading < Threading::Serialized {
            return Err(Error::Usage(format!(
                "this MPI library offers thread support {threading:?}; brisk needs \
                 Serialized (calls from any one thread at a time)"
            )));
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(Mpi {
            universe: Mutex::new(Some(universe)),
            world: Mutex::new(world),
            rank,
            size,
        })
    }

    /// Finalises MPI (every rank must call it, after its last collective).
    pub fn finish(&self) {
        drop(self.universe.lock().map(|mut u| u.take()));
    }

    fn world(&self) -> std::sync::MutexGuard<'_, SimpleCommunicator> {
        // A poisoned lock only means another thread panicked inside MPI;
        // the communicator itself is still the world.
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// MPI reads the count from the send buffer: a shorter receive buffer
/// would be overrun.
fn same_length(send: usize, sum: usize) -> Result<()> {
    if send != sum {
        return Err(Error::Tensor(format!(
            "all-reduce of {send} elements into a buffer of {sum}"
        )));
    }
    Ok(())
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.size
    }

    fn all_reduce_sum_f32(&self, send: &[f32], sum: &mut [f32]) -> Result<()> {
        same_length(send.len(), sum.len())?;
        self.world()
            .all_reduce_into(send, sum, SystemOperation::sum());
        Ok(())
    }

    fn all_reduce_sum_f64(&self, send: &[f64], sum: &mut [f64]) -> Result<()> {
        same_length(send.len(), sum.len())?;
        self.world()
            .all_reduce_into(send, sum, SystemOperation::sum());
        Ok(())
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()> {
        let world = self.world();
        let root = world.process_at_rank(0);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        root.broadcast_into(&mut bytes[..]);
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.world().barrier();
        Ok(())
    }

    fn engine(&self) -> &'static str {
        "mpi"
    }

    fn abort(&self, code: i32) {
        if self.size > 1 {
            self.world().abort(code);
        }
    }
}
