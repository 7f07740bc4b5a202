//! OPT causal LMs (`OPTForCausalLM`), as MeZO's large-model experiments use them.
//!
//! Learned positions offset by 2 and counted over the attention mask; pre- or post-LayerNorm
//! per `do_layer_norm_before` (opt-350m is post-LN and projects 512 <-> 1024 at the ends); the
//! LM head tied to `embed_tokens` unless the config unties it.

use super::cache::{attention_for, attention_rows, CausalLm, KvCache};
use super::nn::{merge_heads, rows, split_heads, Activation, LayerNorm, Linear, Loader, Prefix};
use crate::error::InputError;
use serde::Deserialize;
use std::cell::Cell;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub ffn_dim: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub max_position_embeddings: i64,
    #[serde(default)]
    pub word_embed_proj_dim: Option<i64>,
    #[serde(default = "yes")]
    pub do_layer_norm_before: bool,
    #[serde(default = "relu")]
    pub activation_function: String,
    #[serde(default = "yes")]
    pub enable_bias: bool,
    #[serde(default = "yes")]
    pub layer_norm_elementwise_affine: bool,
    #[serde(default, rename = "_remove_final_layer_norm")]
    pub remove_final_layer_norm: bool,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
}

fn yes() -> bool {
    true
}
fn relu() -> String {
    "relu".into()
}

struct Layer {
    prefix: Option<Prefix>,
    k: Linear,
    v: Linear,
    q: Linear,
    out: Linear,
    attention_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    final_norm: LayerNorm,
}

pub struct Opt {
    pub config: Config,
    activation: Activation,
    embed_tokens: Tensor,
    embed_positions: Tensor,
    project_out: Option<Linear>,
    project_in: Option<Linear>,
    final_norm: Option<LayerNorm>,
    layers: Vec<Layer>,
    lm_head: Tensor,
    prefix_active: Cell<bool>,
}

impl Opt {
    pub fn load(l: &mut Loader, config: Config) -> Result<Opt, InputError> {
        if !config.layer_norm_elementwise_affine {
            return Err(InputError("OPT without elementwise-affine LayerNorm is not supported".into()));
        }
        let activation = Activation::parse(&config.activation_function)?;
        let h = config.hidden_size;
        let proj = config.word_embed_proj_dim.unwrap_or(h);
        let bias = config.enable_bias;
        let d = "model.decoder";
        let embed_tokens = l.tensor(&format!("{d}.embed_tokens.weight"), &[config.vocab_size, proj]);
        let embed_positions =
            l.tensor(&format!("{d}.embed_positions.weight"), &[config.max_position_embeddings + 2, h]);
        let (project_out, project_in) = if proj != h {
            (
                Some(Linear::load(l, &format!("{d}.project_out"), h, proj, false)),
                Some(Linear::load(l, &format!("{d}.project_in"), proj, h, false)),
            )
        } else {
            (None, None)
        };
        let final_norm = (config.do_layer_norm_before && !config.remove_final_layer_norm)
            .then(|| LayerNorm::load(l, &format!("{d}.final_layer_norm"), h, 1e-5));
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = format!("{d}.layers.{i}");
                Layer {
                    // The attention module's own parameters come before its children's.
                    prefix: l.prefix_for(&format!("{p}.self_attn"), h),
                    k: Linear::load(l, &format!("{p}.self_attn.k_proj"), h, h, bias),
                    v: Linear::load(l, &format!("{p}.self_attn.v_proj"), h, h, bias),
                    q: Linear::load(l, &format!("{p}.self_attn.q_proj"), h, h, bias),
                    out: Linear::load(l, &format!("{p}.self_attn.out_proj"), h, h, bias),
                    attention_norm: LayerNorm::load(l, &format!("{p}.self_attn_layer_norm"), h, 1e-5),
                    fc1: Linear::load(l, &format!("{p}.fc1"), h, config.ffn_dim, bias),
                    fc2: Linear::load(l, &format!("{p}.fc2"), config.ffn_dim, h, bias),
                    final_norm: LayerNorm::load(l, &format!("{p}.final_layer_norm"), h, 1e-5),
                }
            })
            .collect();
        let lm_head = if config.tie_word_embeddings {
            embed_tokens.shallow_clone()
        } else {
            l.tensor("lm_head.weight", &[config.vocab_size, proj])
        };
        Ok(Opt {
            config,
            activation,
            embed_tokens,
            embed_positions,
            project_out,
            project_in,
            final_norm,
            layers,
            lm_head,
            prefix_active: Cell::new(true),
        })
    }
}

