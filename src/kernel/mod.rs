//! Empirical NTK kernels of prompt-based fine-tuning (LM-Kernel-FT's `kernel_trainer`), computed
//! in row blocks spread over the ranks and written collectively into one HDF5 file.
//!
//! The reference builds every entry K[t, c; x, c'] with a forward-mode JVP along the train
//! gradient, so each column example is differentiated again for every train example: about
//! N_tr · N_X · C example-JVPs. Here every gradient is computed once per row block and every entry
//! is a dot product ([`products`]):
//!
//! * each rank takes a contiguous share of the train examples (no padding) and works through it
//!   in blocks of R ([`KernelConfig::row_block`]); a block's R·C gradients stay in memory;
//! * for each block, every column example (train, dev, test) is differentiated once and
//!   multiplied with the block in batches ([`KernelConfig::column_batch`]);
//! * examples are differentiated [`KernelConfig::gradient_batch`] at a time, one forward and C
//!   backward passes per batch, each split into the examples' own gradients
//!   ([`per_example`]): C · ⌈N / batch⌉ passes for N example-gradients, where differentiating
//!   each example alone (the first one of a run is, to learn which tensors have gradients) costs
//!   C · N, and the reference C · N_tr · (N_tr + N_dev + N_test) JVPs (twice for dev and test
//!   with `asymmetric_signgd`). Example-gradients: N_tr + Σ_blocks (N_tr − R_b + N_dev + N_test),
//!   that is N_tr + N_dev + N_test when the train gradients fit in one block per rank;
//! * bytes moved by the products: per block, its R·C·P gradient values once per column batch,
//!   plus each column's C·P values once, with P the dense part plus the touched vocabulary rows.
//!
//! Both counts are logged at the end of a run. The file records which train rows are complete;
//! rerunning the same command after a crash computes only the missing rows, and a file made with
//! other arguments, other weights or other data (content fingerprints, not paths) is refused. It
//! keeps its `.partial` name until every row is written and the file is synced; a `.partial` that
//! HDF5 cannot open (killed before its first flush) is set aside and the computation starts over.
//! One writer at a time: `FILE.lock` beside the file is held for the whole computation.

pub mod gradients;
mod per_example;
pub mod products;

use crate::data::batch::shard;
use crate::data::dataset::{Feature, TaskData};
use crate::data::examples::Label;
use crate::dist::{Dist, Reduce};
use crate::error::InputError;
use crate::h5::{partial_path, H5File};
use crate::model::{FreezeRules, Model};
use anyhow::{bail, Context, Result};
use gradients::{ExampleGradient, Gradients};
use hdf5::types::VarLenUnicode;
use ndarray::{ArrayD, IxDyn};
pub use products::Formula;
use products::RowBlock;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

/// What `mezo kernel` computes.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    pub formula: Formula,
    /// One output z1 − z0 (binary tasks) instead of one per label.
    pub binary: bool,
    /// Which parameters are differentiated (`Scope::Full` with the reference's exclusion flags).
    pub freeze: FreezeRules,
    /// Train examples whose gradients a rank keeps at once; 0: as many as fit in
    /// [`KernelConfig::memory_budget`].
    pub row_block: usize,
    /// Bytes of row-block gradients a rank may hold when `row_block` is 0; `None`: what the
    /// device has free after the model, the column batch and the gradient batches (a GPU), or
    /// [`DEFAULT_CPU_BUDGET`] (the CPU).
    pub memory_budget: Option<u64>,
    /// Column examples multiplied with a block at once.
    pub column_batch: usize,
    /// Examples differentiated together, in one forward and C backward passes (1: one at a time).
    pub gradient_batch: usize,
    /// Compute only these train rows (split over the ranks) and leave the file `.partial`: a
    /// later run computes the rest. A long kernel in time-limited jobs, or one rank's share of a
    /// larger run timed alone.
    pub rows: Option<std::ops::Range<usize>>,
    pub out: PathBuf,
    /// Replace a complete file at `out`.
    pub overwrite: bool,
    /// Root attributes describing the run (task, model, seed, k, template, label words...):
    /// written into the file and compared when a run resumes.
    pub description: serde_json::Value,
}

