//! `stress`: a load and fault generator for any OpenAI-compatible server, to measure what
//! clients see — every request's status and latency, nothing dropped from the statistics,
//! time-outs and connection errors counted as failures. Each scenario checks its pass
//! criteria and exits non-zero when they fail.
//!
//! Scenarios:
//! - `flood`: N clients send one request each at the same moment (pool exhaustion): only
//!   the allowed statuses may come back, refusals must be fast, and a recovery round
//!   afterwards must be served in full.
//! - `tiers`: one agent's time to first token cold, hot (pool) and warm (disk, after a
//!   restart of the server, which the scenario starts itself), at several prompt lengths;
//!   the warm one must be a given factor faster than the cold one.
//! - `encodings`: the quality (greedy agreement, logprob differences), size and speed of
//!   each KV store encoding after a restore, against the lossless one.
//! - `ramp`: closed-loop workers stepping from 10 to 100: throughput and latency per step;
//!   only 200s and documented 429s may come back.
//! - `soak`: Poisson arrivals at a fixed rate for an hour: the server's RSS growth, the
//!   drift of its latency and its error rate.
//! - `slow-readers`: normal streaming clients alone and beside clients that stop reading:
//!   their TTFT p99 may at most double.
//! - `compare`: throughput, TTFT, ITL and peak RSS at concurrency 1/4/8/16 and a
//!   prompt-cache probe, for side-by-side tables of two servers.
//! - `profile`: the side-by-side load at each concurrency with mlx-serve's step profile
//!   (time per kind of step and phase) and per-thread CPU around it.
//! - `agents`: 20 agents at once, 100 turns each with growing contexts: TTFT percentiles
//!   and the share of prompt tokens from cache.
//! - `bad-input`: 10,000 generated hostile requests: each a 4xx in the error envelope,
//!   the server healthy and answering as before afterwards.
//! - `shutdown`: SIGTERM with 32 streams generating: every stream ends (finished or
//!   `aborted`) within the drain timeout, exit 0, hot caches on disk.
//! - `crash`: kill -9 under load and a restart: ready again, nothing torn loaded, agents
//!   warm from disk.
//! - `turns`: many agents take turns re-sending growing contexts over a pool that holds
//!   only some of them; the share of prompt tokens served from cache must reach a bound.

mod agents;
mod bad_input;
mod compare;
mod crash;
mod encodings;
mod flood;
mod load;
mod process;
mod profile;
mod ramp;
mod report;
mod server;
mod server_view;
mod shutdown;
mod slow_readers;
mod soak;
mod tiers;
mod turns;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Concurrent one-shot requests against a small pool; checks statuses and how fast
    /// refusals (429) are answered.
    Flood(flood::FloodArgs),
    /// Time to first token from cold, hot (pool) and warm (disk after a restart) KV.
    Tiers(tiers::TiersArgs),
    /// Agents taking turns with growing contexts: the share of prompt tokens from cache.
    Turns(turns::TurnsArgs),
    /// Quality, size and speed of each KV store encoding after a restore.
    Encodings(encodings::EncodingsArgs),
    /// Closed-loop workers stepping up: throughput and latency per step.
    Ramp(ramp::RampArgs),
    /// Poisson arrivals at a fixed rate for a long time: RSS growth, latency drift, errors.
    Soak(soak::SoakArgs),
    /// Normal streaming clients alone and beside clients that read at a trickle.
    SlowReaders(slow_readers::SlowReadersArgs),
    /// Side-by-side figures: throughput and latency at fixed concurrencies, peak RSS, and
    /// a prompt-cache probe.
    Compare(compare::CompareArgs),
    /// Where the server's time goes under the side-by-side load: its step profile and
    /// per-thread CPU, per concurrency level.
    Profile(profile::ProfileArgs),
    /// Many agents at once, each taking many turns with a growing context.
    Agents(agents::AgentsArgs),
    /// Thousands of hostile requests: every one a 4xx error envelope, the server unharmed.
    BadInput(bad_input::BadInputArgs),
    /// SIGTERM with streams generating: drained, exit 0, hot caches on disk.
    Shutdown(shutdown::ShutdownArgs),
    /// kill -9 under load, then a restart: nothing torn loaded, agents warm from disk.
    Crash(crash::CrashArgs),
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let passed = match cli.scenario {
        Scenario::Flood(args) => flood::run(args).await,
        Scenario::Tiers(args) => tiers::run(args).await,
        Scenario::Turns(args) => turns::run(args).await,
        Scenario::Encodings(args) => encodings::run(args).await,
        Scenario::Ramp(args) => ramp::run(args).await,
        Scenario::Soak(args) => soak::run(args).await,
        Scenario::SlowReaders(args) => slow_readers::run(args).await,
        Scenario::Agents(args) => agents::run(args).await,
        Scenario::Compare(args) => compare::run(args).await,
        Scenario::Profile(args) => profile::run(args).await,
        Scenario::BadInput(args) => bad_input::run(args).await,
        Scenario::Shutdown(args) => shutdown::run(args).await,
        Scenario::Crash(args) => crash::run(args).await,
    };
    match passed {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(message) => {
            eprintln!("error: {message}");
            std::process::exit(2);
        }
    }
}
