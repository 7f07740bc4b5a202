//! NCCL for large GPU buffers (first-order gradients, kernel blocks), bootstrapped over MPI.
//!
//! Rank 0 creates the NCCL unique id and the MPI communicator broadcasts its 128 bytes; every rank
//! then joins with its own GPU. On one process this is a one-rank communicator, so the same code
//! path runs everywhere. NCCL refuses a communicator in which two ranks share a GPU ("duplicate
//! GPU"), which nodes with fewer GPUs than ranks need: [`for_gpus`] sees that first (from the
//! devices' UUIDs) and the callers all-reduce through MPI from host copies instead.

use super::Dist;
use crate::cuda;
use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{CudaContext, CudaSlice};
use cudarc::nccl::{Comm, Id, ReduceOp};
use std::sync::Arc;

pub struct NcclComm {
    comm: Comm,
    stream: Arc<cudarc::driver::CudaStream>,
}

impl NcclComm {
    /// Collective over all ranks of `dist`: each rank passes the context of its own GPU.
    pub fn new(dist: &Dist, ctx: &Arc<CudaContext>) -> Result<NcclComm> {
        if !cuda::nccl_present() {
            bail!("libnccl is not loadable (it comes with the torch wheel's nvidia-nccl package)");
        }
        let mut id_bytes = [0u8; 128];
        if dist.is_root() {
            let id = Id::new().map_err(|e| anyhow!("ncclGetUniqueId: {e:?}"))?;
            for (b, c) in id_bytes.iter_mut().zip(id.internal()) {
                *b = *c as u8;
            }
        }
        dist.broadcast(&mut id_bytes, 0);
        let id = Id::uninit(id_bytes.map(|b| b as std::ffi::c_char));
        // The legacy default stream, libtorch's too: NCCL's work orders with libtorch's kernels.
        let stream = ctx.default_stream();
        let comm = Comm::from_rank(Arc::clone(&stream), dist.rank(), dist.size(), id)
            .map_err(|e| anyhow!("ncclCommInitRank (rank {} of {}): {e:?}", dist.rank(), dist.size()))?;
        Ok(NcclComm { comm, stream })
    }

    /// In-place sum over all ranks, on the communicator's stream.
    pub fn all_reduce_sum(&self, buffer: &mut CudaSlice<f32>) -> Result<()> {
        self.comm.all_reduce_in_place(buffer, &ReduceOp::Sum).map_err(|e| anyhow!("ncclAllReduce: {e:?}"))?;
        Ok(())
    }
}

impl NcclComm {
    /// In-place sum over all ranks of a contiguous f32 tensor of libtorch's on this rank's GPU.
    pub fn all_reduce_tensor_sum(&self, t: &tch::Tensor) -> Result<()> {
        if !t.is_contiguous() || t.kind() != tch::Kind::Float || !t.device().is_cuda() {
            bail!(
                "NCCL all-reduce of a {:?} tensor on {:?}: needs contiguous f32 on a GPU",
                t.kind(),
                t.device()
            );
        }
        // SAFETY: the pointer is a live allocation of t.numel() f32s on this context's device;
        // the slice is leaked below, so cudarc never frees libtorch's memory.
        let mut slice = unsafe { self.stream.upgrade_device_ptr::<f32>(t.data_ptr() as u64, t.numel()) };
        let result = self.all_reduce_sum(&mut slice);
        slice.leak();
        result
    }
}

/// Whether two ranks use the same GPU (the same device UUID on the same host); collective.
pub fn gpus_shared(dist: &Dist, ordinal: usize) -> Result<bool> {
    let uuid = cuda::context(ordinal)?.uuid().map_err(|e| anyhow!("reading GPU {ordinal}'s UUID: {e:?}"))?;
    let hex: String = uuid.bytes.iter().map(|b| format!("{:02x}", *b as u8)).collect();
    let mut devices = dist.all_gather_strings(&format!("{}/{hex}", super::hostname()));
    let ranks = devices.len();
    devices.sort();
    devices.dedup();
    Ok(devices.len() < ranks)
}

/// NCCL over the ranks' GPUs, or `None` (said once, by rank 0) when ranks share a GPU, which
/// NCCL refuses: device buffers then go through MPI. Collective.
pub fn for_gpus(dist: &Dist, ordinal: usize) -> Result<Option<NcclComm>> {
    if gpus_shared(dist, ordinal)? {
        if dist.is_root() {
            log::info!(
                "{} ranks share GPUs and NCCL refuses a GPU twice in one communicator: collectives of GPU \
                 buffers go through MPI, from host copies",
                dist.size()
            );
        }
        return Ok(None);
    }
    NcclComm::new(dist, &cuda::context(ordinal)?).map(Some)
}

/// All-reduces a known vector over the ranks' GPUs and checks the sum; returns its length and
/// whether NCCL did it (else MPI from host copies: ranks share a GPU).
pub fn smoke_test(dist: &Dist, ordinal: usize) -> Result<(usize, bool)> {
    let ctx = cuda::context(ordinal)?;
    let nccl = for_gpus(dist, ordinal)?;
    let stream = ctx.default_stream();
    let n = 1 << 16;
    let mine: Vec<f32> = (0..n).map(|i| (i % 100) as f32 + dist.rank() as f32).collect();
    let mut buffer = stream.clone_htod(&mine).context("copying to the GPU")?;
    let sum = match &nccl {
        Some(nccl) => {
            nccl.all_reduce_sum(&mut buffer)?;
            stream.clone_dtoh(&buffer).context("copying from the GPU")?
        }
        None => {
            let mut host = stream.clone_dtoh(&buffer).context("copying from the GPU")?;
            dist.all_reduce(&mut host, super::Reduce::Sum);
            host
        }
    };
    let ranks = dist.size() as f32;
    let rank_sum = (0..dist.size()).sum::<usize>() as f32;
    for (i, &got) in sum.iter().enumerate() {
        let want = ranks * (i % 100) as f32 + rank_sum;
        if got != want {
            bail!("all-reduce of GPU buffers gave {got} at element {i}, expected {want}");
        }
    }
    Ok((n, nccl.is_some()))
}
