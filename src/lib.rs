//! mlx-serve: an OpenAI-compatible LLM inference server on MLX (through mlx-rs).
//!
//! The binary (`src/main.rs`) is a thin CLI over this library; tests and benches use the
//! library directly. Modules so far: `model` (model files and what they declare) and
//! `runtime` (facts about the MLX installation this process runs on).

pub mod model;
pub mod runtime;
