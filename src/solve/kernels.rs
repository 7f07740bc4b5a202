//! Reading a kernel file (the HDF5 layout of `mezo kernel`, or `.pt` files imported with
//! `scripts/convert_published_kernels.py`) into the flattened matrices the solvers work on.
//!
//! Layout (docs/reference.md §6.3, and the README's "Kernel files"):
//!
//! | name | type, shape | meaning |
//! |---|---|---|
//! | `train`, `dev`, `test` | f64 [N, C, M, C] | K[t, c; x, c'] for train example t and example x of the split |
//! | (asymmetric_signgd) | f64 [2, N, C, M, C] | index 0: sign on the train side, index 1: sign on the X side |
//! | `train_labels`, `dev_labels`, `test_labels` | int64 \[M\] | class ids (index in the task's label list) |
//! | `train_f0`, `dev_f0`, `test_f0` (optional) | f64 or f32 [M, C] | the outputs f(x; θ₀) the kernel was taken at |
//! | root attributes | | `formula` (sgd, signgd, asymmetric_signgd), `task` (registry name), `binary` (bool: C = 1, f = z₁ − z₀), `grad_dim`; others (model, seed, k, ...) are carried into the results |
//!
//! Labels are always class ids, also for binary kernels: the solver turns them into the ±1 targets
//! the reference stores. f0 is only needed for `--adjust-for-init`.
//!
//! Every rank needs the whole kernel to solve, so the read is shared: each rank reads a
//! contiguous block of the leading axis in one collective MPI-IO read, and the blocks are then
//! all-gathered over MPI. The file is read once from disk however many ranks there are.

use crate::dist::Dist;
use crate::error::InputError;
use crate::h5::H5File;
use anyhow::{bail, ensure, Context, Result};
use hdf5::types::{TypeDescriptor, VarLenAscii, VarLenUnicode};
use ndarray::Array2;
use std::path::{Path, PathBuf};

pub use crate::kernel::Formula;

/// One split X ∈ {train, dev, test} of a kernel file, flattened as docs/reference.md §7.1.
#[derive(Debug, Clone)]
pub struct Split {
    /// K[t·C + c, x·C + c'], [N·C, M·C]; index 0 for asymmetric kernels.
    pub kernel: Array2<f64>,
    /// Index 1 of an asymmetric kernel (sign on the X side), flattened the same way.
    pub flipped: Option<Array2<f64>>,
    /// Class ids of the M examples.
    pub labels: Vec<usize>,
    /// f0 of the M examples, flattened example-major ([M·C]), when the file has it.
    pub f0: Option<Vec<f64>>,
}

impl Split {
    pub fn examples(&self) -> usize {
        self.labels.len()
    }
}

