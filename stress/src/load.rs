//! The load engine the long-running scenarios share: sending one request the way a client
//! does and timing it (time to first token, the gaps between tokens, end to end), and
//! driving many of them in a closed loop (N workers, each sending its next request when
//! its last one ends, or when a refusal's `Retry-After` has passed) or an open loop
//! (arrivals at a fixed rate, evenly spaced or Poisson, whatever the server's pace). Every request that was started is in the statistics: errors, time-outs
//! and broken streams included.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::report::{Outcome, Recorder};

/// Which OpenAI endpoint the requests go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// What every request of a run looks like, apart from its prompt.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The server's base URL.
    pub base: String,
    pub model: String,
    pub endpoint: Endpoint,
    pub stream: bool,
    pub max_tokens: u64,
    /// Ask the server to generate `max_tokens` whatever the model says (a server that
    /// does not know the field ignores it).
    pub ignore_eos: bool,
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct Request {
    /// A string (chat: the user message), or token ids (completions).
    pub prompt: Value,
    pub agent: Option<String>,
}

/// What one request did, as its client saw it.
#[derive(Debug, Clone)]
pub struct Sent {
    pub outcome: Outcome,
    /// When it was sent, from the start of the run.
    pub at: Duration,
    pub e2e: Duration,
    /// Time to the first generated text (streams; a plain request's is its e2e time).
    pub ttft: Option<Duration>,
    /// Gaps between generated text events (streams only).
    pub itl: Vec<Duration>,
    pub output_tokens: u64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    /// Something worth counting about it (a finish reason, an error code, a missing
    /// `Retry-After`).
    pub detail: Option<String>,
    /// The generated text (multi-turn agents append it to their context).
    pub text: String,
    /// A refusal's `Retry-After` (429, 503): how long a well-behaved client waits.
    pub retry_after: Option<Duration>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn record(histogram: &mut Histogram<u64>, value: Duration) {
    let micros = u64::try_from(value.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, 3_600_000_000);
    let _ = histogram.record(micros);
}

/// Percentiles of one latency, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// What the clients saw of the successful requests of one or more windows.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latencies {
    /// Send to the first text event (a plain request's whole time).
    pub ttft: Percentiles,
    /// Between text events of a stream.
    pub itl: Percentiles,
    /// Send to the end of the response.
    pub e2e: Percentiles,
}

/// The statistics of a run (or of one window of it).
pub struct LoadStats {
    /// Every request by outcome, with its end-to-end time.
    pub outcomes: Recorder,
    ttft: Histogram<u64>,
    itl: Histogram<u64>,
    e2e: Histogram<u64>,
    output_tokens: u64,
    prompt_tokens: u64,
    cached_tokens: u64,
    first_at: Option<Duration>,
    last_end: Duration,
}

impl Default for LoadStats {
    fn default() -> Self {
        LoadStats {
            outcomes: Recorder::default(),
            ttft: histogram(),
            itl: histogram(),
            e2e: histogram(),
            output_tokens: 0,
            prompt_tokens: 0,
            cached_tokens: 0,
            first_at: None,
            last_end: Duration::ZERO,
        }
    }
}

/// A run's figures, for the markdown table and the JSON output.
#[derive(Debug, Clone, Serialize)]
pub struct LoadSummary {
    pub requests: u64,
    pub ok: u64,
    /// Requests that did not end in a 200 with a whole response.
    pub failed: u64,
    pub seconds: f64,
    pub requests_per_s: f64,
    pub output_tokens_per_s: f64,
    /// Of successful requests.
    pub ttft: Percentiles,
    pub itl: Percentiles,
    pub e2e: Percentiles,
    /// Prompt tokens the server reported as cached, over all prompt tokens.
    pub cached_share: f64,
    pub outcomes: Vec<crate::report::OutcomeSummary>,
}

impl LoadStats {
    pub fn record(&mut self, sent: &Sent) {
        self.outcomes.record(sent.outcome.clone(), sent.e2e);
        if let Some(detail) = &sent.detail {
            self.outcomes.note(&sent.outcome, detail.clone());
        }
        self.first_at = Some(self.first_at.map_or(sent.at, |f| f.min(sent.at)));
        self.last_end = self.last_end.max(sent.at + sent.e2e);
        if sent.outcome != Outcome::Status(200, None) {
            return;
        }
        record(&mut self.e2e, sent.e2e);
        if let Some(ttft) = sent.ttft {
            record(&mut self.ttft, ttft);
        }
        for gap in &sent.itl {
            record(&mut self.itl, *gap);
        }
        self.output_tokens += sent.output_tokens;
        self.prompt_tokens += sent.prompt_tokens;
        self.cached_tokens += sent.cached_tokens;
    }

