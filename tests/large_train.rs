//! `mezo train` on MeZO's large-model tasks: the dev loss of each loss (classification,
//! option LM, sequence LM) and the dev and test metrics equal a Python implementation of the
//! reference's training path (scripts/make_large_fixtures.py); MeZO runs on each objective
//! (loss, accuracy, generation F1) give one rank's numbers on two ranks; a run killed and resumed
//! ends bit-identical to an uninterrupted one; first-order training runs.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{mpirun, ok, repo, MEZO};

fn fixture(p: &str) -> PathBuf {
    repo("tests/fixtures/large").join(p)
}

/// `mezo train` arguments for `task` on the tiny `model` into `out`.
fn train_args(task: &str, model: &str, data: &Path, out: &Path, flags: &[&str]) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec!["-q".into(), "train".into(), "--task".into(), task.into()];
    args.extend(["--model".into(), fixture("models").join(model).into_os_string()]);
    args.extend(["--data-dir".into(), data.as_os_str().to_owned()]);
    args.extend(["--out".into(), out.as_os_str().to_owned()]);
    args.extend(flags.iter().map(Into::into));
    args
}

fn train(ranks: usize, task: &str, model: &str, out: &Path, flags: &[&str]) -> String {
    train_on(ranks, task, model, &fixture("data").join(task), out, flags)
}

fn train_on(ranks: usize, task: &str, model: &str, data: &Path, out: &Path, flags: &[&str]) -> String {
    let mut cmd = if ranks == 1 { Command::new(MEZO) } else { mpirun(ranks) };
    ok(cmd.env_remove("RUST_LOG").args(train_args(task, model, data, out, flags)).output().unwrap())
}

