//! What no failure may do: lose a run, leave a file that looks complete, mix two runs, panic, or
//! hang. Each test is one way a hostile user, a kill or a full disk used to get through.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;
use common::{demo_split, kernel, mpirun, ok, repo, MEZO};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// An input error: exit 2, a message containing `needle`, no panic or backtrace.
fn refused(output: Output, needle: &str) -> String {
    let err = stderr(&output);
    assert_eq!(
        output.status.code(),
        Some(2),
        "expected exit 2 for {needle:?}, got {:?}: {err}",
        output.status
    );
    assert!(err.contains(needle), "the message lacks {needle:?}: {err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "a panic: {err}");
    err
}

fn mezo() -> Command {
    let mut cmd = Command::new(MEZO);
    cmd.env_remove("RUST_LOG");
    cmd
}

/// A short MeZO run of the test RoBERTa; `changes` replace the value of a flag given here
/// (`["--lr", "2e-3"]`) or add flags.
fn train_args(split: &Path, changes: &[&str]) -> Vec<std::ffi::OsString> {
    let mut pairs: Vec<(&str, &str)> = vec![
        ("--steps", "12"),
        ("--batch-size", "4"),
        ("--lr", "1e-3"),
        ("--eps", "1e-3"),
        ("--seed", "7"),
        ("--eval-every", "4"),
    ];
    let mut extra: Vec<&str> = Vec::new();
    let mut rest = changes.iter();
    while let Some(&flag) = rest.next() {
        match pairs.iter_mut().find(|(f, _)| *f == flag) {
            Some(pair) => pair.1 = rest.next().expect("a value"),
            None => extra.push(flag),
        }
    }
    let mut args: Vec<std::ffi::OsString> =
        ["-q", "train", "--task", "sst-2", "--save-model"].into_iter().map(Into::into).collect();
    for (flag, value) in pairs {
        args.push(format!("{flag}={value}").into());
    }
    args.extend(extra.into_iter().map(Into::into));
    args.extend(["--model".into(), repo("tests/fixtures/models/roberta").into_os_string()]);
    args.extend(["--data-dir".into(), split.as_os_str().to_owned()]);
    args
}

fn train(split: &Path, flag: &str, run: &Path, changes: &[&str]) -> Output {
    mezo().args(train_args(split, changes)).arg(flag).arg(run).output().unwrap()
}

/// A copy of the test RoBERTa in `dir/model`, to damage.
fn copy_test_model(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for entry in std::fs::read_dir(repo("tests/fixtures/models/roberta")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    model
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn weights(run: &Path) -> Vec<u8> {
    std::fs::read(run.join("model/model.safetensors")).unwrap()
}

/// A finished run, and a copy of it to damage.
fn finished_run(dir: &Path) -> (PathBuf, PathBuf) {
    let split = demo_split(dir, 16, 42);
    let whole = dir.join("whole");
    ok(train(&split, "--out", &whole, &[]));
    (split, whole)
}

fn copy_run(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in ["config.json", "metrics.jsonl", "trajectory.jsonl"] {
        std::fs::copy(from.join(name), to.join(name)).unwrap();
    }
}

/// Keeps the first `lines` lines of a file.
fn keep_lines(path: &Path, lines: usize) {
    let text = read(path);
    let kept: String = text.split_inclusive('\n').take(lines).collect();
    std::fs::write(path, kept).unwrap();
}

#[test]
fn a_run_killed_after_its_last_step_finishes_on_resume_and_is_not_trained_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (split, whole) = finished_run(dir.path());
    // Killed after step 12 was recorded, before its evaluation: the trajectory is whole, the
    // metrics end with step 12's loss, no results, no model.
    let killed = dir.path().join("killed");
    copy_run(&whole, &killed);
    let metrics = read(&killed.join("metrics.jsonl"));
    let at = metrics.lines().position(|l| l.starts_with("{\"loss\"") && l.contains("\"step\":12")).unwrap();
    keep_lines(&killed.join("metrics.jsonl"), at + 1);
    ok(train(&split, "--resume", &killed, &[]));
    assert_eq!(read(&killed.join("results.json")), read(&whole.join("results.json")));
    assert_eq!(weights(&killed), weights(&whole));
    assert_eq!(read(&killed.join("trajectory.jsonl")), read(&whole.join("trajectory.jsonl")));

    // Finished: resuming again, or the same command with --out, trains nothing.
    for flag in ["--resume", "--out"] {
        let stdout = ok(train(&split, flag, &killed, &[]));
        assert!(stdout.contains("finished run"), "{stdout}");
        assert_eq!(read(&killed.join("trajectory.jsonl")), read(&whole.join("trajectory.jsonl")));
    }
}

#[test]
fn a_torn_trajectory_line_is_repaired_on_resume_and_refused_by_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (split, whole) = finished_run(dir.path());
    let torn = dir.path().join("torn");
    copy_run(&whole, &torn);
    // A full disk while writing step 9: half its line.
    let trajectory = read(&torn.join("trajectory.jsonl"));
    let lines: Vec<&str> = trajectory.split_inclusive('\n').collect();
    let mut cut: String = lines[..9].concat();
    cut.push_str(&lines[9][..lines[9].len() / 2]);
    std::fs::write(torn.join("trajectory.jsonl"), cut).unwrap();
    let at = read(&torn.join("metrics.jsonl")).lines().position(|l| l.contains("\"step\":9")).unwrap();
    keep_lines(&torn.join("metrics.jsonl"), at);

    let replayed = dir.path().join("replayed");
    refused(
        mezo().args(["-q", "replay"]).arg(&torn).arg("--out").arg(&replayed).output().unwrap(),
        "line 10",
    );
    assert!(!replayed.exists());

    ok(train(&split, "--resume", &torn, &[]));
    assert_eq!(read(&torn.join("trajectory.jsonl")), read(&whole.join("trajectory.jsonl")));
    assert_eq!(read(&torn.join("results.json")), read(&whole.join("results.json")));
    assert_eq!(weights(&torn), weights(&whole));
}

#[test]
fn replay_refuses_short_trajectories_and_never_replaces_its_run() {
    let dir = tempfile::tempdir().unwrap();
    let (_, whole) = finished_run(dir.path());
    let before = read(&whole.join("trajectory.jsonl"));
    refused(
        mezo().args(["-q", "replay"]).arg(&whole).arg("--out").arg(&whole).output().unwrap(),
        "run directory",
    );
    assert_eq!(read(&whole.join("trajectory.jsonl")), before);
    assert!(whole.join("results.json").is_file() && whole.join("metrics.jsonl").is_file());

    // An --out that holds something else is not replaced either.
    let other = dir.path().join("notes");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("todo.txt"), "keep me").unwrap();
    refused(
        mezo().args(["-q", "replay"]).arg(&whole).arg("--out").arg(&other).output().unwrap(),
        "not a model",
    );
    assert_eq!(read(&other.join("todo.txt")), "keep me");

    let short = dir.path().join("short");
    copy_run(&whole, &short);
    keep_lines(&short.join("trajectory.jsonl"), 6);
    let out = dir.path().join("replayed");
    refused(
        mezo().args(["-q", "replay"]).arg(&short).arg("--out").arg(&out).output().unwrap(),
        "5 of the run's 12",
    );
    assert!(!out.exists());
}

