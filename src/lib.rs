//! mlx-serve: an OpenAI-compatible LLM inference server on MLX (through mlx-rs).
//!
//! The binary (`src/main.rs`) is a thin CLI over this library; tests and benches use the
//! library directly. Modules, each knowing only the one below it:
//! - `api`: the OpenAI-compatible HTTP server (axum on our hyper accept loop): routes,
//!   types, SSE, errors, auth, allowed hosts, request ids, graceful shutdown;
//! - `engine`: the continuous-batching engine — its handle and admission queue, its
//!   thread, block allocator, scheduler, sampling, stop strings, the served model;
//! - `model`: loading, the forward pass over the paged KV cache, tokenizer, chat templates;
//! - `metrics`: latency histograms and counters recorded by the HTTP layer and the engine,
//!   rendered for Prometheus and as JSON;
//! - `config`: the validated settings of `serve`; `device`: which device MLX computes on;
//!   `runtime`: facts about the MLX installation this process runs on.

pub mod api;
pub mod cache_store;
pub mod config;
#[cfg(target_os = "linux")]
pub mod core_pool;
pub mod device;
pub mod engine;
#[cfg(target_os = "linux")]
pub mod few_row_gemm;
pub mod metrics;
pub mod model;
#[cfg(target_os = "linux")]
pub mod openblas_core;
pub mod runtime;
#[cfg(target_os = "linux")]
pub mod sgemm_forward;
