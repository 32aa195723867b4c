//! GGUF model files: what a file declares about the model inside it.
//!
//! MLX's GGUF reader (`mlx_rs::io::GgufFile`) hands back tensors lazily and the metadata as
//! MLX arrays or strings. Everything here runs on the calling thread and returns plain Rust
//! data, so no MLX array outlives the call (MLX arrays belong to the thread that made them).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use mlx_rs::io::{GgufError, GgufFile, GgufMetadataValue};

/// Block size of every GGUF quantization type MLX loads (Q4_0, Q4_1, Q8_0): one scale
/// (and bias) per 32 weights.
const GGUF_QUANT_GROUP: usize = 32;

/// Errors reading a model file, with the path and key a user needs to act on them.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model file {path} does not exist (run `make setup` for the default model)")]
    NotFound { path: PathBuf },
    #[error("cannot read GGUF file {path}: {source}")]
    Gguf {
        path: PathBuf,
        #[source]
        source: GgufError,
    },
    #[error("GGUF file {path} has no metadata key `{key}`")]
    MissingMetadata { path: PathBuf, key: String },
    #[error("GGUF file {path}: metadata key `{key}` {problem}")]
    BadMetadata {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

/// How a model's weights are stored, counted per tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WeightFormat {
    /// Group-quantized integers of this many bits (MLX layout: packed u32 + scales + biases).
    Quantized { bits: u32 },
    /// Plain floating point, named by MLX dtype.
    Float(&'static str),
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightFormat::Quantized { bits } => write!(f, "q{bits}"),
            WeightFormat::Float(name) => f.write_str(name),
        }
    }
}

/// The architecture and size a GGUF file declares, plus what its tensors hold.
#[derive(Debug, Clone)]
pub struct GgufSummary {
    pub path: PathBuf,
    /// `general.architecture`, e.g. `llama`.
    pub architecture: String,
    /// `general.name`, when the file carries one.
    pub name: Option<String>,
    pub layers: u32,
    pub hidden_size: u32,
    pub feed_forward_size: u32,
    pub attention_heads: u32,
    /// Equal to `attention_heads` unless the model uses grouped-query attention.
    pub kv_heads: u32,
    pub context_length: u32,
    pub rope_theta: Option<f32>,
    /// Number of entries in the embedded tokenizer vocabulary.
    pub vocab_size: usize,
    /// The Jinja chat template (`tokenizer.chat_template`), if the file has one.
    pub chat_template: Option<String>,
    /// Logical weights (quantized tensors counted unpacked).
    pub parameters: u64,
    /// Number of weight tensors per storage format.
    pub tensor_formats: BTreeMap<WeightFormat, usize>,
}

impl GgufSummary {
    /// Reads a GGUF file's metadata and tensor shapes. Call it on the thread that will use
    /// the result's source arrays, if any; the summary itself is plain data.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref().to_path_buf();
        if !path.is_file() {
            return Err(ModelError::NotFound { path });
        }
        let gguf_err = |source| ModelError::Gguf {
            path: path.clone(),
            source,
        };
        let file = GgufFile::load(&path).map_err(gguf_err)?;
        let meta = Metadata {
            file: &file,
            path: &path,
        };

        let architecture = meta.required_string("general.architecture")?;
        let arch_key = |suffix: &str| format!("{architecture}.{suffix}");
        let attention_heads = meta.required_u32(&arch_key("attention.head_count"))?;
        let kv_heads = meta
            .optional_u32(&arch_key("attention.head_count_kv"))?
            .unwrap_or(attention_heads);
        let vocab_size = meta
            .strings("tokenizer.ggml.tokens")?
            .map(|tokens| tokens.len())
            .ok_or_else(|| ModelError::MissingMetadata {
                path: path.clone(),
                key: "tokenizer.ggml.tokens".to_owned(),
            })?;

        let tensors = file.arrays().map_err(gguf_err)?;
        let mut parameters = 0u64;
        let mut tensor_formats = BTreeMap::new();
        for (key, tensor) in &tensors {
            if key.ends_with(".scales") || key.ends_with(".biases") {
                continue;
            }
            let (format, count) = match key
                .strip_suffix(".weight")
                .and_then(|stem| tensors.get(&format!("{stem}.scales")))
            {
                Some(scales) => {
                    // Packed u32 words hold 32/bits weights each; scales hold one per group.
                    let logical = scales.size() * GGUF_QUANT_GROUP;
                    let packed_bits = tensor.size() * 32;
                    let bits = u32::try_from(packed_bits / logical.max(1)).unwrap_or(0);
                    (WeightFormat::Quantized { bits }, logical)
                }
                None => (
                    WeightFormat::Float(dtype_name(tensor.dtype())),
                    tensor.size(),
                ),
            };
            parameters += count as u64;
            *tensor_formats.entry(format).or_insert(0) += 1;
        }

        Ok(GgufSummary {
            name: meta.string("general.name")?,
            layers: meta.required_u32(&arch_key("block_count"))?,
            hidden_size: meta.required_u32(&arch_key("embedding_length"))?,
            feed_forward_size: meta.required_u32(&arch_key("feed_forward_length"))?,
            context_length: meta.required_u32(&arch_key("context_length"))?,
            rope_theta: meta.optional_f32(&arch_key("rope.freq_base"))?,
            chat_template: meta.string("tokenizer.chat_template")?,
            attention_heads,
            kv_heads,
            vocab_size,
            parameters,
            tensor_formats,
            architecture,
            path,
        })
    }
}

