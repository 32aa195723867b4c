//! `GET /metrics`: everything in the Prometheus text format (0.0.4), encoded by
//! `prometheus-client`. Every name is in the `mlx_serve_` namespace with its unit in the
//! name. Latencies are exported twice: as histograms (buckets suited to LLM serving, for
//! `histogram_quantile` over any window) and as p50/p95/p99 gauges from the hdrhistogram
//! data (since start, exact to 0.1 %), labelled `percentile` ("50", "95", "99"; the
//! `quantile` label is reserved for summaries, which the format crate does not write).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::MetricsSnapshot;
use super::http::RouteKey;
use super::latency::SeriesSnapshot;
use crate::engine::{EngineStats, StepKind, StepPhase, StepProfile};
use crate::metrics::engine::StoreFigures;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Renders every metric of `snapshot`.
pub fn render(snapshot: MetricsSnapshot) -> String {
    let mut registry = Registry::with_prefix("mlx_serve");
    registry.register_collector(Box::new(Exposition(snapshot)));
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
    text
}

/// The snapshot as the registry's collector.
#[derive(Debug)]
struct Exposition(MetricsSnapshot);

type Labels = Vec<(&'static str, String)>;

fn route_labels(key: &RouteKey) -> Labels {
    vec![
        ("route", key.route.clone()),
        ("method", key.method.clone()),
        ("status_class", key.status_class.to_owned()),
    ]
}

fn with_label(labels: &Labels, name: &'static str, value: &str) -> Labels {
    let mut labels = labels.clone();
    labels.push((name, value.to_owned()));
    labels
}

fn histogram(encoder: &mut MetricEncoder<'_>, series: &SeriesSnapshot) -> std::fmt::Result {
    encoder.encode_histogram::<NoLabelSet>(
        series.sum_seconds,
        series.summary.count,
        &series.buckets,
        None,
    )
}

/// The percentile gauges of `series`, under `labels` plus `percentile`.
fn percentiles(
    encoder: &mut MetricEncoder<'_>,
    labels: &Labels,
    series: &SeriesSnapshot,
) -> std::fmt::Result {
    for (percentile, value) in series.percentiles() {
        let labels = with_label(labels, "percentile", percentile);
        encoder.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: impl prometheus_client::encoding::EncodeGaugeValue,
) -> std::fmt::Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

/// `name` gets the `_total` suffix from the encoder.
fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: impl prometheus_client::encoding::EncodeCounterValue,
) -> std::fmt::Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}

