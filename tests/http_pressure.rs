//! The engine under unlucky and hostile traffic, through the real HTTP server with the
//! default model: a returning prompt whose cached prefix must be taken back under pool
//! pressure, clients that stop reading, the queue bound counting generations, and the
//! drain report.
//!
//! Prompts are token ids, so the block arithmetic in each test is exact. Tests that share
//! a server take turns on it.

mod common;
#[path = "common/prometheus.rs"]
mod prometheus;
#[path = "common/server.rs"]
mod server;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use server::{MODEL, TestServer, assert_envelope, client, sse_data};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;

use common::DEADLINE;

const BLOCK: usize = 16;
const STALL_SECS: u64 = 3;

/// Two batch slots, two queue places, a 3 s stall timeout, 64 MiB of KV (91 blocks).
fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        TestServer::start(&[
            "--kv-cache-mb",
            "64",
            "--max-batch",
            "2",
            "--max-queue",
            "2",
            "--stall-timeout-secs",
            "3",
        ])
    })
}

/// 22 blocks of 16 tokens: small enough that a returning prompt meets a nearly full pool.
fn small_pool() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let server = TestServer::start(&["--kv-cache-mb", "16", "--max-batch", "2"]);
        assert_eq!(server.stats().blocks_total, 22, "16 MiB of f32 KV");
        server
    })
}

/// The batch slots of [`server`] are what its tests are about: one at a time.
static ENGINE: Mutex<()> = Mutex::const_new(());

/// `len` token ids starting at `first` (the default model's vocabulary has 49,152).
fn ids(first: u32, len: usize) -> Vec<u32> {
    (first..first + len as u32).collect()
}

fn completion(prompt: &[u32], max_tokens: u64, stream: bool) -> Value {
    json!({"model": MODEL, "prompt": prompt, "max_tokens": max_tokens,
           "ignore_eos": true, "temperature": 0, "stream": stream})
}

async fn post(body: Value) -> reqwest::Response {
    post_to(server(), body).await
}

async fn post_to(server: &TestServer, body: Value) -> reqwest::Response {
    client()
        .post(server.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .expect("response")
}

/// Reads a streaming response to its end: the parsed `data:` payloads before `[DONE]`.
async fn read_stream(response: reqwest::Response) -> Vec<Value> {
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("SSE body");
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("JSON event"))
        .collect()
}

async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < DEADLINE,
            "timed out waiting: {what}: {:?}",
            server().stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn scrape() -> Vec<prometheus::Sample> {
    let text = client()
        .get(server().url("/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("exposition");
    prometheus::parse(&text)
}

/// A multi-turn conversation comes back with its history while the pool is nearly full:
/// its prefix sits in cached blocks that admission must count as taken, or the pool is
/// over-committed and the next step fails for everyone in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_stream_survives_a_returning_prompt_under_pool_pressure() {
    let pool = small_pool();
    pool.wait_idle(DEADLINE).await;
    // Turn one: 5 full blocks, then cached (refcount 0) once it ends.
    let history = ids(1000, 5 * BLOCK);
    let first = post_to(pool, completion(&history, 1, false)).await;
    assert_eq!(first.status(), StatusCode::OK);
    let started = Instant::now();
    while pool.stats().blocks_cached < 5 || pool.stats().blocks_in_use > 0 {
        assert!(started.elapsed() < DEADLINE, "{:?}", pool.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A stream whose 16 blocks leave one block free and 5 cached; it decodes inside its
    // last block, so it needs no more.
    let other = ids(20000, 15 * BLOCK + 1);
    let mut running = post_to(pool, completion(&other, 12, true)).await;
    assert_eq!(running.status(), StatusCode::OK);
    running
        .chunk()
        .await
        .expect("a chunk")
        .expect("first event");
    // Turn two: the history plus 2 new blocks. Taking its 5 cached blocks back into use
    // leaves 1 block for the 2 it needs: it must wait, never over-commit the pool.
    let mut returning = history.clone();
    returning.extend(ids(30000, 2 * BLOCK));
    let second = tokio::spawn(post_to(pool, completion(&returning, 4, false)));
    let events = read_stream(running).await;
    let last = events.last().expect("events");
    assert!(
        last.get("error").is_none(),
        "the running stream was aborted: {last}"
    );
    assert_eq!(last["choices"][0]["finish_reason"], "length", "{last}");
    let second = second.await.expect("join");
    let status = second.status();
    let body: Value = second.json().await.expect("JSON");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 80);
    assert_eq!(body["usage"]["completion_tokens"], 4);
    pool.wait_idle(DEADLINE).await;
}

/// A raw connection that sends a streaming request and never reads a byte. Its receive
/// buffer is small, and each chunk carries 20 log-probabilities, so the server's writes
/// back up within a few dozen tokens.
async fn non_reading_client(topic: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(server().address).await.expect("connect");
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": topic}],
                      "max_tokens": 2000, "ignore_eos": true, "stream": true,
                      "logprobs": true, "top_logprobs": 20})
    .to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    stream
}

