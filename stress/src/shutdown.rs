//! The `shutdown` scenario: SIGTERM while `--streams` streams are generating. It starts the
//! server binary itself with a fresh KV store folder and room for every stream in one
//! batch, opens the streams (each with its own agent id, asking for `--max-tokens` tokens),
//! waits until every one has received a token, and sends SIGTERM. Pass criteria: every
//! stream ends with `[DONE]`, either finished (`stop` or `length`) or aborted (finish
//! reason `aborted`, or the error event `generation_aborted` mlx-serve sends when the drain
//! deadline ends a stream), within `--drain-timeout-secs` plus `--slack-secs` (the engine
//! step under way at the deadline) of the signal; the server exits with status 0; and every agent's manifest and at least one
//! of its blocks are on disk afterwards (hot caches persisted).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::load;
use crate::server::Server;

#[derive(Debug, Clone, Args)]
pub struct ShutdownArgs {
    /// The server binary (`mlx-serve`).
    #[arg(long, default_value = "target/release/mlx-serve")]
    binary: PathBuf,
    /// Extra `serve` arguments, space-separated.
    #[arg(long, default_value = "")]
    serve_args: String,
    /// Port to serve on.
    #[arg(long, default_value_t = 18082)]
    port: u16,
    /// The KV store folder: emptied first, removed at the end.
    #[arg(long, default_value = "target/stress-shutdown-kv")]
    store_dir: PathBuf,
    /// The model name to send.
    #[arg(long, default_value = "SmolLM2-135M-Instruct.Q4_1")]
    model: String,
    /// Streams generating when the signal comes.
    #[arg(long, default_value_t = 32)]
    streams: usize,
    /// Words of each stream's prompt.
    #[arg(long, default_value_t = 60)]
    prompt_words: usize,
    /// Tokens each stream asks for (enough that most are still running at the signal).
    #[arg(long, default_value_t = 512)]
    max_tokens: u64,
    /// The server's drain timeout.
    #[arg(long, default_value_t = 10)]
    drain_timeout_secs: u64,
    /// How long after the drain timeout a stream may still end (the engine step under way
    /// at the deadline finishes first).
    #[arg(long, default_value_t = 2.0)]
    slack_secs: f64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// How one stream ended, and when (after the signal).
#[derive(Debug, Clone, serde::Serialize)]
struct Ending {
    finish_reason: Option<String>,
    done: bool,
    error: Option<String>,
    after_signal_ms: Option<f64>,
}

/// One stream: signals `first` after its first token, then reads to the end.
async fn stream(
    client: reqwest::Client,
    url: String,
    body: Value,
    first: Arc<Notify>,
    signalled: Arc<std::sync::OnceLock<Instant>>,
) -> Ending {
    let mut ending = Ending {
        finish_reason: None,
        done: false,
        error: None,
        after_signal_ms: None,
    };
    let response = match client.post(url).json(&body).send().await {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            ending.error = Some(format!("status {}", r.status()));
            first.notify_one();
            return ending;
        }
        Err(e) => {
            ending.error = Some(e.to_string());
            first.notify_one();
            return ending;
        }
    };
    let mut chunks = response.bytes_stream();
    let mut pending = String::new();
    let mut told = false;
    while let Some(chunk) = chunks.next().await {
        let Ok(chunk) = chunk else {
            ending.error = Some("the stream broke".to_owned());
            break;
        };
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            for data in event.lines().filter_map(|l| l.strip_prefix("data: ")) {
                if data.trim() == "[DONE]" {
                    ending.done = true;
                    continue;
                }
                let value: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                if value["error"]["code"] == "generation_aborted" {
                    ending.finish_reason = Some("aborted".to_owned());
                } else if value["error"].is_object() {
                    ending.error = Some(value["error"].to_string());
                }
                let choice = &value["choices"][0];
                if let Some(reason) = choice["finish_reason"].as_str() {
                    ending.finish_reason = Some(reason.to_owned());
                }
                if !told
                    && choice["delta"]["content"]
                        .as_str()
                        .is_some_and(|t| !t.is_empty())
                {
                    told = true;
                    first.notify_one();
                }
            }
        }
    }
    if !told {
        first.notify_one();
    }
    ending.after_signal_ms = signalled.get().map(|at| at.elapsed().as_secs_f64() * 1e3);
    ending
}

/// Every file under `dir` whose name ends with `suffix`.
fn files(dir: &std::path::Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                out.push(path);
            }
        }
    }
    out
}

