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
pub use nn::LoraConfig;
use nn::{Loader, Param};
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// `--dtype`: the parameter and activation type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
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
    /// Attach new LoRA adapters.
    pub lora: Option<LoraConfig>,
    /// Add this many prefix slots per attention layer (prefix tuning, causal LMs), initialised
    /// from the model's activations on random tokens drawn with `init_seed`.
    pub num_prefix: Option<i64>,
    /// Load adapters saved by [`Model::save_adapter`] (their config overrides `lora` and
    /// `num_prefix`).
    pub adapter: Option<PathBuf>,
    /// Random weights made on the device instead of the checkpoint's (which is not read: only
    /// `config.json` is): benchmarks of model sizes nobody wants to write to disk.
    pub random_weights: Option<RandomWeights>,
}

/// Weights as `transformers` initialises a new model: matrices N(0, std²), norm weights one,
/// biases zero, tensors a checkpoint may lack (an untied head) left out; drawn from libtorch's
/// generator on the device, seeded with `seed`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomWeights {
    pub std: f64,
    pub seed: i64,
}

impl LoadOptions {
    /// Plain loading on `device` in `dtype`: no new classifier, no adapters.
    pub fn new(device: Device, dtype: Dtype) -> LoadOptions {
        LoadOptions {
            device,
            dtype,
            num_labels: None,
            init_seed: 0,
            lora: None,
            num_prefix: None,
            adapter: None,
            random_weights: None,
        }
    }
}

/// Which parameters an optimiser changes (docs/reference.md §5.1, LM-Kernel-FT's exclusion flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct FreezeRules {
    pub scope: Scope,
    /// Drop names containing "embed" (word/position/token-type embeddings, embedding LayerNorm).
    pub exclude_embeddings: bool,
    /// Drop names containing "head" (`lm_head.*`; not `classifier`, as in the reference).
    pub exclude_head: bool,
    /// Keep only names containing "bias".
    pub only_biases: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Scope {
    /// Every parameter (embeddings included, as in full-parameter MeZO).
    #[default]
    Full,
    /// Only LoRA tensors (MeZO large `--lora`).
    Lora,
    /// LoRA tensors plus everything outside the base model (MeZO medium `--apply_lora`:
    /// `lm_head.*` and `classifier.*` stay trainable).
    LoraAndHeads,
    /// Only prefix tensors.
    Prefix,
    /// Only the MLM head (`--head_tuning`).
    Head,
}

impl FreezeRules {
    pub fn keeps(&self, name: &str) -> bool {
        let in_scope = match self.scope {
            Scope::Full => true,
            Scope::Lora => name.contains("lora"),
            Scope::LoraAndHeads => {
                name.contains("lora") || !["roberta.", "bert.", "model."].iter().any(|p| name.starts_with(p))
            }
            Scope::Prefix => name.contains("prefix"),
            Scope::Head => name.starts_with("lm_head.") || name.starts_with("cls."),
        };
        in_scope
            && !(self.exclude_embeddings && name.contains("embed"))
            && !(self.exclude_head && name.contains("head"))
            && (!self.only_biases || name.contains("bias"))
    }
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
    /// The LoRA adapters attached, if any.
    pub lora: Option<LoraConfig>,
    /// Prefix slots per attention layer, if prefix-tuned.
    pub num_prefix: Option<i64>,
}

const SUPPORTED: &str = "roberta, bert, opt, llama, mistral, qwen2";

