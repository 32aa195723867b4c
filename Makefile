# Everything a fresh machine needs is behind two commands:
#   make run   - install what is missing, build, serve the default model
#   make test  - install what is missing, build, run the whole test suite
# Both call scripts/setup.sh first; it is idempotent and silent when nothing is missing.

CARGO ?= cargo

.PHONY: setup build run test lint bench

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --release

run: setup
	$(CARGO) run --release --bin mlx-serve -- serve $(ARGS)

test: setup
	$(CARGO) test --release --workspace

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: setup
	$(CARGO) bench --bench matmul
