#!/usr/bin/env python3
"""`mezo kernel` against a torch.func implementation of LM-Kernel-FT's schedule, side by side in one
run, same threads: the sgd kernel of a 16-shot SST-2-sized split (32 train, 32 dev, 120 test
examples of the built-in demo task) on a small random RoBERTa, CPU. Reports wall times, their
ratio, the backward-pass (or JVP) counts and the largest relative difference between the kernels.

    .venv/bin/python benches/kernel_vs_torch_func.py [--threads N] [--hidden 256] [--layers 4]

The reference schedule (LM-Kernel-FT's), with its batch sizes of 1: for each train example the row
Jacobian by reverse mode (C VJPs), then for every column example (train, dev, test) a JVP of its C
outputs along each of the C train gradients (vmapped over them): N_tr · (N_tr + N_dev + N_test) · C
example-JVPs in all.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time

import h5py
import numpy as np
import torch
from tokenizers import Tokenizer
from torch.func import functional_call, jacrev, jvp, vmap
from lmbff_prompt_model import PromptModel, roberta_base_config

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MEZO = os.path.join(REPO, "target/release/mezo")


def encode(model_dir, split_dir, split):
    out = subprocess.run([MEZO, "-q", "encode", "--task", "sst-2", "--data-dir", split_dir, "--model", model_dir,
                          "--split", split, "--json", "--limit", "1000000"], check=True, capture_output=True,
                         text=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def reference_kernels(model, words, splits):
    # The pooler and the classifier do not reach the prompt outputs: their gradients are structurally
    # zero, and the reference drops them from the products.
    params = {k: v.detach() for k, v in model.named_parameters() if not k.startswith(("roberta.pooler", "classifier"))}

    def f(p, ids, pos):
        inputs = (ids.unsqueeze(0), torch.ones_like(ids).unsqueeze(0), torch.tensor([pos]), words)
        return functional_call(model, p, inputs)[0]

    jvps = 0
    kernels = {}
    rows = []
    for e in splits["train"]:
        ids = torch.tensor(e["input_ids"])
        rows.append(jacrev(lambda p: f(p, ids, e["mask_pos"]))(params))  # C VJPs
    for split in ["train", "dev", "test"]:
        out = torch.zeros(len(rows), 2, len(splits[split]), 2, dtype=torch.float64)
        for t, jac in enumerate(rows):
            for x, e in enumerate(splits[split]):
                ids = torch.tensor(e["input_ids"])

                def along(tangent, ids=ids, pos=e["mask_pos"]):
                    return jvp(lambda p: f(p, ids, pos), (params,), (tangent,))[1]

                # One JVP of x's C outputs per train output c, vmapped over c.
                out[t, :, x, :] = vmap(along)({k: jac[k] for k in params}).double()
                jvps += 2
        kernels[split] = out
    return kernels, jvps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=REPO, check=True)
    work = tempfile.mkdtemp()
    try:
        model_dir = os.path.join(work, "model")
        torch.manual_seed(0)
        config = roberta_base_config(vocab_size=622, hidden_size=args.hidden, num_hidden_layers=args.layers,
                                     num_attention_heads=4, intermediate_size=4 * args.hidden,
                                     max_position_embeddings=130)
        # Eager attention, as in the reference's transformers: libtorch's fused CPU attention has no
        # forward-mode derivative.
        config._attn_implementation = "eager"
        model = PromptModel(config).eval()
        model.save(model_dir)
        shutil.copy(os.path.join(REPO, "data/demo/model/tokenizer.json"), model_dir)
        subprocess.run([MEZO, "-q", "kshot", "--task", "SST-2", "--mode", "k-shot-1k-test", "--k", "16", "--seed", "42",
                        "--data-dir", os.path.join(REPO, "data/demo/original"), "--out", work], check=True)
        split_dir = os.path.join(work, "k-shot-1k-test/SST-2/16-42")
        splits = {s: encode(model_dir, split_dir, s) for s in ["train", "dev", "test"]}
        tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        words = torch.tensor([tokenizer.encode(" " + w, add_special_tokens=False).ids[0] for w in ["terrible", "great"]])

        out = os.path.join(work, "kernels.h5")
        start = time.perf_counter()
        log = subprocess.run([MEZO, "--threads", str(args.threads), "kernel", "--task", "sst-2", "--model", model_dir,
                              "--data-dir", split_dir, "--formula", "sgd", "--out", out], check=True,
                             capture_output=True, text=True)
        ours = time.perf_counter() - start
        passes = int(re.search(r"(\d+) backward passes", log.stdout).group(1))

        start = time.perf_counter()
        reference, jvps = reference_kernels(model, words, splits)
        theirs = time.perf_counter() - start

        worst = 0.0
        with h5py.File(out) as f:
            for split in ["train", "dev", "test"]:
                a, b = f[split][:], reference[split].numpy()
                worst = max(worst, float(np.abs(a - b).max() / np.abs(b).max()))
        n = {s: len(v) for s, v in splits.items()}
        params = sum(p.numel() for p in model.parameters())
        print(f"{args.threads} threads, random RoBERTa ({args.layers} layers, hidden {args.hidden}, {params / 1e6:.1f} M "
              f"parameters), SST-2 16-shot split: {n['train']} train, {n['dev']} dev, {n['test']} test, C = 2, "
              f"torch {torch.__version__}")
        print(f"sgd kernels: torch.func reference schedule {theirs:.1f} s ({jvps} example-JVPs), "
              f"mezo kernel {ours:.1f} s ({passes} backward passes): {theirs / ours:.1f}x")
        print(f"largest difference between the kernels, relative to the largest entry: {worst:.2e}")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
