//! The k-shot generator against the reference tool's toy runs (docs/reference.md §2): outputs
//! recorded from the reference on small inputs.

use mezo::data::kshot::{generate, KshotConfig, Mode};
use std::path::Path;
use std::process::Command;

const LABELS: [u8; 12] = [0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 0];

fn sst2_row(i: usize) -> String {
    format!("train sentence {i:02} \t{}\n", LABELS[i])
}

fn cola_row(i: usize) -> String {
    format!("src\t{}\t*\ttrain sentence {i:02}\n", LABELS[i])
}

fn toy_data(root: &Path) {
    let sst = root.join("SST-2");
    std::fs::create_dir_all(&sst).unwrap();
    let train: String =
        std::iter::once("sentence\tlabel\n".to_string()).chain((0..12).map(sst2_row)).collect();
    std::fs::write(sst.join("train.tsv"), train).unwrap();
    std::fs::write(
        sst.join("dev.tsv"),
        "sentence\tlabel\r\nd0 \t1\r\nd1 \t0\r\nd2 \t1\r\nd3 \t0\r\nd4 \t1\r\n",
    )
    .unwrap();
    let cola = root.join("CoLA");
    std::fs::create_dir_all(&cola).unwrap();
    std::fs::write(cola.join("train.tsv"), (0..12).map(cola_row).collect::<String>()).unwrap();
    let dev: String = (0..1500).map(|i| format!("src\t{}\t*\tdev {i}\n", i % 2)).collect();
    std::fs::write(cola.join("dev.tsv"), dev).unwrap();
    let mr = root.join("mr");
    std::fs::create_dir_all(&mr).unwrap();
    let mut train = String::new();
    for (i, label) in LABELS.iter().enumerate() {
        match i {
            3 => train.push_str("0,\"mr text 03, with comma\"\n"),
            11 => train.push_str(&format!("{label},NA\n")),
            _ => train.push_str(&format!("{label},\"mr text {i:02}\"\n")),
        }
    }
    std::fs::write(mr.join("train.csv"), train).unwrap();
    let test: String = (0..2000).map(|i| format!("{},\"quoted test {i}\"\n", i % 2)).collect();
    std::fs::write(mr.join("test.csv"), test).unwrap();
}

fn rows(path: &Path, render: fn(usize) -> String, header: &str, idx: &[usize]) {
    let want: String = std::iter::once(header.to_string()).chain(idx.iter().map(|&i| render(i))).collect();
    assert_eq!(std::fs::read_to_string(path).unwrap(), want, "{}", path.display());
}

fn config(root: &Path, tasks: &[&str]) -> KshotConfig {
    KshotConfig {
        data_dir: root.join("original"),
        out_dir: root.join("out"),
        mode: Mode::KShot1kTest,
        k: 2,
        tasks: tasks.iter().map(|t| t.to_string()).collect(),
        seeds: vec![13, 42],
    }
}