/// A whole kernel file.
#[derive(Debug, Clone)]
pub struct Kernels {
    pub path: PathBuf,
    pub formula: Formula,
    /// Registry name of the task (decides the metrics).
    pub task: String,
    /// Outputs per example (1 for binary kernels).
    pub outputs: usize,
    pub binary: bool,
    pub grad_dim: Option<u64>,
    pub train: Split,
    pub dev: Split,
    pub test: Split,
    /// All scalar (and 1-D) root attributes, for the results' record of what was solved.
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

impl Kernels {
    pub fn split(&self, name: SplitName) -> &Split {
        match name {
            SplitName::Train => &self.train,
            SplitName::Dev => &self.dev,
            SplitName::Test => &self.test,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitName {
    Train,
    Dev,
    Test,
}

impl SplitName {
    pub fn name(self) -> &'static str {
        match self {
            SplitName::Train => "train",
            SplitName::Dev => "dev",
            SplitName::Test => "test",
        }
    }
}

/// Reads `path`; collective over the ranks of `dist`. `with_f0`: the f0 datasets must be present.
pub fn read(dist: &Dist, path: &Path, with_f0: bool) -> Result<Kernels> {
    if !path.is_file() {
        bail!(InputError(format!("--kernels {}: no such file", path.display())));
    }
    if path.extension().is_some_and(|e| e == "partial") {
        bail!(InputError(format!(
            "--kernels {}: an unfinished kernel file (mezo kernel is still computing it, or was interrupted: \
             rerun the same mezo kernel command to finish it)",
            path.display()
        )));
    }
    let file = H5File::open(dist, path).map_err(|e| InputError(format!("{e:#}")))?;
    let bad = |what: String| InputError(format!("{}: {what}", path.display()));
    if file.file().link_exists("rows_done") {
        let rows = shape_of(&file, "rows_done").map_err(|e| bad(e.to_string()))?;
        let done = file.read_rows::<u8>("rows_done", 0..rows.first().copied().unwrap_or(0))?;
        if let Some(row) = done.iter().position(|&d| d == 0) {
            bail!(bad(format!(
                "train row {row} is not computed (dataset 'rows_done'); the file is incomplete"
            )));
        }
    }
    let attributes = root_attributes(file.file()).with_context(|| format!("reading {}", path.display()))?;

    let train_shape = shape_of(&file, "train").map_err(|e| bad(e.to_string()))?;
    let asymmetric = match train_shape.len() {
        4 => false,
        5 if train_shape[0] == 2 => true,
        _ => bail!(bad(format!(
            "dataset 'train' has shape {train_shape:?}; expected [N, C, N, C] or [2, N, C, N, C] (asymmetric_signgd)"
        ))),
    };
    let dims = if asymmetric { &train_shape[1..] } else { &train_shape[..] };
    let (n, c) = (dims[0], dims[1]);
    ensure!(
        n > 0 && c > 0 && dims[2] == n && dims[3] == c,
        bad(format!("dataset 'train' has shape {train_shape:?}; expected train×train [N, C, N, C]"))
    );
    let formula = match attributes.get("formula").and_then(|v| v.as_str()) {
        Some(name) => Formula::parse(name).ok_or_else(|| {
            bad(format!("attribute 'formula' is '{name}'; expected sgd, signgd or asymmetric_signgd"))
        })?,
        None if asymmetric => Formula::AsymmetricSignGd,
        None => Formula::Sgd,
    };
    if asymmetric != (formula == Formula::AsymmetricSignGd) {
        bail!(bad(format!(
            "attribute 'formula' is '{}' but dataset 'train' has shape {train_shape:?}",
            formula.name()
        )));
    }
    let task = attributes
        .get("task")
        .and_then(|v| v.as_str())
        .ok_or_else(|| bad("no root attribute 'task' (the task name, e.g. sst-2)".into()))?
        .to_string();
    let binary = match attributes.get("binary") {
        None => c == 1,
        Some(v) => v
            .as_bool()
            .or_else(|| v.as_i64().map(|i| i != 0))
            .ok_or_else(|| bad(format!("attribute 'binary' is {v}; expected a boolean")))?,
    };
    if binary != (c == 1) {
        bail!(bad(format!(
            "attribute 'binary' is {binary} but the kernels have C = {c} outputs per example (binary means C = 1)"
        )));
    }
    let grad_dim = attributes.get("grad_dim").and_then(|v| v.as_u64());
    let classes = if binary { 2 } else { c };

    let read_split = |name: SplitName| -> Result<Split> {
        let ds = name.name();
        let shape = shape_of(&file, ds).map_err(|e| bad(e.to_string()))?;
        let expected_rank = if asymmetric { 5 } else { 4 };
        let d = &shape[shape.len().saturating_sub(4)..];
        if shape.len() != expected_rank
            || (asymmetric && shape[0] != 2)
            || d[0] != n
            || d[1] != c
            || d[3] != c
        {
            let want =
                if asymmetric { format!("[2, {n}, {c}, M, {c}]") } else { format!("[{n}, {c}, M, {c}]") };
            bail!(bad(format!(
                "dataset '{ds}' has shape {shape:?}; expected {want} (dataset 'train' is {train_shape:?})"
            )));
        }
        let m = d[2];
        if !is_float(&file, ds) {
            bail!(bad(format!("dataset '{ds}' does not hold floating-point numbers")));
        }
        // [N, C, M, C] in row-major order already is [N·C, M·C]: no copy.
        let mut values = read_shared(dist, &file, ds)?;
        if let Some(at) = values.iter().position(|v| !v.is_finite()) {
            let index = unravel(at, &shape);
            bail!(bad(format!("dataset '{ds}' holds {} at index {index:?}", values[at])));
        }
        let flat =
            |v: Vec<f64>| Array2::from_shape_vec((n * c, m * c), v).expect("the dataset's size was checked");
        let flipped = asymmetric.then(|| flat(values.split_off(n * c * m * c)));
        let kernel = flat(values);
        let labels_name = format!("{ds}_labels");
        let labels_shape = shape_of(&file, &labels_name).map_err(|e| bad(e.to_string()))?;
        if labels_shape != [m] {
            bail!(bad(format!("dataset '{labels_name}' has shape {labels_shape:?}; expected [{m}]")));
        }
        let raw: Vec<i64> = file
            .read_rows::<i64>(&labels_name, 0..m)
            .with_context(|| format!("reading '{labels_name}' of {}", path.display()))?
            .into_iter()
            .collect();
        let labels = raw
            .iter()
            .map(|&l| {
                usize::try_from(l).ok().filter(|&l| l < classes).ok_or_else(|| {
                    bad(format!("dataset '{labels_name}' holds {l}; class ids must be in 0..{classes}"))
                })
            })
            .collect::<Result<Vec<usize>, _>>()?;
        let f0_name = format!("{ds}_f0");
        let f0 = if file.file().link_exists(&f0_name) {
            let f0_shape = shape_of(&file, &f0_name).map_err(|e| bad(e.to_string()))?;
            if f0_shape != [m, c] {
                bail!(bad(format!("dataset '{f0_name}' has shape {f0_shape:?}; expected [{m}, {c}]")));
            }
            if !is_float(&file, &f0_name) {
                bail!(bad(format!("dataset '{f0_name}' does not hold floating-point numbers")));
            }
            let values: Vec<f64> = file
                .read_rows::<f64>(&f0_name, 0..m)
                .with_context(|| format!("reading '{f0_name}' of {}", path.display()))?
                .into_iter()
                .collect();
            if let Some(at) = values.iter().position(|v| !v.is_finite()) {
                let index = unravel(at, &[m, c]);
                bail!(bad(format!("dataset '{f0_name}' holds {} at index {index:?}", values[at])));
            }
            Some(values)
        } else if with_f0 {
            bail!(bad(format!("no dataset '{f0_name}', which --adjust-for-init needs")));
        } else {
            None
        };
        Ok(Split { kernel, flipped, labels, f0 })
    };
    let train = read_split(SplitName::Train)?;
    let dev = read_split(SplitName::Dev)?;
    let test = read_split(SplitName::Test)?;
    file.close()?;
    Ok(Kernels {
        path: path.to_owned(),
        formula,
        task,
        outputs: c,
        binary,
        grad_dim,
        train,
        dev,
        test,
        attributes,
    })
}

fn is_float(file: &H5File, name: &str) -> bool {
    file.file()
        .dataset(name)
        .and_then(|d| d.dtype())
        .and_then(|t| t.to_descriptor())
        .is_ok_and(|t| matches!(t, hdf5::types::TypeDescriptor::Float(_)))
}

/// The multi-index of flat position `at` in a row-major array of `shape`.
fn unravel(mut at: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (axis, &size) in shape.iter().enumerate().rev() {
        index[axis] = at % size.max(1);
        at /= size.max(1);
    }
    index
}

fn shape_of(file: &H5File, name: &str) -> Result<Vec<usize>, InputError> {
    file.shape(name).map_err(|_| InputError(format!("no dataset '{name}'")))
}

/// The whole f64 dataset `name` on every rank: each rank reads a contiguous block of its leading
/// axis (one collective read), then the blocks are all-gathered in rank order.
fn read_shared(dist: &Dist, file: &H5File, name: &str) -> Result<Vec<f64>> {
    let rows = file.shape(name)?[0];
    let (size, rank) = (dist.size(), dist.rank());
    let block = |r: usize| (rows * r / size)..(rows * (r + 1) / size);
    let mine = file
        .read_rows::<f64>(name, block(rank))
        .with_context(|| format!("reading dataset '{name}' of {}", file.path().display()))?;
    let (mine, _) = mine.into_raw_vec_and_offset();
    if size == 1 {
        return Ok(mine);
    }
    ensure!(
        mine.len() < i32::MAX as usize,
        "dataset '{name}': a rank's block of {} values is more than one MPI all-gather carries",
        mine.len()
    );
    Ok(dist.all_gather(&mine).concat())
}

/// The root attributes as JSON: strings, numbers, booleans and 1-D arrays of them.
fn root_attributes(file: &hdf5::File) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut out = serde_json::Map::new();
    for name in file.attr_names()? {
        let attr = file.attr(&name)?;
        if let Some(value) = attribute_json(&attr)? {
            out.insert(name, value);
        }
    }
    Ok(out)
}

fn attribute_json(attr: &hdf5::Attribute) -> Result<Option<serde_json::Value>> {
    use serde_json::Value;
    let descriptor = attr.dtype()?.to_descriptor()?;
    let ndim = attr.ndim();
    if ndim > 1 {
        return Ok(None);
    }
    let values: Vec<Value> = match descriptor {
        TypeDescriptor::Integer(_) => attr.read_raw::<i64>()?.into_iter().map(Value::from).collect(),
        TypeDescriptor::Unsigned(_) => attr.read_raw::<u64>()?.into_iter().map(Value::from).collect(),
        TypeDescriptor::Float(_) => attr.read_raw::<f64>()?.into_iter().map(Value::from).collect(),
        // Also h5py's numpy booleans (an int8 enum {FALSE, TRUE}).
        TypeDescriptor::Boolean => attr.read_raw::<bool>()?.into_iter().map(Value::from).collect(),
        TypeDescriptor::VarLenUnicode => {
            attr.read_raw::<VarLenUnicode>()?.into_iter().map(|s| Value::from(s.as_str())).collect()
        }
        TypeDescriptor::VarLenAscii => {
            attr.read_raw::<VarLenAscii>()?.into_iter().map(|s| Value::from(s.as_str())).collect()
        }
        TypeDescriptor::FixedAscii(_) => attr
            .read_raw::<hdf5::types::FixedAscii<1024>>()?
            .into_iter()
            .map(|s| Value::from(s.as_str()))
            .collect(),
        TypeDescriptor::FixedUnicode(_) => attr
            .read_raw::<hdf5::types::FixedUnicode<1024>>()?
            .into_iter()
            .map(|s| Value::from(s.as_str()))
            .collect(),
        _ => return Ok(None),
    };
    Ok(Some(if ndim == 0 { values.into_iter().next().unwrap_or(Value::Null) } else { Value::Array(values) }))
}
