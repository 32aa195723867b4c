#!/usr/bin/env bash
# Where mlx-serve's time goes under the side-by-side load (docs/performance.md).
# Starts the server as scripts/side_by_side.sh does (default pool, no disk store), then runs
# `stress profile` at concurrency 1/4/8: per level, the engine's step profile (ms per step
# by kind and phase, from /metrics) and each thread's CPU time. With PERF=1 and `perf`
# installed (apt install linux-perf), it also samples the server during the concurrency-8
# level and splits the CPU time inside evaluation by what the code does.
# Output: the tables on stdout; JSON, server log and perf data in $OUT
# (default target/profile). Extra server flags: SERVER_FLAGS="--max-batch 4" etc.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-target/profile}
PORT=${PORT:-18310}
mkdir -p "$OUT"
cargo build --release --workspace --quiet
# shellcheck disable=SC2086 # SERVER_FLAGS is a list of flags
target/release/mlx-serve serve --port "$PORT" --no-kv-store \
    ${SERVER_FLAGS:-} > "$OUT/server.log" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2> /dev/null; wait $PID 2> /dev/null || true' EXIT
for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$PORT/health/ready" > /dev/null && break
    kill -0 "$PID" 2> /dev/null || { echo "the server died; see $OUT/server.log" >&2; exit 1; }
    sleep 0.5
done
URL=http://127.0.0.1:$PORT

target/release/stress profile --url "$URL" --pid "$PID" --concurrency 1,4,8 \
    --json "$OUT/profile.json"

[ "${PERF:-0}" = 1 ] || exit 0
command -v perf > /dev/null || { echo "PERF=1 needs perf (apt install linux-perf)" >&2; exit 1; }
echo "## concurrency 8 under perf: CPU samples by what the code does"
target/release/stress profile --url "$URL" --pid "$PID" --concurrency 8 \
    --requests-per-worker 3 > "$OUT/perf-load.txt" &
LOAD=$!
sleep 15 # past the first prefill steps, into steady decoding
perf record -F 499 -p "$PID" -o "$OUT/perf.data" -- sleep 15 2> /dev/null
wait "$LOAD"
perf report -i "$OUT/perf.data" --no-children --sort comm,dso,sym -g none --stdio 2> /dev/null \
    | awk -F'  +' '
        /^#/ || NF < 4 { next }
        {
            share = $2 + 0; comm = $3; dso = $4; sym = $5
            if (sym ~ /sched_yield|__schedule|finish_task_switch|do_syscall|futex|_raw_spin|schedule$/)
                what = "waiting (BLAS threads spinning, yielding)"
            else if (dso ~ /openblas/)
                what = "matmuls (OpenBLAS: packing and kernels)"
            else if (sym ~ /gather|copy_general|ContiguousIterator|concatenate|memcpy|memmove|Concatenate/)
                what = "KV reads and copies (gather, slices, concatenation)"
            else if (sym ~ /softmax|exp<|Softmax|ScaledDotProduct/)
                what = "attention softmax"
            else if (dso ~ /^lib[A-Z]/ || sym ~ /binary_op|unary_op|ternary_op|fmaf|sincos|rms|RMSNorm|rope|RoPE|reduction_op|scatter/)
                what = "elementwise, norms, RoPE, KV writes"
            else if (sym ~ /eval_impl|malloc|free|array::|ArrayDesc|Hashtable|Scheduler|Function_handler|cpu::eval|unlink_chunk|consolidate|memset/)
                what = "MLX graph evaluation and memory"
            else if (dso ~ /mlx-serve/)
                what = "mlx-serve (Rust: engine, HTTP, tokenizer)"
            else
                what = "other"
            total[what] += share; sum += share
        }
        END {
            print "| what | share of samples |"; print "|---|---:|"
            order = "sort -t\"|\" -k3 -rn"
            for (w in total) printf "| %s | %.1f %% |\n", w, 100 * total[w] / sum | order
            close(order)
        }'
