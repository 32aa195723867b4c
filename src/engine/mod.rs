//! The serving engine (BlockPoolBatchEngine): admission, scheduling and sampling over the
//! model runtime: [`EngineHandle`] (async side) queues or refuses requests at once under
//! the admission lock (`admission`) and talks to one engine thread (`worker`) that owns
//! the model and the KV pool, plans each step with the [`scheduler`], and streams each
//! request's events through a bounded channel.

mod admission;
pub mod block_pool;
mod config;
mod handle;
mod persistence;
pub mod priority;
pub mod sampling;
pub mod scheduler;
pub mod sequence;
pub mod served_model;
pub mod step_cost;
pub mod step_profile;
pub mod stop;
mod worker;

pub use admission::Pending;
pub use config::{EngineConfig, PoolSize, StorePolicy};
pub use handle::{DrainReport, EngineHandle, EngineStats, EventStream, Room, SubmitError};
pub use persistence::PersistReport;
pub use served_model::{PromptError, ServedModel};
pub use step_profile::{KindProfile, StepKind, StepPhase, StepProfile};
