//! The `flood` scenario: `--concurrency` clients each send one completion request with a
//! long prompt of its own (no shared prefix) at the same moment, so the server's KV pool
//! and queue overflow. Pass criteria: every response has an allowed status (200 and 429 by
//! default; never a 5xx, a connection error or a time-out), every 429 carries
//! `Retry-After`, refusals (429s other than `queue_timeout`, which waits by design) are
//! answered within `--max-refusal-p99-ms` at the 99th percentile, and a recovery round of
//! sequential requests afterwards is served in full.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Value, json};
use tokio::sync::Barrier;

use crate::report::{Outcome, Recorder};

#[derive(Debug, Clone, Args)]
pub struct FloodArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// The model name to send.
    #[arg(long, default_value = "SmolLM2-135M-Instruct.Q4_1")]
    model: String,
    /// Requests sent at once.
    #[arg(long, default_value_t = 150)]
    concurrency: usize,
    /// Words of each prompt (about one token each).
    #[arg(long, default_value_t = 300)]
    prompt_words: usize,
    /// Tokens each request generates.
    #[arg(long, default_value_t = 8)]
    max_tokens: u64,
    /// Statuses that pass.
    #[arg(long, value_delimiter = ',', default_value = "200,429")]
    allow: Vec<u16>,
    /// Largest acceptable 99th percentile of the time to a 429, in milliseconds.
    #[arg(long, default_value_t = 5.0)]
    max_refusal_p99_ms: f64,
    /// Sequential requests after the flood, all of which must succeed (0: none).
    #[arg(long, default_value_t = 5)]
    recovery: usize,
    /// Per-request deadline in seconds: a request without a response by then counts as a
    /// time-out (a failure).
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Open the clients' connections before the flood (a `GET /health/live` each, all at
    /// once), as SDK clients that keep their connections alive have them; the refusal
    /// times then leave out TCP set-up and the accept loop.
    #[arg(long)]
    open_connections: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Runs the scenario; `Ok(false)` when a pass criterion failed.
