//! `mezo solve`: the spec's worked example and acceptance facts, the reference pipeline on the
//! fixture of scripts/make_solver_fixture.py (torch + scikit-learn), input errors, and two MPI
//! ranks against one.

use hdf5::types::VarLenUnicode;
use mezo::dist::Dist;
use mezo::solve::{self, logistic, SolveConfig, SolverKind};
use ndarray::{Array2, ArrayD, IxDyn};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::MEZO;

/// Tests run in parallel threads, and a child process started by one (mezo, mpirun) inherits
/// every file the others have open at that moment: HDF5 opens without close-on-exec, and its
/// `flock` would then keep another test's file locked for the child's lifetime. No test here
/// needs the lock, so it is off for this process and its children (HDF5 reads the variable once,
/// at its start, so this runs first in every test).
fn no_file_locking() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var("HDF5_USE_FILE_LOCKING", "FALSE"));
}

/// A kernel file's content, written by [`write_kernels`].
struct KernelFile<'a> {
    task: &'a str,
    formula: &'a str,
    binary: Option<bool>,
    grad_dim: Option<u64>,
    seed: i64,
    /// train, dev, test kernels ([N, C, M, C] or [2, N, C, M, C]).
    kernels: [ArrayD<f64>; 3],
    labels: [Vec<i64>; 3],
    f0: Option<[ArrayD<f64>; 3]>,
}

const SPLITS: [&str; 3] = ["train", "dev", "test"];

fn write_kernels(path: &Path, k: &KernelFile) {
    let file = hdf5::File::create(path).unwrap();
    let text = |name: &str, value: &str| {
        let v: VarLenUnicode = value.parse().unwrap();
        file.new_attr::<VarLenUnicode>().create(name).unwrap().write_scalar(&v).unwrap();
    };
    text("task", k.task);
    text("formula", k.formula);
    if let Some(b) = k.binary {
        file.new_attr::<bool>().create("binary").unwrap().write_scalar(&b).unwrap();
    }
    if let Some(g) = k.grad_dim {
        file.new_attr::<u64>().create("grad_dim").unwrap().write_scalar(&g).unwrap();
    }
    file.new_attr::<i64>().create("seed").unwrap().write_scalar(&k.seed).unwrap();
    for (i, split) in SPLITS.iter().enumerate() {
        file.new_dataset_builder().with_data(&k.kernels[i]).create(*split).unwrap();
        let labels = ndarray::Array1::from(k.labels[i].clone());
        file.new_dataset_builder().with_data(&labels).create(format!("{split}_labels").as_str()).unwrap();
        if let Some(f0) = &k.f0 {
            file.new_dataset_builder().with_data(&f0[i]).create(format!("{split}_f0").as_str()).unwrap();
        }
    }
}

fn config(path: &Path, solver: SolverKind, reg: f64) -> SolveConfig {
    SolveConfig {
        kernels: path.to_owned(),
        solver,
        reg: vec![reg],
        adjust_for_init: false,
        f0_scaling: 1.0,
        kernel_gamma: 1.0,
        kernel_lambda: 0.5,
    }
}

fn solve_file(path: &Path, solver: SolverKind, reg: f64) -> solve::SolveReport {
    solve::solve(&Dist::single(), &config(path, solver, reg)).unwrap()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-12)
}

