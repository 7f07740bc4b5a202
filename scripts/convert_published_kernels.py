#!/usr/bin/env python3
"""Imports LM-Kernel-FT kernels (`{split}_kernels_{task}.pt`, and `{split}_logits_{task}.pt` when
present) into the HDF5 kernel file that `mezo solve` reads.

    .venv/bin/python scripts/convert_published_kernels.py DIR --out FILE.h5 [--task sst-2]
        [--formula sgd|signgd|asymmetric_signgd] [--seed 42] [--k 16] [--grad-dim N]

What the reference saves (src/kernel_trainer.py, `compute_kernel_cached`): `torch.save((kernel,
labels), path)` with kernel float64 [N, C, M, C] (train examples, train outputs, X examples,
X outputs), or [2, N, C, M, C] for asymmetric_signgd (index 0: sign on the train side, index 1:
the flipped pass), and labels of the X split: int64 class ids, or float32 ±1 with
`--binary_classification` (C = 1). Logit files hold `(f0, labels)` with f0 float32 [M, C].

What this writes (the layout in src/solve/kernels.rs): datasets `train`, `dev`, `test` (f64, as
saved), `{split}_labels` (int64 class ids; ±1 becomes 0/1), `{split}_f0` (f64 [M, C]) when the
logit files exist, and root attributes `task`, `formula`, `binary`, `source`, plus `seed`, `k`
and `grad_dim` when known. C and the label encoding are read from the files, never assumed.

Rows the reference padded (its distributed sampler repeats the first train examples when N is not
divisible by the GPU count, and keeps them) are recognised and dropped.

`--formula` defaults to what the files show: asymmetric_signgd for 5-D kernels, signgd when every
train×train entry is an integer (sign kernels are exact integer counts), else sgd. `--seed` and
`--k` default to the directory name when it is K-SEED (LM-BFF's 16-42). The task defaults to the
file names' task (`train_kernels_sst-2.pt` -> sst-2).
"""
import argparse
import glob
import os
import re
import sys

import h5py
import numpy as np
import torch

SPLITS = ("train", "dev", "test")


def fail(message):
    sys.exit(f"convert_published_kernels: {message}")


def load_pair(path):
    # The files are plain tensor tuples; weights_only keeps torch.load from running pickled code.
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unreadable file the same way
        fail(f"{path}: not a torch.save file of tensors ({e})")
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        fail(f"{path}: expected a (tensor, labels) pair, found {type(obj).__name__}")
    return obj[0], obj[1]


def class_ids(labels, path):
    labels = labels.reshape(-1)
    if labels.is_floating_point():
        values = set(labels.unique().tolist())
        if not values <= {-1.0, 1.0}:
            fail(f"{path}: float labels must be ±1 (binary classification), found {sorted(values)}")
        return ((labels + 1) / 2).to(torch.int64).numpy()
    return labels.to(torch.int64).numpy()


def find_task(directory):
    names = sorted(glob.glob(os.path.join(directory, "train_kernels_*.pt")))
    if len(names) != 1:
        fail(f"{directory}: expected one train_kernels_TASK.pt, found {len(names)}; pass --task")
    return re.match(r"train_kernels_(.+)\.pt$", os.path.basename(names[0])).group(1)


