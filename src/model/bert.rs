//! BERT and RoBERTa encoders as prompt-based fine-tuning uses them (LM-BFF, LM-Kernel-FT, MeZO):
//! the encoder, the masked-LM head applied only at the mask positions and only for the label
//! words, and a linear classifier on the first token's final state for `finetune` mode.
//!
//! Layout follows `transformers`: RoBERTa's positions count non-padding tokens from
//! `pad_token_id + 1`, BERT's count from 0; no token-type ids are passed (segment 0). The RoBERTa
//! head's decoder is its own tensor, not tied to the word embeddings (LM-Kernel-FT's
//! `ModelForPromptFinetuning` defines no output embeddings); a checkpoint without
//! `lm_head.decoder.weight` gets a copy of the word embeddings. BERT's decoder is tied.

use super::nn::{
    affine, broadcast, merge_heads, rows, split_heads, weight_rows, Activation, LayerNorm, Linear, Loader,
    Prefix,
};
use crate::error::InputError;
use serde::Deserialize;
use std::cell::Cell;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: i64,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: i64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> i64 {
    2
}
fn default_eps() -> f64 {
    1e-12
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Bert,
    Roberta,
}

impl Flavor {
    fn prefix(self) -> &'static str {
        match self {
            Flavor::Bert => "bert",
            Flavor::Roberta => "roberta",
        }
    }
}

struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
}

struct Layer {
    /// Prefix-tuning slots of this layer's self-attention.
    prefix: Option<Prefix>,
    query: Linear,
    key: Linear,
    value: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// The masked-LM head's transform and vocabulary projection.
struct MlmHead {
    /// RoBERTa's head always uses exact GELU; BERT's uses the config's activation.
    activation: Activation,
    dense: Linear,
    norm: LayerNorm,
    decoder: Tensor,
    bias: Tensor,
}

/// An encoder with its MLM head (prompt mode) and classifier (finetune mode).
pub struct PromptEncoder {
    pub flavor: Flavor,
    pub config: Config,
    activation: Activation,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    /// Only when the checkpoint has one; no output uses it, but MeZO perturbs it.
    pooler: Option<Linear>,
    head: MlmHead,
    classifier: Option<Linear>,
    pad_id: i64,
    prefix_active: Cell<bool>,
}

impl PromptEncoder {
    /// Builds the model in `transformers`' registration order. The classifier is the
    /// checkpoint's; without one, `num_labels` sizes a new one (N(0, 0.02) from `init_seed`,
    /// bias 0), as the reference's prompt model always has one.
    pub fn load(
        l: &mut Loader,
        flavor: Flavor,
        config: Config,
        num_labels: Option<i64>,
        init_seed: i64,
    ) -> Result<Self, InputError> {
        if config.position_embedding_type.as_deref().is_some_and(|p| p != "absolute") {
            return Err(InputError(format!(
                "position_embedding_type {:?} is not supported (only absolute)",
                config.position_embedding_type
            )));
        }
        if config.hidden_size % config.num_attention_heads != 0 {
            return Err(InputError("hidden_size is not a multiple of num_attention_heads".into()));
        }
        let activation = Activation::parse(&config.hidden_act)?;
        let (h, p) = (config.hidden_size, flavor.prefix());
        let eps = config.layer_norm_eps;
        let embeddings = Embeddings {
            word: l.tensor(&format!("{p}.embeddings.word_embeddings.weight"), &[config.vocab_size, h]),
            position: l.tensor(
                &format!("{p}.embeddings.position_embeddings.weight"),
                &[config.max_position_embeddings, h],
            ),
            token_type: l.tensor(
                &format!("{p}.embeddings.token_type_embeddings.weight"),
                &[config.type_vocab_size, h],
            ),
            norm: LayerNorm::load(l, &format!("{p}.embeddings.LayerNorm"), h, eps),
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let q = format!("{p}.encoder.layer.{i}");
                Layer {
                    // The attention module's own parameters come before its children's.
                    prefix: l.prefix_for(&format!("{q}.attention.self"), h),
                    query: Linear::load(l, &format!("{q}.attention.self.query"), h, h, true),
                    key: Linear::load(l, &format!("{q}.attention.self.key"), h, h, true),
                    value: Linear::load(l, &format!("{q}.attention.self.value"), h, h, true),
                    attention_output: Linear::load(l, &format!("{q}.attention.output.dense"), h, h, true),
                    attention_norm: LayerNorm::load(l, &format!("{q}.attention.output.LayerNorm"), h, eps),
                    intermediate: Linear::load(
                        l,
                        &format!("{q}.intermediate.dense"),
                        h,
                        config.intermediate_size,
                        true,
                    ),
                    output: Linear::load(l, &format!("{q}.output.dense"), config.intermediate_size, h, true),
                    output_norm: LayerNorm::load(l, &format!("{q}.output.LayerNorm"), h, eps),
                }
            })
            .collect();
        let pooler = l
            .has(&format!("{p}.pooler.dense.weight"))
            .then(|| Linear::load(l, &format!("{p}.pooler.dense"), h, h, true));
        let v = config.vocab_size;
        let head = match flavor {
            Flavor::Roberta => {
                let bias = l.tensor("lm_head.bias", &[v]);
                let dense = Linear::load(l, "lm_head.dense", h, h, true);
                let norm = LayerNorm::load(l, "lm_head.layer_norm", h, eps);
                let word = embeddings.word.shallow_clone();
                let decoder = l.or_init("lm_head.decoder.weight", &[v, h], || word.copy());
                MlmHead { activation: Activation::Gelu, dense, norm, decoder, bias }
            }
            Flavor::Bert => {
                let bias = l.tensor("cls.predictions.bias", &[v]);
                let dense = Linear::load(l, "cls.predictions.transform.dense", h, h, true);
                let norm = LayerNorm::load(l, "cls.predictions.transform.LayerNorm", h, eps);
                MlmHead { activation, dense, norm, decoder: embeddings.word.shallow_clone(), bias }
            }
        };
        // The checkpoint's classifier whatever its size (callers check it against the task);
        // a new one only where there is none.
        let stored = l.shape("classifier.weight");
        let classifier = match (stored, num_labels) {
            (Some(shape), _) => Some(Linear::load(l, "classifier", h, shape[0], true)),
            (None, Some(n)) => Some(Linear {
                weight: l.or_init("classifier.weight", &[n, h], || {
                    tch::manual_seed(init_seed);
                    Tensor::randn([n, h], (Kind::Float, tch::Device::Cpu)) * 0.02
                }),
                bias: Some(l.or_init("classifier.bias", &[n], || {
                    Tensor::zeros([n], (Kind::Float, tch::Device::Cpu))
                })),
                lora: None,
            }),
            (None, None) => None,
        };
        let pad_id = config.pad_token_id.unwrap_or(if flavor == Flavor::Roberta { 1 } else { 0 });
        Ok(PromptEncoder {
            flavor,
            config,
            activation,
            embeddings,
            layers,
            pooler,
            head,
            classifier,
            pad_id,
            prefix_active: Cell::new(true),
        })
    }