#[test]
fn a_run_directory_belongs_to_one_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let (split, whole) = finished_run(dir.path());
    let before = read(&whole.join("trajectory.jsonl"));
    let err = refused(train(&split, "--out", &whole, &["--lr", "2e-3"]), "train.lr");
    assert!(err.contains("--overwrite"), "{err}");
    refused(train(&split, "--resume", &whole, &["--batch-size", "8"]), "train.batch_size");
    assert_eq!(read(&whole.join("trajectory.jsonl")), before);

    // Other data under another path: refused by content.
    let other = dir.path().join("other");
    let other_split = demo_split(&other, 16, 13);
    refused(train(&other_split, "--resume", &whole, &[]), "data.fingerprint");
    // The same data under another path is the same run.
    let moved = dir.path().join("moved-split");
    std::fs::create_dir_all(&moved).unwrap();
    for entry in std::fs::read_dir(&split).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), moved.join(entry.file_name())).unwrap();
    }
    assert!(ok(train(&moved, "--resume", &whole, &[])).contains("finished run"));

    // --overwrite replaces it.
    ok(train(&split, "--out", &whole, &["--lr", "2e-3", "--overwrite"]));
    assert_ne!(read(&whole.join("trajectory.jsonl")), before);

    // A directory that is not a run is never touched.
    let notes = dir.path().join("notes");
    std::fs::create_dir_all(&notes).unwrap();
    std::fs::write(notes.join("todo.txt"), "keep me").unwrap();
    refused(train(&split, "--out", &notes, &["--overwrite"]), "not a mezo run directory");
    assert_eq!(read(&notes.join("todo.txt")), "keep me");
}

