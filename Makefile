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

# The built-in end-to-end path: what this installation is; every collective, a collective HDF5
# write and the GPU checks, as one process and as two MPI ranks; k-shot splits of the built-in
# demo task, their prompt encoding, and a 2-rank zero-shot evaluation of a tiny random RoBERTa.
demo: build
	target/release/mezo info
	@scratch=$$(mktemp -d) && \
	  target/release/mezo check --scratch "$$scratch" && \
	  mpirun --oversubscribe -np 2 target/release/mezo info --all-ranks && \
	  mpirun --oversubscribe -np 2 target/release/mezo check --scratch "$$scratch" && \
	  target/release/mezo kshot --data-dir data/demo/original --out "$$scratch" --task SST-2 --k 16 --mode k-shot-1k-test && \
	  target/release/mezo encode --task sst-2 --data-dir "$$scratch/k-shot-1k-test/SST-2/16-42" \
	    --tokenizer tests/fixtures/tokenizer/tokenizer.json --limit 3 && \
	  mpirun --oversubscribe -np 2 target/release/mezo eval --task sst-2 \
	    --data-dir "$$scratch/k-shot-1k-test/SST-2/16-42" --model tests/fixtures/models/roberta; \
	  status=$$?; rm -rf "$$scratch"; exit $$status

lint: setup
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

# The whole test suite, as CI runs it: cargo's tests (no Python needed), then the checks that
# need transformers: models mezo saves load back in transformers with the same outputs.
test: lint
	cargo test
	.venv/bin/python scripts/check_transformers_roundtrip.py target/debug/mezo

# Binary + shared libraries for a GPU node without a Rust toolchain (see benches/gpu-check.sh).
gpu-bundle: build
	bash benches/gpu-check.sh bundle
