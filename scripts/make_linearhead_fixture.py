#!/usr/bin/env python3
"""Reference linear probes for tests/linearhead.rs: LM-Kernel-FT's linear-head trainer (docs/reference.md
§8) with transformers features and scikit-learn's LogisticRegressionCV.

    .venv/bin/python scripts/make_linearhead_fixture.py target/debug/mezo

Model: tests/fixtures/models/roberta (RobertaForMaskedLM, float64). Data:
* the 16-shot SST-2 split of the built-in demo task with seed 42 (`mezo kshot`, as the test makes it);
* a 5-class SST-5 split written here to tests/fixtures/linearhead/sst-5 (LM-BFF's headerless
  label,sentence CSV): demo sentences with labels made from their sentiment and length, 10 training
  examples per class, so that the probe has something to find.
Inputs come from `mezo encode --json` (its encoding is tested against LM-BFF's elsewhere). Features are
the input of the output layer: prompt mode, lm_head dense + GELU + LayerNorm at the mask; finetune
mode, the final hidden state of <s>. The fit is LogisticRegressionCV(Cs=10, cv=5 (StratifiedKFold
without shuffling), multi_class="multinomial", max_iter=5000, random_state=0) on the rows in file
order, as mezo orders them; tol is 1e-10 rather than 1e-4 because mezo's L-BFGS runs to convergence
(src/solve/logistic.rs explains why). Writes tests/fixtures/linearhead/expected.json.
"""
import csv
import json
import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import sklearn
import torch
import transformers
from sklearn.linear_model import LogisticRegressionCV
from transformers import RobertaForMaskedLM

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODEL = os.path.join(REPO, "tests/fixtures/models/roberta")
OUT = os.path.join(REPO, "tests/fixtures/linearhead")


def write_sst5():
    """Five classes from the demo sentences: sentiment × length, and every seventh sentence in class 2."""
    with open(os.path.join(REPO, "data/demo/original/SST-2/train.tsv")) as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    lengths = sorted(len(s.split()) for s, _ in rows)
    median = lengths[len(lengths) // 2]
    labelled = []
    for i, (sentence, label) in enumerate(rows):
        long = len(sentence.split()) > median
        cls = 2 if i % 7 == 0 else (3 + long if label == "1" else 1 - long)
        labelled.append((cls, sentence.strip()))
    splits = {"train": 10, "dev": 5, "test": 5}
    taken = {name: {c: [] for c in range(5)} for name in splits}
    for cls, sentence in labelled:
        for name, per_class in splits.items():
            if len(taken[name][cls]) < per_class:
                taken[name][cls].append(sentence)
                break
    directory = os.path.join(OUT, "sst-5")
    os.makedirs(directory, exist_ok=True)
    for name, per_class in splits.items():
        assert all(len(v) == per_class for v in taken[name].values()), name
        # Interleaved classes, as a shuffled k-shot file is.
        ordered = [(c, taken[name][c][i]) for i in range(per_class) for c in [(i + j) % 5 for j in range(5)]]
        with open(os.path.join(directory, f"{name}.csv"), "w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(ordered)
    return directory


def encode(mezo, task, split_dir, mode):
    out = subprocess.run([mezo, "-q", "encode", "--task", task, "--data-dir", split_dir, "--model", MODEL,
                          "--few-shot-type", mode, "--split", "train", "--json", "--limit", "1000000"],
                         check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def features(model, examples, mode):
    rows = []
    with torch.no_grad():
        for e in examples:
            hidden = model.roberta(torch.tensor([e["input_ids"]])).last_hidden_state[0]
            if mode == "finetune":
                rows.append(hidden[0])
            else:
                head = model.lm_head
                x = head.dense(hidden[e["mask_pos"]])
                rows.append(head.layer_norm(torch.nn.functional.gelu(x)))
    return torch.stack(rows).numpy()


def probe(x, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # multi_class is deprecated in 1.5+
        fit = LogisticRegressionCV(Cs=10, cv=5, multi_class="multinomial", max_iter=5000, tol=1e-10,
                                   random_state=0).fit(x, y)
    return {
        "c": float(fit.C_[0]),
        "coef": fit.coef_.tolist(),
        "intercept": fit.intercept_.tolist(),
        "cv_accuracy": fit.scores_[1].mean(axis=0).tolist(),
        "train_accuracy": float(fit.score(x, y)),
    }


def main():
    mezo = os.path.abspath(sys.argv[1])
    model = RobertaForMaskedLM.from_pretrained(MODEL).double().eval()
    sst5 = write_sst5()
    cases = {}
    with tempfile.TemporaryDirectory() as work:
        subprocess.run([mezo, "-q", "kshot", "--task", "SST-2", "--mode", "k-shot-1k-test", "--k", "16", "--seed", "42",
                        "--data-dir", os.path.join(REPO, "data/demo/original"), "--out", work], check=True)
        sst2 = os.path.join(work, "k-shot-1k-test/SST-2/16-42")
        for name, task, split_dir, mode in [("sst-2-prompt", "sst-2", sst2, "prompt"),
                                            ("sst-2-finetune", "sst-2", sst2, "finetune"),
                                            ("sst-5-prompt", "sst-5", sst5, "prompt")]:
            examples = encode(mezo, task, split_dir, mode)
            x = features(model, examples, mode)
            y = np.array([e["label"] for e in examples])
            cases[name] = {"task": task, "few_shot_type": mode, "features": x.tolist(), "labels": y.tolist(),
                           **probe(x, y)}
            print(f"{name}: {x.shape[0]} × {x.shape[1]} features, C = {cases[name]['c']:g}, "
                  f"train accuracy {cases[name]['train_accuracy']:.4f}")
    path = os.path.join(OUT, "expected.json")
    with open(path, "w") as f:
        json.dump({"generator": "scripts/make_linearhead_fixture.py",
                   "versions": {"scikit-learn": sklearn.__version__, "torch": torch.__version__.split("+")[0],
                                "transformers": transformers.__version__},
                   "cases": cases}, f)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
