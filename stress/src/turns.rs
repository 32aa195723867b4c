//! The `turns` scenario: many agents take turns, round-robin, each re-sending its growing
//! context (a system prompt they all share, its own opening, and a few new tokens per
//! turn), against a server whose pool holds only some of their contexts. It reports the
//! share of prompt tokens the server reused (`usage.prompt_tokens_details.cached_tokens`
//! over `usage.prompt_tokens`) per turn and overall, and the time per request. Pass
//! criterion: the overall share is at least `--min-cached-share`, and every request
//! succeeded.

use std::time::Instant;

use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Debug, Clone, Args)]
pub struct TurnsArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// The model name to send.
    #[arg(long, default_value = "SmolLM2-135M-Instruct.Q4_1")]
    model: String,
    /// Agents taking turns.
    #[arg(long, default_value_t = 50)]
    agents: usize,
    /// Turns per agent.
    #[arg(long, default_value_t = 5)]
    turns: usize,
    /// Tokens of the system prompt every agent shares.
    #[arg(long, default_value_t = 384)]
    system_tokens: usize,
    /// Tokens of each agent's own opening.
    #[arg(long, default_value_t = 128)]
    initial_tokens: usize,
    /// Tokens each turn adds.
    #[arg(long, default_value_t = 32)]
    turn_tokens: usize,
    /// Tokens generated per request.
    #[arg(long, default_value_t = 1)]
    max_tokens: u64,
    /// Send no agent id (plain conversations: what the server keeps depends on its
    /// `--kv-store-policy`).
    #[arg(long)]
    no_agent_id: bool,
    /// Smallest acceptable share of prompt tokens served from cache.
    #[arg(long, default_value_t = 0.9)]
    min_cached_share: f64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct TurnSummary {
    turn: usize,
    prompt_tokens: u64,
    cached_tokens: u64,
    cached_share: f64,
    median_ms: f64,
}

#[derive(Debug, Serialize)]
struct Results {
    turns: Vec<TurnSummary>,
    prompt_tokens: u64,
    cached_tokens: u64,
    cached_share: f64,
    failures: usize,
    passed: bool,
}

/// `len` token ids from a stream of its own (`stream` 0 is the shared system prompt).
fn tokens(stream: usize, offset: usize, len: usize) -> Vec<u32> {
    (offset..offset + len)
        .map(|i| (100 + (stream * 104_729 + i * 37) % 48_000) as u32)
        .collect()
}

/// Runs the scenario; `Ok(false)` when a pass criterion failed.
pub async fn run(args: TurnsArgs) -> Result<bool, String> {
    let client = crate::report::http_client(600)?;
    let url = format!("{}/v1/completions", args.url.trim_end_matches('/'));
    let system = tokens(0, 0, args.system_tokens);
    let mut contexts: Vec<Vec<u32>> = (0..args.agents)
        .map(|a| {
            let mut context = system.clone();
            context.extend(tokens(a + 1, 0, args.initial_tokens));
            context
        })
        .collect();
    let mut summaries = Vec::with_capacity(args.turns);
    let mut failures = 0;
    for turn in 0..args.turns {
        let mut summary = TurnSummary {
            turn,
            ..TurnSummary::default()
        };
        let mut times = Vec::with_capacity(args.agents);
        for (agent, context) in contexts.iter_mut().enumerate() {
            if turn > 0 {
                let offset = args.initial_tokens + (turn - 1) * args.turn_tokens;
                context.extend(tokens(agent + 1, offset, args.turn_tokens));
            }
            let started = Instant::now();
            let mut request = client.post(&url).json(&json!({
                "model": args.model, "prompt": context,
                "max_tokens": args.max_tokens, "temperature": 0}));
            if !args.no_agent_id {
                request = request.header("x-agent-id", format!("turns-{agent}"));
            }
            let response = request.send().await;
            let body: Option<Value> = match response {
                Ok(r) if r.status().is_success() => r.json().await.ok(),
                Ok(r) => {
                    eprintln!("agent {agent}, turn {turn}: {}", r.status());
                    None
                }
                Err(e) => {
                    eprintln!("agent {agent}, turn {turn}: {e}");
                    None
                }
            };
            times.push(started.elapsed().as_secs_f64() * 1e3);
            let Some(body) = body else {
                failures += 1;
                continue;
            };
            let usage = &body["usage"];
            summary.prompt_tokens += usage["prompt_tokens"].as_u64().unwrap_or(0);
            summary.cached_tokens += usage["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap_or(0);
        }
        times.sort_by(f64::total_cmp);
        summary.median_ms = times.get(times.len() / 2).copied().unwrap_or(0.0);
        summary.cached_share = summary.cached_tokens as f64 / summary.prompt_tokens.max(1) as f64;
        eprintln!(
            "turn {turn}: {:.1} % of prompt tokens from cache, median {:.0} ms",
            100.0 * summary.cached_share,
            summary.median_ms
        );
        summaries.push(summary);
    }
    let prompt_tokens: u64 = summaries.iter().map(|s| s.prompt_tokens).sum();
    let cached_tokens: u64 = summaries.iter().map(|s| s.cached_tokens).sum();
    let cached_share = cached_tokens as f64 / prompt_tokens.max(1) as f64;
    let passed = failures == 0 && cached_share >= args.min_cached_share;
    println!("| turn | prompt tokens | cached tokens | cached share | median request |");
    println!("|---:|---:|---:|---:|---:|");
    for s in &summaries {
        println!(
            "| {} | {} | {} | {:.1} % | {:.0} ms |",
            s.turn,
            s.prompt_tokens,
            s.cached_tokens,
            100.0 * s.cached_share,
            s.median_ms
        );
    }
    println!(
        "overall: {:.1} % of {prompt_tokens} prompt tokens from cache (required {:.1} %), \
         {failures} failed requests: {}",
        100.0 * cached_share,
        100.0 * args.min_cached_share,
        if passed { "PASS" } else { "FAIL" }
    );
    if let Some(path) = &args.json {
        let results = Results {
            turns: summaries,
            prompt_tokens,
            cached_tokens,
            cached_share,
            failures,
            passed,
        };
        crate::report::write_json(path, &results)?;
    }
    Ok(passed)
}
