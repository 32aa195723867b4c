//! The server's own latency percentiles, read from mlx-serve's `/metrics`, beside what the
//! load tool's clients saw of the same requests. The two differ by what lies between them
//! (the network stack, the client's own scheduling, tokenization before the engine sees a
//! request), so a large gap says where time goes that neither side shows alone.
//!
//! mlx-serve's percentile gauges cover everything since the server started; the comparison
//! is exact only for a server started for the run (as `scripts/stress.sh` does), and it is
//! skipped, with a note, for a server that exports no such gauges.

use serde::Serialize;

use crate::load::{Endpoint, Latencies, Percentiles, Workload};
use crate::server::{metric, scrape};

/// One latency as both sides measured it, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub measure: &'static str,
    pub client: Percentiles,
    /// The server's metric the `server` figures come from.
    pub metric: String,
    pub server_p50_ms: f64,
    pub server_p95_ms: f64,
    pub server_p99_ms: f64,
}

/// The route mlx-serve labels an endpoint's requests with.
fn route(endpoint: Endpoint) -> &'static str {
    match endpoint {
        Endpoint::Chat => "/v1/chat/completions",
        Endpoint::Completions => "/v1/completions",
    }
}

/// The rows for successful requests to `endpoint`, from a `/metrics` text; `None` when the
/// server exports none of the gauges (another server, or no request finished). Plain
/// (`streamed` false) requests have no first token or token gaps of their own to compare.
pub fn rows(
    metrics: &str,
    endpoint: Endpoint,
    streamed: bool,
    client: &Latencies,
) -> Option<Vec<Row>> {
    let duration = format!(
        "mlx_serve_http_request_duration_percentile_seconds{{route=\"{}\",method=\"POST\",status_class=\"2xx\",outcome=\"completed\",",
        route(endpoint)
    );
    let sources = [
        ("request, arrival to last byte", client.e2e, duration),
        (
            "first token (server: submission to the engine)",
            client.ttft,
            "mlx_serve_time_to_first_token_percentile_seconds{".to_owned(),
        ),
        (
            "inter-token",
            client.itl,
            "mlx_serve_inter_token_latency_percentile_seconds{".to_owned(),
        ),
    ];
    let percentile =
        |prefix: &str, p: &str| 1000.0 * metric(metrics, &format!("{prefix}percentile=\"{p}\"}}"));
    let rows: Vec<Row> = sources
        .into_iter()
        .take(if streamed { 3 } else { 1 })
        .map(|(measure, client, prefix)| Row {
            measure,
            client,
            server_p50_ms: percentile(&prefix, "50"),
            server_p95_ms: percentile(&prefix, "95"),
            server_p99_ms: percentile(&prefix, "99"),
            metric: prefix.trim_end_matches(['{', ',']).to_owned(),
        })
        .collect();
    rows.iter()
        .any(|r| r.server_p50_ms > 0.0 || r.server_p99_ms > 0.0)
        .then_some(rows)
}

/// The rows as a markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| latency | client p50 / p95 / p99 ms | server p50 / p95 / p99 ms |\n|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} |\n",
            r.measure,
            r.client.p50_ms,
            r.client.p95_ms,
            r.client.p99_ms,
            r.server_p50_ms,
            r.server_p95_ms,
            r.server_p99_ms
        ));
    }
    out
}

/// Scrapes `base`'s `/metrics` and prints the comparison for `workload`'s requests;
/// returns the rows for the JSON output (`None`, with a note printed, when the server has
/// no such metrics).
pub async fn print(
    client: &reqwest::Client,
    base: &str,
    workload: &Workload,
    seen: &Latencies,
) -> Option<Vec<Row>> {
    let endpoint = workload.endpoint;
    let rows = scrape(client, base)
        .await
        .ok()
        .and_then(|text| rows(&text, endpoint, workload.stream, seen));
    match &rows {
        Some(rows) => println!(
            "\n{} as the clients saw it and as the server recorded it (its /metrics, since it started):\n\n{}",
            route(endpoint),
            table(rows)
        ),
        None => println!("\n(the server exports no latency percentiles to compare with)"),
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# TYPE mlx_serve_http_request_duration_percentile_seconds gauge
mlx_serve_http_request_duration_percentile_seconds{route="/v1/completions",method="POST",status_class="2xx",outcome="completed",percentile="50"} 0.5
mlx_serve_http_request_duration_percentile_seconds{route="/v1/chat/completions",method="POST",status_class="2xx",outcome="completed",percentile="50"} 9.4
mlx_serve_http_request_duration_percentile_seconds{route="/v1/chat/completions",method="POST",status_class="2xx",outcome="completed",percentile="95"} 15.75
mlx_serve_http_request_duration_percentile_seconds{route="/v1/chat/completions",method="POST",status_class="2xx",outcome="completed",percentile="99"} 15.9
mlx_serve_time_to_first_token_percentile_seconds{percentile="50"} 1.4
mlx_serve_time_to_first_token_percentile_seconds{percentile="95"} 3.2
mlx_serve_time_to_first_token_percentile_seconds{percentile="99"} 4.2
mlx_serve_inter_token_latency_percentile_seconds{percentile="99"} 2.0
"#;

    fn seen() -> Latencies {
        let p = Percentiles {
            count: 1,
            p50_ms: 1.0,
            p95_ms: 2.0,
            p99_ms: 3.0,
            max_ms: 4.0,
        };
        Latencies {
            ttft: p,
            itl: p,
            e2e: p,
        }
    }

    #[test]
    fn the_rows_take_the_endpoints_own_route_and_the_engines_gauges() {
        let rows = rows(METRICS, Endpoint::Chat, true, &seen()).expect("gauges present");
        let figures: Vec<[f64; 3]> = rows
            .iter()
            .map(|r| [r.server_p50_ms, r.server_p95_ms, r.server_p99_ms])
            .collect();
        assert_eq!(
            figures,
            [
                [9400.0, 15750.0, 15900.0],
                [1400.0, 3200.0, 4200.0],
                [0.0, 0.0, 2000.0]
            ]
        );
        assert_eq!(
            rows[0].metric,
            "mlx_serve_http_request_duration_percentile_seconds{route=\"/v1/chat/completions\",method=\"POST\",status_class=\"2xx\",outcome=\"completed\""
        );
        let completions = super::rows(METRICS, Endpoint::Completions, false, &seen()).unwrap();
        assert_eq!(
            completions.len(),
            1,
            "plain requests: the request time only"
        );
        assert_eq!(completions[0].server_p50_ms, 500.0);
        assert!(table(&rows).contains("| 1 / 2 / 3 | 9400 / 15750 / 15900 |"));
    }

    #[test]
    fn a_server_without_the_gauges_has_no_rows() {
        assert!(rows("# nothing here\n", Endpoint::Chat, true, &seen()).is_none());
    }
}
