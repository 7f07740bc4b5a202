#!/usr/bin/env bash
# Every GPU check of mezo in one call, for a GPU node that has no Rust toolchain.
#
#   make gpu-bundle                # on the build machine: target/gpu-bundle/{mezo,lib/}
#   bash benches/gpu-check.sh      # on the GPU node, in the repository root, with
#                                  # target/gpu-bundle copied there
#
# The bundled binary has no rpath: on the node it runs against the node's own PyTorch 2.11
# libraries (found through `python3 -c 'import torch'`, or MEZO_TORCH_PYTHON) and the CUDA, NVRTC
# and NCCL libraries of that PyTorch's nvidia-* packages. The OpenMPI and HDF5 libraries (and their
# dependencies) travel in the bundle and are used only where the node lacks them. One process needs
# no MPI launcher, so the node needs no OpenMPI installation.
#
# What runs: nvidia-smi, `mezo info --all-ranks`, `mezo check --device cuda`, which covers
# collectives, a collective HDF5 write, a tch matmul and randn on cuda, an NVRTC kernel through
# cudarc, the fast perturbation stream's NVRTC kernels against the CPU stream (bit for bit, four
# dtypes) and a one-rank NCCL all-reduce, `mezo demo` on cuda, and the MeZO step benchmark of
# a random OPT-1.3B in f16 and bf16 (step / forward time, step / inference device memory), and
# end to end on the demo task (`end_to_end`): a run with the reference stream replayed into the same
# weights, a fast-stream run stopped by SIGTERM and resumed into the uninterrupted run's weights,
# LoRA and prefix MeZO, and eNTK kernels solved by least squares. Output goes to stdout and to $OUT/gpu-check.log
# (OUT: the device tool's output folder, else a temporary directory). Exit status: number of
# failed steps. `bash benches/gpu-check.sh end-to-end [cpu|cuda]` runs the end-to-end part alone
# (with a built target/release/mezo), e.g. on a CPU machine.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bundle="$repo/target/gpu-bundle"

make_bundle() {
  set -e
  local bin="$repo/target/release/mezo"
  [[ -x "$bin" ]] || { echo "build first: make build" >&2; exit 1; }
  rm -rf "$bundle" && mkdir -p "$bundle/lib"
  cp "$bin" "$bundle/mezo"
  # The MeZO step benchmark, for the OPT-1.3B runs.
  local bench
  bench="$(cd "$repo" && cargo bench --no-run --bench mezo_step --message-format json 2>/dev/null \
    | grep -o '"executable":"[^"]*mezo_step[^"]*"' | tail -1 | cut -d'"' -f4)"
  [[ -x "$bench" ]] || { echo "could not build the mezo_step benchmark" >&2; exit 1; }
  cp "$bench" "$bundle/mezo_step"
  # The build machine's venv paths mean nothing on the node; DT_RPATH would also beat
  # LD_LIBRARY_PATH there.
  patchelf --remove-rpath "$bundle/mezo" "$bundle/mezo_step"
  # Everything ldd resolves outside torch and the C/C++ runtime, which the node must match itself.
  ldd "$bin" | awk '$3 ~ /^\// {print $3}' | grep -v -E '/(torch|nvidia)/' \
    | grep -v -E '/(libc|libm|libdl|librt|libpthread|libutil|libresolv|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so' \
    | while read -r lib; do cp -L "$lib" "$bundle/lib/"; done
  du -sh "$bundle"
  echo "bundle ready: $bundle ($(ls "$bundle/lib" | wc -l) libraries)"
}

failed=0
step() {
  echo; echo "=== $*"
  "$@" || { echo "=== FAILED ($?): $*"; failed=$((failed + 1)); }
}

# Both files exist and are equal byte for byte.
same_file() {
  cmp "$1" "$2" && echo "identical: $1 and $2"
}