/// Loads the Hugging Face model directory `dir`.
pub fn load(dir: &Path, options: &LoadOptions) -> Result<Model, InputError> {
    let config_path = dir.join("config.json");
    let config = read_json(&config_path)?;
    let model_type = config["model_type"]
        .as_str()
        .ok_or_else(|| InputError(format!("{}: no model_type", config_path.display())))?
        .to_string();
    check_sizes(&config, &config_path)?;
    let weights = match options.random_weights {
        Some(_) => weights::Weights::none(),
        None => weights::Weights::open(dir)?,
    };
    let kind = options.dtype.kind();
    let (lora, num_prefix, adapter) = match &options.adapter {
        Some(adapter_dir) => {
            let (lora, num_prefix, weights) = read_adapter(adapter_dir)?;
            (lora, num_prefix, Some(weights))
        }
        None => (options.lora.clone(), options.num_prefix, None),
    };
    let loader = |prefix: &'static str| {
        Loader::new(&weights, options.device, kind, prefix)
            .with_lora(lora.clone(), adapter.as_ref())
            .with_prefix(num_prefix, adapter.as_ref())
            .with_random_weights(options.random_weights)
    };
    let (body, params) = match model_type.as_str() {
        "roberta" | "bert" => {
            let flavor = if model_type == "roberta" { bert::Flavor::Roberta } else { bert::Flavor::Bert };
            let c: bert::Config = parse_config(&config, &config_path, "BERT/RoBERTa")?;
            let prefix = if flavor == bert::Flavor::Roberta { "roberta." } else { "bert." };
            let mut l = loader(prefix);
            let m = bert::PromptEncoder::load(&mut l, flavor, c, options.num_labels, options.init_seed)?;
            (Body::Encoder(m), l.finish(&dir.display().to_string())?)
        }
        "opt" => {
            let c: opt::Config = parse_config(&config, &config_path, "OPT")?;
            let mut l = loader("model.");
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
            let mut l = loader("model.");
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
    if let Some(config) = &lora {
        if !params.iter().any(|p| p.name.contains(".lora_")) {
            return Err(InputError(format!(
                "LoRA targets {:?} match no linear layer of this {model_type} model",
                config.targets
            )));
        }
    }
    // A checkpoint with NaN or infinite weights would evaluate and train as if nothing were wrong.
    let _guard = tch::no_grad_guard();
    if let Some(p) = params.iter().find(|p| p.tensor.isfinite().all().int64_value(&[]) == 0) {
        return Err(InputError(format!("{}: tensor {} holds NaN or infinite values", dir.display(), p.name)));
    }
    let model = Model {
        body,
        params,
        config,
        model_type,
        dtype: options.dtype,
        device: options.device,
        source: dir.to_owned(),
        lora,
        num_prefix,
    };
    if num_prefix.is_some() && adapter.is_none() {
        match &model.body {
            Body::Encoder(e) => e.init_prefix_from_activations(options.init_seed),
            _ => {
                let vocab = model.config["vocab_size"].as_i64().unwrap_or(0);
                let lm = model.causal_lm().expect("decoder bodies are causal LMs");
                cache::init_prefix_from_activations(lm, vocab, options.init_seed);
            }
        }
    }
    Ok(model)
}

const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
const ADAPTER_CONFIG: &str = "adapter_config.json";

/// The adapters saved in `dir`: LoRA config, prefix slots, and their tensors.
fn read_adapter(dir: &Path) -> Result<(Option<LoraConfig>, Option<i64>, weights::Weights), InputError> {
    let path = dir.join(ADAPTER_CONFIG);
    let json = read_json(&path)?;
    let bad = || InputError(format!("{}: lora needs rank, alpha and targets", path.display()));
    let lora = match &json["lora"] {
        serde_json::Value::Null => None,
        l => Some(LoraConfig {
            rank: l["rank"].as_i64().ok_or_else(bad)?,
            alpha: l["alpha"].as_f64().ok_or_else(bad)?,
            targets: l["targets"]
                .as_array()
                .ok_or_else(bad)?
                .iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect(),
            seed: 0,
        }),
    };
    let num_prefix = json["num_prefix"].as_i64();
    if lora.is_none() && num_prefix.is_none() {
        return Err(InputError(format!("{}: neither lora nor num_prefix", path.display())));
    }
    Ok((lora, num_prefix, weights::Weights::open_file(&dir.join(ADAPTER_WEIGHTS))?))
}

/// Whether a model may be written to `out`: nothing there, an empty directory, or a model
/// directory (a `config.json` with a `model_type`).
fn check_replaceable(out: &Path) -> Result<(), InputError> {
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        return Err(InputError(format!("--out {}: exists and is not a directory", out.display())));
    }
    let empty = std::fs::read_dir(out).map(|mut d| d.next().is_none()).unwrap_or(false);
    let model = read_json(&out.join("config.json")).is_ok_and(|c| c["model_type"].is_string());
    if empty || model {
        Ok(())
    } else {
        Err(InputError(format!(
            "--out {}: exists and is not a model directory; choose another --out",
            out.display()
        )))
    }
}

