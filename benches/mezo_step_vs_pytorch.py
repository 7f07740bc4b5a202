#!/usr/bin/env python3
"""A MeZO step of mezo against MeZO's own step in PyTorch + transformers, side by side in one run,
same threads: a roberta-base-sized random prompt model, batch 8 x 64 tokens, CPU.

Reference side: MeZO medium's efficient step (four `torch.normal` regenerations of z per trainable
tensor, the perturbations and update as `param.data = param.data + ...`) on LM-BFF's prompt model
(benches/lmbff_prompt_model.py: the LM head at the mask only, untied decoder, pooler and classifier
perturbed with the rest), forward passes under torch.inference_mode. mezo loads the same weights,
so both sides perturb and update the same tensors. Reports per-step times and their ratio, mezo's step time over its forward time, its
peak RSS over that of inference alone, and the 2-rank/1-rank data-parallel efficiency.

    .venv/bin/python benches/mezo_step_vs_pytorch.py [--threads N] [--steps N]
"""
import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time

import torch
from lmbff_prompt_model import PromptModel, roberta_base_config

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def reference_step_ms(model, ids, mask, labels, steps):
    """MeZO medium's efficient step: four z regenerations with torch.normal per parameter."""
    params = [p for _, p in model.named_parameters()]
    words = torch.tensor([5, 6])
    mask_pos = torch.full((ids.shape[0],), 10)

    def loss():
        with torch.inference_mode():
            logits = model(ids, mask, mask_pos, words)
            return torch.nn.functional.cross_entropy(logits, labels).item()

    def perturb(seed, scale, eps=1e-3):
        torch.manual_seed(seed)
        for p in params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            p.data = p.data + scale * z * eps

    times = []
    for i in range(steps):
        start = time.perf_counter()
        seed = 1000 + i
        perturb(seed, 1)
        plus = loss()
        perturb(seed, -2)
        minus = loss()
        perturb(seed, 1)
        g = (plus - minus) / 2e-3
        torch.manual_seed(seed)
        for p in params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            p.data = p.data - 1e-6 * (g * z)
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def ours(model_dir, threads, steps, ranks=1, forward_only=False, rng="fast"):
    cmd = ["cargo", "bench", "-q", "--bench", "mezo_step", "--", "--model", model_dir, "--threads", str(threads),
           "--steps", str(steps), "--rng", rng] + (["--forward-only"] if forward_only else [])
    if ranks > 1:
        exe = subprocess.run(["cargo", "bench", "--no-run", "--bench", "mezo_step", "--message-format", "json"], cwd=REPO,
                             check=True, capture_output=True, text=True).stdout
        path = re.findall(r'"executable":"([^"]+mezo_step[^"]*)"', exe)[-1]
        cmd = ["mpirun", "--oversubscribe", "-np", str(ranks), "--bind-to", "core", path] + cmd[6:]
    out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True,
                         env={**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}).stdout
    return {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", out)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    work = tempfile.mkdtemp()
    try:
        model = PromptModel(roberta_base_config()).eval()
        model.save(work)
        ids = torch.randint(4, 50263, (8, 64))
        ids[:, 10] = 50264
        mask = torch.ones_like(ids)
        labels = torch.randint(0, 2, (8,))
        subprocess.run(["cargo", "bench", "--no-run", "-q", "--bench", "mezo_step"], cwd=REPO, check=True)
        ref = reference_step_ms(model, ids, mask, labels, args.steps)
        step = ours(work, args.threads, args.steps)
        reference = ours(work, args.threads, args.steps, rng="reference")
        inference = ours(work, args.threads, args.steps, forward_only=True)
        one = ours(work, 1, args.steps)
        two = ours(work, 1, args.steps, ranks=2)
        print(f"{args.threads} threads, roberta-base-sized LM-BFF prompt model, batch 8 x 64, {args.steps} steps, torch {torch.__version__}")
        print(f"MeZO step: PyTorch reference {ref:.0f} ms, mezo --rng fast {step['step_ms']:.0f} ms: "
              f"{ref / step['step_ms']:.2f}x, mezo --rng reference {reference['step_ms']:.0f} ms: "
              f"{ref / reference['step_ms']:.2f}x")
        print(f"mezo step / forward (fast): {step['step_ms']:.0f} / {step['forward_ms']:.0f} ms = "
              f"{step['step_ms'] / step['forward_ms']:.2f} (medians); median of each step over the forward pass "
              f"before it: {step['step_over_forward']:.2f}")
        print(f"mezo peak RSS: step {step['peak_rss_mb']:.0f} MB, inference {inference['peak_rss_mb']:.0f} MB = "
              f"{step['peak_rss_mb'] / inference['peak_rss_mb']:.2f}")
        print(f"data parallel (fast), 1 thread per rank: 1 rank {one['step_ms']:.0f} ms, 2 ranks {two['step_ms']:.0f} ms: "
              f"speed-up {one['step_ms'] / two['step_ms']:.2f}, efficiency {one['step_ms'] / two['step_ms'] / 2:.2f}")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