#[test]
fn two_trainers_never_share_a_run_directory() {
    let dir = tempfile::tempdir().unwrap();
    let split = demo_split(dir.path(), 16, 42);
    let run = dir.path().join("run");
    let long = ["--steps", "100000", "--eval-every", "0"];
    let mut first = mezo()
        .args(train_args(&split, &long))
        .arg("--out")
        .arg(&run)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !read_or_empty(&run.join("trajectory.jsonl")).contains("\"step\":2") {
        assert!(start.elapsed() < Duration::from_secs(60), "the first trainer never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = mezo().args(train_args(&split, &long)).arg("--out").arg(&run).output().unwrap();
    first.kill().unwrap();
    first.wait().unwrap();
    refused(second, "another mezo process");
}

fn read_or_empty(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn a_fresh_run_that_fails_before_its_first_step_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let split = demo_split(dir.path(), 16, 42);
    let run = dir.path().join("nan");
    // A learning rate that overflows at once: NaN at step 2 at the latest.
    let output = train(&split, "--out", &run, &["--lr", "1e300", "--eps", "1e300"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("step 1") || stderr(&output).contains("step 2"), "{}", stderr(&output));
    // Either nothing (failed at step 1) or a trajectory that stops before the failing step.
    if run.exists() {
        assert!(!run.join("results.json").exists());
        let t = read(&run.join("trajectory.jsonl"));
        assert!(t.lines().count() >= 2, "{t}");
    }
}

#[test]
fn degenerate_flags_are_input_errors_without_panics() {
    let dir = tempfile::tempdir().unwrap();
    let split = demo_split(dir.path(), 4, 42);
    let run = dir.path().join("run");
    let cases: &[(&[&str], &str)] = &[
        (&["--steps", "0"], "--steps"),
        (&["--optimizer", "adam", "--steps", "0"], "--steps"),
        (&["--optimizer", "sgd", "--batch-size", "0"], "--batch-size"),
        (&["--batch-size", "0"], "--batch-size"),
        (&["--eval-batch-size", "0"], "--eval-batch-size"),
        (&["--lr", "NaN"], "--lr"),
        (&["--lr", "inf"], "--lr"),
        (&["--lr=-1"], "--lr"),
        (&["--eps", "0"], "--eps"),
        (&["--eps", "nan"], "--eps"),
        (&["--weight-decay=-0.1"], "--weight-decay"),
        (&["--weight-decay", "inf"], "--weight-decay"),
        (&["--zo-optimizer", "momentum", "--momentum", "1.5"], "--momentum"),
        (&["--zo-optimizer", "momentum", "--momentum", "nan"], "--momentum"),
        (&["--lora-r", "0"], "--lora-r"),
        (&["--lora-r", "4", "--lora-alpha", "nan"], "--lora-alpha"),
        (&["--num-prefix", "0"], "--num-prefix"),
        (&["--zo-samples", "0"], "--zo-samples"),
    ];
    for (flags, needle) in cases {
        let output = mezo()
            .args(["-q", "train", "--task", "sst-2", "--model"])
            .arg(repo("tests/fixtures/models/roberta"))
            .arg("--data-dir")
            .arg(&split)
            .arg("--out")
            .arg(&run)
            .args(*flags)
            .output()
            .unwrap();
        refused(output, needle);
        assert!(!run.exists(), "{flags:?} left a run directory");
    }
    let eval = mezo()
        .args(["-q", "eval", "--task", "sst-2", "--batch-size", "0", "--model"])
        .arg(repo("tests/fixtures/models/roberta"))
        .arg("--data-dir")
        .arg(&split)
        .output()
        .unwrap();
    refused(eval, "--batch-size");
}

#[test]
fn broken_model_configs_and_overlong_inputs_are_input_errors() {
    let dir = tempfile::tempdir().unwrap();
    let split = demo_split(dir.path(), 4, 42);
    let (source, model) = (repo("tests/fixtures/models/roberta"), copy_test_model(dir.path()));
    let config = read(&source.join("config.json"));
    let mut json: serde_json::Value = serde_json::from_str(&config).unwrap();
    for (key, value, needle) in
        [("num_attention_heads", 0, "num_attention_heads"), ("num_attention_heads", 5, "not a multiple")]
    {
        json[key] = value.into();
        std::fs::write(model.join("config.json"), json.to_string()).unwrap();
        let output = mezo()
            .args(["-q", "eval", "--task", "sst-2", "--model"])
            .arg(&model)
            .arg("--data-dir")
            .arg(&split)
            .output()
            .unwrap();
        refused(output, needle);
    }
    std::fs::write(model.join("config.json"), &config).unwrap();

    // A test sentence longer than the model's positions.
    let positions = json["max_position_embeddings"].as_i64().unwrap() as usize;
    let long = dir.path().join("long");
    std::fs::create_dir_all(&long).unwrap();
    for name in ["train.tsv", "dev.tsv"] {
        std::fs::copy(split.join(name), long.join(name)).unwrap();
    }
    let sentence = vec!["good"; positions + 10].join(" ");
    std::fs::write(long.join("test.tsv"), format!("sentence\tlabel\n{sentence}\t1\n")).unwrap();
    let output = mezo()
        .args(["-q", "eval", "--task", "sst-2", "--max-seq-length", "1024", "--model"])
        .arg(&model)
        .arg("--data-dir")
        .arg(&long)
        .output()
        .unwrap();
    refused(output, "positions");
}

#[test]
fn kernel_partials_are_fingerprinted_and_unreadable_ones_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let split = demo_split(dir.path(), 4, 42);
    let out = dir.path().join("k.h5");
    // Killed before HDF5 wrote anything readable.
    std::fs::write(mezo::h5::partial_path(&out), b"\x89HDF\r\n").unwrap();
    let stdout = ok(kernel(1, &split, &out, &["--row-block", "1"]));
    assert!(stdout.contains("k.h5"), "{stdout}");
    assert!(out.is_file() && !mezo::h5::partial_path(&out).exists());
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains(".partial.unreadable-"));
    assert!(aside, "the unreadable partial was not kept aside");
    assert!(!dir.path().join("k.h5.lock").exists());

    // An interrupted file, then other data under the same path: refused by content.
    let crashed = dir.path().join("c.h5");
    let output = mezo()
        .args(["-q", "kernel", "--task", "sst-2", "--row-block", "1", "--model"])
        .arg(repo("tests/fixtures/models/roberta"))
        .arg("--data-dir")
        .arg(&split)
        .arg("--out")
        .arg(&crashed)
        .env("MEZO_TEST_CRASH_AFTER_BLOCKS", "2")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let test = split.join("test.tsv");
    let text = read(&test);
    std::fs::write(&test, text.replacen("\t0\n", "\t1\n", 1)).unwrap();
    refused(kernel(1, &split, &crashed, &["--row-block", "1"]), "data_fingerprint");
    // solve refuses the unfinished file.
    let results = dir.path().join("r.json");
    let partial = mezo::h5::partial_path(&crashed);
    refused(
        mezo().args(["-q", "solve", "--kernels"]).arg(&partial).arg("--out").arg(&results).output().unwrap(),
        "unfinished",
    );
    assert!(!results.exists());
}

#[test]
fn solve_refuses_non_finite_kernels() {
    let dir = tempfile::tempdir().unwrap();
    let split = demo_split(dir.path(), 4, 42);
    let out = dir.path().join("k.h5");
    ok(kernel(1, &split, &out, &[]));
    {
        let file = hdf5::File::open_rw(&out).unwrap();
        let ds = file.dataset("dev").unwrap();
        let mut values: Vec<f64> = ds.read_raw().unwrap();
        values[3] = f64::NAN;
        ds.write_raw(&values).unwrap();
    }
    let results = dir.path().join("r.json");
    for solver in ["lstsq", "logistic", "svc"] {
        let output = mezo()
            .args(["-q", "solve", "--solver", solver, "--kernels"])
            .arg(&out)
            .arg("--out")
            .arg(&results)
            .output()
            .unwrap();
        refused(output, "dataset 'dev' holds NaN at index [0, 0, 1, 1]");
        assert!(!results.exists());
    }
}

/// Whether this machine lets the tests mount a tmpfs in a mount namespace of their own (root:
/// `unshare -m`, otherwise a user namespace too). A chroot whose root is no mount point does not.
fn tmpfs_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if std::env::var_os("MEZO_TEST_NO_TMPFS").is_some() {
            return false; // to run the fallback where a tmpfs could be had
        }
        let dir = tempfile::tempdir().unwrap();
        let script = format!("mount -t tmpfs -o size=64k tmpfs '{0}' && umount '{0}'", dir.path().display());
        unshare().args(["sh", "-c", &script]).output().is_ok_and(|o| o.status.success())
    })
}

