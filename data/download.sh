#!/usr/bin/env bash
# Downloads and unpacks the LM-BFF datasets archive into DEST/original, the layout `mezo kshot`
# reads, as the reference repositories' data/download_dataset.sh do.
#
#   data/download.sh [--layout mezo|kernel-ft|lm-bff] [--dest DIR] [--tar FILE]
#
#   --layout  mezo (default) and kernel-ft replace LM-BFF's sentence-level SST-2 by GLUE SST-2:
#             original/SST-2 becomes original/SST-2-original and original/GLUE-SST-2 becomes
#             original/SST-2. kernel-ft also rebalances cr as LM-Kernel-FT does: it edits the
#             archive's original/cr/process.py (1000 test examples per class -> 250) and reruns it
#             with python3, so that 512-shot train+dev fit. lm-bff keeps the archive as it is.
#   --dest    where original/ goes (default: data)
#   --tar     use an already downloaded datasets.tar instead of downloading it
#
# Then: mezo kshot --data-dir DEST/original --out DEST --mode k-shot-1k-test --k 16
set -euo pipefail

url="https://nlp.cs.princeton.edu/projects/lm-bff/datasets.tar"
layout=mezo
dest=data
tar_file=""
while (($#)); do
  case "$1" in
    --layout) layout="$2"; shift 2 ;;
    --dest) dest="$2"; shift 2 ;;
    --tar) tar_file="$2"; shift 2 ;;
    *) echo "download.sh: unknown argument '$1' (see the comment at the top)" >&2; exit 2 ;;
  esac
done
case "$layout" in mezo|kernel-ft|lm-bff) ;; *) echo "download.sh: --layout must be mezo, kernel-ft or lm-bff" >&2; exit 2 ;; esac

mkdir -p "$dest"
if [[ -e "$dest/original" ]]; then
  echo "download.sh: $dest/original exists; remove it first" >&2
  exit 1
fi
if [[ -z "$tar_file" ]]; then
  tar_file="$dest/datasets.tar"
  echo "downloading $url"
  if command -v wget >/dev/null; then wget -q -O "$tar_file.part" "$url"; else curl -fsSL -o "$tar_file.part" "$url"; fi
  mv "$tar_file.part" "$tar_file"
fi

# Unpack next to the destination and move into place only when complete.
staging="$(mktemp -d "$dest/.unpack.XXXXXX")"
trap 'rm -rf "$staging"' EXIT
tar -xf "$tar_file" -C "$staging"
[[ -d "$staging/original" ]] || { echo "download.sh: $tar_file has no original/ directory" >&2; exit 1; }
if [[ "$layout" != lm-bff ]]; then
  [[ -d "$staging/original/GLUE-SST-2" ]] || { echo "download.sh: the archive has no original/GLUE-SST-2" >&2; exit 1; }
  mv "$staging/original/SST-2" "$staging/original/SST-2-original"
  mv "$staging/original/GLUE-SST-2" "$staging/original/SST-2"
fi
if [[ "$layout" == kernel-ft ]]; then
  process="$staging/original/cr/process.py"
  [[ -f "$process" ]] || { echo "download.sh: the archive has no original/cr/process.py to rebalance cr" >&2; exit 1; }
  sed -i 's/1000/250/' "$process"
  (cd "$(dirname "$process")" && python3 process.py)
fi
mv "$staging/original" "$dest/original"
echo "unpacked into $dest/original ($layout layout): $(ls "$dest/original" | tr '\n' ' ')"
