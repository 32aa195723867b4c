//! Every model family the forward pass claims — Llama (untied, Llama-3 RoPE scaling),
//! Qwen2 (q/k/v biases), Qwen3 (head_dim != hidden/heads, q/k norm), Mistral, and an
//! MLX-community quantized checkpoint — reproduces mlx-lm's own implementation of it.
//!
//! The models are tiny (2 layers, hidden 64, vocabulary 128) and every weight is defined by a
//! formula (`scripts/reference/tiny_models.py` documents it), so this test writes each
//! Hugging Face folder itself, asserts its weight digest equals the one the Python script
//! recorded in `tests/fixtures/tiny_models_reference.json` (same formula, same model), loads it
//! through the loader like any user folder, and compares with mlx-lm:
//! - the f32 logits after the prefill, within `LOGITS_TOLERANCE`;
//! - 16 greedy tokens under the project's numerics rule (docs/model-runtime.md: identical up
//!   to a divergence, which is accepted only where mlx-lm's top-2 margin is < 0.02), decoded
//!   alone (mlx-lm's schedule) and with both prompts in one batch, prefilled in 5-token chunks
//!   over interleaved (gathered) blocks;
//! - the quantized checkpoint also with its weights kept quantized (`WeightMode::Quantized`:
//!   activations in the checkpoint's 16-bit float type, else bf16), within a looser tolerance.
//!
//! Each test owns its MLX arrays on its own thread (one test per variant).

mod common;
#[path = "common/tiny.rs"]
mod tiny;

use std::path::Path;

use common::ScratchDir;
use mlx_rs::{Array, Dtype};
use mlx_serve::model::batch::SequenceChunk;
use mlx_serve::model::config::Architecture;
use mlx_serve::model::greedy::{self, BlockLayout, GreedyOptions, GreedyRequest};
use mlx_serve::model::hub::HubOptions;
use mlx_serve::model::kv_cache::{KvCacheConfig, PagedKvCache};
use mlx_serve::model::llama::LlamaModel;
use mlx_serve::model::loader::{self, LoadOptions, ModelSource};
use mlx_serve::model::weights::WeightMode;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tiny::{hashes, unit};

/// Max |logit difference| to mlx-lm with f32 weights (logits are O(1..10)).
const LOGITS_TOLERANCE: f64 = 1e-4;
/// The same with quantized weights and 16-bit activations (mlx-lm runs f32 activations):
/// f16 keeps 11 significant bits, bf16 8, so a logit near 10 is rounded by up to 0.005 in
/// f16 and 0.03 in bf16 at the output alone, before what the layers accumulate.
fn quantized_tolerance(dtype: Dtype) -> f64 {
    match dtype {
        Dtype::Float16 => 0.05,
        Dtype::Bfloat16 => 0.2,
        other => panic!("no quantized-mode tolerance for {other:?}"),
    }
}
const BLOCK_SIZE: usize = 4;

const VARIANTS: [&str; 7] = [
    "llama_untied",
    "llama3_scaled",
    "llama_bias",
    "qwen2",
    "qwen3",
    "mistral",
    "qwen3_q4",
];

// ------------------------------------------------------------------------------ fixture

#[derive(Deserialize)]
struct Fixture {
    steps: usize,
    prompts: Vec<Prompt>,
    variants: Vec<Variant>,
}

