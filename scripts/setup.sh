#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build, test and run mezo:
#   1. Debian packages: the C and C++ compilers (crates build C and C++ code), make, pkg-config,
#      OpenMPI, parallel HDF5 (OpenMPI flavour), libclang for bindgen, h5dump, curl (the data
#      download scripts and their tests); and a single-node
#      Slurm (slurmctld, slurmd, client, MUNGE, PMIx) for the tests of the sbatch templates.
#   2. A Python venv with the PyPI torch 2.11.0 wheel (libtorch for tch 0.24) and the packages the
#      test-fixture scripts need (transformers, numpy, pandas, h5py).
#   3. Two links in the repository root: `.venv` (the venv, for fixture scripts) and `.libtorch`
#      (its torch package, which `.cargo/config.toml` gives to torch-sys as LIBTORCH).
#
# Idempotent: each step checks first and prints what it does; when everything is in place it takes
# about a second. The venv lives outside the repository (default ~/.cache/mezo/venv-torch-2.11.0,
# override with MEZO_VENV) so that fresh clones reuse it. The binary's rpath points into it: keep it
# at the same path on every node of a cluster.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MEZO_VENV:-$HOME/.cache/mezo/venv-torch-2.11.0}"
torch_version="2.11.0"
# Versions the fixture scripts were written against; pinned so that fixtures regenerate identically.
py_packages=(
  "torch==${torch_version}"
  "transformers==4.57.6"
  "numpy==2.3.5"
  "pandas==2.3.3"
  "h5py==3.16.0"
  # scripts/make_solver_fixture.py: the reference kernel solvers (LogisticRegressionCV, SVR, SVC).
  "scikit-learn==1.7.2"
  "scipy==1.17.1"
  # scripts/make_large_fixtures.py: the large-model tasks' Parquet shards.
  "pyarrow==22.0.0"
)
# patchelf is for benches/gpu-check.sh, which bundles the binary for GPU nodes; fonts-dejavu-core
# gives `mezo plot --png` the text of its charts.
# gcc and g++ (`cc`, `c++`): torch-sys compiles its C++ wrapper of libtorch, and tokenizers' onig
# and esaxx-rs build C and C++. A minimal Debian has gcc but no g++.
apt_packages=(gcc g++ make pkg-config git libopenmpi-dev openmpi-bin libhdf5-openmpi-dev hdf5-tools libclang-dev
  patchelf curl fonts-dejavu-core)

say() { printf 'setup: %s\n' "$*"; }

# --- 1. Debian packages -------------------------------------------------------------------------
# install_missing WHAT [apt-get flags] -- PACKAGES: installs those of PACKAGES that are missing.
install_missing() {
  local what="$1" flags=() missing=() p sudo=""
  shift
  while [[ "$1" != "--" ]]; do flags+=("$1"); shift; done
  shift
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    say "$what present"
    return
  fi
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { say "need root to install: ${missing[*]}"; exit 1; }
    sudo="sudo"
  fi
  say "installing $what: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${flags[@]}" "${missing[@]}" >/dev/null
}
install_missing "Debian packages" -- "${apt_packages[@]}"
# A single-node Slurm for the template tests (scripts/slurm-local.sh); --no-install-recommends
# keeps it to the daemons, the client and MUNGE. libpmix-dev ships the library srun's PMIx plug-in
# loads.
install_missing "Slurm (for the template tests)" --no-install-recommends -- \
  slurmctld slurmd slurm-client munge libpmix-dev

# Every tool the build calls, checked after the install so that a machine without apt (or a package
# that installed no binary) says what is missing instead of failing deep in a crate's build script.
tools_missing=()
for tool in cc c++ make git pkg-config mpicc sbatch curl; do
  command -v "$tool" >/dev/null 2>&1 || tools_missing+=("$tool")
done
command -v cargo >/dev/null 2>&1 || tools_missing+=("cargo (the Rust toolchain, from rustup)")
command -v python3 >/dev/null 2>&1 || tools_missing+=("python3")
if ((${#tools_missing[@]})); then
  say "missing build tools: ${tools_missing[*]}"
  exit 1
fi

# --- 2. Python venv -----------------------------------------------------------------------------
venv_ok() {
  "$venv/bin/python" - "$@" <<'PY' 2>/dev/null
import importlib.metadata as md, sys
for spec in sys.argv[1:]:
    name, version = spec.split("==")
    if md.version(name).split("+")[0] != version:
        sys.exit(1)
PY
}
if venv_ok "${py_packages[@]}"; then
  say "Python venv present: $venv"
else
  say "creating Python venv with ${py_packages[*]} in $venv (about 5 GB, a few minutes)"
  if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv" || { say "python3 -m venv failed: install python3-venv (Debian) and rerun"; exit 1; }
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${py_packages[@]}"
  venv_ok "${py_packages[@]}" || { say "venv check failed after install: $venv"; exit 1; }
fi

# --- 3. links for fixture scripts and .cargo/config.toml -------------------------------------------
torch_dir="$("$venv/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
link() {
  if [[ "$(readlink "$repo/$1" 2>/dev/null)" != "$2" ]]; then
    say "linking $repo/$1 -> $2"
    ln -sfn "$2" "$repo/$1"
  fi
}
link .venv "$venv"
link .libtorch "$torch_dir"
say "done"
