//! Graceful shutdown: signal -> refuse new requests (503, readiness off) -> drain the
//! engine while in-flight generations finish -> (persist hot agent caches) -> exit 0.
//! A second signal exits at once.

use std::future::Future;
use std::time::Duration;

use super::state::AppState;
use crate::engine::DrainReport;

/// Exit status when a second signal cuts the drain short.
pub const FORCED_EXIT_CODE: i32 = 130;

/// Resolves at the first SIGINT or SIGTERM. From then on, another one ends the process
/// immediately. The listeners exist from the first poll on, so no signal falls between
/// the two.
pub async fn signal() {
    let mut signals = Signals::listen();
    signals.next().await;
    tracing::info!("shutdown signal received; draining (send it again to exit at once)");
    tokio::spawn(async move {
        signals.next().await;
        tracing::warn!("second shutdown signal: exiting without finishing the drain");
        exit_now(FORCED_EXIT_CODE);
    });
}

/// Ends the process without running exit handlers: the engine thread may be inside MLX,
/// and the C++ runtime's static destructors must not run under it (they can block).
pub fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    #[cfg(unix)]
    // SAFETY: _exit only ends the process; nothing runs after it.
    unsafe {
        libc::_exit(code)
    }
    #[cfg(not(unix))]
    std::process::exit(code)
}

/// SIGTERM and SIGINT (Ctrl-C elsewhere).
struct Signals {
    #[cfg(unix)]
    listeners: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    #[cfg(unix)]
    fn listen() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        let listeners = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(terminate), Ok(interrupt)) => Some((terminate, interrupt)),
            _ => {
                tracing::error!("cannot listen for SIGTERM/SIGINT; graceful shutdown is off");
                None
            }
        };
        Signals { listeners }
    }

    #[cfg(unix)]
    async fn next(&mut self) {
        match &mut self.listeners {
            Some((terminate, interrupt)) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            None => std::future::pending().await,
        }
    }

    #[cfg(not(unix))]
    fn listen() -> Signals {
        Signals {}
    }

    #[cfg(not(unix))]
    async fn next(&mut self) {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Waits for `trigger`, then runs the shutdown sequence: the drain (at most `timeout`),
/// then hot KV blocks to disk (at most `persist_timeout`). The server stops accepting
/// connections when this returns.
pub async fn drain_after(
    trigger: impl Future<Output = ()>,
    state: AppState,
    timeout: Duration,
    persist_timeout: Duration,
) -> Option<DrainReport> {
    trigger.await;
    state.begin_drain();
    let Ok(engine) = state.engine() else {
        tracing::info!("shutdown before the model finished loading");
        return None;
    };
    let report = engine.drain(timeout).await;
    tracing::info!(
        completed = report.completed,
        aborted = report.aborted,
        rejected = report.rejected,
        elapsed = ?report.elapsed,
        "engine drained"
    );
    if let Some(persisted) = engine.persist(persist_timeout).await {
        tracing::info!(
            blocks = persisted.blocks,
            bytes = persisted.bytes,
            elapsed = ?persisted.elapsed,
            complete = persisted.complete,
            "hot KV blocks persisted"
        );
        if !persisted.complete {
            tracing::warn!(
                "the KV store did not finish writing within --persist-timeout-secs; \
                 unwritten blocks are lost (the store stays consistent)"
            );
        }
    }
    Some(report)
}