    pub fn ok(&self) -> u64 {
        self.outcomes.count(&Outcome::Status(200, None))
    }

    /// The latency percentiles of the successful requests of several windows together
    /// (a window of a few minutes holds too few requests for a steady p95).
    pub fn latencies_over(windows: &[LoadStats]) -> Latencies {
        let over = |pick: fn(&LoadStats) -> &Histogram<u64>| {
            let mut all = histogram();
            for window in windows {
                all.add(pick(window))
                    .expect("histograms with the same bounds add");
            }
            Percentiles::of(&all)
        };
        Latencies {
            ttft: over(|w| &w.ttft),
            itl: over(|w| &w.itl),
            e2e: over(|w| &w.e2e),
        }
    }

    pub fn summary(&self) -> LoadSummary {
        let requests = self.outcomes.total();
        let seconds = self
            .first_at
            .map_or(0.0, |f| (self.last_end.saturating_sub(f)).as_secs_f64());
        let per_s = |n: f64| if seconds > 0.0 { n / seconds } else { 0.0 };
        LoadSummary {
            requests,
            ok: self.ok(),
            failed: requests - self.ok(),
            seconds,
            requests_per_s: per_s(requests as f64),
            output_tokens_per_s: per_s(self.output_tokens as f64),
            ttft: Percentiles::of(&self.ttft),
            itl: Percentiles::of(&self.itl),
            e2e: Percentiles::of(&self.e2e),
            cached_share: if self.prompt_tokens > 0 {
                self.cached_tokens as f64 / self.prompt_tokens as f64
            } else {
                0.0
            },
            outcomes: self.outcomes.summaries(),
        }
    }
}

/// The header of [`row`]'s markdown table.
pub const TABLE_HEADER: &str = "| step | requests | failed | req/s | output tok/s | TTFT p50 / p95 / p99 ms | ITL p50 / p99 ms | e2e p50 / p99 ms |\n|---|---|---|---|---|---|---|---|";

/// One markdown table row for a summary labelled `label`.
pub fn row(label: &str, s: &LoadSummary) -> String {
    format!(
        "| {label} | {} | {} | {:.2} | {:.1} | {:.0} / {:.0} / {:.0} | {:.1} / {:.1} | {:.0} / {:.0} |",
        s.requests,
        s.failed,
        s.requests_per_s,
        s.output_tokens_per_s,
        s.ttft.p50_ms,
        s.ttft.p95_ms,
        s.ttft.p99_ms,
        s.itl.p50_ms,
        s.itl.p99_ms,
        s.e2e.p50_ms,
        s.e2e.p99_ms
    )
}

/// Words the prompts are made of (about one token each).
const WORDS: [&str; 16] = [
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "near", "the", "river",
    "while", "birds", "sing", "softly",
];

/// A prompt of about `words` tokens whose first words differ from every other `seed`'s,
/// so no two share a KV block.
pub fn prompt(seed: usize, words: usize) -> String {
    let body: Vec<&str> = WORDS
        .iter()
        .copied()
        .cycle()
        .skip(seed % WORDS.len())
        .take(words.saturating_sub(2))
        .collect();
    format!("Request {seed}: {}", body.join(" "))
}

impl Workload {
    fn url(&self) -> String {
        let path = match self.endpoint {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
        };
        format!("{}{path}", self.base.trim_end_matches('/'))
    }

    fn body(&self, request: &Request) -> Value {
        let mut body = json!({
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "stream": self.stream,
        });
        match self.endpoint {
            // A list of messages as it is; anything else is the user's one message.
            Endpoint::Chat if request.prompt.is_array() => {
                body["messages"] = request.prompt.clone();
            }
            Endpoint::Chat => {
                body["messages"] = json!([{"role": "user", "content": request.prompt}]);
            }
            Endpoint::Completions => body["prompt"] = json!(request.prompt),
        }
        if self.stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        if self.ignore_eos {
            body["ignore_eos"] = json!(true);
        }
        body
    }
}

