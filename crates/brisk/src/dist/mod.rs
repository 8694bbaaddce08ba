//! Collectives for data-parallel training: the few operations a run spread
//! over processes needs (sum a flat buffer over every rank, send rank 0's
//! bytes to everyone, wait for everyone), behind one interface with one
//! implementation per engine:
//!
//! - [`Single`]: one process, every operation a no-op (the default build);
//! - `Mpi` (cargo feature `mpi`, [`mpi`]): Open MPI or MPICH through the
//!   `mpi` crate, launched by `mpirun` or Slurm's `srun`;
//! - NCCL, for GPUs, fits the same interface when the CUDA path lands:
//!   its all-reduce works on device buffers, so the gradient exchange below
//!   hands over whole flat buffers rather than per-tensor pieces.
//!
//! Data-parallel training (Goyal et al., 2017, "Accurate, Large Minibatch
//! SGD"): every rank holds the whole model, computes gradients on its own
//! slice of the global batch, and the gradients are averaged with one
//! all-reduce before every rank applies the same optimiser update. The
//! model's parameters and gradients are already flat buffers per group
//! ([`crate::model::Params`]), so the exchange is a few large calls.

#[cfg(feature = "mpi")]
pub mod mpi;

use std::time::Instant;

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// The operations data-parallel training needs. Every rank calls the same
/// operations in the same order; an implementation may block until all
/// ranks have arrived.
pub trait Collective: Send + Sync {
    /// This process's rank, `0..world()`.
    fn rank(&self) -> usize;
    /// How many processes take part.
    fn world(&self) -> usize;
    /// Writes into `sum` on every rank the element-wise sum over ranks of
    /// their `send` (same length on every rank). Out of place, as MPI's and
    /// NCCL's all-reduce are at their fastest.
    fn all_reduce_sum_f32(&self, send: &[f32], sum: &mut [f32]) -> Result<()>;
    /// The same for f64 (losses and counters; f64 models in tests).
    fn all_reduce_sum_f64(&self, send: &[f64], sum: &mut [f64]) -> Result<()>;
    /// Replaces `bytes` on every rank with rank 0's.
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// The engine's name, for logs and provenance.
    fn engine(&self) -> &'static str;
    /// Ends every rank of the job with exit code `code` (a failed rank must
    /// not leave the others waiting in a collective). Returns only when
    /// there is no other rank to end.
    fn abort(&self, code: i32);
}

/// One process: rank 0 of 1.
#[derive(Debug, Default, Clone, Copy)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum_f32(&self, send: &[f32], sum: &mut [f32]) -> Result<()> {
        sum.copy_from_slice(send);
        Ok(())
    }
    fn all_reduce_sum_f64(&self, send: &[f64], sum: &mut [f64]) -> Result<()> {
        sum.copy_from_slice(send);
        Ok(())
    }
    fn broadcast_bytes(&self, _: &mut Vec<u8>) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn engine(&self) -> &'static str {
        "single"
    }
    fn abort(&self, _: i32) {}
}

/// The world size an MPI launcher gave this process, read from the
/// environment it sets: `OMPI_COMM_WORLD_SIZE` (Open MPI's `mpirun`),
/// `PMI_SIZE` (MPICH's `mpiexec`, `srun --mpi=pmi2`), or, for `srun
/// --mpi=pmix`, `SLURM_STEP_NUM_TASKS` when `PMIX_RANK` says PMIx started
/// the process (a batch script alone has the former without the latter).
/// `None` when not launched by one.
pub fn launcher_world_size() -> Option<usize> {
    let number = |key: &str| std::env::var(key).ok()?.trim().parse().ok();
    number("OMPI_COMM_WORLD_SIZE")
        .or_else(|| number("PMI_SIZE"))
        .or_else(|| {
            std::env::var_os("PMIX_RANK")?;
            number("SLURM_STEP_NUM_TASKS")
        })
}

/// Elements per all-reduce call: large enough that the per-call latency
/// vanishes (16 MiB of f32), small enough that the engine's internal
/// buffers stay small.
pub const BUCKET: usize = 4 << 20;

