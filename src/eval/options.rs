//! Log-probabilities of answer options after their prompts, many prompts per forward pass.
//!
//! The reference scores one sequence at a time: a full forward pass per candidate, the LM head
//! and a log-softmax over the vocabulary at every position. Here the candidates of one sample,
//! which share their prompt, run the shared tokens once into a KV cache and only their own
//! tokens after it; samples are batched (right-padded, positions and attention from the mask); and
//! the LM head runs only at the positions whose next token is scored. The values are the same
//! log-probabilities up to floating-point summation order.

use crate::model::cache::{CausalLm, KvCache};
use tch::{Device, Kind, Tensor};

/// A sequence to score: its tokens and how many final tokens are the option. Option length 0
/// scores every token after the first, as the reference's `[-0:]` slice does.
#[derive(Debug, Clone, Copy)]
pub struct OptionSequence<'a> {
    pub tokens: &'a [i64],
    pub option_len: usize,
}

impl OptionSequence<'_> {
    /// The first position whose next-token distribution is scored.
    fn first_scored(&self) -> usize {
        let last = self.tokens.len().saturating_sub(1);
        if self.option_len == 0 {
            0
        } else {
            last.saturating_sub(self.option_len)
        }
    }
}

/// Logit values the LM head materialises at once.
const HEAD_CHUNK_LOGITS: i64 = 1 << 24;

/// For each group of sequences (the candidates of one prompt) and each of its sequences, the
/// log-probabilities (f64, computed in f32) of its option tokens. `budget` bounds the tokens of a
/// forward pass (padding included); a group larger than it runs alone.
pub fn option_log_probs(
    model: &dyn CausalLm,
    groups: &[Vec<OptionSequence>],
    budget: usize,
    pad: i64,
    device: Device,
) -> Vec<Vec<Vec<f64>>> {
    let _guard = tch::no_grad_guard();
    let shared: Vec<usize> = groups.iter().map(|g| shared_prefix(g)).collect();
    // Similar lengths together: less padding.
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by_key(|&g| std::cmp::Reverse(groups[g].iter().map(|s| s.tokens.len()).max().unwrap_or(0)));
    let mut results: Vec<Vec<Vec<f64>>> = vec![Vec::new(); groups.len()];
    let mut batch: Vec<usize> = Vec::new();
    let shared = &shared;
    let cost = |batch: &[usize]| -> usize {
        let prefix = batch.iter().map(|&g| shared[g]).max().unwrap_or(0);
        let rows: usize = batch.iter().map(|&g| groups[g].len()).sum();
        let suffix = batch
            .iter()
            .flat_map(|&g| groups[g].iter().map(move |s| s.tokens.len() - shared[g]))
            .max()
            .unwrap_or(0);
        batch.len() * prefix + rows * (prefix + suffix)
    };
    for &g in &order {
        batch.push(g);
        if batch.len() > 1 && cost(&batch) > budget {
            batch.pop();
            run_batch(model, groups, shared, &batch, pad, device, &mut results);
            batch = vec![g];
        }
    }
    if !batch.is_empty() {
        run_batch(model, groups, shared, &batch, pad, device, &mut results);
    }
    results
}

/// Tokens of a group run once for all its sequences: their common prefix, but no further than
/// any sequence's first scored position (whose hidden state the head needs).
fn shared_prefix(group: &[OptionSequence]) -> usize {
    let Some(first) = group.first() else { return 0 };
    let common = group.iter().skip(1).fold(first.tokens.len(), |n, s| {
        n.min(first.tokens.iter().zip(s.tokens).take_while(|(a, b)| a == b).count())
    });
    group.iter().map(OptionSequence::first_scored).fold(common, usize::min)
}

fn padded(rows: &[&[i64]], width: usize, pad: i64, device: Device) -> (Tensor, Tensor) {
    let mut ids = Vec::with_capacity(rows.len() * width);
    let mut mask = Vec::with_capacity(rows.len() * width);
    for r in rows {
        ids.extend(r.iter().copied().chain(std::iter::repeat_n(pad, width - r.len())));
        mask.extend(std::iter::repeat_n(1i64, r.len()).chain(std::iter::repeat_n(0, width - r.len())));
    }
    let shape = [rows.len() as i64, width as i64];
    (
        Tensor::from_slice(&ids).view(shape).to_device(device),
        Tensor::from_slice(&mask).view(shape).to_device(device),
    )
}