/// The sizes in `config.json` that every family reads: positive where present, and attention
/// heads that divide the hidden size (unless the model gives its head size).
fn check_sizes(config: &serde_json::Value, path: &Path) -> Result<(), InputError> {
    let sizes = [
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "ffn_dim",
        "max_position_embeddings",
        "head_dim",
        "word_embed_proj_dim",
    ];
    for key in sizes {
        match &config[key] {
            serde_json::Value::Null => {}
            v if v.as_i64().is_some_and(|n| n > 0) => {}
            v => {
                return Err(InputError(format!(
                    "{}: {key} is {v}; it must be a positive integer",
                    path.display()
                )))
            }
        }
    }
    let size = |key: &str| config[key].as_i64();
    if let (Some(hidden), Some(heads)) = (size("hidden_size"), size("num_attention_heads")) {
        if size("head_dim").is_none() && hidden % heads != 0 {
            return Err(InputError(format!(
                "{}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}",
                path.display()
            )));
        }
        if let Some(kv) = size("num_key_value_heads") {
            if heads % kv != 0 {
                return Err(InputError(format!(
                    "{}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}",
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

/// A JSON file of a model directory, errors naming the file.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value, InputError> {
    let text = std::fs::read_to_string(path).map_err(|e| InputError(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| InputError(format!("{}: {e}", path.display())))
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

    /// The parameters an optimiser changes under `rules`, in registration order.
    pub fn trainable(&self, rules: &FreezeRules) -> Vec<&Param> {
        self.params.iter().filter(|p| rules.keeps(&p.name)).collect()
    }

    /// Writes the adapters alone (LoRA and prefix tensors): `adapter_model.safetensors` and
    /// `adapter_config.json`, loadable with [`LoadOptions::adapter`] on top of the base model.
    pub fn save_adapter(&self, out: &Path) -> Result<()> {
        if self.lora.is_none() && self.num_prefix.is_none() {
            return Err(InputError("the model has no LoRA or prefix adapters to save".into()).into());
        }
        let partial = crate::h5::partial_path(out);
        std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
        let tensors: Vec<(String, tch::Tensor)> = self
            .params
            .iter()
            .filter(|p| p.name.contains(".lora_") || p.name.contains(".prefix_"))
            .map(|p| (p.name.clone(), p.tensor.shallow_clone()))
            .collect();
        weights::save_file(&partial.join(ADAPTER_WEIGHTS), &tensors)?;
        let lora = self
            .lora
            .as_ref()
            .map(|l| serde_json::json!({"rank": l.rank, "alpha": l.alpha, "targets": l.targets}));
        let json = serde_json::json!({
            "lora": lora, "num_prefix": self.num_prefix, "base_model": self.source, "model_type": self.model_type,
        });
        std::fs::write(partial.join(ADAPTER_CONFIG), serde_json::to_string_pretty(&json)?)?;
        crate::fsio::sync_tree(&partial)?;
        crate::fsio::rename_synced(&partial, out)
    }

    /// Replaces an encoder's classifier and its two parameters (a linear probe's head, which may
    /// have another number of outputs than the checkpoint's).
    pub fn set_classifier(&mut self, weight: tch::Tensor, bias: tch::Tensor) -> Result<(), InputError> {
        let Body::Encoder(encoder) = &mut self.body else {
            return Err(InputError(format!("{}: only encoders have a classifier", self.source.display())));
        };
        encoder.set_classifier(weight.shallow_clone(), bias.shallow_clone());
        for (name, tensor) in [("classifier.weight", weight), ("classifier.bias", bias)] {
            match self.params.iter_mut().find(|p| p.name == name) {
                Some(p) => p.tensor = tensor,
                None => self.params.push(Param { name: name.into(), tensor }),
            }
        }
        Ok(())
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
    /// The longest input the model's position embeddings cover (`None`: rotary positions, no
    /// table to run past). RoBERTa counts positions from `pad_token_id + 1`; OPT's table has two
    /// extra rows for its offset.
    pub fn max_sequence_length(&self) -> Option<i64> {
        let positions = self.config["max_position_embeddings"].as_i64()?;
        match &self.body {
            Body::Encoder(e) if e.flavor == bert::Flavor::Roberta => {
                Some(positions - self.config["pad_token_id"].as_i64().unwrap_or(1) - 1)
            }
            Body::Encoder(_) | Body::Opt(_) => Some(positions),
            Body::Llama(_) => None,
        }
    }

    /// Writes the model as a Hugging Face directory `out`, replacing a model directory there (but
    /// nothing else: any other existing directory or file is refused).
    pub fn save(&self, out: &Path, max_shard_bytes: usize) -> Result<()> {
        check_replaceable(out)?;
        let partial = crate::h5::partial_path(out);
        self.save_partial(&partial, max_shard_bytes)
            .inspect_err(|_| {
                // A full disk leaves no half-written model behind.
                let _ = std::fs::remove_dir_all(&partial);
            })
            .with_context(|| format!("saving the model to {}", out.display()))?;
        crate::fsio::rename_synced(&partial, out)
    }

    /// Writes the model into `partial` and syncs it.
    fn save_partial(&self, partial: &Path, max_shard_bytes: usize) -> Result<()> {
        if partial.exists() {
            std::fs::remove_dir_all(partial).with_context(|| format!("removing {}", partial.display()))?;
        }
        std::fs::create_dir_all(partial).with_context(|| format!("creating {}", partial.display()))?;
        let tensors: Vec<(String, tch::Tensor)> =
            self.params.iter().map(|p| (p.name.clone(), p.tensor.shallow_clone())).collect();
        weights::save(partial, &tensors, max_shard_bytes)?;
        let mut config = self.config.clone();
        config["torch_dtype"] = self.dtype.torch_name().into();
        if matches!(&self.body, Body::Encoder(e) if e.flavor == bert::Flavor::Roberta) {
            // mezo's RoBERTa decoder is its own tensor (saved as lm_head.decoder.weight);
            // transformers must not tie it back to the word embeddings.
            config["tie_word_embeddings"] = false.into();
        }
        let config_path = partial.join("config.json");
        std::fs::write(&config_path, serde_json::to_string_pretty(&config)?)
            .with_context(|| format!("writing {}", config_path.display()))?;
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
        crate::fsio::sync_tree(partial)
    }
}
