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
///
/// A view may have two *sides*: the batch then holds two copies of the examples, the first half
/// scored by the model θ + ε z and the second by θ − ε z, so that one forward pass evaluates
/// both sides of a direction and z is drawn once for both. Model code never sees the sides: it
/// uses parameters through [`Linear`], [`LayerNorm`], [`RmsNorm`], [`Prefix`], [`rows`],
/// [`weight_rows`], [`affine`] and [`broadcast`], which apply each side's tensors to its half.
pub trait WeightView {
    /// How many models the batch holds (its first dimension splits into this many equal parts).
    fn sides(&self) -> i64 {
        1
    }
    /// The tensor to use for stored parameter `t` (`[sides, ..t]` with two sides), or `None`
    /// for `t` itself on every side.
    fn full(&self, t: &Tensor) -> Option<Tensor>;
    /// Rows `ids` (int64, `[N, ..]`) of the stored matrix `t`, `[..ids, H]` (elements of a vector
    /// `t`, `[..ids]`), the s-th of `sides` equal parts of `ids` reading side s's rows; `None`
    /// when `t` is used as stored.
    fn rows(&self, t: &Tensor, ids: &Tensor) -> Option<Tensor>;
    /// The output `y` of a linear layer that used stored weight `w` whole on input `x` (one GEMM
    /// for the whole batch), as the forward pass should go on with it. Per-example gradients
    /// (kernels) keep `x` and add a zero probe to `y`: the probe's gradient is ∂/∂y, and each
    /// example's gradient of `w` is then its ∂/∂yᵀ x, without `[B, out, in]` copies of `w`.
    fn linear_output(&self, _w: &Tensor, _x: &Tensor, y: Tensor) -> Tensor {
        y
    }
}

thread_local! {
    static VIEW: RefCell<Option<Rc<dyn WeightView>>> = const { RefCell::new(None) };
}

/// Runs `f` (forward passes) with the weights seen through `view`.
pub fn with_view<R>(view: Rc<dyn WeightView>, f: impl FnOnce() -> R) -> R {
    let _installed = install_view(view);
    f()
}

/// Forward passes see the weights through `view` until the guard is dropped (then through the
/// view before it); [`with_view`] inside replaces it for its call.
pub fn install_view(view: Rc<dyn WeightView>) -> ViewGuard {
    ViewGuard(VIEW.with(|v| v.borrow_mut().replace(view)))
}

/// Puts the previous view back when dropped ([`install_view`]).
pub struct ViewGuard(Option<Rc<dyn WeightView>>);

impl Drop for ViewGuard {
    fn drop(&mut self) {
        VIEW.with(|v| *v.borrow_mut() = self.0.take());
    }
}

fn current_view() -> Option<Rc<dyn WeightView>> {
    VIEW.with(|v| v.borrow().clone())
}

/// How many models the current forward pass's batch holds (see [`WeightView`]).
pub fn sides() -> i64 {
    current_view().map_or(1, |v| v.sides())
}

/// A stored parameter as the current forward pass sees it.
pub enum Seen {
    /// One tensor for the whole batch.
    Shared(Tensor),
    /// `[sides, ..]`: side s's tensor, for the s-th part of the batch.
    PerSide(Tensor),
}

impl Seen {
    /// The tensor side `s` uses.
    pub fn side(&self, s: i64) -> Tensor {
        match self {
            Seen::Shared(p) => p.shallow_clone(),
            Seen::PerSide(p) => p.get(s),
        }
    }
}

/// Stored parameter `t` as the forward pass should use it.
pub fn seen(t: &Tensor) -> Seen {
    let Some(view) = current_view() else { return Seen::Shared(t.shallow_clone()) };
    match view.full(t) {
        Some(p) if view.sides() > 1 => Seen::PerSide(p),
        Some(p) => Seen::Shared(p),
        None => Seen::Shared(t.shallow_clone()),
    }
}

/// Rows `ids` of stored matrix (or elements of vector) `t` looked up by the batch (`ids`
/// `[N, ..]`, N the batch), as the forward pass should use them: an embedding lookup that
/// perturbs only the rows a batch uses.
pub fn rows(t: &Tensor, ids: &Tensor) -> Tensor {
    if let Some(r) = current_view().and_then(|v| v.rows(t, ids)) {
        return r;
    }
    match t.dim() {
        1 => t.index_select(0, &ids.flatten(0, -1)).view_as(ids),
        _ => Tensor::embedding(t, ids, -1, false, false),
    }
}

/// Rows `ids` (`[L]`) of stored matrix (or elements of vector) `t` used as a weight by every
/// example, e.g. the label words' rows of a vocabulary projection: `[L, ..]`, or per side.
pub fn weight_rows(t: &Tensor, ids: &Tensor) -> Seen {
    let s = sides();
    if s == 1 {
        return Seen::Shared(rows(t, ids));
    }
    match current_view().and_then(|v| v.rows(t, &ids.repeat([s]))) {
        Some(r) => {
            let mut shape = vec![s, ids.size()[0]];
            shape.extend(r.size()[1..].iter());
            Seen::PerSide(r.view(shape.as_slice()))
        }
        None => Seen::Shared(rows(t, ids)),
    }
}

/// `x` `[N, ..]` as `[sides, N / sides, ..]`, and `p` `[sides, ..]` with ones inserted after the
/// sides so that it broadcasts against it.
fn side_by_side(x: &Tensor, p: &Tensor) -> (Tensor, Tensor) {
    let sides = p.size()[0];
    let x = x.unflatten(0, [sides, -1]);
    let mut shape = vec![sides];
    shape.extend(std::iter::repeat_n(1, x.dim() - p.dim()));
    shape.extend(p.size()[1..].iter());
    (x, p.view(shape.as_slice()))
}