fn run_batch(
    model: &dyn CausalLm,
    groups: &[Vec<OptionSequence>],
    shared: &[usize],
    batch: &[usize],
    pad: i64,
    device: Device,
    results: &mut [Vec<Vec<f64>>],
) {
    // A group without shared tokens would be a prefix row of padding alone: its attention has no
    // key. Such groups run without a cache.
    let (cached, uncached): (Vec<usize>, Vec<usize>) = batch.iter().partition(|&&g| shared[g] > 0);
    for part in [cached, uncached] {
        if !part.is_empty() {
            run_part(model, groups, shared, &part, pad, device, results);
        }
    }
}

fn run_part(
    model: &dyn CausalLm,
    groups: &[Vec<OptionSequence>],
    shared: &[usize],
    part: &[usize],
    pad: i64,
    device: Device,
    results: &mut [Vec<Vec<f64>>],
) {
    let prefix_width = part.iter().map(|&g| shared[g]).max().unwrap_or(0);
    // Each row: (group, sequence index).
    let rows: Vec<(usize, usize)> =
        part.iter().flat_map(|&g| (0..groups[g].len()).map(move |c| (g, c))).collect();
    let suffixes: Vec<&[i64]> = rows.iter().map(|&(g, c)| &groups[g][c].tokens[shared[g]..]).collect();
    let suffix_width = suffixes.iter().map(|s| s.len()).max().unwrap_or(0);
    if suffix_width == 0 {
        for &(g, _) in &rows {
            results[g].push(Vec::new());
        }
        return;
    }
    let (suffix_ids, suffix_mask) = padded(&suffixes, suffix_width, pad, device);
    let hidden = if prefix_width > 0 {
        let prefixes: Vec<&[i64]> = part.iter().map(|&g| &groups[g][0].tokens[..shared[g]]).collect();
        let (prefix_ids, prefix_mask) = padded(&prefixes, prefix_width, pad, device);
        let mut cache = KvCache::new(model.num_layers());
        let _ = model.hidden_states(&prefix_ids, &prefix_mask, Some(&mut cache));
        let group_row: Vec<i64> = part
            .iter()
            .enumerate()
            .flat_map(|(row, &g)| std::iter::repeat_n(row as i64, groups[g].len()))
            .collect();
        let index = Tensor::from_slice(&group_row).to_device(device);
        let mut cache = cache.select_rows(&index);
        let mask = Tensor::cat(&[prefix_mask.index_select(0, &index), suffix_mask], 1);
        model.hidden_states(&suffix_ids, &mask, Some(&mut cache))
    } else {
        model.hidden_states(&suffix_ids, &suffix_mask, None)
    };
    // The scored positions of every row, flattened, and the tokens they predict.
    let mut flat = Vec::new();
    let mut targets = Vec::new();
    let mut counts = Vec::with_capacity(rows.len());
    for (r, &(g, c)) in rows.iter().enumerate() {
        let s = groups[g][c];
        let positions = s.first_scored()..s.tokens.len().saturating_sub(1);
        counts.push(positions.len());
        for pos in positions {
            flat.push((r * suffix_width + pos - shared[g]) as i64);
            targets.push(s.tokens[pos + 1]);
        }
    }
    let h = hidden.size()[2];
    let hidden = hidden.reshape([-1, h]).index_select(0, &Tensor::from_slice(&flat).to_device(device));
    let targets = Tensor::from_slice(&targets).to_device(device);
    let n = flat.len() as i64;
    let chunk = (HEAD_CHUNK_LOGITS / model.head().size()[0].max(1)).max(1);
    let mut values: Vec<f64> = Vec::with_capacity(flat.len());
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let logits = model.logits(&hidden.narrow(0, start, len)).to_kind(Kind::Float);
        let picked = logits.log_softmax(-1, Kind::Float).gather(
            1,
            &targets.narrow(0, start, len).view([-1, 1]),
            false,
        );
        values.extend(
            Vec::<f64>::try_from(picked.to_kind(Kind::Double).view([-1]).to_device(Device::Cpu))
                .expect("f64"),
        );
        start += len;
    }
    let mut offset = 0;
    for (&(g, _), count) in rows.iter().zip(counts) {
        results[g].push(values[offset..offset + count].to_vec());
        offset += count;
    }
}
