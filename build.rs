//! Makes the `mezo` binary (and test binaries) find libtorch and the CUDA libraries of the PyPI torch
//! wheel at run time without LD_LIBRARY_PATH: tch's own rpath only applies to tch's targets, so we
//! emit ours here (each line below says what it avoids).
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    let Some(torch_lib) = torch_lib_dir() else {
        println!("cargo:warning=neither LIBTORCH nor LIBTORCH_USE_PYTORCH is set: no rpath to libtorch");
        return;
    };
    // Canonical paths: `.venv` is a symlink into the user's venv, and the rpath should not depend on
    // the repository location.
    let torch_lib = torch_lib.canonicalize().unwrap_or(torch_lib);

    // DT_RPATH rather than DT_RUNPATH: only DT_RPATH is also searched for libraries that other
    // libraries dlopen() (libnvrtc opens libnvrtc-builtins). Consequence: it takes precedence over
    // LD_LIBRARY_PATH, which matters only where the build-time venv also exists.
    println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags");
    rpath(&torch_lib);
    // No symbol of libtorch_cuda is referenced, so --as-needed would drop it and CUDA would look
    // unavailable on GPU nodes.
    if torch_lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    // CUDA libraries of the nvidia-* wheels, which cudarc dlopen()s.
    let Some(site_packages) = torch_lib.parent().and_then(Path::parent) else { return };
    let nvidia = site_packages.join("nvidia");
    for sub in ["cu13/lib", "nccl/lib"] {
        let dir = nvidia.join(sub);
        if dir.is_dir() {
            rpath(&dir);
        }
    }
    // cudarc looks for libnccl.so or libnccl.so.{13,12,...,1}; the wheel ships only libnccl.so.2.
    let nccl = nvidia.join("nccl/lib/libnccl.so.2");
    if nccl.exists() {
        let dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("cudalinks");
        std::fs::create_dir_all(&dir).expect("creating OUT_DIR/cudalinks");
        let link = dir.join("libnccl.so");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&nccl, &link).expect("linking libnccl.so");
        rpath(&dir);
    }
}

fn rpath(dir: &Path) {
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
}

/// Same precedence as torch-sys: LIBTORCH_USE_PYTORCH first, then LIBTORCH.
fn torch_lib_dir() -> Option<PathBuf> {
    if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        let python = if std::env::var_os("VIRTUAL_ENV").is_some() { "python" } else { "python3" };
        let out = std::process::Command::new(python)
            .args(["-c", "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"])
            .output()
            .expect("running python to locate torch");
        let dir = String::from_utf8(out.stdout).expect("python printed a UTF-8 path");
        return Some(PathBuf::from(dir.trim()));
    }
    std::env::var_os("LIBTORCH").map(|root| PathBuf::from(root).join("lib"))
}
