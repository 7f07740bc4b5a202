#!/usr/bin/env bash
# Every GPU check of mezo in one call, for a GPU node that has no Rust toolchain.
#
#   make gpu-bundle                # on the build machine: target/gpu-bundle/ and its packed
#                                  # copy target/gpu-bundle.tar.xz (about 27 MB)
#   bash benches/gpu-check.sh      # on the GPU node, in the repository root, with either copied
#                                  # there (the packed one is unpacked first)
#
# The bundled binaries have no rpath: on the node they run against the node's own PyTorch 2.11
# libraries (found through `python3 -c 'import torch'`, or MEZO_TORCH_PYTHON) and the CUDA, NVRTC
# and NCCL libraries of that PyTorch's nvidia-* packages. The OpenMPI and HDF5 libraries (and their
# dependencies) travel in the bundle and are used only where the node lacks them; so do OpenMPI's
# launcher (relocated, for the two-rank checks), and `transformers` and `h5py` for the PyTorch side.
#
# What runs: nvidia-smi, `mezo info --all-ranks`, `mezo check --device cuda`, which covers
# collectives, a collective HDF5 write, a tch matmul and randn on cuda, an NVRTC kernel through
# cudarc, the fast perturbation stream's NVRTC kernels against the CPU stream (bit for bit, four
# dtypes) and a one-rank NCCL all-reduce, `mezo demo` on cuda; the checks at scale (`at_scale`:
# OPT-13B f16 MeZO steps against forward passes and against MeZO large's PyTorch step, the fast
# stream's kernels against the copy bandwidth, the reference stream replayed by PyTorch, rank 0's
# share of an SST-2 512-shot kernel, two ranks on the one GPU against one); and end to end on the
# demo task (`end_to_end`): a run with the reference stream replayed into the same weights, a
# fast-stream run stopped by SIGTERM and resumed into the uninterrupted run's weights, LoRA and
# prefix MeZO, and eNTK kernels solved by least squares. It ends with one summary table (check,
# measured, goal, verdict). Output goes to stdout and to $OUT/gpu-check.log (OUT: the device tool's
# output folder, else a temporary directory). Exit status: number of failed steps.
# `bash benches/gpu-check.sh end-to-end [cpu|cuda]` runs the end-to-end part alone and `bash
# benches/gpu-check.sh dry-run` the at-scale part on this machine's CPU with a tiny OPT and a tiny
# kernel (both with a built target/release/mezo).
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
  # The device tool carries at most 64 MiB with the working tree: no symbol tables.
  strip --strip-unneeded "$bundle/mezo" "$bundle/mezo_step"
  # Everything ldd resolves outside torch and the C/C++ runtime, which the node must match itself.
  ldd "$bin" | awk '$3 ~ /^\// {print $3}' | grep -v -E '/(torch|nvidia)/' \
    | grep -v -E '/(libc|libm|libdl|librt|libpthread|libutil|libresolv|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so' \
    | while read -r lib; do cp -L "$lib" "$bundle/lib/"; done
  # The PyTorch side (transformers with only the model families used here, h5py) for a node whose
  # python3 has torch but not these; unpacked there only when its own are missing.
  local site scratch
  site="$("$repo/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  scratch="$(mktemp -d)"
  (cd "$site" && tar -cf - --exclude='transformers/models/*' --exclude='__pycache__' transformers \
    tokenizers huggingface_hub safetensors h5py h5py.libs regex yaml tqdm filelock packaging requests certifi \
    idna urllib3 charset_normalizer fsspec typing_extensions.py) | tar -C "$scratch" -xf -
  cp "$site/transformers/models/__init__.py" "$scratch/transformers/models/"
  for family in opt llama roberta bert auto; do
    cp -r "$site/transformers/models/$family" "$scratch/transformers/models/"
  done
  find "$scratch" -name __pycache__ -prune -exec rm -rf {} +
  tar -C "$scratch" -czf "$bundle/python.tar.gz" .
  rm -rf "$scratch"
  bundle_openmpi
  # One compressed file to carry (the device tool takes 64 MiB with the working tree); the check
  # unpacks it on the node.
  tar -C "$repo/target" -cJf "$repo/target/gpu-bundle.tar.xz" gpu-bundle
  du -sh "$bundle" "$repo/target/gpu-bundle.tar.xz"
  echo "bundle ready: $bundle ($(ls "$bundle/lib" | wc -l) libraries), packed as target/gpu-bundle.tar.xz"
}

