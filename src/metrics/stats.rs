//! `GET /v1/stats`: the same numbers as `/metrics`, as one JSON object a person can read
//! with `curl` (latencies in milliseconds).

use std::collections::BTreeMap;

use serde::Serialize;

use super::MetricsSnapshot;
use super::engine::StoreFigures;
use super::http::BodyOutcome;
use super::latency::LatencySummary;
use super::sampled::ProcessSample;

/// The whole JSON view.
#[derive(Debug, Serialize)]
pub struct StatsView {
    pub uptime_seconds: f64,
    /// The served model's name, once loaded.
    pub model: Option<String>,
    pub ready: bool,
    pub draining: bool,
    /// Client connections open now.
    pub open_connections: usize,
    /// Absent until the model has loaded.
    pub engine: Option<EngineView>,
    pub kv_cache: Option<KvCacheView>,
    pub prefix_cache: PrefixCacheView,
    /// The disk tier, when configured.
    pub kv_store: Option<StoreFigures>,
    /// Generations ended, by finish reason.
    pub finished: BTreeMap<&'static str, u64>,
    /// Requests refused before they started, by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Generations the engine ended with finish reason `aborted`, by cause.
    pub aborted: BTreeMap<&'static str, u64>,
    /// Engine latencies by phase.
    pub latency: BTreeMap<&'static str, LatencyMs>,
    /// Per matched route, method and status class.
    pub http: Vec<RouteView>,
    pub process: ProcessSample,
}

/// The engine's state and throughput.
#[derive(Debug, Serialize)]
pub struct EngineView {
    pub running: usize,
    /// Running sequences whose client is behind.
    pub paused: usize,
    pub waiting: usize,
    /// Sequences that gave up their slot while their client was behind.
    pub parked: usize,
    pub batch_saturated: bool,
    pub steps: u64,
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    /// Over the last sampling interval.
    pub generation_tokens_per_second: f64,
    pub preemptions: u64,
    pub paused_preemptions: u64,
}

/// The KV block pool.
#[derive(Debug, Serialize)]
pub struct KvCacheView {
    pub blocks_total: usize,
    pub blocks_in_use: usize,
    /// Free blocks that still hold a reusable prefix.
    pub blocks_cached: usize,
    pub usage_ratio: f64,
}

/// Prefix-cache reuse at admission.
#[derive(Debug, Serialize)]
pub struct PrefixCacheView {
    /// Prompt tokens looked up at admission, and those found.
    pub queried_tokens: u64,
    pub hit_tokens: u64,
    /// Of the hits, tokens read back from the disk store.
    pub disk_hit_tokens: u64,
    pub hit_ratio: f64,
}

/// A latency series' summary in milliseconds.
#[derive(Debug, Serialize)]
pub struct LatencyMs {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl From<LatencySummary> for LatencyMs {
    fn from(s: LatencySummary) -> Self {
        // To the microsecond: the data's resolution.
        let ms = |seconds: f64| (seconds * 1e6).round() / 1e3;
        LatencyMs {
            count: s.count,
            mean_ms: ms(s.mean),
            p50_ms: ms(s.p50),
            p95_ms: ms(s.p95),
            p99_ms: ms(s.p99),
            max_ms: ms(s.max),
        }
    }
}

/// One route's responses.
#[derive(Debug, Serialize)]
pub struct RouteView {
    pub route: String,
    pub method: String,
    pub status_class: &'static str,
    pub requests: u64,
    /// Durations of responses delivered whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed: Option<LatencyMs>,
    /// Durations of responses whose client left first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disconnected: Option<LatencyMs>,
    /// Time to first byte, for streaming responses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_byte: Option<LatencyMs>,
}

/// The JSON view of `snapshot`; `model` is the served model's name, once loaded.
pub fn view(snapshot: MetricsSnapshot, model: Option<String>) -> StatsView {
    let MetricsSnapshot {
        server,
        uptime_seconds,
        routes,
        latencies,
        counters,
        sampled,
    } = snapshot;
    let engine = server.engine.map(|stats| EngineView {
        running: stats.running,
        paused: stats.paused,
        waiting: stats.waiting,
        parked: stats.parked,
        batch_saturated: stats.batch_saturated,
        steps: stats.profile.steps(),
        prompt_tokens: counters.prompt_tokens,
        generated_tokens: stats.generated_tokens,
        generation_tokens_per_second: sampled.generation_tokens_per_second,
        preemptions: stats.preemptions,
        paused_preemptions: stats.paused_preemptions,
    });
    let kv_cache = server.engine.map(|stats| KvCacheView {
        blocks_total: stats.blocks_total,
        blocks_in_use: stats.blocks_in_use,
        blocks_cached: stats.blocks_cached,
        usage_ratio: stats.kv_usage_ratio(),
    });
    let hit_ratio = if counters.prefix_cache_queries == 0 {
        0.0
    } else {
        counters.prefix_cache_hits as f64 / counters.prefix_cache_queries as f64
    };
    let latency = latencies
        .into_iter()
        .map(|(kind, series)| (kind.name(), series.summary.into()))
        .collect();
    let http = routes
        .into_iter()
        .map(|(key, series)| {
            let outcome = |o| series.duration.get(&o).map(|s| s.summary.into());
            RouteView {
                requests: series.requests(),
                completed: outcome(BodyOutcome::Completed),
                disconnected: outcome(BodyOutcome::Disconnected),
                first_byte: series.first_byte.as_ref().map(|s| s.summary.into()),
                route: key.route,
                method: key.method,
                status_class: key.status_class,
            }
        })
        .collect();
    StatsView {
        uptime_seconds,
        model,
        ready: server.ready,
        draining: server.draining,
        open_connections: server.open_connections,
        engine,
        kv_cache,
        prefix_cache: PrefixCacheView {
            queried_tokens: counters.prefix_cache_queries,
            hit_tokens: counters.prefix_cache_hits,
            disk_hit_tokens: counters.restored_tokens,
            hit_ratio,
        },
        kv_store: counters.store.clone(),
        finished: counters.finished,
        rejected: counters
            .rejected
            .into_iter()
            .map(|(reason, n)| (reason.as_str(), n))
            .collect(),
        aborted: counters
            .aborted
            .into_iter()
            .map(|(cause, n)| (cause.as_str(), n))
            .collect(),
        latency,
        http,
        process: sampled.process,
    }
}
