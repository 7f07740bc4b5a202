#!/usr/bin/env python3
"""mezo against transformers, side by side in one run on this machine, same thread count:

  roberta-base-sized random prompt model, batch 8 x 64 tokens: the label-word scores at the mask.
  Reference side: LM-BFF's prompt model (benches/lmbff_prompt_model.py: the encoder, then the LM
  head over the vocabulary at the mask position only), under torch.inference_mode as MeZO runs it;
  mezo scores the label words at the mask;
  OPT-125m-sized random model, batch 8 x 64: causal LM loss (logits at every position + shifted
  cross-entropy), as MeZO's large-model code computes it, in both.

    .venv/bin/python benches/forward_vs_transformers.py [--threads N] [--iters N]

Prints each median and the ratio reference / mezo (> 1: mezo is faster). This 2-core machine is
shared and noisy, so the two sides alternate for --rounds rounds and the medians over all rounds
are compared.
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
from transformers import OPTConfig, OPTForCausalLM

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def median_ms(fn, iters):
    for _ in range(2):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch, seq = 8, 64
    work = tempfile.mkdtemp()
    try:
        roberta = PromptModel(roberta_base_config()).eval()
        opt = OPTForCausalLM(OPTConfig(vocab_size=50272, hidden_size=768, ffn_dim=3072, num_hidden_layers=12,
                                       num_attention_heads=12, max_position_embeddings=2048,
                                       word_embed_proj_dim=768, pad_token_id=1)).eval()
        dirs = {name: os.path.join(work, name) for name in ["roberta", "opt"]}
        roberta.save(dirs["roberta"])
        opt.save_pretrained(dirs["opt"], safe_serialization=True)
        ids = torch.randint(4, 50263, (batch, seq))
        mask = torch.ones_like(ids)
        masked = ids.clone()
        masked[:, 10] = 50264
        words = torch.tensor([5, 6])
        mask_pos = torch.full((batch,), 10)

        def hf_prompt():
            with torch.inference_mode():
                return roberta(masked, mask, mask_pos, words).sum()

        def hf_causal():
            with torch.inference_mode():
                return opt(input_ids=ids, attention_mask=mask, labels=ids).loss

        print(f"{args.threads} threads, batch {batch} x {seq} tokens, torch {torch.__version__}, {args.rounds} rounds")
        subprocess.run(["cargo", "bench", "--no-run", "-q", "--bench", "forward"], cwd=REPO, check=True)
        for mode, name, hf_step in [("prompt", "roberta", hf_prompt), ("causal", "opt", hf_causal)]:
            hf, ours = [], []
            for _ in range(args.rounds):
                hf.append(median_ms(hf_step, args.iters))
                out = subprocess.run(["cargo", "bench", "-q", "--bench", "forward", "--", "--model", dirs[name],
                                      "--mode", mode, "--threads", str(args.threads), "--iters", str(args.iters)],
                                     cwd=REPO, check=True, capture_output=True, text=True).stdout
                ours.append(float(re.search(r"median_ms=([0-9.]+)", out).group(1)))
            hf_ms, our_ms = sorted(hf)[len(hf) // 2], sorted(ours)[len(ours) // 2]
            what = "roberta-base prompt, LM-BFF model" if mode == "prompt" else "opt-125m causal LM loss"
            print(f"{what:40} reference {hf_ms:8.1f} ms   mezo {our_ms:8.1f} ms   ratio {hf_ms / our_ms:4.2f}x")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
