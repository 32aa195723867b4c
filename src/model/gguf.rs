//! GGUF model files: the model's hyper-parameters and its tensors under Hugging Face
//! names.
//!
//! MLX's GGUF reader (`mlx_rs::io::GgufFile`) hands back tensors lazily and the metadata as
//! MLX arrays or strings. Everything here runs on the calling thread and returns plain Rust
//! data, so no MLX array outlives the call (MLX arrays belong to the thread that made them).

use std::path::Path;

use mlx_rs::Array;
use mlx_rs::io::GgufFile;

use super::ModelError;
use super::config::{Architecture, ModelConfig, RopeScaling};
use super::gguf_metadata::GgufMetadata;
use super::weights::{QuantSpec, TensorMap};

/// Block size of every GGUF quantization type MLX loads (Q4_0, Q4_1, Q8_0): one scale
/// (and bias) per 32 weights.
const GGUF_QUANT_GROUP: usize = 32;

/// Reads the hyper-parameters from the file's metadata; refuses unknown architectures.
pub fn model_config(file: &GgufFile, path: &Path) -> Result<ModelConfig, ModelError> {
    let meta = GgufMetadata::new(file, path);
    let gguf = |source| ModelError::Gguf {
        path: path.to_path_buf(),
        source,
    };
    let name = meta.required_string("general.architecture")?;
    let architecture =
        Architecture::from_name(&name).ok_or_else(|| ModelError::UnsupportedArchitecture {
            path: path.to_path_buf(),
            name: name.clone(),
            supported: Architecture::SUPPORTED,
        })?;
    let key = |suffix: &str| format!("{name}.{suffix}");
    let hidden_size = meta.required_u32(&key("embedding_length"))? as usize;
    let num_heads = meta.required_u32(&key("attention.head_count"))? as usize;
    let vocab_size = match meta.optional_u32(&key("vocab_size"))? {
        Some(size) => size as usize,
        None => meta
            .strings("tokenizer.ggml.tokens")?
            .map(|tokens| tokens.len())
            .ok_or_else(|| meta.missing("tokenizer.ggml.tokens"))?,
    };
    let has_tensor = |tensor: &str| -> Result<bool, ModelError> {
        Ok(file.get_array(tensor).map_err(gguf)?.is_some())
    };
    let rope_scaling = match file.get_array("rope_freqs.weight").map_err(gguf)? {
        Some(factors) => {
            let factors = factors.as_dtype(mlx_rs::Dtype::Float32)?;
            factors.eval()?;
            Some(RopeScaling::Factors(factors.as_slice::<f32>().to_vec()))
        }
        None => None,
    };
    let config = ModelConfig {
        architecture,
        vocab_size,
        hidden_size,
        intermediate_size: meta.required_u32(&key("feed_forward_length"))? as usize,
        num_layers: meta.required_u32(&key("block_count"))? as usize,
        num_heads,
        num_kv_heads: meta
            .optional_u32(&key("attention.head_count_kv"))?
            .map_or(num_heads, |n| n as usize),
        head_dim: meta
            .optional_u32(&key("attention.key_length"))?
            .map_or(hidden_size / num_heads.max(1), |n| n as usize),
        rms_norm_eps: meta
            .optional_f32(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-5),
        rope_theta: meta
            .optional_f32(&key("rope.freq_base"))?
            .unwrap_or(10_000.0),
        rope_scaling,
        context_length: meta.required_u32(&key("context_length"))? as usize,
        tie_word_embeddings: !has_tensor("output.weight")?,
        attention_bias: has_tensor("blk.0.attn_q.bias")?,
        output_bias: has_tensor("blk.0.attn_output.bias")?,
        qk_norm: has_tensor("blk.0.attn_q_norm.weight")?,
    };
    let invalid = |problem: String| ModelError::InvalidConfig {
        path: path.to_path_buf(),
        problem,
    };
    config.validate().map_err(invalid)?;
    // Partial rotary embeddings (RoPE on fewer dims than the head) are not implemented.
    if let Some(dims) = meta.optional_u32(&key("rope.dimension_count"))?
        && dims as usize != config.head_dim
    {
        return Err(invalid(format!(
            "RoPE over {dims} of {} head dimensions (partial rotary) is not supported",
            config.head_dim
        )));
    }
    if let Some(RopeScaling::Factors(factors)) = &config.rope_scaling
        && factors.len() != config.head_dim / 2
    {
        return Err(invalid(format!(
            "rope_freqs.weight has {} factors, expected {} (head_dim / 2)",
            factors.len(),
            config.head_dim / 2
        )));
    }
    Ok(config)
}

