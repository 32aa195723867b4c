# Everything a fresh machine needs is behind two commands:
#   make run   - install what is missing, build, serve the default model
#   make test  - install what is missing, build, run the whole test suite
# Both call scripts/setup.sh first; it is idempotent and silent when nothing is missing.

CARGO ?= cargo

.PHONY: setup build run test lint bench reference stress soak

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --release

run: setup
	$(CARGO) run --release --bin mlx-serve -- serve $(ARGS)

test: setup
	$(CARGO) test --release --workspace

lint: setup
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: setup
	$(CARGO) bench --bench matmul
	scripts/bench_model.sh
	$(CARGO) bench --bench latency_layer
	$(CARGO) bench --bench sampling

# The stress and fault suite at full size (stress/README.md; about an hour on 2 cores), and the
# one-hour soak (SECONDS=... for another length).
stress: setup
	@scripts/stress.sh

soak: setup
	@scripts/stress.sh soak $(SECONDS)

# Regenerates tests/fixtures/*_reference.json with the Python reference pipeline (mlx-lm 0.32
# on the GGUF converted to a float32 HF folder, and on tiny formula-weight models). Needs PyPI
# access the first time; `make test` does not need it (the fixtures are committed).
# See scripts/reference/README.md.
reference: setup
	@scripts/reference/regenerate.sh