impl fmt::Display for GgufSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "model:          {}", self.path.display())?;
        if let Some(name) = &self.name {
            writeln!(f, "name:           {name}")?;
        }
        writeln!(f, "architecture:   {}", self.architecture)?;
        writeln!(
            f,
            "parameters:     {:.1}M",
            self.parameters as f64 / 1_000_000.0
        )?;
        writeln!(
            f,
            "layers:         {} (hidden {}, feed-forward {})",
            self.layers, self.hidden_size, self.feed_forward_size
        )?;
        writeln!(
            f,
            "attention:      {} heads, {} KV heads, head dim {}",
            self.attention_heads,
            self.kv_heads,
            self.hidden_size / self.attention_heads.max(1)
        )?;
        writeln!(f, "context:        {} tokens", self.context_length)?;
        if let Some(theta) = self.rope_theta {
            writeln!(f, "rope theta:     {theta}")?;
        }
        writeln!(f, "vocabulary:     {} tokens", self.vocab_size)?;
        let formats: Vec<String> = self
            .tensor_formats
            .iter()
            .map(|(format, count)| format!("{count} {format}"))
            .collect();
        writeln!(f, "tensors:        {}", formats.join(", "))?;
        write!(
            f,
            "chat template:  {}",
            match &self.chat_template {
                Some(template) => format!("yes ({} chars)", template.len()),
                None => "none".to_owned(),
            }
        )
    }
}

fn dtype_name(dtype: mlx_rs::Dtype) -> &'static str {
    use mlx_rs::Dtype;
    match dtype {
        Dtype::Float32 => "f32",
        Dtype::Float16 => "f16",
        Dtype::Bfloat16 => "bf16",
        Dtype::Float64 => "f64",
        Dtype::Uint8 => "u8",
        Dtype::Uint32 => "u32",
        Dtype::Int8 => "i8",
        Dtype::Int32 => "i32",
        _ => "other",
    }
}

/// Typed access to one file's metadata, turning absent or mistyped keys into errors that
/// name the file and the key.
struct Metadata<'a> {
    file: &'a GgufFile,
    path: &'a Path,
}

impl Metadata<'_> {
    fn bad(&self, key: &str, problem: impl Into<String>) -> ModelError {
        ModelError::BadMetadata {
            path: self.path.to_path_buf(),
            key: key.to_owned(),
            problem: problem.into(),
        }
    }

    fn missing(&self, key: &str) -> ModelError {
        ModelError::MissingMetadata {
            path: self.path.to_path_buf(),
            key: key.to_owned(),
        }
    }

    fn value(&self, key: &str) -> Result<Option<GgufMetadataValue>, ModelError> {
        self.file
            .get_metadata(key)
            .map_err(|source| ModelError::Gguf {
                path: self.path.to_path_buf(),
                source,
            })
    }

    fn string(&self, key: &str) -> Result<Option<String>, ModelError> {
        match self.value(key)? {
            None => Ok(None),
            Some(GgufMetadataValue::String(value)) => Ok(Some(value)),
            Some(other) => Err(self.bad(key, format!("is {:?}, expected a string", other.kind()))),
        }
    }

    fn required_string(&self, key: &str) -> Result<String, ModelError> {
        self.string(key)?.ok_or_else(|| self.missing(key))
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<String>>, ModelError> {
        match self.value(key)? {
            None => Ok(None),
            Some(GgufMetadataValue::Strings(values)) => Ok(Some(values)),
            Some(other) => Err(self.bad(
                key,
                format!("is {:?}, expected a list of strings", other.kind()),
            )),
        }
    }

    fn scalar(&self, key: &str) -> Result<Option<mlx_rs::Array>, ModelError> {
        match self.value(key)? {
            None => Ok(None),
            Some(GgufMetadataValue::Array(array)) if array.size() == 1 => Ok(Some(array)),
            Some(GgufMetadataValue::Array(array)) => Err(self.bad(
                key,
                format!("has {} elements, expected one number", array.size()),
            )),
            Some(other) => Err(self.bad(key, format!("is {:?}, expected a number", other.kind()))),
        }
    }

    fn optional_u32(&self, key: &str) -> Result<Option<u32>, ModelError> {
        let Some(array) = self.scalar(key)? else {
            return Ok(None);
        };
        let value: i64 = array
            .try_item_cast()
            .map_err(|e| self.bad(key, format!("is not an integer: {e}")))?;
        u32::try_from(value)
            .map(Some)
            .map_err(|_| self.bad(key, format!("is {value}, out of range")))
    }

    fn required_u32(&self, key: &str) -> Result<u32, ModelError> {
        self.optional_u32(key)?.ok_or_else(|| self.missing(key))
    }

    fn optional_f32(&self, key: &str) -> Result<Option<f32>, ModelError> {
        let Some(array) = self.scalar(key)? else {
            return Ok(None);
        };
        array
            .try_item_cast()
            .map(Some)
            .map_err(|e| self.bad(key, format!("is not a number: {e}")))
    }
}