/// The fixture's SQuAD train rows, answered by the tiny OPT's own greedy generations (as both
/// splits): with random weights no fixture answer overlaps a generation, so F1 would be 0 on
/// every side of every direction; against its own answers, a perturbation changes it.
fn squad_answered_by_the_model(dir: &Path) -> PathBuf {
    let data = dir.join("squad-generated");
    std::fs::create_dir_all(&data).unwrap();
    let rows = std::fs::read_to_string(fixture("data/SQuAD/train.jsonl")).unwrap();
    for split in ["train", "validation"] {
        std::fs::write(data.join(format!("{split}.jsonl")), &rows).unwrap();
    }
    let predictions = dir.join("squad-generated.jsonl");
    ok(Command::new(MEZO)
        .args(["-q", "eval", "--task", "SQuAD", "--train-set-seed", "0", "--max-new-tokens", "4", "--model"])
        .arg(fixture("models/opt"))
        .arg("--data-dir")
        .arg(&data)
        .arg("--predictions")
        .arg(&predictions)
        .output()
        .unwrap());
    let generated: std::collections::HashMap<u64, String> = std::fs::read_to_string(&predictions)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|p| (p["id"].as_u64().unwrap(), p["prediction"].as_str().unwrap().to_string()))
        .collect();
    let answered: String = rows
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let mut row: Value = serde_json::from_str(line).unwrap();
            if !generated[&(i as u64)].is_empty() {
                row["answers"]["text"] = serde_json::json!([generated[&(i as u64)]]);
            }
            row.to_string() + "\n"
        })
        .collect();
    for split in ["train", "validation"] {
        std::fs::write(data.join(format!("{split}.jsonl")), &answered).unwrap();
    }
    data
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn trajectory(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("trajectory.jsonl"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn close(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance * a.abs().max(b.abs()).max(1.0)
}

/// With learning rate 0 the weights never move: the dev loss and the dev and test metrics are the
/// untrained model's, which the fixture script computed as the reference does.
#[test]
fn dev_losses_and_metrics_match_the_reference() {
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected_train.json")).unwrap()).unwrap();
    assert_eq!(cases.len(), 6);
    let dir = tempfile::tempdir().unwrap();
    for (i, case) in cases.iter().enumerate() {
        let task = case["task"].as_str().unwrap();
        let model = case["model"].as_str().unwrap();
        let mut flags: Vec<&str> =
            case["flags"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
        flags.extend(["--steps", "1", "--lr", "0", "--batch-size", "2", "--eval-every", "1"]);
        let out = dir.path().join(i.to_string());
        train(1, task, model, &out, &flags);
        let results = json(&out.join("results.json"));
        let metric = if matches!(task, "SQuAD" | "DROP") { "eval_f1" } else { "eval_accuracy" };
        let (loss, want) =
            (results["best_dev"]["eval_loss"].as_f64().unwrap(), case["eval_loss"].as_f64().unwrap());
        assert!(close(loss, want, 1e-5), "{task} {flags:?}: dev loss {loss}, reference {want}");
        assert_eq!(results["best_dev"][metric].as_f64(), case["dev_metric"].as_f64(), "{task}: dev {metric}");
        assert_eq!(results["test"][metric].as_f64(), case["test_metric"].as_f64(), "{task}: test {metric}");
    }
}

/// Per step, the seed, projected gradient and objective (ℓ+, NaN where the metrics log has no
/// line for the step: a run killed between its trajectory line and its metrics line) of a run,
/// and its results.
fn outcome(run: &Path) -> (Vec<(u64, f64, f64)>, Value) {
    let losses: std::collections::HashMap<u64, f64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter_map(|v| Some((v["step"].as_u64()?, v["loss"].as_f64()?)))
        .collect();
    let steps = trajectory(run)
        .iter()
        .map(|s| {
            let step = s["step"].as_u64().unwrap();
            let loss = losses.get(&step).copied().unwrap_or(f64::NAN);
            (s["seed"].as_u64().unwrap(), s["projected_grad"].as_f64().unwrap(), loss)
        })
        .collect();
    (steps, json(&run.join("results.json")))
}

#[test]
fn mezo_on_each_objective_two_ranks_match_one() {
    let dir = tempfile::tempdir().unwrap();
    let squad = squad_answered_by_the_model(dir.path());
    let common =
        ["--steps", "3", "--batch-size", "4", "--eval-every", "2", "--lr", "1e-3", "--num-eval", "3"];
    let cases: [(&str, PathBuf, f64, &[&str]); 4] = [
        (
            "BoolQ",
            fixture("data/BoolQ"),
            1e-3,
            &["--train-as-classification", "--num-train", "8", "--num-dev", "3"],
        ),
        (
            "RTE",
            fixture("data/RTE"),
            0.3,
            &["--train-as-classification", "--objective", "accuracy", "--num-train", "8", "--num-dev", "3"],
        ),
        (
            "Copa",
            fixture("data/Copa"),
            1e-3,
            &["--num-train", "8", "--num-dev", "3", "--select-by", "metric"],
        ),
        (
            "SQuAD",
            squad,
            3e-2,
            &[
                "--objective",
                "f1",
                "--no-paired-pass",
                "--num-train",
                "8",
                "--num-dev",
                "2",
                "--max-new-tokens",
                "4",
            ],
        ),
    ];
    for (task, data, eps, extra) in cases {
        let eps_flag = eps.to_string();
        let flags: Vec<&str> =
            common.iter().chain(extra).copied().chain(["--eps", eps_flag.as_str()]).collect();
        let one = dir.path().join(format!("{task}-1"));
        let two = dir.path().join(format!("{task}-2"));
        train_on(1, task, "opt", &data, &one, &flags);
        train_on(2, task, "opt", &data, &two, &flags);
        let (a, results_a) = outcome(&one);
        let (b, results_b) = outcome(&two);
        assert_eq!(a.len(), 3, "{task}: three steps");
        for ((seed_a, g_a, loss_a), (seed_b, g_b, loss_b)) in a.iter().zip(&b) {
            assert_eq!(seed_a, seed_b, "{task}");
            // Each rank pads its share to its own width and ranks' sums are added in another
            // order: f32 rounding of the losses, which g divides by 2ε.
            assert!(
                close(*loss_a, *loss_b, 1e-5),
                "{task}: objective {loss_a} (1 rank) and {loss_b} (2 ranks)"
            );
            let tolerance = 1e-5 * loss_a.abs().max(1.0) / eps;
            assert!(
                (g_a - g_b).abs() <= tolerance,
                "{task}: projected gradients {g_a} (1 rank) and {g_b} (2 ranks)"
            );
        }
        assert!(a.iter().any(|s| s.1 != 0.0), "{task}: the objective never changed");
        for key in ["best_dev", "test"] {
            let (x, y) = (results_a[key].as_object().unwrap(), results_b[key].as_object().unwrap());
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>(), "{task} {key}");
            for (k, v) in x {
                let (v, w) = (v.as_f64().unwrap(), y[k].as_f64().unwrap());
                assert!(close(v, w, 1e-4), "{task} {key} {k}: {v} (1 rank) vs {w} (2 ranks)");
            }
        }
    }
}

#[test]
fn killed_and_resumed_run_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--train-as-classification",
        "--num-train",
        "10",
        "--num-dev",
        "3",
        "--num-eval",
        "3",
        "--steps",
        "400",
        "--batch-size",
        "2",
        "--eval-every",
        "100",
        "--lr",
        "1e-3",
        "--save-model",
    ];
    let whole = dir.path().join("whole");
    train(1, "BoolQ", "opt", &whole, &flags);
    let killed = dir.path().join("killed");
    let mut child = Command::new(MEZO)
        .env_remove("RUST_LOG")
        .args(train_args("BoolQ", "opt", &fixture("data/BoolQ"), &killed, &flags))
        .spawn()
        .unwrap();
    let start = Instant::now();
    while trajectory(&killed).len() < 150 && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let reached = trajectory(&killed).len();
    assert!((150..400).contains(&reached), "killed after {reached} steps");
    train(1, "BoolQ", "opt", &killed, &flags);
    let weights = |run: &Path| std::fs::read(run.join("model/model.safetensors")).unwrap();
    assert!(
        weights(&whole) == weights(&killed),
        "final weights differ after kill and resume at step {reached}"
    );
    let ((a, results_a), (b, results_b)) = (outcome(&whole), outcome(&killed));
    assert_eq!(results_a, results_b);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.0, x.1), (y.0, y.1));
        assert!(y.2.is_nan() || x.2 == y.2, "objective {} and {} after the resume", x.2, y.2);
    }
}