/// What a run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub path: PathBuf,
    pub train: usize,
    pub dev: usize,
    pub test: usize,
    pub outputs: usize,
    pub grad_dim: u64,
    /// Values per gradient that enter the products (structural zeros and untouched vocabulary
    /// rows left out).
    pub computed_dim: i64,
    pub backward_passes: u64,
    /// JVPs of the reference's schedule for the same kernels.
    pub reference_passes: u64,
    pub resumed_rows: usize,
    /// Train rows still missing (`rows` limited the run): the file is still `.partial`.
    pub missing_rows: usize,
    pub bytes_multiplied: f64,
    /// Where each rank's time went, in rank order (also the file's `seconds_by_rank` attribute).
    pub seconds_by_rank: Vec<BlockTiming>,
}

/// One rank's time in its row blocks: computing gradients (rows and columns), multiplying them,
/// and writing the rows (collective HDF5 writes, which include waiting for the other ranks).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BlockTiming {
    pub rows: usize,
    pub blocks: usize,
    pub gradients: f64,
    pub products: f64,
    pub io: f64,
    /// The whole row-block loop.
    pub total: f64,
}

const SPLITS: [&str; 3] = ["train", "dev", "test"];

/// Row-block memory on the CPU when none is given: 4 GiB.
pub const DEFAULT_CPU_BUDGET: u64 = 4 << 30;

/// Bytes of row-block gradients a rank may hold: `config`'s, or what the device has free once
/// the column batch (f32 gradients, `per_example` bytes each) and two gradient batches' worth
/// (the batch's gradients and their per-example products) are set aside, with a tenth of the
/// free memory left for activations and the allocator.
fn block_budget(config: &KernelConfig, device: Device, per_example: u64) -> Result<u64> {
    if let Some(bytes) = config.memory_budget {
        return Ok(bytes);
    }
    let Device::Cuda(ordinal) = device else { return Ok(DEFAULT_CPU_BUDGET) };
    let (free, _) = crate::cuda::context(ordinal)?.mem_get_info().context("reading the GPU's free memory")?;
    let reserved = (config.column_batch + 2 * config.gradient_batch) as u64 * per_example;
    let budget = (free as u64 / 10 * 9).saturating_sub(reserved);
    log::info!(
        "GPU {ordinal}: {:.1} GiB free, {:.1} GiB set aside for column and gradient batches: row blocks of up \
         to {:.1} GiB",
        free as f64 / (1u64 << 30) as f64,
        reserved as f64 / (1u64 << 30) as f64,
        budget as f64 / (1u64 << 30) as f64
    );
    Ok(budget)
}

