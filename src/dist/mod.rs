//! The communicator: one process, or N ranks under `mpirun`/`srun`.
//!
//! MeZO ranks exchange scalars (projected gradients, loss sums) and small vectors (seeds, metrics,
//! checksums); the only large collective data are kernel row blocks, which go through collective
//! HDF5 ([`crate::h5`]) and, on GPUs, NCCL ([`nccl`]). So this type offers exactly that: typed
//! all-reduce, broadcast, all-gather and a barrier, each of which is the identity on one process.
//!
//! MPI is started only when a launcher is detected ([`Launch`]); a plain `mezo` invocation needs no
//! MPI at all. A [`Dist`] is created once in `main` and passed down: no code reaches for a global.

pub mod device;
mod launcher;
pub mod nccl;

use anyhow::{bail, Context, Result};
use mpi::collective::SystemOperation;
use mpi::datatype::{Equivalence, PartitionMut};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

pub use launcher::{Launch, LauncherKind};

/// Reduction applied by [`Dist::all_reduce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    Sum,
    Max,
    Min,
}

/// This process's place in the job and the means to talk to the other ranks.
pub struct Dist {
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
    launcher: LauncherKind,
    host: String,
    mpi: Option<MpiWorld>,
}

struct MpiWorld {
    // Dropped before the universe, whose drop calls MPI_Finalize.
    world: SimpleCommunicator,
    _universe: mpi::environment::Universe,
}

impl Dist {
    /// Runs `work` on rank 0 only (files, reports, locks) while the other ranks wait; every rank
    /// returns the same outcome, `work`'s value on rank 0 and `None` elsewhere, or its error as
    /// an [`crate::error::AllRanksError`] with its exit code, so that a failure ends the job
    /// normally instead of leaving ranks in a collective.
    pub fn on_root<T>(&self, work: impl FnOnce() -> Result<T>) -> Result<Option<T>> {
        let outcome = if self.is_root() { Some(work()) } else { None };
        let mut code = [match &outcome {
            Some(Err(e)) => crate::error::exit_code(e) as u8,
            _ => 0,
        }];
        self.broadcast(&mut code, 0);
        let mut message = match &outcome {
            Some(Err(e)) => format!("{e:#}").into_bytes(),
            _ => Vec::new(),
        };
        self.broadcast_bytes(&mut message, 0);
        match outcome {
            Some(Ok(value)) => Ok(Some(value)),
            _ if code[0] == 0 => Ok(None),
            _ => Err(crate::error::AllRanksError {
                message: String::from_utf8_lossy(&message).into_owned(),
                code: code[0].into(),
            }
            .into()),
        }
    }

    /// One process, no MPI.
    pub fn single() -> Dist {
        Dist {
            rank: 0,
            size: 1,
            local_rank: 0,
            local_size: 1,
            launcher: LauncherKind::None,
            host: hostname(),
            mpi: None,
        }
    }