fn unshare() -> Command {
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    let mut cmd = Command::new("unshare");
    cmd.arg(if root { "-m" } else { "-rm" });
    cmd
}

/// The messages of a write that found no room: a full tmpfs, or the file-size limit that stands in
/// for one where no tmpfs can be mounted.
const NO_ROOM: [&str; 2] = ["No space left on device", "File too large"];

/// Runs the shell command `limited` where mezo's writes under `dir` (`$D` in the commands) find no
/// room past `kib` KiB, then `then` with room again. A disk-full where the machine allows it:
/// `dir` a tmpfs of that size in a mount namespace of the test's own, remounted larger for `then`.
/// Otherwise an injected write error: `$LIMIT` before mezo in `limited` puts it under a file-size
/// limit (RLIMIT_FSIZE; mezo ignores SIGXFSZ, so a write past it fails with EFBIG as a full disk
/// fails with ENOSPC), which is empty with a tmpfs.
fn on_small_disk(dir: &Path, kib: usize, limited: &str, then: &str) -> Output {
    std::fs::create_dir_all(dir).unwrap();
    let mut cmd = if tmpfs_available() {
        let mut cmd = unshare();
        cmd.args(["sh", "-c"]).arg(format!(
            "mount -t tmpfs -o size={kib}k tmpfs \"$D\" || exit 97; sh -c \"$LIMITED\"; \
             mount -o remount,size=64m \"$D\"; sh -c \"$THEN\""
        ));
        cmd
    } else {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sh -c \"$LIMITED\"; sh -c \"$THEN\""]);
        cmd.env("LIMIT", format!("prlimit --fsize={}", kib * 1024));
        cmd
    };
    cmd.env("D", dir).env("LIMITED", limited).env("THEN", then);
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1").env_remove("RUST_LOG");
    let output = cmd.output().unwrap();
    assert_ne!(output.status.code(), Some(97), "mounting the tmpfs failed: {}", stderr(&output));
    output
}