/// Computes the kernels of `model` on `data` into `config.out`; collective.
pub fn compute(model: &Model, data: &mut TaskData, dist: &Dist, config: &KernelConfig) -> Result<Summary> {
    let labels = data.config.task.labels.len();
    if data.config.task.regression {
        bail!(InputError(format!(
            "kernels of the regression task {} are not supported",
            data.config.task.name
        )));
    }
    if config.binary && labels != 2 {
        bail!(InputError(format!(
            "--binary needs a task with 2 labels; {} has {labels}",
            data.config.task.name
        )));
    }
    if config.formula == Formula::AsymmetricSignGd && !config.binary {
        bail!(InputError("--formula asymmetric_signgd needs --binary (as in the reference)".into()));
    }
    if data.config.few_shot_type == crate::data::dataset::FewShotType::PromptDemo {
        bail!(InputError("kernels use no demonstrations: --few-shot-type prompt or finetune".into()));
    }
    let included: Vec<(String, Tensor)> = model
        .trainable(&config.freeze)
        .into_iter()
        .map(|p| (p.name.clone(), p.tensor.shallow_clone()))
        .collect();
    if included.is_empty() {
        bail!(InputError("the exclusion flags leave no parameter to differentiate".into()));
    }
    let grad_dim: u64 = included.iter().map(|(_, t)| t.numel() as u64).sum();
    let pad = data.encoder.special().pad;
    let train: Vec<Feature> =
        (0..data.train.len()).map(|i| data.train_feature(i)).collect::<Result<_, _>>()?;
    let columns: [Vec<Feature>; 3] = [train.clone(), data.dev.features.clone(), data.test.features.clone()];
    let model_fingerprint = crate::fingerprint::tensors(included.iter().map(|(name, t)| (name.as_str(), t)));
    let mut grads = Gradients::new(
        model,
        data.config.few_shot_type,
        data.encoder.label_word_ids(),
        config.binary,
        included,
    );
    let c = grads.outputs(labels);
    let n = [columns[0].len(), columns[1].len(), columns[2].len()];
    if n[0] == 0 {
        bail!(InputError(format!("{}: no training examples", data.config.data_dir.display())));
    }

    let fingerprints = Fingerprints { model: model_fingerprint, data: data_fingerprint(&columns) };
    let _lock = lock(dist, &config.out)?;
    let (file, done) = open(dist, config, &n, c, grad_dim, &fingerprints)?;
    let resumed_rows = done.iter().filter(|&&d| d).count();
    if resumed_rows > 0 {
        log::info!(
            "{}: {resumed_rows} of {} train rows already computed",
            partial_path(&config.out).display(),
            n[0]
        );
    }
    // f0 (the outputs at θ) and labels: cheap, recomputed on every run.
    write_outputs(&file, dist, model, data, &columns, c, config)?;

    // This rank's rows still to do, in contiguous runs of at most R.
    let wanted = config.rows.clone().unwrap_or(0..n[0]);
    if wanted.is_empty() || wanted.end > n[0] {
        bail!(InputError(format!(
            "--rows {}..{}: the kernel has train rows 0..{}",
            wanted.start, wanted.end, n[0]
        )));
    }
    let share = shard(wanted.len(), dist.rank(), dist.size());
    let mine = wanted.start + share.start..wanted.start + share.end;
    let mut todo: Vec<std::ops::Range<usize>> = Vec::new();
    let mut block_rows = config.row_block;
    for row in mine.clone().filter(|&r| !done[r]) {
        if block_rows == 0 {
            // Size the block from one gradient's footprint.
            let g = grads.example(&columns[0][row], pad)?;
            let values = (g.dense.numel() + g.sparse.iter().map(|s| s.rows.numel()).sum::<usize>()) as u64;
            let bytes = values * products::bytes_per_value(config.formula);
            let budget = block_budget(config, model.device, values * 4)?;
            if budget < bytes {
                log::warn!(
                    "one train example's gradients ({:.2} GiB) exceed the row-block memory ({:.2} GiB): \
                     blocks of one example",
                    bytes as f64 / (1u64 << 30) as f64,
                    budget as f64 / (1u64 << 30) as f64
                );
            }
            block_rows = ((budget / bytes.max(1)) as usize).clamp(1, mine.len().max(1));
            log::info!(
                "row blocks of {block_rows} train examples ({:.1} MB of gradients each)",
                bytes as f64 / 1e6
            );
        }
        match todo.last_mut() {
            Some(run) if run.end == row && run.len() < block_rows => run.end += 1,
            _ => todo.push(row..row + 1),
        }
    }
    let mut rounds = [todo.len() as u64];
    dist.all_reduce(&mut rounds, Reduce::Max);
    let progress = crate::logging::progress_bar(dist, rounds[0], "row blocks");
    let kernels = config.formula.kernels();
    let mut bytes_multiplied = 0f64;
    let mut timing = BlockTiming::default();
    let loop_start = std::time::Instant::now();
    for round in 0..rounds[0] as usize {
        let block = todo.get(round).cloned().unwrap_or(0..0);
        let before = timing;
        let mut results: Vec<ArrayD<f64>> = Vec::new();
        if !block.is_empty() {
            timing.rows += block.len();
            timing.blocks += 1;
            let clock = std::time::Instant::now();
            let block_features: Vec<&Feature> = block.clone().map(|r| &columns[0][r]).collect();
            let (rows, row_grads) =
                build_block(&mut grads, &block_features, pad, config.gradient_batch, config.formula)?;
            timing.gradients += clock.elapsed().as_secs_f64();
            let per_value = row_grads[0].dense.size()[1] as f64 * 4.0;
            for (split, features) in columns.iter().enumerate() {
                let out = Tensor::zeros(
                    [kernels as i64, block.len() as i64, c as i64, features.len() as i64, c as i64],
                    (Kind::Double, Device::Cpu),
                );
                for start in (0..features.len()).step_by(config.column_batch.max(1)) {
                    let end = (start + config.column_batch.max(1)).min(features.len());
                    let clock = std::time::Instant::now();
                    let wanted: Vec<usize> =
                        (start..end).filter(|x| !(split == 0 && block.contains(x))).collect();
                    let wanted_features: Vec<&Feature> = wanted.iter().map(|&x| &features[x]).collect();
                    let fresh: Vec<(usize, ExampleGradient)> = wanted
                        .into_iter()
                        .zip(grads.examples(&wanted_features, pad, config.gradient_batch)?)
                        .collect();
                    timing.gradients += clock.elapsed().as_secs_f64();
                    let clock = std::time::Instant::now();
                    let batch: Vec<&ExampleGradient> = (start..end)
                        .map(|x| match fresh.iter().find(|(i, _)| *i == x) {
                            Some((_, g)) => g,
                            None => &row_grads[x - block.start],
                        })
                        .collect();
                    bytes_multiplied += per_value * (c * (block.len() + batch.len())) as f64;
                    for (k, kernel) in rows.against(&batch).into_iter().enumerate() {
                        out.get(k as i64)
                            .narrow(2, start as i64, (end - start) as i64)
                            .copy_(&kernel.to_device(Device::Cpu));
                    }
                    timing.products += clock.elapsed().as_secs_f64();
                }
                results.push(to_array(&out));
            }
        } else {
            for features in &columns {
                results.push(ArrayD::zeros(IxDyn(&[kernels, 0, c, features.len(), c])));
            }
        }
        let clock = std::time::Instant::now();
        for (split, result) in SPLITS.iter().zip(results) {
            write_kernel_rows(&file, split, block.start, result, kernels)?;
        }
        let flags = ArrayD::from_elem(IxDyn(&[block.len()]), 1u8);
        file.write_rows("rows_done", block.start, flags.view())?;
        file.file().flush().context("flushing the kernel file")?;
        timing.io += clock.elapsed().as_secs_f64();
        log::debug!(
            "row block {round} (rows {:?}): gradients {:.3} s, products {:.3} s, writing {:.3} s",
            block,
            timing.gradients - before.gradients,
            timing.products - before.products,
            timing.io - before.io
        );
        progress.inc(1);
        crash_for_tests(round + 1);
    }
    progress.finish_and_clear();
    timing.total = loop_start.elapsed().as_secs_f64();
    let seconds_by_rank: Vec<BlockTiming> = dist
        .all_gather_strings(&serde_json::to_string(&timing)?)
        .iter()
        .map(|s| serde_json::from_str(s))
        .collect::<Result<_, _>>()?;
    set_text_attribute(&file, "seconds_by_rank", &serde_json::to_string(&seconds_by_rank)?)?;
    let outside = (0..n[0]).filter(|r| !wanted.contains(r) && !done[*r]).count();
    if config.formula == Formula::Sgd && outside == 0 {
        symmetrize_train(&file, dist, n[0])?;
    }

    let mut counts = [grads.backward_passes, bytes_multiplied as u64];
    dist.all_reduce(&mut counts, Reduce::Sum);
    let computed_dim = grads.dense_len().unwrap_or(0);
    let skipped = grads.structurally_zero();
    if !skipped.is_empty() {
        log::info!("left out of the products (no gradient): {}", skipped.join(", "));
    }
    let total: usize = n.iter().sum();
    let reference_passes = (c * n[0] * total) as u64
        + if config.formula == Formula::AsymmetricSignGd { (c * n[0] * (n[1] + n[2])) as u64 } else { 0 };
    drop(skipped);
    let path = if outside == 0 {
        file.commit(dist)?
    } else {
        file.close()?;
        let partial = partial_path(&config.out);
        if dist.is_root() {
            log::info!(
                "{}: {outside} of {} train rows still to compute: run the command again without --rows to \
                 finish it",
                partial.display(),
                n[0]
            );
        }
        partial
    };
    let summary = Summary {
        path,
        train: n[0],
        dev: n[1],
        test: n[2],
        outputs: c,
        grad_dim,
        computed_dim,
        backward_passes: counts[0],
        reference_passes,
        resumed_rows,
        missing_rows: outside,
        bytes_multiplied: counts[1] as f64,
        seconds_by_rank,
    };
    log::info!(
        "{} backward passes (the reference's schedule: {} JVPs), {:.2} GB of gradients multiplied, \
         grad_dim {} ({} values per gradient in the products)",
        summary.backward_passes,
        summary.reference_passes,
        summary.bytes_multiplied / 1e9,
        grad_dim,
        computed_dim
    );
    Ok(summary)
}

