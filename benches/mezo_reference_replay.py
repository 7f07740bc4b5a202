#!/usr/bin/env python3
"""Checks a `mezo train --optimizer mezo --rng reference --save-model` run against PyTorch: the
run's saved weights must be those that MeZO's own PyTorch code computes from the same initial
checkpoint, step seeds and projected gradients, on the same device. An independent check of
`mezo replay`, and of the claim that the reference stream draws PyTorch's normals.

    .venv/bin/python benches/mezo_reference_replay.py RUN_DIR [--model INIT_DIR]
        [--device cpu|cuda] [--tolerance 0]

RUN_DIR is a finished run directory: config.json (the run's settings: dtype, initial model),
trajectory.jsonl (a header, then per step its seed, projected gradient and learning rate) and
model/ (the final weights, written by --save-model at the end of the run: the last step's, not
the best-dev ones). INIT_DIR (default: the model the run's config names) holds the initial
model.safetensors (or shards with an index) and config.json.

What the reference does to the weights in a step, given its seed s and projected gradient g
(MeZO's trainer.py, zo_step and zo_update): the trainable tensors are taken in the order of the
Hugging Face model's named_parameters() (module registration order, tied weights once); before
each of four passes over them the global generator is reset with torch.manual_seed(s), and each
tensor gets z = torch.normal(0, 1, size, dtype, device) in its own dtype and on its own device.
Passes one to three are the perturbations θ ← θ + c·z·ε with c = 1, −2, 1 (the forward passes in
between do not touch the weights and are skipped here, but the rounding of the three additions is
part of the trajectory); the fourth is the update θ ← θ − η (g z + λ θ), where MeZO large leaves
out λ θ for names containing "bias", "layer_norm" or "layernorm" and MeZO medium decays every
tensor (the run's decay rule says which). Each expression is written here as the reference
writes it, so each rounds as it does.

Every tensor of the saved model is compared with the replayed one (tensors the run did not train
with the initial ones) bit for bit. Prints `replay device=... steps=N tensors=M max_abs_diff=...
identical=true|false`; exit status 1 when any bit differs (with --tolerance T > 0: when a
difference exceeds T), 2 when the run cannot be replayed here (another stream or update rule, adapters, an unfinished run).

--device must be the device the run trained on: CPU and CUDA generators give different normals
for the same seed, and the run directory does not record which it used. Not checked here: the
trajectory's line checksums and the fingerprint of the initial weights (`mezo replay` checks
both); a wrong initial checkpoint shows as a mismatch in every tensor.
"""
import argparse
import json
import os
import sys

import torch
import transformers
from safetensors import safe_open

DTYPES = {"F32": torch.float32, "Bf16": torch.bfloat16, "F16": torch.float16}
BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def refuse(message):
    print(f"mezo_reference_replay: {message}", file=sys.stderr)
    sys.exit(2)


def read_run(run_dir):
    with open(os.path.join(run_dir, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(run_dir, "trajectory.jsonl")) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    if not lines:
        refuse(f"{run_dir}/trajectory.jsonl is empty")
    return config, lines[0], lines[1:]


def check_replayable(config, header, steps):
    """The runs whose weights the reference's own update rule produces; anything else refused."""
    if header.get("rng", "Reference") != "Reference":
        refuse(f"the run used the {header['rng']} stream (--rng fast): only --rng reference draws PyTorch's normals")
    if header.get("zo_optimizer", "Sgd") != "Sgd":
        refuse(f"the run's update is {header['zo_optimizer']}: the reference has ZO-SGD only")
    if any(s.get("directions") is not None and len(s["directions"]) != 1 for s in steps):
        refuse("the run took several directions per step (--zo-samples or --parallel directions, n-SPSA): "
               "mezo's extension, not the reference's update")
    load = config.get("load", {})
    if load.get("lora") or load.get("num_prefix"):
        refuse("the run trained LoRA or prefix adapters, which mezo initialised itself: their initial values are "
               "in no checkpoint this script could start from")
    if len(steps) < header.get("steps", len(steps)):
        refuse(f"the trajectory records {len(steps)} of the run's {header['steps']} steps: an unfinished run "
               "(its model/, if any, is not the trajectory's end)")
    for i, s in enumerate(steps, 1):
        if s.get("step") != i:
            refuse(f"trajectory line {i + 1} holds step {s.get('step')} where step {i} belongs")


def registration_order(model_dir):
    """named_parameters() of the Hugging Face class config.json names, built on the meta device."""
    config = transformers.AutoConfig.from_pretrained(model_dir)
    classes = [getattr(transformers, a, None) for a in (config.architectures or [])]
    cls = next((c for c in classes if c is not None), transformers.AutoModelForCausalLM)
    with torch.device("meta"):
        model = cls._from_config(config) if hasattr(cls, "_from_config") else cls.from_config(config)
    return [name for name, _ in model.named_parameters()]


def safetensors_files(model_dir):
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(model_dir, s) for s in shards]
    return [os.path.join(model_dir, "model.safetensors")]


