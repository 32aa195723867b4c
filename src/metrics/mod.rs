//! Observability: what the server measures and how it is exported. The HTTP layer records
//! per-route latencies ([`http`]), the engine thread records per-request phases and
//! counters ([`engine`]), a timer samples the process ([`sampled`]); [`exposition`]
//! renders it all for Prometheus, [`stats`] as JSON for people. No HTTP or MLX types here.
//!
//! Percentiles come from hdrhistogram data kept since the server started ([`latency`]).

pub mod engine;
pub mod exposition;
pub mod http;
pub mod latency;
pub mod sampled;
pub mod stats;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::engine::EngineStats;
use engine::{EngineCounters, EngineLatency, EngineMetrics};
use http::{HttpMetrics, RouteKey, RouteSnapshot};
use latency::SeriesSnapshot;
use sampled::{SampledValues, Sampler};

/// Every metric of one server, shared by the HTTP layer and the engine thread. Owned by
/// the server rather than by an engine, so what the engine records here survives a change
/// of engine; its snapshot counters (generated tokens, steps, preemptions) do not.
#[derive(Debug)]
pub struct Metrics {
    /// Per-route latencies, recorded by the latency layer.
    pub http: HttpMetrics,
    /// Per-request phases and counters, recorded by the engine thread.
    pub engine: Arc<EngineMetrics>,
    /// Process and throughput, sampled on a timer.
    pub sampler: Sampler,
    started: Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            http: HttpMetrics::default(),
            engine: Arc::new(EngineMetrics::default()),
            sampler: Sampler::default(),
            started: Instant::now(),
        }
    }
}

impl Metrics {
    /// Time since the server started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// A client connection was accepted; the guard counts it as open until dropped.
    pub fn connection_opened(self: &Arc<Self>) -> OpenConnection {
        self.http.open_connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection(Arc::clone(self))
    }

    /// Everything a scrape reports, taken at once: `/metrics` and `/v1/stats` render the
    /// same numbers.
    pub fn snapshot(&self, server: ServerState) -> MetricsSnapshot {
        MetricsSnapshot {
            server,
            uptime_seconds: self.uptime().as_secs_f64(),
            routes: self.http.routes(),
            latencies: self.engine.latencies(),
            counters: self.engine.counters(),
            sampled: self.sampler.latest(),
        }
    }
}

/// Counts one open client connection while it lives.
#[derive(Debug)]
pub struct OpenConnection(Arc<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.http.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the server knows besides the recorded metrics.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ServerState {
    /// The engine's snapshot, once the model has loaded.
    pub engine: Option<EngineStats>,
    pub draining: bool,
    pub ready: bool,
    /// Client connections open now.
    pub open_connections: usize,
}

/// The metrics at one moment, small (no hdrhistogram copies), for rendering.
#[derive(Debug)]
pub struct MetricsSnapshot {
    pub server: ServerState,
    pub uptime_seconds: f64,
    pub routes: Vec<(RouteKey, RouteSnapshot)>,
    pub latencies: Vec<(EngineLatency, SeriesSnapshot)>,
    pub counters: EngineCounters,
    pub sampled: SampledValues,
}
