//! Hugging Face model folders: `config.json`, `*.safetensors` (one file or shards), and the
//! tokenizer files, including MLX-community quantized checkpoints (`weight` + `scales` +
//! `biases`, with `quantization` in `config.json`) — the format Apple Silicon users
//! download.

use std::path::{Path, PathBuf};

use mlx_rs::Array;
use serde_json::Value;

use super::ModelError;
use super::config::{HfConfig, ModelConfig};
use super::weights::{QuantSpec, TensorMap};

/// A model folder, read and checked but with no tensors loaded yet.
pub struct HfFolder {
    pub dir: PathBuf,
    pub config: ModelConfig,
    /// The safetensors files holding the weights, in name order.
    pub weight_files: Vec<PathBuf>,
    /// `quantization` (or `quantization_config`) from config.json, when present.
    quantization: Option<Value>,
    /// config.json states `tie_word_embeddings` (otherwise the weights decide).
    tie_stated: bool,
}

impl HfFolder {
    /// Reads `config.json` and finds the weight files: those listed in
    /// `model.safetensors.index.json` when it exists, else every `*.safetensors`.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let config_path = dir.join("config.json");
        let raw: Value = read_json(&config_path)?;
        let hf: HfConfig =
            serde_json::from_value(raw.clone()).map_err(|e| ModelError::InvalidConfig {
                path: config_path.clone(),
                problem: e.to_string(),
            })?;
        let config = hf
            .to_model_config()
            .map_err(|problem| ModelError::InvalidConfig {
                path: config_path.clone(),
                problem,
            })?;
        let quantization = raw
            .get("quantization")
            .or_else(|| raw.get("quantization_config"))
            .cloned();
        if let Some(method) = quantization
            .as_ref()
            .and_then(|q| q.get("quant_method").or_else(|| q.get("mode")))
            .and_then(Value::as_str)
            .filter(|method| *method != "affine" && *method != "mlx")
        {
            return Err(ModelError::InvalidConfig {
                path: config_path,
                problem: format!(
                    "quantization method `{method}` is not supported (only MLX affine \
                     group quantization: weight + scales + biases)"
                ),
            });
        }
        let weight_files = weight_files(dir)?;
        Ok(HfFolder {
            dir: dir.to_path_buf(),
            config,
            weight_files,
            quantization,
            tie_stated: raw
                .get("tie_word_embeddings")
                .is_some_and(Value::is_boolean),
        })
    }

    /// Loads every weight file into one map (lazily: arrays materialise when the model is
    /// built) and returns it with the final config. Quantized tensors get their group size
    /// and bits from the config, honouring per-module overrides
    /// (`"model.layers.0.mlp.down_proj": {"bits": 8, ...}`). When config.json does not say
    /// whether embeddings are tied, they are tied exactly when there is no
    /// `lm_head.weight` (transformers' default is untied, mlx-lm's tied; the weights settle
    /// it).
    pub fn load(&self) -> Result<(ModelConfig, TensorMap), ModelError> {
        let mut map = TensorMap::new(self.dir.display().to_string());
        for file in &self.weight_files {
            let tensors = Array::load_safetensors(file).map_err(|e| ModelError::InvalidConfig {
                path: file.clone(),
                problem: format!("not a readable safetensors file: {e}"),
            })?;
            for (name, tensor) in tensors {
                if let Some(prefix) = name.strip_suffix(".scales") {
                    let spec =
                        self.quant_spec(prefix)
                            .ok_or_else(|| ModelError::InvalidConfig {
                                path: self.dir.join("config.json"),
                                problem: format!(
                                    "tensor {name} is quantized but config.json has no usable \
                             `quantization` for it (group_size > 0, bits 2..=8)"
                                ),
                            })?;
                    map.set_quant(prefix.to_owned(), spec);
                }
                map.insert(name, tensor);
            }
        }
        let mut config = self.config.clone();
        if !self.tie_stated {
            config.tie_word_embeddings = !map.contains("lm_head.weight");
        }
        Ok((config, map))
    }

    fn quant_spec(&self, prefix: &str) -> Option<QuantSpec> {
        let global = self.quantization.as_ref()?;
        let entry = global
            .get(prefix)
            .filter(|v| v.is_object())
            .unwrap_or(global);
        let field = |key: &str| {
            entry
                .get(key)
                .or_else(|| global.get(key))
                .and_then(Value::as_i64)
                .and_then(|v| i32::try_from(v).ok())
        };
        let spec = QuantSpec {
            group_size: field("group_size")?,
            bits: field("bits")?,
        };
        spec.is_valid().then_some(spec)
    }
}

fn read_json(path: &Path) -> Result<Value, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::InvalidConfig {
        path: path.to_path_buf(),
        problem: format!("cannot read: {e}"),
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::InvalidConfig {
        path: path.to_path_buf(),
        problem: format!("not valid JSON: {e}"),
    })
}

fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    let mut files: Vec<PathBuf> = if index.is_file() {
        let value = read_json(&index)?;
        let map = value
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| ModelError::InvalidConfig {
                path: index.clone(),
                problem: "has no `weight_map` object".to_owned(),
            })?;
        let mut names: Vec<&str> = map.values().filter_map(Value::as_str).collect();
        names.sort_unstable();
        names.dedup();
        names.into_iter().map(|name| dir.join(name)).collect()
    } else {
        std::fs::read_dir(dir)
            .map_err(|e| ModelError::InvalidConfig {
                path: dir.to_path_buf(),
                problem: format!("cannot list: {e}"),
            })?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "safetensors"))
            .collect()
    };
    files.sort();
    if files.is_empty() {
        return Err(ModelError::InvalidConfig {
            path: dir.to_path_buf(),
            problem: "no *.safetensors weight files".to_owned(),
        });
    }
    if let Some(missing) = files.iter().find(|file| !file.is_file()) {
        return Err(ModelError::InvalidConfig {
            path: dir.to_path_buf(),
            problem: format!("weight file {} is missing", missing.display()),
        });
    }
    Ok(files)
}
