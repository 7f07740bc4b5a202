//! data/download.sh's unpacking, on archives the test makes (the real one cannot be downloaded
//! here), and data/download_large.sh, on copies of the Hub's Parquet layout served from a
//! directory (`file://`) and by a local HTTP server.

use std::path::{Path, PathBuf};
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

/// Publishes a task's Parquet fixtures (one train shard, two validation shards) as the Hub's
/// converted layout under `hub`: `REPO/resolve/refs/convert/parquet/CONFIG/SPLIT/NNNN.parquet`
/// (`file://` and the test server decode the revision's `%2F`).
fn publish(hub: &Path, task: &str, repo: &str, config: &str, splits: &[&str]) {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/large/parquet").join(task).join("data");
    let dir = hub.join(repo).join("resolve/refs/convert/parquet").join(config);
    for &split in splits {
        let shards: &[&str] = match split {
            "train" => &["train-00000-of-00001.parquet"],
            _ => &["validation-00000-of-00002.parquet", "validation-00001-of-00002.parquet"],
        };
        std::fs::create_dir_all(dir.join(split)).unwrap();
        for (i, shard) in shards.iter().enumerate() {
            std::fs::copy(fixture.join(shard), dir.join(split).join(format!("{i:04}.parquet"))).unwrap();
        }
    }
}

/// data/download_large.sh with `MEZO_HF_BASE=base` and extra environment variables.
fn download_large(base: &str, env: &[(&str, &str)], dest: &Path, tasks: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/download_large.sh"))
        .arg("--dest")
        .arg(dest)
        .args(tasks)
        .env("MEZO_HF_BASE", base)
        .envs(env.iter().copied())
        .env_remove("HF_TOKEN")
        .env("no_proxy", "127.0.0.1")
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .unwrap()
}

/// The sorted names in `dir`.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

