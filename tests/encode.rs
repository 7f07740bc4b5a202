//! `mezo kshot` on the built-in demo task, then `mezo encode` of the split it made.

use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{demo_split, repo, MEZO};

fn encode(split: &Path, extra: &[&str]) -> Output {
    Command::new(MEZO)
        .args(["encode", "--task", "sst-2", "--json", "--limit", "100000"])
        .arg("--data-dir")
        .arg(split)
        .arg("--tokenizer")
        .arg(repo("tests/fixtures/tokenizer/tokenizer.json"))
        .args(extra)
        .output()
        .unwrap()
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn demo_task_encodes_with_prompts_and_demonstrations() {
    let dir = tempfile::tempdir().unwrap();
    let split = demo_split(dir.path(), 8, 13);
    assert_eq!(std::fs::read_to_string(split.join("train.tsv")).unwrap().lines().count(), 17);

    let dev = lines(&encode(&split, &[]));
    assert_eq!(dev.len(), 16);
    for f in &dev {
        let tokens: Vec<&str> = f["tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        let n = tokens.len();
        assert_eq!(tokens[0], "<s>");
        assert_eq!(&tokens[n - 6..], ["Ġ", "ĠIt", "Ġwas", "<mask>", ".", "</s>"]);
        assert_eq!(f["mask_pos"], n - 3);
    }

    // Demonstrations: 16 samples per test example, sample-major, each with one demo per label.
    let test = lines(&encode(
        &split,
        &["--few-shot-type", "prompt-demo", "--split", "test", "--seed", "7", "--max-seq-length", "512"],
    ));
    assert_eq!(test.len(), 120 * 16);
    assert_eq!(test[0]["example"], 0);
    assert_eq!(test[1]["example"], 1);
    assert_eq!(test[120]["example"], 0);
    let masks =
        |f: &serde_json::Value| f["tokens"].as_array().unwrap().iter().filter(|t| *t == "<mask>").count();
    assert!(test.iter().all(|f| masks(f) == 1));
    let has_both_words = |f: &serde_json::Value| {
        let t = f["tokens"].as_array().unwrap();
        t.iter().any(|t| t == "Ġterrible") && t.iter().any(|t| t == "Ġgreat")
    };
    assert!(test.iter().all(has_both_words));
    // The same seed draws the same demonstrations; another seed others.
    assert_eq!(
        test,
        lines(&encode(
            &split,
            &["--few-shot-type", "prompt-demo", "--split", "test", "--seed", "7", "--max-seq-length", "512"]
        ))
    );
    assert_ne!(
        test,
        lines(&encode(
            &split,
            &["--few-shot-type", "prompt-demo", "--split", "test", "--seed", "8", "--max-seq-length", "512"]
        ))
    );

    let finetune = lines(&encode(&split, &["--few-shot-type", "finetune", "--split", "train"]));
    assert_eq!(finetune.len(), 16);
    assert!(finetune.iter().all(|f| f["mask_pos"].is_null()));
}

#[test]
fn bad_flags_exit_2_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let split = demo_split(dir.path(), 8, 13);
    let cases: &[(&[&str], &str)] = &[
        (&["--template", "*cls**sent_0*_It_was.*sep+*"], "has no *mask*"),
        (&["--template", "*cls**+sentl-_0**mask*"], "'*+sentl-_0*' is not a sentence part"),
        (&["--mapping", "{'0':'terrible'}"], "mapping has no word for label '1'"),
        (&["--mapping", "{'0':'terrible','1':'Denverish'}"], "label word 'Denverish' must be one token"),
        (&["--mapping", "0 terrible"], "--mapping: mapping '0 terrible'"),
        (&["--max-seq-length", "6"], "mask was truncated away"),
    ];
    for (extra, message) in cases {
        let out = encode(&split, extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(message), "{extra:?}: expected {message} in {stderr}");
    }
    let out = Command::new(MEZO)
        .args(["encode", "--task", "sst2", "--tokenizer", "x", "--data-dir", "y"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--task: unknown task 'sst2'"));
}