# OpenMPI's launcher for the two-ranks-on-one-GPU checks on a node without OpenMPI: orterun,
# orted, the help texts and the MCA components whose libraries are all in this list (shared
# memory and TCP; not UCX, libfabric, verbs or PSM, which need the node's own network stack),
# relocated under $bundle/openmpi (found there through OPAL_PREFIX, PMIx's through
# PMIX_INSTALL_PREFIX). The libraries go to lib/.
bundle_openmpi() {
  local system=/usr/lib/x86_64-linux-gnu triple=x86_64-linux-gnu
  local target="$bundle/openmpi" components="$system/openmpi/lib/openmpi3"
  local allowed='lib(open-pal|open-rte|mpi|hwloc|event_core-2.1|event_pthreads-2.1|udev|z|numa|atomic|uuid|pmix|munge|mca_common_(ompio|sm|monitoring))\.so'
  local runtime='/(libc|libm|libdl|librt|libpthread|libutil|libresolv|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so'
  mkdir -p "$target/bin" "$target/lib/$triple/openmpi/lib/openmpi3" "$target/share"
  cp -L /usr/bin/orterun /usr/bin/orted "$target/bin/"
  ln -s orterun "$target/bin/mpirun"
  cp -r /usr/share/openmpi "$target/share/"
  # PMIx (ORTE's process management), relocated through PMIX_INSTALL_PREFIX.
  cp -r "$system/pmix2" "$target/pmix"
  rm -f "$target/pmix/lib/"libpmix.so* "$target/pmix/lib/pmix/pmix_mca_prm_slurm.so"
  local file deps
  for file in /usr/bin/orterun /usr/bin/orted "$components"/*.so; do
    deps="$(ldd "$file" | awk '$3 ~ /^\// {print $3}' | grep -v -E "$runtime" || true)"
    if [[ -n "$(grep -v -E "$allowed" <<< "$deps")" ]]; then
      continue
    fi
    [[ "$file" == "$components"/* ]] && cp "$file" "$target/lib/$triple/openmpi/lib/openmpi3/"
    for lib in $deps; do cp -L -n "$lib" "$bundle/lib/"; done
  done
  echo "OpenMPI $(orterun --version | head -1 | awk '{print $NF}'): $(ls "$target/lib/$triple/openmpi/lib/openmpi3" | wc -l) components"
}

failed=0
# Runs a command, counting it when it fails; its exit status.
step() {
  echo; echo "=== $*"
  local status=0
  "$@" || status=$?
  if ((status != 0)); then
    echo "=== FAILED ($status): $*"
    failed=$((failed + 1))
  fi
  return "$status"
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

# One row of the summary table: what, measured, goal, verdict (pass/FAIL/info).
summary_row() {
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$summary"
}

# The value of key KEY in a `key=value ...` line of FILE (empty when absent).
field() {
  grep -o "\b$2=[^ ]*" "$1" 2>/dev/null | tail -1 | cut -d= -f2
}

# "pass" when A <= B (floats), else "FAIL"; "FAIL" when either is missing.
at_most() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || a == "nan") print "FAIL"; else print (a + 0 <= b + 0) ? "pass" : "FAIL" }'
}

# A summary row NAME for a comparison that the rest of the arguments, a command, makes: "equal"
# and pass when it succeeds.
equal_row() {
  local name="$1"
  shift
  if step "$@"; then
    summary_row "$name" equal equal pass
  else
    summary_row "$name" differs equal FAIL
  fi
}

ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print ""; else printf "%.2f", a / b }'
}

# Issue 19's measurements with BIN and the MeZO step benchmark STEP_BENCH on DEVICE, under OUT,
# for a random OPT of SIZE (13b on a GPU; tiny for the CPU dry run, which also shrinks the kernel
# share and the batches so that it checks the plumbing in minutes):
# - MeZO steps of OPT-SIZE f16, batch 16 x 256 and 16 x 1024: forward alone, the paired pass and
#   separate passes (time and device memory), the copy bandwidth and the fast stream's kernels
#   against it;
# - MeZO large's step in PyTorch + transformers, same model size, dtype and batch;
# - --rng reference runs on DEVICE replayed bit for bit by PyTorch's step (f32, f16, bf16);
# - rank 0's share of 8 of an SST-2 512-shot-sized sgd kernel of a random roberta-base;
# - 2 ranks on the one device against 1: MeZO data- and direction-parallel, and kernels.
at_scale() {
  local bin="$1" step_bench="$2" device="$3" out="$4" size="$5"
  mkdir -p "$out"
  local batch=16 seqs=(256 1024) steps=5 share_rows=0..128 kernel_extra=()
  if [[ "$size" == tiny ]]; then
    seqs=(32 64) steps=2 share_rows=0..2 kernel_extra=(--train-rows 16)
  fi
  local mode seq f
  for seq in "${seqs[@]}"; do
    for mode in forward-only step separate-passes; do
      f="$out/opt-$size-$seq-$mode.txt"
      step "$step_bench" --random-opt "$size" --device "$device" --dtype f16 --batch "$batch" --seq "$seq" \
        --threads "$(nproc)" --steps "$steps" $([[ $mode != step ]] && echo "--$mode") > "$f"
      cat "$f"
    done
    local inference="$out/opt-$size-$seq-forward-only.txt" paired="$out/opt-$size-$seq-step.txt"
    local separate="$out/opt-$size-$seq-separate-passes.txt" r
    r="$(ratio "$(field "$paired" step_ms)" "$(field "$paired" forward_ms)")"
    summary_row "OPT-$size f16 ${batch}x$seq: step / forward, paired pass" "$r" "<= 2.2" "$(at_most "$r" 2.2)"
    r="$(ratio "$(field "$separate" step_ms)" "$(field "$separate" forward_ms)")"
    summary_row "OPT-$size f16 ${batch}x$seq: step / forward, separate passes" "$r" "<= 2.2" "$(at_most "$r" 2.2)"
    if [[ "$device" == cuda ]]; then
      r="$(ratio "$(field "$separate" device_mem_mb)" "$(field "$inference" device_mem_mb)")"
      summary_row "OPT-$size f16 ${batch}x$seq: device memory step / inference, separate passes" "$r" "<= 1.05" \
        "$(at_most "$r" 1.05)"
      r="$(ratio "$(field "$paired" device_mem_mb)" "$(field "$inference" device_mem_mb)")"
      summary_row "OPT-$size f16 ${batch}x$seq: device memory step / inference, paired pass" "$r" "-" info
    fi
  done
  f="$out/opt-$size-${seqs[0]}-step.txt"
  if [[ "$device" == cuda ]]; then
    summary_row "copy bandwidth (1 GiB device to device)" "$(field "$f" copy_gbs) GB/s" "-" info
    local fraction
    for kernel in perturb update; do
      fraction="$(field "$f" ${kernel}_fraction)"
      summary_row "fast stream $kernel kernels: fraction of the copy bandwidth" \
        "$fraction ($(field "$f" ${kernel}_gbs) GB/s)" ">= 0.60" "$(at_most 0.60 "$fraction")"
    done
  fi

  # PyTorch + transformers: MeZO large's step, same size, dtype and batch.
  local python="${MEZO_TORCH_PYTHON:-python3}" pytorch="$out/pytorch-$size-${seqs[0]}.txt"
  step "$python" "$repo/benches/mezo_large_step_pytorch.py" --size "$size" --device "$device" --dtype f16 \
    --batch "$batch" --seq "${seqs[0]}" --steps "$steps" > "$pytorch"
  cat "$pytorch"
  local speedup
  speedup="$(ratio "$(field "$pytorch" step_ms)" "$(field "$f" step_ms)")"
  summary_row "OPT-$size f16 ${batch}x${seqs[0]}: PyTorch reference step / mezo step" "$speedup" ">= 1.5" \
    "$(at_most 1.5 "$speedup")"
  summary_row "  (PyTorch step $(field "$pytorch" step_ms) ms, forward $(field "$pytorch" forward_ms) ms; mezo step $(field "$f" step_ms) ms)" "" "" info

  # The reference stream on this device, replayed by PyTorch.
  if step "$python" "$repo/scripts/check_reference_replay.py" "$bin" --device "$device" > "$out/replay.txt"; then
    summary_row "--rng reference = PyTorch's step on $device (f32, f16, bf16), 5 steps" "bit-identical" "identical" pass
  else
    summary_row "--rng reference = PyTorch's step on $device (f32, f16, bf16), 5 steps" "differs" "identical" FAIL
  fi
  cat "$out/replay.txt"

  # Rank 0's share of 8 of an SST-2 512-shot-sized kernel.
  step "$python" "$repo/benches/sst2_512_shot.py" "$out/sst2" --size "${MEZO_SST2_SIZE:-roberta-base}"
  local began ended seconds verdict
  began="$(date +%s.%N)"
  if step "$bin" --device "$device" kernel --task SST-2 --data-dir "$out/sst2/data/SST-2/512-42" \
    --model "$out/sst2/model" --random-weights 0 --formula sgd --rows "$share_rows" --gradient-batch 16 \
    --column-batch 16 "${kernel_extra[@]}" --out "$out/sst2-share.h5" > "$out/kernel-share.txt" 2>&1; then
    ended="$(date +%s.%N)"
    seconds="$(awk -v a="$began" -v b="$ended" 'BEGIN { printf "%.0f", b - a }')"
    verdict="$(at_most "$seconds" 300)"
  else
    seconds="failed after $(awk -v a="$began" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')"
    verdict=FAIL
  fi
  cat "$out/kernel-share.txt"
  summary_row "SST-2 512-shot sgd kernel (1024 x 2920, C = 2, ${MEZO_SST2_SIZE:-roberta-base}): rank 0's share of 8, the whole command" \
    "$seconds s" "<= 300 s" "$verdict"

  # Two ranks on this one device against one.
  if command -v mpirun > /dev/null; then
    two_ranks_equal_one "$bin" "$device" "$out/two-ranks"
  else
    summary_row "2 ranks on one $device = 1 rank (MeZO data/direction parallel, kernels)" "not run: no mpirun here" \
      "equal" FAIL
  fi
}

# MeZO (data- and direction-parallel) and a kernel on 1 and on 2 ranks sharing DEVICE: the same
# results up to reduction order.
two_ranks_equal_one() {
  local bin="$1" device="$2" out="$3"
  local model="$repo/data/demo/model" split="$out/k-shot-1k-test/SST-2/16-42"
  local python="${MEZO_TORCH_PYTHON:-python3}"
  local launch=(mpirun --oversubscribe --allow-run-as-root -np 2 ${LD_LIBRARY_PATH:+-x LD_LIBRARY_PATH}
    ${PYTHONPATH:+-x PYTHONPATH})
  step "$bin" -q kshot --data-dir "$repo/data/demo/original" --out "$out" --mode k-shot-1k-test --k 16 \
    --task SST-2 --seed 42
  local train=(--device "$device" -q train --optimizer mezo --task SST-2 --data-dir "$split" --model "$model"
    --batch-size 16 --lr 1e-3 --eps 1e-3 --seed 42 --steps 50 --eval-every 50)
  local parallel
  for parallel in data directions; do
    # Two ranks with one direction each are n-SPSA with two directions on one rank.
    local one=(--parallel data) two=(--parallel "$parallel")
    [[ $parallel == directions ]] && one=(--zo-samples 2)
    step "$bin" "${train[@]}" "${one[@]}" --out "$out/mezo-$parallel-1"
    step "${launch[@]}" "$bin" "${train[@]}" "${two[@]}" --out "$out/mezo-$parallel-2"
    equal_row "2 ranks on one $device = 1 rank: MeZO $parallel-parallel, 50 steps" \
      "$python" - "$out/mezo-$parallel-1/trajectory.jsonl" "$out/mezo-$parallel-2/trajectory.jsonl" <<'PY'
import json, sys
def grads(path):
    rows = [json.loads(line) for line in open(path)][1:]
    return [g for r in rows for g in ([r["projected_grad"]] if "projected_grad" in r else
                                      [d[1] for d in r.get("directions", [])])]
a, b = grads(sys.argv[1]), grads(sys.argv[2])
# g = (l+ - l-) / 2 eps magnifies the losses' rounding: measured against the largest |g|.
scale = max([1.0] + [abs(x) for x in a])
worst = max(abs(x - y) for x, y in zip(a, b)) / scale if a and len(a) == len(b) else float("inf")
print(f"{len(a)} projected gradients, largest difference {worst:.2e} of the largest one")
sys.exit(0 if worst <= 1e-3 else 1)
PY
  done
  step "$bin" --device "$device" -q kernel --task SST-2 --data-dir "$split" --model "$model" --out "$out/kernel-1.h5"
  step "${launch[@]}" "$bin" --device "$device" -q kernel --task SST-2 --data-dir "$split" --model "$model" \
    --out "$out/kernel-2.h5"
  equal_row "2 ranks on one $device = 1 rank: sgd kernels" "$python" - "$out/kernel-1.h5" "$out/kernel-2.h5" <<'PY'
import sys
import h5py, numpy as np
with h5py.File(sys.argv[1]) as a, h5py.File(sys.argv[2]) as b:
    worst = max(np.abs(a[s][...] - b[s][...]).max() / np.abs(a[s][...]).max() for s in ("train", "dev", "test"))
print(f"largest relative difference of the kernels {worst:.2e}")
sys.exit(0 if worst <= 1e-5 else 1)
PY
}

print_summary() {
  echo
  echo "=== summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo cpu))"
  column -t -s $'\t' "$summary" 2>/dev/null || cat "$summary"
}

run_checks() {
  local out="${OUT:-$(mktemp -d)}"
  mkdir -p "$out"
  exec > >(tee "$out/gpu-check.log") 2>&1
  summary="$out/summary.tsv"
  printf 'check\tmeasured\tgoal\tverdict\n' > "$summary"
  echo "gpu-check on $(hostname) at $(date -u +%FT%TZ)"
  if [[ ! -x "$bundle/mezo" && -f "$repo/target/gpu-bundle.tar.xz" ]]; then
    tar -C "$repo/target" -xJf "$repo/target/gpu-bundle.tar.xz"
  fi
  [[ -x "$bundle/mezo" ]] || { echo "no $bundle/mezo: run 'make gpu-bundle' on the build machine"; exit 1; }

  local python="${MEZO_TORCH_PYTHON:-python3}"
  local torch_dir
  torch_dir="$("$python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')" \
    || { echo "$python cannot import torch: set MEZO_TORCH_PYTHON"; exit 1; }
  local site nccl_link missing
  site="$(dirname "$torch_dir")"
  "$python" -c 'import torch; print("node torch", torch.__version__, "cuda", torch.version.cuda)'
  if ! "$python" -c 'import transformers, h5py' 2> /dev/null; then
    mkdir -p "$out/python" && tar -C "$out/python" -xzf "$bundle/python.tar.gz"
    export PYTHONPATH="$out/python${PYTHONPATH:+:$PYTHONPATH}"
    echo "transformers and h5py from the bundle: $("$python" -c 'import transformers; print(transformers.__version__)')"
  fi
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

  # The node's OpenMPI if it has one (its libmpi must be ABI-compatible, 4.x), else the bundle's.
  if ! command -v mpirun > /dev/null && [[ -x "$bundle/openmpi/bin/mpirun" ]]; then
    # Last in the search path: only what the node lacks comes from the bundle.
    export OPAL_PREFIX="$bundle/openmpi" PMIX_INSTALL_PREFIX="$bundle/openmpi/pmix" PATH="$bundle/openmpi/bin:$PATH" \
      LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$bundle/lib"
    echo "mpirun from the bundle (OPAL_PREFIX=$OPAL_PREFIX)"
  fi
  step nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  step "$bundle/mezo" info --all-ranks
  step "$bundle/mezo" check --device cuda --scratch "$out"
  # The end-to-end run on the GPU: splits, zero-shot, MeZO (fast stream, NVRTC kernels) and Adam
  # fine-tuning of the built-in tiny RoBERTa.
  step "$bundle/mezo" --device cuda demo --demo-dir "$repo/data/demo" --out "$out/demo"
  at_scale "$bundle/mezo" "$bundle/mezo_step" cuda "$out/at-scale" 13b
  end_to_end "$bundle/mezo" cuda "$out/end-to-end"

  print_summary
  echo; echo "gpu-check: $failed step(s) failed; log in $out/gpu-check.log"
  exit "$failed"
}

case "${1:-run}" in
  bundle) make_bundle ;;
  run) run_checks ;;
  dry-run)
    # Issue 19's part on this machine's CPU with a tiny OPT and a tiny kernel: the plumbing, not
    # the numbers.
    scratch="$(mktemp -d)"
    summary="$scratch/summary.tsv"
    printf 'check\tmeasured\tgoal\tverdict\n' > "$summary"
    bench="$(cd "$repo" && cargo bench --no-run --bench mezo_step --message-format json 2>/dev/null \
      | grep -o '"executable":"[^"]*mezo_step[^"]*"' | tail -1 | cut -d'"' -f4)"
    export MEZO_TORCH_PYTHON="${MEZO_TORCH_PYTHON:-$repo/.venv/bin/python}" MEZO_SST2_SIZE=tiny
    at_scale "$repo/target/release/mezo" "$bench" cpu "$scratch" tiny
    print_summary
    echo; echo "dry run: $failed step(s) failed (in $scratch)"
    exit "$failed"
    ;;
  end-to-end)
    scratch="$(mktemp -d)"
    end_to_end "$repo/target/release/mezo" "${2:-cpu}" "$scratch"
    echo; echo "end to end: $failed step(s) failed (in $scratch)"
    exit "$failed"
    ;;
  *) echo "usage: $0 [bundle|run|dry-run|end-to-end [cpu|cuda]]" >&2; exit 2 ;;
esac