/// A worked example small enough to solve by hand: train g₁ = (1,2,0) (y = +1), g₂ = (−1,1,1) (y = −1), test
/// g₃ = (2,0,−1). Dev repeats train, so dev reports the in-sample fit.
fn worked_example(dir: &Path, formula: &'static str, test_label: i64) -> PathBuf {
    let g = [[1.0, 2.0, 0.0], [-1.0, 1.0, 1.0], [2.0, 0.0, -1.0]];
    let sign = |v: f64| {
        if v > 0.0 {
            1.0
        } else if v < 0.0 {
            -1.0
        } else {
            0.0
        }
    };
    let dot = |a: usize, b: usize, left_sign: bool, right_sign: bool| -> f64 {
        (0..3)
            .map(|p| {
                let l = if left_sign { sign(g[a][p]) } else { g[a][p] };
                let r = if right_sign { sign(g[b][p]) } else { g[b][p] };
                l * r
            })
            .sum()
    };
    let block = |cols: &[usize], ls: bool, rs: bool| {
        ArrayD::from_shape_fn(IxDyn(&[2, 1, cols.len(), 1]), |i| dot(i[0], cols[i[2]], ls, rs))
    };
    let make = |cols: &[usize]| match formula {
        "sgd" => block(cols, false, false),
        "signgd" => block(cols, true, true),
        _ => ndarray::stack(
            ndarray::Axis(0),
            &[block(cols, true, false).view(), block(cols, false, true).view()],
        )
        .unwrap(),
    };
    let path = dir.join(format!("{formula}.h5"));
    write_kernels(
        &path,
        &KernelFile {
            task: "sst-2",
            formula,
            binary: Some(true),
            grad_dim: Some(3),
            seed: 42,
            kernels: [make(&[0, 1]), make(&[0, 1]), make(&[2])],
            labels: [vec![1, 0], vec![1, 0], vec![test_label]],
            f0: None,
        },
    );
    path
}

#[test]
fn worked_example_of_the_spec() {
    no_file_locking();
    let dir = tempfile::tempdir().unwrap();
    // sgd: α = (2/7, −3/7), p = 13/7 → class 1; Kα = (1, −1) in sample.
    let sgd = worked_example(dir.path(), "sgd", 1);
    let r = solve_file(&sgd, SolverKind::Lstsq, 0.0);
    assert!(close(r.test["eval_loss"], (13.0f64 / 7.0 - 1.0).powi(2), 1e-12), "{:?}", r.test);
    assert_eq!((r.test["eval_acc"], r.test["rank0"], r.test["grad_dim"]), (1.0, 2.0, 3.0));
    assert!(r.best_dev["eval_loss"] < 1e-20 && r.best_dev["eval_acc"] == 1.0, "{:?}", r.best_dev);
    // λ = 0.1 adds 0.1·σmax = 0.1·(4 + √2) = 0.5414 to the diagonal of K = [[5, 1], [1, 3]].
    let s = 0.1 * (4.0 + 2f64.sqrt());
    assert!((s - 0.5414).abs() < 1e-4);
    let (a, b, d) = (5.0 + s, 1.0, 3.0 + s);
    let det = a * d - b * b;
    // α = K⁻¹y with y = (1, −1): K⁻¹ = [[d, −b], [−b, a]] / det.
    let alpha = [(d + b) / det, (-b - a) / det];
    let p = 2.0 * alpha[0] - 3.0 * alpha[1];
    let r = solve_file(&sgd, SolverKind::Lstsq, 0.1);
    assert!(close(r.test["eval_loss"], (p - 1.0).powi(2), 1e-12), "{p} {:?}", r.test);
    // signgd: K = [[2, 0], [0, 3]], k_X = (1, −2), α = (1/2, −1/3), p = 7/6.
    let r = solve_file(&worked_example(dir.path(), "signgd", 1), SolverKind::Lstsq, 0.0);
    assert!(close(r.test["eval_loss"], (7.0f64 / 6.0 - 1.0).powi(2), 1e-12), "{:?}", r.test);
    // asymmetric, γ = 1, λ = 0.5: (α; β) = (1/3, 2/9; 2/9, 1/3), ω = 4/3, ν = 8/9, p = 10/9.
    // With test label 0 (y = −1) the loss is (10/9 + 1)² and the prediction is wrong.
    let asym = worked_example(dir.path(), "asymmetric_signgd", 0);
    let r = solve_file(&asym, SolverKind::Asym, 0.0);
    assert!(close(r.test["eval_loss"], (10.0f64 / 9.0 + 1.0).powi(2), 1e-6), "{:?}", r.test);
    assert_eq!((r.test["eval_acc"], r.test["rank0"]), (0.0, 4.0));
    // λ = 1 keeps ω only, λ = 0 keeps ν only.
    let mut c = config(&asym, SolverKind::Asym, 0.0);
    c.kernel_lambda = 1.0;
    let r = solve::solve(&Dist::single(), &c).unwrap();
    assert!(close(r.test["eval_loss"], (4.0f64 / 3.0 + 1.0).powi(2), 1e-6), "{:?}", r.test);
    c.kernel_lambda = 0.0;
    let r = solve::solve(&Dist::single(), &c).unwrap();
    assert!(close(r.test["eval_loss"], (8.0f64 / 9.0 + 1.0).powi(2), 1e-6), "{:?}", r.test);
}

