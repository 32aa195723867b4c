//! `stress profile`: where mlx-serve's time goes under the side-by-side load, per
//! concurrency level. Around each level's load it reads the server's step profile
//! (`mlx_serve_engine_profile_*` in `/metrics`: the engine thread's time per kind of step
//! and phase) and, on Linux, each server thread's CPU time from `/proc/<pid>/task`; the
//! differences describe exactly that load. docs/performance.md explains the phases and
//! records the figures.

use clap::Args;
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;

use crate::compare;
use crate::load::LoadSummary;
use crate::server::{metric, scrape};

#[derive(Args, Debug)]
pub struct ProfileArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// The server's pid (per-thread CPU time, Linux only).
    #[arg(long)]
    pid: Option<u32>,
    /// The model name to send.
    #[arg(long, default_value = "SmolLM2-135M-Instruct.Q4_1")]
    model: String,
    /// Concurrency levels, one load each.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    concurrency: Vec<usize>,
    /// Requests each worker sends per level.
    #[arg(long, default_value_t = 2)]
    requests_per_worker: usize,
    /// Words of each prompt (about one token each).
    #[arg(long, default_value_t = 120)]
    prompt_words: usize,
    /// Tokens each request generates.
    #[arg(long, default_value_t = 64)]
    max_tokens: u64,
    /// Per-request deadline in seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

const KINDS: [&str; 2] = ["decode", "prefill"];
const PHASES: [&str; 7] = [
    "schedule",
    "build",
    "evaluate",
    "sample",
    "detokenize",
    "bookkeeping",
    "deliver",
];

/// One kind of step over one level's load.
#[derive(Debug, Clone, Serialize)]
struct KindRow {
    kind: &'static str,
    steps: f64,
    mean_sequences: f64,
    mean_tokens: f64,
    ms_per_step: f64,
    /// Milliseconds per step in each phase, in [`PHASES`] order.
    phase_ms: Vec<f64>,
}

/// The step profile's counters in a `/metrics` text.
#[derive(Debug, Clone, Default)]
struct Counters {
    values: BTreeMap<String, f64>,
}

impl Counters {
    fn read(text: &str) -> Counters {
        let mut values = BTreeMap::new();
        for kind in KINDS {
            for what in ["steps", "sequences", "tokens"] {
                let name = format!("mlx_serve_engine_profile_{what}_total{{kind=\"{kind}\"}}");
                values.insert(name.clone(), metric(text, &name));
            }
            for phase in PHASES {
                let name = format!(
                    "mlx_serve_engine_profile_seconds_total{{kind=\"{kind}\",phase=\"{phase}\"}}"
                );
                values.insert(name.clone(), metric(text, &name));
            }
        }
        Counters { values }
    }

    fn since(&self, before: &Counters, name: &str) -> f64 {
        self.values.get(name).copied().unwrap_or(0.0)
            - before.values.get(name).copied().unwrap_or(0.0)
    }

    fn rows(&self, before: &Counters) -> Vec<KindRow> {
        KINDS
            .into_iter()
            .map(|kind| {
                let get = |what: &str| {
                    self.since(
                        before,
                        &format!("mlx_serve_engine_profile_{what}_total{{kind=\"{kind}\"}}"),
                    )
                };
                let steps = get("steps");
                let per_step = |x: f64| if steps > 0.0 { x / steps } else { 0.0 };
                let phase_ms: Vec<f64> = PHASES
                    .iter()
                    .map(|phase| {
                        1000.0
                            * per_step(self.since(
                                before,
                                &format!(
                                    "mlx_serve_engine_profile_seconds_total{{kind=\"{kind}\",phase=\"{phase}\"}}"
                                ),
                            ))
                    })
                    .collect();
                KindRow {
                    kind,
                    steps,
                    mean_sequences: per_step(get("sequences")),
                    mean_tokens: per_step(get("tokens")),
                    ms_per_step: phase_ms.iter().sum(),
                    phase_ms,
                }
            })
            .collect()
    }
}