#[derive(Deserialize)]
struct Prompt {
    name: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Variant {
    name: String,
    config: Value,
    weights_sha256: String,
    tensor_count: usize,
    rope_freqs: Option<Vec<f64>>,
    results: Vec<Reference>,
}

#[derive(Deserialize)]
struct Reference {
    prompt: String,
    output_ids: Vec<u32>,
    runner_up_ids: Vec<u32>,
    margins: Vec<f32>,
    first_logits: Vec<f64>,
}

fn fixture() -> Fixture {
    let path = common::fixture_path("tiny_models_reference.json");
    let text = std::fs::read_to_string(&path).expect("read fixture");
    serde_json::from_str(&text).expect("parse fixture (regenerate with `make reference`)")
}

// ------------------------------------------------------------------------------ formula
// The weight formula of scripts/reference/tiny_models.py (hashing in tests/common/tiny.rs).

enum Data {
    F32(Vec<f32>),
    U32(Vec<u32>),
}

struct Tensor {
    shape: Vec<usize>,
    data: Data,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Embedding,
    Head,
    Linear,
    Bias,
    Norm,
}

fn dense(name: &str, shape: &[usize], kind: Kind) -> Tensor {
    let count = shape.iter().product();
    let values = unit(name, count).into_iter().map(|v| match kind {
        Kind::Embedding => 0.25 * v,
        Kind::Head => v,
        Kind::Linear => v * (3.0 / shape[1] as f64).sqrt(),
        Kind::Bias => 0.5 * v,
        Kind::Norm => 1.0 + 0.2 * v,
    });
    Tensor {
        shape: shape.to_vec(),
        data: Data::F32(values.map(|v| v as f32).collect()),
    }
}

/// MLX affine layout: packed levels, per-group scales and biases (by name suffix).
fn quantized(
    prefix: &str,
    (out, inp): (usize, usize),
    bits: usize,
    group: usize,
    range: f64,
) -> [(&'static str, Tensor); 3] {
    let levels = (1u64 << bits) - 1;
    let per_word = 32 / bits;
    let q: Vec<u32> = hashes(&format!("{prefix}.weight"), out * inp)
        .map(|h| (h >> (64 - bits)) as u32)
        .collect();
    let packed: Vec<u32> = q
        .chunks(per_word)
        .map(|word| {
            word.iter()
                .enumerate()
                .fold(0u32, |acc, (k, &level)| acc | (level << (k * bits)))
        })
        .collect();
    let groups = out * (inp / group);
    let scales: Vec<f64> = unit(&format!("{prefix}.scales"), groups)
        .into_iter()
        .map(|v| range / levels as f64 * (0.75 + 0.25 * v))
        .collect();
    let biases: Vec<f32> = unit(&format!("{prefix}.biases"), groups)
        .into_iter()
        .zip(&scales)
        .map(|(v, scale)| (-(levels as f64 / 2.0) * scale + 0.05 * range * v) as f32)
        .collect();
    let group_shape = vec![out, inp / group];
    [
        (
            ".weight",
            Tensor {
                shape: vec![out, inp / per_word],
                data: Data::U32(packed),
            },
        ),
        (
            ".scales",
            Tensor {
                shape: group_shape.clone(),
                data: Data::F32(scales.iter().map(|&s| s as f32).collect()),
            },
        ),
        (
            ".biases",
            Tensor {
                shape: group_shape,
                data: Data::F32(biases),
            },
        ),
    ]
}

fn field(config: &Value, key: &str) -> usize {
    config[key]
        .as_u64()
        .unwrap_or_else(|| panic!("config.json lacks `{key}`")) as usize
}

/// Every parameter of a variant by Hugging Face name, derived from its name and config.json
/// (independently of the library's own reading of it). Hashed names are
/// `<variant>/<tensor name>`.
fn tensors_for(variant: &str, config: &Value) -> Vec<(String, Tensor)> {
    let hidden = field(config, "hidden_size");
    let inter = field(config, "intermediate_size");
    let heads = field(config, "num_attention_heads");
    let kv_heads = field(config, "num_key_value_heads");
    let vocab = field(config, "vocab_size");
    let head_dim = config["head_dim"]
        .as_u64()
        .map_or(hidden / heads, |d| d as usize);
    let model_type = config["model_type"].as_str().expect("model_type");
    let attention_bias = config["attention_bias"].as_bool().unwrap_or(false);
    let quant = config.get("quantization");
    let mut tensors: Vec<(String, Tensor)> = Vec::new();

    let linear =
        |tensors: &mut Vec<(String, Tensor)>, prefix: &str, out: usize, inp: usize, kind| {
            let Some(quant) = quant else {
                let name = format!("{prefix}.weight");
                let tensor = dense(&format!("{variant}/{name}"), &[out, inp], kind);
                tensors.push((name, tensor));
                return;
            };
            let spec = quant.get(prefix).filter(|v| v.is_object()).unwrap_or(quant);
            let range = match kind {
                Kind::Embedding => 0.5,
                Kind::Head => 2.0,
                _ => 2.0 * (3.0 / inp as f64).sqrt(),
            };
            for (suffix, tensor) in quantized(
                &format!("{variant}/{prefix}"),
                (out, inp),
                field(spec, "bits"),
                field(spec, "group_size"),
                range,
            ) {
                tensors.push((format!("{prefix}{suffix}"), tensor));
            }
        };
    let vector = |tensors: &mut Vec<(String, Tensor)>, name: String, len: usize, kind| {
        let tensor = dense(&format!("{variant}/{name}"), &[len], kind);
        tensors.push((name, tensor));
    };

    linear(
        &mut tensors,
        "model.embed_tokens",
        vocab,
        hidden,
        Kind::Embedding,
    );
    for layer in 0..field(config, "num_hidden_layers") {
        let p = format!("model.layers.{layer}");
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            vector(
                &mut tensors,
                format!("{p}.{norm}.weight"),
                hidden,
                Kind::Norm,
            );
        }
        let a = format!("{p}.self_attn");
        for (name, rows) in [
            ("q_proj", heads * head_dim),
            ("k_proj", kv_heads * head_dim),
            ("v_proj", kv_heads * head_dim),
        ] {
            linear(
                &mut tensors,
                &format!("{a}.{name}"),
                rows,
                hidden,
                Kind::Linear,
            );
            if model_type == "qwen2" || attention_bias {
                vector(&mut tensors, format!("{a}.{name}.bias"), rows, Kind::Bias);
            }
        }
        linear(
            &mut tensors,
            &format!("{a}.o_proj"),
            hidden,
            heads * head_dim,
            Kind::Linear,
        );
        // Llama-layout attention_bias also biases the output projection; Qwen2 never does.
        if model_type != "qwen2" && attention_bias {
            vector(&mut tensors, format!("{a}.o_proj.bias"), hidden, Kind::Bias);
        }
        if model_type == "qwen3" {
            for norm in ["q_norm", "k_norm"] {
                vector(
                    &mut tensors,
                    format!("{a}.{norm}.weight"),
                    head_dim,
                    Kind::Norm,
                );
            }
        }
        let m = format!("{p}.mlp");
        linear(
            &mut tensors,
            &format!("{m}.gate_proj"),
            inter,
            hidden,
            Kind::Linear,
        );
        linear(
            &mut tensors,
            &format!("{m}.up_proj"),
            inter,
            hidden,
            Kind::Linear,
        );
        linear(
            &mut tensors,
            &format!("{m}.down_proj"),
            hidden,
            inter,
            Kind::Linear,
        );
    }
    vector(&mut tensors, "model.norm.weight".into(), hidden, Kind::Norm);
    if !config["tie_word_embeddings"]
        .as_bool()
        .expect("tie_word_embeddings")
    {
        linear(&mut tensors, "lm_head", vocab, hidden, Kind::Head);
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

/// SHA-256 over the tensors in name order of `"<name> <dtype> <AxB>\n"` + little-endian bytes.
fn weight_digest(tensors: &[(String, Tensor)]) -> String {
    let mut hasher = Sha256::new();
    for (name, tensor) in tensors {
        let shape: Vec<String> = tensor.shape.iter().map(usize::to_string).collect();
        let dtype = match tensor.data {
            Data::F32(_) => "float32",
            Data::U32(_) => "uint32",
        };
        hasher.update(format!("{name} {dtype} {}\n", shape.join("x")).as_bytes());
        match &tensor.data {
            Data::F32(values) => values.iter().for_each(|v| hasher.update(v.to_le_bytes())),
            Data::U32(values) => values.iter().for_each(|v| hasher.update(v.to_le_bytes())),
        }
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A 128-token word-level tokenizer (`t0` .. `t127`): the loader needs one; the tests drive
/// the model with token ids.
fn tokenizer_json(vocab: usize) -> Value {
    let words: serde_json::Map<String, Value> =
        (0..vocab).map(|i| (format!("t{i}"), json!(i))).collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": words, "unk_token": "t0"}
    })
}

/// Writes the variant's folder (config.json as recorded, formula weights with the float ones
/// stored as `float_dtype`, a tokenizer) and checks that its weights are the ones mlx-lm ran.
fn write_folder(variant: &Variant, float_dtype: Dtype) -> ScratchDir {
    let scratch = ScratchDir::new(&format!("tiny-{}-{float_dtype:?}", variant.name));
    let dir = scratch.0.clone();

    let tensors = tensors_for(&variant.name, &variant.config);
    assert_eq!(
        (tensors.len(), weight_digest(&tensors)),
        (variant.tensor_count, variant.weights_sha256.clone()),
        "{}: the formula weights differ from those mlx-lm ran (tests/tiny_models.rs and \
         scripts/reference/tiny_models.py must implement the same formula; `make reference`)",
        variant.name
    );
    let arrays: Vec<(&str, Array)> = tensors
        .iter()
        .map(|(name, tensor)| {
            let shape: Vec<i32> = tensor.shape.iter().map(|&d| d as i32).collect();
            let array = match &tensor.data {
                Data::F32(values) => Array::from_slice(values, &shape)
                    .as_dtype(float_dtype)
                    .expect("convert"),
                Data::U32(values) => Array::from_slice(values, &shape),
            };
            (name.as_str(), array)
        })
        .collect();
    Array::save_safetensors(arrays, None, dir.join("model.safetensors")).expect("save weights");
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&variant.config).expect("config"),
    )
    .expect("write config.json");
    let vocab = field(&variant.config, "vocab_size");
    std::fs::write(
        dir.join("tokenizer.json"),
        tokenizer_json(vocab).to_string(),
    )
    .expect("write tokenizer.json");
    scratch
}

// ------------------------------------------------------------------------------ checks

fn load(dir: &Path, weights: WeightMode) -> LlamaModel {
    let options = LoadOptions {
        weights,
        served_name: None,
        hub: HubOptions {
            offline: true,
            ..HubOptions::default()
        },
    };
    loader::load(&ModelSource::Folder(dir.to_path_buf()), &options)
        .expect("load the tiny folder")
        .model
}

fn new_cache(model: &LlamaModel, tokens: usize) -> PagedKvCache {
    let config = KvCacheConfig {
        block_size: BLOCK_SIZE,
        num_blocks: tokens.div_ceil(BLOCK_SIZE) + 4,
    };
    PagedKvCache::new(config, model.config(), model.compute_dtype()).expect("cache")
}

/// Logits after prefilling each prompt whole, all prompts in one step (one sequence each,
/// consecutive blocks), as f32 rows.
fn prefill_logits(model: &LlamaModel, prompts: &[&[u32]]) -> Vec<Vec<f32>> {
    let total: usize = prompts.iter().map(|p| p.len()).sum();
    let mut cache = new_cache(model, total + BLOCK_SIZE * prompts.len());
    let mut next = 0u32;
    let tables: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let blocks = p.len().div_ceil(BLOCK_SIZE) as u32;
            next += blocks;
            (next - blocks..next).collect()
        })
        .collect();
    let chunks: Vec<SequenceChunk<'_>> = prompts
        .iter()
        .zip(&tables)
        .map(|(tokens, table)| SequenceChunk {
            tokens,
            cached: 0,
            block_table: table,
        })
        .collect();
    let logits = model.forward(&chunks, &mut cache).expect("forward");
    let logits = logits.as_dtype(Dtype::Float32).expect("f32");
    let vocab = model.config().vocab_size;
    logits
        .as_slice::<f32>()
        .chunks(vocab)
        .map(<[f32]>::to_vec)
        .collect()
}

