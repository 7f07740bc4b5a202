//! Llama-family causal LMs: Llama, Mistral and Qwen2 (`LlamaForCausalLM`, `MistralForCausalLM`,
//! `Qwen2ForCausalLM`): RMSNorm, rotary position embeddings, SwiGLU MLP, grouped-query attention,
//! and q/k/v biases where the config (Qwen2, `attention_bias`) asks for them.

use super::cache::{attention_for, attention_rows, CausalLm, KvCache};
use super::nn::{merge_heads, rows, Activation, Linear, Loader, Prefix, RmsNorm};
use crate::error::InputError;
use serde::Deserialize;
use std::cell::Cell;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default = "eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "silu")]
    pub hidden_act: String,
}

fn eps() -> f64 {
    1e-6
}
fn theta() -> f64 {
    10000.0
}
fn silu() -> String {
    "silu".into()
}

/// Which config family, for the bias rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Llama,
    Mistral,
    /// q/k/v always have biases, o_proj never.
    Qwen2,
}

struct Layer {
    prefix: Option<Prefix>,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
    input_norm: RmsNorm,
    post_attention_norm: RmsNorm,
}

pub struct Llama {
    pub config: Config,
    activation: Activation,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Tensor,
    inv_freq: Tensor,
    prefix_active: Cell<bool>,
}

impl Llama {
    pub fn load(l: &mut Loader, flavor: Flavor, config: Config) -> Result<Llama, InputError> {
        if let Some(scaling) = &config.rope_scaling {
            let kind = scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(|v| v.as_str());
            if !matches!(kind, None | Some("default")) {
                return Err(InputError(format!(
                    "rope_scaling {scaling} is not supported (only the default rotary)"
                )));
            }
        }
        let activation = Activation::parse(&config.hidden_act)?;
        let h = config.hidden_size;
        let heads = config.num_attention_heads;
        let kv_heads = config.num_key_value_heads.unwrap_or(heads);
        let head_dim = config.head_dim.unwrap_or(h / heads);
        if heads % kv_heads != 0 {
            return Err(InputError(format!(
                "{heads} attention heads are not a multiple of {kv_heads} key/value heads"
            )));
        }
        let qkv_bias = flavor == Flavor::Qwen2 || config.attention_bias;
        let o_bias = flavor != Flavor::Qwen2 && config.attention_bias;
        let (mlp, inter, eps) = (config.mlp_bias, config.intermediate_size, config.rms_norm_eps);
        let embed_tokens = l.tensor("model.embed_tokens.weight", &[config.vocab_size, h]);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                Layer {
                    // The attention module's own parameters come before its children's.
                    prefix: l.prefix_for(&format!("{p}.self_attn"), kv_heads * head_dim),
                    q: Linear::load(l, &format!("{p}.self_attn.q_proj"), h, heads * head_dim, qkv_bias),
                    k: Linear::load(l, &format!("{p}.self_attn.k_proj"), h, kv_heads * head_dim, qkv_bias),
                    v: Linear::load(l, &format!("{p}.self_attn.v_proj"), h, kv_heads * head_dim, qkv_bias),
                    o: Linear::load(l, &format!("{p}.self_attn.o_proj"), heads * head_dim, h, o_bias),
                    gate: Linear::load(l, &format!("{p}.mlp.gate_proj"), h, inter, mlp),
                    up: Linear::load(l, &format!("{p}.mlp.up_proj"), h, inter, mlp),
                    down: Linear::load(l, &format!("{p}.mlp.down_proj"), inter, h, mlp),
                    input_norm: RmsNorm::load(l, &format!("{p}.input_layernorm"), h, eps),
                    post_attention_norm: RmsNorm::load(l, &format!("{p}.post_attention_layernorm"), h, eps),
                }
            })
            .collect();
        let norm = RmsNorm::load(l, "model.norm", h, eps);
        let lm_head = if config.tie_word_embeddings {
            embed_tokens.shallow_clone()
        } else {
            l.tensor("lm_head.weight", &[config.vocab_size, h])
        };
        let exponents = Tensor::arange_start_step(0, head_dim, 2, (Kind::Float, l.device)) / head_dim as f64;
        let inv_freq = Tensor::from(config.rope_theta).to_device(l.device).pow(&exponents).reciprocal();
        Ok(Llama {
            config,
            activation,
            heads,
            kv_heads,
            head_dim,
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
            prefix_active: Cell::new(true),
        })
    }

    /// cos and sin `[B, 1, T, D]` of `positions` `[B, T]`, in f32 then cast, as transformers.
    fn rotary(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let (b, t) = positions.size2().expect("positions are [B, T]");
        let freqs = positions.to_kind(Kind::Float).unsqueeze(2) * self.inv_freq.view([1, 1, -1]);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (emb.cos().to_kind(kind).view([b, 1, t, -1]), emb.sin().to_kind(kind).view([b, 1, t, -1]))
    }
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size().last().copied().expect("head dim") / 2;
    Tensor::cat(&[x.narrow(-1, half, half).neg(), x.narrow(-1, 0, half)], -1)
}

