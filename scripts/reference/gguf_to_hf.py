#!/usr/bin/env python3
"""Convert the default GGUF (SmolLM2-135M-Instruct Q4_1) into a Hugging Face Llama folder.

Independent of the project's Rust code: the GGUF is read with the `gguf` Python package and
every tensor is dequantized to float32 with numpy (`gguf.quants.dequantize`). The output folder
(default `.deps/reference/smollm2-135m-instruct-hf/`) holds

  config.json             LlamaForCausalLM, hyper-parameters from the GGUF metadata, float32
  model.safetensors       every weight in float32, Hugging Face names, q/k rows un-permuted
  tokenizer.json          byte-level BPE rebuilt from tokenizer.ggml.{tokens,merges,token_type}
  tokenizer_config.json   chat template, bos/eos/unk/pad tokens, add_bos_token false
  source.json             sha256 of the GGUF it came from and the conversion checks' results

so that mlx-lm (`mlx_lm.load(folder)`) and transformers can load it. Run through
scripts/reference/regenerate.sh, or directly with the reference venv's python:

  .deps/reference-venv/bin/python scripts/reference/gguf_to_hf.py [--gguf F] [--out DIR]

Checks it makes (and stops on failure): the GGUF's sha256, the q/k permutation round trip and
its meaning (RoPE scores agree between llama.cpp's and HF's layouts), every tensor's shape, the
tokenizer against itself loaded through transformers. It also compares its tokenizer with the
one transformers builds from the GGUF metadata and with MLX's own GGUF loader's weights, and
reports (does not fail on) differences.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_GGUF = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = ROOT / ".deps" / "reference" / "smollm2-135m-instruct-hf"
EXPECTED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# Strings the tokenizer fixtures (make_fixtures.py) and this script's cross-checks encode.
TOKENIZER_TEST_STRINGS = [
    "",
    "Hello, world!",
    " leading space",
    "<|im_start|>user\nhi<|im_end|>",
    "text before<|endoftext|>text after",
    "<|im_start|><|im_end|><|im_start",
    "<file_sep><filename>src/main.rs",
    "Café déjà vu: naïve façade, Ærøskøbing, São Paulo, Größe",
    "日本語のテキスト、中文字符和한국어",
    "Emoji: 😀 👍🏽 👩‍💻 🇫🇷🇯🇵 ❤️",
    'fn main() {\n    let s = "hi";\n    println!("{s} {}", s.len());\n}\n',
    "def f(x):\n\tif x > 0:\n\t\treturn 'pos'\n\treturn \"neg\"\n",
    "pi = 3.14159",
    "In 2026 we had 1,234,567 users and 12345678901234567890 requests.",
    "0x1F 1e-5 -42 +7 v1.2.3",
    "multiple    spaces   here",
    "line1\n\nline2\n\n\n   indented\r\nwindows\r\n",
    "   ",
    "\n",
    "It's a dog's life, isn't it? They'll see; we've done it, I'd say you're right.",
    "https://example.com/path?q=1&x=2#frag",
    "Math: ℕ ∑ ∫ x² ½ — “quotes” ‘single’ … ©",
]


# --------------------------------------------------------------------------- helpers

def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str = EXPECTED_SHA256) -> str:
    got = sha256_of(path)
    print(f"gguf: {path} sha256 {got}")
    if got != expected:
        sys.exit(f"error: {path} has sha256 {got}, expected {expected}; refusing to convert a "
                 "different file (the fixtures are tied to that exact GGUF)")
    return got


def field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def float32_shortest(x: float) -> float:
    """The shortest decimal that is the same float32 (GGUF stores 1e-5 as 9.99999974e-06)."""
    return float(str(np.float32(x)))


# --------------------------------------------------------------------------- q/k rows
# llama.cpp's converter reorders the rows of HF's q_proj / k_proj inside each head so that
# its (interleaved) RoPE sees rotation pairs as adjacent rows: HF row `half * d/2 + i` of a
# head becomes row `2 * i + half`. `to_llama_rows` is that forward map (used only to check),
# `to_hf_rows` its inverse, which is what the conversion applies.

def to_llama_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    rows = w.shape[0]
    head_dim = rows // n_head
    assert head_dim * n_head == rows and head_dim % 2 == 0
    split = w.reshape(n_head, 2, head_dim // 2, *w.shape[1:])  # [head, half, i, ...]
    return np.ascontiguousarray(split.transpose(0, 2, 1, *range(3, split.ndim))).reshape(w.shape)


def to_hf_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    rows = w.shape[0]
    head_dim = rows // n_head
    assert head_dim * n_head == rows and head_dim % 2 == 0
    paired = w.reshape(n_head, head_dim // 2, 2, *w.shape[1:])  # [head, i, half, ...]
    return np.ascontiguousarray(paired.transpose(0, 2, 1, *range(3, paired.ndim))).reshape(w.shape)


def rope_interleaved(x: np.ndarray, pos: np.ndarray, theta: float) -> np.ndarray:
    """RoPE rotating pairs (2i, 2i+1): llama.cpp's layout. x: [tokens, head_dim]."""
    d = x.shape[-1]
    freqs = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = pos[:, None] * freqs[None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    a, b = x[:, 0::2], x[:, 1::2]
    out = np.empty_like(x)
    out[:, 0::2] = a * cos - b * sin
    out[:, 1::2] = a * sin + b * cos
    return out


def rope_half(x: np.ndarray, pos: np.ndarray, theta: float) -> np.ndarray:
    """RoPE rotating pairs (i, i + d/2): Hugging Face's layout (mlx-lm's traditional=False)."""
    d = x.shape[-1]
    freqs = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = pos[:, None] * freqs[None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    a, b = x[:, : d // 2], x[:, d // 2:]
    return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)


def check_permutation(q_gguf, k_gguf, n_head, n_kv, theta) -> dict:
    """Round trip both ways, and: attention scores computed the llama.cpp way (stored rows,
    interleaved RoPE) equal the ones computed the HF way (un-permuted rows, half-split RoPE)."""
    rng = np.random.default_rng(0)
    for w, n in ((q_gguf, n_head), (k_gguf, n_kv)):
        if not np.array_equal(to_llama_rows(to_hf_rows(w, n), n), w):
            sys.exit("error: q/k row permutation does not round-trip (gguf -> hf -> gguf)")
        r = rng.standard_normal(w.shape).astype(np.float32)
        if not np.array_equal(to_hf_rows(to_llama_rows(r, n), n), r):
            sys.exit("error: q/k row permutation does not round-trip (hf -> gguf -> hf)")
    q_hf, k_hf = to_hf_rows(q_gguf, n_head), to_hf_rows(k_gguf, n_kv)
    d = q_gguf.shape[0] // n_head
    x = rng.standard_normal((7, q_gguf.shape[1])).astype(np.float64)
    pos = np.arange(3, 10, dtype=np.float64)
    worst = 0.0
    for h in range(n_head):
        kv = h // (n_head // n_kv)
        rows_q, rows_k = slice(h * d, (h + 1) * d), slice(kv * d, (kv + 1) * d)
        s_llama = (rope_interleaved(x @ q_gguf[rows_q].T.astype(np.float64), pos, theta)
                   @ rope_interleaved(x @ k_gguf[rows_k].T.astype(np.float64), pos, theta).T)
        s_hf = (rope_half(x @ q_hf[rows_q].T.astype(np.float64), pos, theta)
                @ rope_half(x @ k_hf[rows_k].T.astype(np.float64), pos, theta).T)
        worst = max(worst, float(np.max(np.abs(s_llama - s_hf)) / (np.max(np.abs(s_hf)) + 1e-30)))
    # The wrong direction (or no un-permutation at all) gives relative errors of order 1.
    if worst > 1e-9:
        sys.exit(f"error: RoPE scores differ between layouts after un-permuting (rel {worst:.3g})")
    # Make sure the check can fail: without un-permuting, scores must disagree.
    s_bad = (rope_half(x @ q_gguf[:d].T.astype(np.float64), pos, theta)
             @ rope_half(x @ k_gguf[:d].T.astype(np.float64), pos, theta).T)
    s_good = (rope_half(x @ q_hf[:d].T.astype(np.float64), pos, theta)
              @ rope_half(x @ k_hf[:d].T.astype(np.float64), pos, theta).T)
    bad = float(np.max(np.abs(s_bad - s_good)) / np.max(np.abs(s_good)))
    return {"round_trip": "exact", "rope_scores_max_rel_diff": worst,
            "rope_scores_rel_diff_if_not_unpermuted": bad}


# --------------------------------------------------------------------------- weights

def hf_name(name: str) -> str:
    if name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if name == "output_norm.weight":
        return "model.norm.weight"
    if name == "output.weight":
        return "lm_head.weight"
    parts = name.split(".")
    if parts[0] != "blk" or len(parts) != 4:
        raise ValueError(f"unexpected GGUF tensor {name}")
    layer, kind, suffix = parts[1], parts[2], parts[3]
    mapping = {
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }
    if kind not in mapping:
        raise ValueError(f"unexpected GGUF tensor {name}")
    return f"model.layers.{layer}.{mapping[kind]}.{suffix}"


def dequantized(tensor) -> np.ndarray:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    if tensor.tensor_type == GGMLQuantizationType.F32:
        w = np.array(tensor.data, dtype=np.float32)
    else:
        w = dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
    # GGUF lists dimensions innermost first; numpy's row-major shape is the reverse, which is
    # already Hugging Face's [out_features, in_features] for linear weights.
    want = tuple(int(n) for n in reversed(tensor.shape.tolist()))
    if w.shape != want:
        w = w.reshape(want)
    return np.ascontiguousarray(w)


def cross_check_mlx_gguf(gguf_path: Path, ours: dict) -> dict:
    """MLX's own GGUF loader (as the Rust side uses it): quantized weights with f16 scales and
    biases. Dequantized after casting scales/biases to f32 they should equal ours exactly."""
    try:
        import mlx.core as mx
    except ImportError:
        return {"skipped": "mlx not importable"}
    loaded = mx.load(str(gguf_path))
    worst_f32, worst_f16, compared = 0.0, 0.0, 0
    for name, info in ours.items():
        ref = info["gguf"]
        base = name[: -len(".weight")]
        if f"{base}.scales" not in loaded:
            continue
        w, s, b = loaded[name], loaded[f"{base}.scales"], loaded[f"{base}.biases"]
        bits = 32 * w.shape[-1] // ref.shape[-1]
        group = ref.shape[-1] // s.shape[-1]
        f32 = mx.dequantize(w, s.astype(mx.float32), b.astype(mx.float32), group_size=group, bits=bits)
        f16 = mx.dequantize(w, s, b, group_size=group, bits=bits).astype(mx.float32)
        worst_f32 = max(worst_f32, float(np.max(np.abs(np.array(f32) - ref))))
        worst_f16 = max(worst_f16, float(np.max(np.abs(np.array(f16) - ref))))
        compared += 1
    return {"tensors_compared": compared, "max_abs_diff_f32_scales": worst_f32,
            "max_abs_diff_f16_scales": worst_f16}


# --------------------------------------------------------------------------- tokenizer

def build_tokenizer(tokens, merges, token_types):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("duplicate tokens in tokenizer.ggml.tokens")
    pairs = []
    for m in merges:
        left, sep, right = m.partition(" ")
        if not sep or not left or not right or " " in right:
            raise ValueError(f"unexpected merge {m!r}")
        pairs.append((left, right))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, dropout=None, unk_token=None,
                               fuse_unk=False, byte_fallback=False))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    control = [t for t, ty in zip(tokens, token_types) if ty == 3]  # 3 = CONTROL
    user_defined = [t for t, ty in zip(tokens, token_types) if ty == 4]  # 4 = USER_DEFINED
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False, lstrip=False,
                                       rstrip=False, single_word=False) for t in control])
    if user_defined:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user_defined])
    for t in control + user_defined:
        if tok.token_to_id(t) != vocab[t]:
            raise ValueError(f"added token {t!r} did not keep its id {vocab[t]}")
    if tok.get_vocab_size(with_added_tokens=True) != len(tokens):
        raise ValueError("tokenizer vocabulary size changed while adding special tokens")
    return tok, control