fn max_abs_diff(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "logit count");
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0.0, f64::max)
}

/// The numerics rule; returns how many leading tokens are identical.
fn assert_follows_reference(what: &str, got: &[u32], reference: &Reference) -> usize {
    assert_eq!(got.len(), reference.output_ids.len(), "{what}: token count");
    common::assert_follows_reference(
        what,
        got,
        &common::ReferenceRun {
            name: &reference.prompt,
            ids: &reference.output_ids,
            runner_ups: &reference.runner_up_ids,
            margins: &reference.margins,
        },
    )
}

fn check_variant(name: &str) {
    common::use_test_device();
    let fixture = fixture();
    let variant = fixture
        .variants
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("fixture has no variant {name}: run `make reference`"));
    let folder = write_folder(variant, Dtype::Float32);
    let model = load(&folder.0, WeightMode::F32);
    check_config(variant, &model);

    let prompts = prompts_of(&fixture, variant);
    let mut report = Vec::new();

    // Logits after the prefill: each prompt alone, then both in one step.
    let mut worst = 0f64;
    for (prompt, reference) in prompts.iter().zip(&variant.results) {
        let alone = prefill_logits(&model, &[prompt]).remove(0);
        worst = worst.max(max_abs_diff(&alone, &reference.first_logits));
    }
    let together = prefill_logits(&model, &prompts);
    for (row, reference) in together.iter().zip(&variant.results) {
        worst = worst.max(max_abs_diff(row, &reference.first_logits));
    }
    assert!(
        worst < LOGITS_TOLERANCE,
        "{name}: prefill logits differ from mlx-lm by up to {worst:e} (> {LOGITS_TOLERANCE:e})"
    );
    report.push(format!("prefill logits max |diff| {worst:.2e}"));

    // Greedy decoding alone, in mlx-lm's schedule.
    for (prompt, reference) in prompts.iter().zip(&variant.results) {
        let request = GreedyRequest {
            prompt: prompt.to_vec(),
            max_tokens: fixture.steps,
            join_step: 0,
        };
        let mut cache = new_cache(&model, prompt.len() + fixture.steps);
        let output = greedy::generate(&model, &mut cache, &[request], GreedyOptions::default())
            .expect("generate")
            .remove(0);
        let what = format!("{name} {} alone", reference.prompt);
        let matched = assert_follows_reference(&what, &output.tokens, reference);
        report.push(format!("{}: {matched}/{}", reference.prompt, fixture.steps));
    }

    // Both prompts in one batch: the second joins a step later, prompts prefill in 5-token
    // chunks while the other decodes, blocks interleaved so every sequence's keys are
    // gathered from scattered blocks.
    let requests: Vec<GreedyRequest> = prompts
        .iter()
        .enumerate()
        .map(|(i, prompt)| GreedyRequest {
            prompt: prompt.to_vec(),
            max_tokens: fixture.steps,
            join_step: i,
        })
        .collect();
    let total: usize = requests.iter().map(|r| r.prompt.len() + r.max_tokens).sum();
    let mut cache = new_cache(&model, total + BLOCK_SIZE * requests.len());
    let options = GreedyOptions {
        prefill_chunk: 5,
        layout: BlockLayout::Interleaved,
    };
    let outputs = greedy::generate(&model, &mut cache, &requests, options).expect("generate");
    for (output, reference) in outputs.iter().zip(&variant.results) {
        let what = format!("{name} {} batched", reference.prompt);
        let matched = assert_follows_reference(&what, &output.tokens, reference);
        report.push(format!(
            "{} batched: {matched}/{}",
            reference.prompt, fixture.steps
        ));
    }
    drop(model);

    if variant.config.get("quantization").is_some() {
        // Stored in f32, so the quantized mode computes in bf16 (docs/model-runtime.md).
        let worst = check_quantized(variant, &prompts, &folder.0, Dtype::Bfloat16);
        report.push(format!(
            "quantized mode (bf16) logits max |diff| {worst:.2e}"
        ));
    }
    eprintln!("{name}: {}", report.join(", "));
}