/// The row block of `features` and their gradients, whose dense parts are views of the block's
/// matrix (signs for `signgd`: what the products use of a column). The examples are
/// differentiated a gradient batch at a time and copied into the block's matrix as each batch is
/// done, so that a block never holds its gradients twice.
fn build_block(
    grads: &mut Gradients,
    features: &[&Feature],
    pad: i64,
    gradient_batch: usize,
    formula: Formula,
) -> Result<(RowBlock, Vec<ExampleGradient>)> {
    let mut dense: Option<Tensor> = None;
    let mut sparse: Vec<Vec<gradients::SparseRows>> = features.iter().map(|_| Vec::new()).collect();
    grads.each_example(features, pad, gradient_batch, |i, g| {
        let (c, p) = g.dense.size2()?;
        let matrix = dense.get_or_insert_with(|| {
            Tensor::empty([features.len() as i64 * c, p], (Kind::Float, g.dense.device()))
        });
        matrix.narrow(0, i as i64 * c, c).copy_(&g.dense);
        sparse[i] = g.sparse;
        Ok(())
    })?;
    let dense = dense.context("a row block of no example")?;
    let rows = RowBlock::from_parts(dense, &sparse.iter().map(Vec::as_slice).collect::<Vec<_>>(), formula);
    let row_grads = sparse
        .into_iter()
        .enumerate()
        .map(|(i, sparse)| ExampleGradient { dense: rows.dense_of(i), sparse })
        .collect();
    Ok((rows, row_grads))
}

