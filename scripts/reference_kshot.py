#!/usr/bin/env python3
"""An independent implementation of LM-BFF's tools/generate_k_shot_data.py (with the
k-shot-1k-test mode of LM-Kernel-FT/MeZO) on numpy's global RandomState and pandas, written from
the reference's behaviour (docs/reference.md §2). It is the yardstick `mezo kshot` is compared
against: scripts/make_kshot_fixtures.py runs it to produce the expected files, and
benches/kshot-real-sizes.sh times it beside mezo.

usage: reference_kshot.py --data_dir DIR --output_dir DIR --mode MODE --k K --task T... --seed S...
"""
import argparse
import os

import numpy as np
import pandas as pd
from pandas import DataFrame

GLUE = ["MNLI", "MRPC", "QNLI", "QQP", "RTE", "SNLI", "SST-2", "STS-B", "WNLI", "CoLA"]


def get_label(task, line):
    if task in GLUE:
        line = line.strip().split("\t")
        if task == "CoLA":
            return line[1]
        if task == "MRPC":
            return line[0]
        if task == "STS-B":
            return 0 if float(line[-1]) < 2.5 else 1
        return line[-1]
    return line[0]


def load_datasets(data_dir, tasks):
    datasets = {}
    for task in tasks:
        dirname = os.path.join(data_dir, task)
        dataset = {}
        if task in GLUE:
            splits = ["train", "dev_matched", "dev_mismatched"] if task == "MNLI" else ["train", "dev"]
            for split in splits:
                with open(os.path.join(dirname, f"{split}.tsv"), "r") as f:
                    dataset[split] = f.readlines()
        else:
            for split in ["train", "test"]:
                dataset[split] = pd.read_csv(os.path.join(dirname, f"{split}.csv"), header=None)
        datasets[task] = dataset
    return datasets


def split_header(task, lines):
    # CoLA returns the list itself: its shuffles accumulate over seeds (the reference's aliasing).
    if task == "CoLA":
        return [], lines
    return lines[0:1], lines[1:]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--task", type=str, nargs="+", default=[
        "SST-2", "sst-5", "mr", "cr", "mpqa", "subj", "trec", "CoLA", "MRPC", "QQP", "STS-B",
        "MNLI", "SNLI", "QNLI", "RTE"])
    parser.add_argument("--seed", type=int, nargs="+", default=[100, 13, 21, 42, 87])
    parser.add_argument("--data_dir", type=str, default="data/original")
    parser.add_argument("--output_dir", type=str, default="data")
    parser.add_argument("--mode", type=str, default="k-shot", choices=["k-shot", "k-shot-10x", "k-shot-1k-test"])
    args = parser.parse_args()
    args.output_dir = os.path.join(args.output_dir, args.mode)
    k = args.k
    datasets = load_datasets(args.data_dir, args.task)
    for seed in args.seed:
        for task, dataset in datasets.items():
            np.random.seed(seed)
            if task in GLUE:
                train_header, train_lines = split_header(task, dataset["train"])
                np.random.shuffle(train_lines)
            else:
                train_lines = dataset["train"].values.tolist()
                np.random.shuffle(train_lines)
            setting_dir = os.path.join(args.output_dir, task, f"{k}-{seed}")
            os.makedirs(setting_dir, exist_ok=True)
            if task in GLUE:
                for split, lines in dataset.items():
                    if split.startswith("train"):
                        continue
                    split = split.replace("dev", "test")
                    test_header, test_lines = split_header(task, lines)
                    if args.mode == "k-shot-1k-test" and len(test_lines) > 1000:
                        np.random.seed(42)
                        np.random.shuffle(test_lines)
                        test_lines = test_lines[:1000]
                    with open(os.path.join(setting_dir, f"{split}.tsv"), "w") as f:
                        for line in test_header + test_lines:
                            f.write(line)
            else:
                test_df = dataset["test"]
                if args.mode == "k-shot-1k-test" and len(test_df) > 1000:
                    test_df = test_df.sample(n=1000, random_state=42)
                test_df.to_csv(os.path.join(setting_dir, "test.csv"), header=False, index=False)
            label_list = {}
            for line in train_lines:
                label_list.setdefault(get_label(task, line), []).append(line)
            dev_rate = 11 if "10x" in args.mode else 2
            if task in GLUE:
                with open(os.path.join(setting_dir, "train.tsv"), "w") as f:
                    for line in train_header:
                        f.write(line)
                    for label in label_list:
                        for line in label_list[label][:k]:
                            f.write(line)
                name = "dev_matched.tsv" if task == "MNLI" else "dev.tsv"
                with open(os.path.join(setting_dir, name), "w") as f:
                    for line in train_header:
                        f.write(line)
                    for label in label_list:
                        for line in label_list[label][k:k * dev_rate]:
                            f.write(line)
            else:
                new_train = [line for label in label_list for line in label_list[label][:k]]
                DataFrame(new_train).to_csv(os.path.join(setting_dir, "train.csv"), header=False, index=False)
                new_dev = [line for label in label_list for line in label_list[label][k:k * dev_rate]]
                DataFrame(new_dev).to_csv(os.path.join(setting_dir, "dev.csv"), header=False, index=False)


if __name__ == "__main__":
    main()
