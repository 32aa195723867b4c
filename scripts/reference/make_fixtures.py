#!/usr/bin/env python3
"""Produce the reference fixtures the Rust tests compare against, with mlx-lm in float32.

Input: the Hugging Face folder gguf_to_hf.py wrote (default
`.deps/reference/smollm2-135m-instruct-hf/`). Output (committed to the repository):

  tests/fixtures/smollm2_greedy_reference.json
      5 prompts (3 chat, 2 raw). For each: the prompt ids, then 64 greedy steps decoded with
      mlx-lm's Llama model and its KV cache (whole prompt in one forward pass, then one token
      per step), never stopping at EOS. Per step: the chosen id, the runner-up id and the top-2
      log-probability margin (float32 log_softmax). Also the decoded text (special tokens kept)
      and the first step that produced an EOS id (or null).
  tests/fixtures/smollm2_tokenizer_reference.json
      encodings of ~20 strings (special tokens, unicode, code, numbers, whitespace), a few
      decodings (skip_special_tokens, a split UTF-8 sequence), and chat-template renderings
      with their ids, all from transformers loading the converted tokenizer.

Run through scripts/reference/regenerate.sh, or:
  .deps/reference-venv/bin/python scripts/reference/make_fixtures.py [--model DIR] [--steps N]

On Linux the script re-executes itself with Debian's OpenBLAS preloaded (the Rust binaries link
it the same way), so MLX's f32 matmuls run on the BLAS the Rust tests use; set
REFERENCE_BLAS=bundled to keep the wheel's reference BLAS. The BLAS used is recorded.
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gguf_to_hf import (  # noqa: E402  (same directory)
    DEFAULT_GGUF,
    DEFAULT_OUT,
    EXPECTED_SHA256,
    TOKENIZER_TEST_STRINGS,
    check_sha256,
)

FIXTURES = ROOT / "tests" / "fixtures"
GREEDY_FILE = FIXTURES / "smollm2_greedy_reference.json"
TOKENIZER_FILE = FIXTURES / "smollm2_tokenizer_reference.json"

GREEDY_PROMPTS = [
    {"name": "chat_robot_story", "kind": "chat",
     "messages": [{"role": "user", "content": "Write a short story about a robot learning to paint."}]},
    {"name": "chat_bicycle", "kind": "chat",
     "messages": [{"role": "user", "content": "Explain step by step how a bicycle works."}]},
    {"name": "chat_multi_turn", "kind": "chat",
     "messages": [
         {"role": "system", "content": "You are a knowledgeable travel guide. Answer in detail."},
         {"role": "user", "content": "What is the capital of France?"},
         {"role": "assistant", "content": "The capital of France is Paris."},
         {"role": "user", "content": "What should I visit there in three days? Give me a plan."},
     ]},
    {"name": "raw_roman_empire", "kind": "raw", "text": "The history of the Roman Empire"},
    {"name": "raw_fibonacci", "kind": "raw", "text": "def fibonacci(n):"},
]

CHAT_CASES = [
    {"messages": [{"role": "user", "content": "Hello! Who are you?"}],
     "add_generation_prompt": True},
    {"messages": [{"role": "system", "content": "You are a terse assistant."},
                  {"role": "user", "content": "List three primes."}],
     "add_generation_prompt": True},
    {"messages": [{"role": "system", "content": "You are a terse assistant."},
                  {"role": "user", "content": "What is 2+2?"},
                  {"role": "assistant", "content": "4"},
                  {"role": "user", "content": "And 3+3?"}],
     "add_generation_prompt": True},
    {"messages": [{"role": "system", "content": "You are a terse assistant."},
                  {"role": "user", "content": "Say hi."},
                  {"role": "assistant", "content": "Hi!"}],
     "add_generation_prompt": False},
]

SANITY_QUESTION = "What is the capital of France?"


# --------------------------------------------------------------------------- BLAS

def maybe_preload_openblas() -> None:
    if platform.system() != "Linux" or os.environ.get("REFERENCE_BLAS") == "bundled":
        return
    if "openblas" in os.environ.get("LD_PRELOAD", ""):
        return
    lib = ctypes.util.find_library("openblas")
    if lib is None:
        print("note: OpenBLAS not found; MLX uses the wheel's bundled reference BLAS (slow)",
              file=sys.stderr)
        return
    env = dict(os.environ)
    env["LD_PRELOAD"] = (lib + " " + env.get("LD_PRELOAD", "")).strip()
    os.execve(sys.executable, [sys.executable] + sys.argv, env)


def blas_in_use() -> str:
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "platform default"
    if "libopenblas" in maps:
        return "openblas (LD_PRELOAD " + os.environ.get("LD_PRELOAD", "") + ")"
    return "mlx wheel bundled BLAS"


# --------------------------------------------------------------------------- JSON

def to_json(value, indent: int = 0, step: int = 1) -> str:
    """Deterministic JSON: dicts one key per line in insertion order, lists of scalars on one
    line, non-ASCII kept as is."""
    pad, inner = " " * indent, " " * (indent + step)
    if isinstance(value, dict):
        if not value:
            return "{}"
        if all(not isinstance(v, (dict, list, tuple)) for v in value.values()):
            flat = "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {json.dumps(v, ensure_ascii=False)}"
                                   for k, v in value.items()) + "}"
            if len(flat) <= 160:  # small records such as chat messages stay on one line
                return flat
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {to_json(v, indent + step, step)}"
                 for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        if all(not isinstance(v, (dict, list, tuple)) for v in value):
            return "[" + ",".join(json.dumps(v, ensure_ascii=False) for v in value) + "]"
        items = [inner + to_json(v, indent + step, step) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value, ensure_ascii=False)


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = to_json(value) + "\n"
    json.loads(text)  # must parse back
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} "
          f"({len(text.encode('utf-8')):,} bytes)")


# --------------------------------------------------------------------------- model

def greedy_decode(model, prompt_ids, steps):
    """Prefill the whole prompt in one call, then feed one token per step through mlx-lm's
    KV cache. Never stops at EOS. Returns ids, runner-up ids, top-2 logprob margins and the
    first step's float32 logits (numpy)."""
    import mlx.core as mx
    import numpy as np
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    logits = model(mx.array(prompt_ids, dtype=mx.int32)[None], cache=cache)
    first = np.array(logits[0, -1].astype(mx.float32), dtype=np.float32)
    out, runner_up, margins = [], [], []
    for _ in range(steps):
        last = logits[0, -1].astype(mx.float32)
        logprobs = last - mx.logsumexp(last, keepdims=True)
        chosen = int(mx.argmax(logprobs).item())  # what mlx-lm's greedy sampler picks
        lp = np.array(logprobs, dtype=np.float32)
        order = np.argsort(-lp, kind="stable")
        second = int(order[1]) if int(order[0]) == chosen else int(order[0])
        out.append(chosen)
        runner_up.append(second)
        margins.append(float(lp[chosen] - lp[second]))
        logits = model(mx.array([[chosen]], dtype=mx.int32), cache=cache)
    return out, runner_up, margins, first


