//! One latency series: exact Prometheus bucket counts and sum for the histogram, and an
//! hdrhistogram of the same observations for percentiles.
//!
//! Percentiles are reported as the *lower* bound of the hdrhistogram bucket that holds the
//! rank `max(1, ceil(q * n))` observation, so a reported p99 never exceeds the true one
//! (the error is below 0.1 %: three significant digits, microsecond resolution).

use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest latency kept exactly; longer ones are recorded as this (one hour).
const MAX_MICROS: u64 = 3_600_000_000;
/// 0.1 % relative precision.
const SIGNIFICANT_DIGITS: u8 = 3;

/// Bucket bounds (seconds) for the time to a first token or byte: vLLM's TTFT buckets,
/// which resolve both fast local replies and long prefills.
pub const FIRST_TOKEN_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

/// Bucket bounds (seconds) for the gap between two tokens of one sequence (vLLM's).
pub const INTER_TOKEN_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
    7.5, 10.0, 20.0, 40.0, 80.0,
];

/// Bucket bounds (seconds) for whole requests and their phases: from a health check's
/// sub-millisecond answer to generations of many minutes.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0,
    10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0,
];

/// Observations of one latency. Not synchronised: owners keep it behind a lock.
#[derive(Debug, Clone)]
pub struct LatencySeries {
    bounds: &'static [f64],
    /// Per-bucket (not cumulative) counts; the last slot counts observations above every
    /// bound.
    counts: Vec<u64>,
    sum_seconds: f64,
    hdr: Histogram<u32>,
}

/// A summary of a series, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// What a scrape needs of a series: small, so it is taken under the owner's lock instead of
/// copying the hdrhistogram (about 94 KB).
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesSnapshot {
    /// `(upper bound, observations in this bucket alone)` pairs ending with `+Inf`: what
    /// `prometheus_client`'s `encode_histogram` takes. It writes the cumulative `le`
    /// counts itself, so counts summed here would be summed twice.
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub summary: LatencySummary,
}

impl SeriesSnapshot {
    /// The reported percentiles with their labels (`50`, `95`, `99`), in seconds.
    pub fn percentiles(&self) -> [(&'static str, f64); 3] {
        let s = &self.summary;
        [("50", s.p50), ("95", s.p95), ("99", s.p99)]
    }
}

impl LatencySeries {
    /// An empty series with these histogram bucket bounds (seconds, increasing).
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(
            bounds.windows(2).all(|w| w[0] < w[1]),
            "bounds must increase"
        );
        LatencySeries {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum_seconds: 0.0,
            hdr: Histogram::new_with_bounds(1, MAX_MICROS, SIGNIFICANT_DIGITS)
                .expect("constant, valid hdrhistogram bounds"),
        }
    }

    /// Adds one observation (an hour or more counts as an hour in the percentiles).
    pub fn record(&mut self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let bucket = self.bounds.partition_point(|&bound| bound < seconds);
        self.counts[bucket] += 1;
        self.sum_seconds += seconds;
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.hdr.saturating_record(micros.clamp(1, MAX_MICROS));
    }

    /// Observations recorded.
    pub fn count(&self) -> u64 {
        self.hdr.len()
    }

    /// What a scrape reports of this series.
    pub fn snapshot(&self) -> SeriesSnapshot {
        SeriesSnapshot {
            buckets: self.bucket_counts(),
            sum_seconds: self.sum_seconds,
            summary: self.summary(),
        }
    }

    fn bucket_counts(&self) -> Vec<(f64, u64)> {
        self.bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().copied())
            .collect()
    }

    /// The `q` percentile in seconds (0 when empty); never above the true value.
    fn quantile(&self, q: f64) -> f64 {
        if self.hdr.is_empty() {
            return 0.0;
        }
        let value = self.hdr.lowest_equivalent(self.hdr.value_at_quantile(q));
        value as f64 / 1e6
    }

    fn summary(&self) -> LatencySummary {
        if self.hdr.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.count(),
            mean: self.sum_seconds / self.count() as f64,
            p50: self.quantile(0.5),
            p95: self.quantile(0.95),
            p99: self.quantile(0.99),
            max: self.hdr.max() as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    #[test]
    fn each_observation_lands_in_one_bucket_and_the_last_is_infinity() {
        let mut series = LatencySeries::new(&[0.01, 0.1]);
        for latency in [ms(5), ms(10), ms(50), ms(2000)] {
            series.record(latency);
        }
        // 10 ms is on the 0.01 bound: `le` includes it.
        assert_eq!(
            series.bucket_counts(),
            vec![(0.01, 2), (0.1, 1), (f64::INFINITY, 1)]
        );
        assert_eq!(series.count(), 4);
        assert!((series.snapshot().sum_seconds - 2.065).abs() < 1e-9);
    }

    #[test]
    fn quantiles_use_the_nearest_rank_and_never_overstate() {
        let mut series = LatencySeries::new(REQUEST_BUCKETS);
        // 1..=100 ms: rank ceil(q * 100).
        for value in 1..=100 {
            series.record(ms(value));
        }
        for (q, expected) in [(0.5, 0.050), (0.95, 0.095), (0.99, 0.099)] {
            let got = series.quantile(q);
            assert!(got <= expected, "p{q}: {got} > {expected}");
            assert!(
                expected - got < expected * 0.001,
                "p{q}: {got} vs {expected}"
            );
        }
        let summary = series.summary();
        assert_eq!(summary.count, 100);
        assert!((summary.mean - 0.0505).abs() < 1e-9);
    }

    #[test]
    fn an_empty_series_reports_zeros_and_huge_values_saturate() {
        let mut series = LatencySeries::new(REQUEST_BUCKETS);
        assert_eq!(series.summary(), LatencySummary::default());
        series.record(Duration::from_secs(10 * 3600));
        assert_eq!(series.count(), 1);
        assert!(series.quantile(0.99) <= 3600.0);
        assert_eq!(series.bucket_counts().last(), Some(&(f64::INFINITY, 1)));
    }
}
