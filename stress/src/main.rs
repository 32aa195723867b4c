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
//! - `turns`: many agents take turns re-sending growing contexts over a pool that holds
//!   only some of them; the share of prompt tokens served from cache must reach a bound.

mod encodings;
mod flood;
mod report;
mod server;
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
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let passed = match cli.scenario {
        Scenario::Flood(args) => flood::run(args).await,
        Scenario::Tiers(args) => tiers::run(args).await,
        Scenario::Turns(args) => turns::run(args).await,
        Scenario::Encodings(args) => encodings::run(args).await,
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
