//! The building blocks the model files share, and the loader that builds them from a checkpoint
//! in Hugging Face registration order (the order of `named_parameters()`, which MeZO's
//! reference-compatible perturbation stream follows).

use super::weights::Weights;
use crate::error::InputError;
use std::cell::RefCell;
use std::rc::Rc;
use tch::{Device, Kind, Tensor};

/// How the forward pass sees the stored weights: MeZO's fast stream perturbs them just in time
/// (θ + ε z formed per use and dropped after it) instead of writing them, so the stored weights
/// change only in the update and come back exactly after any number of perturbations.
pub trait WeightView {
    /// The tensor to use for stored parameter `t`, or `None` for `t` itself.
    fn full(&self, t: &Tensor) -> Option<Tensor>;
    /// Rows `ids` (int64, any shape) of the stored matrix `t`, `[..ids, H]` (elements of a vector
    /// `t`, `[..ids]`), or `None` when `t` is used as stored.
    fn rows(&self, t: &Tensor, ids: &Tensor) -> Option<Tensor>;
}

thread_local! {
    static VIEW: RefCell<Option<Rc<dyn WeightView>>> = const { RefCell::new(None) };
}

/// Runs `f` (forward passes) with the weights seen through `view`.
pub fn with_view<R>(view: Rc<dyn WeightView>, f: impl FnOnce() -> R) -> R {
    struct Reset(Option<Rc<dyn WeightView>>);
    impl Drop for Reset {
        fn drop(&mut self) {
            VIEW.with(|v| *v.borrow_mut() = self.0.take());
        }
    }
    let _reset = Reset(VIEW.with(|v| v.borrow_mut().replace(view)));
    f()
}

fn current_view() -> Option<Rc<dyn WeightView>> {
    VIEW.with(|v| v.borrow().clone())
}

/// Stored parameter `t` as the forward pass should use it.
pub fn weight(t: &Tensor) -> Tensor {
    current_view().and_then(|v| v.full(t)).unwrap_or_else(|| t.shallow_clone())
}

/// Rows `ids` of stored matrix (or elements of vector) `t`, as the forward pass should use them:
/// an embedding lookup that perturbs only the rows a batch uses.
pub fn rows(t: &Tensor, ids: &Tensor) -> Tensor {
    if let Some(r) = current_view().and_then(|v| v.rows(t, ids)) {
        return r;
    }
    match t.dim() {
        1 => t.index_select(0, &ids.flatten(0, -1)).view_as(ids),
        _ => Tensor::embedding(t, ids, -1, false, false),
    }
}

/// A named parameter of a model; `tensor` shares storage with the model's own handle, so in-place
/// updates through either are seen by both.
pub struct Param {
    pub name: String,
    pub tensor: Tensor,
}

/// LoRA adapters to attach while loading (MeZO's large-model LoRA): every linear layer whose
/// name ends with one of `targets` gets `W x + b + (alpha / rank) B A x`, A `[rank, in]`
/// Kaiming-uniform (bound 1/sqrt(in)), B `[out, rank]` zero, never merged.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    pub rank: i64,
    pub alpha: f64,
    /// Module-name suffixes: `q_proj`, `v_proj` (OPT, Llama) or `query`, `value` (BERT, RoBERTa).
    pub targets: Vec<String>,
    /// Seed of the A initialisation (libtorch's generator, in registration order).
    pub seed: i64,
}

/// Builds parameters from a checkpoint, recording them in the order they are requested, and
/// collecting every missing or mis-shaped tensor before failing.
pub struct Loader<'a> {
    weights: &'a Weights,
    pub device: Device,
    pub kind: Kind,
    params: Vec<Param>,
    errors: Vec<String>,
    /// A prefix HF may have left out of the checkpoint's names (`roberta.`, `model.`).
    base_prefix: &'static str,
    lora: Option<LoraConfig>,
    /// Prefix slots per attention layer (prefix tuning).
    num_prefix: Option<i64>,
    /// Saved adapter tensors, used instead of a fresh initialisation.
    adapter: Option<&'a Weights>,
    seeded: bool,
}