#[test]
fn first_order_training_learns_on_two_ranks_as_on_one() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--optimizer",
        "adam",
        "--num-train",
        "8",
        "--num-dev",
        "3",
        "--num-eval",
        "3",
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--eval-every",
        "4",
        "--lr",
        "1e-3",
    ];
    let (one, two) = (dir.path().join("1"), dir.path().join("2"));
    train(1, "Copa", "opt", &one, &flags);
    train(2, "Copa", "opt", &two, &flags);
    let losses = |run: &Path| -> Vec<f64> {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).unwrap()["loss"].as_f64())
            .collect()
    };
    let (a, b) = (losses(&one), losses(&two));
    assert_eq!(a.len(), 4);
    assert!(a[3] < a[0], "Adam on the option loss does not learn: {a:?}");
    for (x, y) in a.iter().zip(&b) {
        assert!(close(*x, *y, 1e-4), "losses {a:?} (1 rank) and {b:?} (2 ranks)");
    }
}

#[test]
fn large_task_flags_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let refused: [(&str, &[&str], &str); 6] = [
        (
            "BoolQ",
            &["--objective", "f1", "--num-train", "4"],
            "--objective f1 is the F1 of generated answers",
        ),
        ("SQuAD", &["--objective", "f1", "--num-train", "4"], "--no-paired-pass"),
        ("Copa", &["--objective", "accuracy", "--num-train", "4"], "--train-as-classification"),
        ("Copa", &["--num-train-sets", "2", "--num-train", "4"], "--num-train-sets"),
        ("Copa", &["--steps", "2"], "--num-train"),
        ("Copa", &["--num-train", "4", "--num-dev", "0"], "leaves none to train on"),
    ];
    for (task, flags, message) in refused {
        let output = Command::new(MEZO)
            .args(train_args(task, "opt", &fixture("data").join(task), &out, flags))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{task} {flags:?}: {stderr}");
        assert!(stderr.contains(message), "{task} {flags:?}: {stderr}");
        assert!(!out.exists(), "a refused run leaves no directory");
    }
    let output = Command::new(MEZO)
        .args(["train", "--task", "sst-2", "--train-as-classification", "--out"])
        .arg(&out)
        .arg("--model")
        .arg(repo("tests/fixtures/models/roberta"))
        .arg("--data-dir")
        .arg(repo("tests/fixtures"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("--train-as-classification is for MeZO's large-model tasks"));
}