#[test]
fn toy_runs_match_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    toy_data(&dir.path().join("original"));
    let done = generate(&config(dir.path(), &["SST-2", "CoLA", "mr", "SST-2"]), &|_| {}).unwrap();
    assert_eq!(done.len(), 6, "duplicate task names are collapsed");
    let out = dir.path().join("out/k-shot-1k-test");
    let h = "sentence\tlabel\n";
    rows(&out.join("SST-2/2-13/train.tsv"), sst2_row, h, &[5, 3, 9, 7]);
    rows(&out.join("SST-2/2-13/dev.tsv"), sst2_row, h, &[11, 6, 8, 1]);
    rows(&out.join("SST-2/2-42/train.tsv"), sst2_row, h, &[10, 0, 9, 8]);
    rows(&out.join("SST-2/2-42/dev.tsv"), sst2_row, h, &[5, 11, 2, 1]);
    // Not over 1000 lines: header + lines, with universal newlines turned into \n.
    let test = std::fs::read_to_string(out.join("SST-2/2-13/test.tsv")).unwrap();
    assert_eq!(test, "sentence\tlabel\nd0 \t1\nd1 \t0\nd2 \t1\nd3 \t0\nd4 \t1\n");

    // CoLA: the same selection for the first seed, then accumulated shuffles.
    rows(&out.join("CoLA/2-13/train.tsv"), cola_row, "", &[5, 3, 9, 7]);
    rows(&out.join("CoLA/2-13/dev.tsv"), cola_row, "", &[11, 6, 8, 1]);
    rows(&out.join("CoLA/2-42/train.tsv"), cola_row, "", &[0, 10, 1, 9]);
    rows(&out.join("CoLA/2-42/dev.tsv"), cola_row, "", &[5, 6, 2, 8]);
    // CoLA test: 1000 lines after one, then two, seed-42 shuffles of the dev list.
    let cola_test = |seed: u32| std::fs::read_to_string(out.join(format!("CoLA/2-{seed}/test.tsv"))).unwrap();
    let (t13, t42) = (cola_test(13), cola_test(42));
    assert_eq!(t13.lines().count(), 1000);
    assert_ne!(t13, t42, "CoLA's test files differ per seed folder");
    let mut order: Vec<usize> = (0..1500).collect();
    mezo::data::mt19937::RandomState::new(42).shuffle(&mut order);
    let first = |t: &str| t.lines().next().unwrap().to_string();
    assert_eq!(first(&t13), format!("src\t{}\t*\tdev {}", order[0] % 2, order[0]));
    mezo::data::mt19937::RandomState::new(42).shuffle(&mut order);
    assert_eq!(first(&t42), format!("src\t{}\t*\tdev {}", order[0] % 2, order[0]));

    // CSV: re-serialised the pandas way; the 1k cap keeps permutation_42(2000)[..1000] in order.
    let mr_train = std::fs::read_to_string(out.join("mr/2-13/train.csv")).unwrap();
    assert_eq!(mr_train, "0,mr text 05\n0,\"mr text 03, with comma\"\n1,mr text 09\n1,mr text 07\n");
    let mr_dev = std::fs::read_to_string(out.join("mr/2-13/dev.csv")).unwrap();
    // Row 11's NA cell is written back empty.
    assert_eq!(mr_dev, "0,\n0,mr text 06\n1,mr text 08\n1,mr text 01\n");
    let mr_test = std::fs::read_to_string(out.join("mr/2-42/test.csv")).unwrap();
    let lines: Vec<&str> = mr_test.lines().collect();
    assert_eq!(lines.len(), 1000);
    assert_eq!(lines[0], "0,quoted test 1860");
    assert_eq!(lines[1], "1,quoted test 353");
    assert_eq!(mr_test, std::fs::read_to_string(out.join("mr/2-13/test.csv")).unwrap());
    assert!(std::fs::read_dir(out.join("SST-2")).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with('.')));
}

#[test]
fn k_shot_mode_copies_the_eval_file_and_short_labels_give_short_slices() {
    let dir = tempfile::tempdir().unwrap();
    toy_data(&dir.path().join("original"));
    let mut c = config(dir.path(), &["SST-2"]);
    c.mode = Mode::KShot;
    c.k = 5; // label 0 has 6 rows: train gets 5, dev 1
    c.seeds = vec![13];
    generate(&c, &|_| {}).unwrap();
    let split = dir.path().join("out/k-shot/SST-2/5-13");
    // The eval file as Python's readlines() gives it: universal newlines, header included.
    let test = std::fs::read_to_string(split.join("test.tsv")).unwrap();
    assert_eq!(test, "sentence\tlabel\nd0 \t1\nd1 \t0\nd2 \t1\nd3 \t0\nd4 \t1\n");
    rows(&split.join("train.tsv"), sst2_row, "sentence\tlabel\n", &[5, 3, 11, 6, 10, 9, 7, 8, 1, 4]);
    rows(&split.join("dev.tsv"), sst2_row, "sentence\tlabel\n", &[0, 2]);
}

fn mezo_kshot(root: &Path, tasks: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mezo"));
    cmd.args(["kshot", "--k", "2", "--seed", "13", "--mode", "k-shot-1k-test"])
        .arg("--data-dir")
        .arg(root.join("original"))
        .arg("--out")
        .arg(root.join("out"))
        .arg("--task")
        .args(tasks);
    cmd.output().unwrap()
}