pub async fn run(args: FloodArgs) -> Result<bool, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_secs))
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let url = format!("{}/v1/completions", args.url.trim_end_matches('/'));
    if args.open_connections {
        let live = format!("{}/health/live", args.url.trim_end_matches('/'));
        let opening: Vec<_> = (0..args.concurrency)
            .map(|_| tokio::spawn(client.get(&live).send()))
            .collect();
        for task in opening {
            let response = task
                .await
                .map_err(|e| format!("a client task failed: {e}"))?
                .map_err(|e| format!("cannot open a connection: {e}"))?;
            if !response.status().is_success() {
                return Err(format!("/health/live answered {}", response.status()));
            }
            // Read to the end, so the connection goes back to the pool.
            response
                .bytes()
                .await
                .map_err(|e| format!("cannot read /health/live: {e}"))?;
        }
    }
    let barrier = Arc::new(Barrier::new(args.concurrency));
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|index| {
            let client = client.clone();
            let url = url.clone();
            // Serialized before the flood, so the times are the server's and the wire's.
            let body = request_body(&args, index);
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                send(&client, &url, body).await
            })
        })
        .collect();
    let started = Instant::now();
    let mut flood = Recorder::default();
    for task in tasks {
        let (outcome, latency, detail) = task
            .await
            .map_err(|e| format!("a client task failed: {e}"))?;
        if let Some(detail) = detail {
            flood.note(&outcome, detail);
        }
        flood.record(outcome, latency);
    }
    let flood_seconds = started.elapsed().as_secs_f64();
    let mut recovery = Recorder::default();
    for index in 0..args.recovery {
        let body = request_body(&args, args.concurrency + index);
        let (outcome, latency, detail) = send(&client, &url, body).await;
        if let Some(detail) = detail {
            recovery.note(&outcome, detail);
        }
        recovery.record(outcome, latency);
    }

    println!(
        "## flood: {} requests at once, {} prompt words, {} tokens each ({flood_seconds:.1} s)\n",
        args.concurrency, args.prompt_words, args.max_tokens
    );
    println!("{}", flood.table());
    if !flood.notes.is_empty() {
        println!("details: {:?}\n", flood.notes);
    }
    if args.recovery > 0 {
        println!("## recovery: {} sequential requests\n", args.recovery);
        println!("{}", recovery.table());
    }

    let mut failures = Vec::new();
    for (outcome, summary) in flood.outcomes().into_iter().zip(flood.summaries()) {
        let allowed = matches!(&outcome, Outcome::Status(status, _) if args.allow.contains(status));
        if !allowed {
            failures.push(format!(
                "{} responses with outcome {}",
                summary.count, summary.outcome
            ));
        }
        // Refusals must be immediate; a queue time-out waits by design.
        let refusal = matches!(&outcome, Outcome::Status(429, code) if code.as_deref() != Some("queue_timeout"));
        if refusal && summary.p99_ms > args.max_refusal_p99_ms {
            failures.push(format!(
                "{} p99 {:.2} ms > {} ms",
                summary.outcome, summary.p99_ms, args.max_refusal_p99_ms
            ));
        }
    }
    let missing_retry: u64 = flood
        .notes
        .values()
        .filter_map(|n| n.get("no retry-after"))
        .sum();
    if missing_retry > 0 {
        failures.push(format!("{missing_retry} 429 responses without Retry-After"));
    }
    let recovered = recovery.count(&Outcome::Status(200, None));
    if recovered != recovery.total() {
        failures.push(format!(
            "recovery: {recovered} of {} served",
            recovery.total()
        ));
    }
    if let Some(path) = &args.json {
        let report = json!({
            "scenario": "flood",
            "concurrency": args.concurrency,
            "prompt_words": args.prompt_words,
            "max_tokens": args.max_tokens,
            "seconds": flood_seconds,
            "flood": flood.summaries(),
            "flood_details": flood.notes,
            "recovery": recovery.summaries(),
            "failures": failures,
        });
        crate::report::write_json(path, &report)?;
    }
    crate::report::verdict(&failures);
    Ok(failures.is_empty())
}

/// Words the prompts are made of (about one token each).
const WORDS: [&str; 12] = [
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "near", "the", "river",
];

/// A completion request, as JSON bytes, whose prompt shares no KV block with another
/// index's: its first words differ, and block hashes chain over everything before them.
fn request_body(args: &FloodArgs, index: usize) -> Vec<u8> {
    let words: Vec<&str> = WORDS
        .iter()
        .copied()
        .cycle()
        .take(args.prompt_words)
        .collect();
    json!({
        "model": args.model,
        "prompt": format!("Request {index}: {}", words.join(" ")),
        "max_tokens": args.max_tokens,
        "temperature": 0,
    })
    .to_string()
    .into_bytes()
}

/// Sends one request and reads its whole response: the outcome (status and error code),
/// the time it took, and a detail worth counting (a 429 without `Retry-After`).
async fn send(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
) -> (Outcome, Duration, Option<String>) {
    let started = Instant::now();
    let request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            let outcome = if error.is_timeout() {
                Outcome::Timeout
            } else {
                Outcome::ConnectionError
            };
            return (outcome, started.elapsed(), Some(error.to_string()));
        }
    };
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let text = match response.text().await {
        Ok(text) => text,
        Err(error) if error.is_timeout() => return (Outcome::Timeout, started.elapsed(), None),
        Err(error) => {
            return (
                Outcome::ConnectionError,
                started.elapsed(),
                Some(error.to_string()),
            );
        }
    };
    let elapsed = started.elapsed();
    let code = (status != 200)
        .then(|| serde_json::from_str::<Value>(&text).ok())
        .flatten()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
    let detail = (status == 429 && !retry_after).then(|| "no retry-after".to_owned());
    (Outcome::Status(status, code), elapsed, detail)
}
