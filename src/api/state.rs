//! What every handler shares: the engine (once the model has loaded), whether shutdown has
//! begun, the metrics, and the limits from the settings.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use crate::config::ServeSettings;
use crate::engine::EngineHandle;
use crate::metrics::{Metrics, ServerState};

/// Cheap to clone; all clones see the same server.
#[derive(Clone)]
pub struct AppState {
    shared: Arc<Shared>,
}

struct Shared {
    /// Set once, when the model has loaded; until then requests get 503 `model_loading`.
    engine: OnceLock<Loaded>,
    /// Set by the first shutdown signal; from then on new requests get 503.
    draining: AtomicBool,
    api_keys: Vec<String>,
    admin_key: Option<String>,
    max_body_bytes: usize,
    metrics: Arc<Metrics>,
    /// Readiness fails above this fraction of KV blocks in use.
    ready_max_kv_usage: f64,
    /// Prompt preparations (template rendering, tokenizing) allowed at once.
    prompt_permits: Arc<Semaphore>,
}

/// Why the server should not get traffic now (`/health/ready` answers 503 with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    Loading,
    Draining,
    /// The engine thread ended (a fault): every generation would fail.
    EngineStopped,
    /// More KV blocks are in use than `--ready-max-kv-usage` allows.
    KvCacheSaturated,
    /// Every batch slot is busy and generations wait for one.
    BatchSaturated,
}

impl NotReady {
    /// The `reason` in `/health/ready`'s answer.
    pub fn as_str(self) -> &'static str {
        match self {
            NotReady::Loading => "loading",
            NotReady::Draining => "draining",
            NotReady::EngineStopped => "engine_stopped",
            NotReady::KvCacheSaturated => "kv_cache_saturated",
            NotReady::BatchSaturated => "batch_saturated",
        }
    }
}

struct Loaded {
    engine: EngineHandle,
    /// Unix seconds of the load: the model's `created` in `/v1/models`.
    created: u64,
}

impl AppState {
    pub fn new(settings: &ServeSettings) -> AppState {
        AppState {
            shared: Arc::new(Shared {
                engine: OnceLock::new(),
                draining: AtomicBool::new(false),
                api_keys: settings.api_key.clone(),
                admin_key: settings.admin_key.clone(),
                max_body_bytes: settings.max_body_bytes,
                metrics: Arc::new(Metrics::default()),
                ready_max_kv_usage: settings.ready_max_kv_usage,
                prompt_permits: Arc::new(Semaphore::new(
                    std::thread::available_parallelism().map_or(1, |n| n.get()),
                )),
            }),
        }
    }

    /// Makes the loaded engine available to requests (the first call wins).
    pub fn set_engine(&self, engine: EngineHandle) {
        let _ = self.shared.engine.set(Loaded {
            engine,
            created: unix_now(),
        });
    }

    /// The engine, or 503 while the model is loading.
    pub fn engine(&self) -> Result<&EngineHandle, ApiError> {
        self.shared
            .engine
            .get()
            .map(|loaded| &loaded.engine)
            .ok_or_else(ApiError::loading)
    }

    /// When the model was loaded (Unix seconds), if it is.
    pub fn created(&self) -> Option<u64> {
        self.shared.engine.get().map(|loaded| loaded.created)
    }

    pub fn begin_drain(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::SeqCst)
    }

    /// The configured API keys; empty = no authentication.
    pub fn api_keys(&self) -> &[String] {
        &self.shared.api_keys
    }

    /// `--admin-key`, if set.
    pub fn admin_key(&self) -> Option<&str> {
        self.shared.admin_key.as_deref()
    }

    pub fn max_body_bytes(&self) -> usize {
        self.shared.max_body_bytes
    }

    /// A permit to prepare a prompt; waits while every core is already preparing one.
    pub async fn prompt_permit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.shared.prompt_permits)
            .acquire_owned()
            .await
            .map_err(|_| ApiError::internal("prompt preparation is closed"))
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Whether to send this server traffic now, and if not, why.
    pub fn readiness(&self) -> Result<(), NotReady> {
        if self.is_draining() {
            return Err(NotReady::Draining);
        }
        let engine = self.engine().map_err(|_| NotReady::Loading)?;
        if !engine.is_running() {
            return Err(NotReady::EngineStopped);
        }
        let stats = engine.stats();
        if stats.kv_usage_ratio() > self.shared.ready_max_kv_usage {
            return Err(NotReady::KvCacheSaturated);
        }
        if stats.batch_saturated {
            return Err(NotReady::BatchSaturated);
        }
        Ok(())
    }

    /// The server's state as the metrics report it.
    pub fn server_state(&self) -> ServerState {
        ServerState {
            engine: self.engine().ok().map(EngineHandle::stats),
            draining: self.is_draining(),
            ready: self.readiness().is_ok(),
            open_connections: self.shared.metrics.http.open_connections(),
        }
    }
}

/// Seconds since the Unix epoch (OpenAI's `created`).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
