//! Observability end to end on a real server with the default model: `/metrics` passes
//! `promtool` and a strict parse, and moves by exactly the traffic sent; the middleware's
//! percentiles agree with what the client measured; `/v1/stats` shows the same state.
//!
//! The tests take turns (`TRAFFIC`) so each sees only its own requests in the deltas, and
//! only the percentile test uses `/v1/chat/completions`, so that route's series holds
//! exactly its requests.

mod common;
#[path = "common/prometheus.rs"]
mod prometheus;
#[path = "common/server.rs"]
mod server;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prometheus::{Sample, promtool_check, value};
use reqwest::StatusCode;
use serde_json::{Value, json};
use server::{MODEL, TestServer, client, sse_data};
use tokio::sync::Mutex;

use common::DEADLINE;

fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| TestServer::start(&["--kv-cache-mb", "64", "--max-batch", "4"]))
}

static TRAFFIC: Mutex<()> = Mutex::const_new(());

/// Scrapes `/metrics`, checks it with promtool and parses it.
async fn scrape() -> Vec<Sample> {
    let response = client()
        .get(server().url("/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    promtool_check(&text);
    prometheus::parse(&text)
}

/// How much each named series moved between two scrapes.
fn delta(before: &[Sample], after: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    value(after, name, labels) - value(before, name, labels)
}

const COMPLETIONS_OK: [(&str, &str); 3] = [
    ("route", "/v1/completions"),
    ("method", "POST"),
    ("status_class", "2xx"),
];

/// Successful completions responses timed with `outcome` between two scrapes.
fn completions_timed(before: &[Sample], after: &[Sample], outcome: &str) -> f64 {
    let mut labels = COMPLETIONS_OK.to_vec();
    labels.push(("outcome", outcome));
    delta(
        before,
        after,
        "mlx_serve_http_request_duration_seconds_count",
        &labels,
    )
}

/// 30 tokens, so repeats share a full 16-token block through the prefix cache.
const SHARED_PROMPT: &str = "The quick brown fox jumps over the lazy dog while the cat \
    watches from the warm window sill and the birds sing in the old oak tree outside.";

fn completion(stream: bool) -> Value {
    json!({"model": MODEL, "prompt": SHARED_PROMPT, "max_tokens": 3, "ignore_eos": true,
           "temperature": 0, "stream": stream, "stream_options": if stream {
               json!({"include_usage": true}) } else { Value::Null }})
}

/// Token counts the responses reported: prompt, completion, cached.
#[derive(Default, Debug)]
struct Reported {
    prompt: u64,
    completion: u64,
    cached: u64,
}

impl Reported {
    fn add(&mut self, usage: &Value) {
        self.prompt += usage["prompt_tokens"].as_u64().unwrap();
        self.completion += usage["completion_tokens"].as_u64().unwrap();
        self.cached += usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_exactly_the_traffic_sent() {
    let _turn = TRAFFIC.lock().await;
    let baseline_blocks = server().wait_idle(DEADLINE).await.blocks_in_use;
    let before = scrape().await;
    let mut reported = Reported::default();

    // Two streams: the engine's TTFT count and the streams' first-byte count move by 2.
    for _ in 0..2 {
        let response = client()
            .post(server().url("/v1/completions"))
            .json(&completion(true))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let events = sse_data(&response.text().await.unwrap());
        let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        reported.add(&usage["usage"]);
    }
    let streamed = scrape().await;
    assert_eq!(
        delta(
            &before,
            &streamed,
            "mlx_serve_time_to_first_token_seconds_count",
            &[]
        ),
        2.0
    );
    assert_eq!(
        delta(
            &before,
            &streamed,
            "mlx_serve_http_stream_first_byte_seconds_count",
            &COMPLETIONS_OK
        ),
        2.0
    );

    // Three plain requests, a 404 for an unknown model and one for an unknown route.
    for _ in 0..3 {
        let response = client()
            .post(server().url("/v1/completions"))
            .json(&completion(false))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        reported.add(&body["usage"]);
    }
    let mut unknown_model = completion(false);
    unknown_model["model"] = json!("no-such-model");
    let response = client()
        .post(server().url("/v1/completions"))
        .json(&unknown_model)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = client()
        .get(server().url("/no/such/route"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // Blocks in use return to the baseline; the shared prefix stays cached, reported apart.
    server().wait_idle(DEADLINE).await;
    let after = scrape().await;
    let requests =
        |labels: &[(&str, &str)]| delta(&before, &after, "mlx_serve_http_requests_total", labels);
    assert_eq!(requests(&COMPLETIONS_OK), 5.0);
    assert_eq!(
        requests(&[("route", "/v1/completions"), ("status_class", "4xx")]),
        1.0
    );
    assert_eq!(
        requests(&[
            ("route", "unmatched"),
            ("method", "GET"),
            ("status_class", "4xx")
        ]),
        1.0
    );
    assert_eq!(completions_timed(&before, &after, "completed"), 5.0);
    let engine = |name: &str| delta(&before, &after, name, &[]);
    for histogram in [
        "time_to_first_token",
        "request_queue_time",
        "request_prefill_time",
        "request_decode_time",
        "e2e_request_latency",
    ] {
        assert_eq!(
            engine(&format!("mlx_serve_{histogram}_seconds_count")),
            5.0,
            "{histogram}"
        );
    }
    // Three tokens each: two gaps between them.
    assert_eq!(engine("mlx_serve_inter_token_latency_seconds_count"), 10.0);
    assert_eq!(
        delta(
            &before,
            &after,
            "mlx_serve_requests_finished_total",
            &[("finish_reason", "length")]
        ),
        5.0
    );
    assert_eq!(reported.completion, 15);
    assert_eq!(engine("mlx_serve_generation_tokens_total"), 15.0);
    // The step profile accounts for every step, by kind; a decode step runs one token per
    // sequence, and the prompts' own steps took evaluation time.
    let kind = |name: &str, kind: &str| {
        delta(
            &before,
            &after,
            &format!("mlx_serve_engine_profile_{name}"),
            &[("kind", kind)],
        )
    };
    assert_eq!(
        kind("steps_total", "decode") + kind("steps_total", "prefill"),
        engine("mlx_serve_engine_steps_total")
    );
    assert_eq!(
        kind("sequences_total", "decode"),
        kind("tokens_total", "decode")
    );
    assert!(kind("tokens_total", "prefill") >= (reported.prompt - reported.cached) as f64);
    let prefill_evaluate = delta(
        &before,
        &after,
        "mlx_serve_engine_profile_seconds_total",
        &[("kind", "prefill"), ("phase", "evaluate")],
    );
    assert!(prefill_evaluate > 0.0, "{prefill_evaluate}");
    assert_eq!(
        engine("mlx_serve_prompt_tokens_total"),
        reported.prompt as f64
    );
    assert_eq!(
        engine("mlx_serve_prefix_cache_queries_total"),
        reported.prompt as f64
    );
    assert!(
        reported.cached >= 4 * 16,
        "repeats reuse the prefix: {reported:?}"
    );
    assert_eq!(
        engine("mlx_serve_prefix_cache_hits_total"),
        reported.cached as f64
    );
    assert_eq!(
        value(&after, "mlx_serve_kv_cache_in_use_blocks", &[]),
        baseline_blocks as f64
    );
    assert!(value(&after, "mlx_serve_kv_cache_cached_blocks", &[]) >= 1.0);
    assert!(value(&after, "mlx_serve_kv_cache_capacity_blocks", &[]) > 0.0);
    assert_eq!(value(&after, "mlx_serve_ready", &[]), 1.0);

    // The JSON view shows the same state.
    let stats: Value = client()
        .get(server().url("/v1/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["model"], MODEL);
    assert_eq!(stats["ready"], true);
    assert_eq!(stats["kv_cache"]["blocks_in_use"], baseline_blocks);
    assert_eq!(
        stats["finished"]["length"].as_f64(),
        Some(value(
            &after,
            "mlx_serve_requests_finished_total",
            &[("finish_reason", "length")]
        ))
    );
    let ttft = &stats["latency"]["time_to_first_token"];
    assert_eq!(
        ttft["count"].as_f64(),
        Some(value(
            &after,
            "mlx_serve_time_to_first_token_seconds_count",
            &[]
        ))
    );
    assert!(ttft["p50_ms"].as_f64().unwrap() <= ttft["p99_ms"].as_f64().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_leave_are_counted_as_disconnected_and_cancelled() {
    let _turn = TRAFFIC.lock().await;
    server().wait_idle(DEADLINE).await;
    let before = scrape().await;
    let mut endless = completion(true);
    endless["max_tokens"] = json!(2000);
    let mut response = client()
        .post(server().url("/v1/completions"))
        .json(&endless)
        .send()
        .await
        .unwrap();
    for _ in 0..3 {
        response.chunk().await.unwrap().expect("a chunk");
    }
    drop(response);
    server().wait_idle(DEADLINE).await;

    // A plain request left before its response existed: status 499, outcome disconnected.
    endless["stream"] = json!(false);
    let plain = tokio::spawn(
        client()
            .post(server().url("/v1/completions"))
            .json(&endless)
            .send(),
    );
    let started = Instant::now();
    while server().stats().generated_tokens == 0 || server().stats().running == 0 {
        assert!(started.elapsed() < DEADLINE, "the request never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    plain.abort();
    let _ = plain.await;
    server().wait_idle(DEADLINE).await;

    let after = scrape().await;
    assert_eq!(completions_timed(&before, &after, "disconnected"), 1.0);
    assert_eq!(
        delta(
            &before,
            &after,
            "mlx_serve_http_request_duration_seconds_count",
            &[
                ("route", "/v1/completions"),
                ("status_class", "4xx"),
                ("outcome", "disconnected")
            ]
        ),
        1.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            "mlx_serve_requests_finished_total",
            &[("finish_reason", "cancelled")]
        ),
        2.0
    );
    // A cancelled generation has no end-to-end latency.
    assert_eq!(
        delta(
            &before,
            &after,
            "mlx_serve_e2e_request_latency_seconds_count",
            &[]
        ),
        0.0
    );
}

/// The `q` percentile by nearest rank (`max(1, ceil(q * n))`), as the server computes it.
fn nearest_rank(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted[rank - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_percentiles_bound_what_the_client_measured() {
    // p99 is the 99th of 100 observations: one stray scheduling delay on the client's
    // side does not decide it.
    const REQUESTS: usize = 100;
    let _turn = TRAFFIC.lock().await;
    server().wait_idle(DEADLINE).await;
    let client = client();
    // The connection is opened outside the measured requests, as the server never sees
    // that time.
    let warm_up = client.get(server().url("/v1/models")).send().await.unwrap();
    assert_eq!(warm_up.status(), StatusCode::OK);
    warm_up.bytes().await.unwrap();
    let mut measured = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        let body = json!({"model": MODEL, "max_tokens": 1 + i % 2, "ignore_eos": true,
                          "messages": [{"role": "user", "content": format!("Say {i}.")}]});
        let started = Instant::now();
        let response = client
            .post(server().url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.bytes().await.unwrap();
        measured.push(started.elapsed());
    }
    measured.sort();
    let samples = scrape().await;
    let labels = [
        ("route", "/v1/chat/completions"),
        ("method", "POST"),
        ("status_class", "2xx"),
        ("outcome", "completed"),
    ];
    assert_eq!(
        value(
            &samples,
            "mlx_serve_http_request_duration_seconds_count",
            &labels
        ),
        REQUESTS as f64,
        "only this test uses the chat route"
    );
    for (percentile, q) in [("50", 0.5), ("95", 0.95), ("99", 0.99)] {
        let mut labels = labels.to_vec();
        labels.push(("percentile", percentile));
        let server_side = Duration::from_secs_f64(value(
            &samples,
            "mlx_serve_http_request_duration_percentile_seconds",
            &labels,
        ));
        let client_side = nearest_rank(&measured, q);
        eprintln!("p{percentile}: server {server_side:?}, client {client_side:?}");
        assert!(
            server_side <= client_side && client_side <= server_side + Duration::from_millis(5),
            "p{percentile}: server {server_side:?}, client {client_side:?}"
        );
    }
}