/// The gradient exchange of data-parallel training, with its buffers kept
/// from step to step (fresh buffers of a model's size cost more in page
/// faults than the exchange itself on one machine).
#[derive(Default)]
pub struct Exchange {
    f32: Buffers<f32>,
    f64: Buffers<f64>,
}

/// A send and a receive buffer of one dtype.
#[derive(Default)]
struct Buffers<T> {
    send: Vec<T>,
    sum: Vec<T>,
}

impl Exchange {
    /// Averages `grads` over the ranks in place: the flat gradient of every
    /// group is copied into one send buffer per dtype, summed into a
    /// receive buffer with all-reduce calls of at most [`BUCKET`] elements,
    /// and copied back divided by the world size: two passes over memory
    /// besides the exchange. Returns the seconds spent (0 in one process,
    /// where nothing is copied).
    pub fn all_reduce_mean(
        &mut self,
        collective: &dyn Collective,
        grads: &mut [Tensor],
    ) -> Result<f64> {
        let world = collective.world();
        if world == 1 {
            return Ok(0.0);
        }
        if let Some(odd) = grads
            .iter()
            .find(|g| !matches!(g.dtype(), DType::F32 | DType::F64))
        {
            return Err(Error::Tensor(format!(
                "data-parallel training exchanges f32 or f64 gradients, not {:?}",
                odd.dtype()
            )));
        }
        let start = Instant::now();
        let members = |dtype: DType| -> Vec<usize> {
            (0..grads.len())
                .filter(|&i| grads[i].dtype() == dtype)
                .collect()
        };
        let (f32s, f64s) = (members(DType::F32), members(DType::F64));
        if !f32s.is_empty() {
            self.f32.reduce(collective, grads, &f32s, world)?;
        }
        if !f64s.is_empty() {
            self.f64.reduce(collective, grads, &f64s, world)?;
        }
        Ok(start.elapsed().as_secs_f64())
    }
}

/// A float type the collectives can sum.
trait Summable: candle_core::WithDType {
    fn all_reduce(collective: &dyn Collective, send: &[Self], sum: &mut [Self]) -> Result<()>;
}

impl Summable for f32 {
    fn all_reduce(collective: &dyn Collective, send: &[f32], sum: &mut [f32]) -> Result<()> {
        collective.all_reduce_sum_f32(send, sum)
    }
}

impl Summable for f64 {
    fn all_reduce(collective: &dyn Collective, send: &[f64], sum: &mut [f64]) -> Result<()> {
        collective.all_reduce_sum_f64(send, sum)
    }
}

/// Appends the elements of `t` (of type `T`) to `out`, straight from its
/// storage when it is contiguous.
fn append_elements<T: candle_core::WithDType>(t: &Tensor, out: &mut Vec<T>) -> Result<()> {
    let (storage, layout) = t.storage_and_layout();
    if let (candle_core::Storage::Cpu(cpu), Some((start, end))) =
        (&*storage, layout.contiguous_offsets())
    {
        out.extend_from_slice(&T::cpu_storage_as_slice(cpu)?[start..end]);
        return Ok(());
    }
    drop(storage);
    out.extend(t.flatten_all()?.to_vec1::<T>()?);
    Ok(())
}

impl<T: Summable> Buffers<T> {
    /// Packs `grads[members]` (all of type `T`), sums them over the ranks
    /// in buckets, and writes back the means.
    fn reduce(
        &mut self,
        collective: &dyn Collective,
        grads: &mut [Tensor],
        members: &[usize],
        world: usize,
    ) -> Result<()> {
        let total: usize = members.iter().map(|&i| grads[i].elem_count()).sum();
        self.send.clear();
        for &i in members {
            append_elements(&grads[i], &mut self.send)?;
        }
        self.sum.resize(total, T::zero());
        for (s, r) in self.send.chunks(BUCKET).zip(self.sum.chunks_mut(BUCKET)) {
            T::all_reduce(collective, s, r)?;
        }
        let inv = T::from_f64(1.0 / world as f64);
        let mut at = 0;
        for &i in members {
            let (shape, n) = (grads[i].shape().clone(), grads[i].elem_count());
            let mean: Vec<T> = self.sum[at..at + n].iter().map(|&x| x * inv).collect();
            grads[i] = Tensor::from_vec(mean, shape, grads[i].device())?;
            at += n;
        }
        Ok(())
    }
}

