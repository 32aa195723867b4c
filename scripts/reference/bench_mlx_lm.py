#!/usr/bin/env python3
"""Benchmark mlx-lm on the converted SmolLM2-135M-Instruct folder (float32), as the baseline the
Rust engine is compared with.

Measures, on random prompt tokens (fixed seed, no special tokens):
  prefill         tokens/s of one forward pass over a P-token prompt into a fresh KV cache
                  (`mx.eval` of the logits), median of --repeats runs, for each P in --prefill
  decode          single stream: prefill --decode-context tokens, then time --decode-steps greedy
                  steps (one token per forward pass, evaluated each step); also mlx-lm's own
                  `stream_generate` generation_tps on the same prompt
  batched decode  mlx-lm's BatchGenerator (continuous batching) with B equal-length prompts of
                  --batch-context tokens, --batch-steps tokens each, for each B in --batch;
                  aggregate generated tokens/s of the decode phase. Also a plain batched forward
                  (one [B, 1] step over a batched KV cache) for the model's raw throughput.

Prints a JSON summary and a markdown table. Smoke test with tiny sizes:
  .deps/reference-venv/bin/python scripts/reference/bench_mlx_lm.py \\
      --prefill 16,32 --repeats 1 --decode-context 32 --decode-steps 4 --batch 1,2 \\
      --batch-context 16 --batch-steps 4
Full run (defaults): prefill 128/512/1024, decode at 1K context, batch 1/4/8 at 512 context.
On Linux, OpenBLAS is preloaded as in make_fixtures.py (REFERENCE_BLAS=bundled to disable).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gguf_to_hf import DEFAULT_OUT  # noqa: E402
from make_fixtures import blas_in_use, maybe_preload_openblas  # noqa: E402


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def random_prompt(rng, length: int, vocab: int, first_normal: int = 17) -> list[int]:
    return [int(x) for x in rng.integers(first_normal, vocab, size=length)]


def bench_prefill(model, make_cache, prompt, repeats):
    import mlx.core as mx

    x = mx.array(prompt, dtype=mx.int32)[None]
    mx.eval(model(x, cache=make_cache()))  # warm-up
    times = []
    for _ in range(repeats):
        cache = make_cache()
        t0 = time.perf_counter()
        logits = model(x, cache=cache)
        mx.eval(logits)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"tokens": len(prompt), "seconds_median": med, "tokens_per_s": len(prompt) / med,
            "runs": len(times)}


def bench_decode(model, make_cache, prompt, steps):
    import mlx.core as mx

    cache = make_cache()
    t0 = time.perf_counter()
    logits = model(mx.array(prompt, dtype=mx.int32)[None], cache=cache)
    token = mx.argmax(logits[0, -1])
    mx.eval(token)
    prefill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        logits = model(token.reshape(1, 1), cache=cache)
        token = mx.argmax(logits[0, -1])
        mx.eval(token)
    decode_s = time.perf_counter() - t0
    return {"context": len(prompt), "steps": steps, "prefill_seconds": prefill_s,
            "decode_seconds": decode_s, "tokens_per_s": steps / decode_s,
            "ms_per_token": 1000 * decode_s / steps}


def bench_stream_generate(model, tokenizer, prompt, steps):
    from mlx_lm import stream_generate

    last = None
    for last in stream_generate(model, tokenizer, prompt, max_tokens=steps):
        pass
    return {"context": len(prompt), "generation_tokens": last.generation_tokens,
            "generation_tps": last.generation_tps, "prompt_tps": last.prompt_tps}


def bench_batch_generator(model, prompts, steps):
    import mlx.core as mx
    from mlx_lm.generate import BatchGenerator

    batch = len(prompts)
    gen = BatchGenerator(model, max_tokens=steps, stop_tokens=None,
                         completion_batch_size=batch, prefill_batch_size=batch)
    uids = gen.insert(prompts, [steps] * batch)
    started, finished, tokens = set(), set(), 0
    t_prefill = time.perf_counter()
    # Prompt phase: until every sequence has produced its first token.
    while len(started) < batch:
        _, responses = gen.next()
        for r in responses:
            started.add(r.uid)
            if r.finish_reason is not None:
                finished.add(r.uid)
    prefill_s = time.perf_counter() - t_prefill
    t0 = time.perf_counter()
    with gen.stats() as stats:
        while len(finished) < batch:
            _, responses = gen.next()
            for r in responses:
                tokens += 1
                if r.finish_reason is not None:
                    finished.add(r.uid)
    wall = time.perf_counter() - t0
    gen.close()
    assert set(uids) == finished
    mx.clear_cache()
    return {"batch": batch, "context": len(prompts[0]), "steps": steps,
            "prefill_seconds": prefill_s, "decode_tokens": tokens, "decode_seconds": wall,
            "tokens_per_s": tokens / wall if wall > 0 else 0.0,
            "per_stream_tokens_per_s": tokens / wall / batch if wall > 0 else 0.0,
            "mlx_lm_decode_tps": stats.decode_tps}


def bench_batched_forward(model, make_cache, prompts, steps):
    import mlx.core as mx

    batch = len(prompts)
    cache = make_cache()
    logits = model(mx.array(prompts, dtype=mx.int32), cache=cache)
    tokens = mx.argmax(logits[:, -1], axis=-1)
    mx.eval(tokens)
    t0 = time.perf_counter()
    for _ in range(steps):
        logits = model(tokens[:, None], cache=cache)
        tokens = mx.argmax(logits[:, -1], axis=-1)
        mx.eval(tokens)
    wall = time.perf_counter() - t0
    mx.clear_cache()
    return {"batch": batch, "context": len(prompts[0]), "steps": steps, "decode_seconds": wall,
            "tokens_per_s": batch * steps / wall, "ms_per_step": 1000 * wall / steps}


def markdown(summary) -> str:
    lines = ["| measurement | setting | tokens/s |", "|---|---|---:|"]
    for r in summary["prefill"]:
        lines.append(f"| prefill | {r['tokens']} prompt tokens (median of {r['runs']}) | {r['tokens_per_s']:.1f} |")
    d = summary["decode"]
    lines.append(f"| decode, 1 stream | context {d['context']}, {d['steps']} steps "
                 f"({d['ms_per_token']:.1f} ms/token) | {d['tokens_per_s']:.1f} |")
    s = summary["stream_generate"]
    lines.append(f"| decode, mlx-lm stream_generate | context {s['context']}, "
                 f"{s['generation_tokens']} tokens | {s['generation_tps']:.1f} |")
    for r in summary["batch_generator"]:
        lines.append(f"| batched decode, BatchGenerator | batch {r['batch']}, context {r['context']}, "
                     f"{r['steps']} steps ({r['per_stream_tokens_per_s']:.1f}/stream) | {r['tokens_per_s']:.1f} |")
    for r in summary["batched_forward"]:
        lines.append(f"| batched decode, plain forward | batch {r['batch']}, context {r['context']}, "
                     f"{r['steps']} steps ({r['ms_per_step']:.1f} ms/step) | {r['tokens_per_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    maybe_preload_openblas()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--prefill", type=ints, default=[128, 512, 1024], help="prompt lengths")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--decode-context", type=int, default=1024)
    ap.add_argument("--decode-steps", type=int, default=64)
    ap.add_argument("--batch", type=ints, default=[1, 4, 8], help="batch sizes")
    ap.add_argument("--batch-context", type=int, default=512)
    ap.add_argument("--batch-steps", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out", type=Path, help="also write the JSON summary here")
    args = ap.parse_args()

    import mlx.core as mx
    import mlx_lm
    import numpy as np
    from mlx_lm import load
    from mlx_lm.models.cache import make_prompt_cache

    mx.set_default_device(mx.cpu)
    model, tokenizer = load(str(args.model))
    vocab = json.loads((args.model / "config.json").read_text())["vocab_size"]
    rng = np.random.default_rng(args.seed)

    def make_cache():
        return make_prompt_cache(model)

    summary = {
        "model": str(args.model.name),
        "dtype": "float32",
        "mlx_version": mx.__version__,
        "mlx_lm_version": mlx_lm.__version__,
        "device": str(mx.default_device()),
        "blas": blas_in_use(),
        "machine": f"{platform.system()} {platform.machine()}",
        "command": " ".join(["scripts/reference/bench_mlx_lm.py"] + sys.argv[1:]),
    }
    summary["prefill"] = [bench_prefill(model, make_cache, random_prompt(rng, n, vocab), args.repeats)
                          for n in args.prefill]
    decode_prompt = random_prompt(rng, args.decode_context, vocab)
    summary["decode"] = bench_decode(model, make_cache, decode_prompt, args.decode_steps)
    summary["stream_generate"] = bench_stream_generate(model, tokenizer, decode_prompt, args.decode_steps)
    summary["batch_generator"] = []
    summary["batched_forward"] = []
    for b in args.batch:
        prompts = [random_prompt(rng, args.batch_context, vocab) for _ in range(b)]
        summary["batch_generator"].append(bench_batch_generator(model, prompts, args.batch_steps))
        summary["batched_forward"].append(bench_batched_forward(model, make_cache, prompts, args.batch_steps))

    text = json.dumps(summary, indent=2)
    print(text)
    print()
    print(markdown(summary))
    if args.json_out:
        args.json_out.write_text(text + "\n")


if __name__ == "__main__":
    main()
