//! mlx-serve: an OpenAI-compatible LLM inference server on MLX (through mlx-rs).
//!
//! The binary (`src/main.rs`) is a thin CLI over this library; tests and benches use the
//! library directly. Modules so far: `config` (the validated settings of `serve`),
//! `engine` (block allocator, scheduling policy, sampling and stop strings: the parts of the batching engine so far), `model` (loading,
//! the forward pass over the paged KV cache, tokenizer and chat templates) and `runtime`
//! (facts about the MLX installation this process runs on).

pub mod config;
pub mod engine;
pub mod model;
pub mod runtime;