impl CausalLm for Opt {
    fn last_hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        mut cache: Option<&mut KvCache>,
        last: Option<i64>,
    ) -> Tensor {
        let (_, t) = input_ids.size2().expect("input_ids is [B, T]");
        let s = attention_mask.size()[1];
        // transformers: positions = cumsum(mask) * mask - 1, for the new positions, offset by 2.
        let mask = attention_mask.to_kind(Kind::Int64);
        let positions = (mask.cumsum(1, Kind::Int64) * &mask - 1).narrow(1, s - t, t) + 2;
        let mut x = rows(&self.embed_tokens, input_ids);
        if let Some(p) = &self.project_in {
            x = p.forward(&x);
        }
        x = &x + rows(&self.embed_positions, &positions);
        let first_step = cache.as_deref().is_none_or(KvCache::is_empty);
        let prefix_len = match &self.layers[0].prefix {
            Some(p) if self.prefix_active.get() => p.len(),
            _ => 0,
        };
        let (attend, is_causal) = attention_for(attention_mask, t, prefix_len);
        let heads = self.config.num_attention_heads;
        let scaling = ((self.config.hidden_size / heads) as f64).powf(-0.5);
        let pre = self.config.do_layer_norm_before;
        let layers = self.layers.len();
        for (i, layer) in self.layers.iter().enumerate() {
            let mut residual = x.shallow_clone();
            let mut h = if pre { layer.attention_norm.forward(&x) } else { x.shallow_clone() };
            let mut k = split_heads(&layer.k.forward(&h), heads);
            let mut v = split_heads(&layer.v.forward(&h), heads);
            if let (Some(prefix), true, true) = (&layer.prefix, prefix_len > 0, first_step) {
                (k, v) = prefix.prepend(&k, &v);
            }
            if let Some(c) = cache.as_deref_mut() {
                (k, v) = c.append(i, k, v);
            }
            let (mut attend, mut is_causal) = (attend.as_ref().map(Tensor::shallow_clone), is_causal);
            if let Some(m) = last.filter(|_| i + 1 == layers) {
                if m == 0 {
                    x = x.narrow(1, t, 0);
                    break;
                }
                attend = attention_rows(attention_mask, t, m, &attend);
                is_causal = is_causal && m == t;
                (h, residual) = (h.narrow(1, t - m, m), residual.narrow(1, t - m, m));
            }
            let q = split_heads(&(layer.q.forward(&h) * scaling), heads);
            let attended =
                Tensor::scaled_dot_product_attention(&q, &k, &v, attend.as_ref(), 0.0, is_causal, 1.0, false);
            x = residual + layer.out.forward(&merge_heads(&attended));
            if !pre {
                x = layer.attention_norm.forward(&x);
            }
            let residual = x.shallow_clone();
            let h = if pre { layer.final_norm.forward(&x) } else { x.shallow_clone() };
            x = residual + layer.fc2.forward(&self.activation.forward(&layer.fc1.forward(&h)));
            if !pre {
                x = layer.final_norm.forward(&x);
            }
        }
        if let Some(n) = &self.final_norm {
            x = n.forward(&x);
        }
        if let Some(p) = &self.project_out {
            x = p.forward(&x);
        }
        x
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
