use super::choices::{DtypeArg, FormulaArg};
use super::data::DataArgs;
use super::Context;
use crate::data::dataset::{FewShotType, TaskData};
use crate::error::input_error;
use crate::kernel::{compute, KernelConfig};
use crate::model::{self, Dtype, FreezeRules, LoadOptions, Scope};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct KernelArgs {
    #[command(flatten)]
    data: DataArgs,
    #[arg(long, value_enum, default_value = "sgd")]
    formula: FormulaArg,
    /// One output z1 − z0 per example (binary tasks), labels ±1 in the solvers.
    #[arg(long)]
    binary: bool,
    /// Leave out names containing "embed".
    #[arg(long)]
    exclude_embeddings: bool,
    /// Leave out names containing "head" (the MLM head; not the classifier, as in the reference).
    #[arg(long)]
    exclude_head: bool,
    /// Differentiate only names containing "bias".
    #[arg(long)]
    only_biases: bool,
    /// Train examples whose gradients a rank keeps at once [default: as many as fit in
    /// --block-memory].
    #[arg(long, value_name = "R")]
    row_block: Option<usize>,
    /// Memory for a row block's gradients, in GiB, when --row-block is not given [default: 4 on
    /// the CPU; on a GPU, 90% of its free memory less the column and gradient batches].
    #[arg(long, value_name = "GIB")]
    block_memory: Option<f64>,
    /// Column examples multiplied with a row block at once.
    #[arg(long, default_value_t = 32, value_name = "B")]
    column_batch: usize,
    /// Examples differentiated together: one forward and C backward passes give each its own
    /// gradients (1: one example at a time).
    #[arg(long, default_value_t = 8, value_name = "N")]
    gradient_batch: usize,
    /// Parameter type (the reference computes kernels in f32).
    #[arg(long, default_value = "f32")]
    dtype: DtypeArg,
    /// The kernel file (HDF5). Until it is complete it is FILE.partial, and running the same
    /// command again continues it.
    #[arg(long, value_name = "FILE.h5")]
    out: PathBuf,
    /// Replace an existing complete file.
    #[arg(long)]
    overwrite: bool,
    /// Only the first N training examples (rows, and train columns): a smaller kernel of the same
    /// data, for previews and weak-scaling studies.
    #[arg(long, value_name = "N")]
    train_rows: Option<usize>,
    /// Compute only train rows A..B (0-based, B excluded; split over the ranks) and leave the
    /// file FILE.partial: running the command again without --rows computes the rest. For a long
    /// kernel in time-limited jobs, or to time one rank's share of a larger run (rows 0..128 of
    /// 1024 are rank 0's share of 8 ranks).
    #[arg(long, value_name = "A..B", value_parser = parse_rows)]
    rows: Option<std::ops::Range<usize>>,
    /// Ignore the checkpoint's weights (only its config.json and tokenizer are read): random
    /// weights made on the device from this seed, as `transformers` initialises a new model.
    /// Benchmarks of model sizes without downloading them.
    #[arg(long, value_name = "SEED")]
    random_weights: Option<i64>,
}

/// `A..B` with A < B.
fn parse_rows(text: &str) -> Result<std::ops::Range<usize>, String> {
    let (a, b) = text.split_once("..").ok_or_else(|| format!("'{text}' is not A..B"))?;
    let (a, b): (usize, usize) = (
        a.trim().parse().map_err(|_| format!("'{a}' is not a row number"))?,
        b.trim().parse().map_err(|_| format!("'{b}' is not a row number"))?,
    );
    if a >= b {
        return Err(format!("{a}..{b} holds no row"));
    }
    Ok(a..b)
}

