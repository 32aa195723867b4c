//! The serving engine (BlockPoolBatchEngine): admission, scheduling and sampling over the
//! model runtime: [`EngineHandle`] (async side) talks to one engine thread
//! (`worker`) that owns the model, the KV pool and the [`scheduler`], and streams each
//! request's events through a bounded channel.

pub mod block_pool;
mod handle;
pub mod sampling;
pub mod scheduler;
pub mod sequence;
pub mod stop;
mod worker;

pub use handle::{DrainReport, EngineHandle, EngineStats, EventStream, ServedModel, SubmitError};
pub use worker::EngineConfig;
