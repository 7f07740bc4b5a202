//! `mezo eval` on MeZO's large-model tasks against a Python implementation of the reference
//! (scripts/make_large_fixtures.py): the same test examples in the same order, per-candidate
//! scores within 1e-5, identical predictions and generations, the same metric; JSON lines and
//! Parquet give identical files; two ranks give one rank's predictions; bad rows fail with exit
//! 2 naming the file and row.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

mod common;
use common::{mpirun, repo, MEZO};

fn fixture(p: &str) -> std::path::PathBuf {
    repo("tests/fixtures/large").join(p)
}

/// `mezo eval` of a large-model task; returns (exit status, stderr).
fn eval(
    cmd: &mut Command,
    task: &str,
    model: &str,
    data: &Path,
    flags: &[String],
    out: &Path,
) -> (bool, String) {
    let output = cmd
        .args(["-q", "eval", "--task", task])
        .arg("--model")
        .arg(fixture("models").join(model))
        .arg("--data-dir")
        .arg(data)
        .arg("--out")
        .arg(out.join("results.json"))
        .arg("--predictions")
        .arg(out.join("predictions.jsonl"))
        .args(flags)
        .output()
        .unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn predictions(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("predictions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn cases() -> Vec<Value> {
    serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap()
}

fn flags(case: &Value) -> Vec<String> {
    case["flags"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect()
}

#[test]
fn scores_predictions_and_generations_match_the_reference() {
    for case in cases() {
        let task = case["task"].as_str().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let what = format!("{} {} {:?}", case["model"], task, flags(&case));
        let (ok, stderr) = eval(
            &mut Command::new(MEZO),
            task,
            case["model"].as_str().unwrap(),
            &fixture("data").join(task),
            &flags(&case),
            dir.path(),
        );
        assert!(ok, "{what}: {stderr}");
        let ours = predictions(dir.path());
        let expected = case["predictions"].as_array().unwrap();
        assert_eq!(ours.len(), expected.len(), "{what}");
        for (o, e) in ours.iter().zip(expected) {
            assert_eq!(o["id"], e["id"], "{what}: test examples differ");
            assert_eq!(o["gold"], e["gold"], "{what}");
            assert_eq!(o["prediction"], e["prediction"], "{what}: example {}", e["id"]);
            if let Some(candidates) = e.get("candidates") {
                assert_eq!(&o["candidates"], candidates, "{what}");
            }
            let (os, es) = (o["scores"].as_array().unwrap(), e["scores"].as_array().unwrap());
            assert_eq!(os.len(), es.len(), "{what}");
            for (a, b) in os.iter().zip(es) {
                let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                // 1e-5 of the score's size: calibrated scores are sums over tokens of values in the
                // tens, where the sum order of a batched forward pass shows in the sixth digit.
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{what}: example {}: score {a} vs {b}",
                    e["id"]
                );
            }
        }
        let results: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json")).unwrap()).unwrap();
        let metric = if matches!(task, "SQuAD" | "DROP") { "f1" } else { "accuracy" };
        let ours = results[metric].as_f64().unwrap();
        assert!(
            (ours - case["metric"].as_f64().unwrap()).abs() < 1e-12,
            "{what}: {metric} {ours} vs {}",
            case["metric"]
        );
    }
}

#[test]
fn parquet_shards_and_json_lines_give_identical_predictions() {
    for task in ["Copa", "ReCoRD", "SQuAD", "BoolQ"] {
        let (json, parquet) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let flags: Vec<String> = ["--num-train", "1", "--train-set-seed", "0", "--max-new-tokens", "4"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (ok, err) =
            eval(&mut Command::new(MEZO), task, "opt", &fixture("data").join(task), &flags, json.path());
        assert!(ok, "{err}");
        let (ok, err) = eval(
            &mut Command::new(MEZO),
            task,
            "opt",
            &fixture("parquet").join(task),
            &flags,
            parquet.path(),
        );
        assert!(ok, "{err}");
        assert_eq!(
            std::fs::read(json.path().join("predictions.jsonl")).unwrap(),
            std::fs::read(parquet.path().join("predictions.jsonl")).unwrap(),
            "{task}"
        );
    }
}

#[test]
fn two_ranks_predict_as_one() {
    for (task, model) in [("MultiRC", "opt"), ("DROP", "opt"), ("Copa", "llama")] {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let flags: Vec<String> = ["--num-train", "1", "--train-set-seed", "1", "--max-new-tokens", "5"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let data = fixture("data").join(task);
        let (ok, err) = eval(&mut Command::new(MEZO), task, model, &data, &flags, one.path());
        assert!(ok, "{err}");
        let (ok, err) = eval(&mut mpirun(2), task, model, &data, &flags, two.path());
        assert!(ok, "{err}");
        let (a, b) = (predictions(one.path()), predictions(two.path()));
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x["id"], y["id"]);
            assert_eq!(x["prediction"], y["prediction"], "{task}");
            for (s, t) in x["scores"].as_array().unwrap().iter().zip(y["scores"].as_array().unwrap()) {
                let (s, t) = (s.as_f64().unwrap(), t.as_f64().unwrap());
                assert!((s - t).abs() <= 1e-5 * t.abs().max(1.0), "{task}: {s} vs {t}");
            }
        }
        assert_eq!(
            std::fs::read_to_string(one.path().join("results.json")).unwrap(),
            std::fs::read_to_string(two.path().join("results.json")).unwrap()
        );
    }
}

/// A copy of a task's JSON-lines data with `line` of `split` replaced.
fn damaged(task: &str, split: &str, line: usize, replace: impl Fn(&str) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for s in ["train", "validation"] {
        let text = std::fs::read_to_string(fixture("data").join(task).join(format!("{s}.jsonl"))).unwrap();
        let lines: Vec<String> = text
            .lines()
            .enumerate()
            .map(|(i, l)| if s == split && i + 1 == line { replace(l) } else { l.to_string() })
            .collect();
        std::fs::write(dir.path().join(format!("{s}.jsonl")), lines.join("\n") + "\n").unwrap();
    }
    dir
}

#[test]
fn bad_rows_are_errors_naming_file_and_row() {
    let set = |l: &str, key: &str, value: Value| {
        let mut v: Value = serde_json::from_str(l).unwrap();
        v[key] = value;
        v.to_string()
    };
    let drop_key = |l: &str, key: &str| {
        let mut v: Value = serde_json::from_str(l).unwrap();
        v.as_object_mut().unwrap().remove(key);
        v.to_string()
    };
    type Damage<'a> = Box<dyn Fn(&str) -> String + 'a>;
    let cases: Vec<(&str, &str, usize, Damage, &str)> = vec![
        (
            "RTE",
            "validation",
            3,
            Box::new(|l| drop_key(l, "premise")),
            "validation.jsonl line 3: no field premise",
        ),
        (
            "CB",
            "train",
            2,
            Box::new(move |l| set(l, "label", Value::from(7))),
            "train.jsonl line 2: label 7 is not one of the 3 classes",
        ),
        (
            "SST2",
            "validation",
            1,
            Box::new(move |l| set(l, "sentence", Value::from(5))),
            "validation.jsonl line 1: field sentence is 5, not a string",
        ),
        (
            "BoolQ",
            "train",
            4,
            Box::new(move |l| set(l, "answer", Value::from("yes"))),
            "train.jsonl line 4: field answer is \"yes\", not true/false",
        ),
        (
            "Copa",
            "validation",
            2,
            Box::new(move |l| set(l, "question", Value::from("why"))),
            "line 2: field question is \"why\"",
        ),
        (
            "ReCoRD",
            "validation",
            5,
            Box::new(move |l| set(l, "answers", serde_json::json!(["Nobody"]))),
            "line 5: answer \"Nobody\" is not one of the entities",
        ),
        (
            "SQuAD",
            "train",
            6,
            Box::new(move |l| set(l, "answers", serde_json::json!({"text": []}))),
            "line 6: field answers.text is empty",
        ),
        ("DROP", "validation", 1, Box::new(|_| "{not json".to_string()), "validation.jsonl line 1: not JSON"),
        (
            "WIC",
            "train",
            1,
            Box::new(|_| "[1, 2]".to_string()),
            "train.jsonl line 1: a list where a JSON object belongs",
        ),
    ];
    for (task, split, line, replace, message) in cases {
        let data = damaged(task, split, line, replace);
        let out = tempfile::tempdir().unwrap();
        let output = Command::new(MEZO)
            .args(["-q", "eval", "--task", task, "--train-set-seed", "0"])
            .arg("--model")
            .arg(fixture("models/opt"))
            .arg("--data-dir")
            .arg(data.path())
            .arg("--out")
            .arg(out.path().join("r.json"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{task}: {stderr}");
        assert!(stderr.contains(message), "{task}: expected {message:?} in {stderr}");
        assert!(!out.path().join("r.json").exists(), "{task}: no results after an error");
    }
    // A directory without the splits, and flags of the other kind of task.
    let empty = tempfile::tempdir().unwrap();
    let output = Command::new(MEZO)
        .args(["-q", "eval", "--task", "BoolQ"])
        .arg("--model")
        .arg(fixture("models/opt"))
        .arg("--data-dir")
        .arg(empty.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no train split"));
    for (extra, message) in [
        (&["--template", "*cls*"][..], "--template is for LM-BFF tasks"),
        (&["--num-dev", "2"][..], "--num-dev is for training"),
    ] {
        let output = Command::new(MEZO)
            .args(["-q", "eval", "--task", "BoolQ"])
            .arg("--model")
            .arg(fixture("models/opt"))
            .arg("--data-dir")
            .arg(fixture("data/BoolQ"))
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&output.stderr).contains(message), "{message}");
    }
}
