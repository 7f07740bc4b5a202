//! `mezo scaling` on 1 and 2 ranks: MeZO steps (weak) and kernel rows (weak and strong), their
//! CSV, projection and charts, `mezo plot` of the CSV, and the input errors. No timing is
//! asserted: only that every number is there and consistent.

use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{demo_split, repo, MEZO};

fn scaling(out: &Path, flags: &[&str], command: &[&str]) -> Output {
    Command::new(MEZO)
        .args(["-q", "scaling", "--ranks", "1,2", "--launcher-arg=--oversubscribe", "--out"])
        .arg(out)
        .args(flags)
        .arg("--")
        .args(command)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().map(|l| l.split(',').map(str::to_string).collect()).collect()
}

fn check_study(out: &Path, workload: &str, mode: &str, work: [&str; 2]) {
    let rows = csv_rows(&out.join("scaling.csv"));
    assert_eq!(
        rows[0],
        [
            "workload",
            "mode",
            "ranks",
            "threads",
            "work",
            "seconds",
            "compute_seconds",
            "communication_seconds",
            "all_reduce_seconds",
            "throughput",
            "speedup",
            "efficiency"
        ]
    );
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (row, (ranks, work)) in rows[1..].iter().zip([("1", work[0]), ("2", work[1])]) {
        assert_eq!(&row[..5], [workload, mode, ranks, "1", work], "{rows:?}");
        let number = |i: usize| row[i].parse::<f64>().unwrap();
        assert!(number(5) > 0.0 && number(6) >= 0.0 && number(7) >= 0.0 && number(8) >= 0.0, "{row:?}");
        assert!(
            (number(6) + number(7) - number(5)).abs() <= 1e-6 * number(5) || workload == "kernel",
            "{row:?}"
        );
        assert!((number(9) - number(4) / number(5)).abs() <= 1e-9 * number(9), "throughput: {row:?}");
    }
    assert!(rows[2][8].parse::<f64>().unwrap() > 0.0, "an all-reduce over 2 ranks takes time");
    assert_eq!(rows[1][10], "1.0");
    assert_eq!(rows[1][11], "1.0");
    let projection = csv_rows(&out.join("projection.csv"));
    if workload == "train" {
        let header = ["ranks", "seconds", "efficiency", "seconds_latency_bound", "efficiency_latency_bound"];
        assert_eq!(projection[0], header);
        assert_eq!(projection[1][4], "1.0000");
    } else {
        assert_eq!(projection[0], ["ranks", "seconds", "efficiency"]);
    }
    assert_eq!(projection[1][0], "1");
    assert_eq!(projection[1][2], "1.0000");
    for name in ["scaling_throughput.svg", "scaling_efficiency.svg", "scaling_projection.svg"] {
        let svg = std::fs::read_to_string(out.join(name)).unwrap();
        assert!(svg.trim_start().starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{name}");
    }
}

#[test]
fn train_and_kernel_studies_on_one_and_two_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let split = demo_split(tmp.path(), 16, 42);
    let model = repo("tests/fixtures/models/roberta");
    let (model, split) = (model.to_str().unwrap(), split.to_str().unwrap());
    let common = ["--task", "sst-2", "--model", model, "--data-dir", split];

    let out = tmp.path().join("mezo-weak");
    let mut train = vec!["train", "--batch-size", "4", "--steps", "4", "--eval-every", "0"];
    train.extend(common);
    let output = scaling(&out, &["--mode", "weak"], &train);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("projected efficiency: 8: "), "{}", text(&output));
    check_study(&out, "train", "weak", ["4", "8"]);
    let config = std::fs::read_to_string(out.join("ranks-2/run/config.json")).unwrap();
    assert!(config.contains("\"batch_size\": 8"), "weak scaling doubles the global batch");

    let out = tmp.path().join("kernel-weak");
    let mut kernel = vec!["kernel", "--train-rows", "2"];
    kernel.extend(common);
    let output = scaling(&out, &["--mode", "weak"], &kernel);
    assert!(output.status.success(), "{}", text(&output));
    check_study(&out, "kernel", "weak", ["2", "4"]);

    let out = tmp.path().join("kernel-strong");
    kernel[2] = "4";
    let output = scaling(&out, &[], &kernel);
    assert!(output.status.success(), "{}", text(&output));
    check_study(&out, "kernel", "strong", ["4", "4"]);
    // Past 4 rows a rank would get no work.
    assert_eq!(csv_rows(&out.join("projection.csv")).len(), 1 + 3);

    let charts = tmp.path().join("charts");
    let output = Command::new(MEZO)
        .args(["-q", "plot"])
        .arg(out.join("scaling.csv"))
        .arg("--out")
        .arg(&charts)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(charts.join("scaling_projection.svg").is_file());
}

#[test]
fn bad_studies_are_input_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("study");
    let cases: [(&[&str], &[&str], &str); 5] = [
        (&[], &["eval", "--task", "sst-2"], "`train` or `kernel`"),
        (&[], &["train", "--out", "x"], "leave --out out"),
        (&["--mode", "weak"], &["kernel", "--task", "sst-2"], "--train-rows N"),
        (&["--mode", "weak"], &["train", "--batch-size", "four"], "not a count"),
        (&[], &["train", "--stepz", "3"], "--stepz"),
    ];
    for (flags, command, message) in cases {
        let output = scaling(&out, flags, command);
        assert_eq!(output.status.code(), Some(2), "{command:?}: {}", text(&output));
        assert!(text(&output).contains(message), "{command:?}: {}", text(&output));
        assert!(!out.exists(), "{command:?} wrote {}", out.display());
    }
    std::fs::create_dir_all(out.join("old")).unwrap();
    let output = scaling(&out, &[], &["train"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output).contains("new or empty directory"), "{}", text(&output));
}
