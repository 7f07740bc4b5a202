//! `mezo train --optimizer mezo` against our PyTorch implementation of the reference algorithm
//! (tests/fixtures/mezo, made by scripts/make_mezo_fixture.py), and as two data-parallel ranks.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use tch::Tensor;

mod common;
use common::{demo_split, mpirun, repo, MEZO};

fn train(ranks: usize, split: &Path, out: &Path, rng: &str, extra: &[&str]) {
    let output = mpirun(ranks)
        .args(["-q", "train", "--optimizer", "mezo", "--task", "sst-2", "--rng", rng])
        .args(extra)
        .args([
            "--steps",
            "20",
            "--batch-size",
            "8",
            "--lr",
            "1e-3",
            "--eps",
            "1e-3",
            "--weight-decay",
            "0.1",
        ])
        .args(["--seed", "42", "--eval-every", "0", "--save-model"])
        .arg("--model")
        .arg(repo("tests/fixtures/models/roberta"))
        .arg("--data-dir")
        .arg(split)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

fn weights(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

fn trajectory(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("trajectory.jsonl"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Largest |a - b| over a tensor, relative to the largest |b|.
fn relative(a: &Tensor, b: &Tensor) -> f64 {
    let scale = b.abs().max().double_value(&[]).max(1e-12);
    (a - b).abs().max().double_value(&[]) / scale
}

#[test]
fn reference_stream_matches_pytorch_and_two_ranks_match_one() {
    let dir = tempfile::tempdir().unwrap();
    let split = demo_split(dir.path(), 16, 42);
    let one = dir.path().join("one");
    train(1, &split, &one, "reference", &[]);
    let reference = weights(&repo("tests/fixtures/mezo/final.safetensors"));
    let ours = weights(&one.join("model/model.safetensors"));
    assert_eq!(ours.len(), reference.len());
    let mut worst = 0.0f64;
    for (name, want) in &reference {
        worst = worst.max(relative(&ours[name], want));
    }
    eprintln!("final weights vs the PyTorch reference: max relative difference {worst:e}");
    assert!(worst <= 1e-5, "final weights differ from the PyTorch reference by {worst:e} (relative)");

    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo("tests/fixtures/mezo/reference.json")).unwrap())
            .unwrap();
    let steps = trajectory(&one);
    for (ours, want) in steps.iter().zip(expected["trajectory"].as_array().unwrap()) {
        assert_eq!(ours["seed"], want["seed"]);
        let (g, w) = (ours["projected_grad"].as_f64().unwrap(), want["projected_grad"].as_f64().unwrap());
        assert!((g - w).abs() <= 1e-3 * w.abs().max(1.0), "step {}: g {g} vs {w}", ours["step"]);
    }

    let two = dir.path().join("two");
    train(2, &split, &two, "reference", &[]);
    let split_run = weights(&two.join("model/model.safetensors"));
    for (name, t) in &ours {
        let d = relative(&split_run[name], t);
        assert!(d <= 1e-5, "{name}: 2 ranks differ from 1 rank by {d:e}");
    }
    for (a, b) in trajectory(&one).iter().zip(trajectory(&two).iter()) {
        assert_eq!(a["seed"], b["seed"]);
        let (ga, gb) = (a["projected_grad"].as_f64().unwrap(), b["projected_grad"].as_f64().unwrap());
        assert!((ga - gb).abs() <= 1e-3 * ga.abs().max(1.0));
    }
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(one.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["best_step"], 20);
    assert!(one.join("config.json").exists() && one.join("metrics.jsonl").exists());
}

/// The fast stream (the default): two data-parallel ranks give the one-rank run, and it learns.
#[test]
fn fast_stream_two_ranks_match_one() {
    let dir = tempfile::tempdir().unwrap();
    let split = demo_split(dir.path(), 16, 42);
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    train(1, &split, &one, "fast", &[]);
    train(2, &split, &two, "fast", &[]);
    let (a, b) =
        (weights(&one.join("model/model.safetensors")), weights(&two.join("model/model.safetensors")));
    let initial = weights(&repo("tests/fixtures/models/roberta/model.safetensors"));
    let mut moved = 0;
    for (name, t) in &a {
        let d = relative(&b[name], t);
        assert!(d <= 1e-5, "{name}: 2 ranks differ from 1 rank by {d:e}");
        moved += usize::from(initial.get(name).is_some_and(|i| !i.equal(t)));
    }
    assert!(moved > 10, "the fast stream updated only {moved} tensors");
    for (x, y) in trajectory(&one).iter().zip(&trajectory(&two)) {
        assert_eq!(x["seed"], y["seed"]);
        let (gx, gy) = (x["projected_grad"].as_f64().unwrap(), y["projected_grad"].as_f64().unwrap());
        assert!((gx - gy).abs() <= 1e-3 * gx.abs().max(1.0), "step {}: {gx} vs {gy}", x["step"]);
    }
    let config = |run: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap()
    };
    assert_eq!(config(&one)["rng"], "Fast");
    assert_eq!(config(&one)["train"]["paired_pass"], true);

    // ℓ+ and ℓ− in passes of their own: the same losses, so the same run.
    let separate = dir.path().join("separate");
    train(1, &split, &separate, "fast", &["--no-paired-pass"]);
    assert_eq!(config(&separate)["train"]["paired_pass"], false);
    for (x, y) in trajectory(&one).iter().zip(&trajectory(&separate)) {
        let (gx, gy) = (x["projected_grad"].as_f64().unwrap(), y["projected_grad"].as_f64().unwrap());
        assert!(
            (gx - gy).abs() <= 1e-4 * gx.abs().max(1.0),
            "step {}: paired {gx}, separate {gy}",
            x["step"]
        );
    }
    let c = weights(&separate.join("model/model.safetensors"));
    for (name, t) in &a {
        let d = relative(&c[name], t);
        assert!(d <= 1e-6, "{name}: separate passes differ from the paired pass by {d:e}");
    }
}

fn train_args(split: &Path, rng: &str) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> =
        ["-q", "train", "--task", "sst-2", "--steps", "150", "--batch-size", "4", "--rng", rng]
            .into_iter()
            .chain(["--lr", "1e-3", "--eps", "1e-3", "--seed", "7", "--eval-every", "10", "--save-model"])
            .map(Into::into)
            .collect();
    args.extend(["--model".into(), repo("tests/fixtures/models/roberta").into_os_string()]);
    args.extend(["--data-dir".into(), split.as_os_str().to_owned()]);
    args
}

