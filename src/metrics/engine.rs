//! What the engine records as it works: latencies of each request's phases and the
//! counters its periodic [`crate::engine::EngineStats`] snapshot does not carry. Written
//! from the engine thread, read at scrape time; plain Rust, no MLX.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;

use crate::cache_store::KvStore;

use super::latency::{
    FIRST_TOKEN_BUCKETS, INTER_TOKEN_BUCKETS, LatencySeries, REQUEST_BUCKETS, SeriesSnapshot,
};

/// The engine's latency histograms, one per phase of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineLatency {
    /// Submission to the first generated token (queue wait + prefill).
    TimeToFirstToken,
    /// Between two consecutive tokens of one sequence.
    InterToken,
    /// Submission to admission (waiting for a batch slot or KV blocks).
    QueueWait,
    /// Admission to the first generated token.
    Prefill,
    /// First to last token of a generation that finished (stop or length).
    Decode,
    /// Submission to the end of a generation that finished (stop or length).
    EndToEnd,
    /// Reading and verifying a restore's blocks from disk.
    KvRestore,
}

impl EngineLatency {
    /// Every phase, in the order they are exported.
    pub const ALL: [EngineLatency; 7] = [
        EngineLatency::TimeToFirstToken,
        EngineLatency::InterToken,
        EngineLatency::QueueWait,
        EngineLatency::Prefill,
        EngineLatency::Decode,
        EngineLatency::EndToEnd,
        EngineLatency::KvRestore,
    ];

    /// The metric's name without namespace and unit.
    pub fn name(self) -> &'static str {
        match self {
            EngineLatency::TimeToFirstToken => "time_to_first_token",
            EngineLatency::InterToken => "inter_token_latency",
            EngineLatency::QueueWait => "request_queue_time",
            EngineLatency::Prefill => "request_prefill_time",
            EngineLatency::Decode => "request_decode_time",
            EngineLatency::EndToEnd => "e2e_request_latency",
            EngineLatency::KvRestore => "kv_store_restore_time",
        }
    }

    /// The metric's help text.
    pub fn help(self) -> &'static str {
        match self {
            EngineLatency::TimeToFirstToken => {
                "Time from submission to the first generated token (engine side)"
            }
            EngineLatency::InterToken => "Time between two consecutive tokens of one sequence",
            EngineLatency::QueueWait => "Time from submission to admission into the batch",
            EngineLatency::Prefill => "Time from admission to the first generated token",
            EngineLatency::Decode => "Time from the first to the last token of finished requests",
            EngineLatency::EndToEnd => "Time from submission to the end of finished requests",
            EngineLatency::KvRestore => "Time to read and verify a restore's KV blocks from disk",
        }
    }

    fn buckets(self) -> &'static [f64] {
        match self {
            EngineLatency::TimeToFirstToken
            | EngineLatency::QueueWait
            | EngineLatency::Prefill
            | EngineLatency::KvRestore => FIRST_TOKEN_BUCKETS,
            EngineLatency::InterToken => INTER_TOKEN_BUCKETS,
            EngineLatency::Decode | EngineLatency::EndToEnd => REQUEST_BUCKETS,
        }
    }
}

/// Why a request was refused before it started; `as_str` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rejection {
    /// The pool could not take it and queueing is off (`--max-queue 0`).
    KvCacheExhausted,
    /// Every batch slot was taken and queueing is off (`--max-queue 0`).
    BatchFull,
    /// The wait queue was full.
    QueueFull,
    /// It waited for KV blocks longer than the queue timeout.
    QueueTimeout,
    /// The server is shutting down.
    Draining,
    /// The model has not finished loading.
    Loading,
}

impl Rejection {
    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::KvCacheExhausted => "kv_cache_exhausted",
            Rejection::BatchFull => "batch_full",
            Rejection::QueueFull => "queue_full",
            Rejection::QueueTimeout => "queue_timeout",
            Rejection::Draining => "draining",
            Rejection::Loading => "loading",
        }
    }
}

