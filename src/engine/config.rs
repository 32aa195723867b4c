//! The engine's settings: one struct, filled from `ServeSettings` by the server (the CLI
//! exposes some of them; the rest keep these defaults, documented in docs/engine.md).

use std::time::Duration;

/// Engine settings (from `ServeSettings` in the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    pub kv_cache_bytes: usize,
    pub block_size: usize,
    /// Sequences per step.
    pub max_batch: usize,
    /// Tokens per step (prefill chunks plus one per decode).
    pub max_step_tokens: usize,
    /// Prompt tokens one sequence prefills per step.
    pub prefill_chunk: usize,
    /// Generations that may wait for admission; 0 = refuse what cannot start in the next
    /// step.
    pub max_queue: usize,
    /// Blocks kept free beyond a new prompt's own at admission (room to grow).
    pub watermark_blocks: usize,
    /// Longest a generation waits for admission (also after a preemption).
    pub queue_timeout: Duration,
    /// Longest a client may take nothing while events wait for it before its generation
    /// is ended.
    pub stall_timeout: Duration,
    /// Events buffered per request before it is paused.
    pub event_buffer: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            kv_cache_bytes: 512 << 20,
            block_size: 16,
            max_batch: 16,
            max_step_tokens: 512,
            prefill_chunk: 256,
            max_queue: 64,
            watermark_blocks: 4,
            queue_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
            event_buffer: 16,
        }
    }
}
