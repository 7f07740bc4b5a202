#!/usr/bin/env python3
"""MeZO large's training step in PyTorch + transformers, timed: the reference side of the GPU
benchmark of `mezo train --rng reference` on OPT.

A random `OPTForCausalLM` of a published size (config values of facebook/opt-*, weights drawn
N(0, 0.02) for matrices and embeddings, LayerNorms at one/zero, biases zero) is built directly on
the device in the chosen dtype: no checkpoint on disk, no host copy of the weights. The input is
one batch of random token ids (seeded), a full attention mask and labels equal to the ids: the
causal LM loss that MeZO large trains with when it does not train as classification.

The step is that of MeZO's large_models/trainer.py (`zo_step` then `zo_update`), line for line:
the trainable tensors are the model's parameters with requires_grad, in `named_parameters()`
order; a step seed comes from numpy's global `randint(1000000000)`; the generator is reset to it
before each of four passes over the tensors, each drawing one `torch.normal` per tensor in the
tensor's own dtype and device. The passes are θ += 1·z·ε, loss ℓ+, θ += −2·z·ε, loss ℓ−,
θ += 1·z·ε (the restore, with its rounding), g = (ℓ+ − ℓ−) / 2ε, and the update
θ ← θ − η (g z + λ θ), where tensors whose names contain "bias", "layer_norm" or "layernorm" get
no λ θ term. Losses come from the eval-mode model under torch.inference_mode, as `zo_forward`
computes them.

Warm-up steps first, then steps alternate with plain forward passes (the same loss evaluation):
reported are the medians of both, and the median of each step's time over that of the forward
pass just before it. On CUDA, the peak of allocated memory during a forward pass alone and during
a step (peaks reset in between), and the device memory in use at the end (total minus free,
which includes the caching allocator's reserve and the context, as mezo's bench reports it).

    .venv/bin/python benches/mezo_large_step_pytorch.py [--size tiny|125m|1.3b|2.7b|6.7b|13b]
        [--device cpu|cuda] [--dtype f16|bf16|f32] [--batch 16] [--seq 256] [--steps 5]
        [--warmup 1] [--attn sdpa|eager] [--json PATH]

The last line of output is one `key=value` line, as mezo's benches print:
`pytorch size=... dtype=... batch=... seq=... step_ms=... forward_ms=... step_over_forward=...
[device_mem_mb=... inference_mem_mb=... step_mem_mb=...] init_s=...`.
A CPU smoke test: `--size tiny --device cpu --dtype f32 --steps 2`.
"""
import argparse
import json
import time

import numpy as np
import torch
from transformers import OPTConfig, OPTForCausalLM

# hidden, layers, heads, ffn: the published OPT configs (all with word_embed_proj_dim = hidden);
# tiny is benches/mezo_step.rs's tiny, for the dry run.
SIZES = {
    "tiny": (64, 2, 4, 256),
    "125m": (768, 12, 12, 3072),
    "1.3b": (2048, 24, 32, 8192),
    "2.7b": (2560, 32, 32, 10240),
    "6.7b": (4096, 32, 32, 16384),
    "13b": (5120, 40, 40, 20480),
}
DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(size, device, dtype, attn):
    hidden, layers, heads, ffn = SIZES[size]
    config = OPTConfig(
        vocab_size=50272, max_position_embeddings=2048, hidden_size=hidden,
        word_embed_proj_dim=hidden, num_hidden_layers=layers, num_attention_heads=heads, ffn_dim=ffn,
        do_layer_norm_before=True, activation_function="relu", init_std=0.02, dropout=0.1,
        attention_dropout=0.0, pad_token_id=1, bos_token_id=2, eos_token_id=2, attn_implementation=attn,
    )
    # Parameters are allocated on the device in the dtype and initialised there by transformers'
    # own _init_weights (normal_(0, init_std), ones/zeros): a 13B model never touches the host.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = OPTForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model


def zo_forward(model, inputs):
    model.eval()
    with torch.inference_mode():
        return model(**inputs).loss.detach()


def zo_perturb_parameters(params, seed, scaling_factor, eps):
    torch.manual_seed(seed)
    for _, param in params:
        z = torch.normal(mean=0, std=1, size=param.data.size(), device=param.data.device, dtype=param.data.dtype)
        param.data = param.data + scaling_factor * z * eps


