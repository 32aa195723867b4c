#!/usr/bin/env bash
# mlx-serve beside mlx-lm's server (mlx_lm.server 0.32.2) on this machine, with the same
# weights (the default GGUF: ours loads it with f32 weights, mlx-lm loads it converted to a
# float32 Hugging Face folder), OpenBLAS for both (linked by ours, preloaded for Python,
# with the kernels ours runs) and the same load: `stress compare` at concurrency 1/4/8/16
# (3 runs each, medians) and its prompt-cache probe, then the probe again after a restart
# of each server.
# Output: the tables on stdout; JSON and server logs in $OUT (default target/side-by-side).
# Needs the reference venv (scripts/reference/venv.sh installs it; PyPI the first time).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-target/side-by-side}
mkdir -p "$OUT"
PY=$(scripts/reference/venv.sh --print-python)
HF=.deps/reference/smollm2-135m-instruct-hf
[ -f "$HF/config.json" ] || TRANSFORMERS_VERBOSITY=error "$PY" scripts/reference/gguf_to_hf.py
cargo build --release --workspace --quiet
OPENBLAS=$(ldconfig -p | awk '/libopenblas\.so\.0 /{print $NF; exit}')
[ -n "$OPENBLAS" ] || { echo "libopenblas.so.0 not found (make setup installs it)" >&2; exit 1; }

PID=
wait_ready() {
    for _ in $(seq 600); do
        curl -sf "$1" > /dev/null && return 0
        kill -0 "$PID" 2> /dev/null || { echo "the server died; see $OUT" >&2; exit 1; }
        sleep 0.5
    done
    echo "the server did not get ready; see $OUT" >&2; exit 1
}
start() {
    case $1 in
        mlx-serve)
            target/release/mlx-serve serve --port 18300 \
                --kv-store-dir "$OUT/kv" > "$OUT/mlx-serve.log" 2>&1 &
            PID=$!; URL=http://127.0.0.1:18300; MODEL=SmolLM2-135M-Instruct.Q4_1
            wait_ready "$URL/health/ready" ;;
        mlx-lm)
            # The same OpenBLAS kernels as ours, which may have chosen them over OpenBLAS's
            # own fallback (docs/mlx-runtime.md).
            CORE=$(awk '/^blas kernels:/ {print $3; exit}' "$OUT/mlx-serve.log")
            OPENBLAS_CORETYPE=${CORE:?no blas kernels line in $OUT/mlx-serve.log} \
            LD_PRELOAD=$OPENBLAS "$PY" -m mlx_lm.server --model "$HF" --port 18301 \
                > "$OUT/mlx-lm.log" 2>&1 &
            PID=$!; URL=http://127.0.0.1:18301; MODEL=$HF
            wait_ready "$URL/v1/models" ;;
    esac
}
stop() { kill -TERM "$PID"; wait "$PID" || true; }

rm -rf "$OUT/kv"
for server in mlx-serve mlx-lm; do
    start $server
    target/release/stress compare --url "$URL" --pid "$PID" --model "$MODEL" \
        --label "$server" --json "$OUT/$server.json"
    stop
    start $server
    target/release/stress compare --url "$URL" --model "$MODEL" --probe-only \
        --label "$server after a restart" --json "$OUT/$server-restart.json"
    stop
done
rm -rf "$OUT/kv"
