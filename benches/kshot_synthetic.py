#!/usr/bin/env python3
"""Writes synthetic raw data with the row counts of the real LM-BFF datasets (GLUE and the
sentence-classification sets) into DIR/original, for timing `mezo kshot` against the reference.

usage: kshot_synthetic.py DIR
"""
import os
import random
import sys

SIZES = {  # task: (train rows, eval rows per eval file)
    "SST-2": (67349, [872]), "sst-5": (8544, [2210]), "mr": (8662, [2000]), "cr": (1775, [2000]),
    "mpqa": (8606, [2000]), "subj": (8000, [2000]), "trec": (5452, [500]), "CoLA": (8551, [1043]),
    "MRPC": (3668, [408]), "QQP": (363846, [40430]), "STS-B": (5749, [1500]),
    "MNLI": (392702, [9815, 9832]), "SNLI": (549367, [9842]), "QNLI": (104743, [5463]), "RTE": (2490, [277]),
}
LABELS = {"sst-5": 5, "trec": 6}
WORDS = "the a film plot is was good bad very not quite story actors music long slow funny dark".split()


def text(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def glue_row(task, rng, i):
    if task == "SST-2":
        return f"{text(rng, 12)} \t{rng.randint(0, 1)}\n"
    if task == "CoLA":
        return f"src\t{rng.randint(0, 1)}\t\t{text(rng, 9)}\n"
    if task == "MRPC":
        return f"{rng.randint(0, 1)}\t{i}\t{i}\t{text(rng, 20)}\t{text(rng, 20)}\n"
    if task == "QQP":
        return f"{i}\t{i}\t{i}\t{text(rng, 11)}\t{text(rng, 11)}\t{rng.randint(0, 1)}\n"
    if task == "STS-B":
        return f"g\tf\t2012\t{i}\tnone\tnone\t{text(rng, 10)}\t{text(rng, 10)}\t{rng.uniform(0, 5):.3f}\n"
    if task in ("MNLI", "SNLI"):
        label = rng.choice(["contradiction", "entailment", "neutral"])
        prefix = "\t".join(str(i) for _ in range(8 if task == "MNLI" else 7))
        return f"{prefix}\t{text(rng, 15)}\t{text(rng, 8)}\t{label}\n"
    label = rng.choice(["entailment", "not_entailment"])
    return f"{i}\t{text(rng, 12)}\t{text(rng, 25)}\t{label}\n"


def main():
    out = os.path.join(sys.argv[1], "original")
    rng = random.Random(0)
    for task, (train, evals) in SIZES.items():
        d = os.path.join(out, task)
        os.makedirs(d, exist_ok=True)
        if task in ("sst-5", "mr", "cr", "mpqa", "subj", "trec"):
            labels = LABELS.get(task, 2)
            for name, n in [("train", train), ("test", evals[0])]:
                with open(os.path.join(d, f"{name}.csv"), "w") as f:
                    f.writelines(f'{rng.randrange(labels)},"{text(rng, 18)}, {text(rng, 3)}"\n' for _ in range(n))
            continue
        header = "" if task == "CoLA" else "header\tcolumns\n"
        names = ["dev_matched", "dev_mismatched"] if task == "MNLI" else ["dev"]
        for name, n in [("train", train)] + list(zip(names, evals)):
            with open(os.path.join(d, f"{name}.tsv"), "w") as f:
                f.write(header)
                f.writelines(glue_row(task, rng, i) for i in range(n))


if __name__ == "__main__":
    main()