/// Acceptance fact 7: lstsq with λ = 0 on a full-rank train×train kernel has rank N·C and fits
/// the train targets exactly (here: dev = train).
#[test]
fn full_rank_lstsq_reproduces_the_train_targets() {
    no_file_locking();
    let (n, c, p) = (6, 3, 30);
    let mut state = 12345u64;
    let mut uniform = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let g = Array2::from_shape_fn((n * c, p), |_| uniform());
    let k = g.dot(&g.t()).into_shape_with_order(IxDyn(&[n, c, n, c])).unwrap();
    let labels: Vec<i64> = (0..n as i64).map(|i| i % 3).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.h5");
    write_kernels(
        &path,
        &KernelFile {
            task: "snli",
            formula: "sgd",
            binary: None,
            grad_dim: None,
            seed: 42,
            kernels: [k.clone(), k.clone(), k],
            labels: [labels.clone(), labels.clone(), labels],
            f0: None,
        },
    );
    let r = solve_file(&path, SolverKind::Lstsq, 0.0);
    assert_eq!(r.best_dev["rank0"], (n * c) as f64);
    assert_eq!(r.best_dev["eval_acc"], 1.0);
    assert!(r.best_dev["eval_loss"] < 1e-20, "{:?}", r.best_dev);
    assert!(!r.best_dev.contains_key("grad_dim"));
}

// ---------------------------------------------------------------------------------------------
// The reference pipeline on the committed fixture.