def greedy(model, prompt_ids, steps, eos_ids):
    """`greedy_decode`, plus the step of the first EOS id (or None)."""
    out, runner_up, margins, _ = greedy_decode(model, prompt_ids, steps)
    first_eos = next((i for i, t in enumerate(out) if t in eos_ids), None)
    return out, runner_up, margins, first_eos


def check_float32(model) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    dtypes = {str(v.dtype) for _, v in tree_flatten(model.parameters())}
    if dtypes != {str(mx.float32)}:
        sys.exit(f"error: model parameters are {dtypes}, expected float32 only")


# --------------------------------------------------------------------------- main

def main() -> None:
    maybe_preload_openblas()

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_OUT, help="converted HF folder")
    ap.add_argument("--gguf", type=Path, default=DEFAULT_GGUF)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--out-dir", type=Path, default=FIXTURES)
    args = ap.parse_args()

    import mlx.core as mx
    import mlx_lm
    import transformers
    from mlx_lm import load

    digest = check_sha256(args.gguf)
    source = json.loads((args.model / "source.json").read_text())
    if source.get("gguf_sha256") != digest:
        sys.exit(f"error: {args.model} was converted from a GGUF with sha256 "
                 f"{source.get('gguf_sha256')}; rerun gguf_to_hf.py")

    mx.set_default_device(mx.cpu)
    model, tokenizer = load(str(args.model))
    check_float32(model)
    hf_tok = tokenizer._tokenizer if hasattr(tokenizer, "_tokenizer") else tokenizer
    blas = blas_in_use()
    print(f"mlx {mx.__version__}, mlx-lm {mlx_lm.__version__}, transformers "
          f"{transformers.__version__}, device {mx.default_device()}, BLAS: {blas}")

    config = json.loads((args.model / "config.json").read_text())
    endoftext = hf_tok.convert_tokens_to_ids("<|endoftext|>")
    im_end = hf_tok.convert_tokens_to_ids("<|im_end|>")
    eos_ids = sorted({config["eos_token_id"], im_end, endoftext})
    print(f"EOS ids: {eos_ids} (<|im_end|>={im_end}, <|endoftext|>={endoftext})")

    def chat_ids(messages, add_generation_prompt=True):
        rendered = hf_tok.apply_chat_template(messages, tokenize=False,
                                              add_generation_prompt=add_generation_prompt)
        return rendered, hf_tok.encode(rendered, add_special_tokens=False)

    # ---- sanity check of the conversion: the model knows the capital of France
    _, ids = chat_ids([{"role": "user", "content": SANITY_QUESTION}])
    answer_ids, _, _, _ = greedy(model, ids, 12, eos_ids)
    answer = hf_tok.decode(answer_ids, skip_special_tokens=False)
    print(f"sanity: {SANITY_QUESTION!r} -> {answer!r}")
    if "Paris" not in answer:
        sys.exit("error: the converted model does not answer 'Paris'; the conversion is broken")

    command = " ".join(["scripts/reference/make_fixtures.py"] + sys.argv[1:])
    common = {
        "gguf_sha256": digest,
        "mlx_version": mx.__version__,
        "mlx_lm_version": mlx_lm.__version__,
        "transformers_version": transformers.__version__,
        "dtype": "float32",
        "generated_by": f"{command} (regenerate all fixtures: make reference)",
    }

    # ---- greedy reference
    prompts = []
    for p in GREEDY_PROMPTS:
        if p["kind"] == "chat":
            _, prompt_ids = chat_ids(p["messages"])
        else:
            prompt_ids = hf_tok.encode(p["text"], add_special_tokens=False)
        ids, runner_up, margins, first_eos = greedy(model, prompt_ids, args.steps, eos_ids)
        entry = {"name": p["name"], "kind": p["kind"]}
        entry["messages" if p["kind"] == "chat" else "text"] = p.get("messages", p.get("text"))
        entry.update({
            "prompt_ids": prompt_ids,
            "output_ids": ids,
            "margins": [round(m, 6) for m in margins],
            "runner_up_ids": runner_up,
            "first_eos_step": first_eos,
            "text": hf_tok.decode(ids, skip_special_tokens=False),
        })
        prompts.append(entry)
    greedy_doc = dict(common)
    greedy_doc.update({
        "blas": blas.split(" (")[0],
        "model": "SmolLM2-135M-Instruct Q4_1 GGUF dequantized to float32 (scripts/reference/gguf_to_hf.py)",
        "steps": args.steps,
        "eos_ids": eos_ids,
        "notes": "Greedy argmax over float32 log_softmax; the whole prompt is prefilled in one "
                 "forward pass, then one token per step with mlx-lm's KV cache; decoding never "
                 "stops at EOS. margins[i] = logprob(output_ids[i]) - logprob(runner_up_ids[i]). "
                 "text is decoded with special tokens kept.",
        "prompts": prompts,
    })

    # ---- tokenizer reference
    encodings = []
    for s in TOKENIZER_TEST_STRINGS:
        plain = hf_tok.encode(s, add_special_tokens=False)
        with_special = hf_tok.encode(s, add_special_tokens=True)
        entry = {"text": s, "ids": plain}
        if with_special != plain:
            entry["ids_add_special_tokens"] = with_special
        encodings.append(entry)
    add_special_differs = any("ids_add_special_tokens" in e for e in encodings)

    special_case = hf_tok.encode("<|im_start|>user\nhi<|im_end|>\n", add_special_tokens=False)
    emoji_ids = hf_tok.encode("👩‍💻", add_special_tokens=False)
    decodings = [
        {"ids": special_case, "skip_special_tokens": False,
         "text": hf_tok.decode(special_case, skip_special_tokens=False)},
        {"ids": special_case, "skip_special_tokens": True,
         "text": hf_tok.decode(special_case, skip_special_tokens=True)},
        {"ids": emoji_ids, "skip_special_tokens": False,
         "text": hf_tok.decode(emoji_ids, skip_special_tokens=False)},
        {"ids": emoji_ids[:1], "skip_special_tokens": False,
         "text": hf_tok.decode(emoji_ids[:1], skip_special_tokens=False)},
    ]

    chat = []
    for case in CHAT_CASES:
        rendered, ids = chat_ids(case["messages"], case["add_generation_prompt"])
        chat.append({"messages": case["messages"], "add_generation_prompt": case["add_generation_prompt"],
                     "rendered": rendered, "ids": ids})

    tok_doc = dict(common)
    del tok_doc["mlx_version"], tok_doc["mlx_lm_version"], tok_doc["dtype"]
    tok_doc.update({
        "tokenizer": "tokenizer.json rebuilt from the GGUF metadata by scripts/reference/gguf_to_hf.py "
                     "(byte-level BPE; pre-tokenizer Digits(individual_digits) + ByteLevel(regex); "
                     "17 control tokens as special added tokens), loaded with transformers "
                     + type(hf_tok).__name__,
        "special_tokens": {t: hf_tok.convert_tokens_to_ids(t) for t in
                           ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]},
        "bos_token": hf_tok.bos_token,
        "eos_token": hf_tok.eos_token,
        "add_bos_token": False,
        "add_special_tokens_changes_ids": add_special_differs,
        "chat_renderer": "transformers apply_chat_template(tokenize=False) with the GGUF's "
                         "tokenizer.chat_template; ids = encode(rendered, add_special_tokens=False)",
        "encodings": encodings,
        "decodings": decodings,
        "chat": chat,
    })

    write_json(args.out_dir / GREEDY_FILE.name, greedy_doc)
    write_json(args.out_dir / TOKENIZER_FILE.name, tok_doc)

    # ---- summary
    print("\ngreedy reference:")
    for e in prompts:
        near = [(i, m) for i, m in enumerate(e["margins"]) if m < 0.02]
        print(f"- {e['name']}: prompt {len(e['prompt_ids'])} tokens, first ids {e['output_ids'][:10]}, "
              f"min margin {min(e['margins']):.5f} at step {e['margins'].index(min(e['margins']))}, "
              f"first EOS step {e['first_eos_step']}, near-ties (<0.02) {near}")
        print(f"  text: {e['text'][:160]!r}")
    print(f"\ntokenizer reference: {len(encodings)} encodings, {len(decodings)} decodings, "
          f"{len(chat)} chat cases; add_special_tokens=True changes ids: {add_special_differs}")


if __name__ == "__main__":
    main()
