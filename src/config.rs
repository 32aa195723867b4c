//! `mlx-serve serve` settings: every knob in one struct, from flags or environment
//! variables (a flag wins), validated once at start-up. Documented in
//! `docs/configuration.md`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::cache_store::{self, Encoding, StoreConfig};
use crate::device::DeviceChoice;
use crate::engine::{EngineConfig, PoolSize, StorePolicy};
use crate::model::weights::WeightChoice;

/// The model `make run` serves: what `make setup` installs.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Largest accepted `--block-size`: beyond this a block is bigger than most prompts and
/// prefix sharing stops working.
pub const MAX_BLOCK_SIZE: usize = 4096;

/// Largest accepted `--arrival-gather-ms`: arrivals sent together come within a few
/// milliseconds; a longer wait would only delay lone requests.
pub const MAX_ARRIVAL_GATHER_MS: u64 = 1000;

/// Default `--max-body-bytes`: far above any prompt that fits a context (8K tokens of text
/// are ~40 KB), small enough that a hostile body cannot hurt.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;

#[derive(Debug, Clone, Args)]
pub struct ServeSettings {
    /// Address to listen on.
    #[arg(long, env = "MLX_SERVE_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on (0: any free port; the chosen one is printed).
    #[arg(long, env = "MLX_SERVE_PORT", default_value_t = 8000)]
    pub port: u16,

    /// Model to serve: a GGUF file, a Hugging Face model folder, or a Hub id (`org/name`,
    /// taken from the Hugging Face cache, downloaded when missing).
    #[arg(long, env = "MLX_SERVE_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,

    /// Name clients use for the model (default: the file or folder name, or the Hub id).
    #[arg(long, env = "MLX_SERVE_SERVED_MODEL_NAME")]
    pub served_model_name: Option<String>,

    /// Device MLX computes on: `auto` (the GPU when this MLX build has one), `cpu`, or
    /// `gpu` (refused at start-up when the build has none). A virtual Mac, such as a hosted
    /// CI runner, reports a GPU it cannot use: run it with `cpu`.
    #[arg(long, env = DeviceChoice::ENV, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,

    /// How weights are held: `auto` (f32 on the CPU, quantized on a GPU), `f32`, `f16`,
    /// `bf16` or `quantized` (activations in the checkpoint's 16-bit float type, else bf16).
    #[arg(long, env = "MLX_SERVE_WEIGHTS", default_value = "auto", value_parser = parse_weights)]
    pub weights: WeightChoice,

