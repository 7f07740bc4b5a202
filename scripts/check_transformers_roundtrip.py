#!/usr/bin/env python3
"""Save -> transformers load -> same outputs. For every fixture of tests/fixtures/models, `mezo
convert` writes it (f32, sharded for the decoders; and bf16), transformers loads the result, and
its outputs must equal the fixture's reference outputs (computed by transformers from the
original checkpoint); in bf16, those of the f32 copy loaded in bf16, on this machine. Run by `make test` after `cargo test`:

    .venv/bin/python scripts/check_transformers_roundtrip.py target/debug/mezo
"""
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "models")
ENCODERS = ["roberta", "roberta-tied", "bert"]
DECODERS = ["opt", "opt-untied", "llama", "llama-tied", "qwen2"]


def convert(mezo, name, out, dtype, shard):
    subprocess.run([mezo, "-q", "convert", "--model", os.path.join(FIXTURES, name), "--out", out, "--dtype", dtype,
                    "--max-shard-size", str(shard)], check=True)


def scores(name, directory, dtype, ref):
    """transformers' outputs (label-word scores at the mask, or valid logits) of a checkpoint."""
    ids, mask = ref["input_ids"], ref["attention_mask"]
    with torch.no_grad():
        if name in ENCODERS:
            # mezo writes tie_word_embeddings false for RoBERTa, whose decoder it keeps untied.
            model = AutoModelForMaskedLM.from_pretrained(directory, dtype=dtype).eval()
            kwargs = {"token_type_ids": torch.zeros_like(ids)} if name == "bert" else {}
            logits = model(input_ids=ids, attention_mask=mask, **kwargs).logits
            rows = torch.arange(ids.shape[0])
            return logits[rows, ref["mask_pos"][:, 0]][:, ref["label_word_ids"]].float()
        logits = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).eval()(
            input_ids=ids, attention_mask=mask).logits.float()
        return logits[mask.bool().unsqueeze(-1).expand_as(logits)]


def outputs(name, directory, dtype, f32_directory):
    """Largest difference from the original checkpoint's outputs. In f32, those stored with the
    fixture; in bf16, transformers' bf16 outputs of mezo's f32 copy (checked against the fixture
    just before) on this machine: its bf16 matmuls round differently on CPUs with and without
    AVX512-BF16 (3e-2 apart), which says nothing about the saved weights."""
    ref = load_file(os.path.join(FIXTURES, name, "reference.safetensors"))
    got = scores(name, directory, dtype, ref)
    if dtype == torch.float32:
        want = ref["label_scores" if name in ENCODERS else "logits"]
        if name not in ENCODERS:
            want = want[ref["attention_mask"].bool().unsqueeze(-1).expand_as(want)]
    else:
        want = scores(name, f32_directory, dtype, ref)
    return (got - want).abs().max().item()


def main():
    mezo = sys.argv[1]
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in ENCODERS + DECODERS:
            for dtype_name, dtype in [("f32", torch.float32), ("bf16", torch.bfloat16)]:
                out = os.path.join(tmp, f"{name}-{dtype_name}")
                convert(mezo, name, out, dtype_name, 40_000 if name in DECODERS else 5 * 10**9)
                diff = outputs(name, out, dtype, os.path.join(tmp, f"{name}-f32"))
                ok = diff <= 1e-5
                failures += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {name:13} {dtype_name:4} saved by mezo, loaded by transformers: "
                      f"max |diff| {diff:.2e}")
    print(f"{16 - failures} passed, {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
