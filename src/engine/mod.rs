//! The serving engine (BlockPoolBatchEngine): admission, scheduling and sampling over the
//! model runtime. So far: the block allocator.

pub mod block_pool;
