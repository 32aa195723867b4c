//! mlx-serve: an OpenAI-compatible LLM inference server on MLX (through mlx-rs).
//!
//! The binary (`src/main.rs`) is a thin CLI over this library; tests and benches use the
//! library directly. Layers, each knowing only the one below it (see
//! `docs/architecture.md`): `model` (weights, forward pass, tokenizer) and `runtime`
//! (facts about the MLX installation this process runs on).

pub mod model;
pub mod runtime;
