//! The `agents` scenario: `--agents` agents at once, each taking `--turns` turns in a row
//! against a running server. Every turn re-sends the agent's whole context as token ids —
//! a system prompt all agents share, its own opening, and `--turn-tokens` more per turn —
//! streamed, with its agent id. Reports TTFT and end-to-end percentiles, per tenth of the
//! run and overall, and the share of prompt tokens the server reused
//! (`cached_tokens` over `prompt_tokens`). Pass criteria: no request failed, and the
//! overall share is at least `--min-cached-share`.

use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use serde_json::json;
use tokio::sync::Mutex;

use crate::load::{self, Endpoint, LoadStats, LoadSummary, Request, Workload};

#[derive(Debug, Clone, Args)]
pub struct AgentsArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// The model name to send.
    #[arg(long, default_value = "SmolLM2-135M-Instruct.Q4_1")]
    model: String,
    /// Agents working at once.
    #[arg(long, default_value_t = 20)]
    agents: usize,
    /// Requests per agent.
    #[arg(long, default_value_t = 100)]
    turns: usize,
    /// Tokens of the system prompt every agent shares.
    #[arg(long, default_value_t = 384)]
    system_tokens: usize,
    /// Tokens of each agent's own opening.
    #[arg(long, default_value_t = 128)]
    initial_tokens: usize,
    /// Tokens each turn adds.
    #[arg(long, default_value_t = 16)]
    turn_tokens: usize,
    /// Tokens generated per request.
    #[arg(long, default_value_t = 8)]
    max_tokens: u64,
    /// Smallest acceptable share of prompt tokens served from cache.
    #[arg(long, default_value_t = 0.9)]
    min_cached_share: f64,
    /// Per-request deadline in seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// `len` token ids from a stream of its own (`stream` 0 is the shared system prompt).
fn tokens(stream: usize, offset: usize, len: usize) -> Vec<u32> {
    (offset..offset + len)
        .map(|i| (100 + (stream * 104_729 + i * 37) % 48_000) as u32)
        .collect()
}

/// Runs the scenario; `Ok(false)` when a pass criterion failed.
pub async fn run(args: AgentsArgs) -> Result<bool, String> {
    let client = crate::report::http_client(args.timeout_secs)?;
    let workload = Workload {
        base: args.url.clone(),
        model: args.model.clone(),
        endpoint: Endpoint::Completions,
        stream: true,
        max_tokens: args.max_tokens,
        ignore_eos: false,
    };
    let tenths = 10.min(args.turns.max(1));
    // Per tenth of the turns, and overall.
    let stats = Arc::new(Mutex::new(
        (0..=tenths)
            .map(|_| LoadStats::default())
            .collect::<Vec<_>>(),
    ));
    let started = Instant::now();
    let system = tokens(0, 0, args.system_tokens);
    let mut tasks = Vec::new();
    for agent in 0..args.agents {
        let (client, workload, args) = (client.clone(), workload.clone(), args.clone());
        let (stats, mut context) = (Arc::clone(&stats), system.clone());
        tasks.push(tokio::spawn(async move {
            context.extend(tokens(agent + 1, 0, args.initial_tokens));
            for turn in 0..args.turns {
                if turn > 0 {
                    let offset = args.initial_tokens + (turn - 1) * args.turn_tokens;
                    context.extend(tokens(agent + 1, offset, args.turn_tokens));
                }
                let request = Request {
                    prompt: json!(context),
                    agent: Some(format!("agents-{agent}")),
                };
                let sent = load::send(&client, &workload, &request, started.elapsed()).await;
                let mut stats = stats.lock().await;
                stats[turn * tenths / args.turns].record(&sent);
                stats[tenths].record(&sent);
            }
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| format!("an agent task failed: {e}"))?;
    }
    let stats = stats.lock().await;
    let summaries: Vec<LoadSummary> = stats.iter().map(LoadStats::summary).collect();
    let overall = &summaries[tenths];
    println!(
        "## agents: {} agents x {} turns, contexts {} to {} tokens, {} tokens per answer\n",
        args.agents,
        args.turns,
        args.system_tokens + args.initial_tokens,
        args.system_tokens + args.initial_tokens + (args.turns - 1) * args.turn_tokens,
        args.max_tokens
    );
    println!("{}", load::TABLE_HEADER);
    for (i, summary) in summaries[..tenths].iter().enumerate() {
        let from = i * args.turns / tenths;
        let to = (i + 1) * args.turns / tenths;
        println!(
            "{}",
            load::row(&format!("turns {from}-{}", to - 1), summary)
        );
    }
    println!("{}", load::row("all", overall));
    println!("\nshare of prompt tokens from cache, per tenth:");
    for summary in &summaries[..tenths] {
        print!(" {:.1} %", 100.0 * summary.cached_share);
    }
    println!(
        "\noverall: {:.1} % (required {:.1} %)",
        100.0 * overall.cached_share,
        100.0 * args.min_cached_share
    );
    let whole_run = LoadStats::latencies_over(&stats[tenths..]);
    let server_view = crate::server_view::print(&client, &args.url, &workload, &whole_run).await;
    let mut failures = Vec::new();
    if overall.failed > 0 {
        failures.push(format!(
            "{} of {} requests failed",
            overall.failed, overall.requests
        ));
    }
    if overall.cached_share < args.min_cached_share {
        failures.push(format!(
            "{:.1} % of prompt tokens from cache",
            100.0 * overall.cached_share
        ));
    }
    crate::report::verdict(&failures);
    if let Some(path) = &args.json {
        let report = json!({
            "scenario": "agents",
            "tenths": &summaries[..tenths],
            "overall": overall,
            "server_view": server_view,
            "failures": failures,
        });
        crate::report::write_json(path, &report)?;
    }
    Ok(failures.is_empty())
}