pub fn run(ctx: &Context, args: &KernelArgs) -> Result<()> {
    crate::fsio::check_output("--out", &args.out, false)?;
    let dist = ctx.dist;
    let model_dir = args.data.model_dir().ok_or_else(|| input_error("mezo kernel needs --model DIR"))?;
    if args.column_batch == 0
        || args.gradient_batch == 0
        || args.row_block == Some(0)
        || args.block_memory.is_some_and(|gib| !gib.is_finite() || gib <= 0.0)
    {
        return Err(input_error(
            "--row-block, --column-batch, --gradient-batch and --block-memory must be positive",
        ));
    }
    let mut data_config = args.data.config()?;
    let options = LoadOptions {
        device: ctx.device.resolve(dist.local_rank())?,
        dtype: args.dtype.into(),
        num_labels: Some(data_config.task.labels.len() as i64),
        init_seed: data_config.seed as i64,
        lora: None,
        num_prefix: None,
        adapter: None,
        random_weights: args.random_weights.map(|seed| crate::model::RandomWeights { std: 0.02, seed }),
    };
    let model = model::load(&model_dir, &options)?;
    if data_config.few_shot_type == FewShotType::Finetune {
        args.data.check_classifier(&model, &model_dir)?;
    }
    data_config.causal = model.causal_lm().is_some();
    let k = data_config
        .data_dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('-').next())
        .and_then(|k| k.parse::<i64>().ok());
    let mut description = serde_json::json!({
        "task": data_config.task.name,
        "model": model_dir.canonicalize().unwrap_or(model_dir.clone()),
        "data_dir": data_config.data_dir.canonicalize().unwrap_or(data_config.data_dir.clone()),
        "seed": data_config.seed,
        "k": k,
        "few_shot_type": format!("{:?}", data_config.few_shot_type).to_lowercase(),
        "template": data_config.template,
        "label_words": data_config.mapping.iter().map(|(k, v)| serde_json::json!([k, v])).collect::<Vec<_>>(),
        "max_seq_length": data_config.lengths.max_seq_length,
        "dtype": Dtype::from(args.dtype),
    });
    if let (Some(rows), Some(fields)) = (args.train_rows, description.as_object_mut()) {
        fields.insert("train_rows".into(), rows.into());
    }
    let mut data = TaskData::load(data_config)?;
    if let Some(rows) = args.train_rows {
        if rows == 0 || rows > data.train.len() {
            return Err(input_error(format!(
                "--train-rows {rows}: the split has {} training examples",
                data.train.len()
            )));
        }
        data.train.truncate(rows);
    }
    crate::eval::check_lengths(&model, &data)?;
    let config = KernelConfig {
        formula: args.formula.into(),
        binary: args.binary,
        freeze: FreezeRules {
            scope: Scope::Full,
            exclude_embeddings: args.exclude_embeddings,
            exclude_head: args.exclude_head,
            only_biases: args.only_biases,
        },
        row_block: args.row_block.unwrap_or(0),
        memory_budget: args.block_memory.map(|gib| (gib * (1u64 << 30) as f64) as u64),
        column_batch: args.column_batch,
        gradient_batch: args.gradient_batch,
        rows: args.rows.clone(),
        out: args.out.clone(),
        overwrite: args.overwrite,
        description,
    };
    let summary = compute(&model, &mut data, dist, &config)?;
    if dist.is_root() {
        println!(
            "{}: {} kernels of {} train × ({} train, {} dev, {} test) examples, {} output(s); \
             {} backward passes (reference schedule: {} JVPs); grad_dim {}",
            summary.path.display(),
            config.formula.name(),
            summary.train,
            summary.train,
            summary.dev,
            summary.test,
            summary.outputs,
            summary.backward_passes,
            summary.reference_passes,
            summary.grad_dim
        );
        for (rank, t) in summary.seconds_by_rank.iter().enumerate() {
            println!(
                "rank {rank}: {} rows in {} blocks, {:.2} s: gradients {:.2} s, products {:.2} s, writing {:.2} s",
                t.rows, t.blocks, t.total, t.gradients, t.products, t.io
            );
        }
    }
    Ok(())
}
