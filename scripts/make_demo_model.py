#!/usr/bin/env python3
"""Writes data/demo/model/: the built-in tiny RoBERTa that `mezo demo` fine-tunes. It stands in
for a pretrained language model: a 2-layer, 64-wide RoBERTa with the test tokenizer, briefly
trained by masked language modelling on the demo task's *training* sentences written as
"<sentence> It was great/terrible ." (the dev file, which becomes the k-shot test set, is never
seen). Short training on purpose: zero-shot accuracy ends up above chance but far from perfect,
so that fine-tuning has something to do. Deterministic on CPU:

    .venv/bin/python scripts/make_demo_model.py
"""
import os
import random
import shutil

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import RobertaConfig, RobertaForMaskedLM

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "..")
OUT = os.path.join(REPO, "data", "demo", "model")
TOKENIZER = os.path.join(REPO, "tests", "fixtures", "tokenizer", "tokenizer.json")
TRAIN = os.path.join(REPO, "data", "demo", "original", "SST-2", "train.tsv")
STEPS = 80


def main():
    torch.manual_seed(0)
    rng = random.Random(0)
    tok = Tokenizer.from_file(TOKENIZER)
    vocab, mask_id = tok.get_vocab_size(), tok.token_to_id("<mask>")
    config = RobertaConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=128, max_position_embeddings=130, type_vocab_size=1,
                           layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, tie_word_embeddings=False)
    config.architectures = ["RobertaForMaskedLM"]
    model = RobertaForMaskedLM(config)
    words = {"0": " terrible", "1": " great"}
    rows = [line.rstrip("\n").split("\t") for line in open(TRAIN).readlines()[1:]]
    examples = [[0] + tok.encode(s, add_special_tokens=False).ids + tok.encode(" It was", add_special_tokens=False).ids
                + tok.encode(words[l], add_special_tokens=False).ids + tok.encode(".", add_special_tokens=False).ids + [2]
                for s, l in rows]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(STEPS):
        batch = rng.sample(examples, 16)
        width = max(map(len, batch))
        ids = torch.full((16, width), 1)
        attention = torch.zeros((16, width), dtype=torch.long)
        labels = torch.full((16, width), -100)
        for i, ex in enumerate(batch):
            ids[i, :len(ex)] = torch.tensor(ex)
            attention[i, :len(ex)] = 1
            for p in range(1, len(ex) - 1):
                # Mask 15% of the tokens, and the label word half of the time.
                if rng.random() < (0.5 if p == len(ex) - 3 else 0.15):
                    labels[i, p] = ex[p]
                    ids[i, p] = mask_id
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if "position_ids" not in k}
    state.pop("lm_head.decoder.bias", None)
    save_file(state, os.path.join(OUT, "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(OUT)
    shutil.copy(TOKENIZER, os.path.join(OUT, "tokenizer.json"))
    print(f"wrote {OUT} after {STEPS} MLM steps (last loss {loss.item():.3f})")


if __name__ == "__main__":
    main()