    /// Starts MPI when a launcher started us, else returns [`Dist::single`]. Fails when the
    /// launcher intends more ranks than MPI reports (e.g. `srun` without a PMI plug-in that
    /// matches the MPI library), instead of letting every process redo the whole job alone.
    pub fn init() -> Result<Dist> {
        let launch = Launch::from_env();
        if !launch.wants_mpi() {
            return Ok(Dist::single());
        }
        let universe = mpi::initialize()
            .context("MPI was already initialised in this process; create one Dist per process")?;
        let world = universe.world();
        let rank = world.rank() as usize;
        let size = world.size() as usize;
        if let Some(expected) = launch.expected_size {
            if expected != size {
                bail!(
                    "started by {} as one of {expected} ranks, but MPI reports a world of {size}: \
                     the launcher and the MPI library do not talk to each other (under Slurm try \
                     `srun --mpi=pmix`, or run `mpirun` inside the allocation)",
                    launch.kind.name()
                );
            }
        }
        // Ranks sharing a node, whatever the launcher: needed for the thread and device split.
        let node = world.split_shared(rank as i32);
        let local_size = node.size() as usize;
        let local_rank = launch.local_rank.unwrap_or(node.rank() as usize);
        let host = mpi::environment::processor_name().unwrap_or_else(|_| hostname());
        Ok(Dist {
            rank,
            size,
            local_rank,
            local_size,
            launcher: launch.kind,
            host,
            mpi: Some(MpiWorld { world, _universe: universe }),
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Rank among the processes on this node; selects the GPU.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Number of ranks on this node; divides the node's cores.
    pub fn local_size(&self) -> usize {
        self.local_size
    }

    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    pub fn launcher(&self) -> LauncherKind {
        self.launcher
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether MPI is running (false for a single process started without a launcher).
    pub fn uses_mpi(&self) -> bool {
        self.mpi.is_some()
    }

    /// The raw MPI communicator, for libraries that take one (parallel HDF5).
    pub fn raw_comm(&self) -> Option<mpi::ffi::MPI_Comm> {
        self.mpi.as_ref().map(|m| m.world.as_raw())
    }

    /// Element-wise reduction of `values` over all ranks; every rank gets the result.
    pub fn all_reduce<T: Equivalence + Copy>(&self, values: &mut [T], op: Reduce) {
        let Some(m) = &self.mpi else { return };
        let send = values.to_vec();
        let op = match op {
            Reduce::Sum => SystemOperation::sum(),
            Reduce::Max => SystemOperation::max(),
            Reduce::Min => SystemOperation::min(),
        };
        m.world.all_reduce_into(&send[..], values, op);
    }

    /// Sum of one scalar over all ranks.
    pub fn all_reduce_sum(&self, value: f64) -> f64 {
        let mut v = [value];
        self.all_reduce(&mut v, Reduce::Sum);
        v[0]
    }

    /// Copies `values` of rank `root` into `values` of every rank; all ranks pass the same length.
    pub fn broadcast<T: Equivalence>(&self, values: &mut [T], root: usize) {
        let Some(m) = &self.mpi else { return };
        m.world.process_at_rank(root as i32).broadcast_into(values);
    }

    /// Broadcasts a byte string of any length (configs, JSON) from `root`.
    pub fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) {
        if self.mpi.is_none() {
            return;
        }
        let mut len = [bytes.len() as u64];
        self.broadcast(&mut len, root);
        bytes.resize(len[0] as usize, 0);
        // An empty buffer is a dangling pointer that MPI rejects (MPI_ERR_ARG).
        if !bytes.is_empty() {
            self.broadcast(&mut bytes[..], root);
        }
    }

    /// Every rank's `values` (lengths may differ), in rank order, on every rank.
    pub fn all_gather<T: Equivalence + Copy + Default>(&self, values: &[T]) -> Vec<Vec<T>> {
        let Some(m) = &self.mpi else { return vec![values.to_vec()] };
        let mut counts = vec![0i32; self.size];
        m.world.all_gather_into(&(values.len() as i32), &mut counts[..]);
        let displs: Vec<i32> = counts
            .iter()
            .scan(0i32, |offset, &c| {
                let d = *offset;
                *offset += c;
                Some(d)
            })
            .collect();
        let total = counts.iter().map(|&c| c as usize).sum();
        let mut flat = vec![T::default(); total];
        {
            let mut partition = PartitionMut::new(&mut flat[..], &counts[..], &displs[..]);
            m.world.all_gather_varcount_into(values, &mut partition);
        }
        counts.iter().zip(&displs).map(|(&c, &d)| flat[d as usize..(d + c) as usize].to_vec()).collect()
    }

    /// Every rank's string, in rank order, on every rank.
    pub fn all_gather_strings(&self, s: &str) -> Vec<String> {
        self.all_gather(s.as_bytes())
            .into_iter()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .collect()
    }

    pub fn barrier(&self) {
        if let Some(m) = &self.mpi {
            m.world.barrier();
        }
    }

    /// Ends every rank of the job with `code` (MPI_Abort), or this process without MPI.
    pub fn abort(&self, code: i32) -> ! {
        match &self.mpi {
            Some(m) => m.world.abort(code),
            None => std::process::exit(code),
        }
    }
}

/// MPI_Abort on the world communicator, for places that have no [`Dist`] (a panic hook). Only
/// call it once MPI runs.
pub fn abort_world(code: i32) -> ! {
    // SAFETY: MPI is initialised (the caller's contract); MPI_Abort does not return.
    unsafe { mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, code) };
    std::process::abort()
}

impl std::fmt::Debug for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dist")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("local_rank", &self.local_rank)
            .field("local_size", &self.local_size)
            .field("launcher", &self.launcher)
            .field("host", &self.host)
            .finish()
    }
}

/// Version string of the MPI library we are linked against (callable before MPI_Init).
pub fn mpi_library_version() -> String {
    let (major, minor) = mpi::environment::version();
    let library = mpi::environment::library_version().unwrap_or_default();
    // OpenMPI's string is "Open MPI v4.1.4, package: ..., ident: ..., repo rev: ..., date"
    let short = library.split(',').next().unwrap_or("").trim();
    format!("{short} (MPI {major}.{minor})")
}

pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown-host".to_string();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_process_collectives_are_identities() {
        let d = Dist::single();
        assert_eq!((d.rank(), d.size(), d.local_rank(), d.local_size()), (0, 1, 0, 1));
        assert!(d.is_root() && !d.uses_mpi() && d.raw_comm().is_none());
        let mut v = [1.5f64, -2.0];
        d.all_reduce(&mut v, Reduce::Max);
        assert_eq!(v, [1.5, -2.0]);
        assert_eq!(d.all_reduce_sum(3.25), 3.25);
        let mut b = vec![1u8, 2, 3];
        d.broadcast_bytes(&mut b, 0);
        assert_eq!(b, [1, 2, 3]);
        assert_eq!(d.all_gather(&[7u64, 8]), vec![vec![7u64, 8]]);
        assert_eq!(d.all_gather_strings("héllo"), vec!["héllo".to_string()]);
        d.barrier();
    }

    #[test]
    fn mpi_version_names_the_library() {
        assert!(mpi_library_version().contains("MPI"), "{}", mpi_library_version());
    }
}