def load_tensors(model_dir, dtype, device):
    """Every tensor of the checkpoint, cast to the run's dtype on the device (as mezo loads them)."""
    tensors = {}
    for path in safetensors_files(model_dir):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name).to(device=device).to(dtype)
    return tensors


# The expressions are the reference's, out of place: a Python scalar times an f16/bf16 tensor is
# multiplied in float and rounded once. libtorch's in-place mul_(Scalar) rounds the scalar to the
# tensor's dtype first, which changes last bits: an implementation that uses it does not match.
def perturb(params, names, seed, scaling_factor, eps):
    torch.manual_seed(seed)
    for name in names:
        p = params[name]
        z = torch.normal(mean=0, std=1, size=p.size(), device=p.device, dtype=p.dtype)
        params[name] = p + scaling_factor * z * eps


def update(params, names, seed, projected_grad, lr, weight_decay, decays):
    torch.manual_seed(seed)
    for name in names:
        p = params[name]
        z = torch.normal(mean=0, std=1, size=p.size(), device=p.device, dtype=p.dtype)
        if decays(name):
            params[name] = p - lr * (projected_grad * z + weight_decay * p)
        else:
            params[name] = p - lr * (projected_grad * z)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", metavar="RUN_DIR")
    parser.add_argument("--model", metavar="INIT_DIR", help="the initial checkpoint [default: the run's load.model]")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="largest |difference| accepted [default: 0, bit for bit]")
    args = parser.parse_args()
    config, header, steps = read_run(args.run)
    check_replayable(config, header, steps)
    saved_dir = os.path.join(args.run, "model")
    if not os.path.exists(os.path.join(saved_dir, "config.json")):
        refuse(f"{saved_dir}: no saved model (train with --save-model)")
    init_dir = args.model or config["load"]["model"]
    if not os.path.exists(os.path.join(init_dir, "config.json")):
        refuse(f"{init_dir}: no initial model there (the run names it relative to where it ran); give --model")
    dtype = DTYPES[config["load"]["dtype"]]
    device = torch.device(args.device)

    # The reference's order is the module registration order; the run's list says which to train.
    trained = header["trainable"]
    order = registration_order(init_dir)
    unknown = [n for n in trained if n not in order]
    if unknown:
        refuse(f"the run trained tensors that {init_dir}'s Hugging Face model does not register: {unknown[:5]}")
    names = [n for n in order if n in set(trained)]
    if names != trained:
        first = next(i for i, (a, b) in enumerate(zip(names, trained)) if a != b)
        print(f"note: the run lists its trainable tensors in another order than named_parameters() from "
              f"#{first} ({trained[first]} where the reference has {names[first]}); replaying in the reference's")
    rule = header.get("decay_rule", "AllTensors")
    if rule == "ExcludeBiasAndNorm":
        def decays(name):
            return "bias" not in name and "layer_norm" not in name and "layernorm" not in name
    elif rule == "AllTensors":
        def decays(name):
            return True
    else:
        refuse(f"unknown weight-decay rule {rule}")

    params = load_tensors(init_dir, dtype, device)
    missing = [n for n in names if n not in params]
    if missing:
        refuse(f"{init_dir} lacks trained tensors {missing[:5]}")
    eps, weight_decay = header["eps"], header["weight_decay"]
    for s in steps:
        seed, g = (s["directions"][0] if s.get("directions") else (s["seed"], s["projected_grad"]))
        perturb(params, names, seed, 1, eps)
        perturb(params, names, seed, -2, eps)
        perturb(params, names, seed, 1, eps)
        update(params, names, seed, g, s["lr"], weight_decay, decays)

    compared, max_diff, identical, worst, unmatched = 0, 0.0, True, None, []
    for path in safetensors_files(saved_dir):
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                if name not in params:
                    unmatched.append(name)
                    continue
                saved = f.get_tensor(name).to(device)
                mine = params[name]
                if saved.dtype != mine.dtype or saved.shape != mine.shape:
                    refuse(f"{name}: saved as {saved.dtype} {tuple(saved.shape)}, replayed as "
                           f"{mine.dtype} {tuple(mine.shape)}")
                compared += 1
                same = torch.equal(saved.view(BITS[dtype]), mine.view(BITS[dtype]))
                identical &= same
                if same:
                    continue
                diff = (saved.double() - mine.double()).abs().max().item()
                diff = float("inf") if diff != diff else diff  # a NaN on one side only
                if worst is None or diff > worst[1]:
                    worst = (name, diff)
                max_diff = max(max_diff, diff)
    if unmatched:
        print(f"note: not compared (in the saved model, not in {init_dir}): {unmatched}")
    if worst:
        print(f"largest difference in {worst[0]} ({'trained' if worst[0] in names else 'not trained'}): {worst[1]:.3g}")
    print(f"replay device={args.device} steps={len(steps)} tensors={compared} max_abs_diff={max_diff:.3g} "
          f"identical={str(identical).lower()}")
    # Tolerance 0 means bit for bit: -0 against +0 differs by nothing but is a mismatch.
    passed = compared > 0 and (identical if args.tolerance == 0 else max_diff <= args.tolerance)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