/// Sums a few f64 figures over the ranks (losses, counters).
pub fn sum_f64(collective: &dyn Collective, values: &mut [f64]) -> Result<()> {
    if collective.world() == 1 {
        return Ok(());
    }
    let send = values.to_vec();
    collective.all_reduce_sum_f64(&send, values)
}

/// A 64-bit FNV-1a hash of `bytes`: ranks compare their parameters by it.
pub fn fingerprint(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Checks that every rank holds the same bytes `mine` would hash to (the
/// weights after an update: a rank that drifted would silently train a
/// different model). Errors on every rank that differs from rank 0.
pub fn check_in_step(collective: &dyn Collective, mine: u64, what: &str) -> Result<()> {
    if collective.world() == 1 {
        return Ok(());
    }
    let mut root = mine.to_le_bytes().to_vec();
    collective.broadcast_bytes(&mut root)?;
    let theirs = u64::from_le_bytes(root.try_into().map_err(|_| {
        Error::Training("the fingerprint broadcast from rank 0 was not 8 bytes".into())
    })?);
    if theirs != mine {
        return Err(Error::Training(format!(
            "rank {}: its {what} differ from rank 0's (fingerprint {mine:016x}, rank 0 \
             {theirs:016x}); the ranks are no longer training one model",
            collective.rank()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A stand-in for `world` ranks that all hold the same buffers: a sum
    /// over ranks is `world` times the buffer.
    struct Copies(usize);

    impl Collective for Copies {
        fn rank(&self) -> usize {
            0
        }
        fn world(&self) -> usize {
            self.0
        }
        fn all_reduce_sum_f32(&self, send: &[f32], sum: &mut [f32]) -> Result<()> {
            for (s, x) in sum.iter_mut().zip(send) {
                *s = x * self.0 as f32;
            }
            Ok(())
        }
        fn all_reduce_sum_f64(&self, send: &[f64], sum: &mut [f64]) -> Result<()> {
            for (s, x) in sum.iter_mut().zip(send) {
                *s = x * self.0 as f64;
            }
            Ok(())
        }
        fn broadcast_bytes(&self, _: &mut Vec<u8>) -> Result<()> {
            Ok(())
        }
        fn barrier(&self) -> Result<()> {
            Ok(())
        }
        fn engine(&self) -> &'static str {
            "copies"
        }
        fn abort(&self, _: i32) {}
    }

    #[test]
    fn the_mean_of_equal_gradients_is_the_gradient_whatever_the_packing() {
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 10.0, &dev)
            .unwrap()
            .reshape((2, 5))
            .unwrap();
        let b = Tensor::new(&[1.5f64, -2.0], &dev).unwrap();
        let c = Tensor::ones(BUCKET + 3, DType::F32, &dev).unwrap();
        let mut grads = vec![a.clone(), b.clone(), c.clone()];
        let secs = Exchange::default()
            .all_reduce_mean(&Copies(4), &mut grads)
            .unwrap();
        assert!(secs >= 0.0);
        for (got, want) in grads.iter().zip([a, b, c]) {
            assert_eq!(got.shape(), want.shape());
            assert_eq!(got.dtype(), want.dtype());
            let diff = (got.to_dtype(DType::F64).unwrap() - want.to_dtype(DType::F64).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert_eq!(diff, 0.0);
        }
    }

    #[test]
    fn one_process_changes_nothing() {
        let dev = Device::Cpu;
        let g = Tensor::new(&[1f32, 2.0], &dev).unwrap();
        let mut grads = vec![g.clone()];
        let mut exchange = Exchange::default();
        assert_eq!(exchange.all_reduce_mean(&Single, &mut grads).unwrap(), 0.0);
        assert_eq!(grads[0].to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
        let mut v = [3.0];
        sum_f64(&Single, &mut v).unwrap();
        assert_eq!(v, [3.0]);
        check_in_step(&Single, 7, "weights").unwrap();
    }

    #[test]
    fn fingerprints_tell_bytes_apart() {
        assert_ne!(fingerprint([1, 2, 3]), fingerprint([1, 2, 4]));
        assert_eq!(fingerprint([9, 9]), fingerprint(vec![9, 9]));
    }
}
