//! Outcomes of requests as a client saw them, and their summary: per status (or failure
//! kind) the count and the latency percentiles, as a markdown table and as JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// How one request ended, from the client's side.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// An HTTP status, with the error envelope's `code` when there is one.
    Status(u16, Option<String>),
    /// No response before the client's deadline.
    Timeout,
    /// The connection failed or broke before a response.
    ConnectionError,
    /// A 200 stream that carried an error event (its code) or ended without `[DONE]`.
    StreamError(String),
}

impl Outcome {
    pub fn label(&self) -> String {
        match self {
            Outcome::Status(status, None) => status.to_string(),
            Outcome::Status(status, Some(code)) => format!("{status} {code}"),
            Outcome::Timeout => "timeout".to_owned(),
            Outcome::ConnectionError => "connection_error".to_owned(),
            Outcome::StreamError(code) => format!("stream_error {code}"),
        }
    }
}

/// Latencies of one outcome, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct OutcomeSummary {
    pub outcome: String,
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Every request of a phase, by outcome.
#[derive(Default)]
pub struct Recorder {
    by_outcome: BTreeMap<Outcome, Histogram<u64>>,
    /// Extra detail (retry-after values, error codes) by outcome.
    pub notes: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Recorder {
    pub fn record(&mut self, outcome: Outcome, latency: Duration) {
        let histogram = self.by_outcome.entry(outcome).or_insert_with(|| {
            Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
        });
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, 3_600_000_000);
        let _ = histogram.record(micros);
    }

    /// Counts a detail of a response (e.g. its error code).
    pub fn note(&mut self, outcome: &Outcome, detail: String) {
        *self
            .notes
            .entry(outcome.label())
            .or_default()
            .entry(detail)
            .or_default() += 1;
    }

    pub fn total(&self) -> u64 {
        self.by_outcome.values().map(Histogram::len).sum()
    }

    pub fn count(&self, outcome: &Outcome) -> u64 {
        self.by_outcome.get(outcome).map_or(0, Histogram::len)
    }

    /// The outcomes seen, in the order of [`Recorder::summaries`].
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.by_outcome.keys().cloned().collect()
    }

    pub fn summaries(&self) -> Vec<OutcomeSummary> {
        let ms = |micros: u64| micros as f64 / 1000.0;
        self.by_outcome
            .iter()
            .map(|(outcome, h)| OutcomeSummary {
                outcome: outcome.label(),
                count: h.len(),
                p50_ms: ms(h.value_at_quantile(0.50)),
                p95_ms: ms(h.value_at_quantile(0.95)),
                p99_ms: ms(h.value_at_quantile(0.99)),
                max_ms: ms(h.max()),
            })
            .collect()
    }

    /// A markdown table of the outcomes.
    pub fn table(&self) -> String {
        let mut table = String::from(
            "| outcome | count | p50 ms | p95 ms | p99 ms | max ms |\n|---|---|---|---|---|---|\n",
        );
        for s in self.summaries() {
            table.push_str(&format!(
                "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
                s.outcome, s.count, s.p50_ms, s.p95_ms, s.p99_ms, s.max_ms
            ));
        }
        table
    }
}

/// Writes a scenario's results to `path` as pretty JSON.
pub fn write_json(path: &std::path::Path, results: &impl Serialize) -> Result<(), String> {
    let text = serde_json::to_string_pretty(results).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The HTTP client of a scenario: `timeout_secs` for each whole request (a time-out is a
/// failure).
pub fn http_client(timeout_secs: u64) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(timeout_secs))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Prints a `FAIL: ...` line per failed criterion, or `PASS`; whether it passed.
pub fn verdict(failures: &[String]) -> bool {
    for failure in failures {
        println!("FAIL: {failure}");
    }
    if failures.is_empty() {
        println!("PASS");
    }
    failures.is_empty()
}
