//! Log-probabilities of answer options after their prompts, many prompts per forward pass
//! (docs/reference.md §9.4).
//!
//! The reference scores one sequence at a time: a full forward pass per candidate, the LM head
//! and a log-softmax over the vocabulary at every position. Here the candidates of one sample,
//! which share their prompt, run the shared tokens once into a KV cache (the prefix pass, prompts
//! left-padded so that they all end at the same column) and only their own tokens after it (the
//! suffix pass, right-padded); a sequence's last token, which predicts nothing scored, is not run
//! at all; the prefix pass's last layer computes only the columns that hold a scored position;
//! samples of similar lengths are batched (positions and attention from the mask); and the LM
//! head runs only at the positions whose next token is scored. The values are the same
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
    /// The positions whose next-token distributions are scored.
    fn scored(&self) -> std::ops::Range<usize> {
        let last = self.tokens.len().saturating_sub(1);
        let first = if self.option_len == 0 { 0 } else { last.saturating_sub(self.option_len) };
        first..last
    }

    /// The tokens run through the model: all but the last, which predicts nothing.
    fn run(&self) -> &[i64] {
        &self.tokens[..self.tokens.len().saturating_sub(1)]
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
    // Similar lengths together: less padding. The suffix pass has a row per sequence, the prefix
    // pass one per group, so suffix lengths come first.
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by_key(|&g| {
        let suffix = groups[g].iter().map(|s| s.run().len() - shared[g]).max().unwrap_or(0);
        std::cmp::Reverse((suffix, shared[g]))
    });
    let mut results: Vec<Vec<Vec<f64>>> = vec![Vec::new(); groups.len()];
    let shared = &shared;
    let cost = |batch: &[usize]| -> usize {
        let prefix = batch.iter().map(|&g| shared[g]).max().unwrap_or(0);
        let rows: usize = batch.iter().map(|&g| groups[g].len()).sum();
        let suffix = batch
            .iter()
            .flat_map(|&g| groups[g].iter().map(move |s| s.run().len() - shared[g]))
            .max()
            .unwrap_or(0);
        batch.len() * prefix + rows * (prefix + suffix)
    };
    let mut batch: Vec<usize> = Vec::new();
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

/// Tokens of a group run once for all its sequences: the common prefix of their run tokens.
fn shared_prefix(group: &[OptionSequence]) -> usize {
    let Some(first) = group.first() else { return 0 };
    group.iter().skip(1).fold(first.run().len(), |n, s| {
        n.min(first.run().iter().zip(s.run()).take_while(|(a, b)| a == b).count())
    })
}

/// Rows padded to `width`, on the right or (`left`) on the left, with their attention mask.
fn padded(rows: &[&[i64]], width: usize, pad: i64, left: bool, device: Device) -> (Tensor, Tensor) {
    let mut ids = Vec::with_capacity(rows.len() * width);
    let mut mask = Vec::with_capacity(rows.len() * width);
    for r in rows {
        let padding = width - r.len();
        if left {
            ids.extend(std::iter::repeat_n(pad, padding).chain(r.iter().copied()));
            mask.extend(std::iter::repeat_n(0i64, padding).chain(std::iter::repeat_n(1, r.len())));
        } else {
            ids.extend(r.iter().copied().chain(std::iter::repeat_n(pad, padding)));
            mask.extend(std::iter::repeat_n(1i64, r.len()).chain(std::iter::repeat_n(0, padding)));
        }
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
    // Each row of the suffix pass: (group, sequence, its group's row in the prefix pass).
    let rows: Vec<(usize, usize, usize)> = part
        .iter()
        .enumerate()
        .flat_map(|(row, &g)| (0..groups[g].len()).map(move |c| (g, c, row)))
        .collect();
    let suffixes: Vec<&[i64]> = rows.iter().map(|&(g, c, _)| &groups[g][c].run()[shared[g]..]).collect();
    let suffix_width = suffixes.iter().map(|s| s.len()).max().unwrap_or(0);
    let h = model.head().size()[1];
    // Prefixes are left-padded, so that every group's shared tokens end at column P; the prefix
    // pass computes final hidden states only for the last `tail` columns, those that hold a
    // scored position (usually one: the prompt's last token, when the candidates differ from
    // their first token on).
    let tail = rows
        .iter()
        .filter_map(|&(g, c, _)| {
            let first = groups[g][c].scored().start;
            (first < shared[g]).then(|| shared[g] - first)
        })
        .max()
        .unwrap_or(0);
    // Final hidden states of the prefix pass [G * tail, H] and of the suffix pass [R * S, H].
    let (prefix_hidden, suffix_hidden) = if prefix_width > 0 {
        let prefixes: Vec<&[i64]> = part.iter().map(|&g| &groups[g][0].run()[..shared[g]]).collect();
        let (prefix_ids, prefix_mask) = padded(&prefixes, prefix_width, pad, true, device);
        let mut cache = KvCache::new(model.num_layers());
        let prefix_hidden =
            model.last_hidden_states(&prefix_ids, &prefix_mask, Some(&mut cache), Some(tail as i64));
        let suffix_hidden = (suffix_width > 0).then(|| {
            let (suffix_ids, suffix_mask) = padded(&suffixes, suffix_width, pad, false, device);
            let group_row: Vec<i64> = rows.iter().map(|&(_, _, row)| row as i64).collect();
            let index = Tensor::from_slice(&group_row).to_device(device);
            let mut cache = cache.select_rows(&index);
            let mask = Tensor::cat(&[prefix_mask.index_select(0, &index), suffix_mask], 1);
            model.hidden_states(&suffix_ids, &mask, Some(&mut cache))
        });
        (Some(prefix_hidden.reshape([-1, h])), suffix_hidden.map(|t| t.reshape([-1, h])))
    } else {
        let (suffix_ids, suffix_mask) = padded(&suffixes, suffix_width.max(1), pad, false, device);
        (None, Some(model.hidden_states(&suffix_ids, &suffix_mask, None).reshape([-1, h])))
    };
    // The scored positions of every row, in the prefix pass or the suffix pass, and the tokens
    // they predict.
    let (mut from_prefix, mut from_suffix) = (Vec::new(), Vec::new());
    let mut order = Vec::new();
    let mut targets = Vec::new();
    let mut counts = Vec::with_capacity(rows.len());
    for (r, &(g, c, row)) in rows.iter().enumerate() {
        let s = groups[g][c];
        let positions = s.scored();
        counts.push(positions.len());
        for pos in positions {
            if pos < shared[g] {
                order.push((true, from_prefix.len()));
                // Position `pos` of the group's shared tokens is `shared - pos` columns from the
                // end, within the last `tail`.
                from_prefix.push((row * tail + tail - (shared[g] - pos)) as i64);
            } else {
                order.push((false, from_suffix.len()));
                from_suffix.push((r * suffix_width.max(1) + pos - shared[g]) as i64);
            }
            targets.push(s.tokens[pos + 1]);
        }
    }
    let pick = |hidden: &Option<Tensor>, index: &[i64]| -> Option<Tensor> {
        (!index.is_empty()).then(|| {
            hidden
                .as_ref()
                .expect("a pass for every scored position")
                .index_select(0, &Tensor::from_slice(index).to_device(device))
        })
    };
    let (a, b) = (pick(&prefix_hidden, &from_prefix), pick(&suffix_hidden, &from_suffix));
    let values = match (a, b) {
        (None, None) => Vec::new(),
        (a, b) => {
            let parts: Vec<Tensor> = [a, b].into_iter().flatten().collect();
            let hidden = Tensor::cat(&parts, 0);
            // Back to the order of `targets`: prefix rows come first in `hidden`.
            let placed: Vec<i64> = order
                .iter()
                .map(|&(in_prefix, i)| if in_prefix { i as i64 } else { (from_prefix.len() + i) as i64 })
                .collect();
            let hidden = hidden.index_select(0, &Tensor::from_slice(&placed).to_device(device));
            head_log_probs(model, &hidden, &targets, device)
        }
    };
    let mut offset = 0;
    for (&(g, _, _), count) in rows.iter().zip(counts) {
        results[g].push(values[offset..offset + count].to_vec());
        offset += count;
    }
}

/// log p(target) under the LM head on `hidden` `[N, H]`, in chunks of positions.
fn head_log_probs(model: &dyn CausalLm, hidden: &Tensor, targets: &[i64], device: Device) -> Vec<f64> {
    let targets = Tensor::from_slice(targets).to_device(device);
    let n = hidden.size()[0];
    let chunk = (HEAD_CHUNK_LOGITS / model.head().size()[0].max(1)).max(1);
    let mut values: Vec<f64> = Vec::with_capacity(n as usize);
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
    values
}
