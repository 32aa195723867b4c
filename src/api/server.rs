//! Running the HTTP server on a bound listener until shutdown.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::net::TcpListener;

use super::shutdown::drain_after;
use super::state::AppState;
use crate::config::ServeSettings;

/// How long connections may stay open after the drain (a client that stopped reading its
/// finished stream) before the server closes them anyway.
pub const CONNECTION_GRACE: Duration = Duration::from_secs(5);

/// Serves `state` on `listener` until `trigger` resolves, then drains (see
/// [`super::shutdown`]) and returns once the open connections have closed (or after
/// [`CONNECTION_GRACE`]).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    settings: &ServeSettings,
    trigger: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let app = super::router(state.clone(), settings);
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel();
    let timeout = settings.drain_timeout();
    let draining = state.clone();
    let graceful = async move {
        drain_after(trigger, draining, timeout).await;
        let _ = drained_tx.send(());
    };
    let sampler = tokio::spawn(super::metrics::sample_forever(state.clone()));
    let server = axum::serve(listener, app).with_graceful_shutdown(graceful);
    let grace = async {
        let _ = drained_rx.await;
        tokio::time::sleep(CONNECTION_GRACE).await;
    };
    let result = tokio::select! {
        result = server => result,
        () = grace => {
            tracing::warn!("closing connections still open {CONNECTION_GRACE:?} after the drain");
            Ok(())
        }
    };
    sampler.abort();
    result
}
