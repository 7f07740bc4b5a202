//! `mezo plot`: well-formed SVG learning curves of runs and of a directory of runs (a sweep's
//! layout), one line per run; bad or empty run directories are input errors.

use std::path::Path;
use std::process::Command;

mod common;
use common::{ok, repo, MEZO};

/// Tags balance (a small XML well-formedness check: every element closed in order).
fn well_formed(svg: &str) -> bool {
    let mut open: Vec<&str> = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find('<') {
        let Some(len) = rest[start..].find('>') else { return false };
        let tag = &rest[start + 1..start + len];
        rest = &rest[start + len + 1..];
        if tag.starts_with('?') || tag.starts_with('!') || tag.ends_with('/') {
            continue;
        }
        let name = tag.trim_start_matches('/').split_whitespace().next().unwrap_or("");
        if tag.starts_with('/') {
            if open.pop() != Some(name) {
                return false;
            }
        } else {
            open.push(name);
        }
    }
    open.is_empty() && svg.trim_start().starts_with("<svg")
}

fn train(out: &Path, lr: &str) {
    let data = repo("tests/fixtures/large/data/BoolQ");
    ok(Command::new(MEZO)
        .args([
            "-q",
            "train",
            "--task",
            "BoolQ",
            "--train-as-classification",
            "--num-train",
            "6",
            "--num-dev",
            "3",
        ])
        .args([
            "--num-eval",
            "3",
            "--steps",
            "4",
            "--batch-size",
            "2",
            "--eval-every",
            "2",
            "--lr",
            lr,
            "--model",
        ])
        .arg(repo("tests/fixtures/large/models/opt"))
        .arg("--data-dir")
        .arg(data)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap());
}

fn plot(paths: &[&Path], out: &Path) -> std::process::Output {
    Command::new(MEZO).args(["-q", "plot"]).args(paths).arg("--out").arg(out).output().unwrap()
}

#[test]
fn runs_and_sweeps_plot_as_well_formed_svg() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = dir.path().join("sweep");
    train(&sweep.join("lr=1e-3"), "1e-3");
    train(&sweep.join("lr=1e-2"), "1e-2");
    let charts = dir.path().join("charts");
    let out = plot(&[&sweep], &charts);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for name in ["train_loss.svg", "dev_eval_accuracy.svg", "dev_eval_loss.svg"] {
        let svg = std::fs::read_to_string(charts.join(name)).unwrap();
        assert!(well_formed(&svg), "{name} is not well-formed SVG");
        assert!(svg.contains("\nlr=1e-3\n</text>") && svg.contains("\nlr=1e-2\n</text>"), "{name}: legend");
        // A line per run and its legend mark.
        assert_eq!(svg.matches("stroke-width=\"2\"").count(), 4, "{name}: a line per run");
    }
    // One run directory alone, and as PNG too.
    let single = dir.path().join("single");
    let out = Command::new(MEZO)
        .args(["-q", "plot", "--png"])
        .arg(sweep.join("lr=1e-3"))
        .arg("--out")
        .arg(&single)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(well_formed(&std::fs::read_to_string(single.join("train_loss.svg")).unwrap()));
    let png = std::fs::read(single.join("train_loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG signature");
    // IHDR: the chart's 800 x 500 pixels.
    assert_eq!(&png[12..16], b"IHDR");
    assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 800);
    assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 500);
    // Lines, axes and text drawn: far more than a blank image compresses to.
    assert!(png.len() > 10_000, "{} bytes", png.len());
}

#[test]
fn bad_or_empty_run_directories_are_input_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let torn = dir.path().join("torn");
    std::fs::create_dir_all(&torn).unwrap();
    std::fs::write(torn.join("metrics.jsonl"), "{\"step\":1,\"loss\":0.5}\n{\"step\":2,\"lo").unwrap();
    let blank = dir.path().join("blank");
    std::fs::create_dir_all(&blank).unwrap();
    std::fs::write(blank.join("metrics.jsonl"), "").unwrap();
    let missing = dir.path().join("missing");
    let charts = dir.path().join("charts");
    for (path, message) in [
        (&empty, "no training run"),
        (&torn, "metrics.jsonl line 2"),
        (&blank, "no step or dev evaluation is logged"),
        (&missing, "not a directory"),
    ] {
        let out = plot(&[path], &charts);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", path.display());
        assert!(stderr.contains(message), "{}: {stderr}", path.display());
    }
    assert!(!charts.join("train_loss.svg").exists(), "no chart from a failed plot");
}