def convert(directory, out, task=None, formula=None, seed=None, k=None, grad_dim=None):
    task = task or find_task(directory)
    kernels, labels, f0 = {}, {}, {}
    for split in SPLITS:
        path = os.path.join(directory, f"{split}_kernels_{task}.pt")
        if not os.path.exists(path):
            fail(f"{path}: missing")
        kernel, y = load_pair(path)
        kernels[split] = kernel.to(torch.float64).numpy()
        labels[split] = class_ids(y, path)
        logits = os.path.join(directory, f"{split}_logits_{task}.pt")
        if os.path.exists(logits):
            f0[split] = load_pair(logits)[0].to(torch.float64).numpy()

    asymmetric = kernels["train"].ndim == 5
    if not asymmetric and kernels["train"].ndim == 4:
        # [quirk] The reference's distributed row sampler pads the rows (train examples) with the
        # first rows when N is not divisible by the number of GPUs and never removes them.
        n_true = kernels["train"].shape[2]
        for split in SPLITS:
            rows = kernels[split].shape[0]
            if rows > n_true:
                extra = kernels[split][n_true:]
                if not np.array_equal(extra, kernels[split][: rows - n_true]):
                    fail(f"{split} kernel has {rows} rows for {n_true} train examples, and the extra rows "
                         "are not the reference's padding (copies of the first rows)")
                print(f"{split}: dropped {rows - n_true} padding row(s) (copies of the first rows)")
                kernels[split] = kernels[split][:n_true]
    train = kernels["train"]
    if train.ndim not in (4, 5) or (asymmetric and train.shape[0] != 2):
        fail(f"train kernel has shape {list(train.shape)}; expected [N, C, N, C] or [2, N, C, N, C]")
    dims = train.shape[1:] if asymmetric else train.shape
    n, c = dims[0], dims[1]
    if dims[2] != n or dims[3] != c:
        fail(f"train kernel has shape {list(train.shape)}; train×train must be [N, C, N, C]")
    for split in SPLITS:
        shape = kernels[split].shape
        d = shape[1:] if asymmetric else shape
        if len(shape) != train.ndim or d[0] != n or d[1] != c or d[3] != c:
            fail(f"{split} kernel has shape {list(shape)}; expected [{'2, ' if asymmetric else ''}{n}, {c}, M, {c}]")
        if len(labels[split]) != d[2]:
            fail(f"{split}: {len(labels[split])} labels for {d[2]} kernel columns")
        if split in f0 and f0[split].reshape(d[2], -1).shape != (d[2], c):
            fail(f"{split}_logits: shape {list(f0[split].shape)}; expected [{d[2]}, {c}]")

    if formula is None:
        square = train[0] if asymmetric else train
        formula = "asymmetric_signgd" if asymmetric else ("signgd" if np.all(square == np.round(square)) else "sgd")
        print(f"formula: {formula} (from the files; --formula overrides)")
    if (formula == "asymmetric_signgd") != asymmetric:
        fail(f"--formula {formula} does not fit a kernel of shape {list(train.shape)}")
    if seed is None or k is None:
        m = re.fullmatch(r"(\d+)-(\d+)", os.path.basename(os.path.normpath(directory)))
        if m:
            k = int(m.group(1)) if k is None else k
            seed = int(m.group(2)) if seed is None else seed

    tmp = out + ".partial"
    with h5py.File(tmp, "w") as h:
        h.attrs["task"] = task
        h.attrs["formula"] = formula
        h.attrs["binary"] = bool(c == 1)
        h.attrs["source"] = f"LM-Kernel-FT .pt files in {os.path.abspath(directory)}"
        if seed is not None:
            h.attrs["seed"] = np.int64(seed)
        if k is not None:
            h.attrs["k"] = np.int64(k)
        if grad_dim is not None:
            h.attrs["grad_dim"] = np.int64(grad_dim)
        for split in SPLITS:
            h.create_dataset(split, data=kernels[split])
            h.create_dataset(f"{split}_labels", data=labels[split].astype(np.int64))
            if split in f0:
                m = kernels[split].shape[-2]
                h.create_dataset(f"{split}_f0", data=f0[split].reshape(m, c))
    os.replace(tmp, out)
    print(f"wrote {out}: task {task}, {formula}, N = {n}, C = {c}, "
          f"dev {kernels['dev'].shape[-2]}, test {kernels['test'].shape[-2]}, f0: {'yes' if len(f0) == 3 else 'no'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="directory with {split}_kernels_{task}.pt")
    parser.add_argument("--out", required=True, help="HDF5 kernel file to write")
    parser.add_argument("--task", help="task name in the file names (default: the one found)")
    parser.add_argument("--formula", choices=["sgd", "signgd", "asymmetric_signgd"])
    parser.add_argument("--seed", type=int)
    parser.add_argument("--k", type=int)
    parser.add_argument("--grad-dim", type=int)
    a = parser.parse_args()
    convert(a.dir, a.out, a.task, a.formula, a.seed, a.k, a.grad_dim)


if __name__ == "__main__":
    main()