/// `[B, kv, S, D]` -> `[B, kv * n, S, D]`, each key/value head repeated for its query heads.
fn repeat_kv(x: &Tensor, n: i64) -> Tensor {
    if n == 1 {
        return x.shallow_clone();
    }
    let (b, kv, s, d) = x.size4().expect("[B, kv, S, D]");
    x.unsqueeze(2).expand([b, kv, n, s, d], false).reshape([b, kv * n, s, d])
}

impl CausalLm for Llama {
    fn last_hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        mut cache: Option<&mut KvCache>,
        last: Option<i64>,
    ) -> Tensor {
        let (_, t) = input_ids.size2().expect("input_ids is [B, T]");
        // Positions count the real tokens before each one (transformers' generate does so for
        // padded batches); prefix slots are not in the mask and take no position.
        let s = attention_mask.size()[1];
        let positions =
            (attention_mask.to_kind(Kind::Int64).cumsum(1, Kind::Int64) - 1).clamp_min(0).narrow(1, s - t, t);
        let first_step = cache.as_deref().is_none_or(KvCache::is_empty);
        let prefix_len = match &self.layers[0].prefix {
            Some(p) if self.prefix_active.get() => p.len(),
            _ => 0,
        };
        let mut x = rows(&self.embed_tokens, input_ids);
        let (cos, sin) = self.rotary(&positions.to_device(x.device()), x.kind());
        let (attend, is_causal) = attention_for(attention_mask, t, prefix_len);
        let rep = self.heads / self.kv_heads;
        let layers = self.layers.len();
        for (i, layer) in self.layers.iter().enumerate() {
            let mut h = layer.input_norm.forward(&x);
            let split = |y: Tensor, n: i64| {
                let (b, t, _) = y.size3().expect("[B, T, H]");
                y.view([b, t, n, self.head_dim]).transpose(1, 2)
            };
            let k = split(layer.k.forward(&h), self.kv_heads);
            let v = split(layer.v.forward(&h), self.kv_heads);
            let mut k = &k * &cos + rotate_half(&k) * &sin;
            let mut v = v;
            if let (Some(prefix), true, true) = (&layer.prefix, prefix_len > 0, first_step) {
                (k, v) = prefix.prepend(&k, &v);
            }
            if let Some(c) = cache.as_deref_mut() {
                (k, v) = c.append(i, k, v);
            }
            let (mut attend, mut is_causal) = (attend.as_ref().map(Tensor::shallow_clone), is_causal);
            let (mut cos, mut sin) = (cos.shallow_clone(), sin.shallow_clone());
            if let Some(m) = last.filter(|_| i + 1 == layers) {
                if m == 0 {
                    x = x.narrow(1, t, 0);
                    break;
                }
                attend = attention_rows(attention_mask, t, m, &attend);
                is_causal = is_causal && m == t;
                (h, x) = (h.narrow(1, t - m, m), x.narrow(1, t - m, m));
                (cos, sin) = (cos.narrow(2, t - m, m), sin.narrow(2, t - m, m));
            }
            let q = split(layer.q.forward(&h), self.heads);
            let q = &q * &cos + rotate_half(&q) * &sin;
            let attended = Tensor::scaled_dot_product_attention(
                &q,
                &repeat_kv(&k, rep),
                &repeat_kv(&v, rep),
                attend.as_ref(),
                0.0,
                is_causal,
                None,
                false,
            );
            x = &x + layer.o.forward(&merge_heads(&attended));
            let h = layer.post_attention_norm.forward(&x);
            x = &x
                + layer
                    .down
                    .forward(&(self.activation.forward(&layer.gate.forward(&h)) * layer.up.forward(&h)));
        }
        self.norm.forward(&x)
    }

    fn head(&self) -> &Tensor {
        &self.lm_head
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn prefixes(&self) -> Vec<&Prefix> {
        self.layers.iter().filter_map(|l| l.prefix.as_ref()).collect()
    }

    fn set_prefix_active(&self, active: bool) {
        self.prefix_active.set(active);
    }
}
