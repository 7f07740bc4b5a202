//! Demonstrations (`prompt-demo`, docs/reference.md §4): each query is followed by one training example
//! per label, drawn at random, filled into a copy of the template with the label word in place of
//! the mask.
//!
//! Random stream: the reference draws `np.random.permutation(#candidates)` from numpy's global
//! RNG, seeded with the run seed, once per demonstration set: first every dev feature
//! (`num_sample` sets per query, sample-major), then every test feature, then one set per
//! training-example access. [`DemoSampler`] is that RNG, and callers draw in that order.

use super::examples::{Example, Label};
use super::mt19937::RandomState;

/// The demonstration template (`auto_demo`): the template, then per class c a copy without
/// `*cls*` whose sentences `_j*` are renumbered to `_{n + n c + j}*` and whose mask is
/// `*label_c*`, with n = 2 if the template mentions `_1`, else 1.
pub fn expand_template(template: &str, num_labels: usize) -> String {
    let body = template.replace("*cls*", "");
    let sentences = if body.contains("_1") { 2 } else { 1 };
    let mut out = template.to_string();
    for class in 0..num_labels {
        let mut copy = body.clone();
        for j in 0..sentences {
            copy = copy.replace(&format!("_{j}*"), &format!("_{}*", sentences + sentences * class + j));
        }
        out.push_str(&copy.replace("*mask*", &format!("*label_{class}*")));
    }
    out
}

/// The demonstration group of a training example: its class, or for a regression task (STS-B)
/// 0 when the score is at most the median 2.5, else 1.
pub fn demo_group(label: Label) -> usize {
    match label {
        Label::Class(c) => c,
        Label::Score(s) => usize::from(s > 2.5),
    }
}

/// numpy's global RNG as the reference's demonstration sampling uses it.
pub struct DemoSampler {
    rng: RandomState,
}

impl DemoSampler {
    pub fn new(seed: u32) -> DemoSampler {
        DemoSampler { rng: RandomState::new(seed) }
    }

    /// `select_context`: walk a random permutation of `candidates` and keep the first example of
    /// each of the `groups` demonstration groups; returns support indices ordered by group.
    pub fn select(&mut self, candidates: &[usize], support: &[Example], groups: usize) -> Vec<usize> {
        let mut chosen: Vec<Option<usize>> = vec![None; groups];
        for i in self.rng.permutation(candidates.len()) {
            let s = candidates[i];
            let g = demo_group(support[s].label);
            if g < groups && chosen[g].is_none() {
                chosen[g] = Some(s);
                if chosen.iter().all(Option::is_some) {
                    break;
                }
            }
        }
        chosen.into_iter().flatten().collect()
    }
}

/// The (query, demonstrations) list of an evaluation split: `num_sample` sets per query, in
/// sample-major order (all queries of sample 0, then of sample 1, ...), as the reference
/// precomputes them; logits are later averaged over the samples of a query.
pub fn eval_demonstrations(
    sampler: &mut DemoSampler,
    queries: usize,
    support: &[Example],
    groups: usize,
    num_sample: usize,
) -> Vec<(usize, Vec<usize>)> {
    let candidates: Vec<usize> = (0..support.len()).collect();
    let mut out = Vec::with_capacity(queries * num_sample);
    for _ in 0..num_sample {
        for q in 0..queries {
            out.push((q, sampler.select(&candidates, support, groups)));
        }
    }
    out
}

/// One training example's demonstrations, drawn anew at every access; the example itself is
/// not a candidate.
pub fn train_demonstrations(
    sampler: &mut DemoSampler,
    query: usize,
    support: &[Example],
    groups: usize,
) -> Vec<usize> {
    let candidates: Vec<usize> = (0..support.len()).filter(|&s| s != query).collect();
    sampler.select(&candidates, support, groups)
}

/// The sentence list S of a query with demonstrations: the query's sentences, then each
/// demonstration's, in group order.
pub fn sentences_with_demonstrations<'a>(
    query: &'a Example,
    demos: &[usize],
    support: &'a [Example],
) -> Vec<&'a str> {
    let mut out = query.sentences();
    for &d in demos {
        out.extend(support[d].sentences());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_expand_as_the_reference() {
        assert_eq!(
            expand_template("*cls**sent_0*_It_was*mask*.*sep+*", 2),
            "*cls**sent_0*_It_was*mask*.*sep+**sent_1*_It_was*label_0*.*sep+**sent_2*_It_was*label_1*.*sep+*"
        );
        let mnli = expand_template("*cls**sent-_0*?*mask*,*+sentl_1**sep+*", 3);
        assert!(mnli.ends_with(
            "*sent-_2*?*label_0*,*+sentl_3**sep+**sent-_4*?*label_1*,*+sentl_5**sep+**sent-_6*?*label_2*,*+sentl_7**sep+*"
        ));
    }

    fn example(label: Label) -> Example {
        Example { text_a: format!("{label:?}"), text_b: None, label }
    }

    #[test]
    fn selection_takes_one_per_group_in_permutation_order() {
        let support: Vec<Example> = [0, 1, 0, 1, 1, 0].iter().map(|&c| example(Label::Class(c))).collect();
        let mut sampler = DemoSampler::new(42);
        let chosen = sampler.select(&[0, 1, 2, 3, 4, 5], &support, 2);
        // permutation_42(6): the first class-0 and the first class-1 index in it, class order.
        let order = RandomState::new(42).permutation(6);
        let first = |c: usize| *order.iter().find(|&&i| demo_group(support[i].label) == c).unwrap();
        assert_eq!(chosen, [first(0), first(1)]);
        // Train mode never offers the query itself.
        for q in 0..6 {
            assert!(!train_demonstrations(&mut sampler, q, &support, 2).contains(&q));
        }
        assert_eq!(demo_group(Label::Score(2.5)), 0);
        assert_eq!(demo_group(Label::Score(2.51)), 1);
    }

    #[test]
    fn eval_sets_are_sample_major() {
        let support: Vec<Example> = [0, 1, 2].iter().map(|&c| example(Label::Class(c))).collect();
        let sets = eval_demonstrations(&mut DemoSampler::new(1), 2, &support, 3, 4);
        assert_eq!(sets.iter().map(|(q, _)| *q).collect::<Vec<_>>(), [0, 1, 0, 1, 0, 1, 0, 1]);
        assert!(sets.iter().all(|(_, d)| d == &[0, 1, 2]));
        let query = Example { text_a: "q".into(), text_b: Some("r".into()), label: Label::Class(0) };
        assert_eq!(
            sentences_with_demonstrations(&query, &[2, 0], &support),
            ["q", "r", "Class(2)", "Class(0)"]
        );
    }
}
