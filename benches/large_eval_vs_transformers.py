#!/usr/bin/env python3
"""Zero-shot evaluation on MeZO's large-model tasks: mezo against the reference's scoring with
transformers, side by side in one run on this machine, same thread count.

  OPT-125m-sized random model (f32), 200 BoolQ-like examples (a passage of 60-100 words and a
  question; candidates "Yes" / "No") and 200 Copa-like examples (a short premise; two choices).
  Reference side: MeZO large_models' Framework.one_step_pred as it runs: every candidate's prompt
  encoded (utils.encode_prompt), one forward pass per candidate without padding under
  torch.inference_mode, log-softmax of the logits at every position, the option tokens' mean
  (the implementation in scripts/make_large_fixtures.py, which the tests check mezo against).
  mezo side: `mezo eval --task BoolQ|Copa --num-eval 200 --train-set-seed 0`, the whole command
  (model loading included), its candidates batched with each prompt's shared tokens run once.

    .venv/bin/python benches/large_eval_vs_transformers.py [--threads N] [--examples N]

Prints both times, the ratio reference / mezo (> 1: mezo is faster), the mean prompt length and
the largest score difference; predictions must be identical.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from transformers import OPTConfig, OPTForCausalLM

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(REPO, "scripts"))
import make_large_fixtures as ref  # noqa: E402


def rows(task, n, rng):
    out = []
    for i in range(n):
        if task == "BoolQ":
            out.append({"question": ref.sentence(rng, 8, cap=False, end=""), "answer": bool(rng.randint(0, 1)),
                        "passage": " ".join(ref.sentence(rng, 10) for _ in range(rng.randint(6, 10)))})
        else:
            choice = lambda: rng.choice(["He", "She", "The man", "I"]) + " " + ref.sentence(rng, 4, cap=False)
            out.append({"premise": ref.sentence(rng, 7), "choice1": choice(), "choice2": choice(),
                        "question": rng.choice(["cause", "effect"]), "idx": i, "label": rng.randint(0, 1)})
    return out


def reference(model, tok, task, valid, n):
    samples = [ref.build_sample(task, e, i) for i, e in enumerate(valid)]
    test = ref.sample_subset(samples, 0, n)
    args = {"max_length": 2048, "max_new_tokens": 50}
    start = time.perf_counter()
    predictions = [ref.one_step_pred(model, tok, task, [], s, args)[0] for s in test]
    return time.perf_counter() - start, predictions


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--examples", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    work = tempfile.mkdtemp()
    try:
        config = OPTConfig(vocab_size=50272, hidden_size=768, ffn_dim=3072, num_hidden_layers=12, num_attention_heads=12,
                           max_position_embeddings=2048, word_embed_proj_dim=768, pad_token_id=1, bos_token_id=2,
                           eos_token_id=2)
        model = OPTForCausalLM(config).eval()
        model_dir = os.path.join(work, "opt")
        model.save_pretrained(model_dir, safe_serialization=True)
        # The repository's small byte-level BPE: its ids are a subset of OPT's vocabulary.
        ref.gpt2_files(model_dir)
        tok = ref.slow_tokenizer(model_dir, "<s>")
        rng = random.Random(0)
        print(f"OPT-125m-sized random model, f32, {args.threads} threads, {args.examples} examples per task")
        print(f"{'task':8} {'tokens':>7} {'reference':>10} {'mezo':>8} {'speed-up':>9} {'max |score diff|':>17}")
        totals = [0.0, 0.0]
        for task in ["BoolQ", "Copa"]:
            data = os.path.join(work, task)
            os.makedirs(data)
            splits = {"train": rows(task, 20, rng), "validation": rows(task, args.examples, rng)}
            for split, rs in splits.items():
                with open(os.path.join(data, f"{split}.jsonl"), "w") as f:
                    f.writelines(json.dumps(r) + "\n" for r in rs)
            out = os.path.join(work, f"{task}.jsonl")
            cmd = [os.path.join(REPO, "target", "release", "mezo"), "-q", "--threads", str(args.threads), "eval",
                   "--task", task, "--model", model_dir, "--data-dir", data, "--num-eval", str(args.examples),
                   "--train-set-seed", "0", "--predictions", out]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            ours_s = time.perf_counter() - start
            ref_s, expected = reference(model, tok, task, splits["validation"], args.examples)
            ours = [json.loads(line) for line in open(out)]
            assert [p["prediction"] for p in ours] == [p["prediction"] for p in expected], "predictions differ"
            diff = max(abs(a - b) for o, e in zip(ours, expected) for a, b in zip(o["scores"], e["scores"]))
            samples = [ref.build_sample(task, e, i) for i, e in enumerate(splits["validation"])]
            lengths = [len(s) for x in samples for s in ref.encode_prompt(task, [], x, tok, 2048)[0]]
            totals[0] += ref_s
            totals[1] += ours_s
            print(f"{task:8} {np.mean(lengths):7.1f} {ref_s:9.2f}s {ours_s:7.2f}s {ref_s / ours_s:8.2f}x {diff:17.2e}")
        print(f"{'both':8} {'':7} {totals[0]:9.2f}s {totals[1]:7.2f}s {totals[0] / totals[1]:8.2f}x")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