impl<'a> Loader<'a> {
    pub fn new(weights: &'a Weights, device: Device, kind: Kind, base_prefix: &'static str) -> Loader<'a> {
        Loader {
            weights,
            device,
            kind,
            params: Vec::new(),
            errors: Vec::new(),
            base_prefix,
            lora: None,
            num_prefix: None,
            adapter: None,
            seeded: false,
        }
    }

    /// Add `num_prefix` key/value prefix slots to every attention layer (from `adapter` when
    /// given, else zero until initialised from real activations).
    pub fn with_prefix(mut self, num_prefix: Option<i64>, adapter: Option<&'a Weights>) -> Loader<'a> {
        self.num_prefix = num_prefix;
        if adapter.is_some() {
            self.adapter = adapter;
        }
        self
    }

    /// The prefix of attention module `attention` with key/value width `width`, registered as
    /// `{attention}.prefix_keys` and `{attention}.prefix_values`.
    pub fn prefix_for(&mut self, attention: &str, width: i64) -> Option<Prefix> {
        let m = self.num_prefix?;
        let mut read = |name: String| -> Tensor {
            let t = match self.adapter.filter(|a| a.contains(&name)) {
                Some(adapter) if adapter.shape(&name) == Some(&[m, width][..]) => {
                    adapter.load(&name, self.device, self.kind).unwrap_or_else(|e| {
                        self.errors.push(e);
                        Tensor::zeros([m, width], (self.kind, self.device))
                    })
                }
                Some(adapter) => {
                    self.errors.push(format!(
                        "adapter tensor {name}: found {:?}, expected {:?}",
                        adapter.shape(&name),
                        [m, width]
                    ));
                    Tensor::zeros([m, width], (self.kind, self.device))
                }
                None => Tensor::zeros([m, width], (self.kind, self.device)),
            };
            self.register(&name, &t);
            t
        };
        let keys = read(format!("{attention}.prefix_keys"));
        let values = read(format!("{attention}.prefix_values"));
        Some(Prefix { keys, values })
    }

    /// Attach LoRA adapters (from `adapter` when given, else freshly initialised).
    pub fn with_lora(mut self, lora: Option<LoraConfig>, adapter: Option<&'a Weights>) -> Loader<'a> {
        self.lora = lora;
        self.adapter = adapter;
        self
    }

    /// The LoRA adapter of linear layer `prefix`, if it is a target; registered after its weight
    /// and bias, where the reference's LoRALinear registers them.
    fn lora_for(&mut self, prefix: &str, input: i64, output: i64) -> Option<Lora> {
        let config = self.lora.clone()?;
        let module = prefix.rsplit('.').next().unwrap_or(prefix);
        if !config.targets.iter().any(|t| t == module) {
            return None;
        }
        let (a_name, b_name) = (format!("{prefix}.lora_A"), format!("{prefix}.lora_B"));
        let r = config.rank;
        let (a, b) = match self.adapter {
            Some(adapter) => {
                let mut read = |name: &str, shape: &[i64]| match adapter.shape(name) {
                    Some(found) if found == shape => {
                        adapter.load(name, self.device, self.kind).unwrap_or_else(|e| {
                            self.errors.push(e);
                            Tensor::zeros(shape, (self.kind, self.device))
                        })
                    }
                    found => {
                        self.errors
                            .push(format!("adapter tensor {name}: found {found:?}, expected {shape:?}"));
                        Tensor::zeros(shape, (self.kind, self.device))
                    }
                };
                (read(&a_name, &[r, input]), read(&b_name, &[output, r]))
            }
            None => {
                if !self.seeded {
                    tch::manual_seed(config.seed);
                    self.seeded = true;
                }
                let bound = 1.0 / (input as f64).sqrt();
                let a = (Tensor::rand([r, input], (Kind::Float, Device::Cpu)) * (2.0 * bound) - bound)
                    .to_device(self.device)
                    .to_kind(self.kind);
                (a, Tensor::zeros([output, r], (self.kind, self.device)))
            }
        };
        self.register(&a_name, &a);
        self.register(&b_name, &b);
        Some(Lora { a, b, scale: config.alpha / r as f64 })
    }

    /// The checkpoint's name for `name`: as is, or without the base-model prefix.
    fn stored_name(&self, name: &str) -> Option<String> {
        if self.weights.contains(name) {
            return Some(name.to_string());
        }
        name.strip_prefix(self.base_prefix).filter(|n| self.weights.contains(n)).map(String::from)
    }

    pub fn has(&self, name: &str) -> bool {
        self.stored_name(name).is_some()
    }

    /// The stored shape of `name`, if the checkpoint has it.
    pub fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.stored_name(name).and_then(|n| self.weights.shape(&n).map(<[i64]>::to_vec))
    }

    /// A required parameter of `shape`.
    pub fn tensor(&mut self, name: &str, shape: &[i64]) -> Tensor {
        match self.stored_name(name) {
            Some(stored) => self.read(name, &stored, shape),
            None => {
                self.errors.push(format!("missing tensor {name} {shape:?}"));
                self.placeholder(shape)
            }
        }
    }

    /// A parameter that the checkpoint may lack; `None` then, and nothing is registered.
    pub fn optional(&mut self, name: &str, shape: &[i64]) -> Option<Tensor> {
        let stored = self.stored_name(name)?;
        Some(self.read(name, &stored, shape))
    }

    /// A parameter made by `init` when the checkpoint lacks it (a new head, an untied copy).
    pub fn or_init(&mut self, name: &str, shape: &[i64], init: impl FnOnce() -> Tensor) -> Tensor {
        match self.stored_name(name) {
            Some(stored) => self.read(name, &stored, shape),
            None => {
                let t = init().to_device(self.device).to_kind(self.kind);
                self.register(name, &t);
                t
            }
        }
    }

    fn read(&mut self, name: &str, stored: &str, shape: &[i64]) -> Tensor {
        let found = self.weights.shape(stored).unwrap_or(&[]);
        if found != shape {
            self.errors.push(format!("tensor {stored} has shape {found:?}, the config implies {shape:?}"));
            return self.placeholder(shape);
        }
        match self.weights.load(stored, self.device, self.kind) {
            Ok(t) => {
                self.register(name, &t);
                t
            }
            Err(e) => {
                self.errors.push(e);
                self.placeholder(shape)
            }
        }
    }

    fn register(&mut self, name: &str, t: &Tensor) {
        self.params.push(Param { name: name.to_string(), tensor: t.shallow_clone() });
    }

    fn placeholder(&self, shape: &[i64]) -> Tensor {
        Tensor::zeros(shape, (self.kind, self.device))
    }

    /// The parameters in registration order, or every loading problem at once.
    pub fn finish(self, what: &str) -> Result<Vec<Param>, InputError> {
        if self.errors.is_empty() {
            return Ok(self.params);
        }
        Err(InputError(format!("cannot load {what}:\n  {}", self.errors.join("\n  "))))
    }
}