/// Why the engine ended a generation with finish reason `aborted`; `as_str` is the metric
/// label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AbortCause {
    /// Still running when the drain deadline passed.
    DrainTimeout,
    /// Its client took nothing for `--stall-timeout-secs`.
    Stalled,
    /// Preempted, it waited longer than the queue timeout to run again.
    QueueTimeout,
    /// The forward step failed, or refused this sequence's plan.
    StepFailed,
    /// Its tokens could not be turned into text.
    Detokenizer,
}

impl AbortCause {
    /// The `cause` label.
    pub fn as_str(self) -> &'static str {
        match self {
            AbortCause::DrainTimeout => "drain_timeout",
            AbortCause::Stalled => "stalled",
            AbortCause::QueueTimeout => "queue_timeout",
            AbortCause::StepFailed => "step_failed",
            AbortCause::Detokenizer => "detokenizer",
        }
    }
}

/// Shared between the engine thread (writes) and scrapes (reads).
#[derive(Debug)]
pub struct EngineMetrics {
    latencies: Mutex<Vec<LatencySeries>>,
    prompt_tokens: AtomicU64,
    prefix_cache_queries: AtomicU64,
    prefix_cache_hits: AtomicU64,
    restored_tokens: AtomicU64,
    /// The disk store, once an engine with one started.
    store: OnceLock<Arc<KvStore>>,
    /// By finish reason label (`stop`, `length`, `cancelled`, `aborted`).
    finished: Mutex<BTreeMap<&'static str, u64>>,
    rejected: Mutex<BTreeMap<Rejection, u64>>,
    aborted: Mutex<BTreeMap<AbortCause, u64>>,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        EngineMetrics {
            latencies: Mutex::new(
                EngineLatency::ALL
                    .iter()
                    .map(|kind| LatencySeries::new(kind.buckets()))
                    .collect(),
            ),
            prompt_tokens: AtomicU64::new(0),
            prefix_cache_queries: AtomicU64::new(0),
            prefix_cache_hits: AtomicU64::new(0),
            restored_tokens: AtomicU64::new(0),
            store: OnceLock::new(),
            finished: Mutex::new(BTreeMap::new()),
            rejected: Mutex::new(BTreeMap::new()),
            aborted: Mutex::new(BTreeMap::new()),
        }
    }
}

/// Counters read at scrape time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineCounters {
    pub prompt_tokens: u64,
    /// Prompt tokens looked up in the prefix cache at admission, and those found there.
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    /// Prompt tokens whose KV was read back from the disk store.
    pub restored_tokens: u64,
    pub store: Option<StoreFigures>,
    pub finished: BTreeMap<&'static str, u64>,
    pub rejected: BTreeMap<Rejection, u64>,
    /// Generations ended with finish reason `aborted`, by cause.
    pub aborted: BTreeMap<AbortCause, u64>,
}

/// The disk store at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StoreFigures {
    /// Bytes of files under the store folder (every model's) against the budget.
    pub bytes: u64,
    pub budget_bytes: u64,
    pub files: usize,
    /// This model's blocks on disk.
    pub blocks: usize,
    pub quarantined_files_now: usize,
    pub blocks_written: u64,
    pub bytes_written: u64,
    /// Time spent writing them.
    pub write_seconds: f64,
    pub blocks_read: u64,
    pub bytes_read: u64,
    /// Stored blocks that could not be used, by reason.
    pub misses: BTreeMap<&'static str, u64>,
    /// Blocks that should have been written and were not, by reason.
    pub drops: BTreeMap<&'static str, u64>,
    pub deferred: u64,
    pub evicted: u64,
    pub quarantined: u64,
    pub queued_blocks: u64,
    pub queued_bytes: u64,
}

