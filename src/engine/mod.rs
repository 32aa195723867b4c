//! The serving engine (BlockPoolBatchEngine): admission, scheduling and sampling over the
//! model runtime. So far: the block allocator and per-request sampling.

pub mod block_pool;
pub mod sampling;
