//! `mlx-serve serve` settings: every knob in one struct, from flags or environment
//! variables (a flag wins), validated once at start-up. Documented in
//! `docs/configuration.md`.

use clap::Args;

use crate::model::weights::WeightMode;

/// The model `make run` serves: what `make setup` installs.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Largest accepted `--block-size`: beyond this a block is bigger than most prompts and
/// prefix sharing stops working.
pub const MAX_BLOCK_SIZE: usize = 4096;

#[derive(Debug, Clone, Args)]
pub struct ServeSettings {
    /// Model to serve: a GGUF file, a Hugging Face model folder, or a Hub id (`org/name`,
    /// taken from the Hugging Face cache, downloaded when missing).
    #[arg(long, env = "MLX_SERVE_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,

    /// Name clients use for the model (default: the file or folder name, or the Hub id).
    #[arg(long, env = "MLX_SERVE_SERVED_MODEL_NAME")]
    pub served_model_name: Option<String>,

    /// How weights are held: `auto` (f32 on CPU, quantized on GPU), `f32`, `f16`, `bf16`
    /// or `quantized`.
    #[arg(long, env = "MLX_SERVE_WEIGHTS", default_value = "auto", value_parser = parse_weights)]
    pub weights: WeightMode,

    /// Memory for the KV-cache block pool, in MiB; fixes how many tokens can be cached.
    #[arg(long, env = "MLX_SERVE_KV_CACHE_MB", default_value_t = 512)]
    pub kv_cache_mb: usize,

    /// Tokens per KV-cache block: the unit of allocation, prefix sharing and persistence.
    #[arg(long, env = "MLX_SERVE_BLOCK_SIZE", default_value_t = 16)]
    pub block_size: usize,
}

fn parse_weights(value: &str) -> Result<WeightMode, String> {
    WeightMode::parse(value)
        .ok_or_else(|| format!("`{value}` is not one of auto, f32, f16, bf16, quantized"))
}

impl ServeSettings {
    /// Checks what clap cannot; the message names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_BLOCK_SIZE).contains(&self.block_size) {
            return Err(format!(
                "--block-size must be between 1 and {MAX_BLOCK_SIZE} (got {})",
                self.block_size
            ));
        }
        if self.kv_cache_mb == 0 {
            return Err("--kv-cache-mb must be at least 1".to_owned());
        }
        Ok(())
    }

    pub fn kv_cache_bytes(&self) -> usize {
        self.kv_cache_mb.saturating_mul(1 << 20)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: ServeSettings,
    }

    #[test]
    fn defaults_and_validation() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.settings.model, DEFAULT_MODEL);
        assert_eq!(
            (cli.settings.block_size, cli.settings.kv_cache_mb),
            (16, 512)
        );
        assert!(cli.settings.validate().is_ok());

        let cli = Cli::try_parse_from(["x", "--block-size", "0"]).unwrap();
        assert!(
            cli.settings
                .validate()
                .unwrap_err()
                .contains("--block-size")
        );
        let cli = Cli::try_parse_from(["x", "--kv-cache-mb", "0"]).unwrap();
        assert!(
            cli.settings
                .validate()
                .unwrap_err()
                .contains("--kv-cache-mb")
        );
        let cli = Cli::try_parse_from(["x", "--weights", "f16"]).unwrap();
        assert_eq!(cli.settings.weights, WeightMode::F16);
        assert!(Cli::try_parse_from(["x", "--weights", "q3"]).is_err());
    }
}