fn fixture() -> Value {
    let path = common::repo("tests/fixtures/solve/solvers.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A nested JSON list as an array.
fn array(v: &Value) -> ArrayD<f64> {
    let mut shape = Vec::new();
    let mut cur = v;
    while let Value::Array(items) = cur {
        shape.push(items.len());
        cur = &items[0];
    }
    fn flatten(v: &Value, out: &mut Vec<f64>) {
        match v {
            Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
            x => out.push(x.as_f64().unwrap()),
        }
    }
    let mut values = Vec::new();
    flatten(v, &mut values);
    ArrayD::from_shape_vec(IxDyn(&shape), values).unwrap()
}

fn labels(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

fn write_problem(dir: &Path, name: &str, p: &Value) -> PathBuf {
    let path = dir.join(format!("{name}.h5"));
    write_kernels(
        &path,
        &KernelFile {
            task: p["task"].as_str().unwrap(),
            formula: p["formula"].as_str().unwrap(),
            binary: Some(p["outputs"] == 1),
            grad_dim: p["grad_dim"].as_u64(),
            seed: 42,
            kernels: SPLITS.map(|s| array(&p["kernels"][s])),
            labels: SPLITS.map(|s| labels(&p["labels"][s])),
            f0: Some(SPLITS.map(|s| array(&p["f0"][s]))),
        },
    );
    path
}

#[test]
fn solvers_match_the_reference_pipeline() {
    no_file_locking();
    let fixture = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut files = BTreeMap::new();
    for (name, p) in fixture["problems"].as_object().unwrap() {
        files.insert(name.clone(), write_problem(dir.path(), name, p));
    }
    let mut checked = 0;
    for case in fixture["cases"].as_array().unwrap() {
        let solver = match case["solver"].as_str().unwrap() {
            "lstsq" => SolverKind::Lstsq,
            "logistic" => SolverKind::Logistic,
            "svr" => SolverKind::Svr,
            "svc" => SolverKind::Svc,
            "asym" => SolverKind::Asym,
            other => panic!("{other}"),
        };
        let mut c = config(&files[case["problem"].as_str().unwrap()], solver, case["reg"].as_f64().unwrap());
        if let Some(s) = case["f0_scaling"].as_f64() {
            c.adjust_for_init = true;
            c.f0_scaling = s;
        }
        c.kernel_gamma = case["kernel_gamma"].as_f64().unwrap_or(1.0);
        c.kernel_lambda = case["kernel_lambda"].as_f64().unwrap_or(0.5);
        let r = solve::solve(&Dist::single(), &c).unwrap();
        for (split, got) in [("dev", &r.best_dev), ("test", &r.test)] {
            let want = case["expected"][split].as_object().unwrap();
            let what = format!("{case}\n{split}: got {got:?}");
            assert_eq!(got.len(), want.len() + usize::from(got.contains_key("grad_dim")), "{what}");
            for (key, value) in want {
                let value = value.as_f64().unwrap();
                let tolerance = match (solver, key.as_str()) {
                    // Both sides run L-BFGS to convergence; the optima agree to about 1e-6.
                    (SolverKind::Logistic, "eval_loss") => 1e-5,
                    // lstsq/asym: the same LAPACK routine; svr: libsvm's iterations, repeated.
                    (_, "eval_loss") => 1e-9,
                    // Metrics from the same predictions; F1 may differ in the last bit by formula.
                    _ => 1e-12,
                };
                assert!(close(got[key], value, tolerance), "{key}: {} vs {value}\n{what}", got[key]);
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 33);
}

#[test]
fn logistic_cv_matches_scikit_learn() {
    no_file_locking();
    let fixture = fixture();
    for name in ["binary", "multi"] {
        let p = &fixture["problems"][name];
        let want = &fixture["logistic"][name];
        let flat = |k: ArrayD<f64>| {
            let s = k.shape().to_vec();
            k.into_shape_with_order((s[0] * s[1], s[2] * s[3])).unwrap()
        };
        let k = flat(array(&p["kernels"]["train"]));
        let classes: Vec<usize> = labels(&want["classes"]).into_iter().map(|c| c as usize).collect();
        let cv = logistic::fit_cv(&Dist::single(), &k, &classes).unwrap();
        assert_eq!(cv.scores, array(&want["scores"]).into_dimensionality().unwrap(), "{name}");
        assert_eq!(cv.c, want["C"].as_f64().unwrap(), "{name}");
        let coef = array(&want["coef"]);
        let scale = coef.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (a, b) in cv.coef.iter().zip(coef.iter()) {
            assert!((a - b).abs() <= 1e-4 * scale, "{name}: coef {} vs {coef}", cv.coef);
        }
        let kx = flat(array(&p["kernels"]["dev"]));
        let d = logistic::decision(kx.t(), &cv.coef);
        let want_d = array(&want["dev_decision"]);
        for (a, b) in d.iter().zip(want_d.iter()) {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0) && (a > &0.0) == (b > &0.0),
                "{name}: {d} vs {want_d}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The command line.

fn mezo(args: &[&str]) -> Output {
    Command::new(MEZO).args(args).env_remove("RUST_LOG").output().expect("running mezo")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn results(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn cli_grid_picks_the_best_dev_and_records_its_config() {
    no_file_locking();
    let dir = tempfile::tempdir().unwrap();
    let path = write_problem(dir.path(), "cola", &fixture()["problems"]["cola"]);
    let out_file = dir.path().join("results.json");
    let out = mezo(&[
        "solve",
        "--kernels",
        path.to_str().unwrap(),
        "--solver",
        "lstsq",
        "--reg-grid",
        "0,0.1",
        "--out",
        out_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = results(&out_file);
    // From the fixture: dev MCC 0.4045 at λ = 0, 0.5164 at λ = 0.1.
    assert_eq!(r["best_reg"], 0.1);
    assert_eq!(r["selection_metric"], "eval_mcc");
    assert_eq!(r["grid"].as_array().unwrap().len(), 2);
    assert_eq!(r["test"], r["grid"][1]["test"]);
    assert_eq!(r["config"]["solver"], "lstsq");
    assert_eq!(r["config"]["reg_grid"], serde_json::json!([0.0, 0.1]));
    assert_eq!(r["config"]["kernel"]["task"], "cola");
    assert_eq!(r["config"]["kernel"]["seed"], 42);
    assert!(!dir.path().join("results.json.partial").exists());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l.starts_with('*') && l.contains("0.1")), "{stdout}");
}

/// Runs `mezo solve` expecting exit code 2 with all of `needles` in the message.
fn refused(args: &[&str], needles: &[&str]) {
    let out = mezo(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: no '{n}' in {err}");
    }
}

#[test]
fn bad_inputs_are_input_errors() {
    no_file_locking();
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let out = d("r.json");
    let p = fixture()["problems"]["binary"].clone();
    let good = write_problem(dir.path(), "good", &p);
    let good = good.to_str().unwrap();
    let solve = |file: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> =
            ["solve", "--kernels", file, "--out", &out].iter().map(|s| s.to_string()).collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |args: Vec<String>, needles: &[&str]| {
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        refused(&args, needles);
    };
    run(solve(&d("missing.h5"), &[]), &["--kernels", "missing.h5", "no such file"]);
    run(solve(good, &["--solver", "asym"]), &["--solver asym", "asymmetric_signgd", "sgd"]);
    run(solve(good, &["--solver", "svc", "--adjust-for-init"]), &["svc", "--adjust-for-init"]);
    run(solve(good, &["--solver", "lstsq", "--kernel-gamma", "2"]), &["--kernel-gamma"]);
    run(solve(good, &["--reg=-1"]), &["-1", "--reg"]);

    // Datasets missing or of the wrong shape, labels out of range, f0 missing.
    let variant = |name: &str, edit: &dyn Fn(&hdf5::File)| -> String {
        let path = dir.path().join(name);
        std::fs::copy(good, &path).unwrap();
        let f = hdf5::File::open_rw(&path).unwrap();
        edit(&f);
        drop(f);
        path.to_str().unwrap().to_string()
    };
    let no_test = variant("no_test.h5", &|f| f.unlink("test").unwrap());
    run(solve(&no_test, &[]), &["no_test.h5", "no dataset 'test'"]);
    let bad_dev = variant("bad_dev.h5", &|f| {
        f.unlink("dev").unwrap();
        f.new_dataset_builder()
            .with_data(&ArrayD::<f64>::zeros(IxDyn(&[16, 2, 16, 1])))
            .create("dev")
            .unwrap();
    });
    run(solve(&bad_dev, &[]), &["bad_dev.h5", "'dev'", "[16, 2, 16, 1]", "[16, 1, M, 1]"]);
    let bad_labels = variant("bad_labels.h5", &|f| {
        f.unlink("train_labels").unwrap();
        f.new_dataset_builder()
            .with_data(&ndarray::Array1::from(vec![2i64; 16]))
            .create("train_labels")
            .unwrap();
    });
    run(solve(&bad_labels, &[]), &["'train_labels'", "0..2"]);
    let no_f0 = variant("no_f0.h5", &|f| f.unlink("dev_f0").unwrap());
    run(solve(&no_f0, &["--solver", "lstsq", "--adjust-for-init"]), &["'dev_f0'", "--adjust-for-init"]);
    let bad_task = variant("bad_task.h5", &|f| {
        f.delete_attr("task").unwrap();
        let v: VarLenUnicode = "sst2".parse().unwrap();
        f.new_attr::<VarLenUnicode>().create("task").unwrap().write_scalar(&v).unwrap();
    });
    run(solve(&bad_task, &[]), &["attribute 'task'", "unknown task 'sst2'"]);
    let not_binary = variant("not_binary.h5", &|f| {
        f.delete_attr("binary").unwrap();
        f.new_attr::<bool>().create("binary").unwrap().write_scalar(&false).unwrap();
    });
    run(solve(&not_binary, &[]), &["attribute 'binary'", "C = 1"]);
    assert!(!Path::new(&out).exists());
}

#[test]
fn two_ranks_report_what_one_rank_reports() {
    no_file_locking();
    let dir = tempfile::tempdir().unwrap();
    let path = write_problem(dir.path(), "binary", &fixture()["problems"]["binary"]);
    for (name, extra) in
        [("grid", &["--solver", "svr", "--reg-grid", "0,0.01,0.1"][..]), ("folds", &["--solver", "logistic"])]
    {
        let one = dir.path().join(format!("{name}-1.json"));
        let two = dir.path().join(format!("{name}-2.json"));
        let args = |out: &Path| -> Vec<String> {
            let mut v: Vec<String> = ["--threads", "1", "solve", "--kernels", path.to_str().unwrap()]
                .iter()
                .map(|s| s.to_string())
                .collect();
            v.extend(extra.iter().map(|s| s.to_string()));
            v.extend(["--out".to_string(), out.to_str().unwrap().to_string()]);
            v
        };
        let a = args(&one);
        let out = mezo(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        assert!(out.status.success(), "{}", stderr(&out));
        let b = args(&two);
        let out = common::mpirun(2).args(&b).output().expect("mpirun");
        assert!(out.status.success(), "{}", stderr(&out));
        let (mut r1, mut r2) = (results(&one), results(&two));
        assert_eq!(r2["config"]["ranks"], 2);
        r1["config"]["ranks"] = Value::Null;
        r2["config"]["ranks"] = Value::Null;
        assert_eq!(r1, r2, "{name}");
    }
    // An input error on every rank ends the job with exit code 2 and one message (rank 0's).
    let out = common::mpirun(2)
        .args(["solve", "--kernels", path.to_str().unwrap(), "--solver", "asym", "--out"])
        .arg(dir.path().join("never.json"))
        .output()
        .expect("mpirun");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.matches("--solver asym needs an asymmetric_signgd kernel file").count(), 1, "{err}");
}

// ---------------------------------------------------------------------------------------------
// mezo gather over solve results and training run directories.

#[test]
fn gather_keeps_the_best_dev_per_seed_and_averages_test() {
    no_file_locking();
    let dir = tempfile::tempdir().unwrap();
    let p = fixture()["problems"]["binary"].clone();
    let runs = dir.path().join("runs");
    std::fs::create_dir_all(runs.join("solve")).unwrap();
    // Seed 13: the fixture problem; seed 42: the same with dev and test exchanged.
    let mut solved = BTreeMap::new();
    for seed in [13i64, 42] {
        let (dev, test) = if seed == 13 { ("dev", "test") } else { ("test", "dev") };
        let path = dir.path().join(format!("k{seed}.h5"));
        let splits = ["train", dev, test];
        write_kernels(
            &path,
            &KernelFile {
                task: "sst-2",
                formula: "sgd",
                binary: Some(true),
                grad_dim: None,
                seed,
                kernels: splits.map(|s| array(&p["kernels"][s])),
                labels: splits.map(|s| labels(&p["labels"][s])),
                f0: None,
            },
        );
        for (solver, reg) in [("lstsq", "0"), ("lstsq", "0.1"), ("svc", "0")] {
            let out = runs.join("solve").join(format!("{solver}-{seed}-{reg}.json"));
            let status = mezo(&[
                "-q",
                "solve",
                "--kernels",
                path.to_str().unwrap(),
                "--solver",
                solver,
                "--reg",
                reg,
                "--out",
                out.to_str().unwrap(),
            ]);
            assert!(status.status.success(), "{}", stderr(&status));
            solved.insert((solver, seed, reg), results(&out));
        }
    }
    // A training run directory as `mezo train` leaves it (config.json + results.json).
    let train = runs.join("train-13");
    std::fs::create_dir_all(&train).unwrap();
    let config = serde_json::json!({
        "program": "mezo 0.1.0", "optimizer": "mezo", "rng": "reference", "ranks": 1,
        "load": {"model": "m", "dtype": "F32", "num_labels": 2, "init_seed": 13, "lora": null, "num_prefix": null},
        "train": {"steps": 10, "lr": 1e-6, "eps": 1e-3, "seed": 13, "out_dir": train},
        "data": {"task": "sst-2", "data_dir": "data/k-shot-1k-test/SST-2/16-13", "seed": 13},
    });
    std::fs::write(train.join("config.json"), config.to_string()).unwrap();
    let summary = serde_json::json!({"best_step": 10, "best_dev": {"eval_acc": 0.75}, "test": {"eval_acc": 0.5},
                                     "final_train_loss": 0.69});
    std::fs::write(train.join("results.json"), summary.to_string()).unwrap();
    std::fs::write(runs.join("notes.json"), "{\"unrelated\": 1}").unwrap();

    let out = mezo(&["gather", runs.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let groups: Value = serde_json::from_slice(&out.stdout).unwrap();
    let groups = groups.as_array().unwrap();
    assert_eq!(groups.len(), 3, "{groups:#?}");
    let find = |pred: &dyn Fn(&Value) -> bool| groups.iter().find(|g| pred(g)).unwrap().clone();
    let lstsq = find(&|g| g["tag"]["solver"] == "lstsq");
    let seeds = lstsq["seeds"].as_array().unwrap();
    assert_eq!(seeds.len(), 2);
    let mut tests = Vec::new();
    // Seed 42's dev is the fixture's test split, where λ = 0 and 0.1 tie (0.85).
    let acc = |reg| solved[&("lstsq", 42, reg)]["best_dev"]["eval_acc"].clone();
    assert_eq!((acc("0"), acc("0.1")), (serde_json::json!(0.85), serde_json::json!(0.85)));
    for (s, seed) in seeds.iter().zip([13i64, 42]) {
        assert_eq!(s["runs"], 2);
        let dev = |reg| solved[&("lstsq", seed, reg)]["best_dev"]["eval_acc"].as_f64().unwrap();
        // On a dev tie the first path in sorted order wins: "lstsq-S-0.1.json" < "lstsq-S-0.json".
        let best = if dev("0") > dev("0.1") { "0" } else { "0.1" };
        assert_eq!(s["dev"].as_f64().unwrap(), dev(best));
        let test = solved[&("lstsq", seed, best)]["test"]["eval_acc"].as_f64().unwrap();
        assert_eq!(s["test"]["eval_acc"].as_f64().unwrap(), test);
        tests.push(test);
    }
    let mean = (tests[0] + tests[1]) / 2.0;
    assert!((lstsq["test_mean"]["eval_acc"].as_f64().unwrap() - mean).abs() < 1e-12);
    assert!((lstsq["test_std"]["eval_acc"].as_f64().unwrap() - (tests[0] - mean).abs()).abs() < 1e-12);
    let svc = find(&|g| g["tag"]["solver"] == "svc");
    assert_eq!(svc["seeds"].as_array().unwrap().len(), 2);
    let mezo_run = find(&|g| g["tag"]["optimizer"] == "mezo");
    assert_eq!(mezo_run["tag"]["data.data_dir.k"], "16");
    assert_eq!(mezo_run["test_mean"]["eval_acc"], 0.5);

    // Conditions filter; the table names what differs between groups.
    let out = mezo(&[
        "gather",
        runs.to_str().unwrap(),
        "--condition",
        "solver=svc",
        "--condition",
        "kernel.seed=13",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("over 1 seed(s), 1 run(s)"), "{stdout}");
    refused(&["gather", "nowhere"], &["nowhere", "no such file or directory"]);
    refused(
        &["gather", runs.to_str().unwrap(), "--condition", "solver"],
        &["--condition solver", "KEY=VALUE"],
    );
}
