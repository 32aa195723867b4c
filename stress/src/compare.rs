//! The `compare` scenario: the figures for a side-by-side table of two servers on one
//! machine, model and load. Against a running server (`--url`, and `--pid` for its RSS),
//! for each concurrency in `--concurrency` (1,4,8,16), `--runs` (3) runs of a closed loop
//! of that many workers sending `--requests-per-worker` streamed chat requests each
//! (~`--prompt-words` 120-token prompts, `--max-tokens` 64 new tokens, `ignore_eos` so
//! every answer is as long on both servers): output tokens/s, TTFT and ITL, with the median
//! over the runs, and the server's peak RSS. Then the prompt-cache probe: a ~1K-token
//! prompt sent cold, repeated, and followed by a next turn that extends it, with each
//! one's TTFT and `cached_tokens` (`--probe-only` runs just the probe, as after a
//! restart). Passes when every request succeeded.

use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};

use crate::load::{self, Endpoint, LoadSummary, Pace, Request, Workload};
use crate::process::ProcessSampler;

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// The server's pid (peak RSS).
    #[arg(long)]
    pid: Option<u32>,
    /// The model name to send.
    #[arg(long, default_value = "SmolLM2-135M-Instruct.Q4_1")]
    model: String,
    /// A label for the tables (e.g. the server's name).
    #[arg(long, default_value = "server")]
    label: String,
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16")]
    concurrency: Vec<usize>,
    /// Runs per level (medians are over these).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Requests each worker sends per run.
    #[arg(long, default_value_t = 2)]
    requests_per_worker: usize,
    /// Words of each prompt (about one token each).
    #[arg(long, default_value_t = 120)]
    prompt_words: usize,
    /// Tokens each request generates.
    #[arg(long, default_value_t = 64)]
    max_tokens: u64,
    /// Words of the prompt-cache probe's prompt.
    #[arg(long, default_value_t = 1000)]
    probe_words: usize,
    /// Run only the prompt-cache probe.
    #[arg(long)]
    probe_only: bool,
    /// Per-request deadline in seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Medians over the runs at one concurrency.
#[derive(Debug, Clone, Serialize)]
struct Level {
    concurrency: usize,
    output_tokens_per_s: f64,
    ttft_p50_ms: f64,
    ttft_p95_ms: f64,
    itl_p50_ms: f64,
    itl_p95_ms: f64,
    failed: u64,
    peak_rss_bytes: Option<u64>,
    runs: Vec<LoadSummary>,
}