#[test]
fn a_full_disk_never_yields_a_final_kernel_file_and_ends_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let split = demo_split(dir.path(), 16, 42);
    let disk = dir.path().join("disk");
    let model = repo("tests/fixtures/models/roberta");
    for ranks in [1usize, 2] {
        let launcher = if ranks == 1 {
            String::new()
        } else {
            format!("timeout 120 mpirun --oversubscribe -np {ranks} ")
        };
        let command = format!(
            "{launcher}$LIMIT {MEZO} -q kernel --task sst-2 --model '{}' --data-dir '{}' --out \"$D/k.h5\" --row-block 2; \
             echo \"status=$?\"; ls -a \"$D\" | sed 's/^/left: /'",
            model.display(),
            split.display(),
        );
        let start = Instant::now();
        let output = on_small_disk(&disk, 96, &command, "");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let err = stderr(&output);
        assert!(start.elapsed() < Duration::from_secs(100), "{ranks} rank(s): did not end promptly: {err}");
        assert!(stdout.contains("status=1"), "{ranks} rank(s): not exit 1 on a full disk: {stdout}{err}");
        assert!(
            NO_ROOM.iter().any(|m| err.contains(m)),
            "{ranks} rank(s): no OS error in the message: {err}"
        );
        assert!(!stdout.lines().any(|l| l == "left: k.h5"), "{ranks} rank(s): a final-named file: {stdout}");
        assert!(err.contains("k.h5"), "{ranks} rank(s): the message does not name the file: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn a_full_disk_leaves_a_run_that_resumes_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    let (split, whole) = finished_run(dir.path());
    let disk = dir.path().join("disk");
    let kept = dir.path().join("kept");
    // Room for the run's logs but not for its saved model; then room again, and resume.
    let args: Vec<String> =
        train_args(&split, &[]).iter().map(|a| format!("'{}'", a.to_string_lossy())).collect();
    let train = format!("{MEZO} {}", args.join(" "));
    let limited =
        format!("$LIMIT {train} --out \"$D/run\"; echo \"first=$?\"; ls -a \"$D/run\" | sed 's/^/left: /'");
    let then = format!(
        "{train} --resume \"$D/run\" >/dev/null; echo \"second=$?\"; cp -r \"$D/run\" '{}'",
        kept.display()
    );
    let output = on_small_disk(&disk, 160, &limited, &then);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let err = stderr(&output);
    assert!(stdout.contains("first=1"), "{stdout}{err}");
    assert!(NO_ROOM.iter().any(|m| err.contains(m)) && err.contains("model"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for name in ["results.json", "model", "model.partial"] {
        assert!(
            !stdout.lines().any(|l| l == format!("left: {name}")),
            "{name} left on a full disk: {stdout}"
        );
    }
    assert!(stdout.contains("second=0"), "{stdout}{err}");
    assert_eq!(read(&kept.join("results.json")), read(&whole.join("results.json")));
    assert_eq!(weights(&kept), weights(&whole));
}

#[test]
fn gather_stops_at_a_damaged_results_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_, whole) = finished_run(dir.path());
    ok(mezo().args(["-q", "gather"]).arg(dir.path()).output().unwrap());
    std::fs::write(whole.join("results.json"), "{\"best_step\": 4, \"best_d").unwrap();
    refused(mezo().args(["-q", "gather"]).arg(dir.path()).output().unwrap(), "damaged results file");
}

#[test]
fn two_rank_training_refuses_a_locked_directory_on_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let split = demo_split(dir.path(), 16, 42);
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let lock = mezo::fsio::Lock::try_acquire(&run.join(".lock")).unwrap().expect("free");
    let output = mpirun(2).args(train_args(&split, &[])).arg("--out").arg(&run).output().unwrap();
    drop(lock);
    refused(output, "another mezo process");
}

