//! The built binary, as one process and as two MPI ranks under `mpirun --oversubscribe -np 2`.

use ndarray::Dimension;
use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::MEZO;

fn mezo(args: &[&str]) -> Output {
    Command::new(MEZO).args(args).env_remove("RUST_LOG").output().expect("running mezo")
}

fn mpirun(np: usize, args: &[&str]) -> Output {
    common::mpirun(np).args(args).output().expect("running mpirun (scripts/setup.sh installs openmpi-bin)")
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn line<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no line '{name}' in\n{stdout}"))
}

#[test]
fn info_on_one_process() {
    let out = mezo(&["info"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(line(&stdout, "libtorch").contains("2.11.0"), "{stdout}");
    assert!(line(&stdout, "world").contains("1 rank(s), launcher: none"), "{stdout}");
    assert!(line(&stdout, "HDF5").contains("parallel HDF5"), "{stdout}");
    assert!(line(&stdout, "MPI").contains("Open MPI"), "{stdout}");
    assert!(stdout.contains("rank 0/1 "), "{stdout}");
}

#[test]
fn info_json_is_machine_readable() {
    let out = mezo(&["info", "--json", "--threads", "3", "--device", "cpu"]);
    assert!(out.status.success(), "{}", text(&out).1);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["world_size"], 1);
    assert_eq!(v["hdf5_parallel"], true);
    assert_eq!(v["ranks"][0]["threads"], 3);
    assert_eq!(v["ranks"][0]["device"], "cpu");
}

#[test]
fn info_all_ranks_under_mpirun() {
    let out = mpirun(2, &["info", "--all-ranks"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(line(&stdout, "world").contains("2 rank(s), launcher: OpenMPI mpirun"), "{stdout}");
    assert!(stdout.contains("parallel HDF5"), "{stdout}");
    let ranks: Vec<&str> = stdout.lines().filter(|l| l.starts_with("rank ")).collect();
    assert_eq!(ranks.len(), 2, "{stdout}");
    assert!(ranks[0].starts_with("rank 0/2 ") && ranks[0].contains(" local 0/2 "), "{stdout}");
    assert!(ranks[1].starts_with("rank 1/2 ") && ranks[1].contains(" local 1/2 "), "{stdout}");
}

/// The value `mezo check` writes at each index of its test dataset.
fn cell(index: &[usize]) -> f64 {
    index.iter().fold(0.0, |acc, &x| acc * 16.0 + x as f64) + 0.125
}

#[test]
fn two_ranks_all_reduce_broadcast_and_collective_hdf5_rows() {
    let dir = tempfile::tempdir().unwrap();
    let out = mpirun(2, &["check", "--scratch", dir.path().to_str().unwrap(), "--keep"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for name in ["all-reduce", "broadcast", "all-gather"] {
        assert!(line(&stdout, name).contains(" pass "), "{stdout}");
    }
    assert!(line(&stdout, "all-reduce").contains("over 2 rank(s)"), "{stdout}");
    let hdf5 = line(&stdout, "hdf5 row blocks");
    assert!(hdf5.contains(" pass ") && hdf5.contains("one collective MPI-IO write"), "{stdout}");

    // Read the kept file here, independently of the binary's own read-back.
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].extension().unwrap() == "h5", "{files:?}: a .partial name left behind");
    let file = hdf5::File::open(&files[0]).unwrap();
    let train = file.dataset("train").unwrap().read_dyn::<f64>().unwrap();
    // Rank 0 wrote row 0, rank 1 rows 1 and 2.
    assert_eq!(train.shape(), [3, 2, 5, 2]);
    for (index, value) in train.indexed_iter() {
        assert_eq!(*value, cell(index.slice()), "at {:?}", index.slice());
    }
    let labels = file.dataset("train_labels").unwrap().read_raw::<i64>().unwrap();
    assert_eq!(labels, [-1, 2, 5]);

    // The same as JSON, with the time of an all-reduce.
    let out = mpirun(2, &["-q", "check", "--scratch", dir.path().to_str().unwrap(), "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "{stdout}
{stderr}"
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ranks"], 2);
    assert!(report["all_reduce_seconds"].as_f64().unwrap() > 0.0, "{stdout}");
    let checks = report["checks"].as_array().unwrap();
    assert!(checks.iter().any(|c| c["name"] == "hdf5 row blocks" && c["status"] == "pass"), "{stdout}");
    assert!(checks.iter().any(|c| c["name"] == "all-reduce time" && c["status"] == "pass"), "{stdout}");
}

#[test]
fn one_process_check_passes_and_removes_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = mezo(&["check", "--scratch", dir.path().to_str().unwrap(), "--device", "cpu"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(line(&stdout, "hdf5 row blocks").contains("one process"), "{stdout}");
    assert!(line(&stdout, "torch cuda").contains(" skip "), "{stdout}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn cuda_requested_without_cuda_fails_cleanly() {
    if Path::new("/dev/nvidiactl").exists() {
        return; // a GPU machine: covered by benches/gpu-check.sh
    }
    let dir = tempfile::tempdir().unwrap();
    let out = mezo(&["check", "--scratch", dir.path().to_str().unwrap(), "--device", "cuda"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(line(&stdout, "torch cuda").contains("FAIL"), "{stdout}");
    assert!(stderr.contains("4 of 10 checks failed"), "{stderr}");
    assert!(line(&stdout, "fast stream on gpu").contains("FAIL"), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_input_exits_2_with_the_flag_named() {
    let out = mezo(&["check", "--scratch", "/nonexistent/dir"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--scratch /nonexistent/dir: not a directory"), "{}", text(&out).1);

    let out = mezo(&["--device", "gpu", "info"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("unknown device 'gpu'"), "{}", text(&out).1);

    let out = mezo(&["info", "--threads", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--threads"), "{}", text(&out).1);
}

#[test]
fn srun_without_mpi_support_is_caught() {
    // What `srun -n 4` sets when its PMI does not reach the MPI library: every process would come
    // up as a one-rank world and silently redo the job.
    let out = Command::new(MEZO)
        .arg("info")
        .env("SLURM_PROCID", "0")
        .env("SLURM_STEP_NUM_TASKS", "4")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("as one of 4 ranks, but MPI reports a world of 1"), "{}", text(&out).1);
}

#[test]
fn ranks_prefix_their_log_lines() {
    let out = mpirun(2, &["-v", "info"]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.lines().any(|l| l.starts_with("[rank 1] DEBUG")), "{stderr}");
    assert!(stderr.lines().any(|l| l.starts_with("[rank 0] DEBUG")), "{stderr}");
}

#[test]
fn demo_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let out = mezo(&["-q", "demo", "--steps", "80", "--out", dir.path().join("demo").to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(line(&stdout, "zero-shot:").contains("chance 0.5"), "{stdout}");
    let mezo_row = line(&stdout, "MeZO ");
    assert!(mezo_row.contains("mezo-run"), "{stdout}");
    assert!(line(&stdout, "Adam FT ").contains("adam-run"), "{stdout}");
    assert!(dir.path().join("demo/mezo-run/trajectory.jsonl").exists());
    assert!(dir.path().join("demo/adam-run/results.json").exists());
}
