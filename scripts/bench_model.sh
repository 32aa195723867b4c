#!/usr/bin/env bash
# Forward-step speed of mlx-serve next to mlx-lm, same model (SmolLM2-135M-Instruct),
# same f32 weights, same MLX 0.32.2, OpenBLAS and its kernels, one after the other in one run:
#   prefill tokens/s at 128/512/1024 prompt tokens, single-stream decode at 1K context,
#   batched decode throughput at batch 1/4/8 (512-token contexts).
# Needs the reference environment (created on first use, see scripts/reference/README.md).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${BENCH_OUT:-target/bench-model}
mkdir -p "$OUT"

scripts/setup.sh
scripts/reference/venv.sh
PY=.deps/reference-venv/bin/python
[ -f .deps/reference/smollm2-135m-instruct-hf/model.safetensors ] \
  || "$PY" scripts/reference/gguf_to_hf.py

echo "== mlx-serve (cargo bench --bench model_step)" >&2
cargo bench --bench model_step > "$OUT/mlx_serve.txt" 2>&1 \
  || { tail -n 30 "$OUT/mlx_serve.txt" >&2; echo "cargo bench failed" >&2; exit 1; }
grep -E '^(blas kernels|prefill|decode|batched)|time:|thrpt:' "$OUT/mlx_serve.txt"

# mlx-lm on the OpenBLAS kernels ours ran (docs/mlx-runtime.md).
CORE=$(awk '/^blas kernels:/ {print $3; exit}' "$OUT/mlx_serve.txt")
echo "== mlx-lm baseline (OPENBLAS_CORETYPE=${CORE:?no blas kernels line in $OUT/mlx_serve.txt})" >&2
OPENBLAS_CORETYPE=$CORE "$PY" scripts/reference/bench_mlx_lm.py --json-out "$OUT/mlx_lm.json" \
  | tee "$OUT/mlx_lm.txt"
echo "results in $OUT" >&2