fn trajectory_steps(run: &Path) -> usize {
    std::fs::read_to_string(run.join("trajectory.jsonl"))
        .map(|t| t.lines().count().saturating_sub(1))
        .unwrap_or(0)
}

/// Killed with SIGKILL at whatever step it has reached, then resumed: the same final weights, bit
/// for bit, and the same best-dev step as an uninterrupted run; replay rebuilds them too. Both
/// perturbation streams.
#[test]
fn kill_resume_and_replay_are_bit_identical() {
    for rng in ["fast", "reference"] {
        kill_resume_and_replay(rng);
    }
}

fn kill_resume_and_replay(rng: &str) {
    let dir = tempfile::tempdir().unwrap();
    let split = demo_split(dir.path(), 16, 42);
    let whole = dir.path().join("whole");
    let status = Command::new(MEZO).args(train_args(&split, rng)).arg("--out").arg(&whole).status().unwrap();
    assert!(status.success());

    let killed = dir.path().join("killed");
    let mut child =
        Command::new(MEZO).args(train_args(&split, rng)).arg("--out").arg(&killed).spawn().unwrap();
    let start = std::time::Instant::now();
    while trajectory_steps(&killed) < 37 && start.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let reached = trajectory_steps(&killed);
    assert!((37..150).contains(&reached), "killed after {reached} steps");
    assert!(!killed.join("model").exists());
    let status =
        Command::new(MEZO).args(train_args(&split, rng)).arg("--resume").arg(&killed).status().unwrap();
    assert!(status.success());

    let a = weights(&whole.join("model/model.safetensors"));
    let b = weights(&killed.join("model/model.safetensors"));
    for (name, t) in &a {
        assert!(t.equal(&b[name]), "{rng}: {name} differs after kill and resume at step {reached}");
    }
    let results = |run: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap()
    };
    assert_eq!(results(&whole), results(&killed));

    let replayed = dir.path().join("replayed");
    let status =
        Command::new(MEZO).args(["-q", "replay"]).arg(&whole).arg("--out").arg(&replayed).status().unwrap();
    assert!(status.success());
    let c = weights(&replayed.join("model.safetensors"));
    for (name, t) in &a {
        assert!(t.equal(&c[name]), "{rng}: {name} differs after replay");
    }
}

/// SIGTERM (Slurm pre-emption) finishes the step, flushes and exits 0 with a resumable run.
#[test]
fn sigterm_stops_cleanly_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let split = demo_split(dir.path(), 16, 42);
    let run = dir.path().join("run");
    let child = Command::new(MEZO)
        .args(train_args(&split, "fast"))
        .arg("--out")
        .arg(&run)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while trajectory_steps(&run) < 20 && start.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "a pre-empted run exits 0");
    assert!(String::from_utf8_lossy(&output.stdout).contains("continue with --resume"));
    let stopped = trajectory_steps(&run);
    assert!(stopped < 150 && !run.join("results.json").exists());
    let status =
        Command::new(MEZO).args(train_args(&split, "fast")).arg("--resume").arg(&run).status().unwrap();
    assert!(status.success());
    assert_eq!(trajectory_steps(&run), 150);
}

