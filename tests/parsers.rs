//! The parsers users feed, on arbitrary input: a value or a clean error, never a panic. Each
//! property starts from valid input and damages it, so that the cases reach deep into each
//! parser rather than failing at its first byte.

use mezo::data::examples::{load_split, Split};
use mezo::data::tasks;
use mezo::data::template::{self, EncodeConfig, Encoder};
use mezo::dist::Dist;
use mezo::train::{read_trajectory, TornTail, TrajectoryWriter};
use proptest::prelude::*;
use std::path::Path;

mod common;
use common::repo;

/// Text made of the pieces a parser looks for and arbitrary characters around them.
fn pieces(alphabet: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(alphabet).prop_map(str::to_string),
            any::<char>().prop_map(String::from)
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

/// Replaces, inserts or deletes bytes of `valid` at arbitrary places.
fn damaged(valid: &'static str) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 0..6).prop_map(move |edits| {
        let mut bytes = valid.as_bytes().to_vec();
        for (at, byte, kind) in edits {
            let i = if bytes.is_empty() { 0 } else { at.index(bytes.len()) };
            match kind {
                0 if !bytes.is_empty() => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ if !bytes.is_empty() => {
                    bytes.remove(i);
                }
                _ => {}
            }
        }
        bytes
    })
}

