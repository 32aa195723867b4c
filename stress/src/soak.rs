//! The `soak` scenario: open-loop arrivals (evenly spaced, or Poisson with `--arrivals
//! poisson`) at `--rate` requests per second against a running server for
//! `--duration-secs`, with the server's RSS sampled every `--rss-interval-secs` (its pid
//! is required). Results are kept per `--window-secs` window of send time. Pass criteria, after `--warmup-secs`:
//! - RSS growth under `--max-rss-growth` (the largest sample after warm-up against the
//!   first one at or after it);
//! - the end-to-end p95 of the last `--compare-secs` within `--max-p95-drift` of the p95
//!   of the first `--compare-secs` after warm-up (spans of several windows, so that each
//!   p95 rests on enough requests: 180 at the defaults);
//! - failed requests (anything but a whole 200) under `--max-error-rate` of all requests.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use crate::load::{
    self, Arrivals, Endpoint, LoadStats, LoadSummary, Pace, Percentiles, Request, Workload,
};
use crate::process::{ProcessSampler, Sample};

#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    url: String,
    /// The server's pid (its RSS is sampled).
    #[arg(long)]
    pid: u32,
    /// The model name to send.
    #[arg(long, default_value = "SmolLM2-135M-Instruct.Q4_1")]
    model: String,
    /// The endpoint the requests go to.
    #[arg(long, value_enum, default_value = "chat")]
    endpoint: Endpoint,
    /// Send plain (non-streaming) requests.
    #[arg(long)]
    no_stream: bool,
    /// Requests per second; the default is about half of what the default model serves
    /// on 2 cores with these prompts.
    #[arg(long, default_value_t = 0.2)]
    rate: f64,
    /// How arrivals are spaced: evenly (the default: a steady load, so latency that
    /// drifts is the server's doing) or as a Poisson process (realistic bursts, whose
    /// randomness alone moves a 15-minute p95 by tens of percent).
    #[arg(long, value_enum, default_value = "uniform")]
    arrivals: Arrivals,
    /// How long new requests are sent, in seconds.
    #[arg(long, default_value_t = 3600)]
    duration_secs: u64,
    /// The statistics window, in seconds.
    #[arg(long, default_value_t = 300)]
    window_secs: u64,
    /// Warm-up excluded from the drift and growth criteria, in seconds.
    #[arg(long, default_value_t = 300)]
    warmup_secs: u64,
    /// Seconds between RSS samples.
    #[arg(long, default_value_t = 300)]
    rss_interval_secs: u64,
    /// Words of each prompt (about one token each).
    #[arg(long, default_value_t = 120)]
    prompt_words: usize,
    /// Tokens each request generates at most.
    #[arg(long, default_value_t = 32)]
    max_tokens: u64,
    /// Largest acceptable RSS growth after warm-up (a fraction).
    #[arg(long, default_value_t = 0.05)]
    max_rss_growth: f64,
    /// Length of the early span (right after warm-up) and of the late span (the end of the
    /// run) whose end-to-end p95s are compared, in seconds; rounded up to whole windows.
    #[arg(long, default_value_t = 900)]
    compare_secs: u64,
    /// Largest acceptable change of the end-to-end p95, late span against early span
    /// (a fraction).
    #[arg(long, default_value_t = 0.20)]
    max_p95_drift: f64,
    /// Largest acceptable share of failed requests.
    #[arg(long, default_value_t = 0.001)]
    max_error_rate: f64,
    /// Per-request deadline in seconds (a time-out is a failure).
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
    /// Seed of the Poisson arrivals.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
struct Results {
    windows: Vec<LoadSummary>,
    rss: Vec<Sample>,
    requests: u64,
    failed: u64,
    rss_growth: f64,
    early_e2e: Option<Percentiles>,
    late_e2e: Option<Percentiles>,
    p95_drift: f64,
    /// The whole run's latencies as the server recorded them, beside the clients' view.
    server_view: Option<Vec<crate::server_view::Row>>,
    failures: Vec<String>,
}

