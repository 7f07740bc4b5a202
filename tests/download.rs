//! data/download.sh's unpacking, on archives the test makes (the real one cannot be downloaded
//! here).

use std::path::Path;
use std::process::Command;

fn archive(dir: &Path, with_glue: bool) -> std::path::PathBuf {
    let root = dir.join("src");
    for d in ["original/SST-2", "original/GLUE-SST-2", "original/cr", "original/mr"] {
        if d.ends_with("GLUE-SST-2") && !with_glue {
            continue;
        }
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("original/SST-2/train.tsv"), "sentence\tlabel\nlm-bff sentence\t1\n").unwrap();
    if with_glue {
        std::fs::write(root.join("original/GLUE-SST-2/train.tsv"), "sentence\tlabel\nglue phrase \t0\n")
            .unwrap();
    }
    std::fs::write(root.join("original/mr/train.csv"), "0,x\n").unwrap();
    // Stands in for the archive's cr/process.py: writes the number of test examples per class.
    std::fs::write(root.join("original/cr/process.py"), "open('test_per_class.txt', 'w').write(str(1000))\n")
        .unwrap();
    let tar = dir.join("datasets.tar");
    let status =
        Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(&root).arg("original").status().unwrap();
    assert!(status.success());
    tar
}

fn download(args: &[&str], tar: &Path, dest: &Path) -> std::process::Output {
    Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/download.sh"))
        .args(args)
        .arg("--tar")
        .arg(tar)
        .arg("--dest")
        .arg(dest)
        .output()
        .unwrap()
}

#[test]
fn layouts() {
    let dir = tempfile::tempdir().unwrap();
    let tar = archive(dir.path(), true);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();

    let mezo = dir.path().join("mezo");
    let out = download(&[], &tar, &mezo);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(read(&mezo.join("original/SST-2/train.tsv")).contains("glue phrase"));
    assert!(read(&mezo.join("original/SST-2-original/train.tsv")).contains("lm-bff sentence"));
    assert!(!mezo.join("original/GLUE-SST-2").exists());
    assert!(!mezo.join("original/cr/test_per_class.txt").exists());

    let lm_bff = dir.path().join("lm-bff");
    assert!(download(&["--layout", "lm-bff"], &tar, &lm_bff).status.success());
    assert!(read(&lm_bff.join("original/SST-2/train.tsv")).contains("lm-bff sentence"));
    assert!(lm_bff.join("original/GLUE-SST-2").exists());

    let kernel = dir.path().join("kernel-ft");
    let out = download(&["--layout", "kernel-ft"], &tar, &kernel);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read(&kernel.join("original/cr/test_per_class.txt")), "250");
    assert!(read(&kernel.join("original/SST-2/train.tsv")).contains("glue phrase"));

    // An existing original/ is never overwritten.
    let again = download(&[], &tar, &mezo);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
}

#[test]
fn bad_archives_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tar = archive(dir.path(), false);
    let dest = dir.path().join("dest");
    let out = download(&[], &tar, &dest);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no original/GLUE-SST-2"));
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0, "staging directory left behind");
    let out = download(&["--layout", "bogus"], &tar, &dest);
    assert_eq!(out.status.code(), Some(2));
}

/// data/download_large.sh against a local copy of the Hub's Parquet layout (a `file://` base
/// URL): the shards of each split fetched in order until the first missing one, the task
/// directory in place only when complete and read by `mezo eval`, a second run keeping it, and a
/// missing split failing with its URL and leaving nothing behind.
#[test]
fn large_task_parquet_files_from_a_hub_layout() {
    let dir = tempfile::tempdir().unwrap();
    let hub = dir.path().join("hub");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/large/parquet/Copa/data");
    let copa = hub.join("aps/super_glue/resolve/refs/convert/parquet/copa");
    for (split, shards) in [
        ("train", &["train-00000-of-00001.parquet"][..]),
        ("validation", &["validation-00000-of-00002.parquet", "validation-00001-of-00002.parquet"][..]),
    ] {
        std::fs::create_dir_all(copa.join(split)).unwrap();
        for (i, shard) in shards.iter().enumerate() {
            std::fs::copy(fixture.join(shard), copa.join(split).join(format!("{i:04}.parquet"))).unwrap();
        }
    }
    let dest = dir.path().join("large");
    let run = |tasks: &[&str]| {
        Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/download_large.sh"))
            .arg("--dest")
            .arg(&dest)
            .args(tasks)
            .env("MEZO_HF_BASE", format!("file://{}", hub.display()))
            .output()
            .unwrap()
    };
    let out = run(&["copa"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files = |split: &str| {
        let mut names: Vec<String> = std::fs::read_dir(dest.join("Copa").join(split))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    assert_eq!(files("train"), ["0000.parquet"]);
    assert_eq!(files("validation"), ["0000.parquet", "0001.parquet"]);
    let eval = Command::new(env!("CARGO_BIN_EXE_mezo"))
        .args(["-q", "eval", "--task", "Copa", "--train-set-seed", "0", "--num-eval", "3", "--model"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/large/models/opt"))
        .arg("--data-dir")
        .arg(dest.join("Copa"))
        .output()
        .unwrap();
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));

    // Kept on a second run; RTE is not in the local hub: its URL named, nothing left behind.
    let again = run(&["Copa", "RTE"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stdout).contains("Copa: "));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("RTE: no train split at file://") && stderr.contains("/rte/train/0000.parquet"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&dest).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["Copa"], "only the complete task directory");

    let unknown = run(&["nope"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown task 'nope'"));
}