/// The prompts of `variant`'s results, in their order.
fn prompts_of<'a>(fixture: &'a Fixture, variant: &Variant) -> Vec<&'a [u32]> {
    variant
        .results
        .iter()
        .map(|r| {
            fixture
                .prompts
                .iter()
                .find(|p| p.name == r.prompt)
                .expect("prompt of a result")
                .ids
                .as_slice()
        })
        .collect()
}

/// Loads `dir` with its weights kept quantized (`quantized_matmul`), asserts it computes in
/// `dtype`, and compares its prefill logits with mlx-lm's f32 run within the tolerance of
/// that dtype's rounding; returns the largest difference.
fn check_quantized(variant: &Variant, prompts: &[&[u32]], dir: &Path, dtype: Dtype) -> f64 {
    let name = &variant.name;
    let model = load(dir, WeightMode::Quantized);
    assert_eq!(model.compute_dtype(), dtype, "{name}: activation dtype");
    let tolerance = quantized_tolerance(dtype);
    let mut worst = 0f64;
    for (prompt, reference) in prompts.iter().zip(&variant.results) {
        let logits = prefill_logits(&model, &[prompt]).remove(0);
        worst = worst.max(max_abs_diff(&logits, &reference.first_logits));
        let best = |values: &[f32]| {
            (0..values.len())
                .max_by(|&a, &b| values[a].total_cmp(&values[b]))
                .expect("logits")
        };
        if reference.margins[0] as f64 > 2.0 * tolerance {
            assert_eq!(
                best(&logits) as u32,
                reference.output_ids[0],
                "{name} quantized ({dtype:?}): first token"
            );
        }
    }
    assert!(
        worst < tolerance,
        "{name} (WeightMode::Quantized, {dtype:?}): prefill logits differ from mlx-lm by up \
         to {worst:e} (> {tolerance})"
    );
    worst
}

