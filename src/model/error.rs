//! Errors from loading and running models, with the file, key or tensor a user needs to
//! act on them.

use std::path::PathBuf;

use mlx_rs::error::Exception;
use mlx_rs::io::GgufError;

use super::batch::BatchError;
use super::chat_template::ChatTemplateError;
use super::gguf_metadata::MetadataError;
use super::tokenizer::TokenizerError;

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
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("{path}: model architecture `{name}` is not supported (supported: {supported})")]
    UnsupportedArchitecture {
        path: PathBuf,
        name: String,
        supported: &'static str,
    },
    #[error("{path}: invalid model configuration: {problem}")]
    InvalidConfig { path: PathBuf, problem: String },
    #[error("{source_name}: tensor `{name}` is missing")]
    MissingTensor { source_name: String, name: String },
    #[error(
        "{source_name}: {count} tensors are not used by the configured model (e.g. {examples}); \
         config.json does not describe these weights"
    )]
    UnusedTensors {
        source_name: String,
        count: usize,
        examples: String,
    },
    #[error("{source_name}: tensor `{name}` has shape {found}, expected {expected}")]
    TensorShape {
        source_name: String,
        name: String,
        expected: String,
        found: String,
    },
    #[error("model `{id}` from the Hugging Face Hub: {problem}")]
    Hub { id: String, problem: String },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("{path}: {source}")]
    ChatTemplate {
        path: PathBuf,
        #[source]
        source: ChatTemplateError,
    },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("KV cache: {0}")]
    KvCache(String),
    #[error("MLX error: {0}")]
    Mlx(#[from] Exception),
    #[error("invalid batch: {0}")]
    Batch(#[from] BatchError),
}