fn stall_aborts(samples: &[prometheus::Sample]) -> f64 {
    prometheus::value(
        samples,
        "mlx_serve_requests_aborted_total",
        &[("cause", "stalled")],
    )
}

/// `--max-batch` clients that stop reading must not keep a normal client from being
/// served, and are ended after `--stall-timeout-secs` with their blocks back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_reading_clients_cannot_starve_others_and_end_after_the_stall_timeout() {
    let _engine = ENGINE.lock().await;
    server().wait_idle(DEADLINE).await;
    let before = scrape().await;
    let stalled = [
        non_reading_client("Write a long essay about rivers.").await,
        non_reading_client("Write a long essay about mountains.").await,
    ];
    // Both hold a batch slot, and both stop once their connection backs up.
    wait_for("two paused sequences", || {
        let stats = server().stats();
        stats.running == 2 && stats.paused == 2
    })
    .await;
    let served = post(completion(&ids(6000, 20), 8, false)).await;
    let status = served.status();
    let body: Value = served.json().await.expect("JSON");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 8);
    // After the stall timeout the two are ended and everything is back in the pool.
    let stats = server()
        .wait_idle(Duration::from_secs(STALL_SECS * 10))
        .await;
    assert_eq!(stats.blocks_in_use, 0);
    let after = scrape().await;
    assert_eq!(stall_aborts(&after) - stall_aborts(&before), 2.0);
    drop(stalled);
}

/// `--max-queue 2` with two batch slots: a request whose generations would leave more
/// than two waiting is refused at once, counting every prompt of a multi-prompt request;
/// one with more prompts than slots and queue together can never run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_bound_counts_generations_and_refuses_at_once() {
    let _engine = ENGINE.lock().await;
    server().wait_idle(DEADLINE).await;
    let prompts =
        |first: u32, n: u32| -> Vec<Vec<u32>> { (0..n).map(|i| ids(first + 100 * i, 8)).collect() };
    let plain = |prompts: Vec<Vec<u32>>| json!({"model": MODEL, "prompt": prompts, "max_tokens": 4, "temperature": 0});
    // Two long streams hold both slots.
    let mut streams = Vec::new();
    for i in 0..2u32 {
        streams.push(tokio::spawn(post(completion(
            &ids(9000 + 100 * i, 8),
            48,
            true,
        ))));
        wait_for("a running stream", || server().stats().running as u32 > i).await;
    }
    // Three prompts would wait behind them, one more than the queue holds.
    let refused = post(plain(prompts(10000, 3))).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.expect("JSON");
    assert_eq!(assert_envelope(&body)["code"], "queue_full", "{body}");
    assert_eq!(server().stats().waiting, 0, "all or nothing");
    // Two fit the queue, and then nothing more does; readiness says the batch is full.
    let queued = tokio::spawn(post(plain(prompts(11000, 2))));
    wait_for("two waiting", || server().stats().waiting == 2).await;
    let ready = client()
        .get(server().url("/health/ready"))
        .send()
        .await
        .expect("readiness");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = ready.json().await.expect("JSON");
    assert_eq!(body["reason"], "batch_saturated", "{body}");
    let refused = post(completion(&ids(9900, 8), 4, false)).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = refused.json().await.expect("JSON");
    assert_eq!(assert_envelope(&body)["code"], "queue_full", "{body}");
    for stream in streams {
        let events = read_stream(stream.await.expect("join")).await;
        assert_eq!(
            events.last().expect("events")["choices"][0]["finish_reason"],
            "length"
        );
    }
    let queued = queued.await.expect("join");
    let status = queued.status();
    let body: Value = queued.json().await.expect("JSON");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["choices"].as_array().map(Vec::len), Some(2));
    // Five prompts can never run here (two slots, two queue places): 400, not 429.
    let never = post(plain(prompts(12000, 5))).await;
    assert_eq!(never.status(), StatusCode::BAD_REQUEST);
    let body: Value = never.json().await.expect("JSON");
    let error = assert_envelope(&body);
    assert_eq!(
        (error["code"].as_str(), error["param"].as_str()),
        (Some("too_many_prompts"), Some("prompt"))
    );
    server().wait_idle(DEADLINE).await;
}