    /// Memory for the KV-cache block pool, in MiB, or `auto`: room for `--max-batch`
    /// sequences at the model's full context, at most a quarter of the machine's memory.
    /// Fixes how many tokens can be cached; pages become resident as blocks fill.
    #[arg(long = "kv-cache-mb", env = "MLX_SERVE_KV_CACHE_MB", default_value = "auto",
          value_parser = parse_pool_size)]
    pub kv_pool: PoolSize,

    /// Tokens per KV-cache block: the unit of allocation, prefix sharing and persistence.
    #[arg(long, env = "MLX_SERVE_BLOCK_SIZE", default_value_t = 16)]
    pub block_size: usize,

    /// Most sequences in one engine step (the running batch).
    #[arg(long, env = "MLX_SERVE_MAX_BATCH", default_value_t = 16)]
    pub max_batch: usize,

    /// Most tokens one engine step runs: one per decoding sequence, the rest for prompt
    /// chunks. While sequences decode, `--decode-stall-factor` usually limits the prompt
    /// tokens further; this bounds mainly a step where nobody decodes, which should take a
    /// whole wave of arrivals (several prompts sent together) so that they decode in step
    /// afterwards. At least `--max-batch`.
    #[arg(long, env = "MLX_SERVE_MAX_STEP_TOKENS", default_value_t = 2048)]
    pub max_step_tokens: usize,

    /// Most prompt tokens one sequence prefills in a step.
    #[arg(long, env = "MLX_SERVE_PREFILL_CHUNK", default_value_t = 256)]
    pub prefill_chunk: usize,

    /// A step that carries prompt tokens while other sequences decode takes about this many
    /// pure decode steps: its prompt tokens are sized from measured step costs, so streams
    /// already decoding stall only that long while new prompts prefill. 0: no limit beyond
    /// `--max-step-tokens`.
    #[arg(long, env = "MLX_SERVE_DECODE_STALL_FACTOR", default_value_t = 6)]
    pub decode_stall_factor: usize,

    /// Before an engine with nothing running starts on the requests queued, it waits until
    /// no further request has come for this many milliseconds (and no longer than four
    /// times as long after the oldest arrived), so requests sent together prefill together
    /// and then decode in step. 0: start at once.
    #[arg(long, env = "MLX_SERVE_ARRIVAL_GATHER_MS", default_value_t = 5)]
    pub arrival_gather_ms: u64,

    /// Generations (each prompt of a request counts) that may wait for a batch slot and KV
    /// blocks; a request that would leave more waiting gets 429. 0: 429 for whatever cannot
    /// start in the next step.
    #[arg(long, env = "MLX_SERVE_MAX_QUEUE", default_value_t = 64)]
    pub max_queue: usize,

    /// An accepted API key (repeatable; in the environment, comma-separated). None: no
    /// authentication.
    #[arg(long, env = "MLX_SERVE_API_KEY", value_delimiter = ',')]
    pub api_key: Vec<String>,

    /// The key of the admin API (`/admin/*`: agents' KV caches, the store). Separate from
    /// `--api-key`; without it every `/admin` path answers 404.
    #[arg(long, env = "MLX_SERVE_ADMIN_KEY")]
    pub admin_key: Option<String>,

    /// A browser origin allowed by CORS (repeatable; `*` = any; in the environment,
    /// comma-separated). None: CORS off.
    #[arg(long, env = "MLX_SERVE_CORS_ORIGIN", value_delimiter = ',')]
    pub cors_origin: Vec<String>,

    /// Largest accepted request body, in bytes (larger: 413).
    #[arg(long, env = "MLX_SERVE_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// A generation whose client has taken nothing for this long while output waits for it
    /// is ended (finish reason `aborted`), freeing its batch slot and KV blocks.
    #[arg(long, env = "MLX_SERVE_STALL_TIMEOUT_SECS", default_value_t = 60)]
    pub stall_timeout_secs: u64,

    /// A connection that has not sent its complete request headers this long after it
    /// started sending them is closed (slowloris).
    #[arg(long, env = "MLX_SERVE_HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,

    /// Most client connections open at once; further ones wait to be accepted.
    #[arg(long, env = "MLX_SERVE_MAX_CONNECTIONS", default_value_t = 512)]
    pub max_connections: usize,

    /// A `Host` name to answer besides loopback names while listening on a loopback
    /// address (repeatable; `*` = any; in the environment, comma-separated). Given on a
    /// non-loopback address, only these and loopback names are answered.
    #[arg(long, env = "MLX_SERVE_ALLOWED_HOST", value_delimiter = ',')]
    pub allowed_host: Vec<String>,

    /// On SIGTERM/SIGINT, how long in-flight generations may take to finish before they
    /// are aborted.
    #[arg(long, env = "MLX_SERVE_DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    pub drain_timeout_secs: u64,

    /// `/health/ready` answers 503 while more than this fraction of the KV cache blocks is
    /// in use, so a load balancer sends new work elsewhere (1: never).
    #[arg(long, env = "MLX_SERVE_READY_MAX_KV_USAGE", default_value_t = 0.95)]
    pub ready_max_kv_usage: f64,

    /// Require an API key for `/metrics` and `/v1/stats` too (when API keys are set; by
    /// default they stay open for scrapers).
    #[arg(long, env = "MLX_SERVE_METRICS_REQUIRE_API_KEY")]
    pub metrics_require_api_key: bool,

    /// Folder of the disk tier (agent memory): KV blocks that survive eviction and
    /// restarts. Default: the user cache folder (`~/.cache/mlx-serve/kv`,
    /// `~/Library/Caches/mlx-serve/kv`).
    #[arg(long, env = "MLX_SERVE_KV_STORE_DIR")]
    pub kv_store_dir: Option<PathBuf>,

    /// Keep KV in memory only: no disk tier.
    #[arg(long, env = "MLX_SERVE_NO_KV_STORE", conflicts_with = "kv_store_dir")]
    pub no_kv_store: bool,

    /// Budget of the store folder in GiB, every model's blocks together; least recently
    /// used blocks are evicted beyond it.
    #[arg(long, env = "MLX_SERVE_KV_STORE_MAX_GB", default_value_t = 8.0)]
    pub kv_store_max_gb: f64,

    /// How blocks are written: `lossless` (the pool's dtype), `f16`, or MLX's 8-bit or
    /// 4-bit affine quantization (`q8`, `q4`; groups of 64 values, 32 when the head
    /// dimension needs it). Each encoding keeps its own blocks.
    #[arg(long, env = "MLX_SERVE_KV_STORE_ENCODING", default_value = "lossless")]
    pub kv_store_encoding: Encoding,

    /// Which blocks of requests without an agent id go to disk: `agents` (none), `reused`
    /// (prefixes reused from the pool) or `all`. Agents' blocks always do.
    #[arg(long, env = "MLX_SERVE_KV_STORE_POLICY", default_value = "reused")]
    pub kv_store_policy: StorePolicy,

    /// At shutdown, after the drain, how long writing hot blocks to disk may take.
    #[arg(long, env = "MLX_SERVE_PERSIST_TIMEOUT_SECS", default_value_t = 30)]
    pub persist_timeout_secs: u64,

    /// Log lines as human-readable text or as JSON objects (one per line).
    #[arg(long, env = "MLX_SERVE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written (to standard error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn parse_pool_size(value: &str) -> Result<PoolSize, String> {
    if value.eq_ignore_ascii_case("auto") {
        return Ok(PoolSize::Auto);
    }
    match value.parse::<usize>() {
        Ok(mib) if mib >= 1 => Ok(PoolSize::Bytes(mib.saturating_mul(1 << 20))),
        _ => Err(format!(
            "`{value}` is neither `auto` nor a size in MiB of at least 1"
        )),
    }
}

