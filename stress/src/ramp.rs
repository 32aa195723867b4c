//! The `ramp` scenario: closed-loop workers against a running server, stepping from
//! `--from` to `--to` workers by `--step`, each step for `--step-secs`: throughput and
//! latency per step, and the server's RSS at each step's end when `--pid` is given. Pass
//! criterion: every request of every step got an allowed status (200, or a 429 with
//! `Retry-After`, the documented refusal); no 5xx, connection error, time-out or broken
//! stream.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use crate::load::{self, Endpoint, LoadSummary, Pace, Request, Workload};
use crate::process::ProcessSampler;
use crate::report::Outcome;

#[derive(Debug, Clone, Args)]
pub struct RampArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// The model name to send.
    #[arg(long, default_value = "SmolLM2-135M-Instruct.Q4_1")]
    model: String,
    /// The endpoint the requests go to.
    #[arg(long, value_enum, default_value = "chat")]
    endpoint: Endpoint,
    /// Send plain (non-streaming) requests.
    #[arg(long)]
    no_stream: bool,
    /// Workers at the first step.
    #[arg(long, default_value_t = 10)]
    from: usize,
    /// Workers at the last step.
    #[arg(long, default_value_t = 100)]
    to: usize,
    /// Workers added per step.
    #[arg(long, default_value_t = 10)]
    step: usize,
    /// Seconds each step sends new requests for.
    #[arg(long, default_value_t = 30)]
    step_secs: u64,
    /// Words of each prompt (about one token each).
    #[arg(long, default_value_t = 120)]
    prompt_words: usize,
    /// Tokens each request generates at most.
    #[arg(long, default_value_t = 64)]
    max_tokens: u64,
    /// Statuses that pass (429s must carry Retry-After).
    #[arg(long, value_delimiter = ',', default_value = "200,429")]
    allow: Vec<u16>,
    /// The server's pid, to sample its RSS and CPU.
    #[arg(long)]
    pid: Option<u32>,
    /// Per-request deadline in seconds (a time-out is a failure).
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
struct Step {
    workers: usize,
    summary: LoadSummary,
    rss_bytes: Option<u64>,
    cpu_percent: Option<f64>,
}

/// Runs the scenario; `Ok(false)` when the pass criterion failed.
pub async fn run(args: RampArgs) -> Result<bool, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_secs))
        .pool_max_idle_per_host(args.to)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let workload = Workload {
        base: args.url.clone(),
        model: args.model.clone(),
        endpoint: args.endpoint,
        stream: !args.no_stream,
        max_tokens: args.max_tokens,
        ignore_eos: false,
    };
    let sampler = args
        .pid
        .map(|pid| ProcessSampler::start(pid, Duration::from_secs(1)));
    let mut steps = Vec::new();
    let mut failures = Vec::new();
    let mut workers = args.from.max(1);
    println!(
        "## ramp: {} to {} workers, {} s per step, {} prompt words, {} tokens\n",
        args.from, args.to, args.step_secs, args.prompt_words, args.max_tokens
    );
    println!("{}", load::TABLE_HEADER);
    while workers <= args.to {
        let words = args.prompt_words;
        let base = steps.len() * 1_000_000;
        let next = Arc::new(move |i: usize| Request {
            prompt: load::prompt(base + i, words).into(),
            agent: None,
        });
        let stats = load::drive(
            &client,
            &workload,
            Pace::Closed {
                concurrency: workers,
            },
            load::Until::Elapsed(Duration::from_secs(args.step_secs)),
            None,
            next,
        )
        .await;
        let stats = stats.into_iter().next().unwrap_or_default();
        for (outcome, summary) in stats
            .outcomes
            .outcomes()
            .iter()
            .zip(stats.outcomes.summaries())
        {
            let allowed =
                matches!(outcome, Outcome::Status(status, _) if args.allow.contains(status));
            if !allowed {
                failures.push(format!(
                    "{workers} workers: {} x {}",
                    summary.count, summary.outcome
                ));
            }
        }
        let missing: u64 = stats
            .outcomes
            .notes
            .values()
            .filter_map(|n| n.get("no retry-after"))
            .sum();
        if missing > 0 {
            failures.push(format!(
                "{workers} workers: {missing} 429s without Retry-After"
            ));
        }
        let latest = sampler.as_ref().and_then(|s| s.samples().last().copied());
        let summary = stats.summary();
        println!("{}", load::row(&format!("{workers} workers"), &summary));
        steps.push(Step {
            workers,
            summary,
            rss_bytes: latest.map(|s| s.rss_bytes),
            cpu_percent: latest.map(|s| s.cpu_percent),
        });
        workers += args.step.max(1);
    }
    if sampler.is_some() {
        println!("\nserver RSS at each step's end (MiB):");
        for step in &steps {
            if let Some(rss) = step.rss_bytes {
                println!(
                    "- {} workers: {:.0}",
                    step.workers,
                    rss as f64 / (1 << 20) as f64
                );
            }
        }
    }
    crate::report::verdict(&failures);
    if let Some(path) = &args.json {
        let report = serde_json::json!({
            "scenario": "ramp",
            "steps": steps,
            "failures": failures,
        });
        crate::report::write_json(path, &report)?;
    }
    Ok(failures.is_empty())
}
