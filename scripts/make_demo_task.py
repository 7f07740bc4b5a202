#!/usr/bin/env python3
"""Writes the built-in demo task, data/demo/original/SST-2/{train,dev}.tsv: our own movie-review
sentences in GLUE SST-2 format (lower-cased, space-tokenized, a space before the tab), 400 train
and 120 dev rows, half positive. Deterministic:

    python3 scripts/make_demo_task.py
"""
import os
import random

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "demo", "original", "SST-2")
SUBJECTS = ["the film", "this movie", "the plot", "the acting", "the script", "the soundtrack", "the ending",
            "the cast", "the story", "the direction", "every scene", "the dialogue", "the pacing", "the lead"]
GOOD = ["is wonderful", "is a joy to watch", "feels fresh and funny", "is moving", "is sharp and witty",
        "works beautifully", "is brilliant", "kept me smiling", "is warm and charming", "is great fun"]
BAD = ["is dull", "is a mess", "feels tired and slow", "is painful to sit through", "falls flat",
       "is boring", "is awful", "made me yawn", "is lifeless", "never works"]
LINKS = ["and", ", and", "; also ,", "but honestly"]


def sentence(rng, positive):
    first = rng.choice(GOOD if positive else BAD)
    text = f"{rng.choice(SUBJECTS)} {first}"
    if rng.random() < 0.5:
        second = rng.choice(GOOD if positive else BAD)
        text += f" {rng.choice(LINKS)} {rng.choice(SUBJECTS)} {second}"
    return f"{text} . "


def main():
    rng = random.Random(0)
    os.makedirs(OUT, exist_ok=True)
    for name, n in [("train", 400), ("dev", 120)]:
        rows = [(sentence(rng, i % 2 == 1), i % 2) for i in range(n)]
        rng.shuffle(rows)
        with open(os.path.join(OUT, f"{name}.tsv"), "w") as f:
            f.write("sentence\tlabel\n")
            f.writelines(f"{s}\t{label}\n" for s, label in rows)


if __name__ == "__main__":
    main()