impl StoreFigures {
    fn read(store: &KvStore) -> StoreFigures {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counters = store.counters();
        let snapshot = store.snapshot();
        StoreFigures {
            bytes: snapshot.bytes,
            budget_bytes: snapshot.budget,
            files: snapshot.files,
            blocks: snapshot.blocks,
            quarantined_files_now: snapshot.quarantined_files,
            blocks_written: get(&counters.blocks_written),
            bytes_written: get(&counters.bytes_written),
            write_seconds: get(&counters.write_nanos) as f64 / 1e9,
            blocks_read: get(&counters.blocks_read),
            bytes_read: get(&counters.bytes_read),
            misses: counters.misses().into_iter().collect(),
            drops: counters.drops().into_iter().collect(),
            deferred: get(&counters.deferred),
            evicted: get(&counters.evicted),
            quarantined: get(&counters.quarantined),
            queued_blocks: get(&counters.queued_blocks),
            queued_bytes: get(&counters.queued_bytes),
        }
    }
}

impl EngineMetrics {
    /// Exports the disk store's figures from now on (the engine calls this once).
    pub fn attach_store(&self, store: Option<Arc<KvStore>>) {
        if let Some(store) = store {
            let _ = self.store.set(store);
        }
    }

    /// A restore wrote `tokens` prompt tokens from disk after reading for `elapsed`. They
    /// count as prefix cache hits too (of the disk tier).
    pub fn record_restore(&self, tokens: usize, elapsed: Duration) {
        self.restored_tokens
            .fetch_add(tokens as u64, Ordering::Relaxed);
        self.prefix_cache_hits
            .fetch_add(tokens as u64, Ordering::Relaxed);
        self.record([(EngineLatency::KvRestore, elapsed)]);
    }

    /// Records several observations under one lock (the engine records a step's at once).
    pub fn record(&self, observations: impl IntoIterator<Item = (EngineLatency, Duration)>) {
        if let Ok(mut series) = self.latencies.lock() {
            for (kind, latency) in observations {
                series[kind as usize].record(latency);
            }
        }
    }

    /// A request was admitted for the first time: its prompt, and how much of it the
    /// prefix cache held.
    pub fn record_admission(&self, prompt_tokens: usize, cached_tokens: usize) {
        self.prompt_tokens
            .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
        self.prefix_cache_queries
            .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
        self.prefix_cache_hits
            .fetch_add(cached_tokens as u64, Ordering::Relaxed);
    }

    /// A generation ended (or its client left while it waited) for `reason`.
    pub fn record_finish(&self, reason: &'static str) {
        if let Ok(mut finished) = self.finished.lock() {
            *finished.entry(reason).or_default() += 1;
        }
    }

    /// A request was refused before it started.
    pub fn record_rejection(&self, reason: Rejection) {
        if let Ok(mut rejected) = self.rejected.lock() {
            *rejected.entry(reason).or_default() += 1;
        }
    }

    /// The engine ended a generation with finish reason `aborted` (counted as a finish
    /// reason too, by [`EngineMetrics::record_finish`]).
    pub fn record_abort(&self, cause: AbortCause) {
        if let Ok(mut aborted) = self.aborted.lock() {
            *aborted.entry(cause).or_default() += 1;
        }
    }

    /// The counters now.
    pub fn counters(&self) -> EngineCounters {
        EngineCounters {
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            prefix_cache_queries: self.prefix_cache_queries.load(Ordering::Relaxed),
            prefix_cache_hits: self.prefix_cache_hits.load(Ordering::Relaxed),
            restored_tokens: self.restored_tokens.load(Ordering::Relaxed),
            store: self.store.get().map(|c| StoreFigures::read(c)),
            finished: self.finished.lock().map(|f| f.clone()).unwrap_or_default(),
            rejected: self.rejected.lock().map(|r| r.clone()).unwrap_or_default(),
            aborted: self.aborted.lock().map(|a| a.clone()).unwrap_or_default(),
        }
    }

    /// Every latency series as a scrape reports it, in [`EngineLatency::ALL`] order.
    pub fn latencies(&self) -> Vec<(EngineLatency, SeriesSnapshot)> {
        let Ok(series) = self.latencies.lock() else {
            return Vec::new();
        };
        EngineLatency::ALL
            .into_iter()
            .zip(series.iter().map(LatencySeries::snapshot))
            .collect()
    }
}
