#!/usr/bin/env python3
"""Tiny models with formula weights, run through mlx-lm's own architectures, as a reference
for every model family the Rust forward pass claims (tests/tiny_models.rs).

Writes `.deps/reference/tiny/<variant>/` (config.json + model.safetensors) and
`tests/fixtures/tiny_models_reference.json`. Each variant is a 2-layer model (hidden 64,
4 heads, 2 KV heads, vocabulary 128) whose every parameter is defined by a formula, so the
Rust test rebuilds the same folder bit for bit without Python; a SHA-256 of the tensors (the
"weight digest", see below) is recorded here and asserted there, so any drift between the
two implementations of the formula fails loudly instead of comparing different models.

Variants (mlx-lm module that runs them in brackets):
  llama_untied   llama, separate lm_head.weight                          [mlx_lm.models.llama]
  llama3_scaled  llama, tied, rope_scaling llama3 (factor 8, original context 64: of the 8
                 RoPE frequencies one is kept, two interpolated, five scaled)
  llama_bias     llama with attention_bias: q/k/v and o_proj biases, tied [mlx_lm.models.llama]
  qwen2          q/k/v biases, untied                                     [mlx_lm.models.qwen2]
  qwen3          head_dim 32 (!= hidden / heads), per-head q/k RMSNorm, tied
                                                                          [mlx_lm.models.qwen3]
  mistral        model_type mistral (mlx-lm maps it to llama), 8 heads of 8 over 2 KV heads,
                 untied, no sliding window
  qwen3_q4       qwen3 as an MLX-community quantized checkpoint: every projection and the
                 embedding 4-bit, group 32, except model.layers.1.mlp.down_proj (8-bit,
                 group 64, a per-module override in `quantization`)

Weight formula (no random generator, no libm: integer hashing and IEEE +,-,*,/,sqrt only, so
Python and Rust agree bit for bit on every platform):
  name       = "<variant>/<tensor name>", e.g. "qwen2/model.layers.0.self_attn.q_proj.bias"
  seed(name) = FNV-1a 64 of name (UTF-8)
  h(name, i) = splitmix64_mix(seed + (i + 1) * 0x9E3779B97F4A7C15)    (wrapping u64)
  v(name, i) = 2 * (h >> 11) / 2^53 - 1                                (float64 in [-1, 1))
  dense tensors, float64 then rounded to float32, i = flat row-major index:
    embed_tokens                  0.25 * v
    lm_head                       v
    q/k/v/o/gate/up/down weight   v * sqrt(3 / in_features)
    q/k/v bias                    0.5 * v
    every norm weight             1 + 0.2 * v
  quantized linear `p` ([out, in], bits b, group g; range r = 0.5 for the embedding, 2 for
  lm_head, 2 * sqrt(3 / in) for projections; MLX affine layout; hashed names are
  "<variant>/p.weight" etc.):
    q[i]      = h(p.weight, i) >> (64 - b)                         integers in [0, 2^b - 1]
    p.weight  = q packed 32/b per uint32, element k of a word at bits [k*b, (k+1)*b)
    p.scales  = r / (2^b - 1) * (0.75 + 0.25 * v(p.scales, j))           (j = group index)
    p.biases  = -(2^b - 1) / 2 * scale_f64 + 0.05 * r * v(p.biases, j)   (scale_f64 = the
                scales formula before rounding to float32)
  (The sin(a * i + b) formula first suggested makes every [out, in] matrix rank 2 — each row
  a phase shift of one sinusoid — and depends on libm; hashing gives full-rank weights. The
  embedding is small next to the layers' outputs so that tied models do not just repeat their
  input token.)

Weight digest: SHA-256 over the tensors in name order of
  "<name> <dtype> <dim>x<dim>...\\n" followed by the tensor's little-endian bytes.

Reference run, per variant and per prompt (token ids, no tokenizer): mlx-lm's model
(`mlx_lm.utils.load_model`) prefills the whole prompt in one call, then decodes one token per
step through its KV cache, 16 greedy steps. Recorded: output ids, runner-up ids, top-2
log-probability margins, and the float32 logits after the prefill (8 significant digits).
Also mlx-lm's RoPE periods of the llama3_scaled variant.

Run through scripts/reference/regenerate.sh (`make reference`), or:
  .deps/reference-venv/bin/python scripts/reference/tiny_models.py
Like make_fixtures.py it preloads Debian's OpenBLAS on Linux (the Rust tests link it).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_fixtures import (  # noqa: E402  (same directory)
    ROOT,
    blas_in_use,
    greedy_decode,
    maybe_preload_openblas,
    write_json,
)

OUT_DIR = ROOT / ".deps" / "reference" / "tiny"
FIXTURE = ROOT / "tests" / "fixtures" / "tiny_models_reference.json"
STEPS = 16

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15

BASE_CONFIG = {
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}


def variant_configs() -> list[tuple[str, str, dict]]:
    def config(model_type, architecture, **extra):
        value = {"model_type": model_type, "architectures": [architecture]}
        value.update(BASE_CONFIG)
        value.update(extra)
        return value

    qwen3 = config("qwen3", "Qwen3ForCausalLM", head_dim=32, rms_norm_eps=1e-6,
                   rope_theta=1000000.0, attention_bias=False, tie_word_embeddings=True)
    qwen3_q4 = copy.deepcopy(qwen3)
    qwen3_q4["quantization"] = {
        "group_size": 32,
        "bits": 4,
        "model.layers.1.mlp.down_proj": {"group_size": 64, "bits": 8},
    }
    return [
        ("llama_untied", "Llama, untied embeddings (lm_head.weight), plain RoPE",
         config("llama", "LlamaForCausalLM", rms_norm_eps=1e-5, rope_theta=10000.0,
                tie_word_embeddings=False)),
        ("llama3_scaled", "Llama, tied embeddings, Llama-3 RoPE scaling that keeps, "
         "interpolates and scales different frequencies",
         config("llama", "LlamaForCausalLM", head_dim=16, rms_norm_eps=1e-5,
                rope_theta=10000.0, tie_word_embeddings=True,
                rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 64})),
        ("llama_bias", "Llama with attention_bias: biases on q/k/v and o_proj, tied",
         config("llama", "LlamaForCausalLM", rms_norm_eps=1e-5, rope_theta=10000.0,
                attention_bias=True, tie_word_embeddings=True)),
        ("qwen2", "Qwen2: q/k/v biases, untied embeddings",
         config("qwen2", "Qwen2ForCausalLM", rms_norm_eps=1e-6, rope_theta=1000000.0,
                tie_word_embeddings=False)),
        ("qwen3", "Qwen3: head_dim 32 != hidden/heads, per-head q/k RMSNorm, tied",
         qwen3),
        ("mistral", "Mistral (mlx-lm runs it as llama), untied, no sliding window",
         config("mistral", "MistralForCausalLM", num_attention_heads=8, head_dim=8,
                rms_norm_eps=1e-5, rope_theta=1000000.0, sliding_window=None,
                tie_word_embeddings=False)),
        ("qwen3_q4", "Qwen3 as an MLX-community quantized checkpoint (4-bit group 32, one "
         "module 8-bit group 64)", qwen3_q4),
    ]


PROMPTS = [
    {"name": "short9", "ids": [(5 + 37 * k) % 128 for k in range(9)]},
    {"name": "long23", "ids": [(11 + 53 * k + k * k) % 128 for k in range(23)]},
]


# --------------------------------------------------------------------------- formula

def fnv1a64(text: str) -> int:
    h = 0xCBF29CE484222325
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & MASK64
    return h


def hashes(name: str, count: int) -> np.ndarray:
    """h(name, i) for i in 0..count, as uint64 (numpy wraps on overflow)."""
    seed = np.uint64(fnv1a64(name))
    z = np.arange(1, count + 1, dtype=np.uint64) * np.uint64(GOLDEN) + seed
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hash_scalar(name: str, i: int) -> int:
    """Pure-Python h(name, i): cross-checks the numpy version."""
    z = (fnv1a64(name) + (i + 1) * GOLDEN) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def unit(name: str, count: int) -> np.ndarray:
    """v(name, i): float64 in [-1, 1), exact."""
    return (hashes(name, count) >> np.uint64(11)).astype(np.float64) * (2.0 / 2.0**53) - 1.0


def dense(name: str, shape: tuple[int, ...], kind: str) -> np.ndarray:
    count = math.prod(shape)
    v = unit(name, count)
    if kind == "embedding":
        out = 0.25 * v
    elif kind == "head":
        out = v
    elif kind == "linear":
        out = v * math.sqrt(3.0 / shape[1])
    elif kind == "bias":
        out = 0.5 * v
    elif kind == "norm":
        out = 1.0 + 0.2 * v
    else:
        raise ValueError(kind)
    return out.astype(np.float32).reshape(shape)


def quantized(prefix: str, out_features: int, in_features: int, bits: int, group: int,
              value_range: float) -> dict[str, np.ndarray]:
    levels = (1 << bits) - 1
    q = (hashes(f"{prefix}.weight", out_features * in_features) >> np.uint64(64 - bits))
    q = q.astype(np.uint32).reshape(out_features, in_features)
    per_word = 32 // bits
    words = q.reshape(out_features, in_features // per_word, per_word)
    packed = np.zeros((out_features, in_features // per_word), dtype=np.uint32)
    for k in range(per_word):
        packed |= words[:, :, k] << np.uint32(k * bits)
    groups = out_features * (in_features // group)
    scale = value_range / levels * (0.75 + 0.25 * unit(f"{prefix}.scales", groups))
    bias = -(levels / 2.0) * scale + 0.05 * value_range * unit(f"{prefix}.biases", groups)
    shape = (out_features, in_features // group)
    return {
        ".weight": packed,
        ".scales": scale.astype(np.float32).reshape(shape),
        ".biases": bias.astype(np.float32).reshape(shape),
        "_levels": q,  # for the dequantization self-check, not written
    }


def tensors_for(variant: str, config: dict) -> dict[str, np.ndarray]:
    """Every parameter of a variant, by Hugging Face name, from its name and config."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    vocab = config["vocab_size"]
    model_type = config["model_type"]
    quant = config.get("quantization")
    out: dict[str, np.ndarray] = {}
    checks: list[tuple[str, np.ndarray]] = []

    def vector(name, length, kind):
        out[name] = dense(f"{variant}/{name}", (length,), kind)

    def linear(prefix, out_features, in_features, kind="linear"):
        if quant is None:
            out[f"{prefix}.weight"] = dense(f"{variant}/{prefix}.weight",
                                            (out_features, in_features), kind)
            return
        spec = quant.get(prefix) if isinstance(quant.get(prefix), dict) else quant
        value_range = {"embedding": 0.5, "head": 2.0}.get(kind) or 2.0 * math.sqrt(
            3.0 / in_features)
        parts = quantized(f"{variant}/{prefix}", out_features, in_features, spec["bits"],
                          spec["group_size"], value_range)
        levels = parts.pop("_levels")
        for suffix, tensor in parts.items():
            out[f"{prefix}{suffix}"] = tensor
        checks.append((prefix, levels))

    linear("model.embed_tokens", vocab, hidden, "embedding")
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        vector(f"{p}.input_layernorm.weight", hidden, "norm")
        vector(f"{p}.post_attention_layernorm.weight", hidden, "norm")
        a = f"{p}.self_attn"
        for name, rows in [("q_proj", heads * head_dim), ("k_proj", kv_heads * head_dim),
                           ("v_proj", kv_heads * head_dim)]:
            linear(f"{a}.{name}", rows, hidden)
            if model_type == "qwen2" or config.get("attention_bias"):
                vector(f"{a}.{name}.bias", rows, "bias")
        linear(f"{a}.o_proj", hidden, heads * head_dim)
        # Llama-layout attention_bias also biases the output projection; Qwen2 never does.
        if model_type != "qwen2" and config.get("attention_bias"):
            vector(f"{a}.o_proj.bias", hidden, "bias")
        if model_type == "qwen3":
            for name in ["q_norm", "k_norm"]:
                vector(f"{a}.{name}.weight", head_dim, "norm")
        m = f"{p}.mlp"
        linear(f"{m}.gate_proj", inter, hidden)
        linear(f"{m}.up_proj", inter, hidden)
        linear(f"{m}.down_proj", hidden, inter)
    vector("model.norm.weight", hidden, "norm")
    if not config["tie_word_embeddings"]:
        linear("lm_head", vocab, hidden, "head")
    check_dequantization(out, checks)
    return out


