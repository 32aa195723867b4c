//! The `mlx-serve` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mlx_serve::model::GgufSummary;
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
    /// The HTTP API arrives with the engine; for now `serve` loads the model, prints what
    /// it found and exits.
    Serve {
        /// Model to serve: a path to a GGUF file.
        #[arg(
            long,
            env = "MLX_SERVE_MODEL",
            default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
        )]
        model: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { model } => {
            println!("{}", RuntimeInfo::detect());
            match GgufSummary::read(&model) {
                Ok(summary) => {
                    println!("{summary}");
                    println!("model loaded; the HTTP API is not implemented yet, nothing to serve");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