/// Runs the scenario; `Ok(false)` when a pass criterion failed.
pub async fn run(args: ShutdownArgs) -> Result<bool, String> {
    let _ = std::fs::remove_dir_all(&args.store_dir);
    let mut serve_args = vec![
        "--kv-store-dir".to_owned(),
        args.store_dir.display().to_string(),
        "--max-batch".to_owned(),
        args.streams.to_string(),
        "--drain-timeout-secs".to_owned(),
        args.drain_timeout_secs.to_string(),
    ];
    serve_args.extend(args.serve_args.split_whitespace().map(str::to_owned));
    let mut server = Server::start(&args.binary, args.port, &serve_args)?;
    let client = reqwest::Client::new();
    let signalled = Arc::new(std::sync::OnceLock::new());
    let mut tasks = Vec::new();
    let mut firsts = Vec::new();
    for i in 0..args.streams {
        let first = Arc::new(Notify::new());
        firsts.push(Arc::clone(&first));
        let body = json!({
            "model": args.model,
            "messages": [{"role": "user", "content": load::prompt(i, args.prompt_words)}],
            "max_tokens": args.max_tokens, "stream": true, "ignore_eos": true,
            "agent_id": format!("shutdown-{i}"),
        });
        tasks.push(tokio::spawn(stream(
            client.clone(),
            server.url("/v1/chat/completions"),
            body,
            first,
            Arc::clone(&signalled),
        )));
    }
    for first in &firsts {
        if tokio::time::timeout(Duration::from_secs(300), first.notified())
            .await
            .is_err()
        {
            return Err("a stream got no token within 300 s".to_owned());
        }
    }
    let _ = signalled.set(Instant::now());
    server.signal("TERM")?;
    let mut endings = Vec::new();
    for task in tasks {
        endings.push(
            task.await
                .map_err(|e| format!("a stream task failed: {e}"))?,
        );
    }
    let exit = tokio::task::spawn_blocking(move || server.wait())
        .await
        .map_err(|e| e.to_string())??;
    let manifests = files(&args.store_dir, ".json").len();
    let blocks = files(&args.store_dir, ".safetensors").len();
    let _ = std::fs::remove_dir_all(&args.store_dir);

    let limit_ms = (args.drain_timeout_secs as f64 + args.slack_secs) * 1e3;
    let mut failures = Vec::new();
    let mut by_reason = std::collections::BTreeMap::<String, usize>::new();
    for (i, ending) in endings.iter().enumerate() {
        let reason = ending
            .finish_reason
            .clone()
            .unwrap_or_else(|| "none".to_owned());
        *by_reason.entry(reason.clone()).or_default() += 1;
        if let Some(error) = &ending.error {
            failures.push(format!("stream {i}: {error}"));
        }
        if !ending.done || !matches!(reason.as_str(), "stop" | "length" | "aborted") {
            failures.push(format!(
                "stream {i} ended with {reason}, [DONE] {}",
                ending.done
            ));
        }
        if ending.after_signal_ms.is_none_or(|ms| ms > limit_ms) {
            failures.push(format!(
                "stream {i} ended {:?} ms after the signal",
                ending.after_signal_ms
            ));
        }
    }
    if exit != Some(0) {
        failures.push(format!("the server exited with {exit:?}"));
    }
    if manifests < args.streams || blocks < args.streams {
        failures.push(format!(
            "{manifests} agent manifests and {blocks} blocks on disk for {} agents",
            args.streams
        ));
    }
    let last_ms = endings
        .iter()
        .filter_map(|e| e.after_signal_ms)
        .fold(0.0, f64::max);
    println!(
        "## shutdown: SIGTERM with {} streams generating (drain timeout {} s)\n",
        args.streams, args.drain_timeout_secs
    );
    println!("finish reasons: {by_reason:?}");
    println!("last stream ended {last_ms:.0} ms after the signal; exit status {exit:?}");
    println!("on disk afterwards: {manifests} agent manifests, {blocks} blocks");
    crate::report::verdict(&failures);
    if let Some(path) = &args.json {
        let report = json!({
            "scenario": "shutdown",
            "streams": args.streams,
            "finish_reasons": by_reason,
            "last_ms_after_signal": last_ms,
            "exit_status": exit,
            "manifests": manifests,
            "blocks": blocks,
            "failures": failures,
        });
        crate::report::write_json(path, &report)?;
    }
    Ok(failures.is_empty())
}
