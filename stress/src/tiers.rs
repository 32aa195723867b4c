//! The `tiers` scenario: time to first token of one agent's prompt when its KV is cold
//! (never seen: full prefill), hot (in the server's pool) and warm (on disk, after the
//! server restarted), at several prompt lengths. It starts, stops and restarts the server
//! binary itself, with a fresh KV store folder. Each request generates one token, so its
//! end-to-end time is its time to first token. Pass criterion: at `--check-tokens` the
//! median warm request is at least `--min-warm-speedup` times faster than the median cold
//! one, and every warm request reports as cached every full block of its prompt but the
//! last token's.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use serde_json::{Value, json};

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

/// A running server.
struct Server {
    child: Child,
}

impl Server {
    fn start(args: &TiersArgs) -> Result<Server, String> {
        let mut command = Command::new(&args.binary);
        command
            .args(["serve", "--port", &args.port.to_string()])
            .args(["--kv-cache-mb", &args.kv_cache_mb.to_string()])
            .arg("--kv-store-dir")
            .arg(&args.store_dir)
            .args(args.serve_args.split_whitespace())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", args.binary.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("ready:") {
                    let _ = ready_tx.send(());
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(300))
            .map_err(|_| "the server did not get ready within 300 s".to_owned())?;
        Ok(Server { child })
    }

    /// SIGTERM (drain, persist hot blocks, exit) and wait.
    fn stop(mut self) -> Result<(), String> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .map_err(|e| format!("cannot run kill: {e}"))?;
        if !status.success() {
            return Err("kill -TERM failed".to_owned());
        }
        let exit = self
            .child
            .wait()
            .map_err(|e| format!("waiting for the server: {e}"))?;
        if exit.success() {
            Ok(())
        } else {
            Err(format!("the server exited with {exit}"))
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    args: &TiersArgs,
    agent: &str,
    prompt: &[u32],
) -> Result<(f64, u64), String> {
    let started = Instant::now();
    let response = client
        .post(format!("http://127.0.0.1:{}/v1/completions", args.port))
        .header("x-agent-id", agent)
        .json(
            &json!({"model": args.model, "prompt": prompt, "max_tokens": 1,
                      "temperature": 0}),
        )
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("bad response: {e}"))?;
    let elapsed = started.elapsed().as_secs_f64() * 1e3;
    if !status.is_success() {
        return Err(format!("{status}: {body}"));
    }
    let cached = body["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0);
    Ok((elapsed, cached))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn scrape(client: &reqwest::Client, args: &TiersArgs) -> Result<String, String> {
    client
        .get(format!("http://127.0.0.1:{}/metrics", args.port))
        .send()
        .await
        .map_err(|e| format!("metrics: {e}"))?
        .text()
        .await
        .map_err(|e| format!("metrics: {e}"))
}

/// The value of the sample named exactly `name` (no labels) in a Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Runs the scenario; `Ok(false)` when the pass criterion failed.
pub async fn run(args: TiersArgs) -> Result<bool, String> {
    let _ = std::fs::remove_dir_all(&args.store_dir);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
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

    let server = Server::start(&args)?;
    for (seed, &(len, rep)) in cases.iter().enumerate() {
        let tokens = prompt(seed, len);
        let (ms, _) = time_request(&client, &args, &agent(len, rep), &tokens).await?;
        cold[position(len)].push(ms);
        let (ms, cached) = time_request(&client, &args, &agent(len, rep), &tokens).await?;
        hot[position(len)].push(ms);
        hot_cached[position(len)] = cached;
        eprintln!("{len} tokens, prompt {rep}: cold and hot done");
    }
    // Written behind the requests: wait for the writer before reading its rate.
    let first_metrics = loop {
        let text = scrape(&client, &args).await?;
        if metric(&text, "mlx_serve_kv_store_write_queue_blocks") == 0.0 {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    server.stop()?;

    let server = Server::start(&args)?;
    let mut warm_ok = true;
    for (seed, &(len, rep)) in cases.iter().enumerate() {
        let tokens = prompt(seed, len);
        let (ms, cached) = time_request(&client, &args, &agent(len, rep), &tokens).await?;
        warm[position(len)].push(ms);
        warm_cached[position(len)] = cached;
        // Every full block but the one holding the last token comes from disk.
        let expected = ((len - 1) / 16 * 16) as u64;
        if cached != expected {
            eprintln!("{len} tokens, prompt {rep}: {cached} cached tokens, expected {expected}");
            warm_ok = false;
        }
    }
    let metrics = scrape(&client, &args).await?;
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
