//! The key/value cache of causal LMs, and greedy generation on top of it.

use super::nn;
use tch::{Kind, Tensor};

/// Keys and values of the positions seen so far, per layer, `[B, kv_heads, S, D]`.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(layers: usize) -> KvCache {
        KvCache { layers: (0..layers).map(|_| None).collect() }
    }

    /// Positions already cached.
    pub fn len(&self) -> i64 {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |(k, _)| k.size()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cache of the batch rows `index` `[R]` (int64, on the cache's device), in that order:
    /// rows may repeat, so one prompt's cache serves several continuations.
    pub fn select_rows(&self, index: &Tensor) -> KvCache {
        let layers = self
            .layers
            .iter()
            .map(|l| l.as_ref().map(|(k, v)| (k.index_select(0, index), v.index_select(0, index))))
            .collect();
        KvCache { layers }
    }

    /// Appends this step's keys and values of `layer`; returns the full ones.
    pub fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
        let slot = &mut self.layers[layer];
        let (k, v) = match slot.take() {
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 2), Tensor::cat(&[pv, v], 2)),
            None => (k, v),
        };
        *slot = Some((k.shallow_clone(), v.shallow_clone()));
        (k, v)
    }
}

/// A decoder-only language model.
pub trait CausalLm {
    /// Final hidden states `[B, T, H]` (before the LM head) of `input_ids` `[B, T]`.
    /// `attention_mask` `[B, S]` covers the cached positions and these (S = cached + T); the
    /// cache, when given, is extended.
    fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Tensor {
        self.last_hidden_states(input_ids, attention_mask, cache, None)
    }

    /// [`CausalLm::hidden_states`] of the last `last` positions only, `[B, last, H]`: the last
    /// layer computes every position's keys and values (for the cache) but its queries, attention
    /// and MLP only on those positions. `Some(0)` fills the cache and computes no output.
    fn last_hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cache: Option<&mut KvCache>,
        last: Option<i64>,
    ) -> Tensor;

    /// The LM head's stored weight `[V, H]` (the word embeddings when tied).
    fn head(&self) -> &Tensor;

    /// The LM head: vocabulary logits of hidden states `[..., H]`.
    fn logits(&self, hidden: &Tensor) -> Tensor {
        nn::affine(hidden, &nn::seen(self.head()), None)
    }

    /// Logits `[B, T, V]`: the head on [`CausalLm::hidden_states`].
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor, cache: Option<&mut KvCache>) -> Tensor {
        self.logits(&self.hidden_states(input_ids, attention_mask, cache))
    }

    fn num_layers(&self) -> usize;

    /// The prefix of each layer (prefix tuning), if the model has them.
    fn prefixes(&self) -> Vec<&super::nn::Prefix> {
        Vec::new()
    }

    /// Switches the prefix slots on or off (off while initialising them from the model's own
    /// activations).
    fn set_prefix_active(&self, _active: bool) {}
}

/// Prefix tuning's real-activation initialisation (docs/reference.md §5.2): `m` token ids drawn
/// uniformly from the vocabulary (libtorch's generator seeded with `seed`) run through the model
/// without prefixes, and each layer's cached keys and values become its prefix.
pub fn init_prefix_from_activations(model: &dyn CausalLm, vocab_size: i64, seed: i64) {
    let prefixes = model.prefixes();
    let Some(first) = prefixes.first() else { return };
    let _guard = tch::no_grad_guard();
    let m = first.len();
    let device = first.keys.device();
    tch::manual_seed(seed);
    let tokens = Tensor::randint(vocab_size, [1, m], (Kind::Int64, tch::Device::Cpu)).to_device(device);
    let mut cache = KvCache::new(model.num_layers());
    model.set_prefix_active(false);
    let _ = model.forward(&tokens, &tokens.ones_like(), Some(&mut cache));
    model.set_prefix_active(true);
    for (layer, prefix) in prefixes.iter().enumerate() {
        let (k, v) = cache.layers[layer].as_ref().expect("every layer cached");
        let flat = |x: &Tensor| x.get(0).transpose(0, 1).reshape([m, -1]);
        prefix.keys.shallow_clone().copy_(&flat(k));
        prefix.values.shallow_clone().copy_(&flat(v));
    }
}

/// Positions whose target is this id do not count in [`lm_loss`] (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// Logit values [`lm_loss`] materialises at once (256 MB of f32): each chunk of positions makes
/// the GEMM pack the whole LM head again, so chunks are as large as this bound allows (one chunk
/// for a batch of 8 × 64 with OPT's 50k vocabulary), never under 128 rows.
const LOSS_CHUNK_LOGITS: i64 = 1 << 26;

