//! The `slow-readers` scenario: normal streaming clients (closed loop) against a running
//! server, first alone and then beside `--slow` clients that ask for long streams and
//! read them at a trickle (one chunk every `--slow-read-ms`; 0: never after the first).
//! The second phase starts once every slow stream has its first token. Pass criteria:
//! every slow stream got that far, the normal clients' TTFT p99 with slow readers is at
//! most `--max-ttft-ratio` times the p99 without them, and every normal request of both
//! phases succeeded.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use serde_json::json;

use crate::load::{self, Endpoint, LoadSummary, Pace, Request, Workload};

#[derive(Debug, Clone, Args)]
pub struct SlowReadersArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// The model name to send.
    #[arg(long, default_value = "SmolLM2-135M-Instruct.Q4_1")]
    model: String,
    /// Normal streaming clients (closed loop).
    #[arg(long, default_value_t = 4)]
    normal: usize,
    /// Slow clients in the second phase.
    #[arg(long, default_value_t = 8)]
    slow: usize,
    /// Milliseconds a slow client waits between chunks it reads (0: it stops reading
    /// after the first).
    #[arg(long, default_value_t = 0)]
    slow_read_ms: u64,
    /// Tokens a slow client asks for.
    #[arg(long, default_value_t = 4000)]
    slow_max_tokens: u64,
    /// Seconds each phase sends normal requests for.
    #[arg(long, default_value_t = 60)]
    phase_secs: u64,
    /// Words of each normal prompt.
    #[arg(long, default_value_t = 120)]
    prompt_words: usize,
    /// Tokens each normal request generates at most.
    #[arg(long, default_value_t = 32)]
    max_tokens: u64,
    /// Largest acceptable ratio of the normal clients' TTFT p99, with slow readers over
    /// without.
    #[arg(long, default_value_t = 2.0)]
    max_ttft_ratio: f64,
    /// Per-request deadline of normal requests, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// One slow client: asks for a long stream and reads it until it has its first token (the
/// second event: a role-only chunk comes first), reporting that on `generating`; then it
/// reads one chunk every `read_every` (never again when zero) until `stop`.
async fn slow_client(
    client: reqwest::Client,
    args: SlowReadersArgs,
    index: usize,
    generating: tokio::sync::oneshot::Sender<()>,
    stop: Arc<tokio::sync::Notify>,
) {
    let body = json!({
        "model": args.model,
        "messages": [{"role": "user", "content": load::prompt(9_000_000 + index, args.prompt_words)}],
        "max_tokens": args.slow_max_tokens, "stream": true, "ignore_eos": true,
    });
    let url = format!("{}/v1/chat/completions", args.url.trim_end_matches('/'));
    let Ok(response) = client.post(url).json(&body).send().await else {
        return;
    };
    if !response.status().is_success() {
        return;
    }
    let mut chunks = response.bytes_stream();
    let mut events = 0;
    while events < 2 {
        let Some(Ok(chunk)) = chunks.next().await else {
            return;
        };
        events += chunk.windows(6).filter(|w| w == b"data: ").count();
    }
    let _ = generating.send(());
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        if args.slow_read_ms == 0 {
            stopped.as_mut().await;
            break;
        }
        tokio::select! {
            _ = stopped.as_mut() => break,
            _ = tokio::time::sleep(Duration::from_millis(args.slow_read_ms)) => {
                if !matches!(chunks.next().await, Some(Ok(_))) {
                    break;
                }
            }
        }
    }
}

async fn phase(client: &reqwest::Client, args: &SlowReadersArgs, base: usize) -> LoadSummary {
    let workload = Workload {
        base: args.url.clone(),
        model: args.model.clone(),
        endpoint: Endpoint::Chat,
        stream: true,
        max_tokens: args.max_tokens,
        ignore_eos: false,
    };
    let words = args.prompt_words;
    let next = Arc::new(move |i: usize| Request {
        prompt: load::prompt(base + i, words).into(),
        agent: None,
    });
    load::drive(
        client,
        &workload,
        Pace::Closed {
            concurrency: args.normal,
        },
        load::Until::Elapsed(Duration::from_secs(args.phase_secs)),
        None,
        next,
    )
    .await
    .into_iter()
    .next()
    .unwrap_or_default()
    .summary()
}

/// Runs the scenario; `Ok(false)` when a pass criterion failed.
pub async fn run(args: SlowReadersArgs) -> Result<bool, String> {
    let client = crate::report::http_client(args.timeout_secs)?;
    // Slow clients have no deadline of their own: they end when the phase does.
    let slow_http = reqwest::Client::builder()
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let alone = phase(&client, &args, 0).await;
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut slow = Vec::new();
    let mut generating = Vec::new();
    for index in 0..args.slow {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        generating.push(receiver);
        slow.push(tokio::spawn(slow_client(
            slow_http.clone(),
            args.clone(),
            index,
            sender,
            Arc::clone(&stop),
        )));
    }
    // The normal clients come back once every slow stream is generating: what is measured
    // is the slow readers' reading, not their arrival (their prompts' prefill, seconds on
    // a small machine, would otherwise delay the first normal requests). A slow client
    // that fails drops its sender and is not counted.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut started = 0;
    for receiver in generating {
        if let Ok(Ok(())) = tokio::time::timeout_at(deadline, receiver).await {
            started += 1;
        }
    }
    let beside = phase(&client, &args, 1_000_000).await;
    stop.notify_waiters();
    for task in slow {
        task.await
            .map_err(|e| format!("a slow client task failed: {e}"))?;
    }

    println!(
        "## slow readers: {} normal clients, {} s per phase; {} slow clients (read every {} ms, 0 = never)\n",
        args.normal, args.phase_secs, args.slow, args.slow_read_ms
    );
    println!("{}", load::TABLE_HEADER);
    println!("{}", load::row("normal clients alone", &alone));
    println!("{}", load::row("beside slow readers", &beside));
    println!("\nslow streams generating: {started} of {}", args.slow);
    let ratio = beside.ttft.p99_ms / alone.ttft.p99_ms.max(1e-3);
    let mut failures = Vec::new();
    if alone.failed + beside.failed > 0 || alone.ok == 0 || beside.ok == 0 {
        failures.push(format!(
            "normal requests failed: {} alone, {} beside slow readers",
            alone.failed, beside.failed
        ));
    }
    if started < args.slow {
        failures.push(format!(
            "only {started} of {} slow streams were generating",
            args.slow
        ));
    }
    if ratio > args.max_ttft_ratio {
        failures.push(format!(
            "TTFT p99 {:.0} ms beside slow readers is {ratio:.2}x the {:.0} ms alone",
            beside.ttft.p99_ms, alone.ttft.p99_ms
        ));
    }
    println!(
        "TTFT p99 ratio: {ratio:.2} (at most {})",
        args.max_ttft_ratio
    );
    crate::report::verdict(&failures);
    if let Some(path) = &args.json {
        let report = json!({
            "scenario": "slow-readers",
            "alone": alone,
            "beside_slow_readers": beside,
            "slow_started": started,
            "ttft_p99_ratio": ratio,
            "failures": failures,
        });
        crate::report::write_json(path, &report)?;
    }
    Ok(failures.is_empty())
}