/// The library read the config as mlx-lm did.
fn check_config(variant: &Variant, model: &LlamaModel) {
    let c = model.config();
    let expected = match variant.config["model_type"].as_str() {
        Some("llama") => Architecture::Llama,
        Some("mistral") => Architecture::Mistral,
        Some("qwen2") => Architecture::Qwen2,
        Some("qwen3") => Architecture::Qwen3,
        other => panic!("unexpected model_type {other:?}"),
    };
    assert_eq!(c.architecture, expected);
    let attention_bias = variant.config["attention_bias"].as_bool().unwrap_or(false);
    assert_eq!(
        c.attention_bias,
        expected == Architecture::Qwen2 || attention_bias
    );
    assert_eq!(
        c.output_bias,
        expected != Architecture::Qwen2 && attention_bias
    );
    assert_eq!(c.qk_norm, expected == Architecture::Qwen3);
    if let Some(head_dim) = variant.config["head_dim"].as_u64() {
        assert_eq!(c.head_dim, head_dim as usize);
    }
    match &variant.rope_freqs {
        None => assert!(
            c.rope_freqs().is_none(),
            "{}: unexpected rope scaling",
            variant.name
        ),
        Some(reference) => {
            let ours = c.rope_freqs().expect("rope scaling");
            assert_eq!(ours.len(), reference.len());
            for (i, (&ours, &theirs)) in ours.iter().zip(reference).enumerate() {
                let relative = (ours as f64 - theirs).abs() / theirs;
                assert!(
                    relative < 1e-6,
                    "{}: RoPE period {i} is {ours}, mlx-lm's {theirs}",
                    variant.name
                );
            }
        }
    }
}

