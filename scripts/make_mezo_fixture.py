#!/usr/bin/env python3
"""Writes tests/fixtures/mezo/: the final weights of 20 MeZO steps computed by our own PyTorch
implementation of the reference algorithm (MeZO medium's efficient path: numpy step seeds,
torch.manual_seed before each of the four z regenerations, one normal draw per trainable tensor in
named_parameters order, theta + (s z) eps, theta - lr (g z + wd theta)) on the tiny RoBERTa fixture
and the built-in demo task. `cargo test` runs `mezo train` on the same inputs and compares.

    .venv/bin/python scripts/make_mezo_fixture.py target/debug/mezo

The batches follow mezo's documented sampler (epoch e = the e-th numpy permutation of a
RandomState seeded with the run seed), and the token ids come from `mezo encode`, so this checks the
optimiser, not the data pipeline (which has its own tests).
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import RobertaForMaskedLM

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "..")
MODEL = os.path.join(REPO, "tests", "fixtures", "models", "roberta")
OUT = os.path.join(REPO, "tests", "fixtures", "mezo")
CONFIG = {"seed": 42, "k": 16, "steps": 20, "batch_size": 8, "lr": 1e-3, "eps": 1e-3, "weight_decay": 0.1}


def main():
    mezo = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([mezo, "-q", "kshot", "--data-dir", os.path.join(REPO, "data", "demo", "original"), "--out", tmp,
                        "--task", "SST-2", "--k", str(CONFIG["k"]), "--seed", str(CONFIG["seed"]), "--mode", "k-shot-1k-test"],
                       check=True)
        split = os.path.join(tmp, "k-shot-1k-test", "SST-2", f"{CONFIG['k']}-{CONFIG['seed']}")
        out = subprocess.run([mezo, "encode", "--task", "sst-2", "--data-dir", split, "--model", MODEL, "--split", "train",
                              "--json", "--limit", "100000"], check=True, capture_output=True, text=True).stdout
    features = [json.loads(line) for line in out.splitlines()]
    words = None
    model = RobertaForMaskedLM.from_pretrained(MODEL, tie_word_embeddings=False).eval()
    stored = load_file(os.path.join(MODEL, "model.safetensors"))
    extra = {n: stored[n].clone() for n in stored if n.startswith("roberta.pooler") or n.startswith("classifier")}
    own = dict(model.named_parameters())
    names = json.load(open(os.path.join(MODEL, "named_parameters.json")))
    params = [(n, own[n] if n in own else extra[n]) for n in names]
    # label words of sst-2 under the fixture tokenizer: " terrible", " great"
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(MODEL, "tokenizer.json"))
    words = torch.tensor([tok.encode(" terrible", add_special_tokens=False).ids[0],
                          tok.encode(" great", add_special_tokens=False).ids[0]])

    def loss(rows):
        width = max(len(features[i]["input_ids"]) for i in rows)
        ids = torch.full((len(rows), width), 1, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, i in enumerate(rows):
            n = len(features[i]["input_ids"])
            ids[j, :n] = torch.tensor(features[i]["input_ids"])
            mask[j, :n] = 1
        pos = torch.tensor([features[i]["mask_pos"] for i in rows])
        labels = torch.tensor([features[i]["label"] for i in rows])
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits[torch.arange(len(rows)), pos][:, words]
            return torch.nn.functional.cross_entropy(logits, labels).item()

    def perturb(seed, scale):
        torch.manual_seed(seed)
        for _, p in params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            p.data = p.data + scale * z * CONFIG["eps"]

    seeds = np.random.RandomState(CONFIG["seed"])
    sampler = np.random.RandomState(CONFIG["seed"])
    order, cursor = [], len(features)
    trajectory = []
    for step in range(1, CONFIG["steps"] + 1):
        if cursor >= len(features):
            order, cursor = list(sampler.permutation(len(features))), 0
        rows = order[cursor:cursor + CONFIG["batch_size"]]
        cursor += len(rows)
        seed = int(seeds.randint(10**9))
        perturb(seed, 1)
        plus = loss(rows)
        perturb(seed, -2)
        minus = loss(rows)
        perturb(seed, 1)
        g = (plus - minus) / (2 * CONFIG["eps"])
        torch.manual_seed(seed)
        for _, p in params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            p.data = p.data - CONFIG["lr"] * (g * z + CONFIG["weight_decay"] * p.data)
        trajectory.append({"step": step, "seed": seed, "projected_grad": g, "loss": plus})
    os.makedirs(OUT, exist_ok=True)
    save_file({n: p.data.contiguous() for n, p in params}, os.path.join(OUT, "final.safetensors"))
    json.dump({"config": CONFIG, "trajectory": trajectory}, open(os.path.join(OUT, "reference.json"), "w"), indent=1)
    print(f"wrote {OUT}: {len(params)} tensors after {CONFIG['steps']} steps")


if __name__ == "__main__":
    main()
