//! What every handler shares: the engine (once the model has loaded), whether shutdown has
//! begun, and the request limits from the settings.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use super::error::ApiError;
use crate::config::ServeSettings;
use crate::engine::EngineHandle;

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
    max_body_bytes: usize,
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
                max_body_bytes: settings.max_body_bytes,
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

    pub fn max_body_bytes(&self) -> usize {
        self.shared.max_body_bytes
    }
}

/// Seconds since the Unix epoch (OpenAI's `created`).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