#[test]
fn checkpoints_with_non_finite_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let split = demo_split(dir.path(), 4, 42);
    let (source, model) = (repo("tests/fixtures/models/roberta"), copy_test_model(dir.path()));
    let mut tensors = tch::Tensor::read_safetensors(source.join("model.safetensors")).unwrap();
    let (name, t) =
        tensors.iter_mut().find(|(n, _)| n.contains("layer.0.attention.self.query.weight")).unwrap();
    let _ = t.get(0).get(0).fill_(f64::NAN);
    let name = name.clone();
    tch::Tensor::write_safetensors(&tensors, model.join("model.safetensors")).unwrap();
    let output = mezo()
        .args(["-q", "eval", "--task", "sst-2", "--model"])
        .arg(&model)
        .arg("--data-dir")
        .arg(&split)
        .output()
        .unwrap();
    refused(output, &format!("tensor {name} holds NaN"));
}

#[test]
fn output_paths_that_cannot_be_written_are_input_errors_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let split = demo_split(dir.path(), 4, 42);
    let eval = |out: &Path| {
        mezo()
            .args(["-q", "eval", "--task", "sst-2", "--model"])
            .arg(repo("tests/fixtures/models/roberta"))
            .arg("--data-dir")
            .arg(&split)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    refused(eval(&dir.path().join("no/such/dir/r.json")), "does not exist");
    refused(eval(dir.path()), "is a directory");
    let kernels = dir.path().join("k.h5");
    ok(kernel(1, &split, &kernels, &[]));
    let solve = mezo().args(["-q", "solve", "--kernels"]).arg(&kernels).arg("--out").arg(dir.path()).output();
    refused(solve.unwrap(), "is a directory");
    assert!(!mezo::h5::partial_path(dir.path()).exists());

    // A directory nobody may write, root included: immutable (a read-only file system takes the
    // same path through access(2)).
    let locked = dir.path().join("locked");
    std::fs::create_dir_all(&locked).unwrap();
    let chattr =
        |flag: &str| Command::new("chattr").arg(flag).arg(&locked).status().is_ok_and(|s| s.success());
    assert!(chattr("+i"), "chattr +i failed on {}", locked.display());
    let output = kernel(1, &split, &locked.join("k.h5"), &[]);
    chattr("-i");
    refused(output, "not writable");
}