/// `mezo linearhead` on a large-model task against the reference's linear probing with
/// transformers features and scikit-learn (fit without intercept, classes the option tokens):
/// the same classes and C, coefficients within f32 feature rounding, the same dev and test
/// metrics with the probe written into the LM head; two ranks give one rank's probe.
#[test]
fn linear_probe_matches_the_reference() {
    let cases: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture("expected_lp.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for case in &cases {
        let task = case["task"].as_str().unwrap();
        let flags: Vec<&str> =
            case["flags"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
        let mut reports = Vec::new();
        for ranks in [1, 2] {
            let out = dir.path().join(format!("{task}-{ranks}"));
            let mut cmd = if ranks == 1 { Command::new(MEZO) } else { mpirun(ranks) };
            ok(cmd
                .env_remove("RUST_LOG")
                .args(["-q", "linearhead", "--task", task, "--model"])
                .arg(fixture("models/opt"))
                .arg("--data-dir")
                .arg(fixture("data").join(task))
                .arg("--out")
                .arg(&out)
                .args(&flags)
                .output()
                .unwrap());
            assert!(
                out.join("model.safetensors").exists() || out.join("model.safetensors.index.json").exists()
            );
            reports.push(json(&out.join("linearhead.json")));
        }
        let report = &reports[0];
        assert_eq!(report["class_tokens"], case["classes"], "{task}: classes");
        assert_eq!(report["option_tokens"].as_u64(), case["rows"].as_u64(), "{task}: rows");
        assert_eq!(report["c"].as_f64(), case["c"].as_f64(), "{task}: chosen C");
        let rows = |v: &Value| -> Vec<f64> {
            v.as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
                .collect()
        };
        let (ours, theirs) = (rows(&report["coef"]), rows(&case["coef"]));
        assert_eq!(ours.len(), theirs.len(), "{task}: coef_ shape");
        let scale = theirs.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let worst = ours.iter().zip(&theirs).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst <= 1e-3 * scale, "{task}: coef_ differs by {worst} (largest {scale})");
        assert!(
            report["intercept"].as_array().unwrap().iter().all(|b| b.as_f64() == Some(0.0)),
            "{task}: intercept"
        );
        assert_eq!(
            report["dev"]["eval_accuracy"].as_f64(),
            case["dev_metric"].as_f64(),
            "{task}: dev accuracy"
        );
        assert_eq!(
            report["test"]["eval_accuracy"].as_f64(),
            case["test_metric"].as_f64(),
            "{task}: test accuracy"
        );
        assert_eq!(reports[1]["c"], report["c"], "{task}: 2 ranks");
        let two = rows(&reports[1]["coef"]);
        assert!(two.iter().zip(&ours).all(|(a, b)| (a - b).abs() <= 1e-6 * scale), "{task}: 2 ranks' coef_");
    }
}

