//! The serving engine (BlockPoolBatchEngine): admission, scheduling and sampling over the
//! model runtime. So far: the block allocator, the scheduling policy, per-request sampling,
//! stop strings, and the per-sequence state that turns logits into streamed events.

pub mod block_pool;
pub mod sampling;
pub mod scheduler;
pub mod sequence;
pub mod stop;