# Runs a training command and sends it SIGTERM (Slurm's pre-emption) once the trajectory of its
# run directory RUN has more than STEPS steps; its exit status.
stop_at() {
  local steps="$1" run="$2"
  shift 2
  "$@" &
  local pid=$! done=0
  while kill -0 "$pid" 2>/dev/null; do
    [[ -f "$run/trajectory.jsonl" ]] && done=$(($(wc -l < "$run/trajectory.jsonl") - 1))
    ((done > steps)) && { kill -TERM "$pid"; break; }
    sleep 0.01
  done
  wait "$pid"
}

# MeZO and the kernels end to end with BIN on DEVICE, on the demo task's 16-shot split (made with
# `mezo kshot` from data/demo/original), the demo model, under OUT.
end_to_end() {
  local bin="$1" device="$2" out="$3"
  local model="$repo/data/demo/model" split="$out/k-shot-1k-test/SST-2/16-42"
  local mezo=("$bin" --device "$device" -q)
  step "${mezo[@]}" kshot --data-dir "$repo/data/demo/original" --out "$out" --mode k-shot-1k-test --k 16 \
    --task SST-2 --seed 42
  local train=(train --optimizer mezo --task SST-2 --data-dir "$split" --model "$model" --batch-size 16
    --lr 1e-3 --eps 1e-3 --seed 42 --eval-every 100 --save-model)
  step "${mezo[@]}" "${train[@]}" --rng reference --steps 200 --out "$out/reference"
  step "${mezo[@]}" replay "$out/reference" --out "$out/reference-replayed"
  step same_file "$out/reference/model/model.safetensors" "$out/reference-replayed/model.safetensors"
  step "${mezo[@]}" "${train[@]}" --steps 600 --out "$out/whole"
  # Stopped part-way (exit 0 and a resumable run), then resumed: the uninterrupted run's weights.
  step stop_at 250 "$out/stopped" "${mezo[@]}" "${train[@]}" --steps 600 --out "$out/stopped"
  echo "stopped after $(($(wc -l < "$out/stopped/trajectory.jsonl") - 1)) of 600 steps"
  [[ -e "$out/stopped/model" ]] || step "${mezo[@]}" "${train[@]}" --steps 600 --resume "$out/stopped"
  step same_file "$out/whole/model/model.safetensors" "$out/stopped/model/model.safetensors"
  step "${mezo[@]}" "${train[@]}" --steps 100 --lora-r 4 --lora-alpha 16 --out "$out/lora"
  step "${mezo[@]}" "${train[@]}" --steps 100 --num-prefix 4 --out "$out/prefix"
  step "${mezo[@]}" kernel --task SST-2 --data-dir "$split" --model "$model" --out "$out/sgd.h5"
  step "${mezo[@]}" solve --kernels "$out/sgd.h5" --solver lstsq --out "$out/sgd-lstsq.json"
  step "${mezo[@]}" solve --kernels "$out/sgd.h5" --solver logistic --out "$out/sgd-logistic.json"
}