def check_dequantization(tensors: dict[str, np.ndarray], checks) -> None:
    """The packing is MLX's: mx.dequantize gives q * scale + bias for every weight."""
    if not checks:
        return
    import mlx.core as mx

    for prefix, levels in checks:
        w, s, b = (tensors[f"{prefix}.{k}"] for k in ("weight", "scales", "biases"))
        group = levels.shape[1] // s.shape[1]
        bits = 32 * w.shape[1] // levels.shape[1]
        got = np.array(mx.dequantize(mx.array(w), mx.array(s), mx.array(b), group_size=group,
                                     bits=bits))
        want = (levels.astype(np.float32).reshape(levels.shape[0], -1, group)
                * s[:, :, None] + b[:, :, None]).reshape(levels.shape)
        if not np.allclose(got, want, rtol=0, atol=1e-6):
            sys.exit(f"error: {prefix}: mx.dequantize disagrees with the packing formula")


def weight_digest(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        dtype = {np.dtype(np.float32): "float32", np.dtype(np.uint32): "uint32"}[t.dtype]
        shape = "x".join(str(d) for d in t.shape)
        h.update(f"{name} {dtype} {shape}\n".encode("utf-8"))
        h.update(np.ascontiguousarray(t).astype(t.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def self_check_formula() -> None:
    name = "model.layers.0.self_attn.q_proj.weight"
    fast = hashes(name, 300)
    for i in [0, 1, 2, 57, 299]:
        if int(fast[i]) != hash_scalar(name, i):
            sys.exit("error: numpy and pure-Python hashes disagree")


# --------------------------------------------------------------------------- reference

def run_reference(model, prompt_ids: list[int]) -> dict:
    ids, runner_up, margins, first = greedy_decode(model, prompt_ids, STEPS)
    return {
        "output_ids": ids,
        "runner_up_ids": runner_up,
        "margins": [round(m, 6) for m in margins],
        "first_logits": [float(f"{float(x):.8g}") for x in first],
    }


def rope_regimes(config: dict) -> list[str] | None:
    scaling = config.get("rope_scaling")
    if not scaling:
        return None
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    original = scaling["original_max_position_embeddings"]
    low, high = original / scaling["low_freq_factor"], original / scaling["high_freq_factor"]
    regimes = []
    for i in range(head_dim // 2):
        wavelen = 2 * math.pi * config["rope_theta"] ** (2 * i / head_dim)
        regimes.append("kept" if wavelen < high else "scaled" if wavelen > low
                       else "interpolated")
    return regimes


def main() -> None:
    maybe_preload_openblas()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR)
    ap.add_argument("--fixture", type=Path, default=FIXTURE)
    args = ap.parse_args()

    import mlx.core as mx
    import mlx_lm
    from mlx_lm.utils import load_model

    mx.set_default_device(mx.cpu)
    self_check_formula()
    blas = blas_in_use()
    print(f"mlx {mx.__version__}, mlx-lm {mlx_lm.__version__}, BLAS: {blas}")

    variants = []
    for name, description, config in variant_configs():
        folder = args.out_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.safetensors"):
            stale.unlink()
        tensors = tensors_for(name, config)
        digest = weight_digest(tensors)
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        mx.save_safetensors(str(folder / "model.safetensors"),
                            {k: mx.array(v) for k, v in tensors.items()},
                            metadata={"format": "mlx"})

        model, _ = load_model(folder)
        quantized_modules = sorted(
            p for p, m in model.named_modules() if type(m).__name__.startswith("Quantized"))
        if "quantization" in config:
            expected = sum(1 for k in tensors if k.endswith(".scales"))
            if len(quantized_modules) != expected:
                sys.exit(f"error: {name}: mlx-lm quantized {len(quantized_modules)} modules, "
                         f"the checkpoint has {expected}")
        entry = {
            "name": name,
            "description": description,
            "mlx_lm_module": type(model).__module__,
            "config": config,
            "weights_sha256": digest,
            "tensor_count": len(tensors),
        }
        regimes = rope_regimes(config)
        if regimes is not None:
            if set(regimes) != {"kept", "interpolated", "scaled"}:
                sys.exit(f"error: {name}: rope scaling regimes {regimes} do not cover all three")
            rope = model.model.layers[0].self_attn.rope
            entry["rope_regimes"] = regimes
            entry["rope_freqs"] = [float(x) for x in np.array(rope._freqs, dtype=np.float32)]
        entry["results"] = []
        for prompt in PROMPTS:
            result = {"prompt": prompt["name"]}
            result.update(run_reference(model, prompt["ids"]))
            entry["results"].append(result)
        variants.append(entry)
        margins = [m for r in entry["results"] for m in r["margins"]]
        print(f"- {name} ({entry['mlx_lm_module']}, {len(tensors)} tensors, sha256 "
              f"{digest[:12]}…): " + "; ".join(
                  f"{r['prompt']} -> {r['output_ids'][:8]}… min margin {min(r['margins']):.4f}"
                  for r in entry["results"])
              + f"; steps with margin < 0.02: {sum(m < 0.02 for m in margins)}")

    command = " ".join(["scripts/reference/tiny_models.py"] + sys.argv[1:])
    doc = {
        "mlx_version": mx.__version__,
        "mlx_lm_version": mlx_lm.__version__,
        "blas": blas.split(" (")[0],
        "dtype": "float32",
        "generated_by": f"{command} (regenerate all fixtures: make reference)",
        "weight_formula": "see the docstring of scripts/reference/tiny_models.py "
                          "(FNV-1a seed per tensor name, splitmix64 per flat index)",
        "digest": "sha256 over tensors in name order of '<name> <dtype> <AxB...>\\n' + "
                  "little-endian bytes",
        "notes": "mlx_lm.utils.load_model on the folder; whole prompt in one call, then one "
                 "token per step with mlx-lm's KV cache; greedy; margins[i] = top-2 "
                 "log-probability gap; first_logits = float32 logits after the prefill, "
                 "8 significant digits.",
        "steps": STEPS,
        "prompts": PROMPTS,
        "variants": variants,
    }
    write_json(args.fixture, doc)


if __name__ == "__main__":
    main()