/// CPU seconds of each of the process's threads, summed by thread name; empty where
/// `/proc` is not there.
fn thread_cpu(pid: u32) -> BTreeMap<String, f64> {
    let mut by_name = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (name) state ...`: the name may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat(5); here 11 and 12 after the name.
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
            .sum();
        *by_name.entry(name).or_insert(0.0) += ticks / USER_HZ;
    }
    by_name
}

/// The unit of `/proc`'s CPU times (`sysconf(_SC_CLK_TCK)`): 100 on x86-64 and arm64 Linux.
const USER_HZ: f64 = 100.0;

/// What each group of threads is for, as mlx-serve names them.
fn thread_role(name: &str) -> &'static str {
    match name {
        "mlx-engine" => "the engine and MLX's stream thread: steps, sampling, detokenizing",
        "tokio-rt-worker" => "HTTP, SSE, tokenization, chat templates",
        "mlx-serve" => "started before main: OpenBLAS's worker pool",
        _ => "",
    }
}

/// Runs the profile; `Ok(false)` when a request failed.
pub async fn run(args: ProfileArgs) -> Result<bool, String> {
    let client = crate::report::http_client(args.timeout_secs)?;
    let workload = compare::workload(&args.url, &args.model, args.max_tokens);
    let mut report = Vec::new();
    let mut failed = 0;
    for (level, &concurrency) in args.concurrency.iter().enumerate() {
        let before = Counters::read(&scrape(&client, &args.url).await?);
        let cpu_before = args.pid.map(thread_cpu).unwrap_or_default();
        let started = std::time::Instant::now();
        let summary = compare::closed_loop(
            &client,
            &workload,
            concurrency,
            concurrency * args.requests_per_worker,
            level * 1_000_000,
            args.prompt_words,
        )
        .await;
        let wall = started.elapsed().as_secs_f64();
        let cpu_after = args.pid.map(thread_cpu).unwrap_or_default();
        let after = Counters::read(&scrape(&client, &args.url).await?);
        failed += summary.failed;
        let rows = after.rows(&before);
        let threads: Vec<(String, f64)> = cpu_after
            .iter()
            .map(|(name, &s)| {
                (
                    name.clone(),
                    s - cpu_before.get(name).copied().unwrap_or(0.0),
                )
            })
            .filter(|(_, s)| *s > 0.0)
            .collect();
        print_level(concurrency, &summary, wall, &rows, &threads);
        report.push(json!({
            "concurrency": concurrency,
            "load": summary,
            "wall_seconds": wall,
            "steps": rows,
            "thread_cpu_seconds": threads.iter().cloned().collect::<BTreeMap<_, _>>(),
        }));
    }
    if let Some(path) = &args.json {
        crate::report::write_json(
            path,
            &json!({"scenario": "profile", "phases": PHASES, "levels": report, "failed": failed}),
        )?;
    }
    if failed > 0 {
        println!("FAIL: {failed} requests failed");
    }
    Ok(failed == 0)
}

fn print_level(
    concurrency: usize,
    summary: &LoadSummary,
    wall: f64,
    rows: &[KindRow],
    threads: &[(String, f64)],
) {
    println!(
        "## concurrency {concurrency}: {:.1} output tok/s, TTFT p50 {:.0} ms, ITL p50 {:.1} / p99 {:.1} ms, {:.1} s\n",
        summary.output_tokens_per_s,
        summary.ttft.p50_ms,
        summary.itl.p50_ms,
        summary.itl.p99_ms,
        wall
    );
    println!(
        "| step | steps | sequences | new tokens | ms per step | {} |",
        PHASES.join(" | ")
    );
    println!("|---|---:|---:|---:|---:|{}", "---:|".repeat(PHASES.len()));
    for row in rows.iter().filter(|r| r.steps > 0.0) {
        let phases: Vec<String> = row.phase_ms.iter().map(|ms| format!("{ms:.2}")).collect();
        println!(
            "| {} | {:.0} | {:.2} | {:.1} | {:.1} | {} |",
            row.kind,
            row.steps,
            row.mean_sequences,
            row.mean_tokens,
            row.ms_per_step,
            phases.join(" | ")
        );
    }
    if !threads.is_empty() {
        println!("\n| thread | CPU s | cores busy | role |\n|---|---:|---:|---|");
        for (name, seconds) in threads {
            println!(
                "| {name} | {seconds:.1} | {:.2} | {} |",
                seconds / wall,
                thread_role(name)
            );
        }
    }
    println!();
}
