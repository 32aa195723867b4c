//! Graceful shutdown of the real binary: SIGTERM while streams are active lets them finish
//! (new requests get 503, readiness goes 503, metrics still answer), then the process
//! exits 0; a second signal exits at once. The same run checks `--log-format json`: every
//! log line is a JSON object, with one access line per request.

mod common;
#[path = "common/process.rs"]
mod process;
#[path = "common/server.rs"]
mod server;

use std::time::{Duration, Instant};

use process::start;
use reqwest::StatusCode;
use serde_json::{Value, json};
use server::{MODEL, assert_envelope, client, sse_data};

use common::DEADLINE;

fn streaming_chat(max_tokens: u64) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": "Tell me a story."}],
           "max_tokens": max_tokens, "ignore_eos": true, "temperature": 0, "stream": true,
           "stream_options": {"include_usage": true}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_active_streams_finish_then_exits_zero() {
    let mut served = start(&["--drain-timeout-secs", "60", "--log-format", "json"]);
    let url = |path: &str| format!("{}{path}", served.base);
    let mut streams = Vec::new();
    for i in 0..3 {
        let mut response = client()
            .post(url("/v1/chat/completions"))
            .header("x-request-id", format!("drain-{i}"))
            .header("x-agent-id", "logger")
            .json(&streaming_chat(40))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let first = response.chunk().await.unwrap().expect("a first chunk");
        streams.push((response, first.to_vec()));
    }
    served.signal("TERM");

    // Readiness goes 503 and new requests are refused while the streams finish.
    let started = Instant::now();
    loop {
        let ready = client().get(url("/health/ready")).send().await.unwrap();
        if ready.status() == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "readiness never went 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = client()
        .post(url("/v1/chat/completions"))
        .json(&streaming_chat(2))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(assert_envelope(&body)["code"], "server_shutting_down");
    // Operators still see the server while it drains.
    let metrics = client().get(url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l == "mlx_serve_draining 1"),
        "{metrics}"
    );

    for (mut response, mut body) in streams {
        while let Some(chunk) = response.chunk().await.unwrap() {
            body.extend_from_slice(&chunk);
        }
        let events = sse_data(&String::from_utf8(body).unwrap());
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
        assert_eq!(
            usage["usage"]["completion_tokens"], 40,
            "the stream finished whole"
        );
        let last: Value = serde_json::from_str(&events[events.len() - 3]).unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "length");
    }
    assert_eq!(served.wait(DEADLINE), Some(0));
    // The process has exited: both readers end at the pipes' end.
    let said: Vec<String> = served.output.iter().collect();
    assert!(
        said.iter().any(|l| l.contains("shut down cleanly")),
        "{said:?}"
    );
    assert_json_access_log(served.logs.iter().collect());
}

/// Every log line is JSON; each stream has one access line with its id, route, status,
/// latency and tokens; the refused request has its own.
fn assert_json_access_log(logs: Vec<String>) {
    let lines: Vec<Value> = logs
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let access: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "mlx_serve::access")
        .map(|l| &l["fields"])
        .collect();
    for i in 0..3 {
        let id = format!("drain-{i}");
        let mine: Vec<&&Value> = access.iter().filter(|f| f["request_id"] == id).collect();
        assert_eq!(mine.len(), 1, "one access line for {id}: {logs:#?}");
        let fields = mine[0];
        assert_eq!(fields["route"], "/v1/chat/completions");
        assert_eq!(fields["status"], 200);
        assert_eq!(fields["outcome"], "completed");
        assert_eq!(fields["completion_tokens"], 40);
        assert_eq!(fields["agent_id"], "logger");
        assert!(fields["prompt_tokens"].as_u64().unwrap() > 0);
        let latency = fields["latency_ms"].as_f64().unwrap();
        let first_byte = fields["first_byte_ms"].as_f64().unwrap();
        assert!(first_byte > 0.0 && first_byte <= latency, "{fields}");
    }
    assert!(
        access.iter().any(|f| f["status"] == 503),
        "the refused request is logged: {logs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let mut served = start(&["--drain-timeout-secs", "600"]);
    let mut response = client()
        .post(format!("{}/v1/chat/completions", served.base))
        .json(&streaming_chat(2000))
        .send()
        .await
        .unwrap();
    response.chunk().await.unwrap().expect("a first chunk");
    served.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    served.signal("INT");
    assert_eq!(served.wait(Duration::from_secs(20)), Some(130));
}