/// Mean token cross-entropy of `targets` `[B, T]` (entries [`IGNORE`] skipped) under the model's
/// next-token distributions at each position of `input_ids`. The LM head and the loss run on
/// chunks of positions, so long batches never hold all `[B, T, V]` logits at once (the largest
/// activation of a vocabulary-heavy model). Positions without a target (each sequence's last,
/// padding) never reach the LM head: `transformers` computes and discards their logits.
/// Differentiable.
pub fn lm_loss(
    model: &dyn CausalLm,
    input_ids: &Tensor,
    attention_mask: &Tensor,
    targets: &Tensor,
) -> Tensor {
    assert_eq!(nn::sides(), 1, "lm_loss scores one model; use lm_loss_by_side");
    lm_loss_by_side(model, input_ids, attention_mask, targets).squeeze_dim(0)
}

/// [`lm_loss`] of each model a forward pass holds (see [`nn::WeightView`]): `[sides]`, side s
/// scoring the s-th part of the batch.
pub fn lm_loss_by_side(
    model: &dyn CausalLm,
    input_ids: &Tensor,
    attention_mask: &Tensor,
    targets: &Tensor,
) -> Tensor {
    let hidden = model.hidden_states(input_ids, attention_mask, None);
    let sides = nn::sides();
    let part = hidden.size()[0] / sides;
    let head = nn::seen(model.head());
    let losses: Vec<Tensor> = (0..sides)
        .map(|s| {
            let head = head.side(s);
            let (hidden, targets) = (hidden.narrow(0, s * part, part), targets.narrow(0, s * part, part));
            let h = hidden.size().last().copied().expect("hidden states have a feature axis");
            let (hidden, targets) = (hidden.reshape([-1, h]), targets.reshape([-1]));
            let scored = targets.ne(IGNORE).nonzero().squeeze_dim(1);
            let (hidden, targets) = (hidden.index_select(0, &scored), targets.index_select(0, &scored));
            let rows = hidden.size()[0];
            let chunk_rows = (LOSS_CHUNK_LOGITS / head.size()[0].max(1)).max(128);
            let mut total = Tensor::zeros([], (Kind::Float, hidden.device()));
            let mut start = 0;
            while start < rows {
                let n = chunk_rows.min(rows - start);
                let logits = hidden.narrow(0, start, n).linear::<Tensor>(&head, None).to_kind(Kind::Float);
                total = &total
                    + logits.cross_entropy_loss::<Tensor>(
                        &targets.narrow(0, start, n),
                        None,
                        tch::Reduction::Sum,
                        IGNORE,
                        0.0,
                    );
                start += n;
            }
            total / targets.size()[0] as f64
        })
        .collect();
    Tensor::stack(&losses, 0)
}

/// Next-token targets of `input_ids` `[B, T]` with padding `attention_mask`: each position
/// predicts the following token; the last position and padding are [`IGNORE`]d.
pub fn next_token_targets(input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
    let (b, t) = input_ids.size2().expect("[B, T]");
    let shifted = Tensor::cat(
        &[input_ids.narrow(1, 1, t - 1), Tensor::full([b, 1], IGNORE, (Kind::Int64, input_ids.device()))],
        1,
    );
    let next_is_real = Tensor::cat(
        &[attention_mask.narrow(1, 1, t - 1), Tensor::zeros([b, 1], (Kind::Int64, input_ids.device()))],
        1,
    );
    shifted.where_self(&next_is_real.to_kind(Kind::Bool), &Tensor::from(IGNORE).to_device(input_ids.device()))
}

/// The boolean attention mask `[B, 1, T, S]` of T new positions after `past` cached ones: causal,
/// and no padding keys. A padding position sees itself, so that a left-padded row's first query
/// has a key: an all-masked row is NaN on some attention backends, and NaN values would reach the
/// real queries through the zero-weighted padding values.
pub fn causal_mask(attention_mask: &Tensor, t: i64) -> Tensor {
    let (b, s) = attention_mask.size2().expect("attention_mask is [B, S]");
    let past = s - t;
    let device = attention_mask.device();
    let rows = Tensor::arange_start(past, s, (Kind::Int64, device)).view([t, 1]);
    let cols = Tensor::arange(s, (Kind::Int64, device)).view([1, s]);
    let causal = cols.le_tensor(&rows).view([1, 1, t, s]);
    let itself = cols.eq_tensor(&rows).view([1, 1, t, s]);
    causal.logical_and(&attention_mask.to_kind(Kind::Bool).view([b, 1, 1, s])).logical_or(&itself)
}

/// What `scaled_dot_product_attention` needs for T new positions after `prefix` always-visible
/// prefix slots: an explicit mask when there is padding or a prefix, else none — causal by flag
/// for a prompt, nothing for one new token — which lets libtorch choose its fused kernels.
pub fn attention_for(attention_mask: &Tensor, t: i64, prefix: i64) -> (Option<Tensor>, bool) {
    let s = attention_mask.size()[1];
    if prefix > 0 {
        let b = attention_mask.size()[0];
        let slots = Tensor::ones([b, 1, t, prefix], (Kind::Bool, attention_mask.device()));
        return (Some(Tensor::cat(&[slots, causal_mask(attention_mask, t)], 3)), false);
    }
    if attention_mask.min().int64_value(&[]) == 0 {
        return (Some(causal_mask(attention_mask, t)), false);
    }
    match (t, s - t) {
        (1, _) => (None, false),
        (_, 0) => (None, true),
        _ => (Some(causal_mask(attention_mask, t)), false),
    }
}