/// The text a response chunk (or whole response) carries for its first choice.
fn choice_text(chunk: &Value) -> Option<&str> {
    let choice = &chunk["choices"][0];
    choice["delta"]["content"]
        .as_str()
        .or_else(|| choice["text"].as_str())
        .or_else(|| choice["message"]["content"].as_str())
}

fn usage(sent: &mut Sent, body: &Value) {
    let usage = &body["usage"];
    if usage.is_object() {
        sent.output_tokens = usage["completion_tokens"].as_u64().unwrap_or(0);
        sent.prompt_tokens = usage["prompt_tokens"].as_u64().unwrap_or(0);
        sent.cached_tokens = usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0);
    }
}

/// Sends `request` and reads its whole response (reading a stream event by event).
pub async fn send(
    client: &reqwest::Client,
    workload: &Workload,
    request: &Request,
    at: Duration,
) -> Sent {
    let started = Instant::now();
    let mut sent = Sent {
        outcome: Outcome::ConnectionError,
        at,
        e2e: Duration::ZERO,
        ttft: None,
        itl: Vec::new(),
        output_tokens: 0,
        prompt_tokens: 0,
        cached_tokens: 0,
        detail: None,
        text: String::new(),
        retry_after: None,
    };
    let failed = |mut sent: Sent, error: reqwest::Error| {
        sent.outcome = if error.is_timeout() {
            Outcome::Timeout
        } else {
            Outcome::ConnectionError
        };
        sent.e2e = started.elapsed();
        sent
    };
    let mut post = client.post(workload.url()).json(&workload.body(request));
    if let Some(agent) = &request.agent {
        post = post.header("x-agent-id", agent);
    }
    let response = match post.send().await {
        Ok(response) => response,
        Err(error) => return failed(sent, error),
    };
    let status = response.status().as_u16();
    if status != 200 || !workload.stream {
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        if matches!(status, 429 | 503) {
            // Without a usable header, one second.
            sent.retry_after = Some(Duration::from_secs(retry_after.unwrap_or(1).min(30)));
        }
        let text = match response.text().await {
            Ok(text) => text,
            Err(error) => return failed(sent, error),
        };
        sent.e2e = started.elapsed();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let code = body["error"]["code"].as_str().map(str::to_owned);
        sent.outcome = Outcome::Status(status, if status == 200 { None } else { code });
        if status == 200 {
            sent.ttft = Some(sent.e2e);
            sent.text = choice_text(&body).unwrap_or_default().to_owned();
            usage(&mut sent, &body);
            sent.detail = body["choices"][0]["finish_reason"]
                .as_str()
                .map(|r| format!("finish_reason={r}"));
        } else if status == 429 && retry_after.is_none() {
            sent.detail = Some("no retry-after".to_owned());
        }
        return sent;
    }
    let mut events = response.bytes_stream();
    let mut pending = String::new();
    let mut last_token: Option<Instant> = None;
    let mut done = false;
    while let Some(chunk) = events.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => return failed(sent, error),
        };
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            for data in event.lines().filter_map(|l| l.strip_prefix("data: ")) {
                if data.trim() == "[DONE]" {
                    done = true;
                    continue;
                }
                let Ok(chunk) = serde_json::from_str::<Value>(data) else {
                    sent.detail = Some("unparsable event".to_owned());
                    continue;
                };
                if chunk["error"].is_object() {
                    let code = chunk["error"]["code"].as_str().unwrap_or("error");
                    sent.outcome = Outcome::StreamError(code.to_owned());
                }
                if let Some(text) = choice_text(&chunk).filter(|t| !t.is_empty()) {
                    let now = Instant::now();
                    match last_token {
                        None => sent.ttft = Some(now - started),
                        Some(last) => sent.itl.push(now - last),
                    }
                    last_token = Some(now);
                    sent.text.push_str(text);
                }
                if let Some(reason) = chunk["choices"][0]["finish_reason"].as_str() {
                    sent.detail = Some(format!("finish_reason={reason}"));
                }
                usage(&mut sent, &chunk);
            }
        }
    }
    sent.e2e = started.elapsed();
    // A server that sends no usage: one text event per token (as streams are sent).
    if sent.output_tokens == 0 && last_token.is_some() {
        sent.output_tokens = sent.itl.len() as u64 + 1;
    }
    if !matches!(sent.outcome, Outcome::StreamError(_)) {
        sent.outcome = if done {
            Outcome::Status(200, None)
        } else {
            Outcome::StreamError("no [DONE]".to_owned())
        };
    }
    sent
}

