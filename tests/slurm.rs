//! The sbatch templates on a real Slurm: `make test` starts a single-node one
//! (`scripts/slurm-local.sh start`), runs these tests with `--ignored`, and stops it. Plain
//! `cargo test` lists them as ignored: they need the daemons and root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;
use common::{demo_split, repo, MEZO};

fn template(name: &str) -> PathBuf {
    repo(&format!("slurm/{name}"))
}

/// `sbatch` with the test binary, in `dir` (where the job's output file goes).
fn sbatch(dir: &Path, launcher: &str) -> Command {
    let mut cmd = Command::new("sbatch");
    cmd.current_dir(dir).env("MEZO_BIN", MEZO).env("MEZO_LAUNCHER", launcher).env_remove("RUST_LOG");
    cmd
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn job_output(dir: &Path, job: &str) -> String {
    std::fs::read_to_string(dir.join(format!("mezo-{job}.out"))).unwrap_or_default()
}

#[test]
#[ignore = "needs a running Slurm: make test starts one"]
fn check_runs_as_two_ranks_through_both_templates_and_launchers() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("single-node.sbatch", "srun", &[][..]),
        ("single-node.sbatch", "mpirun", &[]),
        ("multi-node.sbatch", "srun", &["--nodes=1"][..]),
    ];
    for (name, launcher, extra) in cases {
        let output = sbatch(dir.path(), launcher)
            .args(["--wait", "--parsable", "--ntasks=2"])
            .args(extra)
            .arg(template(name))
            .args(["check", "--scratch"])
            .arg(dir.path())
            .output()
            .unwrap();
        let job = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let log = job_output(dir.path(), &job);
        assert!(output.status.success(), "{name} with {launcher}: {}{log}", text(&output));
        assert!(
            log.contains("all-reduce       pass") && log.contains("over 2 rank(s)"),
            "{name} {launcher}: {log}"
        );
        assert!(log.contains("hdf5 row blocks  pass"), "{name} {launcher}: {log}");
    }
}

#[test]
#[ignore = "needs a running Slurm: make test starts one"]
fn an_impossible_request_fails_at_submission() {
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let output = sbatch(dir.path(), "srun")
        .args(["--ntasks=4096"])
        .arg(template("single-node.sbatch"))
        .arg("check")
        .output()
        .unwrap();
    assert!(!output.status.success(), "an impossible request was accepted: {}", text(&output));
    assert!(text(&output).contains("error"), "{}", text(&output));
    assert!(start.elapsed() < Duration::from_secs(30));
}

fn train_args(split: &Path, run: &Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> =
        ["-q", "train", "--task", "sst-2", "--steps", "300", "--batch-size", "4", "--lr", "1e-3"]
            .into_iter()
            .chain(["--eps", "1e-3", "--seed", "7", "--eval-every", "50", "--save-model"])
            .map(Into::into)
            .collect();
    args.extend(["--model".into(), repo("tests/fixtures/models/roberta").into_os_string()]);
    args.extend(["--data-dir".into(), split.as_os_str().to_owned()]);
    args.extend(["--out".into(), run.as_os_str().to_owned()]);
    args
}

fn steps(run: &Path) -> usize {
    std::fs::read_to_string(run.join("trajectory.jsonl"))
        .map(|t| t.lines().count().saturating_sub(1))
        .unwrap_or(0)
}

