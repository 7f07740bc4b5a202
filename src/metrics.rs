//! Task metrics as LM-BFF computes them (docs/reference.md §1.3), on class ids or scores, and
//! SQuAD's answer F1 as MeZO's large-model tasks compute it (§9.4).

use std::collections::BTreeMap;

/// Fraction of equal entries.
pub fn accuracy(predictions: &[usize], labels: &[usize]) -> f64 {
    let correct = predictions.iter().zip(labels).filter(|(p, l)| p == l).count();
    correct as f64 / labels.len().max(1) as f64
}

/// Binary F1 with class 1 positive (scikit-learn's `f1_score` default); 0 when undefined.
pub fn f1(predictions: &[usize], labels: &[usize]) -> f64 {
    let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
    for (&p, &l) in predictions.iter().zip(labels) {
        match (p == 1, l == 1) {
            (true, true) => tp += 1.0,
            (true, false) => fp += 1.0,
            (false, true) => fn_ += 1.0,
            _ => {}
        }
    }
    if tp == 0.0 {
        return 0.0;
    }
    2.0 * tp / (2.0 * tp + fp + fn_)
}

/// Matthews correlation (scikit-learn's `matthews_corrcoef`, multiclass form); 0 when undefined.
pub fn mcc(predictions: &[usize], labels: &[usize]) -> f64 {
    let k = predictions.iter().chain(labels).max().map_or(0, |m| m + 1);
    let mut confusion = vec![vec![0.0f64; k]; k];
    for (&p, &l) in predictions.iter().zip(labels) {
        confusion[l][p] += 1.0;
    }
    let s: f64 = predictions.len() as f64;
    let c: f64 = (0..k).map(|i| confusion[i][i]).sum();
    let t: Vec<f64> = (0..k).map(|i| confusion[i].iter().sum()).collect();
    let p: Vec<f64> = (0..k).map(|j| (0..k).map(|i| confusion[i][j]).sum()).collect();
    let tp: f64 = t.iter().zip(&p).map(|(a, b)| a * b).sum();
    let denominator = ((s * s - p.iter().map(|x| x * x).sum::<f64>())
        * (s * s - t.iter().map(|x| x * x).sum::<f64>()))
    .sqrt();
    if denominator == 0.0 {
        0.0
    } else {
        (c * s - tp) / denominator
    }
}

pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    if vx == 0.0 || vy == 0.0 {
        return f64::NAN;
    }
    cov / (vx * vy).sqrt()
}

/// Ranks with ties averaged (scipy's `rankdata`).
fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut out = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &o in &order[i..=j] {
            out[o] = rank;
        }
        i = j + 1;
    }
    out
}

pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// The metrics `names` of a task (without the `eval_` prefix) from class predictions and labels.
pub fn classification(names: &[&str], predictions: &[usize], labels: &[usize]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for &name in names {
        let value = match name {
            "acc" | "mnli/acc" | "mnli-mm/acc" => accuracy(predictions, labels),
            "f1" => f1(predictions, labels),
            "acc_and_f1" => (accuracy(predictions, labels) + f1(predictions, labels)) / 2.0,
            "mcc" => mcc(predictions, labels),
            _ => continue,
        };
        out.insert(name.to_string(), value);
    }
    out
}

/// STS-B's metrics from predicted and gold scores.
pub fn regression(predictions: &[f64], labels: &[f64]) -> BTreeMap<String, f64> {
    let p = pearson(predictions, labels);
    let s = spearman(predictions, labels);
    BTreeMap::from([("pearson".into(), p), ("spearmanr".into(), s), ("corr".into(), (p + s) / 2.0)])
}

