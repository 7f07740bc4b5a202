//! Model families on libtorch (tch), loaded from and saved to Hugging Face directories.
//!
//! ```text
//! bert     BERT / RoBERTa prompt models: MLM label-word scores at the mask, finetune classifier
//! opt      OPT causal LMs
//! llama    Llama, Mistral, Qwen2 causal LMs
//! cache    KV cache, causal masks, greedy generation
//! nn       shared blocks and the loader that records parameters in HF registration order
//! weights  safetensors (single or sharded) in, memory-mapped; and out
//! ```
//!
//! One file per family, each a serde config plus a forward pass that reads like the paper. A
//! loaded [`Model`] keeps its parameters twice over the same storage: inside the family's structs
//! for the forward pass, and as an ordered list of named tensors (`named_parameters()` order of
//! the equivalent `transformers` model, shared tensors once) for optimisers and kernels.

pub mod bert;
pub mod cache;
pub mod llama;
pub mod nn;
pub mod opt;
pub mod weights;

use crate::error::InputError;
use anyhow::{Context, Result};
use nn::{Loader, Param};
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// `--dtype`: the parameter and activation type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dtype {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Dtype {
    pub fn kind(self) -> Kind {
        match self {
            Dtype::F32 => Kind::Float,
            Dtype::Bf16 => Kind::BFloat16,
            Dtype::F16 => Kind::Half,
        }
    }

    fn torch_name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::Bf16 => "bfloat16",
            Dtype::F16 => "float16",
        }
    }
}

impl std::str::FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Dtype::F32),
            "bf16" => Ok(Dtype::Bf16),
            "f16" => Ok(Dtype::F16),
            _ => Err(format!("unknown dtype '{s}': expected f32, bf16 or f16")),
        }
    }
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: Dtype,
    /// Classes of the task: an encoder whose checkpoint has no classifier gets a new one of this
    /// size; `None` keeps the checkpoint as it is.
    pub num_labels: Option<i64>,
    /// Seed of new parameters' initialisation (a missing classifier).
    pub init_seed: i64,
}

/// The architecture of a loaded model.
pub enum Body {
    Encoder(bert::PromptEncoder),
    Opt(opt::Opt),
    Llama(llama::Llama),
}

pub struct Model {
    pub body: Body,
    /// Parameters in `transformers` registration order.
    pub params: Vec<Param>,
    /// `config.json` as read (written back on save).
    pub config: serde_json::Value,
    pub model_type: String,
    pub dtype: Dtype,
    pub device: Device,
    pub source: PathBuf,
}

const SUPPORTED: &str = "roberta, bert, opt, llama, mistral, qwen2";

/// Loads the Hugging Face model directory `dir`.
pub fn load(dir: &Path, options: &LoadOptions) -> Result<Model, InputError> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| InputError(format!("{}: {e}", config_path.display())))?;
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| InputError(format!("{}: {e}", config_path.display())))?;
    let model_type = config["model_type"]
        .as_str()
        .ok_or_else(|| InputError(format!("{}: no model_type", config_path.display())))?
        .to_string();
    let weights = weights::Weights::open(dir)?;
    let kind = options.dtype.kind();
    let (body, params) = match model_type.as_str() {
        "roberta" | "bert" => {
            let flavor = if model_type == "roberta" { bert::Flavor::Roberta } else { bert::Flavor::Bert };
            let c: bert::Config = parse_config(&config, &config_path, "BERT/RoBERTa")?;
            let prefix = if flavor == bert::Flavor::Roberta { "roberta." } else { "bert." };
            let mut l = Loader::new(&weights, options.device, kind, prefix);
            let m = bert::PromptEncoder::load(&mut l, flavor, c, options.num_labels, options.init_seed)?;
            (Body::Encoder(m), l.finish(&dir.display().to_string())?)
        }
        "opt" => {
            let c: opt::Config = parse_config(&config, &config_path, "OPT")?;
            let mut l = Loader::new(&weights, options.device, kind, "model.");
            let m = opt::Opt::load(&mut l, c)?;
            (Body::Opt(m), l.finish(&dir.display().to_string())?)
        }
        "llama" | "mistral" | "qwen2" => {
            let flavor = match model_type.as_str() {
                "llama" => llama::Flavor::Llama,
                "mistral" => llama::Flavor::Mistral,
                _ => llama::Flavor::Qwen2,
            };
            let c: llama::Config = parse_config(&config, &config_path, "Llama")?;
            let mut l = Loader::new(&weights, options.device, kind, "model.");
            let m = llama::Llama::load(&mut l, flavor, c)?;
            (Body::Llama(m), l.finish(&dir.display().to_string())?)
        }
        other => {
            return Err(InputError(format!(
                "{}: model_type '{other}' is not supported (supported: {SUPPORTED})",
                config_path.display()
            )))
        }
    };
    Ok(Model {
        body,
        params,
        config,
        model_type,
        dtype: options.dtype,
        device: options.device,
        source: dir.to_owned(),
    })
}

fn parse_config<T: serde::de::DeserializeOwned>(
    config: &serde_json::Value,
    path: &Path,
    what: &str,
) -> Result<T, InputError> {
    serde_json::from_value(config.clone())
        .map_err(|e| InputError(format!("{}: not a valid {what} config: {e}", path.display())))
}

/// Shards above this many bytes go to separate files (as `save_pretrained`'s default).
pub const MAX_SHARD_BYTES: usize = 5 * 1000 * 1000 * 1000;

impl Model {
    /// The causal LM of a decoder model.
    pub fn causal_lm(&self) -> Option<&dyn cache::CausalLm> {
        match &self.body {
            Body::Opt(m) => Some(m),
            Body::Llama(m) => Some(m),
            Body::Encoder(_) => None,
        }
    }

    pub fn encoder(&self) -> Option<&bert::PromptEncoder> {
        match &self.body {
            Body::Encoder(m) => Some(m),
            _ => None,
        }
    }

    /// Writes a Hugging Face directory that `transformers` loads back: the parameters under
    /// their names, config.json and the tokenizer files of the source directory. The directory
    /// appears only when complete.
    pub fn save(&self, out: &Path, max_shard_bytes: usize) -> Result<()> {
        let partial = crate::h5::partial_path(out);
        if partial.exists() {
            std::fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))?;
        }
        std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
        let tensors: Vec<(String, tch::Tensor)> =
            self.params.iter().map(|p| (p.name.clone(), p.tensor.shallow_clone())).collect();
        weights::save(&partial, &tensors, max_shard_bytes)?;
        let mut config = self.config.clone();
        config["torch_dtype"] = self.dtype.torch_name().into();
        if matches!(&self.body, Body::Encoder(e) if e.flavor == bert::Flavor::Roberta) {
            // mezo's RoBERTa decoder is its own tensor (saved as lm_head.decoder.weight);
            // transformers must not tie it back to the word embeddings.
            config["tie_word_embeddings"] = false.into();
        }
        std::fs::write(partial.join("config.json"), serde_json::to_string_pretty(&config)?)?;
        for name in [
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "vocab.json",
            "merges.txt",
            "vocab.txt",
        ] {
            let source = self.source.join(name);
            if source.exists() {
                std::fs::copy(&source, partial.join(name))
                    .with_context(|| format!("copying {}", source.display()))?;
            }
        }
        if out.exists() {
            std::fs::remove_dir_all(out).with_context(|| format!("replacing {}", out.display()))?;
        }
        std::fs::rename(&partial, out)
            .with_context(|| format!("renaming {} to {}", partial.display(), out.display()))
    }
}