/// `mezo gather` over a grid of large-task runs: grouped by everything but the seeds and the grid
/// keys, each train set's best dev accuracy kept, test reported by the task's metric.
#[test]
fn gather_reads_large_task_runs() {
    let dir = tempfile::tempdir().unwrap();
    for set in ["0", "1"] {
        for lr in ["1e-3", "1e-2"] {
            let out = dir.path().join(format!("set{set}-lr{lr}"));
            let flags = [
                "--train-as-classification",
                "--num-train",
                "6",
                "--num-dev",
                "3",
                "--num-eval",
                "4",
                "--steps",
                "2",
                "--batch-size",
                "2",
                "--eval-every",
                "1",
                "--train-set-seed",
                set,
                "--lr",
                lr,
            ];
            train(1, "BoolQ", "opt", &out, &flags);
        }
    }
    let output = ok(Command::new(MEZO).args(["-q", "gather", "--json"]).arg(dir.path()).output().unwrap());
    let groups: Value = serde_json::from_str(&output).unwrap();
    let groups = groups.as_array().unwrap();
    assert_eq!(groups.len(), 1, "{output}");
    let group = &groups[0];
    assert_eq!(group["selection_metric"], "eval_accuracy");
    let seeds = group["seeds"].as_array().unwrap();
    assert_eq!(seeds.len(), 2, "one result per train set: {output}");
    let mut tests = Vec::new();
    for seed in seeds {
        assert_eq!(seed["runs"], 2);
        let best = Path::new(seed["best_run"].as_str().unwrap());
        let results = json(best);
        assert_eq!(seed["dev"], results["best_dev"]["eval_accuracy"]);
        tests.push(results["test"]["eval_accuracy"].as_f64().unwrap());
    }
    let mean = group["test_mean"]["eval_accuracy"].as_f64().unwrap();
    assert!((mean - (tests[0] + tests[1]) / 2.0).abs() < 1e-12);
}

/// `--script` fills the flags not given with MeZO's mezo.sh settings (per task and mode) and
/// leaves the given ones alone.
#[test]
fn script_preset_fills_the_flags_not_given() {
    let dir = tempfile::tempdir().unwrap();
    let given =
        ["--num-train", "8", "--num-dev", "3", "--num-eval", "3", "--steps", "2", "--eval-every", "2"];
    let cases: [(&str, &str, &str, Value); 3] = [
        ("BoolQ", "mezo", "Classification", Value::Null),
        ("Copa", "mezo-prefix", "Option", serde_json::json!(5)),
        ("SST2", "mezo-lora", "Classification", Value::Null),
    ];
    for (task, script, loss, prefix) in cases {
        let out = dir.path().join(script);
        let flags: Vec<&str> = given.iter().copied().chain(["--script", script]).collect();
        train(1, task, "opt", &out, &flags);
        let config = json(&out.join("config.json"));
        let train = &config["train"];
        assert_eq!(
            (train["steps"].as_u64(), train["eval_every"].as_u64()),
            (Some(2), Some(2)),
            "given flags stay"
        );
        assert_eq!((train["lr"].as_f64(), train["eps"].as_f64()), (Some(1e-5), Some(1e-3)), "{script}");
        assert_eq!(
            (train["batch_size"].as_u64(), train["lr_schedule"].as_str()),
            (Some(16), Some("Constant"))
        );
        assert_eq!(config["load"]["dtype"], "F16");
        assert_eq!(config["load"]["num_prefix"], prefix, "{script}");
        assert_eq!(config["load"]["lora"]["rank"].as_i64(), (script == "mezo-lora").then_some(8), "{script}");
        assert_eq!(config["data"]["large"]["loss"], loss, "{task}");
        assert_eq!(config["data"]["large"]["sampling"]["train_set_seed"], 0);
    }
}
