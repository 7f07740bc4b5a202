//! Helpers the integration tests share: the built binary, repository paths, the demo task's
//! k-shot split, `mpirun` as root, and a run's stdout once it succeeded.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const MEZO: &str = env!("CARGO_BIN_EXE_mezo");

/// A path inside the repository.
pub fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// `mezo kshot` of the built-in demo task (SST-2 format) into `out`; returns the split directory.
pub fn demo_split(out: &Path, k: u32, seed: u32) -> PathBuf {
    let status = Command::new(MEZO)
        .args(["-q", "kshot", "--task", "SST-2", "--mode", "k-shot-1k-test"])
        .args(["--k", &k.to_string(), "--seed", &seed.to_string()])
        .arg("--data-dir")
        .arg(repo("data/demo/original"))
        .arg("--out")
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success());
    out.join(format!("k-shot-1k-test/SST-2/{k}-{seed}"))
}

/// `mpirun --oversubscribe -np N mezo`, allowed to run as root.
pub fn mpirun(ranks: usize) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "-np", &ranks.to_string(), MEZO])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env_remove("RUST_LOG");
    cmd
}

/// The stdout of a run that must have succeeded; its stderr in the failure message otherwise.
pub fn ok(output: Output) -> String {
    assert!(output.status.success(), "mezo failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// `mezo kernel` of the sst-2 split `split` with the test RoBERTa into `out`, as `ranks` ranks.
pub fn kernel(ranks: usize, split: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut cmd = if ranks == 1 { Command::new(MEZO) } else { mpirun(ranks) };
    cmd.env_remove("RUST_LOG")
        .args(["-q", "kernel", "--task", "sst-2"])
        .arg("--model")
        .arg(repo("tests/fixtures/models/roberta"))
        .arg("--data-dir")
        .arg(split)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}
