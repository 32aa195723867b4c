//! The `crash` scenario: `kill -9` under load, then a restart. It starts the server binary
//! itself with a fresh KV store folder. `--agents` agents each send a first turn and
//! remember its prompt and `prompt_tokens`; after `--settle-secs` (their blocks are then
//! on disk) they keep taking turns with growing contexts (the store is writing all the
//! time) and after `--kill-after-secs` of that the server is killed with SIGKILL. Pass
//! criteria: the restarted server gets ready; it quarantined nothing and loads nothing
//! torn (no `malformed` or `checksum` miss); and every agent's first-turn prompt, sent
//! again, reports every full block but the last token's as cached, from disk.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{Value, json};

use crate::load;
use crate::server::{Server, metric};

const BLOCK: u64 = 16;

#[derive(Debug, Clone, Args)]
pub struct CrashArgs {
    /// The server binary (`mlx-serve`).
    #[arg(long, default_value = "target/release/mlx-serve")]
    binary: PathBuf,
    /// Extra `serve` arguments, space-separated.
    #[arg(long, default_value = "")]
    serve_args: String,
    /// Port to serve on.
    #[arg(long, default_value_t = 18083)]
    port: u16,
    /// The KV store folder: emptied first, removed at the end.
    #[arg(long, default_value = "target/stress-crash-kv")]
    store_dir: PathBuf,
    /// The model name to send.
    #[arg(long, default_value = "SmolLM2-135M-Instruct.Q4_1")]
    model: String,
    /// Agents taking turns.
    #[arg(long, default_value_t = 8)]
    agents: usize,
    /// Words of each agent's first prompt.
    #[arg(long, default_value_t = 200)]
    prompt_words: usize,
    /// Tokens per turn.
    #[arg(long, default_value_t = 16)]
    max_tokens: u64,
    /// Seconds between the first turns and the rest (the first turns' blocks reach the
    /// disk meanwhile).
    #[arg(long, default_value_t = 3)]
    settle_secs: u64,
    /// Seconds of further turns before the kill.
    #[arg(long, default_value_t = 5)]
    kill_after_secs: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// A completion of `prompt` for `agent`: the response JSON.
async fn turn(
    client: &reqwest::Client,
    server: &Server,
    args: &CrashArgs,
    agent: &str,
    prompt: &str,
) -> Result<Value, String> {
    let body = json!({"model": args.model, "prompt": prompt, "max_tokens": args.max_tokens,
                      "temperature": 0, "ignore_eos": true});
    server.complete(client, agent, &body).await
}

fn usage(body: &Value, field: &str) -> u64 {
    body["usage"][field].as_u64().unwrap_or(0)
}

/// Runs the scenario; `Ok(false)` when a pass criterion failed.
pub async fn run(args: CrashArgs) -> Result<bool, String> {
    let _ = std::fs::remove_dir_all(&args.store_dir);
    let mut serve_args = vec![
        "--kv-store-dir".to_owned(),
        args.store_dir.display().to_string(),
    ];
    serve_args.extend(args.serve_args.split_whitespace().map(str::to_owned));
    let client = crate::report::http_client(300)?;
    let server = Arc::new(Server::start(&args.binary, args.port, &serve_args)?);
    let agent = |i: usize| format!("crash-{i}");
    let mut first_turns = Vec::new();
    for i in 0..args.agents {
        let prompt = load::prompt(i, args.prompt_words);
        let body = turn(&client, &server, &args, &agent(i), &prompt).await?;
        first_turns.push((prompt, usage(&body, "prompt_tokens")));
    }
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    // Every agent keeps taking turns, its context growing, until the kill.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for (i, (prompt, _)) in first_turns.iter().enumerate() {
        let (client, server, args) = (client.clone(), Arc::clone(&server), args.clone());
        let (stop, mut context) = (Arc::clone(&stop), prompt.clone());
        workers.push(tokio::spawn(async move {
            let mut turns = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let Ok(body) = turn(&client, &server, &args, &agent(i), &context).await else {
                    break;
                };
                context.push_str(body["choices"][0]["text"].as_str().unwrap_or_default());
                context.push_str(&format!(" And then, turn {turns}, tell me more."));
                turns += 1;
            }
            turns
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.kill_after_secs)).await;
    let writes_before = metric(
        &server.scrape(&client).await?,
        "mlx_serve_kv_store_blocks_written_total",
    );
    server.signal("KILL")?;
    stop.store(true, Ordering::Relaxed);
    let mut turns = 0;
    for worker in workers {
        turns += worker.await.unwrap_or(0);
    }
    drop(server);

    let restarted = Instant::now();
    let server = Server::start(&args.binary, args.port, &serve_args)?;
    let ready_s = restarted.elapsed().as_secs_f64();
    let mut failures = Vec::new();
    let mut warm_agents = 0;
    for (i, (prompt, prompt_tokens)) in first_turns.iter().enumerate() {
        let body = turn(&client, &server, &args, &agent(i), prompt).await?;
        let cached = body["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0);
        let expected = prompt_tokens.saturating_sub(1) / BLOCK * BLOCK;
        if cached == expected {
            warm_agents += 1;
        } else {
            failures.push(format!(
                "agent {i}: {cached} cached tokens, expected {expected}"
            ));
        }
    }
    let after = server.scrape(&client).await?;
    let misses = |reason: &str| {
        metric(
            &after,
            &format!("mlx_serve_kv_store_misses_total{{reason=\"{reason}\"}}"),
        )
    };
    let quarantined = metric(&after, "mlx_serve_kv_store_quarantined_files_total");
    let disk_tokens = metric(
        &after,
        "mlx_serve_prefix_cache_hit_tokens_by_tier_total{tier=\"disk\"}",
    );
    server.stop()?;
    let _ = std::fs::remove_dir_all(&args.store_dir);
    if quarantined > 0.0 {
        failures.push(format!("{quarantined} files quarantined after the crash"));
    }
    for reason in ["malformed", "checksum"] {
        if misses(reason) > 0.0 {
            failures.push(format!(
                "{} {reason} misses after the crash",
                misses(reason)
            ));
        }
    }
    println!(
        "## crash: kill -9 after {} s of turns by {} agents ({turns} turns, {writes_before:.0} blocks written before the kill)\n",
        args.kill_after_secs, args.agents
    );
    println!("restarted and ready in {ready_s:.1} s");
    println!(
        "agents warm from disk: {warm_agents} of {} ({disk_tokens:.0} tokens from the disk tier); quarantined files {quarantined}; malformed misses {}, checksum misses {}",
        args.agents,
        misses("malformed"),
        misses("checksum")
    );
    crate::report::verdict(&failures);
    if let Some(path) = &args.json {
        let report = json!({
            "scenario": "crash",
            "agents": args.agents,
            "turns_before_kill": turns,
            "blocks_written_before_kill": writes_before,
            "ready_seconds": ready_s,
            "warm_agents": warm_agents,
            "disk_tokens": disk_tokens,
            "quarantined": quarantined,
            "failures": failures,
        });
        crate::report::write_json(path, &report)?;
    }
    Ok(failures.is_empty())
}