fn tokenizer() -> tokenizers::Tokenizer {
    template::load_tokenizer(&repo("data/demo/model/tokenizer.json")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mappings(text in pieces(&["{", "}", "'", "\"", ":", ",", "0", "1", "great", "terrible", "\\", " "])) {
        let _ = template::parse_mapping(&text);
    }

    #[test]
    fn templates_encode_or_refuse(
        text in pieces(&["*cls*", "*mask*", "*sep+*", "*sent_0*", "*+sent_1*", "*sentl_0*", "*-sent_0*",
                         "*label_0*", "*labelx_1*", "*sent-_0*", "*", "_", "+", "-", "It was", " "]),
        sentence in "[a-z ,.!]{0,40}",
    ) {
        let config = || EncodeConfig { max_length: 64, first_sent_limit: Some(20), other_sent_limit: None,
                                       truncate_head: false };
        let words = vec!["terrible".to_string(), "great".to_string()];
        if let Ok(encoder) = Encoder::prompt(tokenizer(), &text, &words, config()) {
            let _ = encoder.encode(&[&sentence, &sentence], &[]);
        }
        if let Ok(encoder) = Encoder::causal_prompt(tokenizer(), &text, &words, config()) {
            let _ = encoder.encode(&[&sentence], &[]);
        }
    }

    #[test]
    fn csv_files(bytes in damaged("\"a, b\",\"c\"\"d\",1\nplain,2,\"multi\nline\"\n,,\n")) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = mezo::data::csv::parse(Path::new("x.csv"), &text);
    }

    #[test]
    fn task_splits(bytes in damaged("sentence\tlabel\nit is great\t1\nawful\t0\n"), csv in damaged("0,\"bad, bad\"\n1,good\n")) {
        let dir = tempfile::tempdir().unwrap();
        for (task, name, content) in [("SST-2", "train.tsv", &bytes), ("mr", "train.csv", &csv)] {
            std::fs::write(dir.path().join(name), content).unwrap();
            let _ = load_split(tasks::task(task).unwrap(), dir.path(), Split::Train);
        }
    }

    #[test]
    fn trajectories(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
                    cut in any::<prop::sample::Index>()) {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = TrajectoryWriter::create(&Dist::single(), dir.path(), &serde_json::json!({"seed": 3})).unwrap();
        for step in 1..=4 {
            writer.record(&serde_json::json!({"step": step, "seed": 11, "projected_grad": 0.5, "lr": 1e-3})).unwrap();
        }
        let path = dir.path().join("trajectory.jsonl");
        let mut bytes = std::fs::read(&path).unwrap();
        for (at, byte) in &edits {
            let i = at.index(bytes.len());
            bytes[i] = *byte;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        std::fs::write(&path, &bytes).unwrap();
        for torn in [TornTail::Refuse, TornTail::Repair] {
            if let Ok(t) = read_trajectory(dir.path(), torn) {
                // Whatever verifies is a prefix of what was written.
                prop_assert!(t.steps.len() <= 4);
                prop_assert!(t.steps.iter().enumerate().all(|(i, s)| s.step == i + 1 && s.lr == 1e-3));
            }
        }
    }
}

/// A kernel file of arbitrary dataset shapes, types and attributes.
#[derive(Debug, Clone)]
struct KernelFile {
    n: usize,
    c: usize,
    m: [usize; 3],
    asymmetric: bool,
    float_kernels: bool,
    labels: Vec<i64>,
    formula: Option<&'static str>,
    binary: Option<bool>,
    task: Option<&'static str>,
    nan_at: Option<usize>,
    rows_done: Option<Vec<u8>>,
}

fn kernel_files() -> impl Strategy<Value = KernelFile> {
    (
        (0..4usize, 1..3usize, prop::array::uniform3(0..4usize), any::<bool>(), prop::bool::weighted(0.8)),
        prop::collection::vec(-1..3i64, 0..6),
        prop::option::of(prop::sample::select(&["sgd", "signgd", "asymmetric_signgd", "bogus"][..])),
        prop::option::of(any::<bool>()),
        prop::option::of(prop::sample::select(&["sst-2", "SST-2", "mnli", "nope"][..])),
        prop::option::weighted(0.2, 0..200usize),
        prop::option::of(prop::collection::vec(0..2u8, 0..4)),
    )
        .prop_map(
            |((n, c, m, asymmetric, float_kernels), labels, formula, binary, task, nan_at, rows_done)| {
                KernelFile {
                    n,
                    c,
                    m,
                    asymmetric,
                    float_kernels,
                    labels,
                    formula,
                    binary,
                    task,
                    nan_at,
                    rows_done,
                }
            },
        )
}

fn write_kernel_file(path: &Path, k: &KernelFile) {
    let file = hdf5::File::create(path).unwrap();
    let columns = [k.n, k.m[1], k.m[2]];
    for (split, &m) in ["train", "dev", "test"].iter().zip(&columns) {
        let mut shape = vec![k.n, k.c, m, k.c];
        if k.asymmetric {
            shape.insert(0, 2);
        }
        let size: usize = shape.iter().product();
        if k.float_kernels {
            let mut values: Vec<f64> = (0..size).map(|i| (i % 7) as f64 - 3.0).collect();
            if let Some(at) = k.nan_at.filter(|&at| at < size) {
                values[at] = f64::NAN;
            }
            file.new_dataset::<f64>()
                .shape(shape.clone())
                .create(*split)
                .unwrap()
                .write_raw(&values)
                .unwrap();
        } else {
            let values: Vec<i64> = (0..size as i64).collect();
            file.new_dataset::<i64>()
                .shape(shape.clone())
                .create(*split)
                .unwrap()
                .write_raw(&values)
                .unwrap();
        }
        let labels: Vec<i64> = (0..m).map(|i| k.labels.get(i).copied().unwrap_or(0)).collect();
        file.new_dataset::<i64>()
            .shape([m])
            .create(format!("{split}_labels").as_str())
            .unwrap()
            .write_raw(&labels)
            .unwrap();
    }
    if let Some(formula) = k.formula {
        let v: hdf5::types::VarLenUnicode = formula.parse().unwrap();
        file.new_attr::<hdf5::types::VarLenUnicode>().create("formula").unwrap().write_scalar(&v).unwrap();
    }
    if let Some(task) = k.task {
        let v: hdf5::types::VarLenUnicode = task.parse().unwrap();
        file.new_attr::<hdf5::types::VarLenUnicode>().create("task").unwrap().write_scalar(&v).unwrap();
    }
    if let Some(binary) = k.binary {
        file.new_attr::<bool>().create("binary").unwrap().write_scalar(&binary).unwrap();
    }
    if let Some(done) = &k.rows_done {
        file.new_dataset::<u8>().shape([done.len()]).create("rows_done").unwrap().write_raw(done).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn kernel_files_read_or_refuse(k in kernel_files()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.h5");
        write_kernel_file(&path, &k);
        let dist = Dist::single();
        match mezo::solve::kernels::read(&dist, &path, false) {
            Ok(kernels) => {
                prop_assert!(k.float_kernels && k.n > 0);
                prop_assert!(kernels.train.kernel.iter().all(|v| v.is_finite()));
            }
            Err(e) => prop_assert_eq!(mezo::error::exit_code(&e), 2, "{:#}", e),
        }
    }
}
