//! CUDA outside libtorch, through cudarc with dynamic loading: the same binary runs on a machine
//! without any NVIDIA driver (everything here reports "absent") and on a GPU node.
//!
//! cudarc panics when it dlopen()s a library that is not there, so every entry point first asks
//! the matching `is_culib_present()`; nothing in this module panics on a GPU-less machine.

use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{CudaContext, LaunchConfig, PushKernelArg};
use serde::Serialize;
use std::sync::Arc;

/// One visible CUDA device, as the driver describes it.
#[derive(Debug, Clone, Serialize)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub memory_bytes: usize,
}

/// The CUDA libraries the binary can reach, and the devices they see.
#[derive(Debug, Clone, Serialize, Default)]
pub struct CudaProbe {
    /// Driver API version, e.g. "13.0", when libcuda loads.
    pub driver: Option<String>,
    pub devices: Vec<GpuInfo>,
    /// Why `devices` is empty although the driver loaded (cuInit error and the like).
    pub device_error: Option<String>,
    pub nvrtc: Option<String>,
    pub nccl: Option<String>,
}

pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen libcuda; no CUDA call is made.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

pub fn nvrtc_present() -> bool {
    // SAFETY: as above, for libnvrtc.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

pub fn nccl_present() -> bool {
    // SAFETY: as above, for libnccl.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

/// Looks at every CUDA library without failing: absent pieces are `None`.
pub fn probe() -> CudaProbe {
    let mut probe = CudaProbe::default();
    if driver_present() {
        let mut version = 0;
        // SAFETY: libcuda is loadable (checked above); the out-pointer is valid.
        let rc = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
        if rc == cudarc::driver::sys::CUresult::CUDA_SUCCESS {
            probe.driver = Some(format!("{}.{}", version / 1000, (version % 1000) / 10));
        }
        match devices() {
            Ok(devices) => probe.devices = devices,
            Err(e) => probe.device_error = Some(format!("{e:#}")),
        }
    }
    if nvrtc_present() {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: libnvrtc is loadable; out-pointers are valid.
        unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
        probe.nvrtc = Some(format!("{major}.{minor}"));
    }
    if nccl_present() {
        if let Ok(v) = cudarc::nccl::result::get_nccl_version() {
            // NCCL encodes 2.28.9 as 22809.
            probe.nccl = Some(format!("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100));
        }
    }
    probe
}

fn devices() -> Result<Vec<GpuInfo>> {
    let count = CudaContext::device_count().map_err(|e| anyhow!("cuInit/cuDeviceGetCount: {e}"))?;
    (0..count as usize)
        .map(|ordinal| {
            let ctx = context(ordinal)?;
            Ok(GpuInfo {
                ordinal,
                name: ctx.name()?,
                compute_capability: ctx.compute_capability()?,
                memory_bytes: ctx.total_mem()?,
            })
        })
        .collect()
}

/// The primary context of device `ordinal`, or an error (never a panic) without a driver.
pub fn context(ordinal: usize) -> Result<Arc<CudaContext>> {
    if !driver_present() {
        bail!("no NVIDIA driver library (libcuda.so) on this machine");
    }
    CudaContext::new(ordinal).with_context(|| format!("creating a CUDA context on device {ordinal}"))
}

const SAXPY: &str = r#"
extern "C" __global__ void saxpy(float *y, const float *x, float a, unsigned int n) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}
"#;

/// Compiles a small kernel with NVRTC. Needs libnvrtc only, no GPU.
pub fn compile_smoke_kernel() -> Result<cudarc::nvrtc::Ptx> {
    if !nvrtc_present() {
        bail!("libnvrtc is not loadable (it comes with the torch wheel's nvidia-cuda-nvrtc package)");
    }
    cudarc::nvrtc::compile_ptx(SAXPY).context("compiling a kernel with NVRTC")
}

/// Compiles, launches and checks `y = a x + y` on device `ordinal`; returns the element count.
pub fn run_smoke_kernel(ordinal: usize) -> Result<usize> {
    let ptx = compile_smoke_kernel()?;
    let ctx = context(ordinal)?;
    let module = ctx.load_module(ptx).context("loading the NVRTC module")?;
    let saxpy = module.load_function("saxpy")?;
    let stream = ctx.default_stream();
    let n = 1 << 20;
    let x: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 0.5).collect();
    let y: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let x_dev = stream.clone_htod(&x)?;
    let mut y_dev = stream.clone_htod(&y)?;
    let (a, n32) = (2.0f32, n as u32);
    let mut launch = stream.launch_builder(&saxpy);
    launch.arg(&mut y_dev).arg(&x_dev).arg(&a).arg(&n32);
    // SAFETY: the argument list matches the kernel's signature and the buffers hold n floats.
    unsafe { launch.launch(LaunchConfig::for_num_elems(n32)) }?;
    let out = stream.clone_dtoh(&y_dev)?;
    // a*x + y is exact in f32 for these small integers and halves.
    if let Some(i) = (0..n).find(|&i| out[i] != a * x[i] + y[i]) {
        bail!("NVRTC kernel gave {} at element {i}, expected {}", out[i], a * x[i] + y[i]);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_never_panics_and_is_consistent() {
        let p = probe();
        if p.driver.is_none() {
            assert!(p.devices.is_empty());
        }
        if !driver_present() {
            assert!(context(0).is_err());
            assert!(run_smoke_kernel(0).is_err());
        }
    }

    #[test]
    fn nvrtc_compiles_without_a_gpu() {
        // The torch wheel ships libnvrtc, and build.rs puts it on the rpath.
        assert!(nvrtc_present(), "libnvrtc not found through the binary's rpath");
        let ptx = compile_smoke_kernel().unwrap();
        assert!(ptx.to_src().contains(".entry saxpy"));
    }
}
