#!/usr/bin/env python3
"""Reference eNTK kernels for tests/kernel.rs, computed with torch.func the way LM-Kernel-FT defines
them (docs/reference.md §6), in float64.

    .venv/bin/python scripts/make_kernel_fixture.py target/debug/mezo

Model: tests/fixtures/models/roberta as LM-Kernel-FT's prompt model sees it (RobertaForMaskedLM with
the decoder untied from the word embeddings, every parameter differentiated). Data: the 4-shot
SST-2 split of the built-in demo task with seed 42 (`mezo kshot`, as the test makes it), encoded by
`mezo encode` (the encoding is tested against LM-BFF's elsewhere). Per example, the Jacobian of the
label-word scores at the mask (or of z1 - z0 with --binary) comes from torch.func.jacrev; kernels are
products of the flattened Jacobians: sgd, signgd (C = 2) and asymmetric_signgd (binary), and binary
sgd for the contraction identity. Writes tests/fixtures/kernel/expected.safetensors.
"""
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from torch.func import functional_call, jacrev
from transformers import RobertaConfig, RobertaForMaskedLM

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODEL = os.path.join(REPO, "tests/fixtures/models/roberta")


def encode(mezo, split_dir, split):
    out = subprocess.run([mezo, "-q", "encode", "--task", "sst-2", "--data-dir", split_dir, "--model", MODEL,
                          "--split", split, "--json", "--limit", "1000000"], check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def main():
    mezo = os.path.abspath(sys.argv[1])
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as work:
        subprocess.run([mezo, "-q", "kshot", "--task", "SST-2", "--mode", "k-shot-1k-test", "--k", "4", "--seed", "42",
                        "--data-dir", os.path.join(REPO, "data/demo/original"), "--out", work], check=True)
        split_dir = os.path.join(work, "k-shot-1k-test/SST-2/4-42")
        splits = {s: encode(mezo, split_dir, s) for s in ["train", "dev", "test"]}

    config = RobertaConfig.from_pretrained(MODEL)
    config.tie_word_embeddings = False
    model = RobertaForMaskedLM.from_pretrained(MODEL, config=config).double().eval()
    tokenizer = Tokenizer.from_file(os.path.join(MODEL, "tokenizer.json"))
    words = torch.tensor([tokenizer.encode(" " + w, add_special_tokens=False).ids[0] for w in ["terrible", "great"]])
    params = {k: v.detach() for k, v in model.named_parameters()}

    def scores(p, ids, pos):
        logits = functional_call(model, p, (ids.unsqueeze(0),)).logits
        return logits[0, pos, words]

    def jacobians(examples, binary):
        rows = []
        for e in examples:
            ids = torch.tensor(e["input_ids"])
            f = (lambda p: scores(p, ids, e["mask_pos"]) @ torch.tensor([-1.0, 1.0], dtype=torch.float64)) if binary \
                else (lambda p: scores(p, ids, e["mask_pos"]))
            jac = jacrev(f)(params)
            outputs = 1 if binary else 2
            rows.append(torch.cat([jac[k].reshape(outputs, -1) for k in params], 1))
        return torch.stack(rows)  # [N, C, P]

    out = {}
    for binary in [False, True]:
        g = {s: jacobians(ex, binary) for s, ex in splits.items()}
        suffix = "_binary" if binary else ""
        for split in ["train", "dev", "test"]:
            a, b = g["train"], g[split]
            out[f"sgd{suffix}_{split}"] = torch.einsum("ncp,mdp->ncmd", a, b)
            if binary:
                out[f"asymmetric_signgd_{split}"] = torch.stack(
                    [torch.einsum("ncp,mdp->ncmd", a.sign(), b), torch.einsum("ncp,mdp->ncmd", a, b.sign())])
            else:
                out[f"signgd_{split}"] = torch.einsum("ncp,mdp->ncmd", a.sign(), b.sign())
    for split, examples in splits.items():
        out[f"{split}_labels"] = torch.tensor([e["label"] for e in examples])
        with torch.no_grad():
            out[f"{split}_f0"] = torch.stack(
                [scores(params, torch.tensor(e["input_ids"]), e["mask_pos"]) for e in examples])
    out["grad_dim"] = torch.tensor([sum(v.numel() for v in params.values())])
    os.makedirs(os.path.join(REPO, "tests/fixtures/kernel"), exist_ok=True)
    path = os.path.join(REPO, "tests/fixtures/kernel/expected.safetensors")
    save_file({k: v.contiguous() for k, v in out.items()}, path)
    print(f"wrote {path}: {len(out)} tensors; grad_dim (RobertaForMaskedLM, no pooler or classifier) "
          f"{out['grad_dim'].item()}")


if __name__ == "__main__":
    main()