#[test]
fn fixture_covers_every_variant() {
    let fixture = fixture();
    let names: Vec<&str> = fixture.variants.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, VARIANTS, "regenerate the fixture (`make reference`)");
    let lengths: Vec<usize> = fixture.prompts.iter().map(|p| p.ids.len()).collect();
    assert_eq!(lengths, [9, 23]);
    for variant in &fixture.variants {
        assert_eq!(variant.results.len(), fixture.prompts.len());
        for result in &variant.results {
            assert_eq!(result.output_ids.len(), fixture.steps);
            assert_eq!(result.margins.len(), fixture.steps);
            assert_eq!(
                result.first_logits.len(),
                field(&variant.config, "vocab_size")
            );
        }
    }
}

#[test]
fn llama_untied_matches_mlx_lm() {
    check_variant("llama_untied");
}

#[test]
fn llama_attention_bias_matches_mlx_lm() {
    check_variant("llama_bias");
}

#[test]
fn llama3_rope_scaling_matches_mlx_lm() {
    check_variant("llama3_scaled");
}

#[test]
fn qwen2_matches_mlx_lm() {
    check_variant("qwen2");
}

#[test]
fn qwen3_matches_mlx_lm() {
    check_variant("qwen3");
}

#[test]
fn mistral_matches_mlx_lm() {
    check_variant("mistral");
}

#[test]
fn quantized_qwen3_matches_mlx_lm() {
    check_variant("qwen3_q4");
}

/// `WeightMode::Quantized` computes in the checkpoint's own 16-bit float type (the same
/// formula weights stored as f16, then as bf16; stored as f32 they compute in bf16, see
/// `quantized_qwen3_matches_mlx_lm`), while the dense modes keep theirs whatever is stored.
#[test]
fn quantized_weights_compute_in_the_checkpoints_float_type() {
    common::use_test_device();
    let fixture = fixture();
    let variant = fixture
        .variants
        .iter()
        .find(|v| v.name == "qwen3_q4")
        .expect("fixture has no variant qwen3_q4: run `make reference`");
    let prompts = prompts_of(&fixture, variant);
    for stored in [Dtype::Float16, Dtype::Bfloat16] {
        let folder = write_folder(variant, stored);
        let worst = check_quantized(variant, &prompts, &folder.0, stored);
        eprintln!("qwen3_q4 stored as {stored:?}: quantized mode logits max |diff| {worst:.2e}");
        for (mode, dtype) in [
            (WeightMode::F32, Dtype::Float32),
            (WeightMode::F16, Dtype::Float16),
            (WeightMode::Bf16, Dtype::Bfloat16),
        ] {
            assert_eq!(load(&folder.0, mode).compute_dtype(), dtype, "{mode:?}");
        }
    }
}
