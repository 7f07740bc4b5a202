//! `mezo eval` on the fixture models and the built-in demo task: one process and two MPI ranks
//! give the same metrics, and the metrics are those of the model's own scores.

use std::path::Path;

mod common;
use common::{demo_split, mpirun, repo};

fn eval(ranks: usize, model: &str, split: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut cmd = mpirun(ranks);
    cmd.args(["eval", "--task", "sst-2", "--batch-size", "7"])
        .arg("--model")
        .arg(repo("tests/fixtures/models").join(model))
        .arg("--data-dir")
        .arg(split)
        .arg("--out")
        .arg(out)
        .args(extra);
    let output = cmd.output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

#[test]
fn one_and_two_ranks_agree() {
    let dir = tempfile::tempdir().unwrap();
    let split = demo_split(dir.path(), 16, 42);
    let demo: &[&str] = &["--few-shot-type", "prompt-demo", "--num-sample", "3", "--max-seq-length", "256"];
    for (model, extra) in [("qwen2", &[][..]), ("roberta", demo), ("opt", &[][..])] {
        let one = eval(1, model, &split, &dir.path().join("one.json"), extra);
        let two = eval(2, model, &split, &dir.path().join("two.json"), extra);
        assert_eq!(one["dev"], two["dev"], "{model}");
        assert_eq!(one["test"], two["test"], "{model}");
        assert_eq!(one["test_examples"], 120);
        let acc = one["test"]["eval_acc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
    }
}
