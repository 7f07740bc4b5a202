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