/// data/download_large.sh against a local copy of the Hub's Parquet layout (a `file://` base
/// URL): the shards of each split fetched in order until the first missing one, the task
/// directories in place only when complete and read by `mezo eval`, a second run fetching nothing,
/// and a missing split failing with its URL and leaving nothing behind.
#[test]
fn large_task_parquet_files_from_a_hub_layout() {
    let dir = tempfile::tempdir().unwrap();
    let hub = dir.path().join("hub");
    publish(&hub, "Copa", "aps/super_glue", "copa", &["train", "validation"]);
    publish(&hub, "SST2", "nyu-mll/glue", "sst2", &["train", "validation"]);
    publish(&hub, "RTE", "aps/super_glue", "rte", &["train"]);
    let base = format!("file://{}", hub.display());
    let dest = dir.path().join("large");

    let out = download_large(&base, &[], &dest, &["copa", "SST2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for task in ["Copa", "SST2"] {
        assert_eq!(names(&dest.join(task)), ["train", "validation"]);
        assert_eq!(names(&dest.join(task).join("train")), ["0000.parquet"]);
        assert_eq!(names(&dest.join(task).join("validation")), ["0000.parquet", "0001.parquet"]);
        let eval = Command::new(env!("CARGO_BIN_EXE_mezo"))
            .args(["-q", "eval", "--task", task, "--train-set-seed", "0", "--num-eval", "3", "--model"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/large/models/opt"))
            .arg("--data-dir")
            .arg(dest.join(task))
            .output()
            .unwrap();
        assert!(eval.status.success(), "{task}: {}", String::from_utf8_lossy(&eval.stderr));
    }
    assert_eq!(names(&dest), ["Copa", "SST2"], "no staging directory left behind");

    // A second run keeps the finished tasks and fetches nothing: it succeeds with no hub at all.
    let nowhere = format!("file://{}", dir.path().join("no-hub").display());
    let again = download_large(&nowhere, &[], &dest, &["COPA", "sst2"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(stdout.contains("Copa: ") && stdout.contains("SST2: ") && stdout.contains("kept"), "{stdout}");

    // RTE's validation split is not in the hub: its URL named, the fetched train split removed.
    let failed = download_large(&base, &[], &dest, &["Copa", "RTE"]);
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("RTE: no validation split at file://")
            && stderr
                .contains("/aps/super_glue/resolve/refs%2Fconvert%2Fparquet/rte/validation/0000.parquet"),
        "{stderr}"
    );
    assert_eq!(names(&dest), ["Copa", "SST2"], "only complete task directories");

    // A moved dataset: MEZO_HF_<TASK> names its repository and configuration.
    let moved = download_large(&base, &[("MEZO_HF_RTE", "nyu-mll/glue sst2")], &dest, &["rte"]);
    assert!(moved.status.success(), "{}", String::from_utf8_lossy(&moved.stderr));
    assert_eq!(names(&dest.join("RTE").join("validation")), ["0000.parquet", "0001.parquet"]);
    let bad = download_large(&base, &[("MEZO_HF_CB", "aps/super_glue")], &dest, &["cb"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("MEZO_HF_CB='aps/super_glue' is not 'REPO CONFIG'"));

    let unknown = download_large(&base, &[], &dest, &["nope"]);
    assert_eq!(unknown.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("unknown task 'nope'")
            && stderr.contains("SST2 RTE CB BoolQ WSC WIC MultiRC Copa ReCoRD SQuAD DROP"),
        "{stderr}"
    );
    assert_eq!(names(&dest), ["Copa", "RTE", "SST2"]);
}

/// Serves `root` over HTTP on 127.0.0.1 as the Hub answers `resolve` requests: the file at the
/// percent-decoded path, 404 where there is none, and 401 under `/gated/` (a gated or missing
/// repository). One connection a request; returns the base URL.
fn serve(root: PathBuf) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut header = String::new();
            while matches!(reader.read_line(&mut header), Ok(n) if n > 2) {
                header.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").replace("%2F", "/");
            let file = root.join(path.trim_start_matches('/'));
            let (status, body) = if path.starts_with("/gated/") {
                ("401 Unauthorized", b"Repository not found".to_vec())
            } else if file.is_file() {
                ("200 OK", std::fs::read(&file).unwrap())
            } else {
                ("404 Not Found", b"Entry not found".to_vec())
            };
            let head =
                format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body));
        }
    });
    base
}

/// data/download_large.sh over HTTP, as from the Hub: the end of a split's shards is its first 404,
/// the files arrive unchanged, a split without 0000.parquet fails with its URL, and any other
/// HTTP error (401) fails naming the URL and the status.
#[test]
fn large_task_parquet_files_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let hub = dir.path().join("hub");
    publish(&hub, "Copa", "aps/super_glue", "copa", &["train", "validation"]);
    let base = serve(hub.clone());
    let dest = dir.path().join("large");

    let out = download_large(&base, &[], &dest, &["copa"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let copa = hub.join("aps/super_glue/resolve/refs/convert/parquet/copa");
    for (split, shards) in
        [("train", &["0000.parquet"][..]), ("validation", &["0000.parquet", "0001.parquet"][..])]
    {
        assert_eq!(names(&dest.join("Copa").join(split)), shards);
        for shard in shards {
            let got = std::fs::read(dest.join("Copa").join(split).join(shard)).unwrap();
            assert_eq!(got, std::fs::read(copa.join(split).join(shard)).unwrap(), "{split}/{shard}");
        }
    }

    let missing = download_large(&base, &[], &dest, &["CB"]);
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains(&format!("CB: no train split at {base}/aps/super_glue/resolve/")), "{stderr}");

    let gated = download_large(&base, &[("MEZO_HF_CB", "gated/cb cb")], &dest, &["CB"]);
    assert_eq!(gated.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&gated.stderr);
    assert!(stderr.contains(&format!("{base}/gated/cb/resolve/")) && stderr.contains("HTTP 401"), "{stderr}");
    assert_eq!(names(&dest), ["Copa"], "only the complete task directory");
}
