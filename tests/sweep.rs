//! `mezo sweep` run here: a grid over a flag and the rank count, finished points skipped on a second
//! run, a sweep stopped by a signal continued to the results of an uninterrupted run, gather and
//! plot on the sweep directory, and the input errors. (Submission as a Slurm array: tests/slurm.rs.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;
use common::{demo_split, repo, MEZO};

fn sweep(dir: &Path) -> Command {
    let mut cmd = Command::new(MEZO);
    cmd.args(["-q", "sweep"])
        .arg(dir)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env_remove("RUST_LOG");
    cmd
}

/// `-- train ...` on the demo split, `steps` MeZO steps.
fn train_command(split: &Path, steps: usize) -> Vec<String> {
    let mut argv: Vec<String> =
        ["--", "train", "--task", "sst-2", "--batch-size", "4", "--eps", "1e-3", "--seed", "7"]
            .into_iter()
            .map(Into::into)
            .collect();
    argv.extend([
        "--steps".into(),
        steps.to_string(),
        "--eval-every".into(),
        "50".into(),
        "--save-model".into(),
    ]);
    argv.extend(["--model".into(), repo("tests/fixtures/models/roberta").to_string_lossy().into_owned()]);
    argv.extend(["--data-dir".into(), split.to_string_lossy().into_owned()]);
    argv
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap()
}

fn runs(dir: &Path) -> PathBuf {
    dir.join("runs")
}

#[test]
fn a_grid_of_learning_rates_and_ranks_runs_once_and_gathers() {
    let tmp = tempfile::tempdir().unwrap();
    let split = demo_split(tmp.path(), 16, 42);
    let dir = tmp.path().join("sweep");
    let output = sweep(&dir)
        .args(["--grid", "lr=1e-3,1e-4", "--grid", "ranks=1,2", "--launcher-arg=--oversubscribe"])
        .args(train_command(&split, 6))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("4 of 4 point(s) finished"), "{}", text(&output));
    let names = ["lr=1e-3,ranks=1", "lr=1e-3,ranks=2", "lr=1e-4,ranks=1", "lr=1e-4,ranks=2"];
    for name in names {
        let run = runs(&dir).join(name);
        let config = json(&run.join("config.json"));
        assert_eq!(config["ranks"], if name.ends_with('2') { 2 } else { 1 }, "{name}");
        assert_eq!(config["train"]["lr"], if name.contains("1e-3") { 1e-3 } else { 1e-4 }, "{name}");
        assert!(run.join("results.json").is_file(), "{name}");
        assert!(dir.join("status").join(name).is_file(), "{name}");
    }
    let manifest = json(&dir.join("sweep.json"));
    assert_eq!(manifest["points"].as_array().unwrap().len(), 4);

    // Again, without the grid: nothing runs, nothing is touched.
    let results = runs(&dir).join(names[0]).join("results.json");
    let before = std::fs::metadata(&results).unwrap().modified().unwrap();
    let output = sweep(&dir).output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("4 of 4 point(s) finished"));
    assert_eq!(std::fs::metadata(&results).unwrap().modified().unwrap(), before);

    // The sweep's directory is what gather and plot read.
    let output = Command::new(MEZO).args(["-q", "gather"]).arg(&dir).output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("sst-2"), "{}", text(&output));
    let charts = tmp.path().join("charts");
    let output =
        Command::new(MEZO).args(["-q", "plot"]).arg(&dir).arg("--out").arg(&charts).output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let svg = std::fs::read_to_string(charts.join("train_loss.svg")).unwrap();
    for name in names {
        assert!(svg.contains(name), "the plot labels its lines by grid point: {name}");
    }

    // Another grid in the same directory is refused.
    let output = sweep(&dir).args(["--grid", "lr=1e-5"]).args(train_command(&split, 6)).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(text(&output).contains("holds another sweep"), "{}", text(&output));
}

