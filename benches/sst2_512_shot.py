#!/usr/bin/env python3
"""Writes an SST-2 512-shot-sized kernel problem for the GPU benchmark, with nothing to download:
LM-Kernel-FT's 512-shot SST-2 split has 1024 train examples (512 per label), and our kernels
take 1024 dev and the 872 test examples; sentences average about 20 words.

    python3 benches/sst2_512_shot.py OUT [--seed 42] [--size roberta-base|tiny]

OUT/data/SST-2/512-42/{train,dev,test}.tsv (LM-BFF's layout, "sentence<TAB>label") are built
from the built-in demo task's sentences (data/demo/original/SST-2), four of one label joined per
example, so every word is in the demo tokenizer's vocabulary. OUT/model is a roberta-base-sized
model directory (config.json of roberta-base and the demo tokenizer, no weights): `mezo kernel
--random-weights SEED` makes its weights on the device; `--size tiny` writes a 2-layer, hidden-64
one instead, for a dry run on a CPU. Standard library only: the GPU node's python3 runs it.
"""
import argparse
import json
import os
import random
import shutil

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DEMO = os.path.join(REPO, "data", "demo")
SIZES = {"train": 1024, "dev": 1024, "test": 872}
ROBERTA_BASE = {
    "architectures": ["RobertaForMaskedLM"], "model_type": "roberta", "vocab_size": 50265,
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "max_position_embeddings": 514,
    "type_vocab_size": 1, "layer_norm_eps": 1e-05, "pad_token_id": 1, "bos_token_id": 0,
    "eos_token_id": 2, "initializer_range": 0.02, "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "position_embedding_type": "absolute",
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--size", choices=["roberta-base", "tiny"], default="roberta-base")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    by_label = {"0": [], "1": []}
    with open(os.path.join(DEMO, "original", "SST-2", "train.tsv")) as f:
        next(f)
        for line in f:
            sentence, label = line.rstrip("\n").split("\t")
            by_label[label].append(sentence.strip())
    split_dir = os.path.join(args.out, "data", "SST-2", f"512-{args.seed}")
    os.makedirs(split_dir, exist_ok=True)
    for split, size in SIZES.items():
        with open(os.path.join(split_dir, f"{split}.tsv"), "w") as f:
            f.write("sentence\tlabel\n")
            for i in range(size):
                label = str(i % 2)
                sentence = " ".join(rng.choice(by_label[label]) for _ in range(4))
                f.write(f"{sentence}\t{label}\n")
    model = os.path.join(args.out, "model")
    os.makedirs(model, exist_ok=True)
    with open(os.path.join(model, "config.json"), "w") as f:
        config = dict(ROBERTA_BASE)
        if args.size == "tiny":
            config.update(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
        json.dump(config, f, indent=2)
    shutil.copy(os.path.join(DEMO, "model", "tokenizer.json"), model)
    print(f"{split_dir}: {SIZES}; {model}: roberta-base config, demo tokenizer")


if __name__ == "__main__":
    main()