/// Trainable key/value slots every query attends to (prefix tuning), `[m, kv_heads * head_dim]`.
pub struct Prefix {
    pub keys: Tensor,
    pub values: Tensor,
}

impl Prefix {
    pub fn len(&self) -> i64 {
        self.keys.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys and values `[B, heads, T, D]` with the prefix slots in front, `[B, heads, m + T, D]`.
    pub fn prepend(&self, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let (b, heads, _, d) = k.size4().expect("[B, heads, T, D]");
        let m = self.len();
        let slots =
            |p: &Tensor| p.view([m, heads, d]).transpose(0, 1).unsqueeze(0).expand([b, heads, m, d], false);
        (
            Tensor::cat(&[slots(&weight(&self.keys)), k.shallow_clone()], 2),
            Tensor::cat(&[slots(&weight(&self.values)), v.shallow_clone()], 2),
        )
    }
}

/// A low-rank update of a linear layer.
pub struct Lora {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub lora: Option<Lora>,
}

impl Linear {
    pub fn load(l: &mut Loader, prefix: &str, input: i64, output: i64, bias: bool) -> Linear {
        let weight = l.tensor(&format!("{prefix}.weight"), &[output, input]);
        let bias = bias.then(|| l.tensor(&format!("{prefix}.bias"), &[output]));
        let lora = l.lora_for(prefix, input, output);
        Linear { weight, bias, lora }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.linear(&weight(&self.weight), self.bias.as_ref().map(weight).as_ref());
        match &self.lora {
            Some(lora) => {
                y + x.linear::<Tensor>(&weight(&lora.a), None).linear::<Tensor>(&weight(&lora.b), None)
                    * lora.scale
            }
            None => y,
        }
    }
}

pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(l: &mut Loader, prefix: &str, size: i64, eps: f64) -> LayerNorm {
        let weight = l.tensor(&format!("{prefix}.weight"), &[size]);
        let bias = l.tensor(&format!("{prefix}.bias"), &[size]);
        LayerNorm { weight, bias, eps }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let size = *self.weight.size().last().expect("1-D");
        x.layer_norm(
            [size].as_slice(),
            Some(&weight(&self.weight)),
            Some(&weight(&self.bias)),
            self.eps,
            true,
        )
    }
}

/// Llama's RMSNorm: computed in f32, scaled in the model dtype, as `transformers` does.
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn load(l: &mut Loader, prefix: &str, size: i64, eps: f64) -> RmsNorm {
        RmsNorm { weight: l.tensor(&format!("{prefix}.weight"), &[size]), eps }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let x = x.to_kind(Kind::Float);
        let variance = x.pow_tensor_scalar(2).mean_dim([-1i64].as_slice(), true, None);
        let normed = x * (variance + self.eps).rsqrt();
        weight(&self.weight) * normed.to_kind(kind)
    }
}

/// The activations the supported configs name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU: BERT/RoBERTa `gelu`.
    Gelu,
    /// tanh-approximated GELU: `gelu_new`, `gelu_pytorch_tanh`.
    GeluTanh,
    Relu,
    /// SiLU: Llama's `silu`.
    Silu,
}

impl Activation {
    pub fn parse(name: &str) -> Result<Activation, InputError> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            other => return Err(InputError(format!("unsupported activation '{other}'"))),
        })
    }

    pub fn forward(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
        }
    }
}

/// `[B, T, H]` -> `[B, heads, T, H / heads]`.
pub fn split_heads(x: &Tensor, heads: i64) -> Tensor {
    let (b, t, h) = x.size3().expect("[B, T, H]");
    x.view([b, t, heads, h / heads]).transpose(1, 2)
}

/// `[B, heads, T, D]` -> `[B, T, heads * D]`.
pub fn merge_heads(x: &Tensor) -> Tensor {
    let (b, heads, t, d) = x.size4().expect("[B, heads, T, D]");
    x.transpose(1, 2).contiguous().view([b, t, heads * d])
}
