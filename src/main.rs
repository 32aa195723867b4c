//! The `mlx-serve` command line.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use mlx_serve::api::state::AppState;
use mlx_serve::api::{server, shutdown};
use mlx_serve::config::{LogFormat, ServeSettings};
use mlx_serve::device::ComputeDevice;
use mlx_serve::engine::{EngineHandle, priority};
use mlx_serve::model::ModelError;
use mlx_serve::model::hub::HubOptions;
use mlx_serve::model::loader::{self, LoadOptions, LoadedModel, ModelSource};
use mlx_serve::runtime::RuntimeInfo;
use tokio::net::TcpListener;

/// OpenAI-compatible LLM inference server on MLX.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a model over the OpenAI-compatible HTTP API.
    ///
    /// Listens at once (requests get 503 until the model has loaded); SIGINT/SIGTERM
    /// drain in-flight requests and exit 0, a second signal exits at once.
    Serve(ServeSettings),
}

fn main() {
    let Command::Serve(settings) = Cli::parse().command;
    init_logging(settings.log_format);
    // Before any thread of ours exists: a restart ends every other thread, and every
    // thread but this one must be a library's when their priority is lowered.
    #[cfg(target_os = "linux")]
    mlx_serve::openblas_core::restart_with_kernels_for_this_cpu();
    priority::lower_library_threads();
    let result = serve(settings);
    let code = match result {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("error: {message}");
            1
        }
    };
    // The engine thread may still be inside MLX (a model loading when a signal came, or
    // freeing its state): end without running C++ static destructors under it.
    shutdown::exit_now(code)
}

/// Log lines go to standard error, as text or JSON; `RUST_LOG` filters them (default
/// `info`). Text is coloured only on a terminal, so a redirected log has no escape codes.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

fn serve(settings: ServeSettings) -> Result<(), String> {
    settings.validate()?;
    // Before anything computes: MLX's device is process-wide, and the weight mode, the
    // attention kernel and the KV pool's dtype are chosen for it.
    settings.device.apply()?;
    println!("{}", RuntimeInfo::detect());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let result = runtime.block_on(run(settings));
    // A model still loading when a signal came must not hold up the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn run(settings: ServeSettings) -> Result<(), String> {
    let listener = TcpListener::bind((settings.host.as_str(), settings.port))
        .await
        .map_err(|e| format!("cannot listen on {}:{}: {e}", settings.host, settings.port))?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    let state = AppState::new(&settings);
    let mut server = tokio::spawn({
        let state = state.clone();
        let settings = settings.clone();
        async move { server::serve(listener, state, &settings, shutdown::signal()).await }
    });
    println!("listening on http://{address}");

    let load_settings = settings.clone();
    let engine_metrics = Arc::clone(&state.metrics().engine);
    let loading = tokio::task::spawn_blocking(move || {
        let config = load_settings.engine_config();
        EngineHandle::start(move || load_model(&load_settings), config, engine_metrics)
    });
    tokio::select! {
        loaded = loading => match loaded {
            Ok(Ok(engine)) => {
                let stats = engine.stats();
                let name = engine.model().identity.served_name.clone();
                state.set_engine(engine);
                println!(
                    "kv cache:       {} blocks of {} tokens",
                    stats.blocks_total, settings.block_size
                );
                println!("ready:          http://{address}/v1 serves {name}");
            }
            Ok(Err(e)) => return Err(e.to_string()),
            Err(e) => return Err(format!("loading the model failed: {e}")),
        },
        finished = &mut server => return finished_server(finished),
    }
    finished_server(server.await)
}

fn finished_server(
    finished: Result<std::io::Result<()>, tokio::task::JoinError>,
) -> Result<(), String> {
    match finished {
        Ok(Ok(())) => {
            println!("shut down cleanly");
            Ok(())
        }
        Ok(Err(e)) => Err(format!("the HTTP server failed: {e}")),
        Err(e) => Err(format!("the HTTP server task failed: {e}")),
    }
}

/// Runs on the engine thread: the model must live on the thread that uses it.
fn load_model(settings: &ServeSettings) -> Result<LoadedModel, ModelError> {
    let started = Instant::now();
    let source = ModelSource::parse(&settings.model)?;
    let options = LoadOptions {
        weights: settings.weights.resolve(ComputeDevice::current()),
        served_name: settings.served_model_name.clone(),
        hub: HubOptions::from_env(),
    };
    let loaded = loader::load(&source, &options)?;
    println!("{}", loaded.summary());
    println!("loaded in:      {:.2?}", started.elapsed());
    Ok(loaded)
}