#[test]
fn bad_input_names_file_and_line_and_writes_nothing() {
    let cases: &[(&str, &str, &str, &str)] = &[
        ("mr", "train.csv", "0,ok\n1,\"open\n", "train.csv: line 2: quoted field never closed"),
        ("mr", "train.csv", "0,ok\n1,a,b\n", "train.csv: line 2: expected 2 columns, found 3"),
        ("mr", "train.csv", "0,ok\n7,bad\n", "train.csv: line 2: unknown label 7 for mr"),
        ("mr", "train.csv", "0,ok\nx,bad\n", "train.csv: line 2: label 'x' is not an integer"),
        ("mr", "train.csv", "", "train.csv: file is empty"),
        (
            "SST-2",
            "train.tsv",
            "sentence\tlabel\na\t1\nb\t2\n",
            "train.tsv: line 3: unknown label '2' for SST-2",
        ),
        ("SST-2", "train.tsv", "sentence\tlabel\nno label column\n", "train.tsv: line 2: no label column"),
    ];
    for (task, file, content, message) in cases {
        let dir = tempfile::tempdir().unwrap();
        toy_data(&dir.path().join("original"));
        std::fs::write(dir.path().join("original").join(task).join(file), content).unwrap();
        // SST-2 first: its output would be written before mr's error if loading were lazy.
        let out = mezo_kshot(dir.path(), &["SST-2", "mr"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{task}/{file}: {stderr}");
        assert!(stderr.contains(message), "{task}/{file}: expected '{message}' in {stderr}");
        assert!(!dir.path().join("out").exists(), "{task}/{file}: output written");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = mezo_kshot(dir.path(), &["mr"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("original/mr/train.csv: No such file"));
}

#[test]
fn two_ranks_give_the_same_files() {
    let dir = tempfile::tempdir().unwrap();
    toy_data(&dir.path().join("original"));
    let one = dir.path().join("one");
    let two = dir.path().join("two");
    for (out, np) in [(&one, 1), (&two, 2)] {
        let status = Command::new("mpirun")
            .args([
                "--oversubscribe",
                "-np",
                &np.to_string(),
                env!("CARGO_BIN_EXE_mezo"),
                "kshot",
                "--k",
                "2",
            ])
            .args(["--mode", "k-shot-1k-test", "--task", "SST-2", "CoLA", "mr", "--seed", "100", "13"])
            .arg("--data-dir")
            .arg(dir.path().join("original"))
            .arg("--out")
            .arg(out)
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .status()
            .unwrap();
        assert!(status.success());
    }
    for task in ["SST-2", "CoLA", "mr"] {
        for seed in ["2-100", "2-13"] {
            let a = one.join("k-shot-1k-test").join(task).join(seed);
            let b = two.join("k-shot-1k-test").join(task).join(seed);
            for entry in std::fs::read_dir(&a).unwrap() {
                let name = entry.unwrap().file_name();
                assert_eq!(
                    std::fs::read(a.join(&name)).unwrap(),
                    std::fs::read(b.join(&name)).unwrap(),
                    "{name:?}"
                );
            }
        }
    }
}

/// Every file under `dir`, relative to `dir`, sorted.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// tests/fixtures/kshot: raw data of every reader kind and what scripts/reference_kshot.py (numpy
/// and pandas) made of it; scripts/make_kshot_fixtures.py regenerates both.
#[test]
fn byte_identical_to_the_reference_on_every_reader_kind() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kshot");
    let out = tempfile::tempdir().unwrap();
    let tasks = ["SST-2", "CoLA", "MNLI", "STS-B", "mr", "sst-5", "ag_news"];
    for (mode, seeds) in
        [(Mode::KShot1kTest, vec![100, 13, 42]), (Mode::KShot, vec![21]), (Mode::KShot10x, vec![87])]
    {
        let config = KshotConfig {
            data_dir: fixtures.join("original"),
            out_dir: out.path().to_owned(),
            mode,
            k: 4,
            tasks: tasks.iter().map(|t| t.to_string()).collect(),
            seeds,
        };
        generate(&config, &|_| {}).unwrap();
    }
    let expected = files(&fixtures.join("expected"));
    assert_eq!(files(out.path()), expected);
    assert!(expected.len() > 50, "{} expected files", expected.len());
    for file in &expected {
        let want = std::fs::read(fixtures.join("expected").join(file)).unwrap();
        let got = std::fs::read(out.path().join(file)).unwrap();
        assert!(got == want, "{} differs from the reference", file.display());
    }
}

#[test]
fn k_above_a_labels_examples_warns_and_writes_the_short_slice() {
    let dir = tempfile::tempdir().unwrap();
    toy_data(&dir.path().join("original"));
    let out = Command::new(env!("CARGO_BIN_EXE_mezo"))
        .args(["kshot", "--k", "7", "--seed", "13", "--task", "SST-2"])
        .arg("--data-dir")
        .arg(dir.path().join("original"))
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("SST-2 seed 13: label 0 has 6 training examples, fewer than k = 7"), "{stderr}");
    let train = std::fs::read_to_string(dir.path().join("out/k-shot/SST-2/7-13/train.tsv")).unwrap();
    assert_eq!(train.lines().count(), 1 + 6 + 6);
    let dev = std::fs::read_to_string(dir.path().join("out/k-shot/SST-2/7-13/dev.tsv")).unwrap();
    assert_eq!(dev.lines().count(), 1, "nothing is left for dev");
}
