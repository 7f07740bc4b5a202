//! What this installation is made of, as the running process sees it (`mezo info`).
//!
//! Versions are read from the libraries actually loaded, not from build-time constants, because
//! on a GPU node the binary may run against that node's own PyTorch libraries.

use crate::cuda::{self, CudaProbe};
use crate::dist::Dist;
use serde::{Deserialize, Serialize};
use std::ffi::CStr;
use std::path::{Path, PathBuf};

/// The process-wide facts, the same on every rank of a homogeneous job.
#[derive(Debug, Clone, Serialize)]
pub struct Installation {
    pub mezo: String,
    pub libtorch: String,
    pub libtorch_dir: Option<PathBuf>,
    /// CUDA as libtorch sees it.
    pub torch_cuda_devices: usize,
    pub cudnn: Option<i64>,
    /// CUDA as cudarc sees it (driver, devices, NVRTC, NCCL).
    pub cuda: CudaProbe,
    pub mpi_library: String,
    pub world_size: usize,
    pub launcher: String,
    pub hdf5: String,
    pub hdf5_parallel: bool,
}

/// One rank's placement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RankPlacement {
    pub rank: usize,
    pub size: usize,
    pub local_rank: usize,
    pub local_size: usize,
    pub host: String,
    pub device: String,
    pub threads: usize,
}

impl Installation {
    pub fn probe(dist: &Dist) -> Installation {
        let (libtorch, libtorch_dir) = libtorch_version();
        let torch_cuda_devices =
            if tch::Cuda::is_available() { tch::Cuda::device_count() as usize } else { 0 };
        let cudnn =
            (torch_cuda_devices > 0 && tch::Cuda::cudnn_is_available()).then(tch::utils::version_cudnn);
        let (hdf5, hdf5_parallel) = crate::h5::library_info();
        Installation {
            mezo: env!("CARGO_PKG_VERSION").to_string(),
            libtorch,
            libtorch_dir,
            torch_cuda_devices,
            cudnn,
            cuda: cuda::probe(),
            mpi_library: crate::dist::mpi_library_version(),
            world_size: dist.size(),
            launcher: dist.launcher().name().to_string(),
            hdf5,
            hdf5_parallel,
        }
    }

    /// The human-readable report, one fact per line.
    pub fn render(&self) -> String {
        let mut lines = vec![
            format!("mezo        {}", self.mezo),
            format!(
                "libtorch    {}{}",
                self.libtorch,
                self.libtorch_dir.as_ref().map(|d| format!(" ({})", d.display())).unwrap_or_default()
            ),
        ];
        let torch_cuda = match self.torch_cuda_devices {
            0 => "not available".to_string(),
            n => format!(
                "available, {n} device(s){}",
                self.cudnn.map(|v| format!(", cuDNN {v}")).unwrap_or_default()
            ),
        };
        lines.push(format!("torch CUDA  {torch_cuda}"));
        let c = &self.cuda;
        lines.push(match (&c.driver, &c.device_error) {
            (None, _) => "CUDA driver not found (no libcuda.so): CPU only".to_string(),
            (Some(v), Some(e)) => format!("CUDA driver {v}, no usable device: {e}"),
            (Some(v), None) => format!("CUDA driver {v}, {} device(s)", c.devices.len()),
        });
        for g in &c.devices {
            lines.push(format!(
                "  cuda:{}    {} (compute {}.{}, {:.1} GiB)",
                g.ordinal,
                g.name,
                g.compute_capability.0,
                g.compute_capability.1,
                g.memory_bytes as f64 / (1u64 << 30) as f64
            ));
        }
        lines.push(format!("NVRTC       {}", c.nvrtc.as_deref().unwrap_or("not loadable")));
        lines.push(format!("NCCL        {}", c.nccl.as_deref().unwrap_or("not loadable")));
        lines.push(format!("MPI         {}", self.mpi_library));
        lines.push(format!("world       {} rank(s), launcher: {}", self.world_size, self.launcher));
        lines.push(format!(
            "HDF5        {} ({})",
            self.hdf5,
            if self.hdf5_parallel { "parallel HDF5" } else { "serial HDF5: no collective I/O" }
        ));
        lines.join("\n")
    }
}

impl RankPlacement {
    pub fn render(&self) -> String {
        format!(
            "rank {}/{} host {} local {}/{} device {} threads {}",
            self.rank, self.size, self.host, self.local_rank, self.local_size, self.device, self.threads
        )
    }
}

/// The libtorch version and directory, from the `version.py` of the torch package (PyPI wheel) or
/// the `build-version` file (libtorch zip) next to the loaded `libtorch_cpu.so`.
fn libtorch_version() -> (String, Option<PathBuf>) {
    let Some(lib_dir) = loaded_library_dir("libtorch_cpu.so") else {
        return ("unknown (libtorch_cpu.so not found among loaded libraries)".into(), None);
    };
    let root = lib_dir.parent().unwrap_or(&lib_dir);
    let from_wheel = std::fs::read_to_string(root.join("version.py")).ok().and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("__version__ = "))
            .map(|v| v.trim().trim_matches(['\'', '"']).to_string())
    });
    let from_zip = || std::fs::read_to_string(root.join("build-version")).ok().map(|v| v.trim().to_string());
    let version = from_wheel.or_else(from_zip).unwrap_or_else(|| "unknown version".into());
    (version, Some(lib_dir))
}

/// Directory of a shared library loaded into this process, found by walking the link map.
fn loaded_library_dir(file_name: &str) -> Option<PathBuf> {
    struct Search<'a> {
        file_name: &'a str,
        found: Option<PathBuf>,
    }
    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> i32 {
        // SAFETY: the loader passes a valid info pointer; `data` is the `Search` below.
        let search = unsafe { &mut *(data as *mut Search) };
        let name = unsafe { (*info).dlpi_name };
        if name.is_null() {
            return 0;
        }
        let path = Path::new(unsafe { CStr::from_ptr(name) }.to_str().unwrap_or(""));
        if path.file_name().and_then(|n| n.to_str()) == Some(search.file_name) {
            let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
            search.found = path.parent().map(Path::to_owned);
            return 1;
        }
        0
    }
    let mut search = Search { file_name, found: None };
    // SAFETY: the callback only reads loader data and writes to `search`, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&mut search as *mut Search).cast()) };
    search.found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtorch_is_found_and_is_2_11() {
        let (version, dir) = libtorch_version();
        assert!(version.starts_with("2.11.0"), "{version}");
        assert!(dir.unwrap().join("libtorch_cpu.so").exists());
    }

    #[test]
    fn report_names_every_part() {
        let report = Installation::probe(&Dist::single()).render();
        for part in [
            "mezo",
            "libtorch    2.11.0",
            "torch CUDA",
            "NVRTC",
            "NCCL",
            "MPI",
            "world       1 rank",
            "parallel HDF5",
        ] {
            assert!(report.contains(part), "missing {part} in\n{report}");
        }
    }
}
