//! Which device and how many CPU threads each rank uses.
//!
//! One rank per GPU: rank `local_rank` of a node takes GPU `local_rank % gpus` (under Slurm with
//! `--gpus-per-task=1` each rank sees one GPU, index 0). Threads are set explicitly because
//! libtorch picks one intra-op thread under `mpirun`.

use anyhow::{bail, Result};
use std::fmt;
use std::str::FromStr;

/// A device as the user asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    /// The rank's GPU when libtorch sees CUDA, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// The rank's GPU; an error without CUDA.
    Cuda,
    /// This GPU on every rank.
    CudaIndex(usize),
}

impl FromStr for DeviceRequest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" => Ok(DeviceRequest::Cuda),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceRequest::CudaIndex)
                .ok_or_else(|| format!("unknown device '{s}': expected auto, cpu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceRequest::Auto => write!(f, "auto"),
            DeviceRequest::Cpu => write!(f, "cpu"),
            DeviceRequest::Cuda => write!(f, "cuda"),
            DeviceRequest::CudaIndex(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceRequest {
    /// The libtorch device of the rank with node-local rank `local_rank`.
    pub fn resolve(self, local_rank: usize) -> Result<tch::Device> {
        let gpus = if tch::Cuda::is_available() { tch::Cuda::device_count() as usize } else { 0 };
        choose(self, local_rank, gpus)
    }
}

fn choose(request: DeviceRequest, local_rank: usize, gpus: usize) -> Result<tch::Device> {
    match request {
        DeviceRequest::Cpu => Ok(tch::Device::Cpu),
        DeviceRequest::Auto if gpus == 0 => Ok(tch::Device::Cpu),
        DeviceRequest::Cuda if gpus == 0 => {
            bail!("CUDA was requested but libtorch sees no CUDA device (`mezo info` shows why)")
        }
        DeviceRequest::Auto | DeviceRequest::Cuda => {
            // Said once a node, by its first rank that shares.
            if local_rank == gpus {
                log::warn!(
                    "more ranks on this node than its {gpus} visible GPU(s): ranks share them round-robin \
                     (node-local rank r on GPU r mod {gpus})"
                );
            }
            Ok(tch::Device::Cuda(local_rank % gpus))
        }
        DeviceRequest::CudaIndex(i) if i < gpus => Ok(tch::Device::Cuda(i)),
        DeviceRequest::CudaIndex(i) => bail!("CUDA device {i} was requested but {gpus} are visible"),
    }
}

/// Intra-op threads for one rank: the cores this process may run on, divided among the ranks of
/// the node when they all share the same cores (no binding), or all of them when the launcher
/// already gave each rank its own cores (`--bind-to core`, `srun --cpu-bind`).
pub fn default_threads(local_size: usize) -> usize {
    let usable = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    split_threads(usable, online, local_size)
}

fn split_threads(usable: usize, online: usize, local_size: usize) -> usize {
    let bound = usable < online;
    if bound {
        usable.max(1)
    } else {
        (usable / local_size.max(1)).max(1)
    }
}

/// Applies the intra-op thread count to libtorch and our own parallel loops, and tunes the
/// allocator for them ([`tune_allocator`]).
pub fn set_threads(threads: usize) {
    tune_allocator();
    tch::set_num_threads(threads as i32);
    // Our own parallel loops (the fast perturbation stream) use the same number of threads.
    if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global() {
        log::debug!("rayon's pool was already set up: {e}");
    }
}

/// Keeps freed blocks of up to 32 MiB in glibc's heap instead of handing them back to the
/// kernel.
///
/// A forward pass allocates and frees the same few-megabyte temporaries over and over: the fast
/// stream's perturbed weights, activations, logits. glibc serves blocks above its (adaptive)
/// mmap threshold with fresh mappings and trims the heap top once 128 KiB are free, so every pass
/// paid page faults and page clearing again: about 500,000 faults in a five-step roberta-base
/// benchmark, 230,000 with these settings, for the same peak RSS (`benches/mezo_step.rs`).
/// Setting the trim threshold alone would switch the adaptive mmap threshold off and make things
/// worse, so both are set. Called once per process; elsewhere than glibc it does nothing.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // glibc's largest mmap threshold on 64-bit (HEAP_MAX_SIZE / 2).
            const MMAP_THRESHOLD: i32 = 32 << 20;
            const TRIM_THRESHOLD: i32 = 1 << 30;
            // SAFETY: mallopt only changes allocator parameters; it is safe to call at any time.
            let ok = unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                    && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            };
            if !ok {
                log::debug!("glibc refused the allocator thresholds; keeping its defaults");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        for s in ["auto", "cpu", "cuda", "cuda:3"] {
            assert_eq!(s.parse::<DeviceRequest>().unwrap().to_string(), s);
        }
        for bad in ["gpu", "cuda:", "cuda:x", "CPU", "cuda:-1"] {
            let err = bad.parse::<DeviceRequest>().unwrap_err();
            assert!(err.contains(bad) && err.contains("cuda:N"), "{err}");
        }
    }

    #[test]
    fn device_choice() {
        use tch::Device::{Cpu, Cuda};
        assert_eq!(choose(DeviceRequest::Auto, 3, 0).unwrap(), Cpu);
        assert_eq!(choose(DeviceRequest::Auto, 3, 4).unwrap(), Cuda(3));
        assert_eq!(choose(DeviceRequest::Auto, 5, 4).unwrap(), Cuda(1));
        assert_eq!(choose(DeviceRequest::Cuda, 0, 1).unwrap(), Cuda(0));
        assert_eq!(choose(DeviceRequest::Cpu, 2, 8).unwrap(), Cpu);
        assert_eq!(choose(DeviceRequest::CudaIndex(2), 0, 4).unwrap(), Cuda(2));
        assert!(choose(DeviceRequest::Cuda, 0, 0).unwrap_err().to_string().contains("no CUDA"));
        assert!(choose(DeviceRequest::CudaIndex(4), 0, 4).is_err());
    }

    #[test]
    fn thread_split() {
        // Unbound: 16 cores shared by 4 ranks.
        assert_eq!(split_threads(16, 16, 4), 4);
        // More ranks than cores.
        assert_eq!(split_threads(2, 2, 3), 1);
        // Bound by the launcher to 2 of 16 cores: use both.
        assert_eq!(split_threads(2, 16, 8), 2);
        assert_eq!(split_threads(8, 8, 1), 8);
    }

    #[test]
    fn this_machine_this_process() {
        let t = default_threads(1);
        assert!(t >= 1 && t <= std::thread::available_parallelism().unwrap().get());
    }
}