/// One probe request: its time to first token and the prompt tokens reported cached.
#[derive(Debug, Clone, Serialize)]
struct Probe {
    step: &'static str,
    ttft_ms: f64,
    prompt_tokens: u64,
    cached_tokens: u64,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The probe: one long conversation's first turn cold, the same again, then a next turn.
async fn probe(client: &reqwest::Client, args: &CompareArgs) -> Result<Vec<Probe>, String> {
    let workload = Workload {
        base: args.url.clone(),
        model: args.model.clone(),
        endpoint: Endpoint::Chat,
        stream: true,
        max_tokens: 16,
        ignore_eos: false,
    };
    let first = json!([{"role": "user", "content": load::prompt(424_242, args.probe_words)}]);
    let mut steps = Vec::new();
    let mut answer = String::new();
    for step in ["cold", "repeated", "follow-up"] {
        let messages = if step == "follow-up" {
            let mut messages = first.as_array().cloned().unwrap_or_default();
            messages.push(json!({"role": "assistant", "content": answer}));
            messages.push(json!({"role": "user", "content": "Now say it in one sentence."}));
            Value::Array(messages)
        } else {
            first.clone()
        };
        let request = Request {
            prompt: messages,
            agent: Some("compare-probe".to_owned()),
        };
        let started = Instant::now();
        let sent = load::send(client, &workload, &request, Duration::ZERO).await;
        if sent.outcome != crate::report::Outcome::Status(200, None) {
            return Err(format!("probe {step}: {}", sent.outcome.label()));
        }
        if step == "cold" {
            answer = sent.text.clone();
        }
        steps.push(Probe {
            step,
            ttft_ms: sent.ttft.unwrap_or_else(|| started.elapsed()).as_secs_f64() * 1e3,
            prompt_tokens: sent.prompt_tokens,
            cached_tokens: sent.cached_tokens,
        });
    }
    Ok(steps)
}

/// The side-by-side requests: streamed chat completions of exactly `max_tokens` tokens.
pub fn workload(url: &str, model: &str, max_tokens: u64) -> Workload {
    Workload {
        base: url.to_owned(),
        model: model.to_owned(),
        endpoint: Endpoint::Chat,
        stream: true,
        max_tokens,
        ignore_eos: true,
    }
}

/// One run of the side-by-side load: `concurrency` workers in a closed loop sending
/// `requests` in all, each with a distinct ~`words`-word prompt numbered from `first`.
pub async fn closed_loop(
    client: &reqwest::Client,
    workload: &Workload,
    concurrency: usize,
    requests: usize,
    first: usize,
    words: usize,
) -> LoadSummary {
    load::drive_count(
        client,
        workload,
        Pace::Closed { concurrency },
        requests,
        std::sync::Arc::new(move |i: usize| Request {
            prompt: load::prompt(first + i, words).into(),
            agent: None,
        }),
    )
    .await
    .summary()
}

/// Runs the scenario; `Ok(false)` when a request failed.
pub async fn run(args: CompareArgs) -> Result<bool, String> {
    let client = crate::report::http_client(args.timeout_secs)?;
    let workload = workload(&args.url, &args.model, args.max_tokens);
    let mut levels = Vec::new();
    if !args.probe_only {
        println!("## {}: {} runs per level, medians\n", args.label, args.runs);
        println!(
            "| concurrency | output tok/s | TTFT p50 / p95 ms | ITL p50 / p95 ms | failed | peak RSS MiB |"
        );
        println!("|---|---|---|---|---|---|");
    }
    let mut seed = 0;
    for &concurrency in args.concurrency.iter().filter(|_| !args.probe_only) {
        let sampler = args
            .pid
            .map(|pid| ProcessSampler::start(pid, Duration::from_millis(500)));
        let mut runs = Vec::new();
        for _ in 0..args.runs {
            let requests = concurrency * args.requests_per_worker;
            runs.push(
                closed_loop(
                    &client,
                    &workload,
                    concurrency,
                    requests,
                    seed,
                    args.prompt_words,
                )
                .await,
            );
            seed += 1_000_000;
        }
        let peak = sampler
            .map(|s| s.finish())
            .and_then(|samples| samples.iter().map(|s| s.rss_bytes).max());
        let pick = |f: fn(&LoadSummary) -> f64| median(runs.iter().map(f).collect());
        let level = Level {
            concurrency,
            output_tokens_per_s: pick(|s| s.output_tokens_per_s),
            ttft_p50_ms: pick(|s| s.ttft.p50_ms),
            ttft_p95_ms: pick(|s| s.ttft.p95_ms),
            itl_p50_ms: pick(|s| s.itl.p50_ms),
            itl_p95_ms: pick(|s| s.itl.p95_ms),
            failed: runs.iter().map(|s| s.failed).sum(),
            peak_rss_bytes: peak,
            runs,
        };
        println!(
            "| {} | {:.1} | {:.0} / {:.0} | {:.1} / {:.1} | {} | {} |",
            level.concurrency,
            level.output_tokens_per_s,
            level.ttft_p50_ms,
            level.ttft_p95_ms,
            level.itl_p50_ms,
            level.itl_p95_ms,
            level.failed,
            level.peak_rss_bytes.map_or("-".to_owned(), |b| format!(
                "{:.0}",
                b as f64 / (1 << 20) as f64
            ))
        );
        levels.push(level);
    }
    let probes = probe(&client, &args).await?;
    println!(
        "\n## {}: prompt-cache probe (~{} tokens)\n",
        args.label, args.probe_words
    );
    println!("| step | TTFT ms | prompt tokens | cached tokens |\n|---|---|---|---|");
    for p in &probes {
        println!(
            "| {} | {:.0} | {} | {} |",
            p.step, p.ttft_ms, p.prompt_tokens, p.cached_tokens
        );
    }
    let failed: u64 = levels.iter().map(|l| l.failed).sum();
    if failed > 0 {
        println!("FAIL: {failed} requests failed");
    } else {
        println!("PASS");
    }
    if let Some(path) = &args.json {
        let report = json!({"scenario": "compare", "label": args.label, "levels": levels,
                            "probe": probes, "failed": failed});
        crate::report::write_json(path, &report)?;
    }
    Ok(failed == 0)
}