#[test]
fn a_signalled_sweep_continues_to_the_uninterrupted_results() {
    let tmp = tempfile::tempdir().unwrap();
    let split = demo_split(tmp.path(), 16, 42);
    let steps = 300;
    let whole = tmp.path().join("whole");
    let command = train_command(&split, steps);
    let output = Command::new(MEZO)
        .arg("-q")
        .args(&command[1..])
        .args(["--lr", "1e-3", "--out"])
        .arg(&whole)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));

    let dir = tmp.path().join("sweep");
    let mut child = sweep(&dir).args(["--grid", "lr=1e-3"]).args(&command).spawn().unwrap();
    let trajectory = runs(&dir).join("lr=1e-3/trajectory.jsonl");
    let start = Instant::now();
    while std::fs::read_to_string(&trajectory).map_or(0, |t| t.lines().count()) < 20 {
        assert!(start.elapsed() < Duration::from_secs(120), "the point never trained");
        assert!(child.try_wait().unwrap().is_none(), "the sweep ended before it was signalled");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGUSR1) };
    let status = child.wait().unwrap();
    assert!(status.success(), "a stopped sweep exits 0: {status}");
    let stopped_at = std::fs::read_to_string(&trajectory).unwrap().lines().count() - 1;
    assert!(stopped_at < steps, "the point was not stopped ({stopped_at} steps)");
    assert!(!dir.join("status/lr=1e-3").exists(), "a stopped point is not finished");

    let output = sweep(&dir).output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let run = runs(&dir).join("lr=1e-3");
    for file in ["results.json", "trajectory.jsonl", "model/model.safetensors"] {
        assert_eq!(read(run.join(file)), read(whole.join(file)), "{file} after a stop at step {stopped_at}");
    }
}

#[test]
fn bad_sweeps_are_input_errors_that_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sweep");
    let model = repo("tests/fixtures/models/roberta");
    let model = model.to_str().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (&["--", "train", "--task", "sst-2"], "at least one --grid"),
        (&["--grid", "lr", "--", "train"], "expected KEY=V1,V2"),
        (&["--grid", "lr=1,1", "--", "train"], "a value given twice"),
        (&["--grid", "lr=1e-3"], "the command to run"),
        (&["--grid", "seed=1,2", "--", "train", "--model", model, "--stepz", "3"], "--stepz"),
        (&["--grid", "seed=1,2", "--", "kernel", "--out", "k.h5"], "same for every point"),
        (&["--grid", "seed=1,2", "--", "sweep", "{dir}{seed}"], "another sweep"),
    ];
    for (args, message) in cases {
        let output = sweep(&dir).args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output));
        assert!(text(&output).contains(message), "{args:?}: {}", text(&output));
        assert!(!dir.exists(), "{args:?} wrote {}", dir.display());
    }
    // Continuing a sweep that is not there.
    let output = sweep(&dir).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output).contains("no sweep here"), "{}", text(&output));
    // A directory with other things in it.
    std::fs::create_dir_all(dir.join("something")).unwrap();
    let output = sweep(&dir).args(["--grid", "seed=1", "--", "train"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output).contains("not a sweep"), "{}", text(&output));
}

#[test]
fn a_dry_run_lists_points_and_the_arrays_it_would_submit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sweep");
    let output = sweep(&dir)
        .args([
            "--dry-run",
            "--submit",
            "--max-parallel",
            "2",
            "--sbatch=--time=10",
            "--grid",
            "seed=13,21,42",
        ])
        .args([
            "--grid",
            "ranks=1,2",
            "--",
            "train",
            "--task",
            "sst-2",
            "--data-dir",
            "data/16-{seed}",
            "--model",
            "m",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let out = text(&output);
    assert!(
        out.contains("0 of 6 point(s) finished") && out.contains("pending    2 rank(s)  seed=42,ranks=2"),
        "{out}"
    );
    assert!(
        out.contains("--array=0,2,4%2 --ntasks=1") && out.contains("--array=1,3,5%2 --ntasks=2"),
        "{out}"
    );
    assert!(out.contains("--time=10"), "{out}");
    assert!(!dir.exists(), "a dry run writes nothing");
}
