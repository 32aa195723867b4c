//! The hyper-parameters of a Llama-family model, from GGUF metadata or a Hugging Face
//! `config.json`.
//!
//! Llama 2/3, SmolLM2, Mistral, Qwen2 and Qwen3 share one forward pass; they differ only in
//! the flags here (QKV bias, q/k norm, tied embeddings, rope scaling, head dim).

use serde::Deserialize;

/// The model families this runtime implements. Anything else is refused at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3 and every model using its layout (SmolLM2, TinyLlama, ...).
    Llama,
    Mistral,
    /// Llama layout plus biases on the q/k/v projections.
    Qwen2,
    /// Llama layout plus RMSNorm on each head's queries and keys.
    Qwen3,
}

impl Architecture {
    /// Maps a GGUF `general.architecture` or an HF `model_type` to a supported family.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Architecture::Llama),
            "mistral" => Some(Architecture::Mistral),
            "qwen2" => Some(Architecture::Qwen2),
            "qwen3" => Some(Architecture::Qwen3),
            _ => None,
        }
    }

    /// The names `from_name` accepts, for error messages.
    pub const SUPPORTED: &'static str = "llama, mistral, qwen2, qwen3";
}

/// How RoPE frequencies deviate from plain `rope_theta`.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Llama 3's frequency-dependent scaling, from its parameters (HF `config.json`).
    Llama3(Llama3RopeScaling),
    /// Per-dimension divisors of the rotation frequency, as GGUF stores them
    /// (`rope_freqs.weight`, one per rotated pair).
    Factors(Vec<f32>),
}

/// Llama 3's frequency-dependent RoPE scaling (`rope_type: "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: f32,
}

/// Everything the forward pass needs to know about a model's shape.
///
/// Invariants (checked by [`ModelConfig::validate`]): all sizes are positive and
/// `num_heads` is a multiple of `num_kv_heads`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: Option<RopeScaling>,
    /// Longest sequence (prompt + completion) the model supports.
    pub context_length: usize,
    /// The output projection reuses the token embedding.
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2; Llama-layout models with `attention_bias`).
    pub attention_bias: bool,
    /// The attention output projection carries a bias (Llama-layout models with
    /// `attention_bias`; never Qwen2).
    pub output_bias: bool,
    /// Per-head RMSNorm on queries and keys before RoPE (Qwen3).
    pub qk_norm: bool,
}

impl ModelConfig {
    /// Checks the invariants the forward pass relies on; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("context_length", self.context_length),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, value)| *value == 0) {
            return Err(format!("{name} must be positive"));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim
            ));
        }
        if self.rope_theta.is_nan()
            || self.rope_theta <= 0.0
            || self.rms_norm_eps.is_nan()
            || self.rms_norm_eps < 0.0
        {
            return Err("rope_theta must be positive and rms_norm_eps non-negative".to_owned());
        }
        Ok(())
    }

    /// Number of weights (quantized ones counted unpacked).
    pub fn parameter_count(&self) -> u64 {
        let (h, v, i) = (
            self.hidden_size as u64,
            self.vocab_size as u64,
            self.intermediate_size as u64,
        );
        let q = (self.num_heads * self.head_dim) as u64;
        let kv = (self.num_kv_heads * self.head_dim) as u64;
        let mut attention = 2 * h * q + 2 * h * kv;
        if self.attention_bias {
            attention += q + 2 * kv;
        }
        if self.output_bias {
            attention += h;
        }
        if self.qk_norm {
            attention += 2 * self.head_dim as u64;
        }
        let layer = attention + 3 * h * i + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_layers as u64 * layer + h + head
    }

    /// Bytes of K plus V one token occupies in one layer at `dtype_bytes` per element.
    pub fn kv_bytes_per_token_per_layer(&self, dtype_bytes: usize) -> usize {
        2 * self.num_kv_heads * self.head_dim * dtype_bytes
    }

    /// The per-dimension RoPE periods (MLX's `freqs` argument: angle = position / freq)
    /// when Llama-3 scaling applies; `None` means plain `rope_theta`.
    pub fn rope_freqs(&self) -> Option<Vec<f32>> {
        let dims = self.head_dim;
        let period = |i: usize| self.rope_theta.powf((2 * i) as f32 / dims as f32);
        match self.rope_scaling.as_ref()? {
            RopeScaling::Factors(factors) => Some(
                factors
                    .iter()
                    .enumerate()
                    .map(|(i, factor)| period(i) * factor)
                    .collect(),
            ),
            RopeScaling::Llama3(scaling) => {
                let low_wavelen =
                    scaling.original_max_position_embeddings / scaling.low_freq_factor;
                let high_wavelen =
                    scaling.original_max_position_embeddings / scaling.high_freq_factor;
                Some(
                    (0..dims / 2)
                        .map(|i| {
                            let period = period(i);
                            let wavelen = 2.0 * std::f32::consts::PI * period;
                            if wavelen < high_wavelen {
                                period
                            } else if wavelen > low_wavelen {
                                period * scaling.factor
                            } else {
                                // Interpolate between the scaled and unscaled regimes.
                                let smooth = (scaling.original_max_position_embeddings / wavelen
                                    - scaling.low_freq_factor)
                                    / (scaling.high_freq_factor - scaling.low_freq_factor);
                                period / ((1.0 - smooth) / scaling.factor + smooth)
                            }
                        })
                        .collect(),
                )
            }
        }
    }
}

