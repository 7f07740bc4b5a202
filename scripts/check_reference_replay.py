#!/usr/bin/env python3
"""Checks that `mezo train --rng reference` computes, bit for bit, the weights MeZO's own PyTorch
code computes: a few MeZO steps of the tiny OPT fixture on a large-model task in f32, f16 and
bf16 (weight decay on, with MeZO large's no-bias-norm rule), each replayed in PyTorch by
benches/mezo_reference_replay.py. `make test` runs it after `cargo test`; on a GPU node
benches/gpu-check.sh runs the same check with --device cuda.

    .venv/bin/python scripts/check_reference_replay.py target/debug/mezo [--device cpu|cuda]
"""
import argparse
import os
import subprocess
import sys
import tempfile

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mezo", help="the mezo binary")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtypes", default="f32,f16,bf16")
    args = parser.parse_args()
    failures = 0
    with tempfile.TemporaryDirectory() as scratch:
        for dtype in args.dtypes.split(","):
            run = os.path.join(scratch, dtype)
            subprocess.run(
                [args.mezo, "-q", "--device", args.device, "train", "--task", "SST2",
                 "--model", os.path.join(REPO, "tests/fixtures/large/models/opt"),
                 "--data-dir", os.path.join(REPO, "tests/fixtures/large/data/SST2"),
                 "--out", run, "--optimizer", "mezo", "--rng", "reference", "--steps", "5",
                 "--batch-size", "4", "--num-train", "8", "--num-dev", "4", "--num-eval", "4",
                 "--eval-every", "5", "--lr", "1e-3", "--weight-decay", "0.1",
                 "--weight-decay-rule", "no-bias-norm", "--dtype", dtype, "--save-model"],
                check=True,
            )
            replay = subprocess.run(
                [sys.executable, os.path.join(REPO, "benches/mezo_reference_replay.py"), run,
                 "--device", args.device],
                capture_output=True, text=True,
            )
            print(f"{dtype}: {replay.stdout.strip()} {replay.stderr.strip()}".strip())
            failures += replay.returncode != 0
    if failures:
        sys.exit(f"{failures} dtype(s) differ from PyTorch's reference step")


if __name__ == "__main__":
    main()
