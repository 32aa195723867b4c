//! The `mlx-serve` command line.

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use mlx_serve::config::ServeSettings;
use mlx_serve::model::ChatMessage;
use mlx_serve::model::greedy::{self, GreedyOptions, GreedyRequest};
use mlx_serve::model::hub::HubOptions;
use mlx_serve::model::kv_cache::{KvCacheConfig, PagedKvCache};
use mlx_serve::model::loader::{self, LoadOptions, ModelSource};
use mlx_serve::runtime::RuntimeInfo;

/// OpenAI-compatible LLM inference server on MLX.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load a model and serve it.
    ///
    /// The HTTP API arrives with the engine; for now `serve` loads the model and its KV
    /// cache, answers one smoke-test chat prompt, and exits.
    Serve(ServeSettings),
}

/// Tokens the start-up smoke test generates.
const SMOKE_TOKENS: usize = 24;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(settings) => serve(&settings),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(settings: &ServeSettings) -> Result<(), String> {
    settings.validate()?;
    println!("{}", RuntimeInfo::detect());

    let started = Instant::now();
    let source = ModelSource::parse(&settings.model).map_err(|e| e.to_string())?;
    let options = LoadOptions {
        weights: settings.weights,
        served_name: settings.served_model_name.clone(),
        hub: HubOptions::from_env(),
    };
    let loaded = loader::load(&source, &options).map_err(|e| e.to_string())?;
    println!("{}", loaded.summary());
    println!("loaded in:      {:.2?}", started.elapsed());

    let config = loaded.model.config();
    let dtype = loaded.model.mode().compute_dtype();
    let kv = KvCacheConfig::from_budget(
        settings.kv_cache_bytes(),
        settings.block_size,
        config,
        dtype,
    )?;
    let mut cache = PagedKvCache::new(kv, config, dtype).map_err(|e| e.to_string())?;
    println!(
        "kv cache:       {} blocks of {} tokens = {} tokens in {} MiB",
        kv.num_blocks,
        kv.block_size,
        kv.total_tokens(),
        settings.kv_cache_mb
    );

    let question = "What is the capital of France?";
    let prompt = loaded
        .chat_template
        .render(&[ChatMessage::new("user", question)], true, None)
        .map_err(|e| e.to_string())?;
    let ids = loaded
        .tokenizer
        .encode(&prompt, false)
        .map_err(|e| e.to_string())?;
    let request = GreedyRequest {
        prompt: ids.clone(),
        max_tokens: SMOKE_TOKENS,
        join_step: 0,
    };
    let started = Instant::now();
    let output = greedy::generate(
        &loaded.model,
        &mut cache,
        &[request],
        GreedyOptions::default(),
    )
    .map_err(|e| e.to_string())?
    .remove(0);
    let elapsed = started.elapsed();
    let end = output
        .tokens
        .iter()
        .position(|&t| loaded.tokenizer.is_eos(t))
        .unwrap_or(output.tokens.len());
    let answer = loaded
        .tokenizer
        .decode(&output.tokens[..end], true)
        .map_err(|e| e.to_string())?;
    println!("smoke test:     {question:?} -> {answer:?}");
    println!(
        "                {} prompt + {} generated tokens in {:.2?} ({:.1} tokens/s)",
        ids.len(),
        output.tokens.len(),
        elapsed,
        output.tokens.len() as f64 / elapsed.as_secs_f64()
    );
    println!("the HTTP API is not implemented yet; nothing more to serve");
    Ok(())
}
