//! Models: loading weights, the Llama-family forward pass over the paged KV cache, and
//! tokenization.
//!
//! Everything here that touches MLX must run on one thread (the engine thread): MLX arrays
//! belong to the thread that created them.

mod attention;
pub mod batch;
pub mod chat_template;
pub mod config;
pub mod detokenizer;
mod error;
pub mod gguf;
pub mod gguf_metadata;
pub mod greedy;
pub mod hf;
pub mod hub;
pub mod identity;
pub mod kv_cache;
pub mod llama;
pub mod loader;
mod pool_memory;
mod pre_tokenizer;
pub mod tokenizer;
mod tokenizer_config;
pub mod weights;

pub use chat_template::{ChatMessage, ChatTemplate, ChatTemplateError};
pub use detokenizer::IncrementalDecoder;
pub use error::ModelError;
pub use tokenizer::{Tokenizer, TokenizerError};
