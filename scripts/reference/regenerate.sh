#!/usr/bin/env bash
# Regenerates the Python reference fixtures the Rust tests compare against (`make reference`).
#
# Produces:
#   .deps/reference-venv/                         Python venv (mlx[cpu] 0.32.2, mlx-lm, gguf, ...)
#   .deps/reference/smollm2-135m-instruct-hf/     the default GGUF converted to a float32
#                                                 Hugging Face Llama folder (gguf_to_hf.py)
#   tests/fixtures/smollm2_greedy_reference.json  64-step greedy decodes of 5 prompts with mlx-lm,
#                                                 with per-step top-2 logprob margins
#   tests/fixtures/smollm2_tokenizer_reference.json  tokenizer encodings/decodings and chat
#                                                 template renderings (transformers)
#   .deps/reference/tiny/<variant>/               tiny formula-weight models of every supported
#                                                 family (tiny_models.py)
#   tests/fixtures/tiny_models_reference.json     their mlx-lm logits and greedy decodes
# The fixtures are committed: `make test` never needs Python. Rerun this only when the model,
# MLX or the fixture set changes, and commit the three JSON files.
# Needs: models/SmolLM2-135M-Instruct.Q4_1.gguf (make setup), python3 >= 3.11 with venv,
# PyPI access for the first run. Takes about a minute on 2 cores after the first install.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

[ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ] \
  || { echo "reference: models/SmolLM2-135M-Instruct.Q4_1.gguf is missing; run make setup" >&2; exit 1; }

PY=$(scripts/reference/venv.sh --print-python)
# transformers prints a notice when torch is absent; torch is deliberately not installed.
export TRANSFORMERS_VERBOSITY=error
"$PY" scripts/reference/gguf_to_hf.py
"$PY" scripts/reference/make_fixtures.py
"$PY" scripts/reference/tiny_models.py