/// Sets a string attribute of the file's root (collective: every rank calls it with the same
/// value), replacing one a crashed run may have left.
fn set_text_attribute(file: &H5File, name: &str, value: &str) -> Result<()> {
    let root = file.file();
    if root.attr(name).is_ok() {
        root.delete_attr(name).with_context(|| format!("replacing attribute {name}"))?;
    }
    let value: VarLenUnicode = value.parse().map_err(|e| anyhow::anyhow!("attribute {name}: {e:?}"))?;
    root.new_attr::<VarLenUnicode>().create(name)?.write_scalar(&value)?;
    Ok(())
}

/// Fault injection for the resume tests: `MEZO_TEST_CRASH_AFTER_BLOCKS=n` aborts the process
/// (no unwinding, no clean-up: a crash) once every rank has written n row blocks.
fn crash_for_tests(rounds: usize) {
    if let Some(n) = std::env::var("MEZO_TEST_CRASH_AFTER_BLOCKS").ok().and_then(|v| v.parse::<usize>().ok())
    {
        if rounds >= n {
            std::process::abort();
        }
    }
}

fn to_array(t: &Tensor) -> ArrayD<f64> {
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let values: Vec<f64> = Vec::try_from(t.contiguous().view([-1])).expect("f64 values");
    ArrayD::from_shape_vec(IxDyn(&shape), values).expect("shape matches")
}

/// Writes rows `first..` of a split's kernel: `[N, C, M, C]`, or `[2, N, C, M, C]` for the
/// asymmetric formula (rows on the second axis).
fn write_kernel_rows(
    file: &H5File,
    split: &str,
    first: usize,
    block: ArrayD<f64>,
    kernels: usize,
) -> Result<()> {
    if kernels == 2 {
        file.write_block(split, &[0, first, 0, 0, 0], block.view())?;
    } else {
        let block = block.index_axis_move(ndarray::Axis(0), 0);
        file.write_rows(split, first, block.view())?;
    }
    Ok(())
}

/// Opens the `.partial` file of an interrupted run with the same description, or creates it;
/// returns it with the rows already done.
/// What the kernels are computed from, by content.
struct Fingerprints {
    /// The differentiated tensors (names and bytes).
    model: String,
    /// Every example's tokens, mask position and label, train, dev and test.
    data: String,
}

fn data_fingerprint(columns: &[Vec<Feature>; 3]) -> String {
    let mut hash = crate::fingerprint::Fingerprint::new();
    for (split, features) in SPLITS.iter().zip(columns) {
        hash.field(split.as_bytes());
        for f in features {
            let ids: Vec<u8> = f.encoded.input_ids.iter().flat_map(|t| t.to_le_bytes()).collect();
            hash.field(&ids);
            hash.field(&f.encoded.mask_pos.map_or(-1, |p| p as i64).to_le_bytes());
            let label = match f.label {
                Label::Class(k) => k as f64,
                Label::Score(x) => x,
            };
            hash.field(&label.to_le_bytes());
        }
    }
    hash.hex()
}

/// `FILE.lock` beside the kernel file, held by rank 0 for the whole computation; every rank
/// fails together when another process holds it.
fn lock(dist: &Dist, out: &std::path::Path) -> Result<Option<crate::fsio::Lock>> {
    let path = crate::fsio::with_suffix(out, ".lock");
    dist.on_root(|| match crate::fsio::Lock::try_acquire(&path) {
        Ok(Some(lock)) => Ok(lock.removed_on_release()),
        Ok(None) => bail!(InputError(format!(
            "{} is being computed by another process (it holds {}); wait for it, or choose another --out",
            out.display(),
            path.display()
        ))),
        Err(e) => bail!(InputError(format!("--out {}: {e:#}", out.display()))),
    })
}