/// A drain counts every generation once, by how it ended: one finishes, one is aborted
/// at the deadline, one's client leaves, one queued request is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_report_counts_every_generation_once() {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    let server: &'static TestServer =
        SERVER.get_or_init(|| TestServer::start(&["--kv-cache-mb", "64", "--max-batch", "3"]));
    let endless = |first| completion(&ids(first, 8), 2000, true);
    let aborted = post_to(server, endless(40000)).await;
    let mut leaving = post_to(server, endless(41000)).await;
    leaving
        .chunk()
        .await
        .expect("a chunk")
        .expect("first event");
    let finishing = tokio::spawn(post_to(server, completion(&ids(42000, 8), 12, false)));
    let stats = || server.stats();
    let started = Instant::now();
    while stats().running < 3 {
        assert!(started.elapsed() < DEADLINE, "{:?}", stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = tokio::spawn(post_to(server, completion(&ids(43000, 8), 4, false)));
    while stats().waiting < 1 {
        assert!(started.elapsed() < DEADLINE, "{:?}", stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let engine = server.engine().clone();
    // Long enough for the 12-token request to finish on a slow machine.
    let drain = tokio::spawn(async move { engine.drain(Duration::from_secs(15)).await });
    while !stats().draining {
        assert!(started.elapsed() < DEADLINE, "{:?}", stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(leaving);
    let report = drain.await.expect("join");
    assert_eq!(
        (
            report.completed,
            report.aborted,
            report.cancelled,
            report.rejected
        ),
        (1, 1, 1, 1),
        "{report:?}"
    );
    let finished = finishing.await.expect("join");
    assert_eq!(finished.status(), StatusCode::OK);
    let body: Value = finished.json().await.expect("JSON");
    assert_eq!(body["usage"]["completion_tokens"], 12);
    let events = read_stream(aborted).await;
    let last = events.last().expect("events");
    assert_eq!(last["error"]["code"], "generation_aborted", "{last}");
    let refused = refused.await.expect("join");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = refused.json().await.expect("JSON");
    assert_eq!(assert_envelope(&body)["code"], "server_shutting_down");
    let stats = stats();
    assert_eq!(
        (stats.running, stats.waiting, stats.blocks_in_use),
        (0, 0, 0)
    );
}

/// `--max-connections 2`: two connections that never send a request hold both places, so
/// a third is not accepted until `--header-read-timeout-secs` closes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_bounded_and_closed_after_the_header_timeout() {
    use tokio::io::AsyncReadExt;
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    let server: &'static TestServer = SERVER.get_or_init(|| {
        TestServer::start(&["--max-connections", "2", "--header-read-timeout-secs", "1"])
    });
    let open = || server.state.metrics().http.open_connections();
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(TcpStream::connect(server.address).await.expect("connect"));
    }
    let started = Instant::now();
    while open() < 2 {
        assert!(started.elapsed() < DEADLINE, "{} open", open());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let served = tokio::spawn(client().get(server.url("/health/live")).send());
    while !served.is_finished() {
        assert!(open() <= 2, "{} connections open", open());
        assert!(
            started.elapsed() < DEADLINE,
            "the third client was never served"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let response = served.await.expect("join").expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    // The idle ones were closed by the server: they read to end-of-stream.
    for mut stream in idle {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest))
            .await
            .expect("closed in time");
        assert!(read.is_ok() || rest.is_empty(), "{read:?}");
    }
}
