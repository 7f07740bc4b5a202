#!/usr/bin/env python3
"""Checks scripts/convert_published_kernels.py end to end: saves fixture problems the way
LM-Kernel-FT saves kernels (`torch.save((kernel, labels))`, ±1 float labels for binary tasks,
`(f0, labels)` logit files), converts them, runs `mezo solve` on the result and compares with the
reference numbers in tests/fixtures/solve/solvers.json. `make test` runs it after `cargo test`.

    .venv/bin/python scripts/check_kernel_converter.py target/debug/mezo
"""
import json
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from convert_published_kernels import convert  # noqa: E402

FIXTURE = os.path.join(HERE, "..", "tests", "fixtures", "solve", "solvers.json")


def save_reference_style(problem, directory):
    """The .pt files the reference writes for this problem."""
    binary = problem["outputs"] == 1
    task = problem["task"]
    for split in ("train", "dev", "test"):
        labels = torch.tensor(problem["labels"][split])
        if binary:
            labels = (labels * 2 - 1).float()
        kernel = torch.tensor(np.asarray(problem["kernels"][split]), dtype=torch.float64)
        torch.save((kernel, labels), os.path.join(directory, f"{split}_kernels_{task}.pt"))
        f0 = torch.tensor(np.asarray(problem["f0"][split]), dtype=torch.float32)
        torch.save((f0, labels), os.path.join(directory, f"{split}_logits_{task}.pt"))


def main():
    mezo = sys.argv[1]
    fixture = json.load(open(FIXTURE))
    failures = 0
    checked = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("binary", "multi", "asym"):
            problem = fixture["problems"][name]
            directory = os.path.join(tmp, name, "16-42")
            os.makedirs(directory)
            save_reference_style(problem, directory)
            out = os.path.join(tmp, f"{name}.h5")
            convert(directory, out)  # formula, seed and k from the files and the directory name
            with h5py.File(out) as h:
                assert h.attrs["seed"] == 42 and h.attrs["k"] == 16, dict(h.attrs)
                assert h.attrs["formula"] == problem["formula"], (h.attrs["formula"], problem["formula"])
                assert list(h["train_labels"][:]) == problem["labels"]["train"]
            if name == "multi":
                # The reference's padding quirk: 3 GPUs for 15 train rows pad nothing, 4 pad one
                # row (a copy of row 0) onto every kernel; the converter must drop it again.
                padded = os.path.join(tmp, "padded", "16-42")
                os.makedirs(padded)
                for split in ("train", "dev", "test"):
                    path = os.path.join(directory, f"{split}_kernels_{problem['task']}.pt")
                    kernel, labels = torch.load(path)
                    torch.save((torch.cat([kernel, kernel[:1]]), labels), os.path.join(padded, os.path.basename(path)))
                convert(padded, os.path.join(tmp, "padded.h5"))
                with h5py.File(os.path.join(tmp, "padded.h5")) as a, h5py.File(out) as b:
                    assert all(np.array_equal(a[s][:], b[s][:]) for s in ("train", "dev", "test"))
            for case in fixture["cases"]:
                if case["problem"] != name or case["solver"] not in ("lstsq", "asym"):
                    continue
                results = os.path.join(tmp, f"{name}-{checked}.json")
                args = [mezo, "-q", "solve", "--kernels", out, "--solver", case["solver"], "--reg", str(case["reg"]),
                        "--out", results]
                if "f0_scaling" in case:
                    args += ["--adjust-for-init", "--f0-scaling", str(case["f0_scaling"])]
                for flag in ("kernel_gamma", "kernel_lambda"):
                    if flag in case:
                        args += [f"--{flag.replace('_', '-')}", str(case[flag])]
                subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
                got = json.load(open(results))
                # f0 went through float32 in the logit files, as the reference stores it.
                tolerance = 1e-6 if "f0_scaling" in case else 1e-9
                for split, key in (("dev", "best_dev"), ("test", "test")):
                    for metric, want in case["expected"][split].items():
                        value = got[key][metric]
                        if abs(value - want) > tolerance * max(1.0, abs(want)):
                            print(f"FAIL {name} {case['solver']} reg {case['reg']} {split} {metric}: {value} vs {want}")
                            failures += 1
                checked += 1
    print(f"{checked - failures} passed, {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