fn labelled_counters<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (L, u64)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in values {
        metric
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

impl Exposition {
    fn encode_http(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        labelled_counters(
            encoder,
            "http_requests",
            "HTTP responses by matched route, method and status class",
            self.0
                .routes
                .iter()
                .map(|(key, series)| (route_labels(key), series.requests())),
        )?;
        let mut metric = encoder.encode_descriptor(
            "http_request_duration_seconds",
            "Time from a request's arrival to the end of its response body; outcome \
             `disconnected` when the client left first",
            None,
            MetricType::Histogram,
        )?;
        for (key, series) in &self.0.routes {
            for (outcome, latency) in &series.duration {
                let labels = with_label(&route_labels(key), "outcome", outcome.as_str());
                histogram(&mut metric.encode_family(&labels)?, latency)?;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "http_request_duration_percentile_seconds",
            "Percentiles of http_request_duration_seconds since start",
            None,
            MetricType::Gauge,
        )?;
        for (key, series) in &self.0.routes {
            for (outcome, latency) in &series.duration {
                let labels = with_label(&route_labels(key), "outcome", outcome.as_str());
                percentiles(&mut metric, &labels, latency)?;
            }
        }
        let streams: Vec<_> = self
            .0
            .routes
            .iter()
            .filter_map(|(key, series)| Some((route_labels(key), series.first_byte.as_ref()?)))
            .collect();
        let mut metric = encoder.encode_descriptor(
            "http_stream_first_byte_seconds",
            "Time from a streaming request's arrival to its first body byte",
            None,
            MetricType::Histogram,
        )?;
        for (labels, latency) in &streams {
            histogram(&mut metric.encode_family(labels)?, latency)?;
        }
        let mut metric = encoder.encode_descriptor(
            "http_stream_first_byte_percentile_seconds",
            "Percentiles of http_stream_first_byte_seconds since start",
            None,
            MetricType::Gauge,
        )?;
        for (labels, latency) in &streams {
            percentiles(&mut metric, labels, latency)?;
        }
        Ok(())
    }

    fn encode_engine_latencies(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        for (kind, series) in &self.0.latencies {
            let name = format!("{}_seconds", kind.name());
            let mut metric =
                encoder.encode_descriptor(&name, kind.help(), None, MetricType::Histogram)?;
            histogram(&mut metric, series)?;
            let name = format!("{}_percentile_seconds", kind.name());
            let help = format!("Percentiles of {}_seconds since start", kind.name());
            let mut metric = encoder.encode_descriptor(&name, &help, None, MetricType::Gauge)?;
            percentiles(&mut metric, &Vec::new(), series)?;
        }
        Ok(())
    }

    fn encode_engine_counters(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let counters = &self.0.counters;
        counter(
            encoder,
            "prompt_tokens",
            "Prompt tokens of admitted requests",
            counters.prompt_tokens,
        )?;
        counter(
            encoder,
            "prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache at admission",
            counters.prefix_cache_queries,
        )?;
        counter(
            encoder,
            "prefix_cache_hits",
            "Prompt tokens whose KV was found in the prefix cache",
            counters.prefix_cache_hits,
        )?;
        labelled_counters(
            encoder,
            "requests_finished",
            "Generations ended, by finish reason (stop, length, cancelled, aborted)",
            counters
                .finished
                .iter()
                .map(|(&reason, &n)| ([("finish_reason", reason)], n)),
        )?;
        labelled_counters(
            encoder,
            "requests_rejected",
            "Requests refused before they started, by reason",
            counters
                .rejected
                .iter()
                .map(|(reason, &n)| ([("reason", reason.as_str())], n)),
        )?;
        labelled_counters(
            encoder,
            "requests_aborted",
            "Generations the engine ended with finish reason aborted, by cause",
            counters
                .aborted
                .iter()
                .map(|(cause, &n)| ([("cause", cause.as_str())], n)),
        )?;
        labelled_counters(
            encoder,
            "prefix_cache_hit_tokens_by_tier",
            "Prompt tokens whose KV was reused, by tier (memory: the pool; disk: the store)",
            [
                (
                    [("tier", "memory")],
                    counters
                        .prefix_cache_hits
                        .saturating_sub(counters.restored_tokens),
                ),
                ([("tier", "disk")], counters.restored_tokens),
            ],
        )?;
        if let Some(store) = &counters.store {
            self.encode_store(encoder, store)?;
        }
        Ok(())
    }

    fn encode_store(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        store: &StoreFigures,
    ) -> std::fmt::Result {
        let totals = [
            (
                "kv_store_blocks_written",
                "KV blocks written to disk",
                store.blocks_written,
            ),
            (
                "kv_store_written_bytes",
                "Bytes of KV block files written",
                store.bytes_written,
            ),
            (
                "kv_store_blocks_read",
                "KV blocks read back from disk and verified",
                store.blocks_read,
            ),
            (
                "kv_store_read_bytes",
                "Bytes of KV block files read",
                store.bytes_read,
            ),
            (
                "kv_store_writes_deferred",
                "Blocks that found the write queue full and waited in the pool",
                store.deferred,
            ),
            (
                "kv_store_evicted_files",
                "Block files removed to stay within the budget",
                store.evicted,
            ),
            (
                "kv_store_quarantined_files",
                "Damaged block files moved to quarantine",
                store.quarantined,
            ),
        ];
        for (name, help, value) in totals {
            counter(encoder, name, help, value)?;
        }
        labelled_counters(
            encoder,
            "kv_store_misses",
            "Stored blocks that could not be used, by reason",
            store
                .misses
                .iter()
                .map(|(&reason, &n)| ([("reason", reason)], n)),
        )?;
        labelled_counters(
            encoder,
            "kv_store_writes_dropped",
            "Blocks that should have been written and were not, by reason",
            store
                .drops
                .iter()
                .map(|(&reason, &n)| ([("reason", reason)], n)),
        )?;
        counter(
            encoder,
            "kv_store_write_seconds",
            "Time the store's writer spent encoding and writing blocks",
            store.write_seconds,
        )?;
        let gauges = [
            (
                "kv_store_bytes",
                "Bytes of files under the store folder, every model's",
                store.bytes as f64,
            ),
            (
                "kv_store_budget_bytes",
                "The store folder's budget (--kv-store-max-gb)",
                store.budget_bytes as f64,
            ),
            (
                "kv_store_files",
                "Block files under the store folder, every model's",
                store.files as f64,
            ),
            (
                "kv_store_blocks",
                "This model's KV blocks on disk",
                store.blocks as f64,
            ),
            (
                "kv_store_quarantine_files",
                "Files in the store's quarantine folder now",
                store.quarantined_files_now as f64,
            ),
            (
                "kv_store_write_queue_blocks",
                "KV blocks waiting for the disk writer",
                store.queued_blocks as f64,
            ),
            (
                "kv_store_write_queue_bytes",
                "Bytes of KV blocks waiting for the disk writer",
                store.queued_bytes as f64,
            ),
        ];
        for (name, help, value) in gauges {
            gauge(encoder, name, help, value)?;
        }
        Ok(())
    }

    fn encode_step_profile(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        profile: &StepProfile,
    ) -> std::fmt::Result {
        let kinds = || StepKind::ALL.into_iter().map(|k| (k, profile.kind(k)));
        labelled_counters(
            encoder,
            "engine_profile_steps",
            "Engine forward steps by kind (decode: one token per sequence; prefill: with a prompt chunk)",
            kinds().map(|(k, p)| ([("kind", k.as_str())], p.steps)),
        )?;
        labelled_counters(
            encoder,
            "engine_profile_sequences",
            "Sequences run, summed over steps, by kind of step",
            kinds().map(|(k, p)| ([("kind", k.as_str())], p.sequences)),
        )?;
        labelled_counters(
            encoder,
            "engine_profile_tokens",
            "New tokens run (prompt and decoded), summed over steps, by kind of step",
            kinds().map(|(k, p)| ([("kind", k.as_str())], p.tokens)),
        )?;
        let mut metric = encoder.encode_descriptor(
            "engine_profile_seconds",
            "Engine thread time in steps, by kind of step and phase (docs/performance.md)",
            None,
            MetricType::Counter,
        )?;
        for (kind, totals) in kinds() {
            for phase in StepPhase::ALL {
                metric
                    .encode_family(&[("kind", kind.as_str()), ("phase", phase.as_str())])?
                    .encode_counter::<NoLabelSet, _, u64>(&totals.phase(phase), None)?;
            }
        }
        Ok(())
    }

    fn encode_engine_state(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        stats: &EngineStats,
    ) -> std::fmt::Result {
        counter(
            encoder,
            "generation_tokens",
            "Tokens generated",
            stats.generated_tokens,
        )?;
        counter(
            encoder,
            "preemptions",
            "Sequences preempted to free KV blocks (recomputed later)",
            stats.preemptions,
        )?;
        counter(
            encoder,
            "paused_preemptions",
            "Paused sequences (client behind) that gave up their batch slot and KV blocks to \
             others (recomputed when the client catches up)",
            stats.paused_preemptions,
        )?;
        counter(
            encoder,
            "engine_steps",
            "Engine forward steps",
            stats.profile.steps(),
        )?;
        self.encode_step_profile(encoder, &stats.profile)?;
        gauge(
            encoder,
            "requests_running",
            "Sequences in the running batch",
            stats.running,
        )?;
        gauge(
            encoder,
            "requests_paused",
            "Running sequences whose client is behind (they run no tokens)",
            stats.paused,
        )?;
        gauge(
            encoder,
            "requests_waiting",
            "Generations waiting for admission",
            stats.waiting,
        )?;
        gauge(
            encoder,
            "requests_parked",
            "Sequences that gave up their slot while their client is behind",
            stats.parked,
        )?;
        gauge(
            encoder,
            "kv_cache_capacity_blocks",
            "KV cache blocks in the pool",
            stats.blocks_total,
        )?;
        gauge(
            encoder,
            "kv_cache_in_use_blocks",
            "KV cache blocks held by running sequences",
            stats.blocks_in_use,
        )?;
        gauge(
            encoder,
            "kv_cache_cached_blocks",
            "Free KV cache blocks that still hold a reusable prefix",
            stats.blocks_cached,
        )?;
        gauge(
            encoder,
            "kv_cache_usage_ratio",
            "Fraction of KV cache blocks in use",
            stats.kv_usage_ratio(),
        )
    }

    fn encode_process(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let process = &self.0.sampled.process;
        gauge(
            encoder,
            "process_resident_memory_bytes",
            "Resident memory of the server process (sampled)",
            process.resident_memory_bytes,
        )?;
        gauge(
            encoder,
            "process_virtual_memory_bytes",
            "Virtual memory of the server process (sampled)",
            process.virtual_memory_bytes,
        )?;
        counter(
            encoder,
            "process_cpu_seconds",
            "CPU time used by the server process (sampled)",
            process.cpu_seconds_total,
        )?;
        gauge(
            encoder,
            "process_cpu_usage_ratio",
            "CPU use over the last sampling interval, in cores (sampled)",
            process.cpu_usage_percent / 100.0,
        )?;
        gauge(
            encoder,
            "process_start_time_seconds",
            "Unix time the server process started",
            process.start_time_seconds,
        )?;
        gauge(
            encoder,
            "generation_throughput_tokens_per_second",
            "Generated tokens per second over the last sampling interval",
            self.0.sampled.generation_tokens_per_second,
        )
    }
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let server = &self.0.server;
        gauge(
            &mut encoder,
            "model_loaded",
            "1 once the model has loaded",
            i64::from(server.engine.is_some()),
        )?;
        gauge(
            &mut encoder,
            "ready",
            "1 while /health/ready answers 200",
            i64::from(server.ready),
        )?;
        gauge(
            &mut encoder,
            "draining",
            "1 once shutdown has begun",
            i64::from(server.draining),
        )?;
        gauge(
            &mut encoder,
            "http_connections",
            "Client connections open now (at most --max-connections)",
            server.open_connections,
        )?;
        gauge(
            &mut encoder,
            "uptime_seconds",
            "Seconds since the server started",
            self.0.uptime_seconds,
        )?;
        self.encode_http(&mut encoder)?;
        self.encode_engine_latencies(&mut encoder)?;
        self.encode_engine_counters(&mut encoder)?;
        if let Some(stats) = &server.engine {
            self.encode_engine_state(&mut encoder, stats)?;
        }
        self.encode_process(&mut encoder)
    }
}
