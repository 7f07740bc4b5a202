#!/usr/bin/env bash
# Downloads the train and validation splits of MeZO's large-model tasks from the Hugging Face Hub
# as Parquet files, one directory per task in the layout `mezo eval|train --data-dir DEST/TASK`
# reads (DEST/TASK/train/0000.parquet, DEST/TASK/validation/0000.parquet, ...).
#
#   data/download_large.sh [--dest DIR] [TASK ...]
#
#   --dest  where the task directories go (default: data/large)
#   TASK    any of SST2 RTE CB BoolQ WSC WIC MultiRC Copa ReCoRD SQuAD DROP, in any case
#           (default: all eleven)
#
# The files are the Hub's Parquet conversion of each dataset (the revision refs/convert/parquet,
# shards CONFIG/SPLIT/0000.parquet, 0001.parquet, ...), of the datasets and configurations MeZO's
# large_models code loads: glue/sst2; super_glue's rte, cb, boolq's own dataset, wsc.fixed, wic,
# multirc, copa, record; squad (v1.1); drop. Environment variables, for mirrors or a dataset that
# moved on the Hub:
#   MEZO_HF_BASE      the datasets' base URL (default https://huggingface.co/datasets; a file://
#                     URL reads a local copy laid out the same way)
#   MEZO_HF_REVISION  the revision, URL-encoded (default refs%2Fconvert%2Fparquet)
#   MEZO_HF_<TASK>    "REPO CONFIG" for one task, TASK in capitals, e.g.
#                     MEZO_HF_BOOLQ="google/boolq default", MEZO_HF_SST2="glue sst2"
#   HF_TOKEN          sent as a bearer token when set (for gated mirrors)
#
# Each split's shards are fetched in order until the first missing one (HTTP 404); a split without
# 0000.parquet is an error naming its URL. A task directory appears only when both splits are
# complete (they are fetched into a hidden staging directory, removed on any failure or
# interruption); an existing one is kept, so a second run fetches only what is missing. Exit
# status: 0 done, 1 a download failed, 2 bad arguments. Needs bash 4 and curl.
set -euo pipefail

base="${MEZO_HF_BASE:-https://huggingface.co/datasets}"
revision="${MEZO_HF_REVISION:-refs%2Fconvert%2Fparquet}"
dest=data/large
all=(SST2 RTE CB BoolQ WSC WIC MultiRC Copa ReCoRD SQuAD DROP)
tasks=()
while (($#)); do
  case "$1" in
    --dest)
      [[ $# -ge 2 && -n "$2" ]] || { echo "download_large.sh: --dest needs a directory" >&2; exit 2; }
      dest="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    -*) echo "download_large.sh: unknown option '$1' (see the comment at the top)" >&2; exit 2 ;;
    *)
      found=""
      for t in "${all[@]}"; do
        [[ "${t,,}" == "${1,,}" ]] && found="$t"
      done
      [[ -n "$found" ]] || { echo "download_large.sh: unknown task '$1'; the tasks are ${all[*]}" >&2; exit 2; }
      [[ " ${tasks[*]} " == *" $found "* ]] || tasks+=("$found")
      shift ;;
  esac
done
((${#tasks[@]})) || tasks=("${all[@]}")
command -v curl >/dev/null || { echo "download_large.sh: needs curl" >&2; exit 1; }

# The Hub repository and configuration MeZO's code loads for a task (mezo's Task::hf_dataset).
default_source() {
  case "$1" in
    SST2) echo "nyu-mll/glue sst2" ;;
    RTE|CB|WIC|MultiRC|Copa|ReCoRD) echo "aps/super_glue ${1,,}" ;;
    WSC) echo "aps/super_glue wsc.fixed" ;;
    BoolQ) echo "google/boolq default" ;;
    SQuAD) echo "rajpurkar/squad plain_text" ;;
    DROP) echo "ucinlp/drop default" ;;
  esac
}

# Every task's "REPO CONFIG", checked before anything is fetched.
declare -A repo_of config_of
for task in "${tasks[@]}"; do
  override="MEZO_HF_${task^^}"
  spec="${!override:-$(default_source "$task")}"
  read -r repo config extra <<<"$spec" || true
  if [[ -z "${config:-}" || -n "${extra:-}" ]]; then
    echo "download_large.sh: $override='$spec' is not 'REPO CONFIG' (the default is '$(default_source "$task")')" >&2
    exit 2
  fi
  repo_of[$task]="$repo"
  config_of[$task]="$config"
done

auth=()
[[ -n "${HF_TOKEN:-}" ]] && auth=(-H "Authorization: Bearer $HF_TOKEN")

# fetch URL FILE: 0 fetched, 1 no such file (HTTP 404, or a missing local file), 2 any other error.
# Transient failures (timeouts, a stalled transfer, HTTP 408/429/5xx) are retried with backoff.
fetch() {
  local url="$1" out="$2" status=0 code
  code="$(curl -sSL --fail --retry 5 --connect-timeout 30 --speed-limit 1024 --speed-time 60 \
    "${auth[@]}" -o "$out" -w '%{http_code}' "$url" 2>"$out.err")" || status=$?
  if ((status == 0)) && [[ "$code" == 200 || "$code" == 000 ]]; then
    rm -f "$out.err"
    return 0
  fi
  rm -f "$out"
  if [[ "$code" == 404 ]] || ((status == 37)); then
    rm -f "$out.err"
    return 1
  fi
  local hint=""
  [[ "$code" == 401 || "$code" == 403 ]] && hint=" (a gated, private or moved dataset? see HF_TOKEN and MEZO_HF_<TASK>)"
  echo "download_large.sh: $url: HTTP $code, curl exit $status: $(tail -n 1 "$out.err")$hint" >&2
  rm -f "$out.err"
  return 2
}

mkdir -p "$dest"
staging=""
trap '[[ -z "$staging" ]] || rm -rf "$staging"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
for task in "${tasks[@]}"; do
  if [[ -d "$dest/$task" ]]; then
    echo "$task: $dest/$task exists, kept"
    continue
  fi
  repo="${repo_of[$task]}"
  config="${config_of[$task]}"
  staging="$(mktemp -d "$dest/.$task.XXXXXX")"
  for split in train validation; do
    mkdir -p "$staging/$split"
    shard=0
    while :; do
      name="$(printf '%04d.parquet' "$shard")"
      url="$base/$repo/resolve/$revision/$config/$split/$name"
      status=0
      fetch "$url" "$staging/$split/$name" || status=$?
      if ((status == 1 && shard > 0)); then
        break
      elif ((status == 1)); then
        echo "download_large.sh: $task: no $split split at $url" >&2
        exit 1
      elif ((status != 0)); then
        exit 1
      fi
      shard=$((shard + 1))
    done
    echo "$task: $split, $shard file(s)"
  done
  chmod 755 "$staging"
  mv "$staging" "$dest/$task"
  staging=""
done
echo "done: ${tasks[*]} in $dest"
