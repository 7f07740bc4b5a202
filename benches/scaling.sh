#!/usr/bin/env bash
# The scaling studies of the README on this machine, on the demo task's 16-shot split at 1 and 2
# ranks of one thread each: MeZO steps (weak scaling: 8 examples per rank) of a random 6-layer,
# 512-wide RoBERTa, and kernel rows (strong scaling: 16 rows) of a random 4-layer, 256-wide one
# (both with the test tokenizer's 622-token vocabulary). Writes the CSVs and charts to docs/scaling/ (or DIR) and prints the tables with the
# cost model's projections.
#
#   make build && bash benches/scaling.sh [--ranks 1,2] [DIR]
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ranks=1,2
if [[ "${1:-}" == "--ranks" ]]; then ranks="$2"; shift 2; fi
dest="${1:-$repo/docs/scaling}"
mezo="$repo/target/release/mezo"
[[ -x "$mezo" ]] || { echo "build first: make build" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

"$repo/.venv/bin/python" - "$repo/tests/fixtures/models/roberta" "$work" <<'EOF'
import shutil, sys, torch, transformers
src, work = sys.argv[1:]
# (layers, hidden): the MeZO study's model, and the kernel study's (the size of benches/kernel_vs_torch_func.py)
for name, layers, hidden in [("mezo-model", 6, 512), ("kernel-model", 4, 256)]:
    config = transformers.RobertaConfig.from_pretrained(src)
    config.update(dict(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                       num_attention_heads=hidden // 64))
    torch.manual_seed(0)
    transformers.RobertaForMaskedLM(config).save_pretrained(f"{work}/{name}")
    shutil.copy(f"{src}/tokenizer.json", f"{work}/{name}")
EOF
"$mezo" -q kshot --task SST-2 --mode k-shot-1k-test --k 16 --seed 42 --data-dir "$repo/data/demo/original" --out "$work"
data=(--task sst-2 --data-dir "$work/k-shot-1k-test/SST-2/16-42")
echo "$(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

echo "== MeZO steps, weak scaling (batch 8 per rank, 12 steps, the first left out)"
"$mezo" -q scaling --ranks "$ranks" --mode weak --launcher-arg=--oversubscribe --out "$work/mezo" -- \
  train "${data[@]}" --model "$work/mezo-model" --batch-size 8 --steps 12 --eval-every 0
echo "== kernel rows, strong scaling (16 train rows against the train, dev and test columns, sgd)"
"$mezo" -q scaling --ranks "$ranks" --launcher-arg=--oversubscribe --out "$work/kernel" -- \
  kernel "${data[@]}" --model "$work/kernel-model" --train-rows 16

mkdir -p "$dest"
for study in mezo kernel; do
  for file in scaling.csv projection.csv scaling_throughput.svg scaling_efficiency.svg scaling_projection.svg; do
    cp "$work/$study/$file" "$dest/$study-$file"
  done
done
echo "written to $dest"