/// How requests are paced.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// This many workers, each sending its next request when its last one ends.
    Closed { concurrency: usize },
    /// Arrivals at this many requests per second, whether earlier ones have finished or
    /// not; `seed` makes Poisson arrivals repeat.
    Open {
        rate: f64,
        arrivals: Arrivals,
        seed: u64,
    },
}

/// How an open loop spaces its arrivals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arrivals {
    /// Evenly, one every `1 / rate` seconds: the load itself does not vary, so a change of
    /// latency over time is the server's.
    Uniform,
    /// A Poisson process (exponential gaps, seeded): bursts as independent
    /// clients make them, which widen the latency tail at random.
    Poisson,
}

/// When a run stops sending.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// After this long.
    Elapsed(Duration),
    /// After this many requests.
    Sent(usize),
}

/// Runs requests `next(0)`, `next(1)`, ... paced by `pace` until `until` (requests in
/// flight then are awaited and counted). Results are split into windows of `window` by
/// when they were sent (one window when `None`).
pub async fn drive(
    client: &reqwest::Client,
    workload: &Workload,
    pace: Pace,
    until: Until,
    window: Option<Duration>,
    next: Arc<dyn Fn(usize) -> Request + Send + Sync>,
) -> Vec<LoadStats> {
    let (results, mut received) = mpsc::unbounded_channel::<Sent>();
    let started = Instant::now();
    let (duration, limit) = match until {
        Until::Elapsed(duration) => (duration, usize::MAX),
        Until::Sent(count) => (Duration::MAX, count),
    };
    let deadline = started.checked_add(duration);
    let counter = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    match pace {
        Pace::Closed { concurrency } => {
            for _ in 0..concurrency {
                let (client, workload, next) =
                    (client.clone(), workload.clone(), Arc::clone(&next));
                let (results, counter) = (results.clone(), Arc::clone(&counter));
                tasks.push(tokio::spawn(async move {
                    while deadline.is_none_or(|d| Instant::now() < d) {
                        let index = counter.fetch_add(1, Ordering::Relaxed);
                        if index >= limit {
                            break;
                        }
                        let request = next(index);
                        let sent = send(&client, &workload, &request, started.elapsed()).await;
                        let wait = sent.retry_after;
                        let _ = results.send(sent);
                        // A refused client waits as told before it asks again.
                        if let Some(wait) = wait {
                            tokio::time::sleep(wait).await;
                        }
                    }
                }));
            }
        }
        Pace::Open {
            rate,
            arrivals,
            seed,
        } => {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut at = Duration::ZERO;
            let mut index = 0;
            loop {
                let gap = match arrivals {
                    Arrivals::Uniform => 1.0,
                    Arrivals::Poisson => {
                        // Exponential gaps: a Poisson process.
                        let unit = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                        -(1.0 - unit).ln()
                    }
                };
                at += Duration::from_secs_f64(gap / rate.max(1e-9));
                if at >= duration || index >= limit {
                    break;
                }
                tokio::time::sleep_until((started + at).into()).await;
                let (client, workload) = (client.clone(), workload.clone());
                let (results, request) = (results.clone(), next(index));
                index += 1;
                tasks.push(tokio::spawn(async move {
                    let sent = send(&client, &workload, &request, started.elapsed()).await;
                    let _ = results.send(sent);
                }));
            }
        }
    }
    drop(results);
    let mut windows: Vec<LoadStats> = Vec::new();
    while let Some(sent) = received.recv().await {
        let slot = window.map_or(0, |w| (sent.at.as_secs_f64() / w.as_secs_f64()) as usize);
        while windows.len() <= slot {
            windows.push(LoadStats::default());
        }
        windows[slot].record(&sent);
    }
    for task in tasks {
        let _ = task.await;
    }
    windows
}

/// [`drive`] for a number of requests, in one window.
pub async fn drive_count(
    client: &reqwest::Client,
    workload: &Workload,
    pace: Pace,
    requests: usize,
    next: Arc<dyn Fn(usize) -> Request + Send + Sync>,
) -> LoadStats {
    drive(client, workload, pace, Until::Sent(requests), None, next)
        .await
        .into_iter()
        .next()
        .unwrap_or_default()
}