fn parse_weights(value: &str) -> Result<WeightChoice, String> {
    WeightChoice::parse(value)
        .ok_or_else(|| format!("`{value}` is not one of auto, f32, f16, bf16, quantized"))
}

impl ServeSettings {
    /// Checks what clap cannot; the message names the flag.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.kv_store_max_gb.is_finite() && self.kv_store_max_gb >= 0.0) {
            return Err(format!(
                "--kv-store-max-gb must be a size in GiB, 0 or more (got {})",
                self.kv_store_max_gb
            ));
        }
        if !(1..=MAX_BLOCK_SIZE).contains(&self.block_size) {
            return Err(format!(
                "--block-size must be between 1 and {MAX_BLOCK_SIZE} (got {})",
                self.block_size
            ));
        }
        if self.max_batch == 0 {
            return Err("--max-batch must be at least 1".to_owned());
        }
        if self.max_step_tokens < self.max_batch {
            return Err(format!(
                "--max-step-tokens must be at least --max-batch ({}): every running sequence \
                 decodes a token per step (got {})",
                self.max_batch, self.max_step_tokens
            ));
        }
        if self.arrival_gather_ms > MAX_ARRIVAL_GATHER_MS {
            return Err(format!(
                "--arrival-gather-ms must be at most {MAX_ARRIVAL_GATHER_MS}: a lone request \
                 waits up to four times as long before it starts (got {})",
                self.arrival_gather_ms
            ));
        }
        if self.prefill_chunk == 0 {
            return Err("--prefill-chunk must be at least 1".to_owned());
        }
        if !(self.ready_max_kv_usage > 0.0 && self.ready_max_kv_usage <= 1.0) {
            return Err(format!(
                "--ready-max-kv-usage must be a fraction in (0, 1] (got {})",
                self.ready_max_kv_usage
            ));
        }
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".to_owned());
        }
        if self.stall_timeout_secs == 0 {
            return Err("--stall-timeout-secs must be at least 1".to_owned());
        }
        if self.header_read_timeout_secs == 0 {
            return Err("--header-read-timeout-secs must be at least 1".to_owned());
        }
        if let Some(host) = self
            .allowed_host
            .iter()
            .find(|h| h.is_empty() || h.contains(['/', ':', ' ']) && h.as_str() != "*")
        {
            return Err(format!(
                "--allowed-host takes a host name without scheme or port, or `*` (got {host:?})"
            ));
        }
        if self.max_body_bytes == 0 {
            return Err("--max-body-bytes must be at least 1".to_owned());
        }
        if let Some(key) = self
            .api_key
            .iter()
            .find(|k| k.trim().is_empty() || k.contains(' '))
        {
            return Err(format!(
                "--api-key values must be non-empty and contain no spaces (got {key:?})"
            ));
        }
        for origin in &self.cors_origin {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(format!(
                    "--cors-origin must be `*` or an origin like https://example.com (got {origin:?})"
                ));
            }
        }
        Ok(())
    }

    /// The engine's settings; what the CLI does not expose keeps the engine's defaults.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            kv_pool: self.kv_pool,
            block_size: self.block_size,
            max_batch: self.max_batch,
            max_step_tokens: self.max_step_tokens,
            prefill_chunk: self.prefill_chunk,
            decode_stall_factor: self.decode_stall_factor,
            arrival_gather: Duration::from_millis(self.arrival_gather_ms),
            max_queue: self.max_queue,
            stall_timeout: Duration::from_secs(self.stall_timeout_secs),
            kv_store: self.store_config(),
            store_policy: self.kv_store_policy,
            ..EngineConfig::default()
        }
    }

    /// The disk tier's settings; `None` with `--no-kv-store` (or when the platform has no
    /// user cache folder and no `--kv-store-dir` is given).
    pub fn store_config(&self) -> Option<StoreConfig> {
        if self.no_kv_store {
            return None;
        }
        let root = self
            .kv_store_dir
            .clone()
            .or_else(cache_store::default_root)?;
        Some(StoreConfig {
            root,
            max_bytes: (self.kv_store_max_gb * (1u64 << 30) as f64) as u64,
            encoding: self.kv_store_encoding,
            min_free_bytes: cache_store::MIN_FREE_DISK_BYTES,
        })
    }

    pub fn persist_timeout(&self) -> Duration {
        Duration::from_secs(self.persist_timeout_secs)
    }

    /// How long a connection's writes may make no progress before it is closed: the stall
    /// timeout plus as long again, at least 30 s more, so the engine has ended the stalled
    /// generation (and counted it) before its connection goes.
    pub fn connection_write_timeout(&self) -> Duration {
        let stall = Duration::from_secs(self.stall_timeout_secs);
        stall + stall.max(Duration::from_secs(30))
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
}

