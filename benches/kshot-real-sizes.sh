#!/usr/bin/env bash
# Times `mezo kshot` and the numpy/pandas reference (scripts/reference_kshot.py) side by side on
# synthetic data with the real datasets' row counts: 15 tasks x 5 seeds, K=16, k-shot-1k-test.
# Both outputs are compared byte for byte.
#
#   make build && bash benches/kshot-real-sizes.sh
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python="$repo/.venv/bin/python"
"$python" "$repo/benches/kshot_synthetic.py" "$work"
echo "synthetic raw data: $(du -sh "$work/original" | cut -f1), $(cat "$work"/original/*/* | wc -l) lines; $(nproc) cores"

seconds() { local start end; start=$(date +%s%N); "$@" > /dev/null; end=$(date +%s%N); echo $(((end - start) / 1000000)); }
mezo_ms=$(seconds "$repo/target/release/mezo" -q kshot --data-dir "$work/original" --out "$work/mezo" --mode k-shot-1k-test --k 16)
ref_ms=$(seconds "$python" "$repo/scripts/reference_kshot.py" --data_dir "$work/original" --output_dir "$work/ref" --mode k-shot-1k-test --k 16)
if diff -r "$work/mezo" "$work/ref" > /dev/null; then same="byte-identical"; else same="DIFFERENT"; fi
"$python" -c "import sys; m, r = int(sys.argv[1]) / 1e3, int(sys.argv[2]) / 1e3; \
print(f'mezo kshot: {m:.2f} s, numpy/pandas reference: {r:.2f} s, ratio {r / m:.1f}x, outputs {sys.argv[3]}')" \
  "$mezo_ms" "$ref_ms" "$same"
[[ "$same" == "byte-identical" ]]
