//! Which examples a run sees, drawn as MeZO's `large_models` draws them (docs/reference.md §9.2),
//! so that the same seeds select the same examples in the same order.
//!
//! Every draw is numpy's legacy `RandomState` freshly seeded (the reference's `temp_seed`):
//! - a subset of a split of n rows is the first `num` entries of `permutation(n)` under the set's
//!   seed, in permutation order (all n rows, permuted, when `num` ≥ n);
//! - the train sets' seeds are `--train-set-seed`, else `0..--num-train-sets`, else one per test
//!   example: `randint(0, 10000, L)` under seed 0 (in-context learning, one demonstration set per
//!   test example);
//! - a train set holds `num_train + num_dev` rows of the train split; the dev set is its **tail**;
//! - the test set is a subset of the validation split under the train set's seed (seed 0 with one
//!   demonstration set per test example), or the whole split, unpermuted, without `--num-eval`.

use super::super::mt19937::RandomState;
use crate::error::InputError;

/// The sampling flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct SamplingConfig {
    pub num_train: usize,
    pub num_dev: Option<usize>,
    pub num_eval: Option<usize>,
    pub train_set_seed: Option<u32>,
    pub num_train_sets: Option<usize>,
}

/// The indices of one train set and the test set evaluated with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainSet {
    pub seed: u32,
    /// Rows of the train split: the training examples, or the demonstrations of in-context
    /// learning.
    pub train: Vec<usize>,
    /// Rows of the train split held out for model selection (the tail of the sample).
    pub dev: Vec<usize>,
    /// Rows of the validation split.
    pub test: Vec<usize>,
}

/// How the examples are organised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// One or more train sets, each with its own test set.
    Sets(Vec<TrainSet>),
    /// In-context learning with one demonstration set per test example: `demos[i]` for `test[i]`.
    PerExample { test: Vec<usize>, demos: Vec<Vec<usize>> },
}

/// `sample_subset`: the first `num` rows of a seeded permutation of `len` rows.
pub fn subset(len: usize, seed: u32, num: usize) -> Vec<usize> {
    let mut rows = RandomState::new(seed).permutation(len);
    rows.truncate(num);
    rows
}

/// `randint(0, high, count)` under `seed`.
pub fn randint(seed: u32, high: u32, count: usize) -> Vec<u32> {
    let mut r = RandomState::new(seed);
    (0..count).map(|_| r.interval(high - 1)).collect()
}

/// The reference's plan for splits of `train_len` and `valid_len` rows.
pub fn plan(config: &SamplingConfig, train_len: usize, valid_len: usize) -> Result<Plan, InputError> {
    let test_of = |seed: u32| match config.num_eval {
        Some(n) => subset(valid_len, seed, n),
        None => (0..valid_len).collect(),
    };
    let sample = |seed: u32| subset(train_len, seed, config.num_train + config.num_dev.unwrap_or(0));
    let seeds: Vec<u32> = match (config.train_set_seed, config.num_train_sets) {
        (Some(seed), _) => vec![seed],
        (None, Some(n)) => (0..n as u32).collect(),
        (None, None) => {
            if config.num_dev.is_some() {
                return Err(InputError(
                    "--num-dev needs --train-set-seed or --num-train-sets: with one demonstration set per test \
                     example there is no dev set"
                        .into(),
                ));
            }
            let count = config.num_eval.unwrap_or(valid_len);
            let demos = randint(0, 10_000, count).into_iter().map(sample).collect();
            let mut test = test_of(0);
            // The reference draws one set per requested example, even when the split is smaller.
            test.truncate(count);
            return Ok(Plan::PerExample { test, demos });
        }
    };
    if config.num_train + config.num_dev.unwrap_or(0) > train_len {
        log::warn!(
            "--num-train + --num-dev = {} is more than the {train_len} training examples: all are used",
            config.num_train + config.num_dev.unwrap_or(0)
        );
    }
    Ok(Plan::Sets(
        seeds
            .into_iter()
            .map(|seed| {
                let mut train = sample(seed);
                let dev = match config.num_dev {
                    // Python's `set[-num_dev:]`: everything when num_dev exceeds the sample, and
                    // (a quirk kept) everything for num_dev 0, since `[-0:]` is the whole list.
                    Some(n) => {
                        let n = if n == 0 { train.len() } else { n.min(train.len()) };
                        train.split_off(train.len() - n)
                    }
                    None => Vec::new(),
                };
                TrainSet { seed, train, dev, test: test_of(seed) }
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    // numpy's values (docs/reference.md §9.2).
    #[test]
    fn draws_match_numpy() {
        assert_eq!(subset(10, 0, 10), [2, 8, 4, 9, 1, 6, 7, 3, 0, 5]);
        assert_eq!(subset(67349, 0, 8), [43787, 16159, 59015, 5108, 67052, 35938, 49879, 51591]);
        assert_eq!(subset(872, 0, 8), [372, 676, 548, 293, 382, 532, 263, 636]);
        assert_eq!(randint(0, 10_000, 1000)[..5], [2732, 9845, 3264, 4859, 9225]);
        let mut r = RandomState::new(42);
        let seeds: Vec<u32> = (0..6).map(|_| r.interval(999_999_999)).collect();
        assert_eq!(seeds, [534895718, 199900595, 862061404, 787846414, 996406378, 127521863]);
    }

    #[test]
    fn dev_is_the_tail_of_the_train_sample() {
        let config = SamplingConfig {
            num_train: 4,
            num_dev: Some(2),
            num_eval: Some(3),
            train_set_seed: Some(0),
            num_train_sets: None,
        };
        let Plan::Sets(sets) = plan(&config, 10, 10).unwrap() else { panic!("one set") };
        assert_eq!(sets[0].train, [2, 8, 4, 9]);
        assert_eq!(sets[0].dev, [1, 6]);
        assert_eq!(sets[0].test, [2, 8, 4]);
    }

    #[test]
    fn in_context_learning_draws_a_set_per_test_example() {
        let config = SamplingConfig { num_train: 3, num_eval: Some(2), ..Default::default() };
        let Plan::PerExample { test, demos } = plan(&config, 10, 10).unwrap() else { panic!("per example") };
        assert_eq!(test, [2, 8]);
        assert_eq!(demos, [subset(10, 2732, 3), subset(10, 9845, 3)]);
        let bad = SamplingConfig { num_dev: Some(1), ..config };
        assert!(plan(&bad, 10, 10).unwrap_err().0.contains("--num-dev"));
    }
}