#[test]
fn kernel_resume_refuses_other_weights_under_the_same_path() {
    let dir = tempfile::tempdir().unwrap();
    let split = demo_split(dir.path(), 4, 42);
    let (source, model) = (repo("tests/fixtures/models/roberta"), copy_test_model(dir.path()));
    let out = dir.path().join("k.h5");
    let run = |env: Option<&str>| {
        let mut cmd = mezo();
        cmd.args(["-q", "kernel", "--task", "sst-2", "--row-block", "1", "--model"])
            .arg(&model)
            .arg("--data-dir")
            .arg(&split)
            .arg("--out")
            .arg(&out);
        if let Some(blocks) = env {
            cmd.env("MEZO_TEST_CRASH_AFTER_BLOCKS", blocks);
        }
        cmd.output().unwrap()
    };
    assert!(!run(Some("2")).status.success());
    let mut tensors = tch::Tensor::read_safetensors(source.join("model.safetensors")).unwrap();
    let (_, t) = tensors.iter_mut().find(|(n, _)| n.contains("layer.1.output.dense.weight")).unwrap();
    let _ = t.get(0).get(0).fill_(0.125);
    tch::Tensor::write_safetensors(&tensors, model.join("model.safetensors")).unwrap();
    refused(run(None), "model_fingerprint");
}

#[test]
fn kernels_of_strings_and_unclosed_mappings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.h5");
    {
        let file = hdf5::File::create(&path).unwrap();
        let text: hdf5::types::VarLenUnicode = "x".parse().unwrap();
        for split in ["train", "dev", "test"] {
            let values = ndarray::Array4::from_elem((1, 1, 1, 1), text.clone());
            file.new_dataset_builder().with_data(&values).create(split).unwrap();
            file.new_dataset::<i64>().shape([1]).create(format!("{split}_labels").as_str()).unwrap();
        }
        let task: hdf5::types::VarLenUnicode = "sst-2".parse().unwrap();
        file.new_attr::<hdf5::types::VarLenUnicode>().create("task").unwrap().write_scalar(&task).unwrap();
    }
    let out = dir.path().join("r.json");
    let solve = mezo().args(["-q", "solve", "--kernels"]).arg(&path).arg("--out").arg(&out).output().unwrap();
    refused(solve, "dataset 'train' does not hold floating-point numbers");

    let split = demo_split(dir.path(), 4, 42);
    let encode = mezo()
        .args(["-q", "encode", "--task", "sst-2", "--mapping", "{'0':'terrible','1':'great'", "--model"])
        .arg(repo("tests/fixtures/models/roberta"))
        .arg("--data-dir")
        .arg(&split)
        .output()
        .unwrap();
    refused(encode, "--mapping");
}