/// SQuAD's answer normalisation: lower case, no ASCII punctuation, no articles, single spaces.
pub fn normalize_answer(text: &str) -> String {
    static ARTICLES: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"\b(a|an|the)\b").expect("valid regex"));
    let lower = text.to_lowercase();
    let no_punctuation: String = lower.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    let no_articles = ARTICLES.replace_all(&no_punctuation, " ");
    no_articles
        .split(crate::data::large::prompt::is_python_space)
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The best token F1 of `prediction` against any of `golds` (multiset overlap of normalised
/// words). No overlap scores 0, even an empty answer against an empty gold; a first gold of
/// "CANNOTANSWER" or "no answer" asks for an exact match instead.
pub fn squad_f1(prediction: &str, golds: &[String]) -> f64 {
    let Some(first) = golds.first() else { return 0.0 };
    let predicted = normalize_answer(prediction);
    if first == "CANNOTANSWER" || first == "no answer" {
        return f64::from(u8::from(normalize_answer(first) == predicted));
    }
    let predicted: Vec<&str> = predicted.split(' ').filter(|w| !w.is_empty()).collect();
    golds
        .iter()
        .map(|gold| {
            let gold = normalize_answer(gold);
            let gold: Vec<&str> = gold.split(' ').filter(|w| !w.is_empty()).collect();
            let mut counts: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
            for w in &gold {
                *counts.entry(w).or_default() += 1;
            }
            let mut same = 0;
            for w in &predicted {
                if let Some(n) = counts.get_mut(w).filter(|n| **n > 0) {
                    *n -= 1;
                    same += 1;
                }
            }
            if same == 0 {
                return 0.0;
            }
            let precision = same as f64 / predicted.len() as f64;
            let recall = same as f64 / gold.len() as f64;
            2.0 * precision * recall / (precision + recall)
        })
        .fold(f64::NEG_INFINITY, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn against_scikit_learn_and_scipy_values() {
        let p = [1, 0, 1, 1, 0, 1, 0, 0];
        let l = [1, 0, 0, 1, 0, 1, 1, 0];
        assert_eq!(accuracy(&p, &l), 0.75);
        assert!((f1(&p, &l) - 0.75).abs() < 1e-12);
        // sklearn.metrics.matthews_corrcoef(l, p) = 0.5
        assert!((mcc(&p, &l) - 0.5).abs() < 1e-12);
        // Multiclass, by sklearn's formula: (4 * 6 - 12) / sqrt((36 - 12) * (36 - 12)).
        assert!((mcc(&[0, 1, 2, 2, 1, 0], &[0, 1, 2, 1, 2, 0]) - 0.5).abs() < 1e-12);
        assert_eq!(mcc(&[1, 1, 1], &[1, 0, 1]), 0.0);
        assert_eq!(f1(&[0, 0], &[1, 0]), 0.0);
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [2.0, 1.0, 4.0, 3.0, 5.0];
        assert!((pearson(&x, &y) - 0.8).abs() < 1e-12);
        assert!((spearman(&x, &y) - 0.8).abs() < 1e-12);
        // Ties: scipy.stats.spearmanr([1, 2, 2, 3], [1, 3, 2, 4]) = 0.9486832980505138
        assert!((spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]) - 0.9486832980505138).abs() < 1e-12);
        let m = classification(&["acc", "f1", "acc_and_f1"], &p, &l);
        assert_eq!(m["acc_and_f1"], 0.75);
    }

    #[test]
    fn squad_f1_on_hand_made_answers() {
        let golds = |g: &[&str]| g.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(normalize_answer("The  Cat, a dog!"), "cat dog");
        assert_eq!(normalize_answer("Theater"), "theater");
        assert_eq!(squad_f1("the cat", &golds(&["A cat."])), 1.0);
        // 1 of 2 predicted words, 1 of 1 gold word: P 0.5, R 1.
        assert!((squad_f1("black cat", &golds(&["cat"])) - 2.0 / 3.0).abs() < 1e-12);
        // The best of several golds.
        assert_eq!(squad_f1("Paris", &golds(&["London", "paris"])), 1.0);
        // Empty against empty is 0, as in the reference.
        assert_eq!(squad_f1("", &golds(&[""])), 0.0);
        assert_eq!(squad_f1("the", &golds(&["a"])), 0.0);
        assert_eq!(squad_f1("No answer.", &golds(&["no answer"])), 1.0);
        assert_eq!(squad_f1("nothing", &golds(&["CANNOTANSWER"])), 0.0);
        // Repeated words count as often as both sides have them.
        assert!((squad_f1("cat cat cat", &golds(&["cat cat"])) - 0.8).abs() < 1e-12);
    }
}
