//! Typed access to a GGUF file's metadata, shared by the model loader (hyper-parameters) and
//! the tokenizer builder (vocabulary, merges, special tokens).
//!
//! MLX returns numbers as MLX arrays and text as strings; every accessor here returns plain
//! Rust values and turns an absent or mistyped key into a [`MetadataError`] that names the
//! file and the key.

use std::path::{Path, PathBuf};

use mlx_rs::Array;
use mlx_rs::io::{GgufError, GgufFile, GgufMetadataValue};

/// A metadata key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("cannot read metadata `{key}` from GGUF file {path}: {source}")]
    Read {
        path: PathBuf,
        key: String,
        #[source]
        source: GgufError,
    },
    #[error("GGUF file {path} has no metadata key `{key}`")]
    Missing { path: PathBuf, key: String },
    #[error("GGUF file {path}: metadata key `{key}` {problem}")]
    Bad {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

impl MetadataError {
    /// The metadata key at fault.
    pub fn key(&self) -> &str {
        match self {
            MetadataError::Read { key, .. }
            | MetadataError::Missing { key, .. }
            | MetadataError::Bad { key, .. } => key,
        }
    }
}

/// One file's metadata, read on the calling thread.
pub struct GgufMetadata<'a> {
    file: &'a GgufFile,
    path: &'a Path,
}

impl<'a> GgufMetadata<'a> {
    pub fn new(file: &'a GgufFile, path: &'a Path) -> Self {
        GgufMetadata { file, path }
    }

    /// An error for a required key that is absent.
    pub fn missing(&self, key: &str) -> MetadataError {
        MetadataError::Missing {
            path: self.path.to_path_buf(),
            key: key.to_owned(),
        }
    }

    /// An error for a key whose value is present but unusable.
    pub fn bad(&self, key: &str, problem: impl Into<String>) -> MetadataError {
        MetadataError::Bad {
            path: self.path.to_path_buf(),
            key: key.to_owned(),
            problem: problem.into(),
        }
    }

    fn value(&self, key: &str) -> Result<Option<GgufMetadataValue>, MetadataError> {
        self.file
            .get_metadata(key)
            .map_err(|source| MetadataError::Read {
                path: self.path.to_path_buf(),
                key: key.to_owned(),
                source,
            })
    }

    pub fn string(&self, key: &str) -> Result<Option<String>, MetadataError> {
        match self.value(key)? {
            None => Ok(None),
            Some(GgufMetadataValue::String(value)) => Ok(Some(value)),
            Some(other) => Err(self.bad(key, format!("is {:?}, expected a string", other.kind()))),
        }
    }

    pub fn required_string(&self, key: &str) -> Result<String, MetadataError> {
        self.string(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn strings(&self, key: &str) -> Result<Option<Vec<String>>, MetadataError> {
        match self.value(key)? {
            None => Ok(None),
            Some(GgufMetadataValue::Strings(values)) => Ok(Some(values)),
            Some(other) => Err(self.bad(
                key,
                format!("is {:?}, expected a list of strings", other.kind()),
            )),
        }
    }

    pub fn required_strings(&self, key: &str) -> Result<Vec<String>, MetadataError> {
        self.strings(key)?.ok_or_else(|| self.missing(key))
    }

    fn array(&self, key: &str) -> Result<Option<Array>, MetadataError> {
        match self.value(key)? {
            None => Ok(None),
            Some(GgufMetadataValue::Array(array)) => Ok(Some(array)),
            Some(other) => Err(self.bad(key, format!("is {:?}, expected numbers", other.kind()))),
        }
    }

    /// A one-dimensional list of integers (e.g. token types).
    pub fn i32_array(&self, key: &str) -> Result<Option<Vec<i32>>, MetadataError> {
        let Some(array) = self.array(key)? else {
            return Ok(None);
        };
        if array.ndim() > 1 {
            return Err(self.bad(key, format!("has {} dimensions, expected 1", array.ndim())));
        }
        array
            .to_vec_cast::<i32>()
            .map(Some)
            .map_err(|e| self.bad(key, format!("is not a list of integers: {e}")))
    }

    fn scalar(&self, key: &str) -> Result<Option<Array>, MetadataError> {
        match self.array(key)? {
            Some(array) if array.size() != 1 => Err(self.bad(
                key,
                format!("has {} elements, expected one value", array.size()),
            )),
            other => Ok(other),
        }
    }

    pub fn optional_u32(&self, key: &str) -> Result<Option<u32>, MetadataError> {
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

    pub fn required_u32(&self, key: &str) -> Result<u32, MetadataError> {
        self.optional_u32(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn optional_f32(&self, key: &str) -> Result<Option<f32>, MetadataError> {
        let Some(array) = self.scalar(key)? else {
            return Ok(None);
        };
        array
            .try_item_cast()
            .map(Some)
            .map_err(|e| self.bad(key, format!("is not a number: {e}")))
    }

    pub fn optional_bool(&self, key: &str) -> Result<Option<bool>, MetadataError> {
        let Some(array) = self.scalar(key)? else {
            return Ok(None);
        };
        array
            .try_item_cast::<bool>()
            .map(Some)
            .map_err(|e| self.bad(key, format!("is not a boolean: {e}")))
    }
}