run_checks() {
  local out="${OUT:-$(mktemp -d)}"
  mkdir -p "$out"
  exec > >(tee "$out/gpu-check.log") 2>&1
  echo "gpu-check on $(hostname) at $(date -u +%FT%TZ)"
  [[ -x "$bundle/mezo" ]] || { echo "no $bundle/mezo: run 'make gpu-bundle' on the build machine"; exit 1; }

  local python="${MEZO_TORCH_PYTHON:-python3}"
  local torch_dir
  torch_dir="$("$python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')" \
    || { echo "$python cannot import torch: set MEZO_TORCH_PYTHON"; exit 1; }
  local site nccl_link missing
  site="$(dirname "$torch_dir")"
  "$python" -c 'import torch; print("node torch", torch.__version__, "cuda", torch.version.cuda)'
  # cudarc looks for libnccl.so, the wheel ships libnccl.so.2.
  nccl_link="$(mktemp -d)"
  [[ -e "$site/nvidia/nccl/lib/libnccl.so.2" ]] && ln -s "$site/nvidia/nccl/lib/libnccl.so.2" "$nccl_link/libnccl.so"
  export LD_LIBRARY_PATH="$torch_dir/lib:$site/nvidia/cu13/lib:$site/nvidia/nccl/lib:$nccl_link${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

  # Only libraries the node lacks come from the bundle.
  missing="$(mktemp -d)"
  export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$missing"
  for _ in 1 2 3 4 5 6; do
    local names
    names="$(ldd "$bundle/mezo" | awk '/not found/ {print $1}')"
    [[ -z "$names" ]] && break
    for name in $names; do
      if [[ -e "$bundle/lib/$name" ]]; then
        ln -sf "$bundle/lib/$name" "$missing/$name"
      else
        echo "missing on this node and not in the bundle: $name"
      fi
    done
  done
  echo "libraries taken from the bundle: $(ls "$missing" | tr '\n' ' ')"
  if ldd "$bundle/mezo" | grep -q "not found"; then
    ldd "$bundle/mezo" | grep "not found"
    exit 1
  fi

  step nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  step "$bundle/mezo" info --all-ranks
  step "$bundle/mezo" check --device cuda --scratch "$out"
  # The end-to-end run on the GPU: splits, zero-shot, MeZO (fast stream, NVRTC kernels) and Adam
  # fine-tuning of the built-in tiny RoBERTa.
  step "$bundle/mezo" --device cuda demo --demo-dir "$repo/data/demo" --out "$out/demo"
  # Issue 5's GPU benchmark: a MeZO step (fast stream, NVRTC kernels) of a random OPT-1.3B on
  # batch 8 x 64 against its forward pass, f16 and bf16: time and device memory, step over
  # inference. The random model is written once (f16) and converted at load.
  local opt="$out/opt-1.3b" dtype mode
  rm -rf "$opt"
  for dtype in f16 bf16; do
    # step: ℓ+ and ℓ− in one paired pass (the default); separate-passes: two passes.
    for mode in forward-only step separate-passes; do
      step "$bundle/mezo_step" --random-opt 1.3b --model "$opt" --device cuda --dtype "$dtype" \
        --threads "$(nproc)" --steps 10 $([[ $mode != step ]] && echo "--$mode") \
        > "$out/opt-$dtype-$mode.txt"
      cat "$out/opt-$dtype-$mode.txt"
    done
    python3 - "$dtype" "$out/opt-$dtype-forward-only.txt" "$out/opt-$dtype-step.txt" \
      "$out/opt-$dtype-separate-passes.txt" <<'PY'
import re, sys
def numbers(path):
    return dict(re.findall(r"(\w+)=([0-9.]+)", open(path).read()))
dtype, inference = sys.argv[1], numbers(sys.argv[2])
for label, path in (("paired pass", sys.argv[3]), ("separate passes", sys.argv[4])):
    step = numbers(path)
    try:
        print(f"OPT-1.3B {dtype}, {label}: step {float(step['step_ms']):.1f} ms / forward "
              f"{float(step['forward_ms']):.1f} ms = {float(step['step_ms']) / float(step['forward_ms']):.2f} "
              f"(each step over the pass before it: {float(step['step_over_forward']):.2f}); "
              f"device memory step {step['device_mem_mb']} MB / inference {inference['device_mem_mb']} MB = "
              f"{float(step['device_mem_mb']) / float(inference['device_mem_mb']):.2f}")
    except KeyError as e:
        print(f"OPT-1.3B {dtype}, {label}: no numbers ({e} missing)")
PY
  done
  rm -rf "$opt"

  end_to_end "$bundle/mezo" cuda "$out/end-to-end"

  echo; echo "gpu-check: $failed step(s) failed; log in $out/gpu-check.log"
  exit "$failed"
}

case "${1:-run}" in
  bundle) make_bundle ;;
  run) run_checks ;;
  end-to-end)
    scratch="$(mktemp -d)"
    end_to_end "$repo/target/release/mezo" "${2:-cpu}" "$scratch"
    echo; echo "end to end: $failed step(s) failed (in $scratch)"
    exit "$failed"
    ;;
  *) echo "usage: $0 [bundle|run|end-to-end [cpu|cuda]]" >&2; exit 2 ;;
esac
