//! The `tiers` scenario: time to first token of one agent's prompt when its KV is cold
//! (never seen: full prefill), hot (in the server's pool) and warm (on disk, after the
//! server restarted), at several prompt lengths. It starts, stops and restarts the server
//! binary itself, with a fresh KV store folder. Each request generates one token, so its
//! end-to-end time is its time to first token. Pass criterion: at `--check-tokens` the
//! median warm request is at least `--min-warm-speedup` times faster than the median cold
//! one, and every warm request reports as cached every full block of its prompt but the
//! last token's.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde::Serialize;
use serde_json::json;

use crate::server::{Server, metric};

#[derive(Debug, Clone, Args)]
pub struct TiersArgs {
    /// The server binary (`mlx-serve`).
    #[arg(long, default_value = "target/release/mlx-serve")]
    binary: PathBuf,
    /// Extra `serve` arguments (e.g. `--model path`), space-separated.
    #[arg(long, default_value = "")]
    serve_args: String,
    /// Port to serve on.
    #[arg(long, default_value_t = 18080)]
    port: u16,
    /// The KV store folder: emptied first, removed at the end.
    #[arg(long, default_value = "target/stress-tiers-kv")]
    store_dir: PathBuf,
    /// KV pool size for the server, MiB: it must hold the hot prompts.
    #[arg(long, default_value_t = 512)]
    kv_cache_mb: u64,
    /// The model name to send.
    #[arg(long, default_value = "SmolLM2-135M-Instruct.Q4_1")]
    model: String,
    /// Prompt lengths in tokens.
    #[arg(long, value_delimiter = ',', default_value = "512,1024,2048,4096")]
    tokens: Vec<usize>,
    /// Prompts per length (medians are over these).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// The length the pass criterion is checked at.
    #[arg(long, default_value_t = 2048)]
    check_tokens: usize,
    /// Smallest acceptable cold / warm ratio of median times at `--check-tokens`.
    #[arg(long, default_value_t = 20.0)]
    min_warm_speedup: f64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Medians at one prompt length, in milliseconds.
#[derive(Debug, Clone, Serialize)]
struct Row {
    tokens: usize,
    cold_ms: f64,
    hot_ms: f64,
    warm_ms: f64,
    hot_cached_tokens: u64,
    warm_cached_tokens: u64,
}

#[derive(Debug, Serialize)]
struct Results {
    rows: Vec<Row>,
    /// Store throughput, from the server's own counters.
    write_mb_per_s: f64,
    read_mb_per_s: f64,
    passed: bool,
}

/// The server with the scenario's store folder and pool.
fn start(args: &TiersArgs) -> Result<Server, String> {
    let mut serve_args = vec![
        "--kv-cache-mb".to_owned(),
        args.kv_cache_mb.to_string(),
        "--kv-store-dir".to_owned(),
        args.store_dir.display().to_string(),
    ];
    serve_args.extend(args.serve_args.split_whitespace().map(str::to_owned));
    Server::start(&args.binary, args.port, &serve_args)
}

/// A prompt of `len` token ids, different from every other (`seed`) from its first token.
fn prompt(seed: usize, len: usize) -> Vec<u32> {
    (0..len)
        .map(|i| (100 + (seed * 7919 + i * 31) % 48000) as u32)
        .collect()
}

/// One request's time and the prompt tokens it reported as cached.
async fn time_request(
    client: &reqwest::Client,
    server: &Server,
    args: &TiersArgs,
    agent: &str,
    prompt: &[u32],
) -> Result<(f64, u64), String> {
    let started = Instant::now();
    let request = json!({"model": args.model, "prompt": prompt, "max_tokens": 1,
                         "temperature": 0});
    let body = server.complete(client, agent, &request).await?;
    let elapsed = started.elapsed().as_secs_f64() * 1e3;
    let cached = body["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0);
    Ok((elapsed, cached))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs the scenario; `Ok(false)` when the pass criterion failed.
pub async fn run(args: TiersArgs) -> Result<bool, String> {
    let _ = std::fs::remove_dir_all(&args.store_dir);
    let client = crate::report::http_client(600)?;
    let cases: Vec<(usize, usize)> = args
        .tokens
        .iter()
        .flat_map(|&len| (0..args.reps).map(move |rep| (len, rep)))
        .collect();
    let agent = |len: usize, rep: usize| format!("tiers-{len}-{rep}");
    let mut cold = vec![Vec::new(); args.tokens.len()];
    let mut hot = vec![Vec::new(); args.tokens.len()];
    let mut warm = vec![Vec::new(); args.tokens.len()];
    let mut hot_cached = vec![0; args.tokens.len()];
    let mut warm_cached = vec![0; args.tokens.len()];
    let position = |len: usize| args.tokens.iter().position(|&t| t == len).unwrap_or(0);

    let server = start(&args)?;
    for (seed, &(len, rep)) in cases.iter().enumerate() {
        let tokens = prompt(seed, len);
        let (ms, _) = time_request(&client, &server, &args, &agent(len, rep), &tokens).await?;
        cold[position(len)].push(ms);
        let (ms, cached) = time_request(&client, &server, &args, &agent(len, rep), &tokens).await?;
        hot[position(len)].push(ms);
        hot_cached[position(len)] = cached;
        eprintln!("{len} tokens, prompt {rep}: cold and hot done");
    }
    // Written behind the requests: wait for the writer before reading its rate.
    let first_metrics = server.settled_metrics(&client).await?;
    server.stop()?;

    let server = start(&args)?;
    let mut warm_ok = true;
    for (seed, &(len, rep)) in cases.iter().enumerate() {
        let tokens = prompt(seed, len);
        let (ms, cached) = time_request(&client, &server, &args, &agent(len, rep), &tokens).await?;
        warm[position(len)].push(ms);
        warm_cached[position(len)] = cached;
        // Every full block but the one holding the last token comes from disk.
        let expected = ((len - 1) / 16 * 16) as u64;
        if cached != expected {
            eprintln!("{len} tokens, prompt {rep}: {cached} cached tokens, expected {expected}");
            warm_ok = false;
        }
    }
    let metrics = server.scrape(&client).await?;
    server.stop()?;
    let _ = std::fs::remove_dir_all(&args.store_dir);

    let per_second = |text: &str, bytes: &str, seconds: &str| {
        let seconds = metric(text, seconds);
        if seconds > 0.0 {
            metric(text, bytes) / seconds / 1e6
        } else {
            0.0
        }
    };
    // Reads are timed by the restore histogram (reading and verifying), writes by the
    // writer (encoding, writing, fsync, rename).
    let read_mb_per_s = per_second(
        &metrics,
        "mlx_serve_kv_store_read_bytes_total",
        "mlx_serve_kv_store_restore_time_seconds_sum",
    );
    let write_mb_per_s = per_second(
        &first_metrics,
        "mlx_serve_kv_store_written_bytes_total",
        "mlx_serve_kv_store_write_seconds_total",
    );
    let rows: Vec<Row> = args
        .tokens
        .iter()
        .enumerate()
        .map(|(i, &tokens)| Row {
            tokens,
            cold_ms: median(&mut cold[i]),
            hot_ms: median(&mut hot[i]),
            warm_ms: median(&mut warm[i]),
            hot_cached_tokens: hot_cached[i],
            warm_cached_tokens: warm_cached[i],
        })
        .collect();
    println!("| prompt tokens | cold ms | hot ms | warm ms | cold/hot | cold/warm | warm cached |");
    println!("|---|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.1}x | {:.1}x | {} |",
            row.tokens,
            row.cold_ms,
            row.hot_ms,
            row.warm_ms,
            row.cold_ms / row.hot_ms,
            row.cold_ms / row.warm_ms,
            row.warm_cached_tokens
        );
    }
    println!("store: read {read_mb_per_s:.0} MB/s (restores), write {write_mb_per_s:.0} MB/s");
    let speedup = rows
        .iter()
        .find(|r| r.tokens == args.check_tokens)
        .map(|r| r.cold_ms / r.warm_ms);
    let passed = warm_ok && speedup.is_some_and(|s| s >= args.min_warm_speedup);
    match speedup {
        Some(s) => println!(
            "warm speed-up at {} tokens: {s:.1}x (required {:.1}x): {}",
            args.check_tokens,
            args.min_warm_speedup,
            if passed { "PASS" } else { "FAIL" }
        ),
        None => println!("no row at --check-tokens {}: FAIL", args.check_tokens),
    }
    if let Some(path) = &args.json {
        let results = Results {
            rows,
            write_mb_per_s,
            read_mb_per_s,
            passed,
        };
        crate::report::write_json(path, &results)?;
    }
    Ok(passed)
}
