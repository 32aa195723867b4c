//! The engine's settings: one struct, filled from `ServeSettings` by the server (the CLI
//! exposes some of them; the rest keep these defaults, documented in docs/engine.md).

use std::str::FromStr;
use std::time::Duration;

use crate::cache_store::StoreConfig;

/// The longest the oldest queued request waits for further arrivals, in gather windows: a
/// steady trickle of requests must not hold the first one back for long.
pub const ARRIVAL_GATHER_MAX_WINDOWS: u32 = 4;

/// The machine's memory the KV pool may take at most when sized automatically: a quarter.
pub const AUTO_POOL_MEMORY_DIVISOR: u64 = 4;

/// How much memory the KV block pool reserves. The pool bounds the engine's KV memory
/// (work beyond it is refused or queued, never an out-of-memory), while its pages become
/// resident only as blocks are written (`model::kv_cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolSize {
    /// From the model and the machine: room for `max_batch` sequences at the model's full
    /// context, and no more than a quarter of the machine's memory (or of its container's
    /// limit when lower).
    Auto,
    /// This many bytes (whole blocks of it).
    Bytes(usize),
}

impl PoolSize {
    /// The pool's budget in bytes, for a model whose tokens take `bytes_per_token` across
    /// its layers, an engine running `max_batch` sequences of at most `context_length`
    /// tokens, on a machine with `machine_memory` bytes (0: unknown). Fails when `Auto`
    /// cannot tell the machine's memory.
    pub fn budget(
        self,
        bytes_per_token: usize,
        max_batch: usize,
        context_length: usize,
        machine_memory: u64,
    ) -> Result<usize, String> {
        match self {
            PoolSize::Bytes(bytes) => Ok(bytes),
            PoolSize::Auto if machine_memory == 0 => Err(
                "cannot size the KV pool automatically: this system does not report its \
                 memory; set --kv-cache-mb"
                    .to_owned(),
            ),
            PoolSize::Auto => {
                let full_use = bytes_per_token
                    .saturating_mul(max_batch)
                    .saturating_mul(context_length);
                let share = usize::try_from(machine_memory / AUTO_POOL_MEMORY_DIVISOR)
                    .unwrap_or(usize::MAX);
                Ok(full_use.min(share))
            }
        }
    }
}

/// Engine settings (from `ServeSettings` in the server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    pub kv_pool: PoolSize,
    pub block_size: usize,
    /// Sequences per step.
    pub max_batch: usize,
    /// Tokens per step (prefill chunks plus one per decode).
    pub max_step_tokens: usize,
    /// Prompt tokens one sequence prefills per step.
    pub prefill_chunk: usize,
    /// A step that carries prompt tokens while sequences decode is sized, from measured
    /// step costs, to take about this many pure decode steps; 0 = no limit beyond
    /// `max_step_tokens`.
    pub decode_stall_factor: usize,
    /// Before an engine with nothing running starts on the requests queued, it waits until
    /// no further request has come for this long (and no longer than
    /// [`ARRIVAL_GATHER_MAX_WINDOWS`] windows after the oldest arrived), so requests sent
    /// together prefill together; zero starts at once.
    pub arrival_gather: Duration,
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
    /// The disk tier (agent memory); `None` keeps KV in the pool only.
    pub kv_store: Option<StoreConfig>,
    /// What requests without an agent id write to disk (agents' blocks always are).
    pub store_policy: StorePolicy,
}

/// `--kv-store-policy`: which blocks of requests *without* an agent id go to disk. Every
/// full block of an agent's context always does; any request reads what is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorePolicy {
    /// Only agents' blocks.
    Agents,
    /// Also prefix blocks a request reused from the pool (a prefix seen twice): shared
    /// system prompts and conversations whose history is still hot survive a restart, for
    /// a few blocks written (BENCHMARK_REPORT.md).
    #[default]
    Reused,
    /// Every full block of every request.
    All,
}

impl FromStr for StorePolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "agents" => Ok(StorePolicy::Agents),
            "reused" => Ok(StorePolicy::Reused),
            "all" => Ok(StorePolicy::All),
            other => Err(format!(
                "unknown KV store policy `{other}`; expected `agents`, `reused` or `all`"
            )),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            kv_pool: PoolSize::Auto,
            block_size: 16,
            max_batch: 16,
            max_step_tokens: 2048,
            prefill_chunk: 256,
            decode_stall_factor: 6,
            arrival_gather: Duration::from_millis(5),
            max_queue: 64,
            watermark_blocks: 4,
            queue_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
            event_buffer: 16,
            kv_store: None,
            store_policy: StorePolicy::Reused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn an_explicit_size_is_kept() {
        assert_eq!(
            PoolSize::Bytes(64 << 20).budget(46_080, 16, 8192, 24 * GIB),
            Ok(64 << 20)
        );
    }

    #[test]
    fn auto_holds_a_full_batch_at_full_context_when_memory_allows() {
        // The default model in f32: 46,080 bytes per token, 16 sequences of 8,192 tokens.
        let full = 46_080 * 16 * 8192;
        assert_eq!(PoolSize::Auto.budget(46_080, 16, 8192, 24 * GIB), Ok(full));
    }

    #[test]
    fn auto_takes_at_most_a_quarter_of_the_machine() {
        // Llama 3 8B in f16 (131,072 bytes per token) at 128K tokens of context, 16 GiB.
        assert_eq!(
            PoolSize::Auto.budget(131_072, 16, 131_072, 16 * GIB),
            Ok((4 * GIB) as usize)
        );
    }

    #[test]
    fn auto_refuses_when_the_machine_memory_is_unknown() {
        let error = PoolSize::Auto.budget(46_080, 16, 8192, 0).unwrap_err();
        assert!(error.contains("--kv-cache-mb"), "{error}");
        assert_eq!(
            PoolSize::Bytes(1 << 20).budget(46_080, 16, 8192, 0),
            Ok(1 << 20)
        );
    }
}