/// `op(x, p)` with parameter `p` broadcast over `x` `[N, ..]`, each side's tensor applied to its
/// part of the batch.
pub fn broadcast(x: &Tensor, p: &Seen, op: impl Fn(&Tensor, &Tensor) -> Tensor) -> Tensor {
    match p {
        Seen::Shared(p) => op(x, p),
        Seen::PerSide(p) => {
            let (xs, ps) = side_by_side(x, p);
            op(&xs, &ps).flatten(0, 1)
        }
    }
}

/// `x wᵀ + b` for `x` `[N, .., in]`, `w` `[out, in]`, `b` `[out]`: one GEMM for the whole batch,
/// or, when `w` differs between sides, one per side written into its rows of the output (the
/// GEMMs, and so the numbers, of separate forward passes).
pub fn affine(x: &Tensor, w: &Seen, b: Option<&Seen>) -> Tensor {
    let observed = |w: &Tensor, y: Tensor| match current_view() {
        Some(view) => view.linear_output(w, x, y),
        None => y,
    };
    let w = match (w, b) {
        (Seen::Shared(w), None) => return observed(w, x.linear::<Tensor>(w, None)),
        (Seen::Shared(w), Some(Seen::Shared(b))) => return observed(w, x.linear(w, Some(b))),
        (Seen::Shared(w), Some(b)) => {
            return broadcast(&observed(w, x.linear::<Tensor>(w, None)), b, |y, b| y + b)
        }
        (Seen::PerSide(w), _) => w,
    };
    let (sides, input, output) = (w.size()[0], w.size()[2], w.size()[1]);
    let mut shape = x.size();
    *shape.last_mut().expect("x has a feature axis") = output;
    let xs = x.reshape([sides, -1, input]);
    if x.requires_grad() || w.requires_grad() || b.is_some_and(|b| b.side(0).requires_grad()) {
        // Differentiated (per-example kernel gradients): the out= GEMMs below have no backward.
        let y = xs.matmul(&w.transpose(1, 2));
        let y = match b {
            None => y,
            Some(Seen::Shared(b)) => y + b,
            Some(Seen::PerSide(b)) => y + b.unsqueeze(1),
        };
        return y.view(shape.as_slice());
    }
    let y = Tensor::empty([sides, xs.size()[1], output], (x.kind(), x.device()));
    for s in 0..sides {
        let (x, w, y) = (xs.get(s), w.get(s).tr(), y.get(s));
        let _ = match b {
            None => x.mm_out(&y, &w),
            Some(b) => b.side(s).addmm_out(&y, &x, &w),
        };
    }
    y.view(shape.as_slice())
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
    /// Make every required tensor randomly on the device instead of reading it.
    random: Option<super::RandomWeights>,
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
            random: None,
        }
    }

    /// Random weights instead of the checkpoint's ([`super::RandomWeights`]).
    pub fn with_random_weights(mut self, random: Option<super::RandomWeights>) -> Loader<'a> {
        if let Some(r) = random {
            tch::manual_seed(r.seed);
        }
        self.random = random;
        self
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
        if let Some(random) = self.random {
            let _guard = tch::no_grad_guard();
            let t = if name.ends_with("bias") {
                Tensor::zeros(shape, (self.kind, self.device))
            } else if shape.len() == 1 {
                Tensor::ones(shape, (self.kind, self.device))
            } else {
                let mut t = Tensor::randn(shape, (self.kind, self.device));
                let _ = t.g_mul_scalar_(random.std);
                t
            };
            self.register(name, &t);
            return t;
        }
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
        let slots = |p: &Tensor| match seen(p) {
            Seen::Shared(p) => {
                p.view([m, heads, d]).transpose(0, 1).unsqueeze(0).expand([b, heads, m, d], false)
            }
            Seen::PerSide(p) => {
                let sides = p.size()[0];
                p.view([sides, 1, m, heads, d])
                    .transpose(2, 3)
                    .expand([sides, b / sides, heads, m, d], false)
                    .reshape([b, heads, m, d])
            }
        };
        (
            Tensor::cat(&[slots(&self.keys), k.shallow_clone()], 2),
            Tensor::cat(&[slots(&self.values), v.shallow_clone()], 2),
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
        let y = affine(x, &seen(&self.weight), self.bias.as_ref().map(seen).as_ref());
        match &self.lora {
            Some(lora) => y + affine(&affine(x, &seen(&lora.a), None), &seen(&lora.b), None) * lora.scale,
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
        let size = [*self.weight.size().last().expect("1-D")];
        match (seen(&self.weight), seen(&self.bias)) {
            (Seen::Shared(w), Seen::Shared(b)) => {
                x.layer_norm(size.as_slice(), Some(&w), Some(&b), self.eps, true)
            }
            (w, b) => {
                // One fused LayerNorm per side, as separate passes compute it.
                let normed: Vec<Tensor> = (x.chunk(sides(), 0).iter().enumerate())
                    .map(|(s, x)| {
                        let s = s as i64;
                        x.layer_norm(size.as_slice(), Some(&w.side(s)), Some(&b.side(s)), self.eps, true)
                    })
                    .collect();
                Tensor::cat(&normed, 0)
            }
        }
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
        broadcast(&normed.to_kind(kind), &seen(&self.weight), |x, w| w * x)
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