/// The keys of two descriptions whose values differ, for the message that refuses a resume.
fn differing_keys(found: &str, wanted: &serde_json::Value) -> Vec<String> {
    let Ok(serde_json::Value::Object(found)) = serde_json::from_str::<serde_json::Value>(found) else {
        return vec!["(unreadable description)".into()];
    };
    let serde_json::Value::Object(wanted) = wanted else { return Vec::new() };
    let mut keys: Vec<String> =
        found.keys().chain(wanted.keys()).filter(|k| found.get(*k) != wanted.get(*k)).cloned().collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Moves an unreadable `.partial` (killed before HDF5 wrote its first complete metadata) out of
/// the way, so that the computation starts over instead of failing on every rerun.
fn set_aside(dist: &Dist, partial: &std::path::Path, why: &anyhow::Error) -> Result<()> {
    dist.on_root(|| {
        let aside = crate::fsio::with_suffix(partial, &format!(".unreadable-{}", std::process::id()));
        log::warn!(
            "{} cannot be read ({why:#}): moved to {}; computing the kernels from the start",
            partial.display(),
            aside.display()
        );
        std::fs::rename(partial, &aside).with_context(|| format!("moving {} aside", partial.display()))
    })?;
    Ok(())
}

fn open(
    dist: &Dist,
    config: &KernelConfig,
    n: &[usize; 3],
    c: usize,
    grad_dim: u64,
    fingerprints: &Fingerprints,
) -> Result<(H5File, Vec<bool>)> {
    let mut description = config.description.clone();
    description["model_fingerprint"] = fingerprints.model.clone().into();
    description["data_fingerprint"] = fingerprints.data.clone().into();
    description["formula"] = config.formula.name().into();
    description["binary"] = config.binary.into();
    description["grad_dim"] = grad_dim.into();
    description["exclusions"] = serde_json::json!({
        "exclude_embeddings": config.freeze.exclude_embeddings, "exclude_head": config.freeze.exclude_head,
        "only_biases": config.freeze.only_biases,
    });
    description["shape"] = serde_json::json!({"train": n[0], "dev": n[1], "test": n[2], "outputs": c});
    let arguments = serde_json::to_string(&description)?;
    let mut exists = [u8::from(config.out.exists()), u8::from(partial_path(&config.out).exists())];
    dist.broadcast(&mut exists, 0);
    if exists[0] == 1 && !config.overwrite {
        bail!(InputError(format!(
            "{} exists: use --overwrite to replace it, or another --out",
            config.out.display()
        )));
    }
    if exists[1] == 1 {
        let partial = partial_path(&config.out);
        let reopened = H5File::resume(dist, &config.out).and_then(|file| {
            let found = file
                .file()
                .attr("arguments")
                .and_then(|a| a.read_scalar::<VarLenUnicode>())
                .map(|s| s.as_str().to_string())
                .context("no 'arguments' attribute")?;
            let done: ArrayD<u8> = file.read_rows("rows_done", 0..n[0])?;
            Ok((file, found, done))
        });
        // Every rank reads the same file, so all take the same branch.
        match reopened {
            Err(e) => set_aside(dist, &partial, &e)?,
            Ok((file, found, _)) if found != arguments => {
                let keys = differing_keys(&found, &description);
                file.close()?;
                bail!(crate::error::AllRanksError {
                    message: format!(
                        "{} was started with other arguments ({}) than this command gives; rerun the \
                         command that made it, or remove it to start over",
                        partial.display(),
                        keys.join(", ")
                    ),
                    code: 2,
                });
            }
            Ok((file, _, done)) => return Ok((file, done.iter().map(|&d| d != 0).collect())),
        }
    }
    let file = H5File::create(dist, &config.out)?;
    let kernels = config.formula.kernels();
    for (split, &m) in SPLITS.iter().zip(n) {
        let shape = if kernels == 2 { vec![2, n[0], c, m, c] } else { vec![n[0], c, m, c] };
        file.create_dataset::<f64>(split, &shape)?;
        file.create_dataset::<i64>(&format!("{split}_labels"), &[m])?;
        file.create_dataset::<f64>(&format!("{split}_f0"), &[m, c])?;
    }
    file.create_dataset::<u8>("rows_done", &[n[0]])?;
    let text = |name: &str, value: &str| set_text_attribute(&file, name, value);
    text("arguments", &arguments)?;
    // Typed attributes: booleans, integers, floats and strings as themselves, anything else
    // (label words, exclusions) as JSON text.
    if let serde_json::Value::Object(fields) = &description {
        for (key, value) in fields {
            let root = file.file();
            match value {
                serde_json::Value::Bool(b) => {
                    root.new_attr::<bool>().create(key.as_str())?.write_scalar(b)?
                }
                serde_json::Value::Number(x) if x.is_i64() => {
                    root.new_attr::<i64>().create(key.as_str())?.write_scalar(&x.as_i64().expect("i64"))?
                }
                serde_json::Value::Number(x) if x.is_u64() => {
                    root.new_attr::<u64>().create(key.as_str())?.write_scalar(&x.as_u64().expect("u64"))?
                }
                serde_json::Value::Number(x) => root
                    .new_attr::<f64>()
                    .create(key.as_str())?
                    .write_scalar(&x.as_f64().unwrap_or(f64::NAN))?,
                serde_json::Value::String(s) => text(key, s)?,
                serde_json::Value::Null => text(key, "")?,
                other => text(key, &other.to_string())?,
            }
        }
    }
    text("program", &format!("mezo {}", env!("CARGO_PKG_VERSION")))?;
    Ok((file, vec![false; n[0]]))
}

/// Labels (class ids) and f0 of every split, a column batch of examples a forward pass; every
/// rank computes its share of the outputs.
fn write_outputs(
    file: &H5File,
    dist: &Dist,
    model: &Model,
    data: &TaskData,
    columns: &[Vec<Feature>; 3],
    c: usize,
    config: &KernelConfig,
) -> Result<()> {
    let (binary, batch) = (config.binary, config.column_batch);
    let words = Tensor::from_slice(data.encoder.label_word_ids()).to_device(model.device);
    let pad = data.encoder.special().pad;
    for (split, features) in SPLITS.iter().zip(columns) {
        let mine = shard(features.len(), dist.rank(), dist.size());
        let mut f0 = Vec::with_capacity(mine.len() * c);
        let _guard = tch::no_grad_guard();
        for chunk in features[mine.clone()].chunks(batch.max(1)) {
            let pairs: Vec<_> = chunk.iter().map(|f| (&f.encoded, f.label)).collect();
            let b = crate::data::batch::collate(&pairs, pad);
            let pos = b.mask_pos.map(|p| p.to_device(model.device));
            let scores = crate::eval::class_scores(
                model,
                data.config.few_shot_type,
                &words,
                &b.input_ids.to_device(model.device),
                &b.attention_mask.to_device(model.device),
                pos.as_ref(),
            )?
            .to_kind(Kind::Double)
            .to_device(Device::Cpu);
            let labels = scores.size()[1] as usize;
            let s: Vec<f64> = Vec::try_from(scores.view([-1]))?;
            for row in s.chunks(labels) {
                if binary {
                    f0.push(row[1] - row[0]);
                } else {
                    f0.extend_from_slice(row);
                }
            }
        }
        let f0 = ArrayD::from_shape_vec(IxDyn(&[mine.len(), c]), f0)?;
        file.write_rows(&format!("{split}_f0"), mine.start, f0.view())?;
        let labels: Vec<i64> = features[mine.clone()]
            .iter()
            .map(|f| match f.label {
                Label::Class(k) => Ok(k as i64),
                Label::Score(_) => bail!("regression labels"),
            })
            .collect::<Result<_>>()?;
        let labels = ArrayD::from_shape_vec(IxDyn(&[mine.len()]), labels)?;
        file.write_rows(&format!("{split}_labels"), mine.start, labels.view())?;
    }
    Ok(())
}

/// Makes the sgd train×train kernel exactly symmetric, (K + Kᵀ)/2: its two halves come from
/// different row blocks (and ranks), so their f64 sums may differ in the last bits.
fn symmetrize_train(file: &H5File, dist: &Dist, n: usize) -> Result<()> {
    let all: ArrayD<f64> = file.read_rows("train", 0..n)?;
    let transposed = all.view().permuted_axes(IxDyn(&[2, 3, 0, 1]));
    let symmetric = (&all + &transposed) / 2.0;
    let mine = shard(n, dist.rank(), dist.size());
    let rows = symmetric.slice_axis(ndarray::Axis(0), ndarray::Slice::from(mine.clone()));
    file.write_rows("train", mine.start, rows.into_dyn())?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::gradients::Gradients;
    use super::products::{Formula, RowBlock};
    use crate::data::dataset::{Feature, FewShotType};
    use crate::data::examples::Label;
    use crate::data::template::Encoded;
    use crate::model::{self, FreezeRules, LoadOptions};
    use tch::{Device, Kind, Tensor};

    /// Spec §10.5: [f_x(θ + εv) − f_x(θ − εv)] / 2ε equals K[t, c, x, ·] for v = g_c(t) (sgd)
    /// and v = sign g_c(t) (asymmetric K⁰), in f64: for RoBERTa (row-sparse embeddings and
    /// decoder), OPT (output embeddings tied to the input ones: rows folded into a dense
    /// gradient) and Llama (untied head).
    #[test]
    fn kernels_are_directional_derivatives() {
        // Llama's RMSNorm computes in f32 even for f64 weights (as transformers does).
        for (fixture, tolerance) in [("roberta", 1e-5), ("opt", 1e-5), ("llama", 1e-3)] {
            directional_derivatives(fixture, tolerance);
        }
    }

    /// A test fixture model (with a 2-label classifier) with its weights in `kind`.
    pub(crate) fn fixture_model(fixture: &str, kind: Kind) -> model::Model {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models").join(fixture);
        let m = model::load(
            &dir,
            &LoadOptions { num_labels: Some(2), ..LoadOptions::new(Device::Cpu, model::Dtype::F32) },
        )
        .unwrap();
        for p in &m.params {
            let mut t = p.tensor.shallow_clone();
            t.set_data(&p.tensor.to_kind(kind));
        }
        m
    }

    fn directional_derivatives(fixture: &str, tolerance: f64) {
        let m = fixture_model(fixture, Kind::Double);
        let feature = |ids: &[i64], mask: usize| Feature {
            encoded: Encoded { input_ids: ids.to_vec(), mask_pos: Some(mask) },
            label: Label::Class(0),
            query: 0,
        };
        let t = feature(&[0, 262, 454, 267, 335, 621, 17, 2], 5);
        let x = feature(&[0, 262, 395, 267, 261, 492, 302, 621, 2], 7);
        let words = [300i64, 310];
        let params: Vec<(String, Tensor)> = m
            .trainable(&FreezeRules::default())
            .into_iter()
            .map(|p| (p.name.clone(), p.tensor.shallow_clone()))
            .collect();
        let handles: Vec<Tensor> = params.iter().map(|(_, t)| t.shallow_clone()).collect();
        let mut grads = Gradients::new(&m, FewShotType::Prompt, &words, false, params);
        let (gt, gx) = (grads.example(&t, 1).unwrap(), grads.example(&x, 1).unwrap());
        let outputs = |f: &Feature| -> Tensor {
            let _guard = tch::no_grad_guard();
            let b = crate::data::batch::collate(&[(&f.encoded, f.label)], 1);
            crate::eval::class_scores(
                &m,
                FewShotType::Prompt,
                &Tensor::from_slice(&words),
                &b.input_ids,
                &b.attention_mask,
                b.mask_pos.as_ref(),
            )
            .unwrap()
            .get(0)
        };
        for formula in [Formula::Sgd, Formula::AsymmetricSignGd] {
            let k = RowBlock::new(&[&gt], formula).against(&[&gx]).remove(0);
            for c in 0..2 {
                let mut v = grads.as_direction(&gt, c);
                if formula != Formula::Sgd {
                    v = v.iter().map(|d| d.sign()).collect();
                }
                let norm =
                    v.iter().map(|d| d.square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt();
                let eps = 1e-3 / norm;
                let shift = |s: f64| {
                    let _guard = tch::no_grad_guard();
                    for (h, d) in handles.iter().zip(&v) {
                        let _ = h.shallow_clone().g_add_(&(d.to_kind(Kind::Double) * s));
                    }
                };
                shift(eps);
                let plus = outputs(&x);
                shift(-2.0 * eps);
                let minus = outputs(&x);
                shift(eps);
                let derivative = (plus - minus) / (2.0 * eps);
                let want = k.get(0).get(c).get(0);
                let err = (&derivative - &want).abs().max().double_value(&[]);
                let scale = want.abs().max().double_value(&[]);
                assert!(
                    err <= tolerance * scale,
                    "{fixture} {formula:?} c={c}: finite difference {derivative:?} vs kernel {want:?}"
                );
            }
        }
    }
}
