#!/usr/bin/env python3
"""Writes tests/fixtures/kshot: small raw data of every reader kind and the files that
scripts/reference_kshot.py makes from them. Deterministic; rerun after changing either script:

    .venv/bin/python scripts/make_kshot_fixtures.py

Reader kinds covered: GLUE TSV with header (SST-2, with \\r\\n endings and a last line without a
newline), CoLA without header (dev above 1000 lines, so the accumulated 1k shuffles show), MNLI with
matched (above 1000) and mismatched (below) dev, STS-B float scores, headerless CSV with quotes,
commas, NA strings and leading spaces (mr: test above 1000; sst-5: below), and ag_news's 3 columns.
"""
import os
import random
import shutil
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "kshot")
WORDS = "good bad film plot actors slow great dull music story funny long short dark warm cold".split()


def sentence(rng, n=5):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write(path, text, newline="\n"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        f.write(text.replace("\n", newline))


def csv_cell(rng, i):
    kind = i % 9
    if kind == 0:
        return f'"{sentence(rng)}, with a comma"'
    if kind == 1:
        return f'"say ""{rng.choice(WORDS)}"" twice"'
    if kind == 2:
        return rng.choice(["NA", "null", "N/A", ""])
    if kind == 3:
        return f'" {sentence(rng)} "'
    return sentence(rng)


def main():
    rng = random.Random(2024)
    original = os.path.join(ROOT, "original")
    shutil.rmtree(ROOT, ignore_errors=True)
    # SST-2: header, \r\n endings, no newline at the end.
    rows = [f"{sentence(rng)} \t{rng.randint(0, 1)}" for _ in range(40)]
    write(f"{original}/SST-2/train.tsv", "sentence\tlabel\n" + "\n".join(rows), newline="\r\n")
    write(f"{original}/SST-2/dev.tsv", "sentence\tlabel\n" + "".join(f"{sentence(rng)} \t{i % 2}\n" for i in range(30)))
    # CoLA: no header.
    write(f"{original}/CoLA/train.tsv", "".join(f"src{i % 3}\t{rng.randint(0, 1)}\t\t{sentence(rng)}\n" for i in range(40)))
    write(f"{original}/CoLA/dev.tsv", "".join(f"d\t{i % 2}\t\t{i}\n" for i in range(1100)))
    # MNLI: ten fields plus the label last.
    labels = ["contradiction", "entailment", "neutral"]
    def mnli(n, short=False):
        head = "index\tpromptID\tpairID\tgenre\ts1bp\ts2bp\ts1p\ts2p\tsentence1\tsentence2\tgold_label\n"
        body = "".join(f"{i}\t{i}\t{i}e\tfiction\t-\t-\t-\t-\t{i if short else sentence(rng)}\t{'' if short else sentence(rng, 3)}\t{labels[rng.randint(0, 2)]}\n" for i in range(n))
        return head + body
    write(f"{original}/MNLI/train.tsv", mnli(45))
    write(f"{original}/MNLI/dev_matched.tsv", mnli(1050, short=True))
    write(f"{original}/MNLI/dev_mismatched.tsv", mnli(20))
    # STS-B: float scores, 2.5 exactly falls in the upper group.
    scores = ["0.000", "1.200", "2.499", "2.500", "3.8", "5.000"]
    sts = "genre\tfile\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    write(f"{original}/STS-B/train.tsv", sts + "".join(f"g\tf\t2012\t{i}\tnone\tnone\t{sentence(rng)}\t{sentence(rng)}\t{rng.choice(scores)}\n" for i in range(30)))
    write(f"{original}/STS-B/dev.tsv", sts + "".join(f"g\tf\t2012\t{i}\tnone\tnone\ta\tb\t{rng.choice(scores)}\n" for i in range(10)))
    # CSV tasks.
    write(f"{original}/mr/train.csv", "".join(f"{rng.randint(0, 1)},{csv_cell(rng, i)}\n" + ("\n" if i == 7 else "") for i in range(40)))
    write(f"{original}/mr/test.csv", "".join(f"{i % 2},t{i}\n" for i in range(1200)))
    write(f"{original}/sst-5/train.csv", "".join(f"{rng.randint(0, 4)},{csv_cell(rng, i)}\n" for i in range(50)))
    write(f"{original}/sst-5/test.csv", "".join(f"{i % 5},{csv_cell(rng, i)}\n" for i in range(40)))
    write(f"{original}/ag_news/train.csv", "".join(f'{rng.randint(1, 4)},"{sentence(rng, 2)}",{csv_cell(rng, i)}\n' for i in range(40)))
    write(f"{original}/ag_news/test.csv", "".join(f'{i % 4 + 1},"title {i}","desc {i}"\n' for i in range(20)))

    reference = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_kshot.py")
    tasks = ["SST-2", "CoLA", "MNLI", "STS-B", "mr", "sst-5", "ag_news"]
    for mode, seeds in [("k-shot-1k-test", ["100", "13", "42"]), ("k-shot", ["21"]), ("k-shot-10x", ["87"])]:
        subprocess.run([sys.executable, reference, "--data_dir", original, "--output_dir", os.path.join(ROOT, "expected"),
                        "--mode", mode, "--k", "4", "--task", *tasks, "--seed", *seeds], check=True)


if __name__ == "__main__":
    main()
