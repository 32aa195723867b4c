//! Limits and access on a real server: a KV pool that holds one long prompt but not two,
//! no wait queue (`--max-queue 0`), readiness that fails above 30 % of the pool in use,
//! API keys and CORS. Pool exhaustion under concurrent load must answer 429 with
//! `Retry-After` and never 5xx, and be counted in `/metrics` (open to scrapers without a
//! key); the official `openai` Python package must work against the server, its errors
//! included.

mod common;
#[path = "common/prometheus.rs"]
mod prometheus;
#[path = "common/server.rs"]
mod server;

use std::sync::OnceLock;

use reqwest::StatusCode;
use serde_json::{Value, json};
use server::{MODEL, TestServer, assert_envelope, client};
use tokio::sync::Mutex;

const KEYS: [&str; 2] = ["secret-one", "secret-two"];
const ALLOWED_ORIGIN: &str = "http://allowed.example";
use common::DEADLINE;

/// 29 MiB = 41 blocks of 16 tokens: a ~300-token prompt (19 blocks) fits, a second one
/// (19 more plus the 4-block watermark) does not.
fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        TestServer::start(&[
            "--kv-cache-mb",
            "29",
            "--max-queue",
            "0",
            "--ready-max-kv-usage",
            "0.3",
            "--api-key",
            KEYS[0],
            "--api-key",
            KEYS[1],
            "--cors-origin",
            ALLOWED_ORIGIN,
        ])
    })
}

/// The pool (and with it readiness) is the point of these tests: one at a time.
static POOL: Mutex<()> = Mutex::const_new(());