def transformers_gguf_tokenizer(reader):
    """The tokenizer transformers itself builds from GGUF metadata. `AutoTokenizer.from_pretrained(
    gguf_file=...)` needs torch in transformers 5 (its GGUF reader imports it), so call the
    metadata-to-tokenizer builder it uses directly, fed with metadata read by the gguf package."""
    from transformers.integrations.gguf import gguf_tokenizer_mapping as m

    tok_dict = {}
    for key, name in m.GGUF_TOKENIZER_MAPPING["tokenizer"].items():
        value = field(reader, f"tokenizer.{key}")
        if value is not None:
            tok_dict[name] = value
    backend, _ = m.convert_gguf_tokenizer(field(reader, "general.architecture"), tok_dict)
    return backend


def compare_tokenizers(a, b, strings) -> list:
    diffs = []
    for s in strings:
        ia = a.encode(s, add_special_tokens=False).ids
        ib = b.encode(s, add_special_tokens=False).ids
        if ia != ib:
            diffs.append({"text": s, "ours": ia, "theirs": ib})
    return diffs


# --------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", type=Path, default=DEFAULT_GGUF)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--expected-sha256", default=EXPECTED_SHA256)
    args = ap.parse_args()

    import gguf
    from safetensors.numpy import save_file

    digest = check_sha256(args.gguf, args.expected_sha256)
    reader = gguf.GGUFReader(str(args.gguf))
    arch = field(reader, "general.architecture")
    if arch != "llama":
        sys.exit(f"error: architecture {arch!r}, this converter handles llama only")

    def meta(key, default=None):
        value = field(reader, f"{arch}.{key}", default)
        if value is None:
            sys.exit(f"error: GGUF metadata {arch}.{key} is missing")
        return value

    hidden = int(meta("embedding_length"))
    n_layers = int(meta("block_count"))
    n_head = int(meta("attention.head_count"))
    n_kv = int(meta("attention.head_count_kv", n_head))
    head_dim = hidden // n_head
    rope_dims = int(meta("rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        sys.exit(f"error: partial RoPE ({rope_dims} of {head_dim}) is not supported")
    if field(reader, f"{arch}.rope.scaling.type") not in (None, "none"):
        sys.exit("error: RoPE scaling is not supported by this converter")
    rope_theta = float32_shortest(meta("rope.freq_base", 10000.0))
    eps_raw = float(meta("attention.layer_norm_rms_epsilon"))
    eps = float32_shortest(eps_raw)
    tokens = list(field(reader, "tokenizer.ggml.tokens"))
    merges = list(field(reader, "tokenizer.ggml.merges"))
    token_types = list(field(reader, "tokenizer.ggml.token_type"))
    vocab_size = int(meta("vocab_size", len(tokens)))
    if vocab_size != len(tokens):
        sys.exit(f"error: vocab_size {vocab_size} but {len(tokens)} tokens")
    if field(reader, "tokenizer.ggml.model") != "gpt2":
        sys.exit("error: only byte-level BPE (tokenizer.ggml.model = gpt2) is handled")
    pre = field(reader, "tokenizer.ggml.pre")
    if pre != "smollm":
        sys.exit(f"error: pre-tokenizer {pre!r}; this converter implements 'smollm' only")

    special_ids = {k: field(reader, f"tokenizer.ggml.{k}_token_id")
                   for k in ("bos", "eos", "unknown", "padding")}
    names = {k: (tokens[v] if v is not None else None) for k, v in special_ids.items()}
    print("special tokens: " + ", ".join(f"{k}={v} {names[k]!r}" for k, v in special_ids.items()))
    print(f"rms_norm_eps: GGUF float32 {eps_raw!r} -> config {eps!r}; rope_theta {rope_theta!r}")

    # ---- weights
    tensors = {}
    for t in reader.tensors:
        tensors[t.name] = {"type": t.tensor_type.name, "gguf": dequantized(t)}
    tied = "output.weight" not in tensors
    state = {}
    for name, info in tensors.items():
        w = info["gguf"]
        if name.endswith("attn_q.weight"):
            w = to_hf_rows(w, n_head)
        elif name.endswith("attn_k.weight"):
            w = to_hf_rows(w, n_kv)
        state[hf_name(name)] = w

    perm = check_permutation(tensors["blk.0.attn_q.weight"]["gguf"],
                             tensors["blk.0.attn_k.weight"]["gguf"], n_head, n_kv, rope_theta)
    print(f"q/k permutation: {perm}")

    ffn = int(meta("feed_forward_length"))
    expected_shapes = {"model.embed_tokens.weight": (vocab_size, hidden),
                       "model.norm.weight": (hidden,)}
    if not tied:
        expected_shapes["lm_head.weight"] = (vocab_size, hidden)
    for i in range(n_layers):
        p = f"model.layers.{i}."
        expected_shapes.update({
            p + "self_attn.q_proj.weight": (n_head * head_dim, hidden),
            p + "self_attn.k_proj.weight": (n_kv * head_dim, hidden),
            p + "self_attn.v_proj.weight": (n_kv * head_dim, hidden),
            p + "self_attn.o_proj.weight": (hidden, n_head * head_dim),
            p + "mlp.gate_proj.weight": (ffn, hidden),
            p + "mlp.up_proj.weight": (ffn, hidden),
            p + "mlp.down_proj.weight": (hidden, ffn),
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        })
    got_shapes = {k: tuple(v.shape) for k, v in state.items()}
    if got_shapes != expected_shapes:
        missing = sorted(set(expected_shapes) - set(got_shapes))
        extra = sorted(set(got_shapes) - set(expected_shapes))
        wrong = sorted(k for k in set(got_shapes) & set(expected_shapes)
                       if got_shapes[k] != expected_shapes[k])
        sys.exit(f"error: tensor set mismatch: missing {missing[:5]} extra {extra[:5]} wrong {wrong[:5]}")
    for k, v in state.items():
        if not np.all(np.isfinite(v)):
            sys.exit(f"error: {k} has non-finite values after dequantization")

    mlx_check = cross_check_mlx_gguf(args.gguf, tensors)
    print(f"MLX GGUF loader vs gguf-py dequantization: {mlx_check}")

    # ---- tokenizer
    tok, control = build_tokenizer(tokens, merges, token_types)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("model.safetensors", "source.json"):
        (out / stale).unlink(missing_ok=True)

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "vocab_size": vocab_size,
        "max_position_embeddings": int(meta("context_length")),
        "rms_norm_eps": eps,
        "rope_theta": rope_theta,
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tied,
        "bos_token_id": special_ids["bos"],
        "eos_token_id": special_ids["eos"],
        "pad_token_id": special_ids["padding"],
        "torch_dtype": "float32",
        "use_cache": True,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").unlink(missing_ok=True)

    tok.save(str(out / "tokenizer.json"), pretty=False)
    tok_config = {
        # PreTrainedTokenizerFast (TokenizersBackend in transformers 5) uses tokenizer.json as it
        # is; a class such as GPT2Tokenizer may rebuild its own pre-tokenizer in transformers 5.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(field(reader, "tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(field(reader, "tokenizer.ggml.add_eos_token", False)),
        "bos_token": names["bos"],
        "eos_token": names["eos"],
        "unk_token": names["unknown"],
        "pad_token": names["padding"],
        "additional_special_tokens": [t for t in control if t not in names.values()],
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta("context_length")),
        "chat_template": field(reader, "tokenizer.chat_template"),
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
    (out / "special_tokens_map.json").unlink(missing_ok=True)

    # ---- tokenizer checks
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    reloaded = Tokenizer.from_file(str(out / "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(str(out))
    for s in TOKENIZER_TEST_STRINGS:
        ours = reloaded.encode(s, add_special_tokens=False).ids
        theirs = hf.encode(s, add_special_tokens=False)
        if ours != theirs:
            sys.exit(f"error: transformers loads our tokenizer.json differently for {s!r}: {ours} vs {theirs}")
        if reloaded.decode(ours, skip_special_tokens=False) != s:
            sys.exit(f"error: decode(encode({s!r})) does not round-trip")
    print(f"tokenizer: {len(tokens)} tokens, {len(merges)} merges, {len(control)} control tokens; "
          f"transformers ({type(hf).__name__}) agrees on {len(TOKENIZER_TEST_STRINGS)} strings")

    try:
        theirs = transformers_gguf_tokenizer(reader)
        diffs = compare_tokenizers(reloaded, theirs, TOKENIZER_TEST_STRINGS)
        tok_cross = {"differences": len(diffs), "strings": len(TOKENIZER_TEST_STRINGS),
                     "their_pre_tokenizer": json.loads(theirs.to_str())["pre_tokenizer"],
                     "examples": diffs[:6]}
        print(f"transformers' GGUF tokenizer builder: {len(diffs)} of "
              f"{len(TOKENIZER_TEST_STRINGS)} strings differ")
        for d in diffs:
            print(f"  {d['text']!r}: ours {d['ours']} transformers {d['theirs']}")
    except Exception as e:  # informative only
        tok_cross = {"skipped": f"{type(e).__name__}: {e}"}
        print(f"transformers' GGUF tokenizer builder not usable: {tok_cross['skipped']}")

    # ---- weights last (largest file), then the provenance record
    metadata = {"format": "pt", "source_gguf_sha256": digest}
    save_file({k: state[k] for k in sorted(state)}, str(out / "model.safetensors"), metadata=metadata)
    import tokenizers
    import transformers

    def version(mod):
        try:
            from importlib.metadata import version as v
            return v(mod)
        except Exception:
            return None

    source = {
        "gguf_file": os.path.basename(args.gguf),
        "gguf_sha256": digest,
        "converter": "scripts/reference/gguf_to_hf.py",
        "versions": {"gguf": version("gguf"), "numpy": np.__version__,
                     "tokenizers": tokenizers.__version__, "transformers": transformers.__version__},
        "tensor_types": sorted({f"{k}: {v['type']}" for k, v in tensors.items()
                                if not k.startswith("blk.") or k.startswith("blk.0.")}),
        "rms_norm_eps_gguf_float32": eps_raw,
        "qk_permutation_check": perm,
        "mlx_gguf_loader_check": mlx_check,
        "transformers_gguf_tokenizer_check": tok_cross,
    }
    (out / "source.json").write_text(json.dumps(source, indent=2, ensure_ascii=False) + "\n")
    total = sum(v.size for v in state.values())
    print(f"wrote {out} ({len(state)} tensors, {total:,} parameters, tied embeddings: {tied})")


if __name__ == "__main__":
    main()