/// The attention of the last `m` of `t` new positions' queries (see [`attention_for`]): the rows
/// of the explicit mask, which a causal flag cannot express once queries and keys differ in number.
pub fn attention_rows(attention_mask: &Tensor, t: i64, m: i64, attend: &Option<Tensor>) -> Option<Tensor> {
    if m == t {
        return attend.as_ref().map(Tensor::shallow_clone);
    }
    // With m < t there are at least two positions, so no mask means causal.
    let full = attend.as_ref().map_or_else(|| causal_mask(attention_mask, t), Tensor::shallow_clone);
    Some(full.narrow(2, t - m, m))
}

/// Greedy decoding of `max_new_tokens` after `prompt` `[1, P]` with a KV cache; stops early at
/// `eos`. Returns prompt and continuation, `[1, P + n]`.
pub fn greedy_generate(
    model: &dyn CausalLm,
    prompt: &Tensor,
    max_new_tokens: usize,
    eos: Option<i64>,
) -> Tensor {
    let _guard = tch::no_grad_guard();
    let device = prompt.device();
    let mut cache = KvCache::new(model.num_layers());
    let mut tokens: Vec<i64> = Vec::try_from(prompt.view([-1])).expect("prompt ids are int64");
    let mut input = prompt.shallow_clone();
    for _ in 0..max_new_tokens {
        let mask = Tensor::ones([1, tokens.len() as i64], (Kind::Int64, device));
        let logits = model.forward(&input, &mask, Some(&mut cache));
        let next = logits.select(1, -1).argmax(-1, false).int64_value(&[0]);
        tokens.push(next);
        if Some(next) == eos {
            break;
        }
        input = Tensor::from_slice(&[next]).view([1, 1]).to_device(device);
    }
    Tensor::from_slice(&tokens).view([1, -1])
}

/// Greedy decoding of a batch of prompts of any lengths, as `transformers`' `generate` decodes
/// each alone: prompts are left-padded (positions and attention come from the mask), each row
/// gets at most `limits[i]` new tokens and ends at the first token in `stop` (kept), and finished
/// rows leave the batch. Returns the new tokens of each prompt.
pub fn greedy_generate_batch(
    model: &dyn CausalLm,
    prompts: &[Vec<i64>],
    limits: &[usize],
    stop: &[i64],
    pad: i64,
    device: tch::Device,
) -> Vec<Vec<i64>> {
    let _guard = tch::no_grad_guard();
    let mut outputs: Vec<Vec<i64>> = vec![Vec::new(); prompts.len()];
    let mut active: Vec<usize> =
        (0..prompts.len()).filter(|&i| limits[i] > 0 && !prompts[i].is_empty()).collect();
    if active.is_empty() {
        return outputs;
    }
    let width = active.iter().map(|&i| prompts[i].len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(active.len() * width);
    let mut mask = Vec::with_capacity(active.len() * width);
    for &i in &active {
        let p = &prompts[i];
        ids.extend(std::iter::repeat_n(pad, width - p.len()).chain(p.iter().copied()));
        mask.extend(std::iter::repeat_n(0i64, width - p.len()).chain(std::iter::repeat_n(1, p.len())));
    }
    let rows = active.len() as i64;
    let input = Tensor::from_slice(&ids).view([rows, width as i64]).to_device(device);
    let mut mask = Tensor::from_slice(&mask).view([rows, width as i64]).to_device(device);
    let mut cache = KvCache::new(model.num_layers());
    let mut hidden = model.hidden_states(&input, &mask, Some(&mut cache));
    loop {
        let last = hidden.select(1, -1);
        let next: Vec<i64> = Vec::try_from(model.logits(&last).argmax(-1, false).to_device(tch::Device::Cpu))
            .expect("argmax gives int64");
        let mut keep = Vec::new();
        for (row, (&i, &token)) in active.iter().zip(&next).enumerate() {
            outputs[i].push(token);
            if !stop.contains(&token) && outputs[i].len() < limits[i] {
                keep.push(row as i64);
            }
        }
        if keep.is_empty() {
            return outputs;
        }
        let tokens: Vec<i64> = keep.iter().map(|&r| next[r as usize]).collect();
        if keep.len() < active.len() {
            let index = Tensor::from_slice(&keep).to_device(device);
            cache = cache.select_rows(&index);
            mask = mask.index_select(0, &index);
            active = keep.iter().map(|&r| active[r as usize]).collect();
        }
        let n = tokens.len() as i64;
        mask = Tensor::cat(&[mask, Tensor::ones([n, 1], (Kind::Int64, device))], 1);
        let input = Tensor::from_slice(&tokens).view([n, 1]).to_device(device);
        hidden = model.hidden_states(&input, &mask, Some(&mut cache));
    }
}