/// Runs the scenario; `Ok(false)` when a pass criterion failed.
pub async fn run(args: SoakArgs) -> Result<bool, String> {
    let client = crate::report::http_client(args.timeout_secs)?;
    let workload = Workload {
        base: args.url.clone(),
        model: args.model.clone(),
        endpoint: args.endpoint,
        stream: !args.no_stream,
        max_tokens: args.max_tokens,
        ignore_eos: false,
    };
    let sampler =
        ProcessSampler::start(args.pid, Duration::from_secs(args.rss_interval_secs.max(1)));
    let words = args.prompt_words;
    let next = Arc::new(move |i: usize| Request {
        prompt: load::prompt(i, words).into(),
        agent: None,
    });
    let window = Duration::from_secs(args.window_secs.max(1));
    let windows: Vec<LoadStats> = load::drive(
        &client,
        &workload,
        Pace::Open {
            rate: args.rate,
            arrivals: args.arrivals,
            seed: args.seed,
        },
        load::Until::Elapsed(Duration::from_secs(args.duration_secs)),
        Some(window),
        next,
    )
    .await;
    // With one more sample after the last request, so growth covers the whole run.
    let rss = sampler.finish();
    let whole_run = LoadStats::latencies_over(&windows);

    let summaries: Vec<LoadSummary> = windows.iter().map(LoadStats::summary).collect();
    let requests: u64 = summaries.iter().map(|s| s.requests).sum();
    let failed: u64 = summaries.iter().map(|s| s.failed).sum();
    let warm = args.warmup_secs as f64;
    let window_secs = args.window_secs.max(1);
    let first_after = args.warmup_secs.div_ceil(window_secs) as usize;
    let span = args.compare_secs.div_ceil(window_secs).max(1) as usize;
    // Only whole windows: a last window cut short by the end of the run would make the
    // late span shorter than the early one.
    let whole = windows
        .len()
        .min((args.duration_secs / window_secs) as usize);
    // The two spans may not overlap; a run too short for both has no drift (and fails).
    let (early_e2e, late_e2e) = if first_after + 2 * span <= whole {
        (
            Some(LoadStats::latencies_over(&windows[first_after..first_after + span]).e2e),
            Some(LoadStats::latencies_over(&windows[whole - span..whole]).e2e),
        )
    } else {
        (None, None)
    };
    let p95_drift = match (&early_e2e, &late_e2e) {
        (Some(e), Some(l)) if e.p95_ms > 0.0 => (l.p95_ms - e.p95_ms) / e.p95_ms,
        _ => f64::NAN,
    };
    let baseline = rss.iter().find(|s| s.at_s >= warm).map(|s| s.rss_bytes);
    let peak = rss
        .iter()
        .filter(|s| s.at_s >= warm)
        .map(|s| s.rss_bytes)
        .max();
    let rss_growth = match (baseline, peak) {
        (Some(b), Some(p)) if b > 0 => (p as f64 - b as f64) / b as f64,
        _ => f64::NAN,
    };

    println!(
        "## soak: {} req/s ({:?} arrivals) for {} s, windows of {} s, warm-up {} s\n",
        args.rate, args.arrivals, args.duration_secs, args.window_secs, args.warmup_secs
    );
    println!("{}", load::TABLE_HEADER);
    for (i, summary) in summaries.iter().enumerate() {
        let from = i as u64 * args.window_secs;
        println!(
            "{}",
            load::row(&format!("{from}-{} s", from + args.window_secs), summary)
        );
    }
    println!("\n| t (s) | RSS MiB | CPU % |\n|---|---|---|");
    for sample in &rss {
        println!(
            "| {:.0} | {:.1} | {:.0} |",
            sample.at_s,
            sample.rss_bytes as f64 / (1 << 20) as f64,
            sample.cpu_percent
        );
    }
    let server_view = crate::server_view::print(&client, &args.url, &workload, &whole_run).await;
    let mut failures = Vec::new();
    let error_rate = if requests > 0 {
        failed as f64 / requests as f64
    } else {
        1.0
    };
    if requests == 0 {
        failures.push("no request was sent".to_owned());
    }
    if error_rate >= args.max_error_rate {
        failures.push(format!("{failed} of {requests} requests failed"));
    }
    // NaN (no sample after warm-up) fails too.
    if rss_growth.is_nan() || rss_growth >= args.max_rss_growth {
        failures.push(format!(
            "RSS grew {:.1} % after warm-up",
            rss_growth * 100.0
        ));
    }
    if p95_drift.is_nan() || p95_drift.abs() > args.max_p95_drift {
        failures.push(format!(
            "e2e p95 moved {:.1} % from the early span to the late one (NaN: the run is too \
             short for two spans of {} s after {} s of warm-up)",
            p95_drift * 100.0,
            args.compare_secs,
            args.warmup_secs
        ));
    }
    let p95 = |p: &Option<Percentiles>| p.as_ref().map_or(f64::NAN, |p| p.p95_ms);
    println!(
        "\nrequests {requests}, failed {failed}; RSS growth after warm-up {:.2} %; e2e p95 {:.0} ms early, {:.0} ms late: drift {:.1} %",
        rss_growth * 100.0,
        p95(&early_e2e),
        p95(&late_e2e),
        p95_drift * 100.0
    );
    crate::report::verdict(&failures);
    if let Some(path) = &args.json {
        let results = Results {
            windows: summaries,
            rss,
            requests,
            failed,
            rss_growth,
            early_e2e,
            late_e2e,
            p95_drift,
            server_view,
            failures: failures.clone(),
        };
        crate::report::write_json(path, &results)?;
    }
    Ok(failures.is_empty())
}