/// A prompt of about 300 tokens that shares no block with another `index`.
fn long_prompt(index: usize) -> String {
    let words: Vec<String> = (0..150).map(|i| format!("a{i}")).collect();
    format!("Request {index}: {}", words.join(" "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_answers_429_with_retry_after_and_never_5xx() {
    let _pool = POOL.lock().await;
    server().wait_idle(DEADLINE).await;
    let before = scrape().await;
    let requests = (0..6).map(|i| {
        client()
            .post(server().url("/v1/completions"))
            .bearer_auth(KEYS[0])
            .json(
                &json!({"model": MODEL, "prompt": long_prompt(i), "max_tokens": 4,
                          "temperature": 0}),
            )
            .send()
    });
    let responses = futures_util::future::join_all(requests).await;
    let (mut ok, mut refused) = (0, 0);
    for response in responses {
        let response = response.expect("response");
        let status = response.status();
        assert!(!status.is_server_error(), "5xx under load: {status}");
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                let retry: u64 = response.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry >= 1);
                let body: Value = response.json().await.unwrap();
                let error = assert_envelope(&body);
                assert_eq!(error["type"], "rate_limit_exceeded");
                assert_eq!(error["code"], "kv_cache_exhausted");
            }
            other => panic!(
                "unexpected status {other}: {}",
                response.text().await.unwrap()
            ),
        }
    }
    assert!(ok >= 1 && refused >= 1, "{ok} served, {refused} refused");
    // Every refusal is counted, under its reason.
    let after = scrape().await;
    let rejected = |samples: &[prometheus::Sample]| {
        prometheus::value(
            samples,
            "mlx_serve_requests_rejected_total",
            &[("reason", "kv_cache_exhausted")],
        )
    };
    assert_eq!(rejected(&after) - rejected(&before), f64::from(refused));
    let too_many = |samples: &[prometheus::Sample]| {
        prometheus::value(
            samples,
            "mlx_serve_http_requests_total",
            &[("route", "/v1/completions"), ("status_class", "4xx")],
        )
    };
    assert_eq!(too_many(&after) - too_many(&before), f64::from(refused));
    // Everything is given back, and the server serves again.
    server().wait_idle(DEADLINE).await;
    let response = client()
        .post(server().url("/v1/completions"))
        .bearer_auth(KEYS[0])
        .json(&json!({"model": MODEL, "prompt": long_prompt(99), "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// `/metrics` without a key: open to scrapers even with API keys on (the default), and
/// valid for promtool.
async fn scrape() -> Vec<prometheus::Sample> {
    let response = client().get(server().url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    prometheus::promtool_check(&text);
    prometheus::parse(&text)
}

async fn ready_status() -> (StatusCode, Value) {
    let response = client()
        .get(server().url("/health/ready"))
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_the_pool_is_above_the_threshold_and_recovers() {
    let _pool = POOL.lock().await;
    server().wait_idle(DEADLINE).await;
    assert_eq!(ready_status().await.0, StatusCode::OK);
    // One long prompt holds 19 of 41 blocks (46 % > 30 %) for as long as it streams.
    let mut response = client()
        .post(server().url("/v1/completions"))
        .bearer_auth(KEYS[0])
        .json(
            &json!({"model": MODEL, "prompt": long_prompt(7), "max_tokens": 2000,
                      "ignore_eos": true, "stream": true}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.chunk().await.unwrap().expect("a first chunk");
    let (status, body) = ready_status().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["reason"], "kv_cache_saturated");
    let health = client().get(server().url("/health")).send().await.unwrap();
    assert_eq!(
        health.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "/health is ready"
    );
    // Liveness and startup do not depend on load.
    for path in ["/health/live", "/health/startup"] {
        let response = client().get(server().url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let samples = scrape().await;
    assert_eq!(prometheus::value(&samples, "mlx_serve_ready", &[]), 0.0);
    drop(response);
    server().wait_idle(DEADLINE).await;
    let (status, body) = ready_status().await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_the_api_but_not_health() {
    // Readiness depends on the pool.
    let _pool = POOL.lock().await;
    let models = server().url("/v1/models");
    let response = client().get(&models).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(assert_envelope(&body)["code"], "invalid_api_key");
    for wrong in ["secret-on", "secret-one-", "SECRET-ONE"] {
        let response = client()
            .get(&models)
            .bearer_auth(wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{wrong}");
    }
    let response = client()
        .get(&models)
        .bearer_auth(KEYS[1])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = client()
        .get(&models)
        .header("x-api-key", KEYS[0])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Generation endpoints too, before the body is even looked at.
    let response = client()
        .post(server().url("/v1/chat/completions"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    for health in [
        "/health",
        "/health/live",
        "/health/ready",
        "/health/startup",
    ] {
        let response = client().get(server().url(health)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{health}");
    }
    // Metrics stay open to scrapers unless --metrics-require-api-key.
    for open in ["/metrics", "/v1/stats"] {
        let response = client().get(server().url(open)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{open}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_only_the_configured_origin() {
    let preflight = |origin: &'static str| {
        client()
            .request(
                reqwest::Method::OPTIONS,
                server().url("/v1/chat/completions"),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let allowed = preflight(ALLOWED_ORIGIN).await.unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        ALLOWED_ORIGIN
    );
    let other = preflight("http://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let response = client()
        .get(server().url("/v1/models"))
        .header("origin", ALLOWED_ORIGIN)
        .bearer_auth(KEYS[0])
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        ALLOWED_ORIGIN
    );
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(
        exposed.contains("x-request-id") && exposed.contains("retry-after"),
        "{exposed}"
    );
}

/// The official `openai` package against this server: chat (plain and streamed), models,
/// completions, and its typed errors (NotFound, BadRequest, Authentication, RateLimit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_client_works() {
    let _pool = POOL.lock().await;
    server().wait_idle(DEADLINE).await;
    let root = env!("CARGO_MANIFEST_DIR");
    let client_dir = format!("{root}/.deps/openai-client");
    assert!(
        std::path::Path::new(&client_dir).join("openai").is_dir(),
        "the openai Python package is missing from {client_dir}: run `make setup`"
    );
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let output = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new(&python)
            .arg(format!("{root}/tests/clients/openai_client.py"))
            .arg(server().url("/v1"))
            .arg(KEYS[1])
            .arg(MODEL)
            .env("PYTHONPATH", &client_dir)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the Python client finished in time")
    .expect("run python3 (install Python 3: make setup)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
    assert!(stdout.contains("RateLimitError"), "{stdout}");
}
