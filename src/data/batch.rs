//! Batches: a seeded shuffling sampler over a training set, per-batch right padding, and the
//! split of a global batch over data-parallel ranks.
//!
//! Random stream: the sampler is an MT19937 seeded with the run seed; epoch e's order is its
//! e-th `permutation(n)`. Ranks all run the same sampler and take their own slice of each global
//! batch, so no indices are exchanged.

use super::examples::Label;
use super::mt19937::RandomState;
use super::template::Encoded;
use std::ops::Range;
use tch::{Kind, Tensor};

/// Endless, epoch-by-epoch shuffled batches of example indices.
pub struct BatchSampler {
    rng: RandomState,
    len: usize,
    batch_size: usize,
    order: Vec<usize>,
    next: usize,
    epoch: usize,
}

impl BatchSampler {
    pub fn new(len: usize, batch_size: usize, seed: u32) -> BatchSampler {
        assert!(len > 0 && batch_size > 0, "a sampler needs examples and a positive batch size");
        BatchSampler { rng: RandomState::new(seed), len, batch_size, order: Vec::new(), next: len, epoch: 0 }
    }

    /// The next global batch; the last batch of an epoch may be shorter.
    pub fn next_batch(&mut self) -> Vec<usize> {
        if self.next >= self.len {
            if !self.order.is_empty() {
                self.epoch += 1;
            }
            self.order = self.rng.permutation(self.len);
            self.next = 0;
        }
        let end = (self.next + self.batch_size).min(self.len);
        let batch = self.order[self.next..end].to_vec();
        self.next = end;
        batch
    }

    /// Epochs completed before the batch last returned.
    pub fn epoch(&self) -> usize {
        self.epoch
    }
}

/// The rows of a global batch of `len` that rank `rank` of `size` takes: contiguous, the first
/// `len % size` ranks one row more; possibly empty.
pub fn shard(len: usize, rank: usize, size: usize) -> Range<usize> {
    let base = len / size;
    let extra = len % size;
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// A padded batch on the CPU.
#[derive(Debug)]
pub struct Batch {
    /// [B, T] int64, right-padded with the pad id.
    pub input_ids: Tensor,
    /// [B, T] int64, 1 on tokens and 0 on padding.
    pub attention_mask: Tensor,
    /// [B, 1] int64 (prompt mode).
    pub mask_pos: Option<Tensor>,
    /// `[B]` int64 class ids, or float32 scores for regression.
    pub labels: Tensor,
}

/// Pads `rows` to the longest row with `pad_id`; every row needs a mask position or none does.
pub fn collate(rows: &[(&Encoded, Label)], pad_id: i64) -> Batch {
    let width = rows.iter().map(|(e, _)| e.input_ids.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len() * width);
    let mut attention = Vec::with_capacity(rows.len() * width);
    for (e, _) in rows {
        ids.extend_from_slice(&e.input_ids);
        ids.extend(std::iter::repeat_n(pad_id, width - e.input_ids.len()));
        attention.extend(std::iter::repeat_n(1i64, e.input_ids.len()));
        attention.extend(std::iter::repeat_n(0i64, width - e.input_ids.len()));
    }
    let shape = [rows.len() as i64, width as i64];
    let mask_pos: Option<Vec<i64>> = rows.iter().map(|(e, _)| e.mask_pos.map(|p| p as i64)).collect();
    let labels = match rows.first().map(|(_, l)| *l) {
        Some(Label::Score(_)) => Tensor::from_slice(
            &rows
                .iter()
                .map(|(_, l)| if let Label::Score(s) = l { *s as f32 } else { f32::NAN })
                .collect::<Vec<_>>(),
        ),
        _ => Tensor::from_slice(
            &rows
                .iter()
                .map(|(_, l)| if let Label::Class(c) = l { *c as i64 } else { -1 })
                .collect::<Vec<_>>(),
        ),
    };
    Batch {
        input_ids: Tensor::from_slice(&ids).reshape(shape),
        attention_mask: Tensor::from_slice(&attention).reshape(shape),
        mask_pos: mask_pos.map(|p| Tensor::from_slice(&p).reshape([rows.len() as i64, 1])),
        labels: labels.to_kind(if matches!(rows.first(), Some((_, Label::Score(_)))) {
            Kind::Float
        } else {
            Kind::Int64
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_seeded_permutations() {
        let mut s = BatchSampler::new(5, 2, 42);
        let batches: Vec<Vec<usize>> = (0..6).map(|_| s.next_batch()).collect();
        let mut rng = RandomState::new(42);
        let (e0, e1) = (rng.permutation(5), rng.permutation(5));
        assert_eq!(batches[0..3].concat(), e0);
        assert_eq!(batches[2].len(), 1, "the last batch of an epoch is short");
        assert_eq!(batches[3..6].concat(), e1);
        assert_eq!(s.epoch(), 1);
    }

    #[test]
    fn shards_cover_the_batch_once() {
        for len in 0..12 {
            for size in 1..5 {
                let parts: Vec<Range<usize>> = (0..size).map(|r| shard(len, r, size)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[size - 1].end, len);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len() >= w[1].len() && w[0].len() - w[1].len() <= 1);
                }
            }
        }
        assert_eq!(shard(3, 3, 4), 3..3);
    }

    #[test]
    fn padding_to_the_longest_row() {
        let a = Encoded { input_ids: (0..17).collect(), mask_pos: Some(14) };
        let b = Encoded { input_ids: (0..14).collect(), mask_pos: Some(1) };
        let batch = collate(&[(&a, Label::Class(1)), (&b, Label::Class(0))], 1);
        assert_eq!(batch.input_ids.size(), [2, 17]);
        let row: Vec<i64> = Vec::try_from(batch.input_ids.get(1)).unwrap();
        assert_eq!(&row[14..], [1, 1, 1]);
        let mask: Vec<i64> = Vec::try_from(batch.attention_mask.get(1)).unwrap();
        assert_eq!(mask.iter().sum::<i64>(), 14);
        assert_eq!(&mask[14..], [0, 0, 0]);
        let pos = batch.mask_pos.unwrap();
        assert_eq!(pos.size(), [2, 1]);
        assert_eq!(Vec::<i64>::try_from(pos.view([-1])).unwrap(), [14, 1]);
        assert_eq!(Vec::<i64>::try_from(batch.labels).unwrap(), [1, 0]);
        let scores = collate(&[(&a, Label::Score(3.5))], 1);
        assert_eq!(scores.labels.kind(), Kind::Float);
        assert!(scores.mask_pos.is_some());
    }
}