/// Settings from `serve`'s arguments as they would follow `mlx-serve serve` (environment
/// variables apply as on the command line), not yet validated: for embedding the server
/// and for tests.
pub fn parse_args(args: &[&str]) -> Result<ServeSettings, clap::Error> {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: ServeSettings,
    }
    Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
        .map(|cli| cli.settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::WeightMode;

    #[test]
    fn defaults_and_validation() {
        let settings = parse_args(&[]).unwrap();
        assert_eq!(settings.model, DEFAULT_MODEL);
        assert_eq!(
            (settings.block_size, settings.kv_pool),
            (16, PoolSize::Auto)
        );
        let engine = settings.engine_config();
        assert_eq!((engine.max_step_tokens, engine.prefill_chunk), (2048, 256));
        assert_eq!(engine.arrival_gather, Duration::from_millis(5));
        assert_eq!(engine.decode_stall_factor, 6);
        assert!(settings.validate().is_ok());
        assert_eq!((settings.host.as_str(), settings.port), ("127.0.0.1", 8000));
        assert_eq!(settings.drain_timeout(), Duration::from_secs(30));
        assert!(settings.api_key.is_empty() && settings.cors_origin.is_empty());

        let settings = parse_args(&[
            "--api-key",
            "a",
            "--api-key",
            "b",
            "--cors-origin",
            "*",
            "--max-queue",
            "0",
        ])
        .unwrap();
        assert_eq!(settings.api_key, vec!["a", "b"]);
        assert_eq!(settings.engine_config().max_queue, 0);
        assert!(settings.validate().is_ok());
        let settings = parse_args(&["--cors-origin", "example.com"]).unwrap();
        assert!(settings.validate().unwrap_err().contains("--cors-origin"));
        assert_eq!(settings.log_format, LogFormat::Text);
        assert!(!settings.metrics_require_api_key);
        let settings = parse_args(&["--log-format", "json"]).unwrap();
        assert_eq!(settings.log_format, LogFormat::Json);
        assert!(parse_args(&["--log-format", "xml"]).is_err());
        for bad in ["0", "1.5", "NaN"] {
            let settings = parse_args(&["--ready-max-kv-usage", bad]).unwrap();
            assert!(
                settings
                    .validate()
                    .unwrap_err()
                    .contains("--ready-max-kv-usage")
            );
        }
        let settings = parse_args(&["--max-batch", "0"]).unwrap();
        assert!(settings.validate().unwrap_err().contains("--max-batch"));
        let settings = parse_args(&[
            "--max-step-tokens",
            "512",
            "--arrival-gather-ms",
            "0",
            "--prefill-chunk",
            "64",
            "--decode-stall-factor",
            "0",
        ])
        .unwrap();
        assert!(settings.validate().is_ok());
        let engine = settings.engine_config();
        assert_eq!((engine.max_step_tokens, engine.prefill_chunk), (512, 64));
        assert_eq!(engine.decode_stall_factor, 0);
        assert!(engine.arrival_gather.is_zero());
        let settings = parse_args(&["--max-batch", "8", "--max-step-tokens", "7"]).unwrap();
        assert!(
            settings
                .validate()
                .unwrap_err()
                .contains("--max-step-tokens")
        );
        let settings = parse_args(&["--arrival-gather-ms", "1001"]).unwrap();
        assert!(
            settings
                .validate()
                .unwrap_err()
                .contains("--arrival-gather-ms")
        );
        let settings = parse_args(&["--prefill-chunk", "0"]).unwrap();
        assert!(settings.validate().unwrap_err().contains("--prefill-chunk"));
        let settings = parse_args(&["--stall-timeout-secs", "7"]).unwrap();
        assert_eq!(
            settings.engine_config().stall_timeout,
            Duration::from_secs(7)
        );
        for (flag, value) in [
            ("--stall-timeout-secs", "0"),
            ("--header-read-timeout-secs", "0"),
            ("--max-connections", "0"),
            ("--allowed-host", "http://x"),
            ("--allowed-host", "x:80"),
        ] {
            let settings = parse_args(&[flag, value]).unwrap();
            assert!(
                settings.validate().unwrap_err().contains(flag),
                "{flag} {value}"
            );
        }
        let settings = parse_args(&["--allowed-host", "box.lan,*"]).unwrap();
        assert!(settings.validate().is_ok());

        let settings = parse_args(&["--block-size", "0"]).unwrap();
        assert!(settings.validate().unwrap_err().contains("--block-size"));
        assert!(parse_args(&["--kv-cache-mb", "0"]).is_err());
        let settings = parse_args(&["--kv-cache-mb", "64"]).unwrap();
        assert_eq!(settings.kv_pool, PoolSize::Bytes(64 << 20));
        let settings = parse_args(&["--weights", "f16"]).unwrap();
        assert_eq!(settings.weights, WeightChoice::Fixed(WeightMode::F16));
        assert_eq!(
            parse_args(&[]).unwrap().weights,
            WeightChoice::Auto,
            "auto is resolved at load time, after --device took effect"
        );
        assert!(parse_args(&["--weights", "q3"]).is_err());
        let settings = parse_args(&["--device", "cpu"]).unwrap();
        assert_eq!(settings.device, DeviceChoice::Cpu);
        assert!(parse_args(&["--device", "tpu"]).is_err());
    }
}
