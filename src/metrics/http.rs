//! Per-route HTTP latencies, keyed by the matched route *pattern* (never the raw path, so
//! the number of series stays bounded by the routes we define), method and status class.
//! Each response is recorded once, when its body ends: completed (the last byte handed to
//! the connection) or disconnected (the client went away first). Streaming responses also
//! record their time to first byte.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::latency::{FIRST_TOKEN_BUCKETS, LatencySeries, REQUEST_BUCKETS, SeriesSnapshot};

/// Which series a response belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    /// The route pattern (`/v1/models/{*id}`), or `unmatched` for the 404 fallback.
    pub route: String,
    pub method: String,
    /// `1xx` … `5xx`.
    pub status_class: &'static str,
}

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BodyOutcome {
    Completed,
    Disconnected,
}

impl BodyOutcome {
    /// The `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            BodyOutcome::Completed => "completed",
            BodyOutcome::Disconnected => "disconnected",
        }
    }
}

/// The status class label of a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[derive(Debug)]
struct RouteSeries {
    duration: BTreeMap<BodyOutcome, LatencySeries>,
    first_byte: Option<LatencySeries>,
}

/// One route's series as a scrape reports them.
#[derive(Debug, Clone)]
pub struct RouteSnapshot {
    /// Whole-response durations by outcome.
    pub duration: BTreeMap<BodyOutcome, SeriesSnapshot>,
    /// Time to the first body byte of streaming responses.
    pub first_byte: Option<SeriesSnapshot>,
}

impl RouteSnapshot {
    /// Responses recorded, whatever their outcome.
    pub fn requests(&self) -> u64 {
        self.duration.values().map(|s| s.summary.count).sum()
    }
}

/// Every route's series; one lock, held for a record or a snapshot.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    routes: Mutex<BTreeMap<RouteKey, RouteSeries>>,
    /// Client connections open now (kept by [`super::OpenConnection`] guards).
    pub(super) open_connections: AtomicUsize,
}

impl HttpMetrics {
    /// Client connections open now.
    pub fn open_connections(&self) -> usize {
        self.open_connections.load(Ordering::Relaxed)
    }

    /// Records one response: its total duration and outcome, and for streams the time to
    /// their first byte (if one was sent).
    pub fn record(
        &self,
        key: RouteKey,
        total: Duration,
        outcome: BodyOutcome,
        first_byte: Option<Duration>,
    ) {
        let Ok(mut routes) = self.routes.lock() else {
            return;
        };
        let series = routes.entry(key).or_insert_with(|| RouteSeries {
            duration: BTreeMap::new(),
            first_byte: None,
        });
        series
            .duration
            .entry(outcome)
            .or_insert_with(|| LatencySeries::new(REQUEST_BUCKETS))
            .record(total);
        if let Some(first_byte) = first_byte {
            series
                .first_byte
                .get_or_insert_with(|| LatencySeries::new(FIRST_TOKEN_BUCKETS))
                .record(first_byte);
        }
    }

    /// Every route's series, ordered by route, method and status class.
    pub fn routes(&self) -> Vec<(RouteKey, RouteSnapshot)> {
        let Ok(routes) = self.routes.lock() else {
            return Vec::new();
        };
        routes
            .iter()
            .map(|(key, series)| {
                let snapshot = RouteSnapshot {
                    duration: series
                        .duration
                        .iter()
                        .map(|(&outcome, s)| (outcome, s.snapshot()))
                        .collect(),
                    first_byte: series.first_byte.as_ref().map(LatencySeries::snapshot),
                };
                (key.clone(), snapshot)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(route: &str, status: u16) -> RouteKey {
        RouteKey {
            route: route.to_owned(),
            method: "POST".to_owned(),
            status_class: status_class(status),
        }
    }

    #[test]
    fn responses_are_grouped_by_route_pattern_and_status_class() {
        let metrics = HttpMetrics::default();
        let ms = Duration::from_millis;
        metrics.record(
            key("/v1/completions", 200),
            ms(10),
            BodyOutcome::Completed,
            None,
        );
        metrics.record(
            key("/v1/completions", 201),
            ms(20),
            BodyOutcome::Completed,
            None,
        );
        metrics.record(
            key("/v1/completions", 200),
            ms(30),
            BodyOutcome::Disconnected,
            Some(ms(5)),
        );
        metrics.record(
            key("/v1/completions", 429),
            ms(1),
            BodyOutcome::Completed,
            None,
        );
        let routes = metrics.routes();
        assert_eq!(routes.len(), 2);
        let (ok_key, ok) = &routes[0];
        assert_eq!(ok_key.status_class, "2xx");
        assert_eq!(ok.requests(), 3);
        assert_eq!(ok.duration[&BodyOutcome::Completed].summary.count, 2);
        assert_eq!(ok.duration[&BodyOutcome::Disconnected].summary.count, 1);
        assert_eq!(ok.first_byte.as_ref().map(|s| s.summary.count), Some(1));
        assert_eq!(routes[1].0.status_class, "4xx");
        assert!(routes[1].1.first_byte.is_none());
    }
}