def zo_step_and_update(model, params, inputs, eps, lr, weight_decay):
    seed = np.random.randint(1000000000)
    zo_perturb_parameters(params, seed, 1, eps)
    loss1 = zo_forward(model, inputs)
    zo_perturb_parameters(params, seed, -2, eps)
    loss2 = zo_forward(model, inputs)
    projected_grad = ((loss1 - loss2) / (2 * eps)).item()
    zo_perturb_parameters(params, seed, 1, eps)
    torch.manual_seed(seed)
    for name, param in params:
        z = torch.normal(mean=0, std=1, size=param.data.size(), device=param.data.device, dtype=param.data.dtype)
        if "bias" not in name and "layer_norm" not in name and "layernorm" not in name:
            param.data = param.data - lr * (projected_grad * z + weight_decay * param.data)
        else:
            param.data = param.data - lr * (projected_grad * z)
    return loss1


def timed(device, f):
    sync(device)
    start = time.perf_counter()
    f()
    sync(device)
    return (time.perf_counter() - start) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=SIZES, default="1.3b")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="f16")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--eps", type=float, default=1e-3)
    # MeZO's OPT-13B runs: lr 1e-7 or 1e-6, no weight decay (whose λ θ term is computed anyway).
    parser.add_argument("--lr", type=float, default=1e-7)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    device = torch.device(args.device, 0) if args.device == "cuda" else torch.device("cpu")
    dtype = DTYPES[args.dtype]
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    start = time.perf_counter()
    model = build_model(args.size, device, dtype, args.attn)
    sync(device)
    init_s = time.perf_counter() - start
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    vocab = model.config.vocab_size
    ids = torch.randint(4, vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(args.seed))
    ids = ids.to(device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    step = lambda: zo_step_and_update(model, params, inputs, args.eps, args.lr, args.weight_decay)  # noqa: E731
    forward = lambda: zo_forward(model, inputs).item()  # noqa: E731

    for _ in range(args.warmup):
        forward()
        step()
    cuda = device.type == "cuda"
    forwards, steps, ratios, inference_peak, step_peak = [], [], [], 0, 0
    for _ in range(args.steps):
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        forwards.append(timed(device, forward))
        if cuda:
            inference_peak = max(inference_peak, torch.cuda.max_memory_allocated(device))
            torch.cuda.reset_peak_memory_stats(device)
        steps.append(timed(device, step))
        if cuda:
            step_peak = max(step_peak, torch.cuda.max_memory_allocated(device))
        ratios.append(steps[-1] / forwards[-1])

    results = {
        "size": args.size, "dtype": args.dtype, "batch": args.batch, "seq": args.seq,
        "step_ms": float(np.median(steps)), "forward_ms": float(np.median(forwards)),
        "step_over_forward": float(np.median(ratios)),
    }
    if cuda:
        free, total = torch.cuda.mem_get_info(device)
        results["device_mem_mb"] = (total - free) / 2**20
        results["inference_mem_mb"] = inference_peak / 2**20
        results["step_mem_mb"] = step_peak / 2**20
    results["init_s"] = init_s
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    n = sum(p.numel() for _, p in params)
    print(f"torch {torch.__version__}, {where}: random OPT-{args.size} ({n / 1e6:.1f}M trainable parameters in "
          f"{len(params)} tensors), {args.attn} attention, {args.warmup} warm-up + {args.steps} steps")
    print(f"steps (ms): {' '.join(f'{t:.1f}' for t in steps)}; forward passes (ms): "
          f"{' '.join(f'{t:.1f}' for t in forwards)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**results, "torch": torch.__version__, "device": where, "attn": args.attn,
                       "steps_ms": steps, "forwards_ms": forwards}, f, indent=2)
    formats = {"step_ms": ".1f", "forward_ms": ".1f", "step_over_forward": ".3f", "device_mem_mb": ".0f",
               "inference_mem_mb": ".0f", "step_mem_mb": ".0f", "init_s": ".2f"}
    fields = " ".join(f"{k}={v:{formats.get(k, '')}}" for k, v in results.items())
    print(f"pytorch {fields}")


if __name__ == "__main__":
    main()