    pub fn has_pooler(&self) -> bool {
        self.pooler.is_some()
    }

    /// Final hidden states `[B, T, H]` of `input_ids` `[B, T]` with `attention_mask` `[B, T]`.
    pub fn hidden_states(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        self.encode(input_ids, attention_mask, None)
    }

    /// The encoder; with `only_rows` `[B, 1]`, the last layer computes (and returns, `[B, H]`)
    /// only those positions' outputs: attention rows and the feed-forward are independent per
    /// position, so this is exact and saves most of a layer when one position is scored.
    fn encode(&self, input_ids: &Tensor, attention_mask: &Tensor, only_rows: Option<&Tensor>) -> Tensor {
        self.encode_capturing(input_ids, attention_mask, only_rows, None)
    }

    fn encode_capturing(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        only_rows: Option<&Tensor>,
        mut capture: Option<&mut Vec<(Tensor, Tensor)>>,
    ) -> Tensor {
        let (b, t) = input_ids.size2().expect("input_ids is [B, T]");
        let device = input_ids.device();
        let positions = match self.flavor {
            // transformers' create_position_ids_from_input_ids.
            Flavor::Roberta => {
                let real = input_ids.ne(self.pad_id).to_kind(Kind::Int64);
                real.cumsum(1, Kind::Int64) * &real + self.pad_id
            }
            Flavor::Bert => Tensor::arange(t, (Kind::Int64, device)).unsqueeze(0).expand([b, t], false),
        };
        let e = &self.embeddings;
        // Segment 0 for every token.
        let segment = weight_rows(&e.token_type, &Tensor::zeros([1], (Kind::Int64, device)));
        let x =
            broadcast(&(rows(&e.word, input_ids) + rows(&e.position, &positions)), &segment, |x, t| x + t);
        let mut x = e.norm.forward(&x);
        // [B, 1, 1, T]: every query sees the non-padding keys; no mask at all without padding,
        // which lets libtorch pick its fastest kernel.
        let prefix_len = match &self.layers.first().and_then(|l| l.prefix.as_ref()) {
            Some(p) if self.prefix_active.get() => p.len(),
            _ => 0,
        };
        let mask = if prefix_len > 0 {
            // Prefix slots are visible to every query.
            let slots = Tensor::ones([b, 1, 1, prefix_len], (Kind::Bool, device));
            Some(Tensor::cat(&[slots, attention_mask.to_kind(Kind::Bool).view([b, 1, 1, t])], 3))
        } else if attention_mask.min().int64_value(&[]) == 0 {
            Some(attention_mask.to_kind(Kind::Bool).view([b, 1, 1, t]))
        } else {
            None
        };
        let heads = self.config.num_attention_heads;
        let h = self.config.hidden_size;
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            let queries = match only_rows {
                Some(rows) if i == last => {
                    x.gather(1, &rows.view([-1, 1, 1]).expand([-1, 1, h], false), false)
                }
                _ => x.shallow_clone(),
            };
            let q = split_heads(&layer.query.forward(&queries), heads);
            let mut k = split_heads(&layer.key.forward(&x), heads);
            let mut v = split_heads(&layer.value.forward(&x), heads);
            if let Some(c) = capture.as_deref_mut() {
                c.push((k.shallow_clone(), v.shallow_clone()));
            }
            if let (Some(prefix), true) = (&layer.prefix, prefix_len > 0) {
                (k, v) = prefix.prepend(&k, &v);
            }
            let attended =
                Tensor::scaled_dot_product_attention(&q, &k, &v, mask.as_ref(), 0.0, false, None, false);
            let x1 = layer
                .attention_norm
                .forward(&(layer.attention_output.forward(&merge_heads(&attended)) + &queries));
            let inner = self.activation.forward(&layer.intermediate.forward(&x1));
            x = layer.output_norm.forward(&(layer.output.forward(&inner) + &x1));
        }
        match only_rows {
            Some(_) => x.squeeze_dim(1),
            None => x,
        }
    }

    /// Prompt mode: the MLM scores of `label_word_ids` `[L]` at each row's first mask position
    /// (`mask_pos` `[B, 1]`), `[B, L]`. The head runs on B vectors and L vocabulary rows only.
    pub fn label_scores(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        mask_pos: &Tensor,
        label_word_ids: &Tensor,
    ) -> Tensor {
        let x = self.head_features(input_ids, attention_mask, Some(mask_pos));
        let decoder = weight_rows(&self.head.decoder, label_word_ids);
        affine(&x, &decoder, Some(&weight_rows(&self.head.bias, label_word_ids)))
    }

    /// The input of the final output layer, `[B, H]`: in prompt mode (`mask_pos` given) the MLM
    /// head's transform (dense, activation, LayerNorm) at each row's mask, i.e. what the decoder
    /// rows of [`Self::label_scores`] multiply; in finetune mode (`None`) the first token's final
    /// state, what [`Self::classifier_logits`]' classifier multiplies. A linear probe fitted on
    /// these and written into that layer reproduces its own predictions (`mezo linearhead`).
    pub fn head_features(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        mask_pos: Option<&Tensor>,
    ) -> Tensor {
        let hidden = self.hidden_states(input_ids, attention_mask);
        let Some(mask_pos) = mask_pos else { return hidden.select(1, 0) };
        let h = self.config.hidden_size;
        let at_mask =
            hidden.gather(1, &mask_pos.view([-1, 1, 1]).expand([-1, 1, h], false), false).squeeze_dim(1);
        let head = &self.head;
        head.norm.forward(&head.activation.forward(&head.dense.forward(&at_mask)))
    }

    /// Whether the vocabulary projection is its own tensor (RoBERTa) rather than the word
    /// embeddings (BERT): only then can its label-word rows change without changing the inputs.
    pub fn decoder_is_untied(&self) -> bool {
        self.flavor == Flavor::Roberta
    }

    /// Prefix tuning's real-activation initialisation (docs/reference.md §5.2, as for the causal LMs):
    /// `m` token ids drawn uniformly from the vocabulary with `seed` run through the encoder
    /// without prefixes; each layer's keys and values become its prefix.
    pub fn init_prefix_from_activations(&self, seed: i64) {
        let Some(m) = self.layers.first().and_then(|l| l.prefix.as_ref()).map(Prefix::len) else { return };
        let _guard = tch::no_grad_guard();
        let device = self.embeddings.word.device();
        tch::manual_seed(seed);
        let tokens = Tensor::randint(self.config.vocab_size, [1, m], (Kind::Int64, tch::Device::Cpu))
            .to_device(device);
        let mut captured = Vec::new();
        self.prefix_active.set(false);
        let _ = self.encode_capturing(&tokens, &tokens.ones_like(), None, Some(&mut captured));
        self.prefix_active.set(true);
        for (layer, (k, v)) in self.layers.iter().zip(&captured) {
            let prefix = layer.prefix.as_ref().expect("every layer has a prefix");
            let flat = |x: &Tensor| x.get(0).transpose(0, 1).reshape([m, -1]);
            prefix.keys.shallow_clone().copy_(&flat(k));
            prefix.values.shallow_clone().copy_(&flat(v));
        }
    }

    pub fn has_classifier(&self) -> bool {
        self.classifier.is_some()
    }

    /// Replaces the classifier (`[labels, H]` weight, `[labels]` bias), whatever its size was.
    pub fn set_classifier(&mut self, weight: Tensor, bias: Tensor) {
        self.classifier = Some(Linear { weight, bias: Some(bias), lora: None });
    }

    /// Outputs of the classifier, if there is one.
    pub fn classifier_labels(&self) -> Option<i64> {
        self.classifier.as_ref().map(|c| c.weight.size()[0])
    }

    /// Finetune mode: the classifier on the first token's final state (no pooler), `[B, labels]`.
    pub fn classifier_logits(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor, InputError> {
        let classifier = self.classifier.as_ref().ok_or_else(|| {
            InputError("the model has no classifier (finetune mode needs the task's number of labels)".into())
        })?;
        Ok(classifier.forward(&self.head_features(input_ids, attention_mask, None)))
    }
}