/// The first-order baseline: the loss falls, and two data-parallel ranks give the first rank's
/// numbers up to the order of the gradient sum.
#[test]
fn adam_baseline_learns_and_two_ranks_agree() {
    let dir = tempfile::tempdir().unwrap();
    let split = demo_split(dir.path(), 16, 42);
    let run = |ranks: usize, out: &Path| {
        let output = mpirun(ranks)
            .args(["-q", "train", "--optimizer", "adam", "--task", "sst-2"])
            .args(["--steps", "40", "--batch-size", "8", "--lr", "1e-3", "--seed", "3", "--eval-every", "20"])
            .arg("--model")
            .arg(repo("tests/fixtures/models/roberta"))
            .arg("--data-dir")
            .arg(&split)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let losses: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
            .collect();
        losses
    };
    let one = run(1, &dir.path().join("one"));
    let two = run(2, &dir.path().join("two"));
    assert_eq!(one.len(), 40);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(mean(&one[30..]) < mean(&one[..10]), "the training loss falls: {one:?}");
    for (a, b) in one.iter().zip(&two) {
        assert!((a - b).abs() < 1e-4, "1 rank {a} vs 2 ranks {b}");
    }
}

fn mezo_run(ranks: usize, split: &Path, out: &Path, extra: &[&str]) {
    let output = mpirun(ranks)
        .args(["-q", "train", "--task", "sst-2"])
        .args([
            "--steps",
            "15",
            "--batch-size",
            "8",
            "--lr",
            "1e-3",
            "--eps",
            "1e-3",
            "--seed",
            "5",
            "--eval-every",
            "0",
        ])
        .args(["--save-model", "--check-every", "5"])
        .args(extra)
        .arg("--model")
        .arg(repo("tests/fixtures/models/roberta"))
        .arg("--data-dir")
        .arg(split)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// n-SPSA over ranks: two ranks, one direction each, give the one-rank `--zo-samples 2` run; its
/// trajectory replays exactly; the accuracy objective trains too.
#[test]
fn direction_parallel_equals_n_spsa_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let split = demo_split(dir.path(), 16, 42);
    let samples = dir.path().join("samples");
    mezo_run(1, &split, &samples, &["--zo-samples", "2"]);
    let directions = dir.path().join("directions");
    mezo_run(2, &split, &directions, &["--parallel", "directions"]);
    let a = weights(&samples.join("model/model.safetensors"));
    let b = weights(&directions.join("model/model.safetensors"));
    for (name, t) in &a {
        let d = relative(&b[name], t);
        assert!(d <= 1e-6, "{name}: direction-parallel differs from --zo-samples 2 by {d:e}");
    }
    let (ta, tb) = (trajectory(&samples), trajectory(&directions));
    assert_eq!(ta.len(), 15);
    for (x, y) in ta.iter().zip(&tb) {
        let (dx, dy) = (x["directions"].as_array().unwrap(), y["directions"].as_array().unwrap());
        assert_eq!(dx.len(), 2);
        for (p, q) in dx.iter().zip(dy) {
            assert_eq!(p[0], q[0], "same seeds");
            assert!((p[1].as_f64().unwrap() - q[1].as_f64().unwrap()).abs() < 1e-3);
        }
    }
    let replayed = dir.path().join("replayed");
    assert!(Command::new(MEZO)
        .args(["-q", "replay"])
        .arg(&samples)
        .arg("--out")
        .arg(&replayed)
        .status()
        .unwrap()
        .success());
    let c = weights(&replayed.join("model.safetensors"));
    for (name, t) in &a {
        assert!(t.equal(&c[name]), "{name} differs after replaying an n-SPSA run");
    }
    let accuracy = dir.path().join("accuracy");
    mezo_run(2, &split, &accuracy, &["--objective", "accuracy"]);
    let losses: Vec<f64> = std::fs::read_to_string(accuracy.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
        .collect();
    assert!(
        losses.iter().all(|l| (-1.0..=0.0).contains(l)),
        "the objective is minus the batch accuracy: {losses:?}"
    );
}

/// Micro-batches give the whole batch's trajectory (up to summation order); ZO momentum and
/// ZO-Adam runs replay exactly (their moments are rebuilt from the trajectory).
#[test]
fn micro_batches_and_zo_moment_optimisers() {
    let dir = tempfile::tempdir().unwrap();
    let split = demo_split(dir.path(), 16, 42);
    let whole = dir.path().join("whole");
    mezo_run(1, &split, &whole, &[]);
    let micro = dir.path().join("micro");
    mezo_run(1, &split, &micro, &["--micro-batch-size", "3"]);
    for (a, b) in trajectory(&whole).iter().zip(&trajectory(&micro)) {
        let (ga, gb) = (a["projected_grad"].as_f64().unwrap(), b["projected_grad"].as_f64().unwrap());
        assert!((ga - gb).abs() <= 1e-3 * ga.abs().max(1.0), "step {}: {ga} vs {gb}", a["step"]);
    }
    for optimizer in [["--zo-optimizer", "momentum"], ["--zo-optimizer", "adam"]] {
        let run = dir.path().join(optimizer[1]);
        mezo_run(1, &split, &run, &optimizer);
        let replayed = dir.path().join(format!("{}-replayed", optimizer[1]));
        assert!(Command::new(MEZO)
            .args(["-q", "replay"])
            .arg(&run)
            .arg("--out")
            .arg(&replayed)
            .status()
            .unwrap()
            .success());
        let (a, b) =
            (weights(&run.join("model/model.safetensors")), weights(&replayed.join("model.safetensors")));
        let sgd = weights(&whole.join("model/model.safetensors"));
        let mut moved_differently = false;
        for (name, t) in &a {
            assert!(t.equal(&b[name]), "{}: {name} differs after replay", optimizer[1]);
            moved_differently |= !t.equal(&sgd[name]);
        }
        assert!(moved_differently, "{} updates differ from ZO-SGD's", optimizer[1]);
    }
}

/// Best-dev weights kept on disk give the in-memory results and leave no stash behind.
#[test]
fn best_weights_on_disk_match_memory() {
    let dir = tempfile::tempdir().unwrap();
    let split = demo_split(dir.path(), 16, 42);
    let run = |place: &str| {
        let out = dir.path().join(place);
        let output = Command::new(MEZO)
            .args(["-q", "train", "--task", "sst-2", "--steps", "40", "--batch-size", "8", "--lr", "1e-3"])
            .args(["--seed", "9", "--eval-every", "5", "--best-weights", place, "--save-model"])
            .arg("--model")
            .arg(repo("tests/fixtures/models/roberta"))
            .arg("--data-dir")
            .arg(&split)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        out
    };
    let (memory, disk) = (run("memory"), run("disk"));
    let read = |p: &Path| std::fs::read_to_string(p.join("results.json")).unwrap();
    assert_eq!(read(&memory), read(&disk));
    let leftovers: Vec<_> = std::fs::read_dir(&disk)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("stash"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let (a, b) =
        (weights(&memory.join("model/model.safetensors")), weights(&disk.join("model/model.safetensors")));
    for (name, t) in &a {
        assert!(t.equal(&b[name]), "{name}: the final weights are restored exactly");
    }
}

/// Every MeZO step logs where its time went, and the run ends with each rank's totals (what a
/// scaling study reads); two ranks.
#[test]
fn steps_log_where_their_time_went_on_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let split = demo_split(dir.path(), 16, 42);
    let run = dir.path().join("run");
    let output = mpirun(2)
        .args(["-q", "train", "--task", "sst-2", "--steps", "6", "--batch-size", "4", "--eval-every", "3"])
        .arg("--model")
        .arg(repo("tests/fixtures/models/roberta"))
        .arg("--data-dir")
        .arg(&split)
        .arg("--out")
        .arg(&run)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let phases = ["batch", "forward", "collective", "update", "io", "step"];
    let steps: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("loss").is_some()).collect();
    assert_eq!(steps.len(), 6);
    for line in &steps {
        let seconds = &line["seconds"];
        for phase in phases {
            assert!(seconds[phase].as_f64().is_some_and(|s| s >= 0.0), "{phase} in {line}");
        }
        assert!(seconds["step"].as_f64() >= seconds["forward"].as_f64(), "{line}");
    }
    assert_eq!(lines.iter().filter(|l| l["seconds"]["eval"].is_number()).count(), 2);
    let by_rank = lines.last().unwrap()["seconds_by_rank"].as_array().expect("per-rank totals last").clone();
    assert_eq!(by_rank.len(), 2);
    for (rank, totals) in by_rank.iter().enumerate() {
        assert_eq!(totals["rank"], rank);
        for phase in phases {
            assert!(totals[phase].as_f64().is_some_and(|s| s >= 0.0), "{phase} of rank {rank}");
        }
    }
}
