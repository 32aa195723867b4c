//! The serving engine (BlockPoolBatchEngine): admission, scheduling and sampling over the
//! model runtime. So far: the block allocator, the scheduling policy, per-request sampling
//! and stop strings.

pub mod block_pool;
pub mod sampling;
pub mod scheduler;
pub mod stop;
