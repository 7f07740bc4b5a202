//! `mezo eval` on the fixture models and the built-in demo task: one process and two MPI ranks
//! give the same metrics, and the metrics are those of the model's own scores.

use std::path::{Path, PathBuf};
use std::process::Command;

const MEZO: &str = env!("CARGO_BIN_EXE_mezo");

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn split(out: &Path) -> PathBuf {
    let status = Command::new(MEZO)
        .args(["-q", "kshot", "--task", "SST-2", "--k", "16", "--seed", "42", "--mode", "k-shot-1k-test"])
        .arg("--data-dir")
        .arg(repo("data/demo/original"))
        .arg("--out")
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success());
    out.join("k-shot-1k-test/SST-2/16-42")
}

fn eval(ranks: usize, model: &str, split: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new("mpirun");
    cmd.args([
        "--oversubscribe",
        "-np",
        &ranks.to_string(),
        MEZO,
        "eval",
        "--task",
        "sst-2",
        "--batch-size",
        "7",
    ])
    .arg("--model")
    .arg(repo("tests/fixtures/models").join(model))
    .arg("--data-dir")
    .arg(split)
    .arg("--out")
    .arg(out)
    .args(extra)
    .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    let output = cmd.output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

#[test]
fn one_and_two_ranks_agree() {
    let dir = tempfile::tempdir().unwrap();
    let split = split(dir.path());
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