/// The file's tensors under Hugging Face parameter names, ready for
/// [`LlamaModel::from_tensors`](super::llama::LlamaModel::from_tensors).
///
/// Undoes two GGUF conventions on the way: llama.cpp's converter permutes the rows of
/// `attn_q`/`attn_k` of `llama`-architecture models to suit its interleaved RoPE (we use
/// the Hugging Face layout with non-interleaved RoPE), and MLX's reader returns
/// Q4_0/Q4_1/Q8_0 tensors as MLX-quantized triples (`weight`, `scales`, `biases`, groups of
/// 32) whose bit width we recover from the shapes. Tensors with no Hugging Face counterpart
/// (`rope_freqs`) are left out.
pub fn tensors(
    file: &GgufFile,
    config: &ModelConfig,
    path: &Path,
) -> Result<TensorMap, ModelError> {
    let gguf = |source| ModelError::Gguf {
        path: path.to_path_buf(),
        source,
    };
    let mut raw = file.arrays().map_err(gguf)?;
    let mut map = TensorMap::new(path.display().to_string());
    let permute_qk = config.architecture == Architecture::Llama;
    let names: Vec<String> = raw.keys().cloned().collect();
    for name in names {
        let Some(hf) = hf_tensor_name(&name) else {
            continue;
        };
        let Some(mut tensor) = raw.remove(&name) else {
            continue;
        };
        if let Some(prefix) = hf.strip_suffix(".scales") {
            let weight_cols = file
                .get_array(&format!("{}.weight", name.trim_end_matches(".scales")))
                .map_err(gguf)?
                .map(|w| w.dim(-1));
            let groups = tensor.dim(-1);
            let bits = weight_cols.map(|cols| cols / groups.max(1)).unwrap_or(0);
            if !QuantSpec::BITS.contains(&bits) {
                return Err(ModelError::TensorShape {
                    source_name: path.display().to_string(),
                    name,
                    expected: "per-32-weight scales of a 2..8-bit packed tensor".to_owned(),
                    found: format!("{:?} (weight columns {weight_cols:?})", tensor.shape()),
                });
            }
            map.set_quant(
                prefix.to_owned(),
                QuantSpec {
                    group_size: GGUF_QUANT_GROUP as i32,
                    bits,
                },
            );
        }
        if permute_qk {
            let heads = if hf.contains(".self_attn.q_proj.") {
                Some(config.num_heads)
            } else if hf.contains(".self_attn.k_proj.") {
                Some(config.num_kv_heads)
            } else {
                None
            };
            if let Some(heads) = heads {
                // Checked before the reshape, which would otherwise fail with an MLX error
                // naming no tensor. The error names the tensor as the file does (MLX's
                // `.scales`/`.biases` come from its `.weight`).
                let rows = heads * config.head_dim;
                if tensor.shape().first() != Some(&(rows as i32)) {
                    let stem = name
                        .rsplit_once('.')
                        .map_or(name.as_str(), |(stem, _)| stem);
                    let suffix = if hf.ends_with(".bias") {
                        "bias"
                    } else {
                        "weight"
                    };
                    return Err(ModelError::TensorShape {
                        source_name: path.display().to_string(),
                        name: format!("{stem}.{suffix}"),
                        expected: format!("[{rows}, ..] ({heads} heads of {})", config.head_dim),
                        found: format!("[{}, ..]", tensor.shape().first().copied().unwrap_or(0)),
                    });
                }
                tensor = unpermute_rope_rows(&tensor, heads)?;
            }
        }
        map.insert(hf, tensor);
    }
    Ok(map)
}

/// Inverse of llama.cpp's q/k row permutation: within each head, GGUF row `2j + i` holds
/// Hugging Face row `i * head_dim / 2 + j`. Works on packed quantized rows too (rows are
/// never split by quantization).
fn unpermute_rope_rows(tensor: &Array, heads: usize) -> Result<Array, mlx_rs::error::Exception> {
    let shape = tensor.shape().to_vec();
    let heads = heads as i32;
    let half = shape[0] / heads / 2;
    let mut grouped = vec![heads, half, 2];
    grouped.extend_from_slice(&shape[1..]);
    tensor.reshape(&grouped)?.swap_axes(1, 2)?.reshape(&shape)
}

/// GGUF tensor name -> Hugging Face parameter name (`blk.3.attn_q.weight` ->
/// `model.layers.3.self_attn.q_proj.weight`); `None` for tensors without one.
fn hf_tensor_name(name: &str) -> Option<String> {
    let (stem, suffix) = name.rsplit_once('.')?;
    if !matches!(suffix, "weight" | "bias" | "scales" | "biases") {
        return None;
    }
    let mapped = match stem {
        "token_embd" => "model.embed_tokens".to_owned(),
        "output_norm" => "model.norm".to_owned(),
        "output" => "lm_head".to_owned(),
        _ => {
            let (layer, part) = stem.strip_prefix("blk.")?.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let part = match part {
                "attn_norm" => "input_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "attn_q_norm" => "self_attn.q_norm",
                "attn_k_norm" => "self_attn.k_norm",
                "ffn_norm" => "post_attention_layernorm",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                _ => return None,
            };
            format!("model.layers.{layer}.{part}")
        }
    };
    Some(format!("{mapped}.{suffix}"))
}