fn squeue_state(job: &str) -> String {
    let output = Command::new("squeue").args(["-h", "-j", job, "-o", "%T"]).output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Pre-empted with USR1 (what Slurm sends before the time limit), a 2-rank run stops after its
/// step, the job requeues itself, and the requeued job continues the run to the weights and
/// results of an uninterrupted one; both launchers.
#[test]
#[ignore = "needs a running Slurm: make test starts one"]
fn a_signalled_training_job_requeues_and_finishes_as_if_uninterrupted() {
    let dir = tempfile::tempdir().unwrap();
    let split = demo_split(dir.path(), 16, 42);
    let whole = dir.path().join("whole");
    let status = Command::new("mpirun")
        .args(["--oversubscribe", "-np", "2", MEZO])
        .args(train_args(&split, &whole))
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .status()
        .unwrap();
    assert!(status.success());
    for launcher in ["srun", "mpirun"] {
        let run = dir.path().join(format!("run-{launcher}"));
        let output = sbatch(dir.path(), launcher)
            .args(["--parsable", "--ntasks=2"])
            .arg(template("single-node.sbatch"))
            .args(train_args(&split, &run))
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", text(&output));
        let job = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let start = Instant::now();
        while steps(&run) < 20 {
            assert!(start.elapsed() < Duration::from_secs(120), "{launcher}: the job never trained");
            std::thread::sleep(Duration::from_millis(50));
        }
        let signal = Command::new("scancel").args(["--signal=USR1", "--batch", &job]).status().unwrap();
        assert!(signal.success());
        // Requeued jobs wait for a begin time; let it start at once.
        let start = Instant::now();
        while squeue_state(&job) != "PENDING" {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{launcher}: never requeued: {}",
                job_output(dir.path(), &job)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let stopped_at = steps(&run);
        assert!(stopped_at < 300, "{launcher}: the run was not stopped ({stopped_at} steps)");
        Command::new("scontrol").args(["update", &format!("JobId={job}"), "StartTime=now"]).status().unwrap();
        let start = Instant::now();
        while !squeue_state(&job).is_empty() {
            assert!(start.elapsed() < Duration::from_secs(300), "{launcher}: the requeued job never ended");
            std::thread::sleep(Duration::from_millis(200));
        }
        let log = job_output(dir.path(), &job);
        assert!(log.contains("requeueing job") && log.contains("stopping after step"), "{launcher}: {log}");
        let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}\n{log}", p.display()));
        assert_eq!(read(run.join("results.json")), read(whole.join("results.json")), "{launcher}");
        assert_eq!(
            read(run.join("model/model.safetensors")),
            read(whole.join("model/model.safetensors")),
            "{launcher}: weights differ after the requeue at step {stopped_at}"
        );
        assert_eq!(read(run.join("trajectory.jsonl")), read(whole.join("trajectory.jsonl")), "{launcher}");
    }
}

/// A 2×2 sweep (learning rate × data seed, 2 ranks a point) submitted as one job array: it
/// completes, `gather` reads it, and submitting again finds nothing left to do.
#[test]
#[ignore = "needs a running Slurm: make test starts one"]
fn a_sweep_submitted_as_an_array_completes_and_gathers() {
    let dir = tempfile::tempdir().unwrap();
    let splits = dir.path().join("splits");
    for seed in [13, 21] {
        demo_split(&splits, 16, seed);
    }
    let sweep = dir.path().join("sweep");
    let data = splits.join("k-shot-1k-test/SST-2/16-{seed}");
    let output = Command::new(MEZO)
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .args(["-q", "sweep"])
        .arg(&sweep)
        .args(["--submit", "--wait", "--max-parallel", "2", "--ranks", "2", "--sbatch=--time=10"])
        .args(["--grid", "lr=1e-3,1e-4", "--grid", "seed=13,21", "--", "train", "--task", "sst-2"])
        .args(["--steps", "20", "--batch-size", "4", "--eval-every", "10", "--seed", "{seed}", "--model"])
        .arg(repo("tests/fixtures/models/roberta"))
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    let logs: String = std::fs::read_dir(sweep.join("logs"))
        .map(|d| d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()).collect())
        .unwrap_or_default();
    assert!(output.status.success(), "{}{logs}", text(&output));
    assert!(text(&output).contains("4 of 4 point(s) finished"), "{}", text(&output));
    for name in ["lr=1e-3,seed=13", "lr=1e-3,seed=21", "lr=1e-4,seed=13", "lr=1e-4,seed=21"] {
        let config = std::fs::read_to_string(sweep.join("runs").join(name).join("config.json")).unwrap();
        let config: serde_json::Value = serde_json::from_str(&config).unwrap();
        assert_eq!(config["ranks"], 2, "{name}: {logs}");
    }
    let output = Command::new(MEZO).args(["-q", "gather"]).arg(&sweep).output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("sst-2"), "{}", text(&output));
    let output = Command::new(MEZO).args(["-q", "sweep"]).arg(&sweep).arg("--submit").output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("every point has finished"), "{}", text(&output));
}
