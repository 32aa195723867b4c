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
use std::time::{Duration, Instant};

use engine::EngineMetrics;
use http::HttpMetrics;
use sampled::Sampler;

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
}
