//! Running the HTTP server on a bound listener until shutdown: our own accept loop over
//! hyper, for what `axum::serve` does not offer.
//!
//! - **At most `--max-connections` connections.** Beyond it the loop stops accepting (new
//!   connections wait in the kernel's backlog) instead of spending a task and buffers on
//!   each.
//! - **A header-read timeout** (`--header-read-timeout-secs`): a client that trickles its
//!   request headers (slowloris) is disconnected instead of holding a connection forever.
//! - **Small send buffers**: each connection's kernel send buffer and hyper's write buffer
//!   are capped ([`SEND_BUFFER_BYTES`], [`WRITE_BUFFER_BYTES`]), so a client that stops
//!   reading a stream is felt by the engine within a few dozen tokens (it pauses that
//!   sequence) rather than after megabytes, and an idle stalled connection pins little.
//! - **A write deadline** ([`WriteDeadline`]): a connection whose writes have made no
//!   progress for the stall timeout plus at least as long again is closed. The engine has
//!   long ended the generation by then (`--stall-timeout-secs`); this frees the connection.
//! - `TCP_NODELAY`, so each streamed token leaves at once.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::connection::WriteDeadline;
use super::shutdown::drain_after;
use super::state::AppState;
use crate::config::ServeSettings;

/// How long connections may stay open after the drain (a client that stopped reading its
/// finished stream) before the server closes them anyway.
pub const CONNECTION_GRACE: Duration = Duration::from_secs(5);

/// Kernel send buffer per connection (Linux doubles it for bookkeeping).
pub const SEND_BUFFER_BYTES: usize = 32 << 10;

/// hyper's write buffer per connection (its minimum is 8 KiB).
pub const WRITE_BUFFER_BYTES: usize = 16 << 10;

/// Serves `state` on `listener` until `trigger` resolves, then drains (see
/// [`super::shutdown`]), stops accepting, and returns once the open connections have
/// closed (or after [`CONNECTION_GRACE`]).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    settings: &ServeSettings,
    trigger: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let app = super::router(state.clone(), settings);
    let service = TowerToHyperService::new(app);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout())
        .max_buf_size(WRITE_BUFFER_BYTES);
    let connections = Arc::new(Semaphore::new(settings.max_connections));
    let write_timeout = settings.connection_write_timeout();
    let graceful = GracefulShutdown::new();
    let metrics = Arc::clone(state.metrics());
    let sampler = tokio::spawn(super::metrics::sample_forever(state.clone()));
    let mut drained = std::pin::pin!(drain_after(
        trigger,
        state,
        settings.drain_timeout(),
        settings.persist_timeout(),
    ));
    loop {
        let next = async {
            let permit = Arc::clone(&connections).acquire_owned().await;
            (permit, listener.accept().await)
        };
        let (permit, accepted) = tokio::select! {
            _ = &mut drained => break,
            next = next => next,
        };
        let Ok(permit) = permit else { break };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors or a connection reset before accept: not fatal.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tune(&stream);
        let open = metrics.connection_opened();
        let io = TokioIo::new(WriteDeadline::new(stream, write_timeout));
        let connection = http.serve_connection(io, service.clone());
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop((open, permit));
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(CONNECTION_GRACE) => {
            tracing::warn!("closing connections still open {CONNECTION_GRACE:?} after the drain");
        }
    }
    sampler.abort();
    Ok(())
}

/// Socket options for an accepted connection (best effort: a failure costs only latency
/// or buffering, never correctness).
fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(stream).set_send_buffer_size(SEND_BUFFER_BYTES);
}
