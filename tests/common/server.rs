//! An in-process server on 127.0.0.1 with the default model, for HTTP tests: the real
//! router, engine and shutdown path, on its own runtime thread so that it outlives each
//! test's runtime. One per test binary (the model loads once).

#![allow(dead_code)] // each test binary uses its own subset

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mlx_serve::api::server;
use mlx_serve::api::state::AppState;
use mlx_serve::config::ServeSettings;
use mlx_serve::engine::{EngineHandle, EngineStats};
use serde_json::Value;

/// The name the default model is served under.
pub const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1";

/// `serve` settings from command-line style arguments. Without `--kv-store-dir` the disk
/// tier is off, so tests never write into the user's cache folder.
pub fn settings(args: &[&str]) -> ServeSettings {
    let mut args = args.to_vec();
    if !args.contains(&"--kv-store-dir") {
        args.push("--no-kv-store");
    }
    let settings = mlx_serve::config::parse_args(&args).expect("valid test settings");
    settings.validate().expect("valid test settings");
    settings
}

/// A client whose every request has the tests' deadline.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(crate::common::DEADLINE)
        .build()
        .expect("client")
}

pub struct TestServer {
    pub address: SocketAddr,
    pub state: AppState,
    shutdown: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl TestServer {
    /// Loads the default model and serves it with `args` (plus `--port 0`).
    pub fn start(args: &[&str]) -> TestServer {
        let settings = settings(args);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("test-server".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("server runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("bind 127.0.0.1:0");
                    let address = listener.local_addr().expect("address");
                    let state = AppState::new(&settings);
                    let engine = EngineHandle::start(
                        crate::common::load_default_model,
                        settings.engine_config(),
                        std::sync::Arc::clone(&state.metrics().engine),
                    )
                    .expect("start the engine");
                    state.set_engine(engine);
                    ready_tx.send((address, state.clone())).expect("report");
                    let trigger = async {
                        let _ = shutdown_rx.await;
                    };
                    server::serve(listener, state, &settings, trigger)
                        .await
                        .expect("serve");
                });
            })
            .expect("server thread");
        let (address, state) = ready_rx.recv().expect("the test server failed to start");
        TestServer {
            address,
            state,
            shutdown: Mutex::new(Some(shutdown_tx)),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn engine(&self) -> &EngineHandle {
        self.state.engine().expect("engine loaded")
    }

    pub fn stats(&self) -> EngineStats {
        self.engine().stats()
    }

    /// Starts the shutdown sequence (as a signal would).
    pub fn begin_shutdown(&self) {
        if let Some(tx) = self.shutdown.lock().unwrap().take() {
            let _ = tx.send(());
        }
    }

    /// Waits until no sequence runs, waits or is parked and no block is in use, or panics
    /// after `deadline` with the last stats.
    pub async fn wait_idle(&self, deadline: Duration) -> EngineStats {
        let started = Instant::now();
        loop {
            let stats = self.stats();
            if stats.running == 0
                && stats.waiting == 0
                && stats.parked == 0
                && stats.blocks_in_use == 0
            {
                return stats;
            }
            assert!(
                started.elapsed() < deadline,
                "the engine did not become idle within {deadline:?}: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Checks that `body` is an OpenAI error envelope and returns its `error` object.
pub fn assert_envelope(body: &Value) -> &Value {
    let error = body
        .get("error")
        .unwrap_or_else(|| panic!("no `error` in {body}"));
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    for key in ["param", "code"] {
        assert!(error.get(key).is_some(), "`{key}` missing in {body}");
    }
    error
}

/// The `data:` payloads of an SSE body, in order.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}