/// The subset of a Hugging Face `config.json` this runtime reads.
#[derive(Debug, Deserialize)]
pub struct HfConfig {
    pub model_type: Option<String>,
    #[serde(default)]
    pub architectures: Vec<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f32,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f32,
    pub rope_scaling: Option<serde_json::Value>,
    pub max_position_embeddings: Option<usize>,
    /// Absent: decided by the weights (see `HfFolder::load`).
    pub tie_word_embeddings: Option<bool>,
    pub attention_bias: Option<bool>,
}

fn default_rms_norm_eps() -> f32 {
    1e-6
}

fn default_rope_theta() -> f32 {
    10_000.0
}

impl HfConfig {
    /// Resolves the family and flags; the error names what is unsupported.
    pub fn to_model_config(&self) -> Result<ModelConfig, String> {
        let name = self.model_type.clone().unwrap_or_else(|| {
            self.architectures
                .first()
                .map(|a| a.trim_end_matches("ForCausalLM").to_lowercase())
                .unwrap_or_default()
        });
        let architecture = Architecture::from_name(&name).ok_or_else(|| {
            format!(
                "architecture `{name}` is not supported (supported: {})",
                Architecture::SUPPORTED
            )
        })?;
        let rope_scaling = match &self.rope_scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(value) => parse_hf_rope_scaling(value)?,
        };
        let config = ModelConfig {
            architecture,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size / self.num_attention_heads.max(1)),
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            rope_scaling,
            context_length: self.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(true),
            // Qwen2 always has q/k/v biases (whatever the flag says, as in mlx-lm).
            attention_bias: architecture == Architecture::Qwen2
                || self.attention_bias.unwrap_or(false),
            output_bias: architecture != Architecture::Qwen2
                && self.attention_bias.unwrap_or(false),
            qk_norm: architecture == Architecture::Qwen3,
        };
        config.validate()?;
        Ok(config)
    }
}

fn parse_hf_rope_scaling(value: &serde_json::Value) -> Result<Option<RopeScaling>, String> {
    let kind = value
        .get("rope_type")
        .or_else(|| value.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let number = |key: &str| -> Result<f32, String> {
        value
            .get(key)
            .and_then(|v| v.as_f64())
            .map(|v| v as f32)
            .ok_or_else(|| format!("rope_scaling of type {kind} lacks a numeric `{key}`"))
    };
    match kind {
        "default" => Ok(None),
        "llama3" => {
            let scaling = Llama3RopeScaling {
                factor: number("factor")?,
                low_freq_factor: number("low_freq_factor")?,
                high_freq_factor: number("high_freq_factor")?,
                original_max_position_embeddings: number("original_max_position_embeddings")?,
            };
            // The interpolation divides by their difference and by each of them.
            if !(scaling.factor > 0.0
                && scaling.low_freq_factor > 0.0
                && scaling.high_freq_factor > scaling.low_freq_factor
                && scaling.original_max_position_embeddings > 0.0)
            {
                return Err(format!(
                    "rope_scaling llama3 needs positive factors with high_freq_factor > \
                     low_freq_factor (got {scaling:?})"
                ));
            }
            Ok(Some(RopeScaling::Llama3(scaling)))
        }
        other => Err(format!(
            "rope_scaling type `{other}` is not supported (supported: llama3)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm_like() -> ModelConfig {
        ModelConfig {
            architecture: Architecture::Llama,
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_layers: 30,
            num_heads: 9,
            num_kv_heads: 3,
            head_dim: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 100_000.0,
            rope_scaling: None,
            context_length: 8192,
            tie_word_embeddings: true,
            attention_bias: false,
            output_bias: false,
            qk_norm: false,
        }
    }

    #[test]
    fn parameter_count_matches_smollm2() {
        // SmolLM2-135M: 134,515,008 weights.
        assert_eq!(smollm_like().parameter_count(), 134_515_008);
    }

    #[test]
    fn validate_rejects_bad_head_layout() {
        let mut config = smollm_like();
        assert!(config.validate().is_ok());
        config.num_kv_heads = 4;
        assert!(config.validate().unwrap_err().contains("multiple"));
        config.num_kv_heads = 0;
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("num_key_value_heads")
        );
    }

    #[test]
    fn hf_config_resolves_families_and_refuses_others() {
        let json = |model_type: &str| {
            format!(
                r#"{{"model_type": "{model_type}", "vocab_size": 10, "hidden_size": 8,
                "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}}"#
            )
        };
        let qwen2: HfConfig = serde_json::from_str(&json("qwen2")).unwrap();
        let config = qwen2.to_model_config().unwrap();
        assert!(config.attention_bias && !config.output_bias && !config.qk_norm);
        assert_eq!((config.num_kv_heads, config.head_dim), (2, 4));
        let qwen3: HfConfig = serde_json::from_str(&json("qwen3")).unwrap();
        assert!(qwen3.to_model_config().unwrap().qk_norm);
        let gemma: HfConfig = serde_json::from_str(&json("gemma3")).unwrap();
        assert!(gemma.to_model_config().unwrap_err().contains("`gemma3`"));
    }

    #[test]
    fn llama3_rope_scaling_keeps_high_and_scales_low_frequencies() {
        let mut config = smollm_like();
        config.rope_theta = 500_000.0;
        config.head_dim = 128;
        config.rope_scaling = Some(RopeScaling::Llama3(Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        }));
        let freqs = config.rope_freqs().unwrap();
        assert_eq!(freqs.len(), 64);
        assert_eq!(freqs[0], 1.0); // highest frequency untouched
        let last_plain = 500_000f32.powf(126.0 / 128.0);
        assert!((freqs[63] / last_plain - 8.0).abs() < 1e-4); // lowest scaled by factor
        assert!(freqs.windows(2).all(|w| w[0] < w[1]));
    }
}
