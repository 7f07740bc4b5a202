use super::choices::DtypeArg;
use super::Context;
use crate::model::{self, Dtype, LoadOptions};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Hugging Face model directory to read.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Directory to write (replaced when complete).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Parameter type of the written model: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: DtypeArg,
    /// Files above this many bytes are split into model-0000i-of-0000n.safetensors shards.
    #[arg(long, default_value_t = model::MAX_SHARD_BYTES, value_name = "BYTES")]
    max_shard_size: usize,
}

/// Reads a model and writes it back (another dtype, resharded): what mezo saves after training.
pub fn run(ctx: &Context, args: &ConvertArgs) -> Result<()> {
    crate::fsio::check_output("--out", &args.out, true)?;
    ctx.dist.on_root(|| {
        let options = LoadOptions::new(tch::Device::Cpu, Dtype::from(args.dtype));
        let m = model::load(&args.model, &options)?;
        m.save(&args.out, args.max_shard_size)?;
        log::info!(
            "wrote {} ({} tensors, {:?})",
            args.out.display(),
            m.params.len(),
            Dtype::from(args.dtype)
        );
        Ok(())
    })?;
    Ok(())
}
