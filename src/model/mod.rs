//! Models: reading weights and their metadata.

pub mod gguf;

pub use gguf::{GgufSummary, ModelError};
