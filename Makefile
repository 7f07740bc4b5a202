# The set-up entry point. `make demo` and `make test` are the README's two commands; both run the
# idempotent set-up first (about a second once everything is installed).
.PHONY: setup build demo test lint gpu-bundle

# mpirun refuses to start as root without these; harmless otherwise.
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1

setup:
	@bash scripts/setup.sh

build: setup
	cargo build --release

# The built-in end-to-end path: what this installation is; the demo (16-shot splits of the demo
# task, zero-shot, MeZO, then Adam fine-tuning of a tiny RoBERTa, with dev accuracy as it goes);
# and every collective plus a collective HDF5 write as two MPI ranks.
demo: build
	target/release/mezo info
	target/release/mezo demo --out mezo-demo
	@scratch=$$(mktemp -d) && \
	  mpirun --oversubscribe -np 2 target/release/mezo check --scratch "$$scratch"; \
	  status=$$?; rm -rf "$$scratch"; exit $$status

lint: setup
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

# Starting Slurm's daemons needs root.
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

# The whole test suite, as CI runs it: cargo's tests (no Python needed), then the checks that
# need transformers: models mezo saves load back in transformers with the same outputs; and
# LM-Kernel-FT's .pt kernel files convert to kernel files that mezo solves as the reference does;
# MeZO runs with the reference stream give, bit for bit, the weights of MeZO's PyTorch step;
# then the sbatch templates on a single-node Slurm started here (and stopped again, unless it was
# running before).
test: lint
	cargo test
	.venv/bin/python scripts/check_transformers_roundtrip.py target/debug/mezo
	.venv/bin/python scripts/check_kernel_converter.py target/debug/mezo
	.venv/bin/python scripts/check_reference_replay.py target/debug/mezo
	@if bash scripts/slurm-local.sh status >/dev/null 2>&1; then started=""; else \
	  $(SUDO) bash scripts/slurm-local.sh start || exit 1; started=yes; fi; \
	cargo test --test slurm -- --ignored; status=$$?; \
	if [ -n "$$started" ]; then $(SUDO) bash scripts/slurm-local.sh stop; fi; exit $$status

# Binary + shared libraries for a GPU node without a Rust toolchain (see benches/gpu-check.sh).
gpu-bundle: build
	bash benches/gpu-check.sh bundle
